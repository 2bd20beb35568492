//! The `alerting` job: rules in CEL over catalog topics raise alerts on
//! `vehicle.alerts.v1` (Avro `Alert`, keyed by `vehicle_id`) and to webhooks.
//!
//! ```toml
//! [[rule]]
//! name = "speeding"
//! topic = "vehicle.state.v1"
//! when = "speed_kph > 120.0 && status == 'DRIVING'"
//! severity = "WARNING"
//! message = "{vehicle_id} at {speed_kph} km/h"
//! for = "10s"          # the condition holds this long (event time) for the key
//! cooldown = "60s"     # at most one alert per (rule, key) per cool-down (event time)
//!
//! [[rule]]
//! name = "silent"
//! topic = "vehicle.state.v1"
//! absent_for = "5m"    # no event from the key for this long (processing time)
//! severity = "WARNING"
//! message = "{vehicle_id} is silent since {event_time}"
//! ```
//!
//! - One alert per incident: see [`incidents`] for what an incident is and how `for`
//!   and `cooldown` combine.
//! - Every event on the emergency topic (`safety.emergency.v1`) raises a CRITICAL
//!   alert, whatever the cool-downs.
//! - `alert_id` is a name-based UUID of the rule and the triggering event's topic,
//!   partition and offset: a replay after a crash raises the same ids, and consumers
//!   deduplicate by it. An event is committed past only once every output has its
//!   alerts.
//! - SIGHUP reads the file again; rules that do not load leave the old ones in force.

pub mod incidents;
pub mod rules;
mod sink;
pub mod value;
pub mod webhook;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use eventbus_dlq::KafkaDeadLetters;
use eventbus_operators::{KafkaSink, KafkaSinkConfig};
use eventbus_runtime::{Job, JobReport, KafkaSource, SourceConfig};
use eventbus_schemas::{Catalog, Decoder, SchemaRegistry};
use serde::Deserialize;

pub use sink::{Alerting, RuleSet, alert_id};

use crate::config::{JobFile, Overrides};
use incidents::Timing;
use rules::{RuleSpec, Severity, TopicSchema, Trigger};

/// Default consumer group.
pub const DEFAULT_GROUP: &str = "eventbus-alerting";

/// The `[alerting]` section.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertingConfig {
    /// Where alerts go. Default `vehicle.alerts.v1`.
    pub output: String,
    /// Every event here raises a CRITICAL alert. Default `safety.emergency.v1`; empty
    /// for none.
    pub emergency_topic: String,
    /// How far behind its partition's largest event time an event is still on time, ms.
    /// Default 5000.
    pub out_of_orderness_ms: i64,
    /// An incident whose key sent nothing for this long (event time) is over, ms.
    /// Default 300000.
    pub incident_gap_ms: i64,
    /// Quarantine events that cannot be decoded in their topic's DLQ, and alerts a
    /// webhook never took in the alerts topic's DLQ. Default true.
    pub dead_letters: bool,
    /// The topic a catalog topic is read from on this cluster, when its name differs
    /// (`{ "vehicle.state.v1" = "staging.vehicle.state.v1" }`). Rules name catalog
    /// topics; alerts name the topic their event was read from.
    pub topics: std::collections::BTreeMap<String, String>,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        Self {
            output: "vehicle.alerts.v1".to_owned(),
            emergency_topic: "safety.emergency.v1".to_owned(),
            out_of_orderness_ms: 5_000,
            incident_gap_ms: 300_000,
            dead_letters: true,
            topics: std::collections::BTreeMap::new(),
        }
    }
}

/// The name of the built-in emergency rule.
pub const EMERGENCY_RULE: &str = "emergency";

