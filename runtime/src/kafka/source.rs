//! The consumer thread: start-up checks, the poll loop, commits and shutdown.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::TopicPartitionList;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use tokio::runtime::Handle;

use super::batcher::Batcher;
use super::context::{SourceContext, commit};
use super::fetch::Fetch;
use crate::config::{KafkaProperties, SourceConfig, config_error};
use crate::error::{Classify, ErrorClass, RuntimeError};
use crate::executor::Dispatch;
use crate::record::TopicPartition;
use crate::source::Source;

/// Most messages taken from librdkafka in one batch before they are handed on. Large
/// batches mean fewer task wake-ups; the batch is also capped at the per-partition
/// in-flight bound, since flow control only acts between batches.
const MAX_BATCH: usize = 16384;
/// How often metrics and health are refreshed.
const TICK: Duration = Duration::from_secs(1);

/// How long one poll waits for a first message; bounds how late a stop is noticed.
const POLL_WAIT: Duration = Duration::from_millis(100);

/// How long, in all, a partition over its bound is given to drain before it is paused.
const GRACE_STEP: Duration = Duration::from_micros(500);
const GRACE_STEPS: u32 = 10;

/// How long one poll waits while flow control holds a partition paused: its resume is
/// decided between polls, and a paused partition's drained records are refetched only
/// after it, so a long wait stalls the partition (by 100 ms per pause on tansu).
const PAUSED_WAIT: Duration = Duration::from_millis(2);

/// Reads a consumer group's topics with at-least-once semantics.
///
/// Guarantees: `enable.auto.commit` and `enable.auto.offset.store` are off; the only
/// offsets committed are those the executor reports done; a revoked partition is drained
/// and committed before release; at shutdown everything done is committed.
#[derive(Debug, Clone)]
pub struct KafkaSource {
    properties: KafkaProperties,
    config: SourceConfig,
}

impl KafkaSource {
    /// A source over `config.topics` in group `config.group_id`. `properties` go to
    /// librdkafka as given; they must include `bootstrap.servers`.
    pub fn new(properties: KafkaProperties, config: SourceConfig) -> Self {
        Self { properties, config }
    }

    fn client_config(&self, job: &str) -> Result<ClientConfig, RuntimeError> {
        for key in ["enable.auto.commit", "enable.auto.offset.store"] {
            if self.properties.get(key).is_some_and(|v| v != "false") {
                return Err(config_error(
                    &format!("kafka.{key}"),
                    "eventbus commits only records that are done; this must stay false",
                ));
            }
        }
        if self.properties.get("group.id").is_some() {
            return Err(config_error(
                "kafka.group.id",
                "set the group with source.group_id (or --group) instead",
            ));
        }
        self.properties.require_brokers()?;
        let mut props = self.properties.clone();
        props
            .set_default("partition.assignment.strategy", "cooperative-sticky")
            .set_default("auto.offset.reset", "earliest")
            .set_default("enable.partition.eof", "false")
            // When the local queue is full librdkafka stops fetching for this long; its
            // default (1 s) turns every brief lag of the executor into a one-second
            // stall of every partition. 10 ms keeps the pipeline full.
            .set_default("fetch.queue.backoff.ms", "10")
            // librdkafka's statistics carry each partition's high watermark and
            // committed offset: the consumer lag metric, without a request of our own.
            .set_default("statistics.interval.ms", "5000")
            .set_default("client.id", format!("eventbus-{job}"))
            .set("group.id", self.config.group_id.clone())
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Job files have theirs read already; a job built in code may still name
            // secret files.
            .read_secret_files()?;
        let mut cfg = ClientConfig::new();
        for (k, v) in props.consumer_properties() {
            cfg.set(k, v);
        }
        Ok(cfg)
    }

    fn brokers(&self) -> String {
        self.properties.brokers().unwrap_or_default().to_owned()
    }
}

impl Source for KafkaSource {
    type Item = Bytes;

    async fn run(self, dispatch: Dispatch<Bytes>) -> Result<(), RuntimeError> {
        self.config.validate()?;
        dispatch.consumer_group(&self.config.group_id);
        let runtime = Handle::current();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("eventbus-consumer-{}", dispatch.job_name()))
            .spawn(move || {
                let _ = tx.send(consume(&self, dispatch, runtime));
            })
            .map_err(|e| RuntimeError::Source {
                reason: format!("cannot start the consumer thread: {e}"),
            })?;
        rx.await.unwrap_or_else(|_| {
            Err(RuntimeError::Source {
                reason: "the consumer thread panicked".to_owned(),
            })
        })
    }
}

