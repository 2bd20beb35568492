//! The `warehouse` job: topics → decode (wire format + registry) → one Parquet table
//! per topic under the table root, each record exactly once (see
//! [`eventbus_operators::sinks::parquet`]).
//!
//! ```text
//! Job::builder("warehouse")
//!     .source(KafkaSource::new(kafka, source))
//!     .sink(ParquetSink::new(config, lookup, &ids)?)
//! ```
//!
//! Writer schemas come from `[registry]` (a Confluent-API schema registry, `--registry`)
//! when it names a URL, else from the file registry compiled in.
//!
//! A record that cannot be decoded goes to its topic's DLQ (`[dlq]`, default the
//! catalog's `<topic>.dlq`) with its full context, and its partition goes on; set
//! `[warehouse] dead_letters = false` to stop the job on it instead.
//!
//! With `until_caught_up` it stops once every partition of its topics has reached the end
//! offset it had at start (read by this instance, or committed by the group), publishes,
//! commits and returns: the batch-loader mode.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use eventbus_dlq::KafkaDeadLetters;
use eventbus_operators::{ParquetSink, ParquetSinkConfig, PartitionEnds, SchemaLookup};
use eventbus_runtime::operator::Identity;
use eventbus_runtime::{
    JobReport, JobStats, KafkaProperties, KafkaSource, RunnableJob, RuntimeConfig, SourceConfig,
    TopicPartition,
};
use eventbus_schemas::{Catalog, FileRegistry, SchemaRegistry};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::config::JobFile;

/// Default consumer group of the warehouse job.
pub const DEFAULT_GROUP: &str = "eventbus-warehouse";

/// Command-line settings of `eventbus run warehouse`.
#[derive(Debug, Clone, Default)]
pub struct WarehouseArgs {
    /// `--topics`.
    pub topics: Vec<String>,
    /// `--table-root`.
    pub table_root: Option<String>,
    /// `--until-caught-up`.
    pub until_caught_up: bool,
}

/// A warehouse job ready to run.
pub struct Warehouse {
    job: RunnableJob<KafkaSource, Identity, ParquetSink>,
    sink: ParquetSink,
    /// Where the tables are.
    pub table_root: String,
    /// In batch mode, where to stop.
    batch: Option<Batch>,
}

/// What batch mode stops at: each partition's (low, high) offsets at start, and the
/// cluster view that reads the group's committed offsets.
struct Batch {
    ends: BTreeMap<TopicPartition, (i64, i64)>,
    cluster: Arc<Cluster>,
}

impl std::fmt::Debug for Warehouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Warehouse")
            .field("table_root", &self.table_root)
            .finish_non_exhaustive()
    }
}

/// The schema lookup the sink uses: `[registry]`'s HTTP registry, else the file registry
/// compiled in.
fn lookup(registry: Arc<dyn SchemaRegistry>) -> SchemaLookup {
    Arc::new(move |id| match registry.schema(id) {
        Ok(Some(schema)) => serde_json::to_string(&*schema)
            .map(Some)
            .map_err(|e| e.to_string()),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    })
}

