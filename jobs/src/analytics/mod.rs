//! The `analytics` job: per fleet and UTC minute of `event_time`, the distinct vehicles,
//! the events, the mean speed while driving, the lowest battery and the events per
//! status, from `vehicle.state.v1` to `analytics.fleet_minute.v1` (Avro `FleetMinute`,
//! keyed by `fleet_id`).
//!
//! A fleet's vehicles are spread over every input partition, so it runs in two stages
//! through Kafka; both run in every process, each in its own consumer group, and more
//! processes share the work:
//!
//! 1. **Partials** (group `G`): per input partition, a [`Windowed`] aggregation keyed by
//!    fleet. Each closed window's partial goes to `analytics.fleet_minute_partials.v1`,
//!    to the partition of its fleet. Twice a second, each input partition's progress
//!    (every window ending at or before `t` delivered) goes to every partials partition
//!    as a watermark record.
//! 2. **Final** (group `G-final`): per partials partition, a [`FinalStage`] merges the
//!    partials of a fleet-minute and emits it once every input partition's watermark has
//!    passed the minute.
//!
//! **Exact under crashes.** Input records are held until their window's partial is
//! delivered, partials until the final result is delivered, so a crash re-reads what it
//! needs. Results are deterministic, so consumers deduplicate by (`fleet_id`, `minute`).
//! A partial sent twice, or again with fewer records after a restart of the first stage,
//! never replaces what the final stage merged or emitted: see [`final_stage`].
//!
//! **Batch mode** (`until_caught_up`): the end offsets of the input at start are the end
//! of input. Once every input partition is there, the first stage closes every window and
//! publishes a watermark at the end of time; the final stage emits everything, commits,
//! and the run exits.

mod batch;
mod final_stage;
mod partial;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use eventbus_dlq::KafkaDeadLetters;
use eventbus_operators::window::Windows;
use eventbus_operators::windowed::{WindowSettings, Windowed};
use eventbus_operators::{KafkaSink, KafkaSinkConfig, Partitioning};
use eventbus_runtime::event_time::EventTime;
use eventbus_runtime::{
    Job, JobReport, KafkaProperties, KafkaSource, RuntimeConfig, SourceConfig, TopicPartition,
};
use eventbus_schemas::events::FleetMinutePartial;
use eventbus_schemas::fast::{
    FleetMinutePartialDecoder, VehicleReadingDecoder, VehicleStateDecoder,
};
use eventbus_schemas::{Decoder, FileRegistry, SchemaRegistry};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Deserialize;

pub use final_stage::{FinalSettings, FinalStage, ProgressReader};
pub use partial::{
    FleetAcc, FleetAggregate, Input, LateWriter, PartialWriter, Reading, partition_of,
};

use crate::config::JobFile;

/// Default consumer group of the first stage; the final stage's is this plus `-final`.
pub const DEFAULT_GROUP: &str = "eventbus-analytics";

/// The `[analytics]` section.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsConfig {
    /// The input topic. Default `vehicle.state.v1`.
    pub input: String,
    /// The output topic. Default `analytics.fleet_minute.v1`.
    pub output: String,
    /// The partials (repartition) topic. Default `analytics.fleet_minute_partials.v1`.
    pub partials: String,
    /// The final stage's progress topic. Default `analytics.fleet_minute_progress.v1`.
    pub progress: String,
    /// Window length, ms. Default 60000 (a minute).
    pub window_ms: i64,
    /// How far behind its partition's largest event time a record is still on time, ms.
    /// Default 5000.
    pub out_of_orderness_ms: i64,
    /// How long after its end a window still takes records, ms. Default 0.
    pub lateness_ms: i64,
    /// An input partition with nothing new for this long (an empty one included) stops
    /// holding results back, ms. Default 30000. A partition whose owner is down holds
    /// them back until its next owner says otherwise.
    pub idle_timeout_ms: u64,
    /// A topic for input records too late for their window (encoded again with the
    /// catalog's VehicleState schema, key and headers kept). Default none: they are
    /// counted and logged at a low rate only.
    pub late_topic: Option<String>,
    /// Bound on the first stage's open windows, bytes (see
    /// [`WindowSettings::max_state_bytes`]). Default 268435456 (256 MiB).
    pub max_state_bytes: usize,
    /// Quarantine input records that cannot be decoded in the input's DLQ (`[dlq]`).
    /// Default true; false stops the job on one.
    pub dead_letters: bool,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        Self {
            input: "vehicle.state.v1".to_owned(),
            output: "analytics.fleet_minute.v1".to_owned(),
            partials: "analytics.fleet_minute_partials.v1".to_owned(),
            progress: "analytics.fleet_minute_progress.v1".to_owned(),
            window_ms: 60_000,
            out_of_orderness_ms: 5_000,
            lateness_ms: 0,
            idle_timeout_ms: 30_000,
            late_topic: None,
            max_state_bytes: 256 << 20,
            dead_letters: true,
        }
    }
}

