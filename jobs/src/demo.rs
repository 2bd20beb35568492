//! `eventbus demo`: the whole path on librdkafka's in-process mock cluster, no service
//! needed. Produces synthetic vehicle states, fleet operations and emergencies as Avro in
//! the Confluent wire format (ids from the file registry), runs a job that decodes and
//! validates every record against its writer schema and forwards it through the Kafka
//! sink, then checks the output and the committed offsets with plain clients and prints
//! what it found. Then it loads the vehicle states into a Parquet table (the warehouse
//! stage) and runs the dead-letter stage ([`crate::demo_dlq`]).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use std::sync::Arc;

use anyhow::{Context, bail};
use apache_avro::types::Value;
use bytes::Bytes;
use eventbus_operators::{KafkaSink, KafkaSinkConfig, Partitioning};
use eventbus_runtime::operator::Operator;
use eventbus_runtime::{Job, KafkaProperties, KafkaSource, Origin, RunnableJob, SourceConfig};
use eventbus_schemas::fast::VehicleStateDecoder;
use eventbus_schemas::{Catalog, Decoder, FileRegistry, wire};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use serde::Serialize;

use crate::{generate, progress, topic_io};
use eventbus_schemas::fleet;

/// The committed catalog, compiled in: the demo runs away from the source tree too.
const CATALOG: &str = include_str!("../../schemas/topics.toml");

/// The demo's main input topic, as in the catalog.
pub const INPUT: &str = "vehicle.state.v1";
/// The other inputs, and how many records each gets per vehicle state.
pub const SIDE_INPUTS: [(&str, u64); 2] =
    [("fleet.operations.v1", 10), ("safety.emergency.v1", 20)];
/// The demo's output topic.
pub const OUTPUT: &str = "demo.fleet_events_validated.v1";
/// The demo job's consumer group.
pub const GROUP: &str = "eventbus-demo";

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Records to produce.
    pub messages: u64,
    /// Partitions of the input and output topics.
    pub partitions: i32,
    /// Vehicles in the synthetic fleet.
    pub vehicles: usize,
    /// Hide progress bars.
    pub quiet: bool,
    /// Where the warehouse stage writes the vehicle-state table; `None` skips it.
    pub warehouse_root: Option<std::path::PathBuf>,
    /// Records for the dead-letter stage (0 skips it).
    pub dead_letter_records: usize,
    /// Run the analytics job over the vehicle states.
    pub analytics: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            messages: 100_000,
            partitions: 50,
            vehicles: 400,
            quiet: false,
            warehouse_root: Some("data/warehouse".into()),
            dead_letter_records: 20_000,
            analytics: true,
        }
    }
}

/// What the demo found. Printed as text, or as one JSON object with `--json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DemoSummary {
    /// Records produced to the input topic and acknowledged by the broker.
    pub produced: u64,
    /// Records the job read.
    pub consumed: u64,
    /// Records covered by the group's committed offsets, as read back from the broker.
    pub committed: u64,
    /// Produced records missing from the output.
    pub lost: u64,
    /// Extra copies of records in the output.
    pub duplicated: u64,
    /// Seconds the job ran, from start (group join included) to its last commit.
    pub elapsed: f64,
    /// Records per second through the job, from its first record to its last commit.
    pub records_per_sec: f64,
    /// The input topic.
    pub input_topic: String,
    /// The output topic.
    pub output_topic: String,
    /// The vehicle-state table the warehouse stage wrote, if it ran.
    pub warehouse_table: Option<String>,
    /// Rows in that table's Parquet files, read back.
    pub warehouse_rows: u64,
    /// Vehicle-state records produced (the rows the table must hold).
    pub vehicle_states: u64,
    /// The dead-letter stage, if it ran.
    pub dead_letters: Option<crate::demo_dlq::DlqSummary>,
    /// The analytics stage, if it ran.
    pub analytics: Option<crate::demo_analytics::AnalyticsSummary>,
}

