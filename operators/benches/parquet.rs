//! Wire-format VehicleState bytes → Parquet bytes in memory, rows/s on one core: the
//! Parquet sink's per-file work (arrow-avro decoding, the Kafka columns, zstd Parquet)
//! without the object store. Goal: ≥ 1M rows/s.
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use eventbus_operators::sinks::parquet::wire_to_parquet;
use eventbus_schemas::fleet::FleetGenerator;
use eventbus_schemas::{FileRegistry, encode};

const ROWS: usize = 100_000;

fn records() -> (u32, String, Vec<Bytes>) {
    let registry = FileRegistry::embedded().unwrap();
    let (id, schema) = registry.latest_of("vehicle.state.v1-value").unwrap();
    let records = FleetGenerator::new(400, 1)
        .take(ROWS)
        .map(|v| Bytes::from(encode(id, &schema, &v).unwrap()))
        .collect();
    (id, serde_json::to_string(&*schema).unwrap(), records)
}

fn bench(c: &mut Criterion) {
    let (id, json, records) = records();
    let mut g = c.benchmark_group("vehicle_state_to_parquet");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.sample_size(10);
    g.bench_function("wire_bytes_to_parquet_bytes", |b| {
        b.iter(|| wire_to_parquet(id, &json, &records, 1).unwrap());
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
