//! # eventbus-runtime
//!
//! The core of eventbus: the [`Record`] that flows through a job, the [`Source`],
//! [`Operator`] and [`Sink`] traits, a typed [`Job`] builder, the executor that runs a
//! built job, and the [`KafkaSource`] that feeds it from a consumer group.
//!
//! The executor's promise is at-least-once with per-partition order: each assigned
//! partition runs in its own task, in offset order; a sink's [`Ack`] marks a record done;
//! a per-partition [`OffsetTracker`] commits only the contiguous prefix of done records,
//! so nothing is committed past a record that is still in flight or failed. In-flight
//! records are bounded per partition and per job by pausing partitions at the consumer.
//!
//! ## Modules
//!
//! The record path runs forward (source → executor → operator → sink → tracker →
//! commit), and no module imports a module that imports it back, directly or through
//! others (`tests/module_graph.rs` checks it). An arrow reads "imports"; the lines run
//! from the modules that import the most to those that import nothing of the crate,
//! and every module may also import `record` and `error`:
//!
//! ```text
//! job ─► executor, source, operator, sink, dead_letter, health, config
//! kafka::source ─► kafka::{batcher, context, fetch, offsets, diagnose}, source, config
//! kafka::batcher ─► kafka::{context, fetch, headers}
//! kafka::context ─► kafka::{commit, diagnose}, executor::dispatch, telemetry
//! kafka::fetch ─► kafka::headers
//! memory ─► source, sink, executor::dispatch
//! source ─► executor::dispatch
//! health ─► executor::state
//! executor::task ─► executor::{dispatch, partition}, operator, dead_letter, telemetry
//! executor::dispatch ─► executor::{partition, state}, dead_letter, telemetry, config
//! executor::partition ─► executor::{state, collect}, tracker, sink
//! executor::{state, collect} ─► sink
//! telemetry ─► dead_letter ─► sink
//! config ─► error ─► redact ─► record ─► kafka::headers
//! ```
//!
//! `kafka::headers`, `kafka::commit`, `kafka::diagnose` and `tracker` import nothing
//! of the crate. Callbacks the other way are traits passed down: a sink's [`Ack`]
//! settles through `sink::Settle`, which the executor's partition state implements; a
//! record failing at the sink reaches the dead-letter queue through the partition's
//! failure hook, which the executor installs.
//!
//! ```no_run
//! use eventbus_runtime::{Job, KafkaProperties, KafkaSource, SourceConfig};
//! use eventbus_runtime::memory::CollectSink;
//! # async fn run() -> Result<(), eventbus_runtime::RuntimeError> {
//! let mut kafka = KafkaProperties::new();
//! kafka.set("bootstrap.servers", "127.0.0.1:9092");
//! let sink = CollectSink::new();
//! let report = Job::builder("lengths")
//!     .source(KafkaSource::new(kafka, SourceConfig::new("lengths", ["vehicle.state.v1"])))
//!     .map(|bytes: bytes::Bytes| bytes.len())
//!     .filter(|r| r.value > 0)
//!     .sink(sink)
//!     .build()?
//!     .run(eventbus_runtime::shutdown::signals())
//!     .await?;
//! println!("consumed {}", report.consumed);
//! # Ok(()) }
//! ```
// `deny`, not `forbid`: four modules call librdkafka directly. `kafka::headers` reads
// and writes headers, because rdkafka's accessors panic on a header key that is not
// UTF-8, and asks `csrc/header_probe.c` (built by `build.rs` against librdkafka's own
// headers) whether a message has any, because librdkafka allocates to find out;
// `kafka::producer` has librdkafka wake its report thread through a socket,
// because rdkafka's `ThreadedProducer` spins while it waits; `kafka::fetch` reads
// messages many per call, because rdkafka's `poll` costs a lock and several clock reads
// per message; `kafka::commit` waits for a commit's answer with a deadline, because
// librdkafka's synchronous commit waits forever for an unreachable coordinator.
#![deny(unsafe_code)]

pub mod config;
pub mod dead_letter;
pub mod error;
pub mod event_time;
pub mod executor;
pub mod health;
mod job;
pub mod kafka;
pub mod memory;
pub mod operator;
pub mod record;
pub mod redact;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod tracker;

pub use config::{KafkaProperties, MASK, RuntimeConfig, SourceConfig, is_secret, read_secret_file};
pub use dead_letter::{DeadLetter, DeadLetterQueue};
pub use error::{Classify, ErrorClass, ProcessError, RuntimeError, SinkError};
pub use executor::{Dispatch, Flow, JobReport, JobStats};
pub use job::{Job, JobSpec, Pipeline, RunnableJob};
pub use kafka::KafkaSource;
pub use operator::{Operator, Outcome};
pub use record::{Header, Headers, Origin, REPLAY_GROUP, Record, TopicPartition};
pub use sink::{Ack, Acks, Sink, StateHold};
pub use source::Source;
pub use tracker::OffsetTracker;
