//! The sides `eventbus bench` measures: the bare rdkafka consumer, the executor with the
//! discard sink, the hand-off floor, the warehouse and the analytics job, each timed
//! from its first record.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use eventbus_operators::DiscardSink;
use eventbus_runtime::{Job, KafkaProperties, KafkaSource, SourceConfig};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

use crate::config::JobFile;
use crate::warehouse::WarehouseArgs;

/// The properties every client of the bench takes: `EVENTBUS_KAFKA_*` (security
/// settings included, secrets read from their files) with `brokers` over them, the same
/// for both sides of a comparison.
///
/// # Errors
/// A secret file cannot be read.
pub(crate) fn kafka(brokers: &str) -> anyhow::Result<KafkaProperties> {
    let mut kafka = KafkaProperties::new();
    kafka.apply_env(std::env::vars());
    kafka.set("bootstrap.servers", brokers);
    kafka.read_secret_files()?;
    Ok(kafka)
}

/// The analytics job in batch mode with internal and output topics `names` (partials,
/// progress, output); records/s from its first record to its return (every
/// fleet-minute emitted and committed).
pub(crate) async fn analytics(
    brokers: &str,
    topic: &str,
    group: &str,
    names: &[String],
    n: u64,
) -> anyhow::Result<f64> {
    let mut file = JobFile {
        kafka: kafka(brokers)?,
        ..JobFile::default()
    };
    file.source = Some(SourceConfig::new(group, Vec::<String>::new()));
    file.analytics = Some(crate::analytics::AnalyticsConfig {
        input: topic.to_owned(),
        partials: names[0].clone(),
        progress: names[1].clone(),
        output: names[2].clone(),
        dead_letters: false,
        ..Default::default()
    });
    let start = Instant::now();
    let args = crate::analytics::AnalyticsArgs {
        until_caught_up: true,
    };
    let report = tokio::time::timeout(
        Duration::from_secs(600),
        crate::analytics::run(&file, &args, std::future::pending()),
    )
    .await
    .context("the analytics side did not finish within 600 s")??;
    if report.partials.consumed < n {
        bail!(
            "the analytics job read only {} of {n} records",
            report.partials.consumed
        );
    }
    Ok(n as f64 / start.elapsed().as_secs_f64().max(1e-9))
}

/// A consumer of `topic` in `group` from the earliest offset, committing nothing: the
/// librdkafka client both the bare side and the hand-off floor poll.
fn plain_consumer(brokers: &str, topic: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    let mut config = ClientConfig::new();
    for (k, v) in kafka(brokers)?.consumer_properties() {
        config.set(k, v);
    }
    let consumer: BaseConsumer = config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

pub(crate) fn bare_consumer(
    brokers: &str,
    topic: &str,
    group: &str,
    n: u64,
) -> anyhow::Result<f64> {
    let consumer = plain_consumer(brokers, topic, group)?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut first = None;
    let (mut count, mut bytes) = (0u64, 0usize);
    while count < n {
        if Instant::now() > deadline {
            bail!("bare consumer read only {count} of {n} records");
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            bytes += m.payload().map_or(0, <[u8]>::len);
            count += 1;
        }
    }
    std::hint::black_box(bytes);
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok(n as f64 / secs.max(1e-9))
}

pub(crate) async fn executor(
    brokers: &str,
    topic: &str,
    group: &str,
    n: u64,
) -> anyhow::Result<f64> {
    let job = Job::builder("bench")
        .source(KafkaSource::new(
            kafka(brokers)?,
            SourceConfig::new(group, [topic]),
        ))
        .map(|v: Bytes| v)
        .sink(DiscardSink)
        .build()?;
    let stats = job.stats();
    let timing = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(300);
        // The job's own clock gives the first record's time, so this loop need not look
        // often: the side's CPU is the job's, not this loop's. Waking every millisecond
        // through the group join, as it once did, cost the discard job about 500 extra
        // context switches per run on tansu. After the first record it sleeps a fiftieth
        // of the time so far (about 200 looks in a 7 s run): the clock stops within 2 %
        // of the end, which can only lower the executor's records/s.
        while stats.delivered() < n && Instant::now() < deadline {
            let sleep = stats
                .first_consumed_at()
                .map_or(Duration::from_millis(50), |t| t.elapsed() / 50);
            tokio::time::sleep(sleep.clamp(Duration::from_millis(2), Duration::from_millis(50)))
                .await;
        }
        (
            stats.first_consumed_at().map(|t| t.elapsed().as_secs_f64()),
            stats.delivered(),
        )
    });
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(job.run(async move {
        let _ = rx.await;
    }));
    let (secs, delivered) = timing.await?;
    let _ = tx.send(());
    run.await??;
    if delivered < n {
        bail!("executor delivered only {delivered} of {n} records");
    }
    Ok(n as f64 / secs.unwrap_or(0.0).max(1e-9))
}

/// The scratch table of one warehouse round.
pub(crate) fn warehouse_root(group: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("eventbus-bench-{group}"))
}

