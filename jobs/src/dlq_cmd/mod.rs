//! `eventbus dlq`: look at dead letters, replay them, and fix them through JSON lines.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use eventbus_dlq::classify::{Classifier, Rule};
use eventbus_dlq::replay::{ReplayOptions, replay};
use eventbus_dlq::store::{LetterFilter, StoredLetter, parse_offsets, parse_time, read};
use eventbus_dlq::transfer::{check_import, export_line, produce};
use eventbus_runtime::KafkaProperties;
use eventbus_schemas::codec::Decoder;
use eventbus_schemas::{FileRegistry, SchemaRegistry};

use crate::config::{JobFile, Overrides};

mod show;
use show::{inspect, stats};

/// Where the brokers are and how to classify.
#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// Bootstrap servers; overrides the config file.
    #[arg(long, env = "EVENTBUS_BROKERS")]
    pub brokers: Option<String>,
    /// A job file: its [kafka] properties (security settings) and its
    /// [dlq_processor] category rules are used.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Schemas folder holding registry.toml, for decoding values (default: a
    /// Confluent-API registry when --registry, EVENTBUS_REGISTRY_URL or [registry] url
    /// names one, else the file registry compiled in).
    #[arg(long, conflicts_with = "registry")]
    pub schemas: Option<PathBuf>,
    /// A Confluent-API schema registry to decode values with (basic auth from
    /// EVENTBUS_REGISTRY_USER and EVENTBUS_REGISTRY_PASSWORD); overrides [registry] url
    /// and EVENTBUS_REGISTRY_URL.
    #[arg(long)]
    pub registry: Option<String>,
}

/// Which letters.
#[derive(Debug, Clone, Args)]
pub struct Filters {
    /// Categories (comma-separated): schema_unknown, decode_error, validation,
    /// downstream_unavailable, timeout, unknown, or one of your rules'.
    #[arg(long, value_delimiter = ',')]
    pub category: Vec<String>,
    /// Error class: transient or permanent.
    #[arg(long)]
    pub class: Option<String>,
    /// First failure at or after: ms since the epoch, 2026-11-27 or
    /// 2026-11-27T10:00:00Z.
    #[arg(long, value_parser = parse_time)]
    pub since: Option<i64>,
    /// First failure before (same forms as --since).
    #[arg(long, value_parser = parse_time)]
    pub until: Option<i64>,
    /// Original partition.
    #[arg(long)]
    pub partition: Option<i32>,
    /// Original offsets: A..B (B excluded) or A..=B.
    #[arg(long, value_parser = parse_offsets)]
    pub offsets: Option<(i64, i64)>,
    /// The record key, as text.
    #[arg(long)]
    pub key: Option<String>,
    /// A regular expression the error message must match.
    #[arg(long, value_parser = regex::Regex::new)]
    pub error_matches: Option<regex::Regex>,
}

impl Filters {
    /// Values are checked as the command line is parsed; clap names the flag of a bad one.
    fn build(&self) -> LetterFilter {
        LetterFilter {
            categories: self.category.clone(),
            class: self.class.clone(),
            since_ms: self.since,
            until_ms: self.until,
            partition: self.partition,
            offsets: self.offsets,
            key: self.key.clone(),
            error_matches: self.error_matches.clone(),
        }
    }
}

