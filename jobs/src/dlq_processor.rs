//! The `dlq-processor` job: reads DLQ topics, puts each letter in a category, counts
//! letters per topic and category, replays the categories marked automatic after a
//! cool-off under a rate limit, and parks letters that were replayed too often.
//!
//! ```toml
//! [source]
//! group_id = "dlq-processor"
//! topics = ["vehicle.state.v1.dlq", "fleet.operations.v1.dlq"]
//!
//! [dlq_processor]
//! automatic = ["downstream_unavailable", "timeout"]   # default
//! cool_off_ms = 60000        # wait this long after a letter's first failure (default)
//! rate_per_sec = 100         # replays per second, all partitions together (default)
//! max_replays = 3            # a letter replayed this often goes to <dlq>.parked (default)
//!
//! [[dlq_processor.rules]]    # tried before the built-in categories
//! category = "fleet_rejected"
//! stage = "sink"
//! message = "fleet .* not accepted"
//! ```
//!
//! A letter is done (its DLQ offset committed) when it was counted and, for automatic
//! categories, when its replay or its parked copy was acknowledged by the broker. Letters
//! of other categories stay in the DLQ for an operator (`eventbus dlq`). Nothing loops
//! forever: every replay increments `eventbus.replay.count`, which travels with the record
//! into any later letter, and a letter at `max_replays` is parked instead.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use eventbus_dlq::LetterContext;
use eventbus_dlq::classify::{Classifier, Rule};
use eventbus_dlq::replay::replayed_headers;
use eventbus_runtime::kafka::EventProducer;
use eventbus_runtime::{
    Ack, ErrorClass, Job, KafkaProperties, KafkaSource, Record, RunnableJob, RuntimeError, Sink,
    SinkError, TopicPartition,
};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rdkafka::ClientContext;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext};
use serde::Deserialize;

use crate::config::JobFile;

/// The `[dlq_processor]` section.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    /// Category rules, tried in order before the built-in categories.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Categories replayed automatically.
    #[serde(default = "default_automatic")]
    pub automatic: Vec<String>,
    /// Replay a letter no sooner than this long after its first failure.
    #[serde(default = "default_cool_off")]
    pub cool_off_ms: u64,
    /// Replays per second, all partitions together.
    #[serde(default = "default_rate")]
    pub rate_per_sec: u32,
    /// A letter already replayed this many times is parked instead.
    #[serde(default = "default_max_replays")]
    pub max_replays: u32,
    /// How often the counts are logged.
    #[serde(default = "default_report")]
    pub report_interval_ms: u64,
}

fn default_automatic() -> Vec<String> {
    vec!["downstream_unavailable".to_owned(), "timeout".to_owned()]
}
fn default_cool_off() -> u64 {
    60_000
}
fn default_rate() -> u32 {
    100
}
fn default_max_replays() -> u32 {
    3
}
fn default_report() -> u64 {
    30_000
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            automatic: default_automatic(),
            cool_off_ms: default_cool_off(),
            rate_per_sec: default_rate(),
            max_replays: default_max_replays(),
            report_interval_ms: default_report(),
        }
    }
}

/// What happened to letters, per (original topic, category).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Letters seen.
    pub letters: u64,
    /// Letters replayed to their original topic.
    pub replayed: u64,
    /// Letters parked.
    pub parked: u64,
}

/// Live counts of a running processor.
pub type CountTable = Arc<Mutex<BTreeMap<(String, String), Counts>>>;

/// The sink that classifies, counts, replays and parks.
#[derive(Clone)]
pub struct ProcessorSink {
    config: Arc<ProcessorConfig>,
    classifier: Arc<Classifier>,
    producer: Arc<EventProducer<Deliveries>>,
    limiter: Arc<DefaultDirectRateLimiter>,
    counts: CountTable,
    replay_id: String,
    /// Per DLQ partition, the timers of letters waiting for their cool-off.
    waiting: Arc<Mutex<HashMap<TopicPartition, Vec<tokio::task::AbortHandle>>>>,
}

