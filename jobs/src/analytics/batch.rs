//! Batch mode (`--until-caught-up`): where the input ends, closing it, and knowing when
//! the partials partitions other members hold are done.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use eventbus_operators::windowed::Windowed;
use eventbus_runtime::{KafkaProperties, TopicPartition};
use rdkafka::consumer::BaseConsumer;

use super::cluster_client;
use super::partial::PartialWriter;

/// Batch mode, first stage: waits until every input partition is read to its end offset
/// at start (by this process, or committed there by the group), closes every window,
/// and publishes the end of time for every input partition.
pub(super) async fn finish_input<T, K, A, S>(
    windowed: &Windowed<T, K, A, S>,
    writer: &PartialWriter,
    topic: &str,
    ends: BTreeMap<i32, (i64, i64)>,
    positions: &[AtomicI64],
    kafka: &KafkaProperties,
    group: &str,
) -> anyhow::Result<()>
where
    T: Send + Sync + 'static,
    K: Clone + Eq + std::hash::Hash + Send + Sync + 'static,
    A: eventbus_operators::window::Aggregate,
    A::Acc: Sync,
    A::Out: Send,
    S: eventbus_runtime::Sink<eventbus_operators::windowed::WindowResult<K, A::Out>>,
{
    let mut pending: Vec<(i32, i64)> = ends
        .iter()
        .filter(|(_, (low, high))| high > low)
        .map(|(p, (_, high))| (*p, *high))
        .collect();
    let group_client = {
        let mut k = kafka.clone();
        k.set("group.id", group.to_owned());
        k.set("enable.auto.commit", "false");
        Arc::new(std::sync::Mutex::new(cluster_client(&k)?))
    };
    let mut commits_read = Instant::now() - Duration::from_secs(10);
    // When each partition was first seen read to its end by this process.
    let mut read_at: HashMap<i32, Instant> = HashMap::new();
    loop {
        // This process's partitions read to their end: their windows close now, so
        // their offsets can be committed to the end, which is what another member in
        // batch mode waits for. A record is counted as read before it is decoded, so
        // a partition is closed once its last record reached the windows, or (the last
        // records being bad, and dead-lettered) a grace period after it was read.
        let added: HashMap<i32, i64> = windowed
            .progress()
            .into_iter()
            .map(|p| (p.partition.partition, p.last_offset))
            .collect();
        let mut done = Vec::new();
        pending.retain(|(p, high)| {
            let read = usize::try_from(*p)
                .ok()
                .and_then(|i| positions.get(i))
                .is_some_and(|o| o.load(Ordering::Relaxed) + 1 >= *high);
            if !read {
                return true;
            }
            let since = *read_at.entry(*p).or_insert_with(Instant::now);
            let reached = added.get(p).is_some_and(|o| o + 1 >= *high);
            if reached || since.elapsed() >= Duration::from_secs(2) {
                done.push(TopicPartition::new(topic, *p));
                return false;
            }
            true
        });
        if !done.is_empty() {
            windowed
                .finish(&done)
                .await
                .map_err(|e| anyhow::anyhow!("closing the last windows: {e}"))?;
        }
        if !pending.is_empty() && commits_read.elapsed() >= Duration::from_secs(1) {
            commits_read = Instant::now();
            let partitions: Vec<TopicPartition> = pending
                .iter()
                .map(|(p, _)| TopicPartition::new(topic, *p))
                .collect();
            let c = group_client.clone();
            let committed = tokio::task::spawn_blocking(move || {
                let c = c.lock().unwrap_or_else(|p| p.into_inner());
                eventbus_runtime::kafka::committed(&*c, &partitions, Duration::from_secs(30))
            })
            .await?;
            match committed {
                Ok(committed) => pending.retain(|(p, high)| {
                    committed
                        .get(&TopicPartition::new(topic, *p))
                        .is_none_or(|c| c < high)
                }),
                Err(e) => tracing::warn!(error = %e, "cannot read committed offsets"),
            }
        }
        if pending.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for p in ends.keys() {
        for outcome in writer.watermark(*p, i64::MAX, false).await {
            match outcome.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => bail!("publishing the end of input of partition {p}: {e}"),
                Err(_) => bail!("publishing the end of input of partition {p}: no delivery report"),
            }
        }
    }
    Ok(())
}

/// Batch mode with several members: whether the partials partitions another member
/// holds are done, read through the final stage's group.
pub(super) struct OthersDone {
    client: Arc<std::sync::Mutex<BaseConsumer>>,
    topic: String,
}

impl OthersDone {
    pub(super) fn new(kafka: &KafkaProperties, group: &str, topic: &str) -> anyhow::Result<Self> {
        let mut props = kafka.clone();
        props.set("group.id", group.to_owned());
        props.set("enable.auto.commit", "false");
        Ok(Self {
            client: Arc::new(std::sync::Mutex::new(cluster_client(&props)?)),
            topic: topic.to_owned(),
        })
    }

    /// Whether the group has committed every one of `partitions` to its end offset.
    pub(super) async fn committed_to_end(&self, partitions: Vec<i32>) -> bool {
        let (client, topic) = (self.client.clone(), self.topic.clone());
        let outcome = tokio::task::spawn_blocking(move || -> anyhow::Result<bool> {
            let client = client.lock().unwrap_or_else(|p| p.into_inner());
            let tps: Vec<TopicPartition> = partitions
                .iter()
                .map(|r| TopicPartition::new(topic.as_str(), *r))
                .collect();
            let committed =
                eventbus_runtime::kafka::committed(&*client, &tps, Duration::from_secs(30))?;
            for tp in &tps {
                let (_, high) = eventbus_runtime::kafka::watermark(
                    &*client,
                    &topic,
                    tp.partition,
                    Duration::from_secs(30),
                )
                .with_context(|| format!("end offset of {tp}"))?;
                if committed.get(tp).is_none_or(|c| *c < high) {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await;
        match outcome {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the final stage's committed offsets");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading committed offsets panicked");
                false
            }
        }
    }
}
