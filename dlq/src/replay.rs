//! Replaying dead letters to their original topic (or another one).
//!
//! A replay has an id: given, or derived from the DLQ topic, the target and the filter,
//! so running the same replay again has the same id. Its progress is the committed
//! position of the consumer group `eventbus-replay-<id>` on the DLQ topic, committed
//! only after everything before it was acknowledged by the broker. Running the same
//! replay again therefore starts where the last run ended and sends nothing twice; a run
//! that crashes resends at most the letters of its last second.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use eventbus_runtime::kafka::EventProducer;
use eventbus_runtime::{Headers, KafkaProperties, REPLAY_GROUP};
use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::DlqError;
use crate::classify::Classifier;
use crate::envelope::{REPLAY_COUNT, REPLAY_ID, is_context_header};
use crate::store::{LetterFilter, StoredLetter, consumer, read};

/// How often progress is made durable (flush, then commit).
const CHECKPOINT: Duration = Duration::from_secs(1);

/// What to replay and how.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// The DLQ topic to read.
    pub dlq_topic: String,
    /// Send here instead of each letter's original topic.
    pub to: Option<String>,
    /// Which letters.
    pub filter: LetterFilter,
    /// Letters per second at most.
    pub rate: Option<NonZeroU32>,
    /// List what would be sent; send and commit nothing.
    pub dry_run: bool,
    /// The replay's id; derived from the topic, target and filter when absent.
    pub id: Option<String>,
    /// Send to every consumer group of the target: leave out `eventbus.replay.group`,
    /// which otherwise limits each replayed record to the group whose job failed it.
    pub all_groups: bool,
    /// What the DLQ processor replays on its own, so a letter it already replayed is not
    /// sent again (unless `force`).
    pub processor: Option<ProcessorReplays>,
    /// Send letters the DLQ processor already replayed, too.
    pub force: bool,
}

/// What a DLQ processor replays on its own: letters of its automatic categories,
/// replayed fewer than `max_replays` times, once its group has committed past them.
#[derive(Debug, Clone, Default)]
pub struct ProcessorReplays {
    /// The processor's consumer group on the DLQ topic.
    pub group: String,
    /// Its automatic categories.
    pub categories: Vec<String>,
    /// Its replay limit (letters replayed this often are parked, not replayed).
    pub max_replays: u32,
}

impl ReplayOptions {
    /// The replay's id.
    pub fn id(&self) -> String {
        self.id.clone().unwrap_or_else(|| {
            let text = format!(
                "{}|{}|{}",
                self.dlq_topic,
                self.to.as_deref().unwrap_or("-"),
                self.filter.describe()
            );
            format!("r{:016x}", fnv1a(text.as_bytes()))
        })
    }
}

/// FNV-1a: a stable 64-bit hash for ids derived from text.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ReplayReport {
    /// The replay's id.
    pub id: String,
    /// Letters read (after the position of an earlier run of the same replay).
    pub scanned: u64,
    /// Letters the filter selected.
    pub selected: u64,
    /// Letters produced (0 in a dry run).
    pub sent: u64,
    /// Letters an earlier run of the same replay already covered.
    pub covered_before: u64,
    /// Letters sent per target topic.
    pub by_target: BTreeMap<String, u64>,
    /// Letters selected but not sent because the DLQ processor already replayed them.
    pub already_replayed: u64,
    /// Letters selected but not sent because they were written without their value.
    pub without_value: u64,
    /// Seconds from the first letter sent to the last acknowledgement.
    pub send_seconds: f64,
}

/// The headers a letter replays with: its original headers (the failure context
/// removed) with `eventbus.replay.id` set, `eventbus.replay.count` incremented, and,
/// with `group`, `eventbus.replay.group`: only that consumer group's eventbus jobs
/// process the record; every other group's take it as done.
pub fn replayed_headers(
    letter_headers: &Headers,
    replay_count: u32,
    id: &str,
    group: Option<&str>,
) -> Headers {
    let mut headers: Headers = letter_headers
        .iter()
        .filter(|h| {
            !is_context_header(&h.key)
                && h.key != REPLAY_ID
                && h.key != REPLAY_COUNT
                && h.key != REPLAY_GROUP
        })
        .cloned()
        .collect();
    headers.push(REPLAY_ID, Some(Bytes::copy_from_slice(id.as_bytes())));
    let count = (replay_count + 1).to_string();
    headers.push(REPLAY_COUNT, Some(Bytes::from(count)));
    if let Some(g) = group {
        headers.push(REPLAY_GROUP, Some(Bytes::copy_from_slice(g.as_bytes())));
    }
    headers
}