impl std::fmt::Debug for ProcessorSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessorSink")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ProcessorSink {
    /// A sink producing with these properties.
    ///
    /// # Errors
    /// A rule does not compile, the rate is 0, or the producer cannot be created.
    pub fn new(
        kafka: &KafkaProperties,
        config: ProcessorConfig,
        replay_id: String,
    ) -> Result<Self, RuntimeError> {
        let classifier = Classifier::new(config.rules.clone())
            .map_err(|e| RuntimeError::config("dlq_processor.rules", e))?;
        let rate = NonZeroU32::new(config.rate_per_sec).ok_or_else(|| {
            RuntimeError::config("dlq_processor.rate_per_sec", "must be at least 1")
        })?;
        let producer = kafka
            .durable_producer("the DLQ processor")?
            .create_with_context(Deliveries)
            .map_err(|e| RuntimeError::config("kafka", e.to_string()))?;
        Ok(Self {
            config: Arc::new(config),
            classifier: Arc::new(classifier),
            producer: Arc::new(producer),
            limiter: Arc::new(RateLimiter::direct(
                Quota::per_second(rate).allow_burst(NonZeroU32::MIN),
            )),
            counts: CountTable::default(),
            replay_id,
            waiting: Arc::default(),
        })
    }

    /// The live counts.
    pub fn counts(&self) -> CountTable {
        self.counts.clone()
    }

    fn count(&self, topic: &str, category: &str, f: impl FnOnce(&mut Counts)) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let c = counts
            .entry((topic.to_owned(), category.to_owned()))
            .or_default();
        let before = *c;
        f(c);
        for (name, was, now) in [
            ("eventbus_dlq_letters_total", before.letters, c.letters),
            ("eventbus_dlq_replayed_total", before.replayed, c.replayed),
            ("eventbus_dlq_parked_total", before.parked, c.parked),
        ] {
            if now > was {
                metrics::counter!(name, "topic" => topic.to_owned(), "category" => category.to_owned())
                    .increment(now - was);
            }
        }
    }

    async fn produce(
        &self,
        topic: &str,
        record: &Record<Bytes>,
        headers: &eventbus_runtime::Headers,
        ack: Ack,
    ) {
        let owned = headers.to_kafka();
        let mut out = BaseRecord::with_opaque_to(topic, Box::new(ack))
            .payload(&record.value[..])
            .headers(owned);
        if let Some(k) = record.key.as_deref() {
            out = out.key(k);
        }
        // Waits while librdkafka's queue is full, which holds back this partition: what a
        // full queue asks for.
        if let Err((e, back)) = eventbus_runtime::kafka::send(&self.producer, out).await {
            let ack = back.delivery_opaque;
            let origin = ack.origin();
            ack.fail(SinkError::Delivery {
                sink: "dlq-processor",
                origin,
                reason: format!("cannot produce to {topic}: {e}"),
                class: ErrorClass::Fatal,
            });
        }
    }
}

impl Sink<Bytes> for ProcessorSink {
    async fn send(&self, record: Record<Bytes>, ack: Ack) -> Result<(), SinkError> {
        let context = LetterContext::from_headers(&record.headers);
        let category = self.classifier.classify(&context);
        let topic = context
            .topic
            .clone()
            .unwrap_or_else(|| record.topic.trim_end_matches(".dlq").to_owned());
        self.count(&topic, &category, |c| c.letters += 1);
        if !self.config.automatic.contains(&category) {
            ack.done();
            return Ok(());
        }
        let without_value = record
            .headers
            .get(eventbus_dlq::envelope::VALUE_OMITTED)
            .is_some();
        if context.replay_count >= self.config.max_replays || without_value {
            let parked = format!("{}.parked", record.topic);
            tracing::warn!(
                origin = %record.origin(), replays = context.replay_count, %parked,
                without_value,
                "letter replayed too often, or written without its value; parking it"
            );
            self.count(&topic, &category, |c| c.parked += 1);
            self.produce(&parked, &record, &record.headers, ack).await;
            return Ok(());
        }
        // Cool-off: counted from the first failure. A first failure in the future (a
        // skewed clock, or garbage) counts as now: it must not hold the DLQ partition
        // for longer than one cool-off.
        let now = eventbus_runtime::dead_letter::now_ms();
        let due = context
            .first_failure_ms
            .unwrap_or(0)
            .min(now)
            .saturating_add(i64::try_from(self.config.cool_off_ms).unwrap_or(i64::MAX));
        let wait = Duration::from_millis(u64::try_from(due.saturating_sub(now)).unwrap_or(0));
        if wait.is_zero() {
            self.replay(topic, category, record, &context, ack).await;
            return Ok(());
        }
        // Not due yet: a timer replays it when it is, and `send` returns. The letter
        // stays in flight meanwhile, so the runtime's bounds pause the DLQ partition once
        // enough letters wait, and a revoke or shutdown is never held up by a sleep.
        let tp = record.topic_partition();
        let sink = self.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            sink.replay(topic, category, record, &context, ack).await;
        });
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let timers = waiting.entry(tp).or_default();
        timers.retain(|t| !t.is_finished());
        timers.push(timer.abort_handle());
        Ok(())
    }

    /// Revoked partitions' waiting letters are dropped unreplayed: they were never done,
    /// so their offsets are not committed, and the partitions' next owner replays them.
    async fn partitions_revoked(&self, partitions: &[TopicPartition]) -> Result<(), SinkError> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        for tp in partitions {
            for timer in waiting.remove(tp).unwrap_or_default() {
                timer.abort();
            }
        }
        Ok(())
    }
}

