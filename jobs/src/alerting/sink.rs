//! The alerting sink: decodes each event, runs its topic's rules, and delivers the
//! alerts they raise to every output before the event may be committed past.
//!
//! Each event becomes a state hold ([`Ack::into_state_hold`]). The hold is split for
//! each alert (released once every output has it) and for each state that starts from
//! the event (an incident, a cool-down, a key's last event for an absence rule), so the
//! commit point never passes what a replay needs; see [`super::incidents`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use apache_avro::types::Value as Avro;
use bytes::Bytes;
use eventbus_operators::KafkaSink;
use eventbus_runtime::{Ack, ErrorClass, Record, Sink, SinkError, StateHold, TopicPartition};
use eventbus_schemas::events::{Alert, AlertSeverity};
use eventbus_schemas::{Decoder, SchemaRegistry};

use super::incidents::{Incidents, Timing};
use super::rules::{Rule, Severity, Trigger};
use super::value::{field, millis, render, text, to_cel};
use super::webhook::Webhooks;

const NAME: &str = "alerting";

/// The rules in force, by topic; reloads swap the whole set.
#[derive(Debug, Default)]
pub struct RuleSet {
    /// Each rule with its stable id (the same rule keeps its id across reloads).
    pub rules: Vec<(usize, Rule)>,
}

impl RuleSet {
    fn for_topic<'a>(&'a self, topic: &'a str) -> impl Iterator<Item = &'a (usize, Rule)> {
        self.rules
            .iter()
            .filter(move |(_, r)| r.spec.topic == topic)
    }
}

/// How one input topic is read.
pub struct TopicReader {
    /// The catalog topic it is (what rules name).
    pub catalog: String,
    /// Decodes its records into the catalog's schema.
    pub decoder: Decoder<Arc<dyn SchemaRegistry>>,
    /// Its personal-data fields, masked in messages.
    pub pii: Vec<String>,
}

/// Where alerts go.
pub struct Outputs {
    /// The alerts topic.
    pub kafka: KafkaSink,
    /// The `Alert` schema's registry id and schema.
    pub schema: (u32, Arc<apache_avro::Schema>),
    /// The webhooks.
    pub webhooks: Webhooks,
}

/// An alert on its way, with the event it came from.
#[derive(Debug, Clone)]
pub struct Raised {
    /// The alert.
    pub alert: Alert,
    /// The event's Kafka timestamp (its produce time), ms.
    pub produced_ms: Option<i64>,
}

struct Absence {
    offset: i64,
    seen: Instant,
    after: Duration,
    value: Arc<Avro>,
    last: StateHold,
}

struct Part {
    generation: u64,
    incidents: Incidents<StateHold>,
    absent: HashMap<(usize, String), Absence>,
    /// Offsets of events whose alerts are being delivered, with how many.
    pending: BTreeMap<i64, usize>,
    next: i64,
}

struct Inner {
    rules: RwLock<Arc<RuleSet>>,
    topics: HashMap<String, TopicReader>,
    timing: Timing,
    outputs: Outputs,
    parts: Mutex<HashMap<TopicPartition, Part>>,
    generation: std::sync::atomic::AtomicU64,
    raised: Mutex<BTreeMap<String, u64>>,
    rule_errors: std::sync::atomic::AtomicU64,
    last_error_log: Mutex<Option<Instant>>,
    latencies: Option<Mutex<Vec<f64>>>,
}

/// The alerting job's sink; cheap to clone.
#[derive(Clone)]
pub struct Alerting {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Alerting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Alerting")
    }
}

thread_local! {
    /// CEL's built-in functions, registered once per thread.
    static ROOT: cel::Context<'static> = cel::Context::default();
}

/// `alert` in the wire format; a failure is Fatal (the schema is ours), naming `sink`.
pub(crate) fn encode_alert(
    schema: &(u32, Arc<apache_avro::Schema>),
    alert: &Alert,
    origin: &eventbus_runtime::Origin,
    sink: &'static str,
) -> Result<Vec<u8>, SinkError> {
    eventbus_schemas::encode(schema.0, &schema.1, alert).map_err(|e| SinkError::Delivery {
        sink,
        origin: origin.clone(),
        reason: format!("cannot encode alert {}: {e}", alert.alert_id),
        class: ErrorClass::Fatal,
    })
}

/// A deterministic alert id: a name-based UUID of the rule and the event's coordinates.
pub fn alert_id(rule: &str, topic: &str, partition: i32, offset: i64) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5e0b_a1e7_9f3c_4d2a_8b6e_2f1d_c0a4_7e31);
    let name = format!("{rule}\u{0}{topic}\u{0}{partition}\u{0}{offset}");
    uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes()).to_string()
}