/// The `eventbus dlq` subcommands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Count letters by category, class and original partition, with the first and last
    /// failure time.
    Stats {
        /// The DLQ topic, e.g. vehicle.state.v1.dlq.
        #[arg(long)]
        topic: String,
        /// Which letters.
        #[command(flatten)]
        filters: Filters,
        /// Brokers, config and schemas.
        #[command(flatten)]
        connection: Connection,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One line per letter (or one JSON object with --json): where it came from, why it
    /// failed, and its value decoded through the registry where possible. PII fields are
    /// redacted unless --show-pii.
    Inspect {
        /// The DLQ topic.
        #[arg(long)]
        topic: String,
        /// Which letters.
        #[command(flatten)]
        filters: Filters,
        /// Brokers, config and schemas.
        #[command(flatten)]
        connection: Connection,
        /// JSON lines instead of text.
        #[arg(long)]
        json: bool,
        /// Show at most this many letters.
        #[arg(long)]
        limit: Option<u64>,
        /// Show the values of the topics' PII fields (the catalog's, and [dlq] pii in the
        /// config), which are redacted by default. Its use is logged.
        #[arg(long)]
        show_pii: bool,
    },
    /// Produce the selected letters again to their original topic (or --to), keeping
    /// key, value and original headers, adding eventbus.replay.id and
    /// eventbus.replay.group (the group that failed the record: other groups' eventbus
    /// jobs take it as done unprocessed) and incrementing eventbus.replay.count. Running
    /// the same replay again sends nothing twice: its progress is the consumer group
    /// eventbus-replay-<id>.
    Replay {
        /// The DLQ topic.
        #[arg(long)]
        topic: String,
        /// Which letters.
        #[command(flatten)]
        filters: Filters,
        /// Brokers, config and schemas.
        #[command(flatten)]
        connection: Connection,
        /// Send every letter to this topic instead of its original one.
        #[arg(long)]
        to: Option<String>,
        /// Letters per second at most, e.g. 100 or 100/s.
        #[arg(long)]
        rate: Option<String>,
        /// List what would be sent; send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// The replay's id (default: derived from the topic, --to and the filters).
        #[arg(long)]
        id: Option<String>,
        /// Send each letter to every consumer group of its topic. By default a replayed
        /// record carries eventbus.replay.group (the group named in the letter), and the
        /// eventbus jobs of every other group take it as done without processing it.
        #[arg(long)]
        all_groups: bool,
        /// Also send letters the DLQ processor already replayed. They are skipped when
        /// the --config file is the processor's ([dlq_processor] and its [source] group):
        /// letters of its automatic categories that its group committed past.
        #[arg(long)]
        force: bool,
    },
    /// Write the selected letters to stdout as JSON lines: values as JSON where the
    /// schema is known (base64 otherwise), with headers and failure context. PII fields
    /// are redacted unless --show-pii. Edit them, then `eventbus dlq import`.
    Export {
        /// The DLQ topic.
        #[arg(long)]
        topic: String,
        /// Which letters.
        #[command(flatten)]
        filters: Filters,
        /// Brokers, config and schemas.
        #[command(flatten)]
        connection: Connection,
        /// Export the values of the topics' PII fields, which are redacted by default (a
        /// redacted line cannot be imported). Its use is logged.
        #[arg(long)]
        show_pii: bool,
    },
    /// Check every line of an export file against its schema, re-encode it in the wire
    /// format and produce it to its original topic (or --to). If any line is invalid,
    /// every invalid line is named with its reason and nothing is produced.
    Import {
        /// The JSON-lines file (from `eventbus dlq export`, edited).
        file: PathBuf,
        /// Brokers, config and schemas.
        #[command(flatten)]
        connection: Connection,
        /// Send every record to this topic instead of its original one.
        #[arg(long)]
        to: Option<String>,
        /// Check and list; produce nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub(super) struct Context2 {
    kafka: KafkaProperties,
    classifier: Classifier,
    decoder: Decoder<Arc<dyn SchemaRegistry>>,
    /// PII fields per original topic: the catalog's and the config's `[dlq] pii`.
    pii: std::collections::HashMap<String, Vec<String>>,
    /// What the DLQ processor replays on its own, when the config is the processor's.
    processor: Option<eventbus_dlq::ProcessorReplays>,
}

impl Context2 {
    /// The PII fields to redact in a letter from `topic`; none with `show`.
    fn pii_of(&self, topic: Option<&str>, show: bool) -> Option<&[String]> {
        if show {
            return None;
        }
        Some(
            topic
                .and_then(|t| self.pii.get(t))
                .map_or(&[][..], Vec::as_slice),
        )
    }
}

/// Logs that personal data is being shown, and by whom.
fn log_show_pii(command: &str, topic: &str) {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    tracing::warn!(
        %user, dlq = %topic, "dlq {command} --show-pii: showing personal data unredacted"
    );
}

fn context(c: &Connection) -> anyhow::Result<Context2> {
    let file = JobFile::load(
        c.config.as_deref(),
        &Overrides {
            brokers: c.brokers.clone(),
            registry: c.registry.clone(),
            ..Overrides::default()
        },
    )?;
    file.kafka.require_brokers()?;
    let rules: Vec<Rule> = file
        .dlq_processor
        .as_ref()
        .map(|p| p.rules.clone())
        .unwrap_or_default();
    let classifier = Classifier::new(rules).map_err(|e| anyhow::anyhow!("[dlq_processor] {e}"))?;
    let registry: Arc<dyn SchemaRegistry> = match (&c.schemas, file.registry.http()?) {
        (Some(dir), _) => Arc::new(FileRegistry::open(dir)?),
        (None, Some(http)) => Arc::new(http),
        (None, None) => Arc::new(FileRegistry::embedded()?),
    };
    let pii = file.pii()?;
    let processor = match (&file.dlq_processor, file.source()) {
        (Some(p), Ok(source)) => Some(eventbus_dlq::ProcessorReplays {
            group: source.group_id,
            categories: p.automatic.clone(),
            max_replays: p.max_replays,
        }),
        _ => None,
    };
    Ok(Context2 {
        processor,
        kafka: file.kafka,
        classifier,
        decoder: Decoder::new(registry),
        pii,
    })
}

/// Runs a `dlq` subcommand.
///
/// # Errors
/// Bad arguments (named), an unreachable broker, a missing topic, or a refused record.
pub fn run(command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::Stats {
            topic,
            filters,
            connection,
            json,
        } => stats(&topic, &filters.build(), &context(&connection)?, json),
        DlqCommand::Inspect {
            topic,
            filters,
            connection,
            json,
            limit,
            show_pii,
        } => {
            if show_pii {
                log_show_pii("inspect", &topic);
            }
            inspect(
                &topic,
                &filters.build(),
                &context(&connection)?,
                json,
                limit,
                show_pii,
            )
        }
        DlqCommand::Replay {
            topic,
            filters,
            connection,
            to,
            rate,
            dry_run,
            yes,
            id,
            all_groups,
            force,
        } => {
            let ctx = context(&connection)?;
            let opts = ReplayOptions {
                dlq_topic: topic,
                to,
                filter: filters.build(),
                rate: rate.as_deref().map(parse_rate).transpose()?,
                dry_run,
                id,
                all_groups,
                processor: ctx.processor.clone(),
                force,
            };
            run_replay(&opts, &ctx, yes)
        }
        DlqCommand::Export {
            topic,
            filters,
            connection,
            show_pii,
        } => {
            if show_pii {
                log_show_pii("export", &topic);
            }
            export(&topic, &filters.build(), &context(&connection)?, show_pii)
        }
        DlqCommand::Import {
            file,
            connection,
            to,
            dry_run,
        } => import(&file, &context(&connection)?, to.as_deref(), dry_run),
    }
}