/// The body of the consumer thread.
fn consume(
    src: &KafkaSource,
    dispatch: Dispatch<Bytes>,
    runtime: Handle,
) -> Result<(), RuntimeError> {
    let cfg = src.client_config(dispatch.job_name())?;
    let context = SourceContext::new(dispatch.clone(), runtime.clone());
    let consumer: BaseConsumer<SourceContext> =
        cfg.create_with_context(context).map_err(|e| match e {
            KafkaError::ClientCreation(reason) => config_error("kafka", reason),
            other => RuntimeError::Kafka {
                operation: "consumer creation",
                source: other,
            },
        })?;
    preflight(src, &consumer)?;
    let topics: Vec<&str> = src.config.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|source| RuntimeError::Kafka {
            operation: "subscribe",
            source,
        })?;
    tracing::info!(
        job = dispatch.job_name(),
        group = %src.config.group_id,
        topics = %src.config.topics.join(","),
        "subscribed"
    );

    let interval = Duration::from_millis(src.config.commit_interval_ms);
    let mut next_commit = Instant::now() + interval;
    let mut next_tick = Instant::now() + TICK;
    let mut last_commit: Vec<(TopicPartition, i64)> = Vec::new();
    let mut batcher = Batcher::default();
    let topics = &src.config.topics;
    let only_topic = topics
        .first()
        .filter(|first| topics.iter().all(|t| t == *first))
        .map(String::as_str);
    let batch_limit = BatchLimit {
        records: MAX_BATCH.min((dispatch.config().max_in_flight_per_partition / 4).max(64)),
        bytes: dispatch.config().max_in_flight_bytes_per_partition,
    };
    let mut fetch = Fetch::new(&consumer).map_err(|e| RuntimeError::Source {
        reason: format!("cannot set up the consumer's message queue: {e}"),
    })?;
    let assignment = &consumer.context().assignment;
    let mut forwarded = (u64::MAX, Instant::now());
    let mut outcome = Ok(());
    while !dispatch.is_stopping() {
        // A partition over its bound is mostly one whose task has not yet taken the
        // batches just handed to it: a broker often returns a run of one partition's
        // records, read in a few batches within a millisecond. A pause makes librdkafka
        // drop the partition's prefetched messages and fetch them again, so the tasks
        // get a few milliseconds first; a partition still over its bound then pauses.
        for _ in 0..GRACE_STEPS {
            if !dispatch.over_bound() {
                break;
            }
            std::thread::sleep(GRACE_STEP);
        }
        apply_flow(&consumer, &dispatch);
        let wait = if dispatch.any_paused() {
            PAUSED_WAIT
        } else {
            POLL_WAIT
        };
        let polled = poll_batch(
            &consumer,
            &mut fetch,
            &mut batcher,
            only_topic,
            batch_limit,
            wait,
        );
        if let Err(e) = polled {
            outcome = Err(e);
            break;
        }
        batcher.deliver(assignment, |tp, records, bytes| {
            dispatch.deliver_sized(tp, records, bytes);
        });
        // After any assign or revoke, and every second (see `fetch` on why), every owned
        // partition's messages go to the batch queue.
        if assignment.changes() != forwarded.0 || Instant::now() >= forwarded.1 {
            forwarded = (assignment.changes(), Instant::now() + TICK);
            fetch.forward(&assignment.partitions());
        }
        if Instant::now() >= next_commit {
            let mut points = dispatch.commit_points();
            points.sort();
            // Synchronous: one round trip per interval buys a definite answer, so the
            // committed offsets we report are the ones the coordinator holds.
            if points != last_commit && commit(&consumer, &dispatch, &points) {
                last_commit = points;
            }
            next_commit = Instant::now() + interval;
        }
        if Instant::now() >= next_tick {
            dispatch.emit_metrics();
            dispatch.refresh_health();
            next_tick = Instant::now() + TICK;
        }
    }

    // What is left in the batch queue was never registered: the next owner reads it.
    drop(fetch);
    let all = dispatch.partitions();
    tracing::info!(
        job = dispatch.job_name(),
        partitions = all.len(),
        in_flight = dispatch.held(),
        "stopping: draining partitions and committing"
    );
    let finals = runtime.block_on(dispatch.revoke(&all));
    commit(&consumer, &dispatch, &finals);
    // Leaving the group triggers the revoke callback, which finds nothing left to drain.
    leave(consumer);
    outcome
}

/// How long leaving the group may take at shutdown.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Drops the consumer, which leaves the group, waiting at most [`LEAVE_TIMEOUT`].
/// rdkafka's drop closes the consumer and waits for as long as that takes, which is
/// forever when the group coordinator is unreachable: then the drop is left running on a
/// thread of its own, and the job ends without it. The group hands this member's
/// partitions on when its session times out.
fn leave(consumer: BaseConsumer<SourceContext>) {
    let (done, left) = std::sync::mpsc::channel();
    let dropping = std::thread::Builder::new()
        .name("eventbus-leave".into())
        .spawn(move || {
            drop(consumer);
            let _ = done.send(());
        });
    if let Err(e) = dropping {
        tracing::warn!(error = %e, "cannot start a thread to leave the consumer group");
        return;
    }
    if left.recv_timeout(LEAVE_TIMEOUT).is_err() {
        tracing::warn!(
            timeout_s = LEAVE_TIMEOUT.as_secs(),
            "could not leave the consumer group in time (is the group coordinator \
             reachable?); exiting without: the group reassigns this member's partitions \
             when its session times out"
        );
    }
}