fn severity(s: Severity) -> AlertSeverity {
    match s {
        Severity::Info => AlertSeverity::Info,
        Severity::Warning => AlertSeverity::Warning,
        Severity::Critical => AlertSeverity::Critical,
    }
}

impl Alerting {
    /// A sink over `topics`, with `rules`, delivering to `outputs`. `record_latency`
    /// keeps each alert's produce-to-delivery time for the benchmark.
    pub fn new(
        rules: RuleSet,
        topics: HashMap<String, TopicReader>,
        timing: Timing,
        outputs: Outputs,
        record_latency: bool,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                rules: RwLock::new(Arc::new(rules)),
                topics,
                timing,
                outputs,
                parts: Mutex::new(HashMap::new()),
                generation: std::sync::atomic::AtomicU64::new(0),
                raised: Mutex::new(BTreeMap::new()),
                rule_errors: std::sync::atomic::AtomicU64::new(0),
                last_error_log: Mutex::new(None),
                latencies: record_latency.then(|| Mutex::new(Vec::new())),
            }),
        }
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.inner
            .rules
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts `rules` in force. The state of rules that are gone or changed (their ids
    /// are gone) is dropped.
    pub fn replace_rules(&self, rules: RuleSet) {
        let ids: Vec<usize> = rules.rules.iter().map(|(id, _)| *id).collect();
        *self.inner.rules.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rules);
        let mut parts = self.parts();
        for part in parts.values_mut() {
            let gone: Vec<(usize, String)> = part
                .absent
                .keys()
                .filter(|(id, _)| !ids.contains(id))
                .cloned()
                .collect();
            for k in gone {
                if let Some(a) = part.absent.remove(&k) {
                    a.last.release();
                }
            }
            part.incidents
                .forget_rules(|id| !ids.contains(&id), part.next);
        }
    }

    /// Alerts raised so far, by rule.
    pub fn raised(&self) -> BTreeMap<String, u64> {
        self.inner
            .raised
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Rule evaluations that failed (counted as false).
    pub fn rule_errors(&self) -> u64 {
        self.inner
            .rule_errors
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Produce-to-delivery times of the alerts delivered so far, ms (when recorded).
    pub fn take_latencies(&self) -> Vec<f64> {
        self.inner
            .latencies
            .as_ref()
            .map(|l| std::mem::take(&mut *l.lock().unwrap_or_else(|p| p.into_inner())))
            .unwrap_or_default()
    }

    fn parts(&self) -> std::sync::MutexGuard<'_, HashMap<TopicPartition, Part>> {
        self.inner.parts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_part(&self) -> Part {
        Part {
            generation: self
                .inner
                .generation
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            incidents: Incidents::new(self.inner.timing),
            absent: HashMap::new(),
            pending: BTreeMap::new(),
            next: 0,
        }
    }

    fn rule_error(&self, rule: &str, record: &Record<Bytes>, error: &str) {
        self.inner
            .rule_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut last = self
            .inner
            .last_error_log
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            // CEL's errors quote the values they compared: personal data is masked.
            let error =
                eventbus_runtime::redact::redact(&record.origin(), Some(&record.value), error);
            let error = error.as_str();
            tracing::warn!(
                rule, topic = %record.topic, partition = record.partition, offset = record.offset,
                error, total = self.rule_errors(),
                "a rule could not be evaluated; counted as false (logged at most every 10 s)"
            );
        }
    }

    /// The alert `rule` raises for `value`, the event at `origin`.
    #[allow(clippy::too_many_arguments)]
    fn alert(
        &self,
        rule: &Rule,
        tp: &TopicPartition,
        offset: i64,
        value: &Avro,
        key: &str,
        raised_at: i64,
        pii: &[String],
    ) -> Alert {
        Alert {
            alert_id: alert_id(&rule.spec.name, &tp.topic, tp.partition, offset),
            vehicle_id: key.to_owned(),
            fleet_id: field(value, &["fleet_id"]).map(text).unwrap_or_default(),
            raised_at,
            severity: severity(rule.spec.severity),
            rule: rule.spec.name.clone(),
            message: render(&rule.message, value, pii),
            source_topic: tp.topic.to_string(),
            source_partition: tp.partition,
            source_offset: offset,
        }
    }

    /// Evaluates the rules of the event's topic; returns the alerts, each with its hold.
    fn evaluate(
        &self,
        record: &Record<Bytes>,
        value: &Arc<Avro>,
        hold: &StateHold,
    ) -> Vec<(Raised, StateHold)> {
        let tp = record.topic_partition();
        let Some(reader) = self.inner.topics.get(&*record.topic) else {
            return Vec::new();
        };
        let event_ms = field(value, &["event_time"])
            .and_then(millis)
            .or(record.timestamp)
            .unwrap_or_else(eventbus_runtime::dead_letter::now_ms);
        let rules = self.rules();
        let topic = reader.catalog.as_str();
        let conditions: Vec<(usize, Result<bool, String>)> = if rules
            .for_topic(topic)
            .any(|(_, r)| matches!(r.trigger, Trigger::When { .. }))
        {
            ROOT.with(|root| {
                let mut ctx = root.new_inner_scope();
                if let Avro::Record(fields) = &**value {
                    for (name, v) in fields {
                        ctx.add_variable_from_value(name.clone(), to_cel(v));
                    }
                }
                rules
                    .for_topic(topic)
                    .filter_map(|(id, r)| match &r.trigger {
                        Trigger::When { program, .. } => Some((
                            *id,
                            match program.execute(&ctx) {
                                Ok(cel::Value::Bool(b)) => Ok(b),
                                Ok(other) => {
                                    Err(format!("the condition gave {other:?}, not a bool"))
                                }
                                Err(e) => Err(e.to_string()),
                            },
                        )),
                        _ => None,
                    })
                    .collect()
            })
        } else {
            Vec::new()
        };
        let mut raised = Vec::new();
        let mut released = Vec::new();
        {
            let mut parts = self.parts();
            if !parts.contains_key(&tp) {
                let part = self.new_part();
                parts.insert(tp.clone(), part);
            }
            let Some(part) = parts.get_mut(&tp) else {
                return Vec::new();
            };
            part.incidents.advance(record.offset, event_ms);
            for (id, rule) in rules.for_topic(topic) {
                let Some(key) = field(value, &rule.key).map(text) else {
                    continue;
                };
                let fire = match &rule.trigger {
                    Trigger::Every => true,
                    Trigger::When {
                        for_ms,
                        cooldown_ms,
                        ..
                    } => {
                        let holds = match conditions.iter().find(|(i, _)| i == id) {
                            Some((_, Ok(b))) => *b,
                            Some((_, Err(e))) => {
                                self.rule_error(&rule.spec.name, record, e);
                                false
                            }
                            None => false,
                        };
                        part.incidents.evaluate(
                            *id,
                            &key,
                            (record.offset, event_ms),
                            holds,
                            *for_ms,
                            *cooldown_ms,
                            || hold.split(),
                        )
                    }
                    Trigger::Absent(after) => {
                        let last = Absence {
                            offset: record.offset,
                            seen: Instant::now(),
                            after: *after,
                            value: value.clone(),
                            last: hold.split(),
                        };
                        if let Some(old) = part.absent.insert((*id, key.clone()), last) {
                            released.push(old.last);
                        }
                        false
                    }
                };
                if fire {
                    let alert =
                        self.alert(rule, &tp, record.offset, value, &key, event_ms, &reader.pii);
                    *part.pending.entry(record.offset).or_default() += 1;
                    raised.push((
                        Raised {
                            alert,
                            produced_ms: record.timestamp,
                        },
                        hold.split(),
                    ));
                }
            }
            part.next = record.offset + 1;
            let pending = part.pending.keys().next().copied();
            released.extend(part.incidents.settle(pending, part.next));
        }
        released.into_iter().for_each(StateHold::release);
        raised
    }

    /// Absence alerts now due, each with the hold on the key's last event. Also lets
    /// go of the ended states the partitions' safe points have passed since their last
    /// event (delivered alerts move it too).
    pub fn tick(&self) -> Vec<(TopicPartition, Raised, StateHold)> {
        let rules = self.rules();
        let mut due = Vec::new();
        let mut released = Vec::new();
        let mut parts = self.parts();
        for (tp, part) in parts.iter_mut() {
            let pending = part.pending.keys().next().copied();
            released.extend(part.incidents.settle(pending, part.next));
            let expired: Vec<(usize, String)> = part
                .absent
                .iter()
                .filter(|(_, a)| a.seen.elapsed() >= a.after)
                .map(|(k, _)| k.clone())
                .collect();
            for k in expired {
                let Some(a) = part.absent.remove(&k) else {
                    continue;
                };
                let Some((_, rule)) = rules.rules.iter().find(|(id, _)| *id == k.0) else {
                    a.last.release();
                    continue;
                };
                let pii = self
                    .inner
                    .topics
                    .get(&*tp.topic)
                    .map(|t| t.pii.as_slice())
                    .unwrap_or_default();
                let alert = self.alert(
                    rule,
                    tp,
                    a.offset,
                    &a.value,
                    &k.1,
                    eventbus_runtime::dead_letter::now_ms(),
                    pii,
                );
                *part.pending.entry(a.offset).or_default() += 1;
                due.push((
                    tp.clone(),
                    Raised {
                        alert,
                        produced_ms: None,
                    },
                    a.last,
                ));
            }
        }
        drop(parts);
        released.into_iter().for_each(StateHold::release);
        due
    }

    /// Sends `raised` to every output; `hold` goes once all have it.
    pub async fn deliver(&self, tp: TopicPartition, raised: Raised, hold: StateHold) {
        let generation = self.parts().get(&tp).map(|p| p.generation);
        let offset = raised.alert.source_offset;
        let outcome = self.send_everywhere(&tp, &raised).await;
        if let (Some(latencies), Some(produced)) = (&self.inner.latencies, raised.produced_ms)
            && outcome.is_ok()
        {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
            latencies
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(now - produced as f64);
        }
        if outcome.is_ok() {
            metrics::counter!(
                "eventbus_alerts_raised_total",
                "rule" => raised.alert.rule.clone(),
                "severity" => format!("{:?}", raised.alert.severity).to_uppercase(),
            )
            .increment(1);
            *self
                .inner
                .raised
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(raised.alert.rule.clone())
                .or_default() += 1;
        }
        {
            let mut parts = self.parts();
            if let Some(part) = parts.get_mut(&tp)
                && Some(part.generation) == generation
                && let Some(n) = part.pending.get_mut(&offset)
            {
                *n -= 1;
                if *n == 0 {
                    part.pending.remove(&offset);
                }
            }
        }
        match outcome {
            Ok(()) => hold.release(),
            Err(e) => hold.fail(e),
        }
    }

    async fn send_everywhere(&self, tp: &TopicPartition, raised: &Raised) -> Result<(), SinkError> {
        let out = &self.inner.outputs;
        let alert = &raised.alert;
        let origin = eventbus_runtime::Origin {
            topic: tp.topic.clone(),
            partition: tp.partition,
            offset: alert.source_offset,
        };
        let bytes = encode_alert(&out.schema, alert, &origin, NAME)?;
        let mut record = Record::new(tp.topic.clone(), tp.partition, alert.source_offset, bytes);
        record.key = Some(Bytes::from(alert.vehicle_id.clone().into_bytes()));
        let (ack, kafka) = Ack::channel(origin.clone());
        out.kafka.send(record, ack).await?;
        let hooks = out.webhooks.deliver(alert, &origin);
        let (kafka, hooks) = tokio::join!(kafka, hooks);
        kafka.map_err(|_| SinkError::AckDropped { origin })??;
        hooks
    }
}

