//! Settings of the Kafka sink.

/// How the Kafka sink picks each record's output partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Partitioning {
    /// By key, with the producer's partitioner (Kafka's default behaviour).
    #[default]
    Key,
    /// The partition number the record came from: keeps each input partition's order
    /// whole in one output partition. The output topic needs at least as many
    /// partitions as the input.
    Source,
}

/// Settings of a [`super::KafkaSink`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSinkConfig {
    /// The output topic.
    pub topic: String,
    /// How the output partition is chosen. Default [`Partitioning::Key`].
    pub partitioning: Partitioning,
    /// How long a flush (on revoke and at shutdown) may wait for delivery reports.
    /// Default 30000 ms.
    pub flush_timeout_ms: u64,
}

impl KafkaSinkConfig {
    /// Produce to `topic`, partitioned by key.
    pub fn new(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            partitioning: Partitioning::Key,
            flush_timeout_ms: 30_000,
        }
    }

    /// Sets the partitioning.
    pub fn partitioning(mut self, partitioning: Partitioning) -> Self {
        self.partitioning = partitioning;
        self
    }
}