/// Builds the job from a job file and the command line.
///
/// # Errors
/// No brokers, no topics, a schema that cannot map to Arrow (named), or a table root
/// that cannot be opened.
pub fn job(file: &JobFile, args: &WarehouseArgs) -> anyhow::Result<Warehouse> {
    // Before the cluster view below, which would wait out its timeout without brokers.
    file.kafka.require_brokers()?;
    let wh = file.warehouse.clone().unwrap_or_default();
    let mut source = match &file.source {
        Some(s) => s.clone(),
        None => SourceConfig::new(DEFAULT_GROUP, Vec::<String>::new()),
    };
    if !args.topics.is_empty() {
        source.topics = args.topics.clone();
    }
    if source.topics.is_empty() {
        bail!("no topics: give --topics T1,T2 or [source] topics in the config");
    }
    let files = Arc::new(FileRegistry::embedded()?);
    let http = file.registry.http()?;
    let catalog = Catalog::load(&eventbus_schemas::bundled_dir().join("topics.toml"))?;
    // The schema ids checked up front (each must map to Arrow, or the job does not start);
    // any other id is looked up, and checked, when a record names it.
    let mut ids = Vec::new();
    let mut event_time = wh.event_time_fields.clone();
    for topic in &source.topics {
        let Some(spec) = catalog.topic(topic) else {
            // Any registered schema may arrive on a topic outside the catalog: with the
            // file registry, every one is checked.
            if http.is_none() {
                ids.extend(files.entries().map(|e| e.id));
            }
            continue;
        };
        let schema = match &http {
            // A catalog topic: its subject's latest version in the registry.
            Some(registry) => match registry.latest(&spec.subject) {
                Ok(Some((id, schema))) => {
                    ids.push(id);
                    schema
                }
                Ok(None) => {
                    tracing::warn!(
                        topic = %topic,
                        subject = %spec.subject,
                        registry = file.registry.url.as_deref().unwrap_or_default(),
                        "the subject has no version in the schema registry yet; schemas are looked up as records arrive"
                    );
                    continue;
                }
                Err(e) => bail!(
                    "cannot read subject {} from the schema registry {}: {e}",
                    spec.subject,
                    file.registry.url.as_deref().unwrap_or_default()
                ),
            },
            // A catalog topic: every version of its subject.
            None => {
                let (_, schema) = files
                    .latest_of(&spec.subject)
                    .with_context(|| format!("subject {} is not registered", spec.subject))?;
                ids.extend(
                    files
                        .entries()
                        .filter(|e| e.subject == spec.subject)
                        .map(|e| e.id),
                );
                schema
            }
        };
        if !event_time.contains_key(topic)
            && let apache_avro::Schema::Record(r) = &*schema
            && r.fields.iter().any(|f| f.name == "event_time")
        {
            event_time.insert(topic.clone(), "event_time".to_owned());
        }
    }
    ids.sort_unstable();
    ids.dedup();
    let defaults = ParquetSinkConfig::default();
    let mut config = wh.clone();
    if let Some(root) = &args.table_root {
        config.table_root = root.clone();
    }
    let table_root = config.table_root.clone();
    // Buffered rows are in flight until their file is published, so files are sized by
    // the runtime's bounds. Left at the runtime's defaults, the bounds grow to the
    // warehouse's own (bigger files); set [runtime] to choose.
    let runtime = if file.runtime == RuntimeConfig::default() {
        RuntimeConfig {
            max_in_flight_per_partition: 200_000,
            max_in_flight: 1_000_000,
            // The default roll size (128 MiB of input) is 3/4 of this, so files roll
            // before their partition is paused for size.
            max_in_flight_bytes_per_partition: 171 << 20,
            max_in_flight_bytes: 1 << 30,
            ..RuntimeConfig::default()
        }
    } else {
        file.runtime.clone()
    };
    // A value left at the sink's default yields to the runtime's bound without a word.
    let bound = runtime.max_in_flight_per_partition;
    let rows_set = wh.roll_rows != defaults.roll_rows;
    if rows_set && wh.roll_rows > bound {
        tracing::warn!(
            roll_rows = wh.roll_rows,
            max_in_flight_per_partition = bound,
            "warehouse.roll_rows is above runtime.max_in_flight_per_partition; files roll at the latter"
        );
    }
    config.roll_rows = if rows_set { wh.roll_rows } else { bound }.clamp(1, bound);
    config.max_buffered_rows = (runtime.max_in_flight / 4 * 3).max(1);
    config.roll_bytes = config.roll_bytes.max(1);
    // Likewise for bytes: a partition paused for size before its file rolls would wait
    // for the maximum age. The runtime counts keys and headers too, which roll_bytes
    // does not: a quarter of headroom.
    let byte_bound = (runtime.max_in_flight_bytes_per_partition / 4 * 3).max(1);
    if config.roll_bytes > byte_bound {
        if wh.roll_bytes != defaults.roll_bytes {
            tracing::warn!(
                roll_bytes = config.roll_bytes,
                max_in_flight_bytes_per_partition = byte_bound,
                "warehouse.roll_bytes is above 3/4 of runtime.max_in_flight_bytes_per_partition; files roll there"
            );
        }
        config.roll_bytes = byte_bound;
    }
    config.row_group_rows = config.row_group_rows.max(1);
    config.event_time_fields = event_time;
    let registry: Arc<dyn SchemaRegistry> = match http {
        Some(h) => Arc::new(h),
        None => files,
    };
    let letters_registry = registry.clone();
    let sink = ParquetSink::new(config, lookup(registry), &ids)
        .with_context(|| format!("opening the tables under {table_root}"))?;
    sink.set_partition_ends(partition_ends(&file.kafka)?);
    let dead_letters = wh.dead_letters;
    // One view of the cluster serves batch mode (which needs it, and the group, to read
    // committed offsets) and the DLQ-topic check (which can do without it: the job's own
    // start-up check names an unreachable cluster).
    let cluster = if args.until_caught_up {
        Some(Arc::new(Cluster::look(
            &file.kafka,
            Some(&source.group_id),
        )?))
    } else if dead_letters {
        Cluster::look(&file.kafka, None)
            .inspect_err(|e| tracing::debug!(error = %e, "cannot check the DLQ topics"))
            .ok()
            .map(Arc::new)
    } else {
        None
    };
    let batch = match &cluster {
        Some(c) if args.until_caught_up => Some(Batch {
            ends: c.end_offsets(&source.topics)?,
            cluster: c.clone(),
        }),
        _ => None,
    };
    let mut pipeline = eventbus_runtime::Job::builder("warehouse")
        .config(runtime)
        .source(KafkaSource::new(file.kafka.clone(), source.clone()));
    if dead_letters {
        let mut dlq = file.dlq.clone().unwrap_or_default().with_catalog(&catalog);
        dlq.group.get_or_insert(source.group_id);
        if let Some(c) = &cluster {
            c.warn_missing(
                &source
                    .topics
                    .iter()
                    .map(|t| dlq.dlq_topic(t))
                    .collect::<Vec<_>>(),
            );
        }
        pipeline = pipeline.dead_letters(
            KafkaDeadLetters::new(&file.kafka, dlq)
                .context("starting the dead-letter producer")?
                .with_registry(letters_registry),
        );
    }
    let job = pipeline.sink(sink.clone()).build()?;
    Ok(Warehouse {
        job,
        sink,
        table_root,
        batch,
    })
}

