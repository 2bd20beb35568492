//! The sides `eventbus bench` measures: the bare rdkafka consumer, the executor with the
//! discard sink, the warehouse and the analytics job, each timed from its first record.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
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

pub(crate) fn bare_consumer(
    brokers: &str,
    topic: &str,
    group: &str,
    n: u64,
) -> anyhow::Result<f64> {
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
        let mut first = None;
        while stats.delivered() < n && Instant::now() < deadline {
            if first.is_none() && stats.consumed() > 0 {
                first = Some(Instant::now());
            }

            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        (first.map(|t| t.elapsed().as_secs_f64()), stats.delivered())
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
    let first = tokio::spawn(async move {
        while stats.consumed() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Instant::now()
    });
    let report = tokio::time::timeout(Duration::from_secs(600), job.run(std::future::pending()))
        .await
        .context("the warehouse side did not finish within 600 s")??;
    let end = Instant::now();
    let first = first.await?;
    if report.consumed < n {
        bail!(
            "the warehouse job read only {} of {n} records",
            report.consumed
        );
    }
    Ok(n as f64 / end.duration_since(first).as_secs_f64().max(1e-9))
}
