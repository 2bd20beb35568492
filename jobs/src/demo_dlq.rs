//! The demo's dead-letter stage: a vehicle-state stream with about 1% poison (bad bytes,
//! unknown schema ids, records failing validation) goes through a decoding, validating
//! job whose sink is down for a while. Poison and the records the outage outlasted land
//! in the DLQ; the DLQ processor replays the transient ones after a cool-off; a scripted
//! export → fix → import replays the fixable ones; every good record ends up delivered.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use eventbus_dlq::classify::Classifier;
use eventbus_dlq::store::read;
use eventbus_dlq::transfer::{check_import, export_line, produce};
use eventbus_dlq::{DlqConfig, KafkaDeadLetters};
use eventbus_operators::{Retry, RetryPolicy};
use eventbus_runtime::{
    Ack, Classify, ErrorClass, Job, KafkaProperties, KafkaSource, ProcessError, Record, Sink,
    SinkError, SourceConfig,
};
use eventbus_schemas::codec::Decoder;
use eventbus_schemas::events::VehicleState;
use eventbus_schemas::fleet::FleetGenerator;
use eventbus_schemas::{FileRegistry, encode};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use serde::Serialize;

use crate::config::JobFile;
use crate::topic_io;

/// The stage's input topic.
pub const TOPIC: &str = "demo.vehicle.state.v1";
/// How long the sink is down, from the first record it sees.
const OUTAGE: Duration = Duration::from_secs(3);

/// What the dead-letter stage found.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DlqSummary {
    /// Records produced.
    pub produced: u64,
    /// Poison among them.
    pub poison: u64,
    /// Good records (produced less poison).
    pub good: u64,
    /// Distinct good records the sink received.
    pub delivered: u64,
    /// Letters in the DLQ per category.
    pub categories: BTreeMap<String, u64>,
    /// Letters the processor replayed.
    pub replayed: u64,
    /// Letters fixed through export → import.
    pub fixed: u64,
    /// Poison that stays in the DLQ (it cannot be fixed by editing values).
    pub unfixable: u64,
}

/// A sink that is down (transient failures) for [`OUTAGE`] after its first record, and
/// counts distinct events.
#[derive(Clone, Default)]
struct FlakySink {
    seen: Arc<Mutex<HashSet<String>>>,
    first: Arc<Mutex<Option<Instant>>>,
    refused: Arc<AtomicU64>,
}

impl Sink<VehicleState> for FlakySink {
    async fn send(&self, record: Record<VehicleState>, ack: Ack) -> Result<(), SinkError> {
        let started = *self
            .first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(Instant::now);
        if started.elapsed() < OUTAGE {
            self.refused.fetch_add(1, Ordering::Relaxed);
            let origin = ack.origin();
            ack.fail(SinkError::Delivery {
                sink: "demo-warehouse-api",
                origin,
                reason: "503 service unavailable".into(),
                class: ErrorClass::Transient,
            });
            return Ok(());
        }
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(record.value.event_id.clone());
        ack.done();
        Ok(())
    }
}