impl ProcessorSink {
    /// Replays a letter to its original topic, under the rate limit.
    async fn replay(
        &self,
        topic: String,
        category: String,
        record: Record<Bytes>,
        context: &LetterContext,
        ack: Ack,
    ) {
        let clock = DefaultClock::default();
        while let Err(not_until) = self.limiter.check() {
            tokio::time::sleep(not_until.wait_time_from(clock.now())).await;
        }
        // For the failing group only: other groups reading the topic take it as done.
        let headers = replayed_headers(
            &record.headers,
            context.replay_count,
            &self.replay_id,
            context.group.as_deref(),
        );
        self.count(&topic, &category, |c| c.replayed += 1);
        self.produce(&topic, &record, &headers, ack).await;
    }
}

/// Resolves each replayed or parked letter's ack from its delivery report.
pub struct Deliveries;

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = Box<Ack>;
    fn delivery(&self, result: &DeliveryResult<'_>, ack: Box<Ack>) {
        match result {
            Ok(_) => ack.done(),
            Err((e, m)) => {
                use rdkafka::Message as _;
                let origin = ack.origin();
                ack.fail(SinkError::Delivery {
                    sink: "dlq-processor",
                    origin,
                    reason: format!("topic {} partition {}: {e}", m.topic(), m.partition()),
                    class: ErrorClass::Fatal,
                });
            }
        }
    }
}

/// The processor job and its live counts.
pub struct Processor {
    /// The job.
    pub job: RunnableJob<KafkaSource, eventbus_runtime::operator::Identity, ProcessorSink>,
    /// Its counts.
    pub counts: CountTable,
}

/// Builds the processor from a job file.
///
/// # Errors
/// A missing `[source]`, or a setting out of range (named).
pub fn job(file: &JobFile) -> anyhow::Result<Processor> {
    let source = file.source()?;
    let config = file.dlq_processor.clone().unwrap_or_default();
    let sink = ProcessorSink::new(&file.kafka, config, format!("auto-{}", source.group_id))?;
    let counts = sink.counts();
    let job = Job::builder("dlq-processor")
        .config(file.runtime.clone())
        .source(KafkaSource::new(file.kafka.clone(), source))
        .sink(sink)
        .build()?;
    Ok(Processor { job, counts })
}

/// The counts as a table.
pub fn render(counts: &BTreeMap<(String, String), Counts>) -> String {
    let mut out = format!(
        "{:<32} {:<24} {:>9} {:>9} {:>9}\n",
        "topic", "category", "letters", "replayed", "parked"
    );
    for ((topic, category), c) in counts {
        out.push_str(&format!(
            "{topic:<32} {category:<24} {:>9} {:>9} {:>9}\n",
            c.letters, c.replayed, c.parked
        ));
    }
    out
}

/// The processor's consumer group when the job file has no `[source]`.
pub const DEFAULT_GROUP: &str = "eventbus-dlq-processor";

