//! The Kafka source: a consumer-group member that feeds the executor partition by
//! partition and commits only what is done.
//!
//! One dedicated thread owns the librdkafka consumer. It polls in batches, hands each
//! partition's records to that partition's task, applies pause and resume from flow
//! control, and commits the done prefix of every partition on an interval. Rebalance
//! callbacks run on the same thread: a revoked partition is drained (bounded by
//! `drain_timeout_ms`) and its offsets committed synchronously before librdkafka hands it
//! to another member.

mod context;
mod source;

pub use source::KafkaSource;