/// `100`, `100/s`: letters per second.
fn parse_rate(text: &str) -> anyhow::Result<NonZeroU32> {
    let n = text.trim().trim_end_matches("/s").trim();
    n.parse::<NonZeroU32>()
        .with_context(|| format!("--rate `{text}` is not a positive number of letters per second"))
}

pub(super) fn each(
    topic: &str,
    filter: &LetterFilter,
    ctx: &Context2,
    mut f: impl FnMut(&StoredLetter) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    read(&ctx.kafka, topic, &BTreeMap::new(), &ctx.classifier, |l| {
        if filter.matches(&l) { f(&l) } else { Ok(()) }
    })?;
    Ok(())
}

fn run_replay(opts: &ReplayOptions, ctx: &Context2, yes: bool) -> anyhow::Result<()> {
    let id = opts.id();
    if !opts.dry_run && !yes {
        // Count first, then ask.
        let mut dry = opts.clone();
        dry.dry_run = true;
        let preview = replay(&ctx.kafka, &dry, &ctx.classifier, |_, _| {})?;
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            bail!(
                "replay {id} would send up to {} letters from {}; pass --yes to send them \
                 (or --dry-run to list them)",
                preview.selected,
                opts.dlq_topic
            );
        }
        eprint!(
            "replay {id}: send up to {} letters from {}{}? [y/N] ",
            preview.selected,
            opts.dlq_topic,
            opts.to
                .as_deref()
                .map(|t| format!(" to {t}"))
                .unwrap_or_default()
        );
        let mut answer = String::new();
        stdin.lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            bail!("replay cancelled; nothing was sent");
        }
    }
    let bar = indicatif::ProgressBar::new_spinner();
    if !std::io::stderr().is_terminal() || opts.dry_run {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos} letters sent ({per_sec}) {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let report = replay(&ctx.kafka, opts, &ctx.classifier, |l, target| {
        if opts.dry_run {
            println!(
                "would send {}[{}]@{} ({}, key {}) to {target}",
                l.dlq_topic,
                l.dlq_partition,
                l.dlq_offset,
                l.category,
                l.key
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default()
            );
        } else {
            bar.inc(1);
        }
    })?;
    bar.finish_and_clear();
    if opts.dry_run {
        println!(
            "dry run of replay {id}: {} of {} letters selected; nothing sent",
            report.selected, report.scanned
        );
        if report.already_replayed > 0 {
            println!(
                "  {} more the DLQ processor already replayed would not be sent (--force sends them)",
                report.already_replayed
            );
        }
    } else {
        let rate = if report.send_seconds > 0.0 {
            format!(
                " in {:.1} s ({:.1}/s)",
                report.send_seconds,
                report.sent as f64 / report.send_seconds
            )
        } else {
            String::new()
        };
        println!(
            "replay {id}: sent {} of {} letters read{rate}; {} were covered by an earlier run",
            report.sent, report.scanned, report.covered_before
        );
        if report.already_replayed > 0 {
            println!(
                "  {} letters the DLQ processor already replayed were not sent again (--force sends them)",
                report.already_replayed
            );
        }
        if report.without_value > 0 {
            println!(
                "  {} letters were written without their value (too large for the DLQ) and were not sent: \
                 their records are at their origin in the source topic",
                report.without_value
            );
        }
        for (t, n) in &report.by_target {
            println!("  {n:>8} to {t}");
        }
    }
    Ok(())
}