/// Runs the demo.
///
/// # Errors
/// The mock cluster cannot start, or the job fails. Loss or duplication is reported in
/// the summary, not as an error.
pub async fn run(opts: &DemoOptions) -> anyhow::Result<DemoSummary> {
    let cluster = MockCluster::new(1).context("cannot start the in-process mock cluster")?;
    let brokers = cluster.bootstrap_servers();
    // The input's DLQ too: the warehouse stage dead-letters what it cannot decode.
    let input_dlq = format!("{INPUT}.dlq");
    for topic in [
        INPUT,
        SIDE_INPUTS[0].0,
        SIDE_INPUTS[1].0,
        OUTPUT,
        &input_dlq,
    ] {
        cluster
            .create_topic(topic, opts.partitions, 1)
            .with_context(|| format!("cannot create {topic}"))?;
    }
    let registry = Arc::new(FileRegistry::embedded()?);
    let produced = produce(&brokers, opts, &registry)?;

    let job = validating_job(&brokers, registry.clone())?;
    let stats = job.stats();
    let bar = progress::bar(produced, "mirrored", opts.quiet);
    let started = Instant::now();
    let target = i64::try_from(produced).unwrap_or(i64::MAX);
    let watch = stats.clone();
    let watch_bar = bar.clone();
    let (first_tx, first_rx) = std::sync::mpsc::channel();
    let done = async move {
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut first = None;
        loop {
            if first.is_none() && watch.consumed() > 0 {
                first = Some(Instant::now());
            }
            let committed: i64 = watch.committed().values().sum();
            watch_bar.set_position(watch.delivered());
            if committed >= target || Instant::now() > deadline {
                let _ = first_tx.send(first.map(|t| t.elapsed().as_secs_f64()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let report = job.run(done).await.context("the demo job failed")?;
    let elapsed = started.elapsed().as_secs_f64();
    let processing = first_rx.try_recv().ok().flatten().unwrap_or(elapsed);
    bar.finish_and_clear();

    let output = topic_io::read_all(&brokers, OUTPUT, Duration::from_secs(120))?;
    let decoder = Decoder::new(registry);
    let mut seen = HashSet::with_capacity(output.len());
    for m in &output {
        let origin = Origin {
            topic: OUTPUT.into(),
            partition: m.partition(),
            offset: m.offset(),
        };
        let (id, value) = decoder.decode(m.payload().unwrap_or_default(), Some(&origin))?;
        // Every demo event's first field is its id, which carries its stream position.
        let event_id = match &value {
            Value::Record(fields) => match fields.first().map(|(_, v)| v) {
                Some(Value::Uuid(u)) => u.to_string(),
                Some(Value::String(s)) => s.clone(),
                _ => String::new(),
            },
            _ => String::new(),
        };
        let seq = fleet::seq_of(&event_id)
            .with_context(|| format!("output at {origin} has a foreign event id {event_id:?}"))?;
        seen.insert((id, seq));
    }
    let unique = seen.len() as u64;
    let mut committed = 0i64;
    for topic in [INPUT, SIDE_INPUTS[0].0, SIDE_INPUTS[1].0] {
        committed += topic_io::committed(&brokers, GROUP, topic)?
            .values()
            .sum::<i64>();
    }
    let (warehouse_table, warehouse_rows) = match &opts.warehouse_root {
        Some(root) => {
            let (table, rows) = warehouse_stage(&brokers, root, opts.quiet).await?;
            (Some(table), rows)
        }
        None => (None, 0),
    };
    let analytics = if opts.analytics {
        Some(crate::demo_analytics::run(&cluster, INPUT, opts.quiet).await?)
    } else {
        None
    };
    let dead_letters = if opts.dead_letter_records > 0 {
        Some(
            crate::demo_dlq::run(&cluster, opts.dead_letter_records, opts.partitions.min(8))
                .await?,
        )
    } else {
        None
    };
    drop(cluster);
    Ok(DemoSummary {
        dead_letters,
        analytics,
        warehouse_table,
        warehouse_rows,
        vehicle_states: opts.messages,
        produced,
        consumed: report.consumed,
        committed: u64::try_from(committed).unwrap_or(0),
        lost: produced.saturating_sub(unique),
        duplicated: output.len() as u64 - unique,
        elapsed,
        records_per_sec: report.consumed as f64 / processing.max(1e-9),
        input_topic: [INPUT, SIDE_INPUTS[0].0, SIDE_INPUTS[1].0].join(","),
        output_topic: OUTPUT.to_owned(),
    })
}

/// Loads the vehicle-state topic into a Parquet table under `root` with the warehouse job
/// in batch mode (until caught up); returns the table's path and its rows, read back.
async fn warehouse_stage(
    brokers: &str,
    root: &std::path::Path,
    quiet: bool,
) -> anyhow::Result<(String, u64)> {
    let table = root.join(INPUT);
    // The mock cluster starts empty every run: an old table would claim its offsets.
    if table.exists() {
        std::fs::remove_dir_all(&table)
            .with_context(|| format!("cannot clear the old demo table {}", table.display()))?;
    }
    let mut file = crate::config::JobFile::default();
    file.kafka.set("bootstrap.servers", brokers);
    let mut source = SourceConfig::new("eventbus-demo-warehouse", [INPUT]);
    source.commit_interval_ms = 200;
    file.source = Some(source);
    let args = crate::warehouse::WarehouseArgs {
        topics: vec![INPUT.to_owned()],
        table_root: Some(root.display().to_string()),
        until_caught_up: true,
    };
    let spinner = progress::bar(0, "writing Parquet", quiet);
    let job = tokio::task::block_in_place(|| crate::warehouse::job(&file, &args))?;
    job.run(std::future::pending())
        .await
        .context("the warehouse stage failed")?;
    spinner.finish_and_clear();
    let mut rows = 0u64;
    let mut stack = vec![table.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                use parquet::file::reader::FileReader;
                let reader =
                    parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&path)?)
                        .with_context(|| format!("{} is not a Parquet file", path.display()))?;
                rows += u64::try_from(reader.metadata().file_metadata().num_rows()).unwrap_or(0);
            }
        }
    }
    let shown = std::fs::canonicalize(&table).unwrap_or(table);
    Ok((shown.display().to_string(), rows))
}

/// The demo's job: decode every record through the registry into the typed event (a
/// record that does not decode fails the job, until the dead-letter queue exists), and
/// forward the validated bytes to the output topic, partition for partition.
fn validating_job(
    brokers: &str,
    registry: Arc<FileRegistry>,
) -> anyhow::Result<RunnableJob<KafkaSource, impl Operator<Bytes, Out = Bytes>, KafkaSink>> {
    let mut kafka = KafkaProperties::new();
    kafka.set("bootstrap.servers", brokers);
    let mut source = SourceConfig::new(GROUP, [INPUT, SIDE_INPUTS[0].0, SIDE_INPUTS[1].0]);
    source.commit_interval_ms = 200;
    let sink = KafkaSink::new(
        &kafka,
        KafkaSinkConfig::new(OUTPUT).partitioning(Partitioning::Source),
    )?;
    let fast = VehicleStateDecoder::new(registry.clone());
    let generic = Decoder::new(registry.clone());
    let vehicle_state = registry
        .latest_of("vehicle.state.v1-value")
        .map(|(id, _)| id);
    Ok(Job::builder("demo")
        .source(KafkaSource::new(kafka, source))
        .try_map(move |bytes: Bytes| {
            let (id, _) = wire::split(&bytes, None)?;
            if Some(id) == vehicle_state {
                fast.decode(&bytes, None).map(|_| bytes)
            } else {
                generic.decode(&bytes, None).map(|_| bytes)
            }
        })
        .sink(sink)
        .build()?)
}

/// Produces `opts.messages` vehicle states and a share of fleet operations and
/// emergencies, all in the wire format; returns how many were acknowledged.
fn produce(brokers: &str, opts: &DemoOptions, registry: &FileRegistry) -> anyhow::Result<u64> {
    let catalog = Catalog::parse(CATALOG, ".".into())?;
    let mut plan = vec![(INPUT, opts.messages)];
    plan.extend(SIDE_INPUTS.iter().map(|&(t, per)| (t, opts.messages / per)));
    let total: u64 = plan.iter().map(|(_, n)| n).sum();
    let bar = progress::bar(total, "produced", opts.quiet);
    let mut produced = 0;
    for (topic, count) in plan {
        let subject = &catalog
            .topic(topic)
            .with_context(|| format!("{topic} not in the catalog"))?
            .subject;
        let (id, schema) = registry
            .latest_of(subject)
            .with_context(|| format!("{subject} is not registered"))?;
        let mut failed = None;
        let records = generate::records(topic, 42, id, &schema)?
            .take(usize::try_from(count).unwrap_or(usize::MAX))
            .map_while(|r| r.map_err(|e| failed = Some(e)).ok());
        let base = produced;
        produced += topic_io::produce(brokers, topic, records, |n| bar.set_position(base + n))?;
        if let Some(err) = failed {
            return Err(err);
        }
    }
    bar.finish_and_clear();
    if produced != total {
        bail!("only {produced} of {total} records were produced");
    }
    Ok(produced)
}

impl DemoSummary {
    /// The human-readable summary.
    pub fn render(&self, partitions: i32) -> String {
        let ok = self.lost == 0 && self.duplicated == 0 && self.committed == self.produced;
        format!(
            "eventbus demo: Avro fleet events through a decoding job on librdkafka's in-process mock cluster\n\
             \n  produced    {:>10}  to {} ({partitions} partitions)\
             \n  consumed    {:>10}\
             \n  committed   {:>10}  (group {GROUP}, read back from the broker)\
             \n  lost        {:>10}\
             \n  duplicated  {:>10}  (in {})\
             \n  elapsed     {:>10.2}  s (joining the group included)\
             \n  throughput  {:>10.0}  records/s (first record to last commit)\n\
             \n{}\n",
            self.produced,
            self.input_topic,
            self.consumed,
            self.committed,
            self.lost,
            self.duplicated,
            self.output_topic,
            self.elapsed,
            self.records_per_sec,
            if ok {
                "every record arrived exactly once and every offset is committed."
            } else {
                "MISMATCH: see the counts above."
            }
        ) + &self.render_warehouse()
            + &self
                .analytics
                .as_ref()
                .map(crate::demo_analytics::AnalyticsSummary::render)
                .unwrap_or_default()
            + &self
                .dead_letters
                .as_ref()
                .map(crate::demo_dlq::DlqSummary::render)
                .unwrap_or_default()
    }

    fn render_warehouse(&self) -> String {
        let Some(table) = &self.warehouse_table else {
            return String::new();
        };
        format!(
            "\nwarehouse: {} rows of {} vehicle states in the Parquet table {table}{}\n\
             read it with DuckDB:\n\n  SELECT status, count(*) FROM read_parquet('{table}/**/*.parquet', hive_partitioning = true) GROUP BY status;\n",
            self.warehouse_rows,
            self.vehicle_states,
            if self.warehouse_rows == self.vehicle_states {
                " (exactly once)"
            } else {
                " (MISMATCH)"
            }
        )
    }
}

/// `eventbus demo`: runs the demo and prints its summary (or JSON).
///
/// # Errors
/// Bad arguments, a stage that fails, or a summary that shows a lost record.
pub async fn command(args: crate::cli::DemoArgs) -> anyhow::Result<()> {
    if args.messages == 0 || args.partitions < 1 {
        anyhow::bail!("--messages and --partitions must be at least 1");
    }
    let opts = DemoOptions {
        messages: args.messages,
        partitions: args.partitions,
        quiet: args.json,
        warehouse_root: Some(args.warehouse_root),
        dead_letter_records: args.dead_letters,
        ..DemoOptions::default()
    };
    let summary = run(&opts).await?;
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{}", summary.render(args.partitions));
    }
    if summary.lost > 0 {
        anyhow::bail!("{} records were lost", summary.lost);
    }
    if let Some(a) = &summary.analytics
        && u64::try_from(a.events).unwrap_or(0) + a.late != a.input_records
    {
        anyhow::bail!(
            "the analytics stage counted {} events and {} late records of {} read",
            a.events,
            a.late,
            a.input_records
        );
    }
    if let Some(d) = &summary.dead_letters
        && d.delivered != d.good + d.fixed
    {
        anyhow::bail!(
            "the dead-letter stage delivered {} of {} good and fixed records",
            d.delivered,
            d.good + d.fixed
        );
    }
    if summary.warehouse_table.is_some() && summary.warehouse_rows != summary.vehicle_states {
        anyhow::bail!(
            "the warehouse table holds {} rows for {} vehicle states",
            summary.warehouse_rows,
            summary.vehicle_states
        );
    }
    Ok(())
}