/// Checks and compiles the file's rules (and the emergency rule), giving each the id it
/// had in `previous` when unchanged.
///
/// # Errors
/// The first rule that is wrong, named, or a duplicate name or unknown topic.
pub fn load_rules(
    file: &JobFile,
    catalog: &Catalog,
    registry: &dyn SchemaRegistry,
    previous: Option<&RuleSet>,
) -> anyhow::Result<(RuleSet, HashMap<String, TopicSchema>)> {
    let config = file.alerting.clone().unwrap_or_default();
    let mut specs = file.rule.clone();
    if !config.emergency_topic.is_empty() {
        specs.push(RuleSpec {
            name: EMERGENCY_RULE.to_owned(),
            topic: config.emergency_topic.clone(),
            // Compiled like any rule (its fields are checked), then made to fire on
            // every event, incidents and cool-downs aside.
            when: Some("true".to_owned()),
            absent_for: None,
            severity: Severity::Critical,
            message: "{kind} emergency on {vehicle_id}: {description}".to_owned(),
            for_: None,
            cooldown: None,
            key: None,
        });
    }
    if specs.is_empty() {
        bail!("no [[rule]] in the config, and [alerting] emergency_topic is empty: nothing to do");
    }
    let mut topics: HashMap<String, TopicSchema> = HashMap::new();
    let mut set = RuleSet::default();
    let mut next_id = previous
        .and_then(|p| p.rules.iter().map(|(id, _)| id + 1).max())
        .unwrap_or(0);
    for spec in &specs {
        if set.rules.iter().any(|(_, r)| r.spec.name == spec.name) {
            bail!(
                "rule {:?} is defined twice (\"{EMERGENCY_RULE}\" is the built-in rule of [alerting] emergency_topic)",
                spec.name
            );
        }
        let Some(topic) = catalog.topic(&spec.topic) else {
            bail!(
                "rule {:?}: unknown topic {:?}; the catalog has {}",
                spec.name,
                spec.topic,
                catalog
                    .topics
                    .iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        if !topics.contains_key(&spec.topic) {
            let (_, schema) = registry
                .latest(&topic.subject)
                .ok()
                .flatten()
                .with_context(|| {
                    format!(
                        "rule {:?}: subject {} of topic {} is not registered",
                        spec.name, topic.subject, topic.name
                    )
                })?;
            topics.insert(
                spec.topic.clone(),
                TopicSchema::new(schema, topic.pii.clone()),
            );
        }
        let mut rule = rules::compile(spec, &topics[&spec.topic]).map_err(anyhow::Error::msg)?;
        if spec.name == EMERGENCY_RULE {
            rule.trigger = Trigger::Every;
        }
        let id = previous
            .and_then(|p| p.rules.iter().find(|(_, r)| r.spec == rule.spec))
            .map(|(id, _)| *id)
            .unwrap_or_else(|| {
                next_id += 1;
                next_id - 1
            });
        set.rules.push((id, rule));
    }
    Ok((set, topics))
}

/// Checks the rules and webhooks offline, against the schemas compiled in.
///
/// # Errors
/// As [`load_rules`], or a webhook setting out of range.
pub fn check(file: &JobFile) -> anyhow::Result<()> {
    let catalog = crate::load_catalog(None)?;
    let registry = eventbus_schemas::FileRegistry::embedded()?;
    load_rules(file, &catalog, &registry, None)?;
    let schema = registry
        .latest_of("vehicle.alerts.v1-value")
        .context("the Alert schema is not registered")?;
    webhook::Webhooks::new(&file.webhook, None, "vehicle.alerts.v1", schema)
        .map_err(anyhow::Error::msg)?;
    Ok(())
}

/// What an alerting run did.
#[derive(Debug, Clone)]
pub struct AlertingReport {
    /// The job.
    pub job: JobReport,
    /// Alerts delivered, by rule.
    pub raised: std::collections::BTreeMap<String, u64>,
    /// Rule evaluations that failed (counted as false).
    pub rule_errors: u64,
}

/// Settings of one run.
#[derive(Debug, Clone, Default)]
pub struct AlertingArgs {
    /// The file to read again on SIGHUP.
    pub config_path: Option<PathBuf>,
    /// The command line's overrides, applied again on reload.
    pub overrides: Overrides,
    /// Keep each alert's produce-to-delivery time (the benchmark reads them).
    pub record_latency: bool,
}

/// The job's producers wait this long to batch alerts, unless `[kafka]` sets
/// `linger.ms` (librdkafka's default is 5).
pub const LINGER_MS: &str = "1";
/// The job's consumer waits at most this long for a fetch to fill, unless `[kafka]` sets
/// `fetch.wait.max.ms` (librdkafka's default is 500). A Kafka broker answers a fetch as
/// soon as it has data, so this bounds the latency only on brokers that do not (the
/// mock cluster, tansu), at the cost of more fetch requests while idle.
pub const FETCH_WAIT_MS: &str = "5";

/// The low-latency client settings the job uses unless `[kafka]` says otherwise.
pub fn low_latency(kafka: &mut eventbus_runtime::KafkaProperties) {
    kafka.set_default("linger.ms", LINGER_MS);
    kafka.set_default("fetch.wait.max.ms", FETCH_WAIT_MS);
}

/// Builds the job's sink: rules, readers and outputs.
///
/// # Errors
/// A rule, webhook or topic that is wrong, named.
pub fn sink(file: &JobFile, record_latency: bool) -> anyhow::Result<Built> {
    let config = file.alerting.clone().unwrap_or_default();
    let catalog = crate::load_catalog(None)?;
    let registry = file.registry.client()?;
    let (rules, schemas) = load_rules(file, &catalog, registry.as_ref(), None)?;
    if let Some(unknown) = config.topics.keys().find(|t| catalog.topic(t).is_none()) {
        bail!("[alerting] topics names {unknown:?}, which is not a catalog topic");
    }
    let actual = |catalog_topic: &str| {
        config
            .topics
            .get(catalog_topic)
            .cloned()
            .unwrap_or_else(|| catalog_topic.to_owned())
    };
    let readers = schemas
        .iter()
        .map(|(topic, s)| {
            (
                actual(topic),
                sink::TopicReader {
                    catalog: topic.clone(),
                    decoder: Decoder::with_reader(registry.clone(), s.schema.clone()),
                    pii: s.pii.clone(),
                },
            )
        })
        .collect();
    let alert_subject = catalog.topic(&config.output).map_or_else(
        || "vehicle.alerts.v1-value".to_owned(),
        |t| t.subject.clone(),
    );
    let schema = registry
        .latest(&alert_subject)
        .ok()
        .flatten()
        .with_context(|| format!("subject {alert_subject} is not registered"))?;
    // One dead-letter producer for both: undecodable events and refused alerts.
    let letters = config
        .dead_letters
        .then(|| dead_letters(file, &catalog, registry.clone()))
        .transpose()?;
    let queue = letters
        .clone()
        .map(|l| Arc::new(l) as Arc<dyn eventbus_runtime::DeadLetterQueue>);
    let webhooks = webhook::Webhooks::new(&file.webhook, queue, &config.output, schema.clone())
        .map_err(anyhow::Error::msg)?;
    let kafka = KafkaSink::new(&file.kafka, KafkaSinkConfig::new(config.output.clone()))?;
    tokio::task::block_in_place(|| kafka.check_topic(Duration::from_secs(30)))?;
    let mut topics: Vec<String> = schemas.keys().map(|t| actual(t)).collect();
    topics.sort();
    let timing = Timing {
        out_of_orderness_ms: config.out_of_orderness_ms.max(0),
        incident_gap_ms: config.incident_gap_ms.max(0),
    };
    let outputs = sink::Outputs {
        kafka,
        schema,
        webhooks,
    };
    Ok(Built {
        alerting: Alerting::new(rules, readers, timing, outputs, record_latency),
        topics,
        letters,
    })
}

/// The job's sink, the topics it reads, and its dead-letter producer (when on).
pub struct Built {
    /// The sink.
    pub alerting: Alerting,
    /// The topics to subscribe to, as named on this cluster.
    pub topics: Vec<String>,
    /// Where undecodable events go (the webhooks' refused alerts share it).
    pub letters: Option<KafkaDeadLetters>,
}

fn dead_letters(
    file: &JobFile,
    catalog: &Catalog,
    registry: Arc<dyn SchemaRegistry>,
) -> anyhow::Result<KafkaDeadLetters> {
    let mut dlq = file.dlq.clone().unwrap_or_default().with_catalog(catalog);
    let group = file
        .source
        .as_ref()
        .map_or_else(|| DEFAULT_GROUP.to_owned(), |s| s.group_id.clone());
    dlq.group.get_or_insert(group);
    Ok(KafkaDeadLetters::new(&file.kafka, dlq)
        .context("starting the dead-letter producer")?
        .with_registry(registry))
}

/// Runs the alerting job until `shutdown`.
///
/// # Errors
/// A rule or setting is wrong, a topic is missing, or the job stopped with an error.
pub async fn run(
    file: &JobFile,
    args: &AlertingArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<AlertingReport> {
    let (ready, _) = tokio::sync::oneshot::channel();
    run_with(file, args, shutdown, ready).await
}

/// [`run`], handing the job's sink to `ready` once it is built (the benchmark reads its
/// latencies).
///
/// # Errors
/// As [`run`].
pub async fn run_with(
    file: &JobFile,
    args: &AlertingArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: tokio::sync::oneshot::Sender<Alerting>,
) -> anyhow::Result<AlertingReport> {
    let mut file = file.clone();
    file.kafka.require_brokers()?;
    low_latency(&mut file.kafka);
    let Built {
        alerting,
        topics,
        letters,
    } = sink(&file, args.record_latency)?;
    let group = file
        .source
        .as_ref()
        .map_or_else(|| DEFAULT_GROUP.to_owned(), |s| s.group_id.clone());
    let source = SourceConfig::new(group.clone(), topics.clone());
    let mut job = Job::builder("alerting")
        .config(file.runtime.clone())
        .source(KafkaSource::new(file.kafka.clone(), source));
    if let Some(letters) = letters {
        job = job.dead_letters(letters);
    }
    let job = job.sink(alerting.clone()).build()?;
    tracing::info!(
        topics = %topics.join(","), rules = alerting.rules().rules.len(),
        webhooks = file.webhook.len(), "alerting job starting"
    );
    let _ = ready.send(alerting.clone());
    let ticker = tokio::spawn(absences(alerting.clone()));
    let reload = tokio::spawn(reloads(alerting.clone(), args.clone(), topics));
    let result = job.run(shutdown).await;
    ticker.abort();
    reload.abort();
    let job = result?;
    Ok(AlertingReport {
        job,
        raised: alerting.raised(),
        rule_errors: alerting.rule_errors(),
    })
}

/// Fires absence alerts as they fall due, and lets go of what the safe points passed.
async fn absences(alerting: Alerting) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        for (tp, raised, hold) in alerting.tick() {
            let me = alerting.clone();
            tokio::spawn(async move { me.deliver(tp, raised, hold).await });
        }
    }
}

/// Reads the rules again on each SIGHUP.
async fn reloads(alerting: Alerting, args: AlertingArgs, topics: Vec<String>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; rules are not reloaded");
        return;
    };
    while hup.recv().await.is_some() {
        match reload(&alerting, &args, &topics) {
            Ok(n) => tracing::info!(rules = n, "rules reloaded"),
            Err(e) => tracing::error!(
                error = format!("{e:#}"),
                "the rules did not load; the old ones stay in force"
            ),
        }
    }
}

