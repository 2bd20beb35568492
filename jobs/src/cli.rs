//! The `eventbus` command line: every subcommand's arguments, parsed by clap, and the
//! dispatch to the module that carries each one out. Kept in the library so that tests
//! and tools can parse a command line exactly as the binary does.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use eventbus_runtime::telemetry::LogFormat;

/// eventbus: reliable stream processing for the fleet event bus on Kafka.
///
/// At-least-once delivery with per-partition order: offsets are committed only past
/// records that are done, so a crash, a rebalance or a shutdown loses nothing.
#[derive(Debug, Parser)]
#[command(name = "eventbus", version, propagate_version = true)]
pub struct Cli {
    /// Log format on stderr: pretty or json. Levels come from RUST_LOG (default info).
    #[arg(
        long,
        global = true,
        default_value = "pretty",
        env = "EVENTBUS_LOG_FORMAT"
    )]
    pub log_format: LogFormat,

    /// Check the command line (and for `run`, the job file: every section, rules and
    /// webhooks included) without connecting to anything, print what was checked and
    /// exit: 0 when it would start, 1 with the error otherwise.
    #[arg(long, global = true)]
    pub check: bool,

    // clap would print a doc comment here as help text.
    #[allow(missing_docs)]
    #[command(subcommand)]
    pub command: Command,
}