impl Warehouse {
    /// Live counters of the job.
    pub fn stats(&self) -> Arc<JobStats> {
        self.job.stats()
    }

    /// Runs until `shutdown` resolves (or, in batch mode, until caught up).
    ///
    /// # Errors
    /// The job failed; offsets were not committed past what the tables hold.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<JobReport> {
        let sink = self.sink;
        sink.check_store().await?;
        let stop: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match self.batch {
            None => Box::pin(shutdown),
            Some(batch) => Box::pin(async move {
                tokio::select! {
                    () = shutdown => {}
                    () = caught_up(sink, batch) => {
                        tracing::info!("every partition reached its start-time end offset");
                    }
                }
            }),
        };
        Ok(self.job.run(stop).await?)
    }
}

/// Reads a topic's partitions and their offsets for the watermarks, through a client of
/// its own that joins no group.
fn partition_ends(kafka: &KafkaProperties) -> anyhow::Result<PartitionEnds> {
    let mut cfg = ClientConfig::new();
    for (k, v) in kafka.iter() {
        cfg.set(k, v);
    }
    let client: BaseConsumer = cfg
        .create()
        .context("cannot create the client that reads partition offsets")?;
    let brokers = kafka.brokers().unwrap_or_default().to_owned();
    Ok(Arc::new(move |topic: &str| {
        eventbus_runtime::kafka::watermarks(&client, topic, &brokers, Duration::from_secs(10))
            .map_err(|e| e.to_string())
    }))
}

/// The cluster as the job finds it at start: one client and one metadata request
/// serve the batch mode's end offsets and the DLQ-topic check.
struct Cluster {
    consumer: BaseConsumer,
    metadata: rdkafka::metadata::Metadata,
    /// The bootstrap servers, for errors.
    brokers: String,
}

impl Cluster {
    /// A view of the cluster; with `group`, it can also read that group's committed
    /// offsets (it never joins the group).
    fn look(kafka: &KafkaProperties, group: Option<&str>) -> anyhow::Result<Self> {
        let mut cfg = ClientConfig::new();
        for (k, v) in kafka.iter() {
            cfg.set(k, v);
        }
        // Without a group, metadata and watermarks need no coordinator.
        if let Some(group) = group {
            cfg.set("group.id", group);
            cfg.set("enable.auto.commit", "false");
        }
        let brokers = kafka.brokers().unwrap_or_default().to_owned();
        let consumer: BaseConsumer = cfg.create().context("cannot create a consumer")?;
        let metadata = consumer
            .fetch_metadata(None, Duration::from_secs(30))
            .with_context(|| format!("cannot read the cluster's metadata from {brokers}"))?;
        Ok(Self {
            consumer,
            metadata,
            brokers,
        })
    }

    fn topic(&self, name: &str) -> Option<&rdkafka::metadata::MetadataTopic> {
        self.metadata
            .topics()
            .iter()
            .find(|t| t.name() == name && t.error().is_none())
    }

