//! Dead letters: where a record goes when it cannot be processed, so that its partition
//! keeps flowing and nothing is lost.
//!
//! A job opts in with [`crate::Pipeline::dead_letters`]. From then on:
//! - an operator failure that is not [`ErrorClass::Fatal`] sends the original record to the
//!   [`DeadLetterQueue`] instead of stopping the job;
//! - a sink that fails a record's [`crate::Ack`] with a [`SinkError::Delivery`] that is not
//!   Fatal (a bad record, or a transient failure whose retries ran out) does the same;
//! - the record is done only when the queue resolves the letter's ack, which a queue does
//!   only once the letter is durable. A queue that cannot write fails that ack with a
//!   Fatal error: the job stops and never commits past the record.
//!
//! Failures of the sink as a whole ([`SinkError::Flush`]) are not about one record and
//! still stop the job.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{ErrorClass, SinkError};
use crate::record::Record;
use crate::sink::Ack;

/// A record that failed, with what is known about the failure.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The record as the source read it: key, value, headers, timestamp, coordinates.
    pub record: Record<Bytes>,
    /// The failure's class (never Fatal: those stop the job).
    pub class: ErrorClass,
    /// Where it failed: `operator`, or `sink:<name>`.
    pub stage: String,
    /// The error's type name, e.g. `eventbus_schemas::error::DecodeError`.
    pub error_type: String,
    /// The error's message.
    pub message: String,
    /// How many times the record was tried.
    pub attempts: u32,
    /// When it first failed, in milliseconds since the epoch.
    pub first_failure_ms: i64,
    /// The job that failed it.
    pub job: String,
    /// The consumer group the job reads as, when its source has one: replays of the
    /// letter go to this group only.
    pub group: Option<String>,
}

/// Writes dead letters durably.
///
/// The contract: resolve `ack` done once the letter is durable (for Kafka: acknowledged
/// with `acks=all`); fail it with a Fatal error after a bounded number of tries when it
/// cannot be written. Never drop it unresolved.
pub trait DeadLetterQueue: Send + Sync + 'static {
    /// Starts writing one letter.
    fn send(&self, letter: DeadLetter, ack: Ack) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// The queue a job's records fail into, with the way to recover each record's original.
pub(crate) struct Letters<T> {
    pub(crate) queue: Arc<dyn DeadLetterQueue>,
    pub(crate) original: fn(&Record<T>) -> Record<Bytes>,
}

impl<T> Clone for Letters<T> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            original: self.original,
        }
    }
}

impl<T> fmt::Debug for Letters<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Letters")
    }
}

/// The stage, message and class of a sink's record-level failure.
pub(crate) fn sink_failure(error: &SinkError) -> (String, String, ErrorClass) {
    match error {
        SinkError::Delivery {
            sink,
            reason,
            class,
            ..
        } => (format!("sink:{sink}"), reason.clone(), *class),
        other => ("sink".to_owned(), other.to_string(), ErrorClass::Fatal),
    }
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