/// `--check`: what a command would start with, checked offline.
///
/// # Errors
/// The job file does not load, or the job's own settings are wrong.
pub fn check(command: &Command) -> anyhow::Result<String> {
    let Command::Run(args) = command else {
        return Ok("command line ok".to_owned());
    };
    let overrides = crate::config::Overrides {
        brokers: args.brokers.clone(),
        group: args.group.clone(),
        registry: args.registry.clone(),
    };
    let file = crate::config::JobFile::load(args.config.as_deref(), &overrides)?;
    file.pii()?;
    if let Some(addr) = args
        .metrics_addr
        .as_ref()
        .or(file.telemetry.metrics_addr.as_ref())
    {
        addr.parse::<std::net::SocketAddr>()
            .map_err(|e| anyhow::anyhow!("metrics address {addr:?} is not HOST:PORT: {e}"))?;
    }
    match args.job {
        JobName::Alerting => crate::alerting::check(&file)?,
        JobName::Analytics => file.analytics.clone().unwrap_or_default().check()?,
        JobName::Warehouse | JobName::DlqProcessor | JobName::Mirror => {}
    }
    let name = clap::ValueEnum::to_possible_value(&args.job)
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default();
    Ok(format!("{name} job file ok"))
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a job end to end on an in-process mock cluster; needs no service.
    ///
    /// Produces synthetic vehicle states, fleet operations and emergencies as Avro in the
    /// Confluent wire format, runs a job that decodes and validates each record and
    /// forwards it through the Kafka sink,
    /// then reads the output and the committed offsets back with plain clients and
    /// prints produced, consumed, committed, lost, duplicated, elapsed and records/s.
    Demo(DemoArgs),
    /// Run a named job against the brokers in the config until SIGINT or SIGTERM.
    ///
    /// Jobs: mirror (the [source] topics to the [mirror] output topic); warehouse (each
    /// topic into a Hive-partitioned Parquet table under the table root, every record
    /// exactly once; records it cannot decode go to the topic's DLQ, settings in [dlq];
    /// settings in [warehouse]); dlq-processor (the DLQ topics, default
    /// every catalog topic's: letters classified and counted, automatic categories
    /// replayed after a cool-off, letters replayed too often parked; settings in
    /// [dlq_processor]); analytics (vehicle.state.v1 into per-fleet minute aggregates on
    /// analytics.fleet_minute.v1, in two stages through
    /// analytics.fleet_minute_partials.v1; settings in [analytics]); alerting ([[rule]]
    /// sections in CEL over catalog topics, and every safety.emergency.v1 event, raise
    /// alerts on vehicle.alerts.v1 and to [[webhook]] URLs; settings in [alerting];
    /// SIGHUP reloads the rules). On the first signal the job stops
    /// fetching, drains in-flight records, flushes and commits, then exits 0; a second
    /// signal exits at once.
    Run(RunArgs),
    /// Produce realistic synthetic events for a catalog topic, in the wire format.
    ///
    /// Records are keyed like the real producers key them (vehicle or fleet id) and
    /// encoded with ids from the file registry. Prints how many each partition got.
    Generate(GenerateArgs),
    /// Compare the topic catalog with a cluster, and create what is missing.
    Topics {
        // clap would print a doc comment here as help text.
        #[allow(missing_docs)]
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Inspect, replay, export and import dead letters.
    ///
    /// Every subcommand takes the filters --category, --class, --since/--until (first
    /// failure time), --partition and --offsets (the original ones), --key and
    /// --error-matches.
    Dlq {
        // clap would print a doc comment here as help text.
        #[allow(missing_docs)]
        #[command(subcommand)]
        command: Box<crate::dlq_cmd::DlqCommand>,
    },
    /// Read what the warehouse published: for loaders.
    Table {
        // clap would print a doc comment here as help text.
        #[allow(missing_docs)]
        #[command(subcommand)]
        command: crate::table_cmd::TableCommand,
    },
    /// Work with the Avro schemas and the catalog under schemas/.
    Schemas {
        // clap would print a doc comment here as help text.
        #[allow(missing_docs)]
        #[command(subcommand)]
        command: SchemasCommand,
    },
    /// Measure a job against a bare rdkafka consumer on the mock cluster or a real broker.
    ///
    /// Both sides read the same topic in the same run. Prints records/s and CPU seconds
    /// per million records of each, and their ratios against the goals: at least 0.9 of
    /// the bare consumer's records/s; for the discard job at most 1.3x its CPU per record
    /// (and, on the mock cluster, at least 1M records/s). With `--job warehouse` it also
    /// prints the CPU of decoding and writing the same records as Parquet alone, the
    /// floor that leaves, and the warehouse's CPU over that floor (goal: at most 1.25x).
    Bench(BenchArgs),
}

/// Which topic catalog a command reads.
#[derive(Debug, clap::Args)]
pub struct CatalogArg {
    /// The catalog file [default: schemas/topics.toml in the current folder, else the
    /// catalog of the source tree eventbus was built from].
    #[arg(long)]
    pub catalog: Option<PathBuf>,
}

impl CatalogArg {
    /// The catalog these arguments name.
    ///
    /// # Errors
    /// The file cannot be read or is not a valid catalog.
    pub fn load(&self) -> anyhow::Result<eventbus_schemas::Catalog> {
        crate::load_catalog(self.catalog.as_deref())
    }
}

/// Which cluster a command talks to, and how: bootstrap servers, and the `[kafka]`
/// properties of a job file (security settings included) with `EVENTBUS_KAFKA_*` over
/// them.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// Bootstrap servers; overrides the config file.
    #[arg(long, env = "EVENTBUS_BROKERS")]
    pub brokers: Option<String>,
    /// A job file whose [kafka] properties the clients take (security.protocol,
    /// sasl.*, ssl.*; secrets also from EVENTBUS_KAFKA_* or *_file settings).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

impl ClusterArgs {
    /// The librdkafka properties: the file's `[kafka]`, the environment, `--brokers`,
    /// and the secrets read from their files.
    ///
    /// # Errors
    /// The file does not load, a secret file cannot be read, or no brokers are given.
    pub fn kafka(&self) -> anyhow::Result<eventbus_runtime::KafkaProperties> {
        let kafka = self.kafka_or_none()?;
        kafka.require_brokers()?;
        Ok(kafka)
    }

    /// As [`ClusterArgs::kafka`], without requiring brokers.
    ///
    /// # Errors
    /// The file does not load, or a secret file cannot be read.
    pub fn kafka_or_none(&self) -> anyhow::Result<eventbus_runtime::KafkaProperties> {
        let overrides = crate::config::Overrides {
            brokers: self.brokers.clone(),
            ..crate::config::Overrides::default()
        };
        Ok(crate::config::JobFile::load(self.config.as_deref(), &overrides)?.kafka)
    }
}

/// Arguments of `eventbus topics plan|apply`.
#[derive(Debug, clap::Args)]
pub struct TopicsArgs {
    // clap would print a doc comment here as help text.
    #[allow(missing_docs)]
    #[command(flatten)]
    pub cluster: ClusterArgs,
    // clap would print a doc comment here as help text.
    #[allow(missing_docs)]
    #[command(flatten)]
    pub catalog: CatalogArg,
    /// Replication factor for new topics instead of the catalog's (e.g. 1 on a
    /// single-broker development cluster).
    #[arg(long)]
    pub replication_factor: Option<i32>,
}

/// `eventbus topics`.
#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Print what apply would change; change nothing.
    Plan(TopicsArgs),
    /// Create missing topics with the catalog's partitions and configs. Idempotent.
    /// Refuses a partition decrease, naming the topic, before changing anything.
    Apply(TopicsArgs),
    /// Show the catalog beside the cluster's state.
    /// Without brokers, only the catalog is shown.
    List {
        // clap would print a doc comment here as help text.
        #[allow(missing_docs)]
        #[command(flatten)]
        cluster: ClusterArgs,
        // clap would print a doc comment here as help text.
        #[allow(missing_docs)]
        #[command(flatten)]
        catalog: CatalogArg,
    },
}

