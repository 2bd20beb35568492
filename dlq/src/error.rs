//! The errors of the DLQ tools, each with a class: Transient when running again may
//! succeed (the cluster did not answer in time), Permanent when it will not without a
//! change (a letter with no target, a broker that refuses a record for good).

use eventbus_runtime::{Classify, ErrorClass, RuntimeError};
use rdkafka::error::KafkaError;

/// An error of the DLQ library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DlqError {
    /// A Kafka call failed.
    #[error("{operation}: {source}")]
    Kafka {
        /// What was being done.
        operation: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// The runtime's Kafka toolkit failed (a missing topic, an unreachable cluster).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Reading a topic made no progress.
    #[error("reading {topic}: partitions {partitions:?} made no progress for {seconds} s")]
    Stalled {
        /// The topic.
        topic: String,
        /// The partitions still short of their end.
        partitions: Vec<i32>,
        /// For how long.
        seconds: u64,
    },
    /// A letter names no original topic, and no target was given.
    #[error(
        "the letter at {dlq_topic} partition {partition} offset {offset} names no original topic \
         (no kafka_dlt-original-topic or __connect.errors.topic header); use --to"
    )]
    NoTarget {
        /// The DLQ topic.
        dlq_topic: String,
        /// Its partition.
        partition: i32,
        /// Its offset.
        offset: i64,
    },
    /// The broker refused a record.
    #[error("{what}: the broker refused it ({reason})")]
    Refused {
        /// Which record, or which batch.
        what: String,
        /// What the broker said.
        reason: String,
    },
}

impl DlqError {
    /// A failed Kafka call, saying what was being done.
    pub fn kafka(operation: impl Into<String>, source: KafkaError) -> Self {
        Self::Kafka {
            operation: operation.into(),
            source,
        }
    }
}

impl Classify for DlqError {
    fn class(&self) -> ErrorClass {
        match self {
            Self::Kafka { source, .. } => source.class(),
            Self::Runtime(e) => e.class(),
            Self::Stalled { .. } => ErrorClass::Transient,
            Self::NoTarget { .. } | Self::Refused { .. } => ErrorClass::Permanent,
        }
    }
}