/// The warehouse job in batch mode into a scratch table; records/s from its first record
/// to its return (all published and committed).
pub(crate) async fn warehouse(
    brokers: &str,
    topic: &str,
    group: &str,
    n: u64,
) -> anyhow::Result<f64> {
    let root = warehouse_root(group);
    let mut file = JobFile {
        kafka: kafka(brokers)?,
        ..JobFile::default()
    };
    file.source = Some(SourceConfig::new(group, [topic]));
    let args = WarehouseArgs {
        topics: Vec::new(),
        table_root: Some(root.display().to_string()),
        until_caught_up: true,
    };
    let job = tokio::task::block_in_place(|| crate::warehouse::job(&file, &args))?;
    let stats = job.stats();
    let report = tokio::time::timeout(Duration::from_secs(600), job.run(std::future::pending()))
        .await
        .context("the warehouse side did not finish within 600 s")??;
    let end = Instant::now();
    let first = stats
        .first_consumed_at()
        .context("the warehouse side read no record")?;
    if report.consumed < n {
        bail!(
            "the warehouse job read only {} of {n} records",
            report.consumed
        );
    }
    Ok(n as f64 / end.duration_since(first).as_secs_f64().max(1e-9))
}

/// What handing records to partition tasks costs on its own (a consumer thread that
/// hands each partition's records to that partition's task): the bare consumer's poll
/// loop, one message per call, with each record's key and value copied into a buffer
/// its batch shares (a record cannot outlive librdkafka's message otherwise), and every
/// poll batch's records of a partition sent to that partition's tokio task, which reads
/// them. Nothing else: no offsets tracked, acknowledged or committed, no flow control.
/// Discard job only.
pub(crate) async fn handoff_floor(
    brokers: &str,
    topic: &str,
    group: &str,
    n: u64,
) -> anyhow::Result<f64> {
    /// Records per hand-off at most, as the executor's poll batches.
    const BATCH: usize = 1024;
    /// The shared buffer's chunk.
    const CHUNK: usize = 64 * 1024;
    type Batch = Vec<(i64, Option<Bytes>, Bytes)>;
    let consumer = plain_consumer(brokers, topic, group)?;
    let runtime = tokio::runtime::Handle::current();
    let counted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let work = move || -> anyhow::Result<f64> {
        let mut lanes: HashMap<i32, tokio::sync::mpsc::UnboundedSender<Batch>> = HashMap::new();
        let mut pending: HashMap<i32, Batch> = HashMap::new();
        let mut buf = BytesMut::with_capacity(CHUNK);
        let (mut polled, mut in_batch) = (0u64, 0usize);
        let mut first = None;
        let deadline = Instant::now() + Duration::from_secs(300);
        let copy = |bytes: &[u8], buf: &mut BytesMut| {
            if buf.capacity() - buf.len() < bytes.len() {
                *buf = BytesMut::with_capacity(CHUNK.max(bytes.len()));
            }
            buf.extend_from_slice(bytes);
            buf.split_to(bytes.len()).freeze()
        };
        while counted.load(std::sync::atomic::Ordering::Relaxed) < n {
            if Instant::now() > deadline {
                return Err(anyhow::anyhow!(
                    "the hand-off floor read only {polled} of {n}"
                ));
            }
            let message = if polled < n {
                consumer.poll(Duration::from_millis(100))
            } else {
                std::thread::sleep(Duration::from_millis(1));
                None
            };
            if let Some(Ok(m)) = &message {
                first.get_or_insert_with(Instant::now);
                let key = m.key().map(|k| copy(k, &mut buf));
                let value = copy(m.payload().unwrap_or_default(), &mut buf);
                pending
                    .entry(m.partition())
                    .or_default()
                    .push((m.offset(), key, value));
                polled += 1;
                in_batch += 1;
            }
            if in_batch >= BATCH || (message.is_none() && in_batch > 0) {
                for (p, batch) in pending.drain() {
                    let lane = lanes.entry(p).or_insert_with(|| {
                        let (lane, mut records) = tokio::sync::mpsc::unbounded_channel::<Batch>();
                        let counted = counted.clone();
                        runtime.spawn(async move {
                            while let Some(batch) = records.recv().await {
                                let bytes: usize = batch.iter().map(|r| r.2.len()).sum();
                                std::hint::black_box(bytes);
                                counted.fetch_add(
                                    batch.len() as u64,
                                    std::sync::atomic::Ordering::Relaxed,
                                );
                            }
                        });
                        lane
                    });
                    let _ = lane.send(batch);
                }
                in_batch = 0;
            }
        }
        let secs = first.map_or(0.0, |t: Instant| t.elapsed().as_secs_f64());
        Ok(n as f64 / secs.max(1e-9))
    };
    std::thread::Builder::new()
        .name("bench-handoff".to_owned())
        .spawn(move || {
            let result = work();
            // The consumer leaves its group before the side ends: the mock cluster may
            // be shut down next, and a consumer still closing would log its lost
            // connections as errors.
            drop(work);
            let _ = tx.send(result);
        })?;
    rx.await?
}