fn reload(alerting: &Alerting, args: &AlertingArgs, topics: &[String]) -> anyhow::Result<usize> {
    let file = JobFile::load(args.config_path.as_deref(), &args.overrides)?;
    let catalog = crate::load_catalog(None)?;
    let registry = file.registry.client()?;
    let old = alerting.rules();
    let (rules, schemas) = load_rules(&file, &catalog, registry.as_ref(), Some(&old))?;
    let config = file.alerting.clone().unwrap_or_default();
    let actual = |t: &String| config.topics.get(t).cloned().unwrap_or_else(|| t.clone());
    if let Some(new) = schemas.keys().find(|t| !topics.contains(&actual(t))) {
        bail!(
            "the rules now read topic {new:?}, which the job does not subscribe to: restart the job to add a topic"
        );
    }
    let n = rules.rules.len();
    alerting.replace_rules(rules);
    Ok(n)
}

/// `eventbus run alerting`.
///
/// # Errors
/// As [`run`].
pub async fn command(
    mut file: JobFile,
    overrides: &Overrides,
    args: crate::cli::RunArgs,
) -> anyhow::Result<()> {
    file.default_source(DEFAULT_GROUP, Vec::new(), overrides);
    let report = run(
        &file,
        &AlertingArgs {
            config_path: args.config.clone(),
            overrides: overrides.clone(),
            record_latency: false,
        },
        eventbus_runtime::shutdown::signals(),
    )
    .await?;
    tracing::info!(
        consumed = report.job.consumed,
        raised = ?report.raised,
        rule_errors = report.rule_errors,
        "alerting job finished"
    );
    Ok(())
}