impl AnalyticsConfig {
    /// Checks the settings.
    ///
    /// # Errors
    /// A setting out of range, named.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.window_ms < 1 {
            bail!(
                "analytics.window_ms must be at least 1 (got {})",
                self.window_ms
            );
        }
        if self.out_of_orderness_ms < 0 || self.lateness_ms < 0 {
            bail!("analytics.out_of_orderness_ms and analytics.lateness_ms must not be negative");
        }
        Ok(())
    }
}

/// How often the first stage publishes its partitions' watermarks when they move, and
/// at most how long it stays silent when they do not.
const WATERMARK_EVERY: Duration = Duration::from_millis(500);
const WATERMARK_HEARTBEAT: Duration = Duration::from_secs(5);

/// What an analytics run did.
#[derive(Debug, Clone)]
pub struct AnalyticsReport {
    /// The first stage's job.
    pub partials: JobReport,
    /// The final stage's job.
    pub results: JobReport,
    /// Input records too late for their window (or without an event time).
    pub late: u64,
    /// Fleet-minutes emitted by this run (a crash re-emits some).
    pub emitted: u64,
    /// Partials dropped as copies.
    pub duplicates: u64,
}

/// Settings of one run.
#[derive(Debug, Clone, Default)]
pub struct AnalyticsArgs {
    /// Stop at the input's end offsets at start.
    pub until_caught_up: bool,
}

fn cluster_client(kafka: &KafkaProperties) -> anyhow::Result<BaseConsumer> {
    let mut cfg = ClientConfig::new();
    for (k, v) in kafka.iter() {
        cfg.set(k, v);
    }
    cfg.create()
        .context("cannot create the client that reads the topics' metadata")
}

/// Per partition of `topic`, its (low, high) offsets.
fn ends(
    client: &BaseConsumer,
    kafka: &KafkaProperties,
    topic: &str,
) -> anyhow::Result<BTreeMap<i32, (i64, i64)>> {
    let brokers = kafka.brokers().unwrap_or_default();
    Ok(eventbus_runtime::kafka::watermarks(
        client,
        topic,
        brokers,
        Duration::from_secs(30),
    )?)
}

/// Reads partials partition `r`'s progress: the largest of its last few progress
/// records (a zombie's late write can only be older).
fn progress_reader(kafka: &KafkaProperties, topic: &str) -> anyhow::Result<ProgressReader> {
    // A reader needs a group to poll, though it never joins it nor commits.
    let mut props = kafka.clone();
    props.set("group.id", "eventbus-analytics-progress-reader".to_owned());
    props.set("enable.auto.commit", "false");
    let client = Arc::new(std::sync::Mutex::new(cluster_client(&props)?));
    let topic = topic.to_owned();
    let brokers = kafka.brokers().unwrap_or_default().to_owned();
    let decoder = Decoder::new(Arc::new(FileRegistry::embedded()?) as Arc<dyn SchemaRegistry>);
    Ok(Arc::new(move |r: i32| {
        let client = client.lock().unwrap_or_else(|p| p.into_inner());
        let (low, high) =
            eventbus_runtime::kafka::watermark(&*client, &topic, r, Duration::from_secs(30))
                .map_err(|e| format!("{topic}[{r}] on {brokers}: {e}"))?;
        if high <= low {
            return Ok(i64::MIN);
        }
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(&topic, r, rdkafka::Offset::Offset((high - 16).max(low)))
            .map_err(|e| e.to_string())?;
        client.assign(&tpl).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut best = i64::MIN;
        let mut next = (high - 16).max(low);
        while next < high {
            if Instant::now() > deadline {
                return Err(format!(
                    "{topic}[{r}]: timed out reading the last progress records"
                ));
            }
            match client.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    use rdkafka::Message;
                    next = m.offset() + 1;
                    if let Ok(p) = decoder
                        .decode_typed::<FleetMinutePartial>(m.payload().unwrap_or_default(), None)
                        && p.source_partition == r
                    {
                        best = best.max(p.watermark);
                    }
                }
                Some(Err(e)) => return Err(format!("{topic}[{r}]: {e}")),
                None => {}
            }
        }
        let _ = client.unassign();
        Ok(best)
    }))
}

