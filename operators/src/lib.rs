//! # eventbus-operators
//!
//! Ready-made parts for eventbus jobs. For now, sinks: [`KafkaSink`] (idempotent
//! producer, `acks=all`, a record is done only when its delivery report says so),
//! [`LogSink`] and [`DiscardSink`]. Avro decoding, retry, rate limiting and the Parquet
//! and webhook sinks come with their own issues.
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

pub mod sinks;

pub use sinks::discard::DiscardSink;
pub use sinks::kafka::{KafkaSink, KafkaSinkConfig, Partitioning};
pub use sinks::log::LogSink;
