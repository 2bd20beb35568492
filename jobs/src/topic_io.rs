//! Small, honest Kafka helpers shared by the demo, the benchmark and the tests: produce
//! synthetic events, read a topic to its end, read a group's committed offsets, create
//! topics. They use plain librdkafka clients, never the executor they help to check.
//!
//! Each takes a [`Cluster`]: bootstrap servers alone (`"127.0.0.1:9092"`), or the
//! [`KafkaProperties`] of a job file and the environment, security settings included.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use eventbus_runtime::KafkaProperties;
use eventbus_runtime::kafka::EventProducer;
use eventbus_runtime::kafka::{Diagnosing, LastError};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

/// Where the brokers are and how to connect to them.
pub trait Cluster {
    /// Every librdkafka property the clients take, `bootstrap.servers` included.
    fn properties(&self) -> KafkaProperties;

    /// The bootstrap servers, for messages.
    fn brokers(&self) -> String {
        self.properties().brokers().unwrap_or_default().to_owned()
    }
}

impl Cluster for str {
    fn properties(&self) -> KafkaProperties {
        KafkaProperties::with_brokers(self)
    }
}

impl Cluster for String {
    fn properties(&self) -> KafkaProperties {
        KafkaProperties::with_brokers(self)
    }
}

impl Cluster for KafkaProperties {
    fn properties(&self) -> KafkaProperties {
        self.clone()
    }
}

impl<T: Cluster + ?Sized> Cluster for &T {
    fn properties(&self) -> KafkaProperties {
        (**self).properties()
    }
}

/// Counts delivery reports.
#[derive(Default)]
struct Counting {
    ok: AtomicU64,
    failed: AtomicU64,
    per_partition: std::sync::Mutex<BTreeMap<i32, u64>>,
    last: LastError,
}

impl ClientContext for Counting {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.last.record(&error, reason);
    }
}

