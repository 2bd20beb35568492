//! Sinks: where records leave a job, and the acknowledgement that makes them done.

use std::future::Future;
use std::sync::Arc;

use crate::error::SinkError;
use crate::partition::{PartitionState, Resolution};
use crate::record::{Origin, Record, TopicPartition};

/// A destination for records.
///
/// The one rule (the same as every at-least-once framework's): call [`Ack::done`] only
/// once the record is durable at the destination. A sink may acknowledge records in any
/// order; the offset tracker still commits only the contiguous done prefix.
pub trait Sink<T>: Send + Sync + 'static {
    /// Accepts one record. May return before the record is durable, as long as `ack` is
    /// resolved later.
    ///
    /// # Errors
    /// An error stops the job; the record and everything after it stay uncommitted.
    fn send(
        &self,
        record: Record<T>,
        ack: Ack,
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// Makes every record sent so far durable and resolves their acknowledgements.
    ///
    /// # Errors
    /// When buffered records could not be written.
    fn flush(&self) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }

    /// The partitions are being revoked: make what belongs to them durable now, so their
    /// offsets can be committed before another member takes them over. Defaults to
    /// [`Sink::flush`].
    ///
    /// # Errors
    /// When buffered records could not be written.
    fn partitions_revoked(
        &self,
        partitions: &[TopicPartition],
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        let _ = partitions;
        self.flush()
    }
}

/// The promise to settle one record. Resolve it exactly once with [`Ack::done`] or
/// [`Ack::fail`]. Dropping it unresolved counts as a failure: the record is never
/// committed past and the job stops, because a silently lost acknowledgement would
/// otherwise stall its partition forever.
#[derive(Debug)]
pub struct Ack {
    part: Arc<PartitionState>,
    offset: i64,
    resolved: bool,
}

impl Ack {
    pub(crate) fn new(part: Arc<PartitionState>, offset: i64) -> Self {
        Self {
            part,
            offset,
            resolved: false,
        }
    }

    /// The record is durable at the destination.
    pub fn done(mut self) {
        self.resolved = true;
        self.part.resolve(self.offset, Resolution::Delivered);
    }

    /// The record could not be delivered; the job stops with this error.
    pub fn fail(mut self, error: SinkError) {
        self.resolved = true;
        self.part.resolve(self.offset, Resolution::Failed);
        self.part.job().fail(error.into());
    }

    /// Where the acknowledged record came from.
    pub fn origin(&self) -> Origin {
        Origin {
            topic: self.part.tp().topic.clone(),
            partition: self.part.tp().partition,
            offset: self.offset,
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if self.resolved {
            return;
        }
        self.part.resolve(self.offset, Resolution::Failed);
        if !self.part.is_revoked() {
            let origin = self.origin();
            self.part
                .job()
                .fail_weak(SinkError::AckDropped { origin }.into());
        }
    }
}