/// The target topic of a letter.
///
/// # Errors
/// The letter names no original topic and no `--to` was given.
pub fn target_of(l: &StoredLetter, to: Option<&str>) -> Result<String, DlqError> {
    match (to, &l.context.topic) {
        (Some(t), _) => Ok(t.to_owned()),
        (None, Some(t)) => Ok(t.clone()),
        (None, None) => Err(DlqError::NoTarget {
            dlq_topic: l.dlq_topic.clone(),
            partition: l.dlq_partition,
            offset: l.dlq_offset,
        }),
    }
}

#[derive(Default)]
pub(crate) struct Deliveries {
    errors: Mutex<Vec<String>>,
}

impl Deliveries {
    /// The first delivery failure, if any.
    pub(crate) fn first_error(&self) -> Option<String> {
        let errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        errors.first().cloned()
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, m)) = result {
            use rdkafka::Message as _;
            let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
            errors.push(format!(
                "topic {} partition {}: {e}",
                m.topic(),
                m.partition()
            ));
        }
    }
}

/// A producer for replays and parking: idempotent, `acks=all`.
pub(crate) fn producer(props: &KafkaProperties) -> Result<EventProducer<Deliveries>, DlqError> {
    props
        .durable_producer("the replay")?
        .create_with_context(Deliveries::default())
        .map_err(|e| DlqError::kafka("creating the Kafka producer", e))
}