impl ProducerContext for Counting {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(m) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                let mut map = self.per_partition.lock().unwrap_or_else(|p| p.into_inner());
                *map.entry(m.partition()).or_insert(0) += 1;
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Produces `(key, value)` pairs to `topic` with an idempotent producer, waits for every
/// delivery report, and returns how many were acknowledged. `progress` is called with
/// the number sent so far.
///
/// # Errors
/// The topic does not exist (checked before anything is sent, naming the command that
/// creates it), the producer cannot be created, a record cannot be enqueued, or any
/// delivery failed.
pub fn produce<I>(
    cluster: &(impl Cluster + ?Sized),
    topic: &str,
    records: I,
    progress: impl FnMut(u64),
) -> anyhow::Result<u64>
where
    I: IntoIterator<Item = (String, Vec<u8>)>,
{
    Ok(produce_by_partition(cluster, topic, records, progress)?
        .values()
        .sum())
}

/// As [`produce`], returning how many records each partition acknowledged.
///
/// # Errors
/// As [`produce`].
pub fn produce_by_partition<I>(
    cluster: &(impl Cluster + ?Sized),
    topic: &str,
    records: I,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<BTreeMap<i32, u64>>
where
    I: IntoIterator<Item = (String, Vec<u8>)>,
{
    // Checked first: a producer would otherwise retry an unknown topic for its whole
    // message timeout and then fail with librdkafka's terse "Unknown topic".
    let kafka = cluster.properties();
    let brokers = cluster.brokers();
    if let Err(e) = partitions(&kafka, topic) {
        if let Some(eventbus_runtime::RuntimeError::TopicMissing { .. }) = e.downcast_ref() {
            bail!(
                "topic {topic} does not exist on {brokers}; nothing was produced. Create the \
                 catalog's topics first: eventbus topics apply --brokers {brokers}"
            );
        }
        return Err(e);
    }
    let mut config = kafka.durable_producer("the producer")?;
    for (key, default) in [
        ("linger.ms", "10"),
        ("queue.buffering.max.messages", "200000"),
    ] {
        if kafka.get(key).is_none() {
            config.set(key, default);
        }
    }
    let producer: EventProducer<Counting> = config
        .create_with_context(Counting::default())
        .context("cannot create the producer")?;
    let mut sent = 0u64;
    for (key, value) in records {
        let record = BaseRecord::to(topic)
            .key(key.as_bytes())
            .payload(&value[..]);
        if let Err((e, _)) = eventbus_runtime::kafka::send_waiting(&producer, record) {
            bail!("cannot produce to {topic}: {e}");
        }
        sent += 1;
        if sent.is_multiple_of(1024) {
            progress(sent);
        }
    }
    let ctx = producer.context();
    if let Err(e) = producer.flush(Duration::from_secs(120)) {
        bail!(
            "{}",
            ctx.last
                .explain(format!("flushing {sent} records to {topic}: {e}"))
        );
    }
    progress(sent);
    let failed = ctx.failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!(
            "{}",
            ctx.last.explain(format!(
                "{failed} of {sent} records to {topic} were not delivered"
            ))
        );
    }
    let map = ctx
        .per_partition
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    Ok(map)
}

fn plain_consumer(
    cluster: &(impl Cluster + ?Sized),
    group: &str,
) -> anyhow::Result<BaseConsumer<Diagnosing>> {
    cluster
        .properties()
        .consumer_properties()
        .fold(rdkafka::ClientConfig::new(), |mut cfg, (k, v)| {
            cfg.set(k, v);
            cfg
        })
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create_with_context(Diagnosing::default())
        .context("cannot create a consumer")
}

/// A consumer in no group that only looks at the cluster (metadata, offsets), and says
/// why it cannot reach the brokers.
///
/// # Errors
/// The client cannot be created (a property librdkafka refuses).
pub fn inspector(cluster: &(impl Cluster + ?Sized)) -> anyhow::Result<BaseConsumer<Diagnosing>> {
    plain_consumer(cluster, "eventbus-inspect")
}

/// The partition count of `topic`.
///
/// # Errors
/// The brokers do not answer (the message says why, when librdkafka said: a failed TLS
/// handshake, a refused login) or the topic does not exist.
pub fn partitions(cluster: &(impl Cluster + ?Sized), topic: &str) -> anyhow::Result<i32> {
    let brokers = cluster.brokers();
    let c = plain_consumer(cluster, "eventbus-inspect")?;
    let md = eventbus_runtime::kafka::fetch_metadata(&c, Some(topic), TIMEOUT)
        .map_err(|e| anyhow::anyhow!("metadata of {topic} from {brokers}: {e}"))?;
    Ok(eventbus_runtime::kafka::topic_partitions(&md, topic, &brokers)?.len() as i32)
}

/// The end offset (high watermark) of every partition of `topic`.
///
/// # Errors
/// The brokers do not answer or the topic does not exist.
pub fn end_offsets(
    cluster: &(impl Cluster + ?Sized),
    topic: &str,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let c = plain_consumer(cluster, "eventbus-inspect")?;
    Ok(
        eventbus_runtime::kafka::watermarks(&c, topic, &cluster.brokers(), TIMEOUT)?
            .into_iter()
            .map(|(p, (_, high))| (p, high))
            .collect(),
    )
}

/// Records currently kept in `topic`: the sum over partitions of end minus start offset.
///
/// # Errors
/// The brokers do not answer or the topic does not exist.
pub fn available(cluster: &(impl Cluster + ?Sized), topic: &str) -> anyhow::Result<u64> {
    let c = plain_consumer(cluster, "eventbus-inspect")?;
    let total: i64 = eventbus_runtime::kafka::watermarks(&c, topic, &cluster.brokers(), TIMEOUT)?
        .values()
        .map(|(low, high)| high - low)
        .sum();
    Ok(u64::try_from(total).unwrap_or(0))
}

/// Reads every record of `topic` from the beginning up to the end offsets it has now.
///
/// # Errors
/// The topic cannot be read to its end within `timeout`.
pub fn read_all(
    cluster: &(impl Cluster + ?Sized),
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<OwnedMessage>> {
    let ends = end_offsets(cluster, topic)?;
    let c = plain_consumer(cluster, "eventbus-inspect")?;
    let mut tpl = TopicPartitionList::new();
    let mut open: BTreeMap<i32, i64> = BTreeMap::new();
    for (&p, &end) in &ends {
        if end > 0 {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
            open.insert(p, end);
        }
    }
    let total: i64 = ends.values().sum();
    let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    if open.is_empty() {
        return Ok(out);
    }
    c.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    while !open.is_empty() {
        if Instant::now() > deadline {
            bail!(
                "reading {topic}: {} records read, partitions {:?} not at their end after {timeout:?}",
                out.len(),
                open.keys().collect::<Vec<_>>()
            );
        }
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let (p, o) = (m.partition(), m.offset());
                if open.get(&p).is_some_and(|&end| o + 1 >= end) {
                    open.remove(&p);
                }
                if ends.get(&p).is_some_and(|&end| o < end) {
                    out.push(m.detach());
                }
            }
            Some(Err(e)) => tracing::debug!(error = %e, "read_all"),
            None => {}
        }
    }
    Ok(out)
}

/// The offsets `group` has committed on `topic`, per partition (absent: none committed).
///
/// # Errors
/// The coordinator does not answer.
pub fn committed(
    cluster: &(impl Cluster + ?Sized),
    group: &str,
    topic: &str,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let c = plain_consumer(cluster, group)?;
    let tps: Vec<eventbus_runtime::TopicPartition> = (0..partitions(cluster, topic)?)
        .map(|p| eventbus_runtime::TopicPartition::new(topic, p))
        .collect();
    Ok(eventbus_runtime::kafka::committed(&c, &tps, TIMEOUT)
        .with_context(|| format!("committed offsets of group {group} on {topic}"))?
        .into_iter()
        .map(|(tp, o)| (tp.partition, o))
        .collect())
}

/// Creates topics through the admin API (for brokers that do not auto-create).
///
/// # Errors
/// The admin request fails for a reason other than the topic already existing.
pub async fn create_topics(
    cluster: &(impl Cluster + ?Sized),
    topics: &[(&str, i32)],
) -> anyhow::Result<()> {
    let admin: AdminClient<Diagnosing> = cluster
        .properties()
        .client_config()
        .create_with_context(Diagnosing::default())
        .context("cannot create an admin client")?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, p)| NewTopic::new(name, *p, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(
            new.iter(),
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{}",
                admin
                    .inner()
                    .context()
                    .last
                    .explain(format!("create topics: {e}"))
            )
        })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => bail!("cannot create topic {name}: {code}"),
        }
    }
    Ok(())
}