/// `eventbus run dlq-processor`: the job from `file` (without a `[source]`, the DLQ
/// topics of every catalog topic in [`DEFAULT_GROUP`]) until a signal; logs the counts
/// on the report interval and prints them at the end.
///
/// # Errors
/// The job cannot start, or stops with an error.
pub async fn command(
    mut file: JobFile,
    overrides: &crate::config::Overrides,
    args: crate::cli::RunArgs,
) -> anyhow::Result<()> {
    if file.source.is_none() {
        let topics = if args.topics.is_empty() {
            let catalog = crate::load_catalog(None)?;
            catalog.topics.iter().map(|t| t.dlq_topic()).collect()
        } else {
            args.topics.clone()
        };
        file.source = Some(eventbus_runtime::SourceConfig::new(DEFAULT_GROUP, topics));
        file.apply(std::env::vars(), overrides);
    } else if let Some(src) = &mut file.source {
        if !args.topics.is_empty() {
            src.topics = args.topics.clone();
        } else if src.topics.is_empty() {
            // A [source] that names a group but no topics: every catalog topic's DLQ.
            let catalog = crate::load_catalog(None)?;
            src.topics = catalog.topics.iter().map(|t| t.dlq_topic()).collect();
        }
    }
    let processor = job(&file)?;
    let counts = processor.counts.clone();
    let interval = file
        .dlq_processor
        .as_ref()
        .map_or(default_report(), |p| p.report_interval_ms);
    let reporter = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(interval)).await;
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
    print!("{}", render(&table));
    result.map_err(|e| anyhow::Error::new(e).context("dlq-processor job stopped"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A producer whose queue holds one record and whose broker never answers: the
    /// second letter waits for room. That wait must leave the runtime's thread free.
    #[tokio::test(flavor = "current_thread")]
    async fn a_full_producer_queue_does_not_block_the_runtime() {
        let mut kafka = KafkaProperties::new();
        kafka
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("queue.buffering.max.messages", "1")
            .set("message.timeout.ms", "1500");
        let config = ProcessorConfig {
            cool_off_ms: 0,
            ..ProcessorConfig::default()
        };
        let sink = ProcessorSink::new(&kafka, config, "test".to_owned()).expect("sink");
        let letter = |offset| {
            let mut r = Record::new("t.dlq", 0, offset, Bytes::from_static(b"v"));
            r.headers
                .push(eventbus_dlq::envelope::CLASS, Some("transient"));
            r
        };
        let (first, _first_outcome) = Ack::channel(letter(0).origin());
        sink.send(letter(0), first).await.expect("send");
        let timer = tokio::spawn(async {
            let start = std::time::Instant::now();
            tokio::time::sleep(Duration::from_millis(50)).await;
            start.elapsed()
        });
        let (second, _second_outcome) = Ack::channel(letter(1).origin());
        sink.send(letter(1), second).await.expect("send");
        let fired_after = timer.await.expect("timer");
        assert!(
            fired_after < Duration::from_millis(1000),
            "a 50 ms timer fired after {fired_after:?}: the full queue blocked the runtime"
        );
        assert_eq!(sink.counts().lock().expect("counts").len(), 1);
    }

    /// A letter inside its cool-off waits on a timer, not in `send`: `send` returns at
    /// once (paused time would have run a sleep to its end), the letter stays unresolved
    /// through the cool-off, and a revoke drops it unreplayed.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn the_cool_off_is_a_timer_and_send_returns_at_once() {
        let mut kafka = KafkaProperties::new();
        kafka.set("bootstrap.servers", "127.0.0.1:1");
        let config = ProcessorConfig {
            cool_off_ms: 60_000,
            ..ProcessorConfig::default()
        };
        let sink = ProcessorSink::new(&kafka, config, "test".to_owned()).expect("sink");
        let mut letter = Record::new("t.dlq", 0, 0, Bytes::from_static(b"v"));
        letter
            .headers
            .push(eventbus_dlq::envelope::CLASS, Some("transient"));
        letter.headers.push(
            eventbus_dlq::envelope::FIRST_FAILURE,
            Some(Bytes::from(
                eventbus_runtime::dead_letter::now_ms().to_string(),
            )),
        );
        let tp = letter.topic_partition();
        let (ack, mut outcome) = Ack::channel(letter.origin());
        let start = tokio::time::Instant::now();
        sink.send(letter, ack).await.expect("send");
        assert_eq!(start.elapsed(), Duration::ZERO, "send slept");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(outcome.try_recv().is_err(), "resolved inside its cool-off");
        sink.partitions_revoked(std::slice::from_ref(&tp))
            .await
            .expect("revoke");
        tokio::task::yield_now().await;
        assert!(
            matches!(outcome.await, Ok(Err(SinkError::AckDropped { .. }))),
            "a revoke drops the waiting letter"
        );
        let counts = sink.counts();
        let counts = counts.lock().expect("counts");
        assert_eq!(counts.values().map(|c| c.replayed).sum::<u64>(), 0);
    }

    /// A letter whose first failure lies a year ahead waits one cool-off, not a year.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_first_failure_in_the_future_waits_one_cool_off_at_most() {
        let mut kafka = KafkaProperties::new();
        kafka.set("bootstrap.servers", "127.0.0.1:1");
        let config = ProcessorConfig {
            cool_off_ms: 2_000,
            ..ProcessorConfig::default()
        };
        let sink = ProcessorSink::new(&kafka, config, "test".to_owned()).expect("sink");
        let ahead = eventbus_runtime::dead_letter::now_ms() + 365 * 24 * 3_600_000;
        let mut letter = Record::new("t.dlq", 0, 0, Bytes::from_static(b"v"));
        letter
            .headers
            .push(eventbus_dlq::envelope::CLASS, Some("transient"));
        letter.headers.push(
            eventbus_dlq::envelope::FIRST_FAILURE,
            Some(Bytes::from(ahead.to_string())),
        );
        let (ack, _outcome) = Ack::channel(letter.origin());
        let start = tokio::time::Instant::now();
        sink.send(letter, ack).await.expect("send");
        // Replayed (here: its produce fails, the broker being unreachable) within one
        // cool-off, not a year.
        tokio::time::sleep(Duration::from_millis(2_100)).await;
        let counts = sink.counts();
        assert_eq!(
            counts
                .lock()
                .expect("counts")
                .values()
                .map(|c| c.replayed)
                .sum::<u64>(),
            1,
            "replayed after {:?} (paused time)",
            start.elapsed()
        );
    }
}