#[derive(Debug)]
struct Invalid(String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

/// Decodes a vehicle state and checks its ranges.
fn validate(decoder: &Decoder<FileRegistry>, bytes: &[u8]) -> Result<VehicleState, ProcessError> {
    let v: VehicleState = decoder
        .decode_typed(bytes, None)
        .map_err(|e| ProcessError::new(e.class(), e))?;
    if !(0.0..=100.0).contains(&v.battery_pct) {
        return Err(ProcessError::new(
            ErrorClass::Permanent,
            Invalid(format!(
                "validation failed: battery_pct {} is outside 0..=100",
                v.battery_pct
            )),
        ));
    }
    Ok(v)
}

/// Runs the stage on `cluster`.
///
/// # Errors
/// A topic cannot be created, a job fails, or the records do not all arrive in time.
pub async fn run(
    cluster: &MockCluster<'static, DefaultProducerContext>,
    records: usize,
    partitions: i32,
) -> anyhow::Result<DlqSummary> {
    let brokers = cluster.bootstrap_servers();
    let dlq = format!("{TOPIC}.dlq");
    for t in [TOPIC, &dlq, &format!("{dlq}.parked")] {
        cluster.create_topic(t, partitions, 1)?;
    }
    let registry = FileRegistry::embedded()?;
    let (id, schema) = registry
        .latest_of("vehicle.state.v1-value")
        .context("vehicle.state.v1-value is not registered")?;
    // About 1% poison, three kinds in turn.
    let (mut poison, mut fixable) = (0u64, 0u64);
    let stream: Vec<(String, Vec<u8>)> = FleetGenerator::new(200, 7)
        .take(records)
        .enumerate()
        .map(|(i, mut e)| {
            let key = e.vehicle_id.clone();
            let bytes = if i % 100 == 99 {
                poison += 1;
                match (i / 100) % 3 {
                    0 => b"\x7b\"not\":\"avro\"}".to_vec(),
                    1 => {
                        let mut v = encode(id, &schema, &e)?;
                        v[1..5].copy_from_slice(&4_242u32.to_be_bytes());
                        v
                    }
                    _ => {
                        fixable += 1;
                        e.battery_pct = 180.0;
                        encode(id, &schema, &e)?
                    }
                }
            } else {
                encode(id, &schema, &e)?
            };
            Ok((key, bytes))
        })
        .collect::<anyhow::Result<_>>()?;
    let produced = topic_io::produce(&brokers, TOPIC, stream, |_| {})?;
    let good = produced - poison;

    let mut kafka = KafkaProperties::new();
    kafka.set("bootstrap.servers", &brokers);
    let mut source = SourceConfig::new("eventbus-demo-dlq", [TOPIC]);
    source.commit_interval_ms = 200;
    let letters = KafkaDeadLetters::new(&kafka, DlqConfig::default())?;
    let decoder = Decoder::new(registry.clone());
    let sink = FlakySink::default();
    let policy = RetryPolicy {
        initial_delay_ms: 50,
        multiplier: 2.0,
        max_delay_ms: 400,
        max_attempts: 4,
        max_elapsed_ms: 1_000,
    };
    let job = Job::builder("demo-dlq")
        .source(KafkaSource::new(kafka.clone(), source))
        .dead_letters(letters)
        .try_map(move |b: Bytes| validate(&decoder, &b))
        .sink(Retry::new(sink.clone(), policy)?)
        .build()?;

    // The DLQ processor replays what the outage outlasted, one second after it failed.
    let mut proc_source = SourceConfig::new("eventbus-demo-dlq-processor", [dlq.as_str()]);
    proc_source.commit_interval_ms = 200;
    let file = JobFile {
        kafka: kafka.clone(),
        source: Some(proc_source),
        dlq_processor: Some(crate::dlq_processor::ProcessorConfig {
            cool_off_ms: 1_000,
            ..Default::default()
        }),
        ..JobFile::default()
    };
    let processor = crate::dlq_processor::job(&file)?;
    let counts = processor.counts.clone();

    let stop = Arc::new(AtomicBool::new(false));
    let stop_job = stop.clone();
    let stop_proc = stop.clone();
    let until = |flag: Arc<AtomicBool>| async move {
        while !flag.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let job_run = tokio::spawn(job.run(until(stop_job)));
    let proc_run = tokio::spawn(processor.job.run(until(stop_proc)));

    // Wait for the outage to pass and the poison to settle, then fix what can be fixed.
    let deadline = Instant::now() + Duration::from_secs(180);
    let delivered = |s: &FlakySink| s.seen.lock().map_or(0, |s| s.len() as u64);
    while delivered(&sink) < good && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let classifier = Classifier::default();
    let mut fixed_lines = String::new();
    let kafka_read = kafka.clone();
    let decoder_read = Decoder::new(registry.clone());
    let lines = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<serde_json::Value>> {
        let mut out = Vec::new();
        read(
            &kafka_read,
            &format!("{TOPIC}.dlq"),
            &BTreeMap::new(),
            &classifier,
            |l| {
                if l.category == "validation" {
                    out.push(export_line(&l, &decoder_read, None));
                }
                Ok::<(), anyhow::Error>(())
            },
        )?;
        Ok(out)
    })
    .await??;
    for mut line in lines {
        line["value"]["battery_pct"] = serde_json::json!(50.0);
        fixed_lines.push_str(&line.to_string());
        fixed_lines.push('\n');
    }
    let to_import = check_import(
        &fixed_lines,
        &Decoder::new(registry.clone()),
        None,
        "demo-fix",
    )
    .map_err(|bad| anyhow::anyhow!("the scripted fix produced invalid lines: {bad:?}"))?;
    let fixed = to_import.len() as u64;
    if fixed != fixable {
        anyhow::bail!("{fixable} records failed validation but {fixed} letters were exported");
    }
    let kafka_import = kafka.clone();
    tokio::task::spawn_blocking(move || produce(&kafka_import, &to_import, |_| {})).await??;

    let want = good + fixed;
    while delivered(&sink) < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    job_run.await?.context("the dead-letter demo job failed")?;
    proc_run.await?.context("the DLQ processor failed")?;

    let mut categories = BTreeMap::new();
    let kafka_read = kafka.clone();
    let cats = tokio::task::spawn_blocking(move || -> anyhow::Result<BTreeMap<String, u64>> {
        let mut c = BTreeMap::new();
        read(
            &kafka_read,
            &format!("{TOPIC}.dlq"),
            &BTreeMap::new(),
            &Classifier::default(),
            |l| {
                *c.entry(l.category).or_default() += 1;
                Ok::<(), anyhow::Error>(())
            },
        )?;
        Ok(c)
    })
    .await??;
    categories.extend(cats);
    let replayed = counts
        .lock()
        .map(|c| c.values().map(|x| x.replayed).sum())
        .unwrap_or(0);
    Ok(DlqSummary {
        produced,
        poison,
        good,
        delivered: delivered(&sink),
        categories,
        replayed,
        fixed,
        unfixable: poison - fixed,
    })
}

impl DlqSummary {
    /// The human-readable summary.
    pub fn render(&self) -> String {
        let mut out = format!(
            "\ndead letters: {} records with {} poison through a job whose sink was down for {} s\n",
            self.produced,
            self.poison,
            OUTAGE.as_secs()
        );
        out.push_str(&format!("\n  {:<24} {:>8}\n", "DLQ category", "letters"));
        for (k, n) in &self.categories {
            out.push_str(&format!("  {k:<24} {n:>8}\n"));
        }
        out.push_str(&format!(
            "\n  replayed by the DLQ processor  {:>6}  (transient: the sink outage outlasted their retries)\
             \n  fixed by export -> import      {:>6}  (validation: battery_pct set to 50)\
             \n  left in the DLQ, unfixable     {:>6}  (bad bytes, unknown schema ids)\
             \n  good records delivered         {:>6} of {}{}\n",
            self.replayed,
            self.fixed,
            self.unfixable,
            self.delivered,
            self.good + self.fixed,
            if self.delivered == self.good + self.fixed {
                "  (every good and every fixed record)"
            } else {
                "  (MISMATCH)"
            }
        ));
        out.push_str(
            "  on a real cluster, the same letters are read and replayed with\n  \
             eventbus dlq stats|inspect|replay|export|import --topic <topic>.dlq\n  \
             (the warning logged for each retry and each letter is hidden here; RUST_LOG=warn shows it)\n",
        );
        out
    }
}
