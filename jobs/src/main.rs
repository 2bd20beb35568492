//! The `eventbus` command.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use eventbus_jobs::bench::{self, BenchOptions};
use eventbus_jobs::config::{JobFile, Overrides};
use eventbus_jobs::demo::{self, DemoOptions};
use eventbus_jobs::mirror;
use eventbus_runtime::telemetry::{self, LogFormat};

/// eventbus: reliable stream processing for the fleet event bus on Kafka.
///
/// At-least-once delivery with per-partition order: offsets are committed only past
/// records that are done, so a crash, a rebalance or a shutdown loses nothing.
#[derive(Debug, Parser)]
#[command(name = "eventbus", version, propagate_version = true)]
struct Cli {
    /// Log format on stderr: pretty or json. Levels come from RUST_LOG (default info).
    #[arg(
        long,
        global = true,
        default_value = "pretty",
        env = "EVENTBUS_LOG_FORMAT"
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a job end to end on an in-process mock cluster; needs no service.
    ///
    /// Produces synthetic vehicle states, fleet operations and emergencies as Avro in the
    /// Confluent wire format, runs a job that decodes and validates each record and
    /// forwards it through the Kafka sink,
    /// then reads the output and the committed offsets back with plain clients and
    /// prints produced, consumed, committed, lost, duplicated, elapsed and records/s.
    Demo {
        /// Vehicle-state events to produce (plus a tenth as many fleet operations and a
        /// twentieth as many emergencies).
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        /// Partitions of the demo topics.
        #[arg(long, default_value_t = 50)]
        partitions: i32,
        /// Print the summary as one JSON object on stdout.
        #[arg(long)]
        json: bool,
        /// Where the warehouse stage writes the vehicle-state Parquet table (its old
        /// demo table there is replaced).
        #[arg(long, default_value = "data/warehouse")]
        warehouse_root: PathBuf,
        /// Records for the dead-letter stage: about 1% poison and a sink outage, then the
        /// DLQ processor and a scripted export -> fix -> import (0 skips it).
        #[arg(long, default_value_t = 20_000)]
        dead_letters: usize,
    },
    /// Run a named job against the brokers in the config until SIGINT or SIGTERM.
    ///
    /// Jobs: mirror (the [source] topics to the [mirror] output topic); warehouse (each
    /// topic into a Hive-partitioned Parquet table under the table root, every record
    /// exactly once; records it cannot decode go to the topic's DLQ, settings in [dlq];
    /// settings in [warehouse]); dlq-processor (the DLQ topics, default
    /// every catalog topic's: letters classified and counted, automatic categories
    /// replayed after a cool-off, letters replayed too often parked; settings in
    /// [dlq_processor]). On the first signal the job stops
    /// fetching, drains in-flight records, flushes and commits, then exits 0; a second
    /// signal exits at once.
    Run {
        /// The job to run.
        #[arg(value_parser = ["mirror", "warehouse", "dlq-processor"])]
        job: String,
        /// The TOML job file ([kafka], [source], [runtime] and the job's own section).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Bootstrap servers; overrides the file and EVENTBUS_BROKERS.
        #[arg(long)]
        brokers: Option<String>,
        /// Consumer group; overrides the file and EVENTBUS_GROUP_ID.
        #[arg(long)]
        group: Option<String>,
        /// warehouse: a Confluent-API schema registry to look writer schemas up in (basic
        /// auth from EVENTBUS_REGISTRY_USER and EVENTBUS_REGISTRY_PASSWORD); overrides
        /// [registry] url and EVENTBUS_REGISTRY_URL. Default: the file registry compiled
        /// in.
        #[arg(long)]
        registry: Option<String>,
        /// warehouse: topics to load; dlq-processor: DLQ topics to process
        /// (comma-separated); overrides [source] topics.
        #[arg(long, value_delimiter = ',')]
        topics: Vec<String>,
        /// warehouse: table root, a path, file:///path or s3://bucket/prefix (default
        /// data/warehouse); overrides [warehouse] table_root.
        #[arg(long)]
        table_root: Option<String>,
        /// warehouse: stop once every partition has reached the end offset it had at
        /// start, publish, commit and exit 0 (batch loading).
        #[arg(long)]
        until_caught_up: bool,
    },
    /// Produce realistic synthetic events for a catalog topic, in the wire format.
    ///
    /// Records are keyed like the real producers key them (vehicle or fleet id) and
    /// encoded with ids from the file registry. Prints how many each partition got.
    Generate {
        /// Bootstrap servers.
        #[arg(long, env = "EVENTBUS_BROKERS")]
        brokers: String,
        /// The catalog topic.
        #[arg(long)]
        topic: String,
        /// Records to produce.
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Records per second; 0 for as fast as the broker takes them.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Seed: the same seed gives the same records.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[command(flatten)]
        catalog: CatalogArg,
    },
    /// Compare the topic catalog with a cluster, and create what is missing.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Inspect, replay, export and import dead letters.
    ///
    /// Every subcommand takes the filters --category, --class, --since/--until (first
    /// failure time), --partition and --offsets (the original ones), --key and
    /// --error-matches.
    Dlq {
        #[command(subcommand)]
        command: Box<eventbus_jobs::dlq_cmd::DlqCommand>,
    },
    /// Work with the Avro schemas and the catalog under schemas/.
    Schemas {
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
    Bench {
        /// The job measured against the bare consumer: discard (the runtime's own cost)
        /// or warehouse (VehicleState records into Parquet tables, published and
        /// committed).
        #[arg(long, value_enum, default_value = "discard")]
        job: BenchJobArg,
        /// A real broker to measure on instead of the in-process mock cluster (a fresh
        /// topic is created there).
        #[arg(long)]
        brokers: Option<String>,
        /// Records in the benchmark topic.
        #[arg(long, default_value_t = 800_000)]
        messages: u64,
        /// Partitions of the benchmark topic (the mock cluster keeps a bounded log per
        /// partition, so many records need many partitions).
        #[arg(long, default_value_t = 48)]
        partitions: i32,
        /// Bytes per record value.
        #[arg(long, default_value_t = 256)]
        value_size: usize,
        /// Alternating rounds per side; the best of each is reported.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Print the result as one JSON object on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// `--job` of `eventbus bench`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BenchJobArg {
    Discard,
    Warehouse,
}

/// Which topic catalog a command reads.
#[derive(Debug, clap::Args)]
struct CatalogArg {
    /// The catalog file [default: schemas/topics.toml in the current folder, else the
    /// catalog of the source tree eventbus was built from].
    #[arg(long)]
    catalog: Option<PathBuf>,
}

impl CatalogArg {
    fn load(&self) -> anyhow::Result<eventbus_schemas::Catalog> {
        eventbus_jobs::load_catalog(self.catalog.as_deref())
    }
}

#[derive(Debug, clap::Args)]
struct TopicsArgs {
    /// Bootstrap servers.
    #[arg(long, env = "EVENTBUS_BROKERS")]
    brokers: String,
    #[command(flatten)]
    catalog: CatalogArg,
    /// Replication factor for new topics instead of the catalog's (e.g. 1 on a
    /// single-broker development cluster).
    #[arg(long)]
    replication_factor: Option<i32>,
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Print what apply would change; change nothing.
    Plan(TopicsArgs),
    /// Create missing topics with the catalog's partitions and configs. Idempotent.
    /// Refuses a partition decrease, naming the topic, before changing anything.
    Apply(TopicsArgs),
    /// Show the catalog beside the cluster's state.
    List {
        /// Bootstrap servers; without them only the catalog is shown.
        #[arg(long, env = "EVENTBUS_BROKERS")]
        brokers: Option<String>,
        #[command(flatten)]
        catalog: CatalogArg,
    },
}

#[derive(Debug, Subcommand)]
enum SchemasCommand {
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
        #[arg(long, env = "EVENTBUS_REGISTRY_URL")]
        registry: String,
        /// Folder holding topics.toml and the .avsc files.
        #[arg(long, default_value = "schemas")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo and the benchmark print their own report; job logs would bury it.
    let level = match cli.command {
        // The demo's dead-letter stage fails records on purpose: one warning per retry
        // and per letter (hundreds) would scroll its report away. Its summary counts
        // them; RUST_LOG=warn shows each.
        Command::Demo { .. } => "warn,eventbus_operators::retry=error,eventbus_dlq::writer=error",
        Command::Bench { .. }
        | Command::Schemas { .. }
        | Command::Topics { .. }
        | Command::Generate { .. }
        | Command::Dlq { .. } => "warn",
        Command::Run { .. } => "info",
    };
    telemetry::init_logging(cli.log_format, level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let text = error_text(&e);
            tracing::error!("{text}");
            eprintln!("error: {text}");
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, `: `-separated, leaving out a cause whose words
/// the line already ends with (many errors print their source in their own message too).
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let words = cause.to_string();
        if text.ends_with(&words) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&words);
    }
    text
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo {
            messages,
            partitions,
            json,
            warehouse_root,
            dead_letters,
        } => {
            if messages == 0 || partitions < 1 {
                bail!("--messages and --partitions must be at least 1");
            }
            let opts = DemoOptions {
                messages,
                partitions,
                quiet: json,
                warehouse_root: Some(warehouse_root),
                dead_letter_records: dead_letters,
                ..DemoOptions::default()
            };
            let summary = demo::run(&opts).await?;
            if json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                print!("{}", summary.render(partitions));
            }
            if summary.lost > 0 {
                bail!("{} records were lost", summary.lost);
            }
            if let Some(d) = &summary.dead_letters
                && d.delivered != d.good + d.fixed
            {
                bail!(
                    "the dead-letter stage delivered {} of {} good and fixed records",
                    d.delivered,
                    d.good + d.fixed
                );
            }
            if summary.warehouse_table.is_some() && summary.warehouse_rows != summary.vehicle_states
            {
                bail!(
                    "the warehouse table holds {} rows for {} vehicle states",
                    summary.warehouse_rows,
                    summary.vehicle_states
                );
            }
            Ok(())
        }
        Command::Run {
            job,
            config,
            brokers,
            group,
            registry,
            topics,
            table_root,
            until_caught_up,
        } => {
            let overrides = Overrides {
                brokers,
                group,
                registry,
            };
            let mut file = JobFile::load(config.as_deref(), &overrides)?;
            match job.as_str() {
                "warehouse" => {
                    // No [source]: the default group, then the same overrides as any job.
                    if file.source.is_none() {
                        file.source = Some(eventbus_runtime::SourceConfig::new(
                            eventbus_jobs::warehouse::DEFAULT_GROUP,
                            Vec::<String>::new(),
                        ));
                        file.apply(std::env::vars(), &overrides);
                    }
                    let args = eventbus_jobs::warehouse::WarehouseArgs {
                        topics,
                        table_root,
                        until_caught_up,
                    };
                    let wh = tokio::task::block_in_place(|| {
                        eventbus_jobs::warehouse::job(&file, &args)
                    })?;
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
                "dlq-processor" => {
                    if file.source.is_none() {
                        let topics = if topics.is_empty() {
                            let catalog = eventbus_jobs::load_catalog(None)?;
                            catalog.topics.iter().map(|t| t.dlq_topic()).collect()
                        } else {
                            topics.clone()
                        };
                        file.source = Some(eventbus_runtime::SourceConfig::new(
                            "eventbus-dlq-processor",
                            topics,
                        ));
                        file.apply(std::env::vars(), &overrides);
                    } else if !topics.is_empty()
                        && let Some(src) = &mut file.source
                    {
                        src.topics = topics.clone();
                    }
                    let processor = eventbus_jobs::dlq_processor::job(&file)?;
                    let counts = processor.counts.clone();
                    let interval = file
                        .dlq_processor
                        .as_ref()
                        .map_or(30_000, |p| p.report_interval_ms);
                    let reporter = tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(std::time::Duration::from_millis(interval)).await;
                            let table = counts.lock().map(|c| c.clone()).unwrap_or_default();
                            for ((topic, category), c) in &table {
                                tracing::info!(
                                    %topic, %category, letters = c.letters,
                                    replayed = c.replayed, parked = c.parked, "dead letters"
                                );
                            }
                        }
                    });
                    let result = processor
                        .job
                        .run(eventbus_runtime::shutdown::signals())
                        .await;
                    reporter.abort();
                    let table = processor
                        .counts
                        .lock()
                        .map(|c| c.clone())
                        .unwrap_or_default();
                    print!("{}", eventbus_jobs::dlq_processor::render(&table));
                    result.context("dlq-processor job stopped")?;
                    Ok(())
                }
                "mirror" => {
                    let report = mirror::job(&file)?
                        .run(eventbus_runtime::shutdown::signals())
                        .await
                        .context("mirror job stopped")?;
                    tracing::info!(
                        consumed = report.consumed,
                        delivered = report.delivered,
                        committed = report.committed_total(),
                        "mirror job finished"
                    );
                    Ok(())
                }
                other => bail!("unknown job `{other}`"),
            }
        }
        Command::Topics { command } => topics(command).await,
        Command::Dlq { command } => {
            tokio::task::spawn_blocking(move || eventbus_jobs::dlq_cmd::run(*command)).await?
        }
        Command::Generate {
            brokers,
            topic,
            count,
            rate,
            seed,
            catalog,
        } => {
            let opts = eventbus_jobs::generate::GenerateOptions {
                topic: topic.clone(),
                count,
                rate,
                seed,
                quiet: false,
            };
            let counts = tokio::task::spawn_blocking(move || {
                eventbus_jobs::generate::run(
                    &brokers,
                    &eventbus_jobs::catalog_file(catalog.catalog.as_deref()),
                    &opts,
                )
            })
            .await??;
            let total: u64 = counts.values().sum();
            println!("produced {total} records to {topic}");
            for (p, n) in counts {
                println!("  partition {p:>3}: {n}");
            }
            Ok(())
        }
        Command::Schemas {
            command: SchemasCommand::Check { against, dir },
        } => eventbus_jobs::schemas_cmd::run(&dir, &against),
        Command::Schemas {
            command: SchemasCommand::Register { registry, dir },
        } => {
            // The same [registry] settings and environment as the jobs that decode.
            let mut file = JobFile::default();
            file.apply(
                std::env::vars(),
                &Overrides {
                    registry: Some(registry),
                    ..Overrides::default()
                },
            );
            let client = file.registry.http()?.context("no schema registry URL")?;
            tokio::task::spawn_blocking(move || eventbus_jobs::schemas_cmd::register(&dir, &client))
                .await?
        }
        Command::Bench {
            job,
            brokers,
            messages,
            partitions,
            value_size,
            rounds,
            json,
        } => {
            let opts = BenchOptions {
                job: match job {
                    BenchJobArg::Discard => bench::BenchJob::Discard,
                    BenchJobArg::Warehouse => bench::BenchJob::Warehouse,
                },
                brokers,
                messages,
                partitions,
                value_size,
                rounds: rounds.max(1),
                quiet: json,
            };
            let r = bench::run(&opts).await?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                print!("{}", bench::render(&r, &opts));
            }
            Ok(())
        }
    }
}

async fn topics(command: TopicsCommand) -> anyhow::Result<()> {
    use eventbus_jobs::topics_cmd;
    match command {
        TopicsCommand::List { brokers, catalog } => {
            topics_cmd::list(brokers.as_deref(), &catalog.load()?)
        }
        TopicsCommand::Plan(a) => {
            let changes =
                topics_cmd::plan(&a.brokers, &a.catalog.load()?, a.replication_factor).await?;
            print_plan(&changes);
            Ok(())
        }
        TopicsCommand::Apply(a) => {
            let changes =
                topics_cmd::plan(&a.brokers, &a.catalog.load()?, a.replication_factor).await?;
            print_plan(&changes);
            topics_cmd::apply(&a.brokers, &changes).await?;
            if !changes.is_empty() {
                println!("applied {} change(s)", changes.len());
            }
            Ok(())
        }
    }
}

fn print_plan(changes: &[eventbus_jobs::topics_cmd::Change]) {
    if changes.is_empty() {
        println!("no changes: the cluster matches the catalog");
    }
    for c in changes {
        println!("{c}");
    }
    if changes.iter().any(|c| c.is_refused()) {
        println!("apply would refuse the changes marked !, and change nothing");
    }
}