fn export(
    topic: &str,
    filter: &LetterFilter,
    ctx: &Context2,
    show_pii: bool,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut n = 0u64;
    each(topic, filter, ctx, |l| {
        let pii = ctx.pii_of(l.context.topic.as_deref(), show_pii);
        writeln!(out, "{}", export_line(l, &ctx.decoder, pii))?;
        n += 1;
        Ok(())
    })?;
    out.flush()?;
    eprintln!("exported {n} letters from {topic}");
    Ok(())
}

fn import(
    file: &std::path::Path,
    ctx: &Context2,
    to: Option<&str>,
    dry_run: bool,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let id = format!(
        "import-{:016x}",
        eventbus_dlq::replay::fnv1a(text.as_bytes())
    );
    let records = match check_import(&text, &ctx.decoder, to, &id) {
        Ok(r) => r,
        Err(bad) => {
            for (line, reason) in &bad {
                eprintln!("{}:{line}: {reason}", file.display());
            }
            bail!(
                "{} of the lines in {} are invalid; nothing was produced",
                bad.len(),
                file.display()
            );
        }
    };
    if dry_run {
        for r in &records {
            println!("line {}: valid, would go to {}", r.line, r.topic);
        }
        println!("dry run: {} lines valid; nothing produced", records.len());
        return Ok(());
    }
    let by_topic = produce(&ctx.kafka, &records, |_| {})?;
    println!("imported {} records ({id})", records.len());
    for (t, n) in &by_topic {
        println!("  {n:>8} to {t}");
    }
    Ok(())
}