/// Checks, within the start-up timeout, that the brokers answer and every subscribed
/// topic exists: both are errors an operator must see at once, not a silent idle job.
fn preflight(
    src: &KafkaSource,
    consumer: &BaseConsumer<SourceContext>,
) -> Result<(), RuntimeError> {
    let timeout = Duration::from_millis(src.config.startup_timeout_ms);
    let metadata = super::fetch_metadata(consumer, None, timeout).map_err(|reason| {
        RuntimeError::BrokersUnreachable {
            brokers: src.brokers(),
            timeout_ms: src.config.startup_timeout_ms,
            reason,
        }
    })?;
    for topic in &src.config.topics {
        super::topic_partitions(&metadata, topic, &src.brokers())?;
    }
    Ok(())
}

fn apply_flow(consumer: &BaseConsumer<SourceContext>, dispatch: &Dispatch<Bytes>) {
    let flow = dispatch.flow();
    for (list, pause) in [(&flow.pause, true), (&flow.resume, false)] {
        if list.is_empty() {
            continue;
        }
        let mut tpl = TopicPartitionList::with_capacity(list.len());
        for tp in list {
            tpl.add_partition(&tp.topic, tp.partition);
        }
        let result = if pause {
            consumer.pause(&tpl)
        } else {
            consumer.resume(&tpl)
        };
        match result {
            Ok(()) => tracing::debug!(partitions = list.len(), pause, "flow control"),
            Err(e) => tracing::warn!(error = %e, pause, "pause/resume failed"),
        }
    }
}

/// How much one poll batch takes at most. Flow control acts between batches, so a batch
/// is capped by the per-partition bounds: in-flight records and bytes overshoot their
/// bound by one batch at most. The record cap is a quarter of the bound, so that one
/// batch alone never pauses its partition: a pause and resume makes librdkafka drop the
/// partition's prefetched messages and fetch them again, which cost the tansu benchmark
/// a quarter of its throughput and twice the CPU when every batch did it.
#[derive(Debug, Clone, Copy)]
struct BatchLimit {
    records: usize,
    bytes: usize,
}

/// Polls one batch: waits up to `wait` for a first message, then takes what is
/// already fetched, up to `limit`. The consumer queue (events, and messages of
/// partitions not forwarded yet) is served first, at least once per batch, since
/// librdkafka counts its polls toward `max.poll.interval.ms`; the batch queue is read
/// only once the consumer queue is empty, so each partition's messages keep their order
/// (see [`super::fetch`]).
fn poll_batch(
    consumer: &BaseConsumer<SourceContext>,
    fetch: &mut Fetch<'_>,
    batcher: &mut Batcher,
    only_topic: Option<&str>,
    limit: BatchLimit,
    wait: Duration,
) -> Result<(), RuntimeError> {
    let assignment = &consumer.context().assignment;
    let full =
        |batcher: &Batcher, taken: usize| taken >= limit.records || batcher.bytes >= limit.bytes;
    let mut taken = 0;
    let mut waited = false;
    loop {
        loop {
            if full(batcher, taken) {
                return Ok(());
            }
            match consumer.poll(Duration::ZERO) {
                Some(Ok(m)) => {
                    batcher.push(&m, only_topic, assignment);
                    taken += 1;
                }
                Some(Err(e)) => consumer_error(e)?,
                None => {}
            }
            if !fetch.consumer_queue_waiting() {
                break;
            }
        }
        let mut errors = Vec::new();
        while !full(batcher, taken) {
            // Read in steps that cannot overshoot the byte bound by much: as many
            // messages as the batch's average size so far leaves room for.
            let room = limit.records - taken;
            let step = match (batcher.bytes, taken) {
                (0, _) | (_, 0) => room.min(16),
                (bytes, n) => room.min((limit.bytes - bytes) / (bytes / n).max(1)).max(1),
            };
            let read = fetch.take(step, |m| match m.error() {
                Some(code) => errors.push(code),
                None => batcher.push(m, only_topic, assignment),
            });
            taken += read;
            if read < step {
                break;
            }
        }
        for code in errors {
            consumer_error(KafkaError::MessageConsumption(code))?;
        }
        if taken > 0 || waited {
            return Ok(());
        }
        fetch.wait(wait);
        waited = true;
    }
}

/// Decides whether a consumer error stops the job: a Fatal one does. Connection
/// trouble does not: librdkafka reconnects by itself and the job resumes where it was.
fn consumer_error(e: KafkaError) -> Result<(), RuntimeError> {
    if e.class() == ErrorClass::Fatal {
        return Err(RuntimeError::Kafka {
            operation: "consume",
            source: e,
        });
    }
    tracing::warn!(error = %e, "consumer error; librdkafka retries");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_consumer_reads_secrets_named_by_file_settings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("password");
        std::fs::write(&path, "from-a-file\n").expect("write");
        let mut props = KafkaProperties::new();
        props
            .set("bootstrap.servers", "127.0.0.1:9092")
            .set("sasl.password_file", path.display().to_string());
        let source = KafkaSource::new(props, SourceConfig::new("g", ["t"]));
        let cfg = source.client_config("job").expect("config");
        assert_eq!(cfg.get("sasl.password"), Some("from-a-file"));
        assert_eq!(cfg.get("sasl.password_file"), None);
    }
}