/// Runs a replay; `on_letter` sees each selected letter and its target as it is sent
/// (or would be, in a dry run).
///
/// # Errors
/// The DLQ cannot be read, a letter has no target, or the broker refuses a record (the
/// position is then left before it, so the next run retries it).
pub fn replay(
    props: &KafkaProperties,
    opts: &ReplayOptions,
    classifier: &Classifier,
    mut on_letter: impl FnMut(&StoredLetter, &str),
) -> Result<ReplayReport, DlqError> {
    let id = opts.id();
    let group = format!("eventbus-replay-{id}");
    let positions = consumer(props, &group)?;
    let brokers = props.brokers().unwrap_or_default();
    let ends = crate::store::end_offsets(&positions, brokers, &opts.dlq_topic)?;
    let mut start = BTreeMap::new();
    if !opts.dry_run {
        let tps: Vec<eventbus_runtime::TopicPartition> = ends
            .keys()
            .map(|p| eventbus_runtime::TopicPartition::new(opts.dlq_topic.as_str(), *p))
            .collect();
        let committed =
            eventbus_runtime::kafka::committed(&positions, &tps, Duration::from_secs(15)).map_err(
                |e| match e {
                    eventbus_runtime::RuntimeError::Kafka { source, .. } => {
                        DlqError::kafka(format!("reading the position of replay {id}"), source)
                    }
                    other => DlqError::Runtime(other),
                },
            )?;
        start.extend(committed.into_iter().map(|(tp, o)| (tp.partition, o)));
    }
    let producer = if opts.dry_run {
        None
    } else {
        Some(producer(props)?)
    };
    let limiter = opts
        .rate
        .map(|r| RateLimiter::direct(Quota::per_second(r).allow_burst(NonZeroU32::MIN)));
    let clock = DefaultClock::default();
    let mut report = ReplayReport {
        id: id.clone(),
        covered_before: start.values().map(|o| u64::try_from(*o).unwrap_or(0)).sum(),
        ..ReplayReport::default()
    };
    let mut done: BTreeMap<i32, i64> = BTreeMap::new();
    let mut last_checkpoint = Instant::now();
    let mut first_send: Option<Instant> = None;
    let checkpoint = |producer: &EventProducer<Deliveries>,
                      done: &BTreeMap<i32, i64>|
     -> Result<(), DlqError> {
        producer.flush(Duration::from_secs(60)).map_err(|e| {
            DlqError::kafka("waiting for the broker to acknowledge replayed letters", e)
        })?;
        let errors = producer
            .context()
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(e) = errors.first() {
            return Err(DlqError::Refused {
                what: "a replayed letter (the replay stops before it)".into(),
                reason: e.clone(),
            });
        }
        let mut tpl = TopicPartitionList::new();
        for (p, o) in done {
            tpl.add_partition_offset(&opts.dlq_topic, *p, Offset::Offset(*o))
                .map_err(|e| DlqError::kafka(format!("saving the position of replay {id}"), e))?;
        }
        if tpl.count() > 0 {
            positions
                .commit(&tpl, CommitMode::Sync)
                .map_err(|e| DlqError::kafka(format!("saving the position of replay {id}"), e))?;
        }
        Ok(())
    };
    // Where the DLQ processor's group stands: the letters below it that the processor
    // replays on its own were replayed already.
    let auto_replayed: BTreeMap<i32, i64> = match (&opts.processor, opts.force) {
        (Some(proc), false) => {
            let reader = consumer(props, &proc.group)?;
            let tps: Vec<eventbus_runtime::TopicPartition> = ends
                .keys()
                .map(|p| eventbus_runtime::TopicPartition::new(opts.dlq_topic.as_str(), *p))
                .collect();
            eventbus_runtime::kafka::committed(&reader, &tps, Duration::from_secs(15))?
                .into_iter()
                .map(|(tp, o)| (tp.partition, o))
                .collect()
        }
        _ => BTreeMap::new(),
    };
    let read_to = read(props, &opts.dlq_topic, &start, classifier, |l| {
        report.scanned += 1;
        let replayed_by_processor = opts.processor.as_ref().is_some_and(|proc| {
            proc.categories.contains(&l.category)
                && l.context.replay_count < proc.max_replays
                && auto_replayed
                    .get(&l.dlq_partition)
                    .is_some_and(|c| l.dlq_offset < *c)
        });
        let without_value = l.headers.get(crate::envelope::VALUE_OMITTED).is_some();
        if opts.filter.matches(&l) && replayed_by_processor {
            report.already_replayed += 1;
        } else if opts.filter.matches(&l) && without_value {
            // Sending it would send an empty record: its value is only at its origin.
            tracing::warn!(
                dlq = %l.dlq_topic, partition = l.dlq_partition, offset = l.dlq_offset,
                origin_topic = ?l.context.topic, origin_partition = ?l.context.partition,
                origin_offset = ?l.context.offset,
                "this letter was written without its value (too large for the DLQ); not replayed: \
                 the record is at its origin in the source topic"
            );
            report.without_value += 1;
        } else if opts.filter.matches(&l) {
            let target = target_of(&l, opts.to.as_deref())?;
            report.selected += 1;
            if let Some(p) = &producer {
                if let Some(limiter) = &limiter {
                    while let Err(not_until) = limiter.check() {
                        std::thread::sleep(not_until.wait_time_from(clock.now()));
                    }
                }
                first_send.get_or_insert_with(Instant::now);
                let group = (!opts.all_groups)
                    .then_some(l.context.group.as_deref())
                    .flatten();
                send(p, &l, &target, &id, group)?;
                report.sent += 1;
                *report.by_target.entry(target.clone()).or_default() += 1;
            }
            on_letter(&l, &target);
        }
        done.insert(l.dlq_partition, l.dlq_offset + 1);
        if let Some(p) = &producer
            && last_checkpoint.elapsed() >= CHECKPOINT
        {
            checkpoint(p, &done)?;
            last_checkpoint = Instant::now();
        }
        Ok::<(), DlqError>(())
    })?;
    if let Some(p) = &producer {
        // Everything the reader went through is covered now: up to the end offsets it
        // read to, which are later than `ends` when letters arrived in between. Never
        // lower than a letter already sent, so a position only moves forward.
        for (part, end) in &read_to {
            if *end > start.get(part).copied().unwrap_or(0) {
                let covered = done.entry(*part).or_insert(*end);
                *covered = (*covered).max(*end);
            }
        }
        checkpoint(p, &done)?;
    }
    report.send_seconds = first_send.map_or(0.0, |t| t.elapsed().as_secs_f64());
    Ok(report)
}

fn send(
    producer: &EventProducer<Deliveries>,
    l: &StoredLetter,
    target: &str,
    id: &str,
    group: Option<&str>,
) -> Result<(), DlqError> {
    let headers = replayed_headers(&l.headers, l.context.replay_count, id, group);
    let owned = headers.to_kafka();
    let mut record = BaseRecord::to(target).payload(&l.value[..]).headers(owned);
    if let Some(k) = l.key.as_deref() {
        record = record.key(k);
    }
    eventbus_runtime::kafka::send_waiting(producer, record)
        .map_err(|(e, _)| DlqError::kafka(format!("sending to {target}"), e))
}