/// `eventbus schemas`.
#[derive(Debug, Subcommand)]
pub enum SchemasCommand {
    /// Check every subject's working-tree schema against its earlier versions.
    ///
    /// Earlier versions are the file at the git ref (default HEAD) and the older versions
    /// listed in registry.toml. Each comparison uses the subject's compatibility mode
    /// from topics.toml (BACKWARD, FORWARD, FULL, NONE). Exits non-zero naming the
    /// subject, the mode and the field that breaks.
    Check {
        /// Git ref to compare against.
        #[arg(long, default_value = "HEAD")]
        against: String,
        /// Folder holding topics.toml, registry.toml and the .avsc files.
        #[arg(long, default_value = "schemas")]
        dir: PathBuf,
    },
    /// Register every catalog subject's schema with a Confluent-API schema registry.
    ///
    /// Idempotent: schemas the registry already holds keep their ids. Basic auth comes
    /// from EVENTBUS_REGISTRY_USER and EVENTBUS_REGISTRY_PASSWORD when set.
    Register {
        /// Registry base URL, e.g. http://127.0.0.1:8081.
        #[arg(long, env = "EVENTBUS_REGISTRY_URL", hide_env_values = true)]
        registry: String,
        /// Folder holding topics.toml and the .avsc files.
        #[arg(long, default_value = "schemas")]
        dir: PathBuf,
    },
}

/// The jobs `eventbus run` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JobName {
    /// The [source] topics to the [mirror] output topic.
    Mirror,
    /// Topics into Parquet tables, exactly once.
    Warehouse,
    /// Dead letters classified, counted, replayed or parked.
    DlqProcessor,
    /// Per-fleet minute aggregates of vehicle.state.v1, in two stages through Kafka.
    Analytics,
    /// Rules in CEL over catalog topics raise alerts on vehicle.alerts.v1 and webhooks.
    Alerting,
}

/// Arguments of `eventbus demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Vehicle-state events to produce (plus a tenth as many fleet operations and a
    /// twentieth as many emergencies).
    #[arg(long, default_value_t = 100_000)]
    pub messages: u64,
    /// Partitions of the demo topics.
    #[arg(long, default_value_t = 50)]
    pub partitions: i32,
    /// Print the summary as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Where the warehouse stage writes the vehicle-state Parquet table (its old
    /// demo table there is replaced).
    #[arg(long, default_value = "data/warehouse")]
    pub warehouse_root: PathBuf,
    /// Records for the dead-letter stage: about 1% poison and a sink outage, then the
    /// DLQ processor and a scripted export -> fix -> import (0 skips it).
    #[arg(long, default_value_t = 20_000)]
    pub dead_letters: usize,
}

/// Arguments of `eventbus run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The job to run.
    #[arg(value_enum)]
    pub job: JobName,
    /// The TOML job file ([kafka], [source], [runtime] and the job's own section).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Bootstrap servers; overrides the file and EVENTBUS_BROKERS.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Consumer group; overrides the file and EVENTBUS_GROUP_ID.
    #[arg(long)]
    pub group: Option<String>,
    /// warehouse: a Confluent-API schema registry to look writer schemas up in (basic
    /// auth from EVENTBUS_REGISTRY_USER and EVENTBUS_REGISTRY_PASSWORD); overrides
    /// [registry] url and EVENTBUS_REGISTRY_URL. Default: the file registry compiled
    /// in.
    #[arg(long)]
    pub registry: Option<String>,
    /// warehouse: topics to load; dlq-processor: DLQ topics to process
    /// (comma-separated); overrides [source] topics.
    #[arg(long, value_delimiter = ',')]
    pub topics: Vec<String>,
    /// warehouse: table root, a path, file:///path or s3://bucket/prefix (default
    /// data/warehouse); overrides [warehouse] table_root.
    #[arg(long)]
    pub table_root: Option<String>,
    /// warehouse: stop once every partition has reached the end offset it had at
    /// start, publish, commit and exit 0 (batch loading). analytics: the same end
    /// closes every open window; every fleet-minute is emitted before it exits 0.
    #[arg(long)]
    pub until_caught_up: bool,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this HOST:PORT; overrides
    /// [telemetry] metrics_addr. Off unless set.
    #[arg(long, env = "EVENTBUS_METRICS_ADDR", value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
}

