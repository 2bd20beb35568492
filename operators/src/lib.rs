//! # eventbus-operators
//!
//! Ready-made parts for eventbus jobs. For now, sinks: [`KafkaSink`] (idempotent
//! producer, `acks=all`, a record is done only when its delivery report says so),
//! [`LogSink`], [`DiscardSink`], and [`ParquetSink`] (wire-format Avro into
//! Hive-partitioned Parquet tables on the local filesystem or S3, each record in exactly
//! one published file; see [`sinks::parquet`]). [`Retry`] wraps a sink
//! with blocking per-partition retries (exponential backoff, full jitter).
//!
//! ```no_run
//! use eventbus_operators::{KafkaSink, KafkaSinkConfig};
//! use eventbus_runtime::{Job, KafkaProperties, KafkaSource, SourceConfig};
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut kafka = KafkaProperties::new();
//! kafka.set("bootstrap.servers", "127.0.0.1:9092");
//! let sink = KafkaSink::new(&kafka, KafkaSinkConfig::new("vehicle.state.copy"))?;
//! Job::builder("copy")
//!     .source(KafkaSource::new(kafka, SourceConfig::new("copy", ["vehicle.state.v1"])))
//!     .sink(sink)
//!     .build()?
//!     .run(eventbus_runtime::shutdown::signals())
//!     .await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod avro_time;
pub mod partitioned;
pub mod retry;
pub mod sessions;
pub mod sinks;
pub mod window;
pub mod windowed;

pub use retry::{Retry, RetryPolicy};
pub use sinks::discard::DiscardSink;
pub use sinks::kafka::{KafkaSink, KafkaSinkConfig, Partitioning};
pub use sinks::log::LogSink;
pub use sinks::parquet::{ParquetSink, ParquetSinkConfig, PartitionEnds, S3Config, SchemaLookup};
