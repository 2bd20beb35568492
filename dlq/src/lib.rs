//! # eventbus-dlq
//!
//! Dead letters: the [`envelope`] that keeps a failed record's key, value, headers and
//! timestamp with its failure context (in Spring Kafka's, Kafka Connect's and our own
//! header conventions), and [`KafkaDeadLetters`], the queue a job's failed records go to:
//!
//! ```no_run
//! use eventbus_dlq::{DlqConfig, KafkaDeadLetters};
//! use eventbus_runtime::{Job, KafkaProperties, KafkaSource, SourceConfig};
//! use eventbus_runtime::memory::CollectSink;
//! # async fn run() -> Result<(), eventbus_runtime::RuntimeError> {
//! let mut kafka = KafkaProperties::new();
//! kafka.set("bootstrap.servers", "127.0.0.1:9092");
//! let letters = KafkaDeadLetters::new(&kafka, DlqConfig::default())?;
//! Job::builder("lengths")
//!     .source(KafkaSource::new(kafka, SourceConfig::new("lengths", ["vehicle.state.v1"])))
//!     .dead_letters(letters) // failures go to vehicle.state.v1.dlq
//!     .map(|bytes: bytes::Bytes| bytes.len())
//!     .sink(CollectSink::new())
//!     .build()?
//!     .run(eventbus_runtime::shutdown::signals())
//!     .await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod classify;
pub mod envelope;
mod error;
pub mod pii;
pub mod replay;
pub mod store;
pub mod transfer;
mod writer;

pub use classify::{Classifier, Rule};
pub use envelope::{LetterContext, letter_record};
pub use error::DlqError;
pub use replay::{ProcessorReplays, ReplayOptions, ReplayReport, replay};
pub use store::{LetterFilter, StoredLetter};
pub use writer::{DlqConfig, KafkaDeadLetters};