    /// Warns about DLQ topics the cluster does not have: a bad record would otherwise
    /// find out minutes later, when its letter's tries run out and the job stops.
    /// Brokers that create topics on first write are fine; the warning says how to
    /// create them.
    fn warn_missing(&self, dlq_topics: &[String]) {
        for topic in dlq_topics.iter().filter(|t| self.topic(t).is_none()) {
            tracing::warn!(
                dlq = %topic,
                "the DLQ topic does not exist: a record that cannot be decoded will stop \
                 the job unless the broker creates it on first write; create it with \
                 `eventbus topics apply` (catalog topics) or set [warehouse] dead_letters = false"
            );
        }
    }

    /// The group's committed offset of each of `partitions` that has one.
    fn committed(
        &self,
        partitions: &[TopicPartition],
    ) -> anyhow::Result<HashMap<TopicPartition, i64>> {
        Ok(
            eventbus_runtime::kafka::committed(&self.consumer, partitions, Duration::from_secs(30))
                .context("cannot read the group's committed offsets")?
                .into_iter()
                .collect(),
        )
    }

    /// Per partition of `topics`, the (low, high) offsets now.
    fn end_offsets(
        &self,
        topics: &[String],
    ) -> anyhow::Result<BTreeMap<TopicPartition, (i64, i64)>> {
        let timeout = Duration::from_secs(30);
        let mut out = BTreeMap::new();
        for topic in topics {
            let partitions =
                eventbus_runtime::kafka::topic_partitions(&self.metadata, topic, &self.brokers)
                    .context("reading where batch mode stops")?;
            for p in partitions {
                let (low, high) =
                    eventbus_runtime::kafka::watermark(&self.consumer, topic, p, timeout)
                        .with_context(|| format!("end offsets of {topic}[{p}]"))?;
                out.insert(TopicPartition::new(topic.as_str(), p), (low, high));
            }
        }
        Ok(out)
    }
}

/// Resolves once every partition is done up to its start-time end offset: read to there
/// by this instance (what it received answers first), or committed to there by the
/// group (by another member, or by an earlier run). The table's progress alone is not
/// enough: a run killed after publishing but before its commit leaves the table ahead of
/// the group, and a batch run must leave the group's offsets at the end. This instance
/// gets there by reading its partitions; records the table already holds are
/// acknowledged without being written again.
async fn caught_up(sink: ParquetSink, batch: Batch) {
    const COMMITS_EVERY: Duration = Duration::from_secs(1);
    let mut pending: Vec<(TopicPartition, i64)> = batch
        .ends
        .into_iter()
        .filter(|(_, (low, high))| high > low)
        .map(|(tp, (_, high))| (tp, high))
        .collect();
    let mut commits_read: Option<tokio::time::Instant> = None;
    loop {
        pending.retain(|(tp, high)| sink.seen(tp).is_none_or(|s| s + 1 < *high));
        if !pending.is_empty() && commits_read.is_none_or(|t| t.elapsed() >= COMMITS_EVERY) {
            commits_read = Some(tokio::time::Instant::now());
            let cluster = batch.cluster.clone();
            let partitions: Vec<TopicPartition> =
                pending.iter().map(|(tp, _)| tp.clone()).collect();
            match tokio::task::spawn_blocking(move || cluster.committed(&partitions)).await {
                Ok(Ok(committed)) => {
                    pending.retain(|(tp, high)| committed.get(tp).is_none_or(|c| c < high));
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot read committed offsets"),
                Err(e) => tracing::warn!(error = %e, "reading committed offsets panicked"),
            }
        }
        if pending.is_empty() {
            return;
        }
        // The job's stop waits for this check: every millisecond here is one the batch
        // run takes longer. A check is a lookup per pending partition.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `eventbus run warehouse`: the job from `file` (the default group when it has no
/// `[source]`) until a signal, or until caught up.
///
/// # Errors
/// The job cannot start, or stops with an error.
pub async fn command(
    mut file: JobFile,
    overrides: &crate::config::Overrides,
    args: crate::cli::RunArgs,
) -> anyhow::Result<()> {
    file.default_source(DEFAULT_GROUP, Vec::new(), overrides);
    let args = WarehouseArgs {
        topics: args.topics,
        table_root: args.table_root,
        until_caught_up: args.until_caught_up,
    };
    let wh = tokio::task::block_in_place(|| job(&file, &args))?;
    let root = wh.table_root.clone();
    let report = wh
        .run(eventbus_runtime::shutdown::signals())
        .await
        .context("warehouse job stopped")?;
    tracing::info!(
        consumed = report.consumed,
        delivered = report.delivered,
        committed = report.committed_total(),
        table_root = root,
        "warehouse job finished"
    );
    Ok(())
}
