//! The Kafka source: a consumer-group member that feeds the executor partition by
//! partition and commits only what is done.
//!
//! One dedicated thread owns the librdkafka consumer. It reads messages in batches (many
//! per librdkafka call, see `fetch`), hands each partition's records to that partition's
//! task, applies pause and resume from flow control, and commits the done prefix of
//! every partition on an interval. Rebalance
//! callbacks run on the same thread: a revoked partition is drained (bounded by
//! `drain_timeout_ms`) and its offsets committed synchronously before librdkafka hands it
//! to another member.

mod batcher;
mod commit;
mod context;
mod diagnose;
mod fetch;
pub mod headers;
mod offsets;
mod producer;
mod source;

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseProducer, BaseRecord, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

pub use diagnose::{Diagnosing, LastError, Remembers, fetch_metadata};
pub use offsets::{committed, topic_partitions, watermark, watermarks};
pub use producer::EventProducer;
pub use source::KafkaSource;

use crate::record::TopicPartition;

/// The partitions of `list` that carry an absolute offset, with it (committed offsets as
/// librdkafka reports them; entries without one are left out).
pub fn offsets_of(list: &rdkafka::TopicPartitionList) -> Vec<(TopicPartition, i64)> {
    list.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some((TopicPartition::new(e.topic(), e.partition()), o)),
            _ => None,
        })
        .collect()
}

/// How long a producer waits before offering a record again to a full local queue: its
/// sending thread drains the queue as delivery reports come back.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(2);

/// What `BaseProducer::send` returns: on a refusal, the record comes back to its
/// caller with the error.
pub type SendResult<'a, K, P, D> = Result<(), (KafkaError, BaseRecord<'a, K, P, D>)>;

/// Hands `record` to `producer`, waiting on this thread while librdkafka's local queue
/// is full. For command-line tools and blocking threads; on the runtime, use
/// [`send`].
///
/// # Errors
/// librdkafka refused the record for a reason other than a full queue.
#[allow(clippy::result_large_err)]
pub fn send_waiting<'a, C, K, P>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'a, K, P, C::DeliveryOpaque>,
) -> SendResult<'a, K, P, C::DeliveryOpaque>
where
    C: ProducerContext,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(QUEUE_FULL_BACKOFF);
            }
            other => return other,
        }
    }
}

/// Hands `record` to `producer`; while librdkafka's local queue is full, waits on a
/// timer, so the runtime's worker runs other tasks meanwhile. A full queue is the
/// producer's backpressure: the caller (a sink's `send`) waits, and so does its
/// partition.
///
/// # Errors
/// librdkafka refused the record for a reason other than a full queue.
#[allow(clippy::result_large_err)]
pub async fn send<'a, C, K, P>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'a, K, P, C::DeliveryOpaque>,
) -> SendResult<'a, K, P, C::DeliveryOpaque>
where
    C: ProducerContext,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
            }
            other => return other,
        }
    }
}