impl Sink<Bytes> for Alerting {
    async fn send(&self, record: Record<Bytes>, ack: Ack) -> Result<(), SinkError> {
        let Some(reader) = self.inner.topics.get(&*record.topic) else {
            ack.done();
            return Ok(());
        };
        let origin = record.origin();
        let value = match reader.decoder.decode(&record.value, Some(&origin)) {
            Ok((_, v)) => Arc::new(v),
            Err(e) => {
                ack.fail(SinkError::Delivery {
                    sink: NAME,
                    origin,
                    reason: e.to_string(),
                    class: ErrorClass::Permanent,
                });
                return Ok(());
            }
        };
        let hold = ack.into_state_hold();
        let raised = self.evaluate(&record, &value, &hold);
        hold.release();
        let tp = record.topic_partition();
        for (r, hold) in raised {
            let me = self.clone();
            let tp = tp.clone();
            tokio::spawn(async move { me.deliver(tp, r, hold).await });
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), SinkError> {
        Sink::<Vec<u8>>::flush(&self.inner.outputs.kafka).await
    }

    async fn partitions_revoked(&self, partitions: &[TopicPartition]) -> Result<(), SinkError> {
        let dropped: Vec<Part> = {
            let mut parts = self.parts();
            partitions
                .iter()
                .filter_map(|tp| parts.remove(tp))
                .collect()
        };
        for part in dropped {
            part.incidents
                .into_holds()
                .into_iter()
                .for_each(StateHold::abandon);
            part.absent.into_values().for_each(|a| a.last.abandon());
        }
        Sink::<Vec<u8>>::partitions_revoked(&self.inner.outputs.kafka, partitions).await
    }
}