/// The two stages' runtime bounds: the defaults, unless `[runtime]` says otherwise.
fn runtime_config(file: &JobFile) -> RuntimeConfig {
    file.runtime.clone()
}

/// Runs the analytics job until `shutdown` (or, in batch mode, until caught up).
///
/// # Errors
/// A setting is wrong, a topic is missing, or a stage stopped with an error.
#[allow(clippy::too_many_lines)]
pub async fn run(
    file: &JobFile,
    args: &AnalyticsArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<AnalyticsReport> {
    let kafka = file.kafka.clone();
    kafka.require_brokers()?;
    let config = file.analytics.clone().unwrap_or_default();
    config.check()?;
    let group = file
        .source
        .as_ref()
        .map_or_else(|| DEFAULT_GROUP.to_owned(), |s| s.group_id.clone());
    let registry = Arc::new(FileRegistry::embedded()?);
    let subject = |name: &str| -> anyhow::Result<(u32, Arc<apache_avro::Schema>)> {
        registry
            .latest_of(name)
            .with_context(|| format!("subject {name} is not registered"))
    };
    let partials_schema = subject(&format!("{}-value", "analytics.fleet_minute_partials.v1"))?;
    let progress_schema = subject(&format!("{}-value", "analytics.fleet_minute_progress.v1"))?;
    let out_schema = subject(&format!("{}-value", "analytics.fleet_minute.v1"))?;

    let (input_ends, partials_count) = tokio::task::block_in_place(|| {
        let client = cluster_client(&kafka)?;
        let input_ends = ends(&client, &kafka, &config.input)?;
        let partials = ends(&client, &kafka, &config.partials)?.len();
        ends(&client, &kafka, &config.progress)?;
        ends(&client, &kafka, &config.output)?;
        if let Some(late) = &config.late_topic {
            ends(&client, &kafka, late)?;
        }
        anyhow::Ok((input_ends, partials))
    })?;
    let source_partitions = i32::try_from(input_ends.len()).unwrap_or(i32::MAX);
    let partials_count = i32::try_from(partials_count).unwrap_or(i32::MAX);

    // Stage 1: input → windows → partials.
    let partial_sink =
        |schema: &(u32, Arc<apache_avro::Schema>), topic: &str| -> anyhow::Result<PartialWriter> {
            Ok(PartialWriter {
                sink: KafkaSink::new(
                    &kafka,
                    KafkaSinkConfig::new(topic).partitioning(Partitioning::Source),
                )?,
                id: schema.0,
                schema: schema.1.clone(),
                partitions: partials_count,
                source_partitions,
            })
        };
    let writer = partial_sink(&partials_schema, &config.partials)?;
    let windowed = Windowed::by_value(
        WindowSettings {
            windows: Windows::Tumbling {
                size_ms: config.window_ms,
            },
            out_of_orderness_ms: config.out_of_orderness_ms,
            lateness_ms: config.lateness_ms,
            max_state_bytes: config.max_state_bytes,
        },
        EventTime::Extract(Arc::new(|r: &eventbus_runtime::Record<Input>| {
            Some(r.value.reading.event_time)
        })),
        Input::split,
        FleetAggregate,
        writer.clone(),
    );
    let windowed = match &config.late_topic {
        Some(topic) => windowed.with_late_output(LateWriter {
            sink: KafkaSink::new(&kafka, KafkaSinkConfig::new(topic.clone()))?,
            schema: subject("vehicle.state.v1-value")?,
            decoder: Arc::new(VehicleStateDecoder::new(registry.clone())),
        }),
        None => windowed,
    };
    let decoder = VehicleReadingDecoder::new(registry.clone());
    let mut first = SourceConfig::new(group.clone(), [config.input.clone()]);
    first.commit_interval_ms = 1000;
    let mut stage1 = Job::builder("analytics")
        .config(runtime_config(file))
        .source(KafkaSource::new(kafka.clone(), first));
    // Records that do not decode (or, on the partials topic, do not make sense) go to
    // their topic's DLQ in both stages: bytes from any producer never stop a partition.
    let letters = |group: &str| -> anyhow::Result<KafkaDeadLetters> {
        let catalog =
            eventbus_schemas::Catalog::load(&eventbus_schemas::bundled_dir().join("topics.toml"))?;
        let mut dlq = file.dlq.clone().unwrap_or_default().with_catalog(&catalog);
        dlq.group.get_or_insert(group.to_owned());
        Ok(KafkaDeadLetters::new(&kafka, dlq)
            .context("starting the dead-letter producer")?
            .with_registry(registry.clone()))
    };
    if config.dead_letters {
        stage1 = stage1.dead_letters(letters(&group)?);
    }
    // Where each input partition has been read to, bad records included: batch mode's
    // end of input.
    let positions: Arc<Vec<AtomicI64>> =
        Arc::new((0..source_partitions).map(|_| AtomicI64::new(-1)).collect());
    let seen = positions.clone();
    let stage1 = stage1
        .map_record(move |r: eventbus_runtime::Record<Bytes>| {
            if let Some(slot) = usize::try_from(r.partition).ok().and_then(|p| seen.get(p)) {
                slot.fetch_max(r.offset, Ordering::Relaxed);
            }
            r
        })
        .try_map(move |raw: Bytes| {
            let reading = decoder.decode(&raw, None)?;
            Ok::<_, eventbus_schemas::DecodeError>(Input { reading, raw })
        })
        .sink(windowed.clone())
        .build()?;

    // Stage 2: partials → results.
    let partials = FleetMinutePartialDecoder::new(registry.clone());
    let final_stage = FinalStage::new(FinalSettings {
        out: KafkaSink::new(&kafka, KafkaSinkConfig::new(config.output.clone()))?,
        out_schema,
        progress: partial_sink(&progress_schema, &config.progress)?,
        progress_reader: progress_reader(&kafka, &config.progress)?,
        window_ms: config.window_ms,
    });
    let mut second = SourceConfig::new(format!("{group}-final"), [config.partials.clone()]);
    second.commit_interval_ms = 1000;
    let mut stage2 = Job::builder("analytics-final")
        .config(runtime_config(file))
        .source(KafkaSource::new(kafka.clone(), second));
    if config.dead_letters {
        stage2 = stage2.dead_letters(letters(&format!("{group}-final"))?);
    }
    let stage2 = stage2
        .try_map(move |b: Bytes| {
            let p = partials.decode(&b, None)?;
            partial::check(&p)?;
            Ok::<_, eventbus_schemas::DecodeError>(p)
        })
        .sink(final_stage.clone())
        .build()?;

    // Watermarks, and in batch mode the end of input. Either stage failing stops the
    // other: the run fails as a whole.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let marks = tokio::spawn(publish_watermarks(
        windowed.clone(),
        writer.clone(),
        Duration::from_millis(config.idle_timeout_ms),
    ));
    let batch = args.until_caught_up.then(|| {
        let input = config.input.clone();
        let windowed = windowed.clone();
        let writer = writer.clone();
        let final_stage = final_stage.clone();
        let group = group.clone();
        let kafka = kafka.clone();
        let positions = positions.clone();
        let partials = config.partials.clone();
        tokio::spawn(async move {
            batch::finish_input(
                &windowed, &writer, &input, input_ends, &positions, &kafka, &group,
            )
            .await?;
            tracing::info!("the input is closed; waiting for the final stage");
            let others = batch::OthersDone::new(&kafka, &format!("{group}-final"), &partials)?;
            let mut checked = Instant::now() - Duration::from_secs(10);
            loop {
                if let Some((true, rest)) = final_stage.complete(partials_count) {
                    // Partitions another member holds are done once the final stage's
                    // group has committed them to their end.
                    if rest.is_empty() {
                        break;
                    }
                    if checked.elapsed() >= Duration::from_secs(1) {
                        checked = Instant::now();
                        if others.committed_to_end(rest).await {
                            break;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(())
        })
    });
    let stopper = {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            let outcome = match batch {
                Some(batch) => tokio::select! {
                    () = shutdown => Ok(()),
                    r = batch => match r {
                        Ok(Ok(())) => {
                            tracing::info!("every fleet-minute of the input is emitted");
                            Ok(())
                        }
                        Ok(Err(e)) => Err(e),
                        Err(e) => Err(anyhow::anyhow!("batch mode panicked: {e}")),
                    },
                },
                None => {
                    shutdown.await;
                    Ok(())
                }
            };
            let _ = stop_tx.send(true);
            outcome
        })
    };
    let ended = |r: Result<JobReport, eventbus_runtime::RuntimeError>| {
        let _ = stop_tx.send(true);
        r
    };
    let (r1, r2) = tokio::join!(
        async { ended(stage1.run(stopped(stop_rx.clone())).await) },
        async { ended(stage2.run(stopped(stop_rx.clone())).await) }
    );
    marks.abort();
    let partials = r1.context("the analytics first stage (partials) stopped")?;
    let results = r2.context("the analytics final stage stopped")?;
    if stopper.is_finished() {
        match stopper.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.context("batch mode")),
            Err(e) => bail!("batch mode panicked: {e}"),
        }
    } else {
        stopper.abort();
    }
    Ok(AnalyticsReport {
        partials,
        results,
        late: windowed.late(),
        emitted: final_stage.emitted(),
        duplicates: final_stage.duplicates(),
    })
}

