//! The runtime's own cost per record, on one core: MemorySource → map → a sink that
//! acknowledges at once, against the same records built and mapped in a plain loop,
//! measured in the same run. The difference is the executor's overhead: dispatch,
//! partition tasks, offset tracking, acknowledgements and commits. Goal: ≤ 100 ns per
//! record.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use eventbus_runtime::memory::MemorySource;
use eventbus_runtime::{Ack, Job, Record, Sink, SinkError};

const PARTITIONS: i32 = 8;
const PER_PARTITION: i64 = 50_000;
const RECORDS: u64 = PARTITIONS as u64 * PER_PARTITION as u64;

struct Discard;

impl Sink<usize> for Discard {
    async fn send(&self, _record: Record<usize>, ack: Ack) -> Result<(), SinkError> {
        ack.done();
        Ok(())
    }
}

/// The input, as a Kafka source hands it over: one topic name shared by every record.
fn records() -> Vec<Record<Bytes>> {
    let value = Bytes::from_static(&[7u8; 256]);
    let topic: Arc<str> = Arc::from("bench.records.v1");
    (0..PARTITIONS)
        .flat_map(|p| (0..PER_PARTITION).map(move |o| (p, o)))
        .map(|(p, o)| Record::new(topic.clone(), p, o, value.clone()))
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn run_job(rt: &tokio::runtime::Runtime, input: Vec<Record<Bytes>>) {
    let report = rt
        .block_on(
            Job::builder("bench")
                .source(MemorySource::new(input))
                .map(|v: Bytes| v.len())
                .sink(Discard)
                .build()
                .unwrap()
                .run(std::future::pending()),
        )
        .unwrap();
    assert_eq!(report.delivered, RECORDS);
}

fn plain_loop(input: Vec<Record<Bytes>>) {
    let mut sum = 0usize;
    for r in input {
        let n = r.value.len();
        sum += r.with_value(n).value;
    }
    std::hint::black_box(sum);
}

/// Mean nanoseconds per record of `f` over fresh inputs, `rounds` times.
fn per_record(rounds: u32, mut f: impl FnMut(Vec<Record<Bytes>>)) -> f64 {
    let mut total = Duration::ZERO;
    for _ in 0..rounds {
        let input = records();
        let start = Instant::now();
        f(input);
        total += start.elapsed();
    }
    total.as_nanos() as f64 / f64::from(rounds) / RECORDS as f64
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    // The figure the goal is about, first, alternating the two sides.
    let (mut plain, mut job) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..3 {
        plain = plain.min(per_record(3, plain_loop));
        job = job.min(per_record(3, |input| run_job(&rt, input)));
    }
    println!(
        "runtime overhead: {:.1} ns per record (executor {job:.1} ns, plain loop {plain:.1} ns; goal <= 100 ns)",
        job - plain
    );
    let mut g = c.benchmark_group("runtime_overhead");
    g.throughput(Throughput::Elements(RECORDS));
    g.sample_size(10);
    g.bench_function("plain_loop", |b| {
        b.iter_batched(records, plain_loop, BatchSize::LargeInput);
    });
    g.bench_function("memory_source_map_discard", |b| {
        b.iter_batched(records, |input| run_job(&rt, input), BatchSize::LargeInput);
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