/// Arguments of `eventbus generate`.
#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    // clap would print a doc comment here as help text.
    #[allow(missing_docs)]
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The catalog topic.
    #[arg(long)]
    pub topic: String,
    /// Records to produce.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Records per second; 0 for as fast as the broker takes them.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Seed: the same seed gives the same records.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Move each event time back by up to this many ms at random, so the events of one
    /// vehicle arrive out of order by up to that much (vehicle.state.v1 only).
    #[arg(long, default_value_t = 0, value_name = "MS")]
    pub disorder_ms: u64,
    // clap would print a doc comment here as help text.
    #[allow(missing_docs)]
    #[command(flatten)]
    pub catalog: CatalogArg,
}

/// Arguments of `eventbus bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The job measured: discard (the runtime's own cost) or warehouse (VehicleState
    /// records into Parquet tables, published and committed), against the bare
    /// consumer; analytics (VehicleState records into per-fleet minute aggregates,
    /// both stages), against the discard job on the same topic; alerting (latency from
    /// an event's produce time to its alert's delivery, p50/p99/max, at --rate events/s
    /// for --seconds, against a bare consume -> produce pipe).
    #[arg(long, value_enum, default_value = "discard")]
    pub job: crate::bench::BenchJob,
    /// A real broker to measure on instead of the in-process mock cluster (a fresh
    /// topic is created there).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Records in the benchmark topic.
    #[arg(long, default_value_t = 800_000)]
    pub messages: u64,
    /// Partitions of the benchmark topic. Default 48 (the mock cluster keeps a bounded
    /// log per partition, so many records need many partitions); alerting: 5, as
    /// safety.emergency.v1 has.
    #[arg(long)]
    pub partitions: Option<i32>,
    /// Bytes per record value.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Alternating rounds per side; the best of each is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// discard: measure the Prometheus exporter instead: the discard job with the
    /// exporter on (scraped every second) against off, CPU per record as a ratio.
    #[arg(long)]
    pub exporter: bool,
    /// alerting: events per second produced while latency is measured.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// alerting: seconds of production per side.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Print the result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Carries out a parsed command.
///
/// # Errors
/// Whatever the command fails with, with context.
pub async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo(args) => crate::demo::command(args).await,
        Command::Run(args) => run(args).await,
        Command::Topics { command } => crate::topics_cmd::command(command).await,
        Command::Dlq { command } => {
            tokio::task::spawn_blocking(move || crate::dlq_cmd::run(*command)).await?
        }
        Command::Generate(args) => crate::generate::cli_command(args).await,
        Command::Schemas { command } => crate::schemas_cmd::command(command).await,
        Command::Table { command } => crate::table_cmd::command(command).await,
        Command::Bench(args) => crate::bench::command(args).await,
    }
}

/// `eventbus run <job>`: the job file with its overrides, then the job's own runner.
async fn run(args: RunArgs) -> anyhow::Result<()> {
    let overrides = crate::config::Overrides {
        brokers: args.brokers.clone(),
        group: args.group.clone(),
        registry: args.registry.clone(),
    };
    let file = crate::config::JobFile::load(args.config.as_deref(), &overrides)?;
    install_redactor(&file)?;
    if let Some(addr) = args
        .metrics_addr
        .clone()
        .or_else(|| file.telemetry.metrics_addr.clone())
    {
        let stall = std::time::Duration::from_millis(file.telemetry.stall_after_ms.max(1));
        crate::serve::start(&addr, stall).await?;
    }
    match args.job {
        JobName::Warehouse => crate::warehouse::command(file, &overrides, args).await,
        JobName::DlqProcessor => crate::dlq_processor::command(file, &overrides, args).await,
        JobName::Mirror => crate::mirror::command(&file).await,
        JobName::Analytics => crate::analytics::command(file, &overrides, args).await,
        JobName::Alerting => crate::alerting::command(file, &overrides, args).await,
    }
}

/// Masks personal data in what the runtime says about a record (the job-failure log and
/// error, retry warnings): the catalog's PII fields, and those `[dlq] pii` adds, found in
/// the record's decoded value.
fn install_redactor(file: &crate::config::JobFile) -> anyhow::Result<()> {
    use std::sync::Arc;

    let pii = file.pii()?;
    let registry = file.registry.client()?;
    eventbus_runtime::redact::install(Arc::new(eventbus_dlq::pii::PiiRedactor::new(
        pii,
        registry,
        Some(file.kafka.clone()),
    )));
    Ok(())
}