/// Publishes each input partition's progress to every partials partition: when it
/// moved (at most every [`WATERMARK_EVERY`]) and at least every
/// [`WATERMARK_HEARTBEAT`]. A partition that took no record for `idle_timeout` is
/// marked idle.
async fn publish_watermarks<W>(windowed: W, writer: PartialWriter, idle_timeout: Duration)
where
    W: Progress,
{
    let mut last: HashMap<TopicPartition, (i64, bool, Instant)> = HashMap::new();
    let mut records: HashMap<TopicPartition, (u64, Instant)> = HashMap::new();
    loop {
        tokio::time::sleep(WATERMARK_EVERY).await;
        for p in windowed.progress() {
            let now = Instant::now();
            let seen = records
                .entry(p.partition.clone())
                .or_insert((p.records, now));
            if seen.0 != p.records {
                *seen = (p.records, now);
            }
            let idle = p.closed_through != i64::MAX && now.duration_since(seen.1) >= idle_timeout;
            let due = last.get(&p.partition).is_none_or(|(at, was_idle, sent)| {
                *at != p.closed_through
                    || *was_idle != idle
                    || sent.elapsed() >= WATERMARK_HEARTBEAT
            });
            if due {
                drop(
                    writer
                        .watermark(p.partition.partition, p.closed_through, idle)
                        .await,
                );
                last.insert(p.partition.clone(), (p.closed_through, idle, now));
            }
        }
    }
}

