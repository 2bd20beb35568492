//! Where topics end and where groups stand: the one reader of metadata, watermarks and
//! committed offsets for the jobs, the tools and the tests.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::metadata::Metadata;

use crate::error::RuntimeError;
use crate::record::TopicPartition;

/// The partitions of `topic` in `metadata`, in order; `brokers` names the cluster when
/// the topic is missing.
///
/// # Errors
/// [`RuntimeError::TopicMissing`] when the cluster does not have the topic (or has it
/// with an error, or without partitions).
pub fn topic_partitions(
    metadata: &Metadata,
    topic: &str,
    brokers: &str,
) -> Result<Vec<i32>, RuntimeError> {
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| {
            let mut ids: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
            ids.sort_unstable();
            ids
        })
        .ok_or_else(|| RuntimeError::TopicMissing {
            topic: topic.to_owned(),
            brokers: brokers.to_owned(),
        })
}

/// The low and high watermarks (first offset kept, next offset to be written) of every
/// partition of `topic`.
///
/// # Errors
/// [`RuntimeError::TopicMissing`], or [`RuntimeError::Kafka`] when the brokers do not
/// answer within `timeout`.
pub fn watermarks<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    topic: &str,
    brokers: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, (i64, i64)>, RuntimeError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|source| RuntimeError::Kafka {
            operation: "reading topic metadata",
            source,
        })?;
    topic_partitions(&metadata, topic, brokers)?
        .into_iter()
        .map(|p| watermark(consumer, topic, p, timeout).map(|w| (p, w)))
        .collect()
}

/// The low and high watermarks (first offset kept, next offset to be written) of one
/// partition.
///
/// # Errors
/// [`RuntimeError::Kafka`] when the partition's leader does not answer within
/// `timeout`, or the cluster has no such partition.
pub fn watermark<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<(i64, i64), RuntimeError> {
    consumer
        .fetch_watermarks(topic, partition, timeout)
        .map_err(|source| RuntimeError::Kafka {
            operation: "reading partition watermarks",
            source,
        })
}

/// The offsets the consumer's group has committed for `partitions`; a partition without
/// one is left out.
///
/// # Errors
/// [`RuntimeError::Kafka`] when the group coordinator does not answer within `timeout`.
pub fn committed<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    partitions: &[TopicPartition],
    timeout: Duration,
) -> Result<BTreeMap<TopicPartition, i64>, RuntimeError> {
    let mut tpl = TopicPartitionList::with_capacity(partitions.len());
    for tp in partitions {
        tpl.add_partition(&tp.topic, tp.partition);
    }
    let got = consumer
        .committed_offsets(tpl, timeout)
        .map_err(|source| RuntimeError::Kafka {
            operation: "reading committed offsets",
            source,
        })?;
    Ok(super::offsets_of(&got).into_iter().collect())
}