/// What [`publish_watermarks`] needs of the windows.
trait Progress: Send + 'static {
    fn progress(&self) -> Vec<eventbus_operators::windowed::PartitionProgress>;
}

impl<T, K, A, S> Progress for Windowed<T, K, A, S>
where
    T: Send + Sync + 'static,
    K: Clone + Eq + std::hash::Hash + Send + Sync + 'static,
    A: eventbus_operators::window::Aggregate,
    A::Acc: Sync,
    S: eventbus_runtime::Sink<eventbus_operators::windowed::WindowResult<K, A::Out>>,
{
    fn progress(&self) -> Vec<eventbus_operators::windowed::PartitionProgress> {
        Windowed::progress(self)
    }
}

/// `eventbus run analytics`.
///
/// # Errors
/// The job cannot start, or stops with an error.
pub async fn command(
    mut file: JobFile,
    overrides: &crate::config::Overrides,
    args: crate::cli::RunArgs,
) -> anyhow::Result<()> {
    file.default_source(DEFAULT_GROUP, Vec::new(), overrides);
    let report = run(
        &file,
        &AnalyticsArgs {
            until_caught_up: args.until_caught_up,
        },
        eventbus_runtime::shutdown::signals(),
    )
    .await?;
    tracing::info!(
        consumed = report.partials.consumed,
        late = report.late,
        emitted = report.emitted,
        duplicates = report.duplicates,
        "analytics job finished"
    );
    Ok(())
}
