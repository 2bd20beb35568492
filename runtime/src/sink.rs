//! Sinks: where records leave a job, and the acknowledgement that makes them done.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::dead_letter::{DeadLetter, Route, now_ms};
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
    target: Target,
    resolved: bool,
    /// Present when the job has a dead-letter queue: a record-level failure becomes a
    /// dead letter instead of stopping the job.
    route: Option<Box<Route>>,
    attempts: u32,
    first_failure_ms: Option<i64>,
}

#[derive(Debug)]
enum Target {
    Partition {
        part: Arc<PartitionState>,
        offset: i64,
    },
    Channel {
        origin: Origin,
        tx: Option<oneshot::Sender<Result<(), SinkError>>>,
    },
}

/// The outcome of an ack made with [`Ack::channel`].
pub type AckOutcome = oneshot::Receiver<Result<(), SinkError>>;

impl Ack {
    pub(crate) fn new(part: Arc<PartitionState>, offset: i64, route: Option<Box<Route>>) -> Self {
        Self {
            target: Target::Partition { part, offset },
            resolved: false,
            route,
            attempts: 1,
            first_failure_ms: None,
        }
    }

    /// An ack that reports its outcome to the caller instead of the offset tracker, for
    /// sinks that wrap another sink (a retry, a fan-out). Dropping it unresolved reports
    /// [`SinkError::AckDropped`].
    pub fn channel(origin: Origin) -> (Self, AckOutcome) {
        let (tx, rx) = oneshot::channel();
        let ack = Self {
            target: Target::Channel {
                origin,
                tx: Some(tx),
            },
            resolved: false,
            route: None,
            attempts: 1,
            first_failure_ms: None,
        };
        (ack, rx)
    }

    /// The record is durable at the destination.
    pub fn done(mut self) {
        self.resolved = true;
        match &mut self.target {
            Target::Partition { part, offset } => part.resolve(*offset, Resolution::Delivered),
            Target::Channel { tx, .. } => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Ok(()));
                }
            }
        }
    }

    /// Every record of `acks` is durable at the destination: the same as calling
    /// [`Ack::done`] on each, with one lock per run of acks from the same partition
    /// instead of one per record.
    pub fn done_all(acks: impl IntoIterator<Item = Ack>) {
        let mut run: Option<Arc<PartitionState>> = None;
        let mut offsets: Vec<i64> = Vec::new();
        for mut ack in acks {
            match &ack.target {
                Target::Partition { part, offset } => {
                    if !run.as_ref().is_some_and(|r| Arc::ptr_eq(r, part)) {
                        // A new partition's run: settle the one before it.
                        if let Some(r) = run.replace(part.clone()) {
                            r.resolve_many(&offsets, Resolution::Delivered);
                        }
                        offsets.clear();
                    }
                    offsets.push(*offset);
                    ack.resolved = true;
                }
                Target::Channel { .. } => ack.done(),
            }
        }
        if let Some(r) = run {
            r.resolve_many(&offsets, Resolution::Delivered);
        }
    }

    /// The record could not be delivered. A [`SinkError::Delivery`] that is not Fatal
    /// sends the record to the job's dead-letter queue when it has one; anything else
    /// stops the job, and the record is never committed past.
    pub fn fail(mut self, error: SinkError) {
        self.resolved = true;
        if let Some(route) = self.route.take()
            && crate::dead_letter::is_letter(&error)
            && let Target::Partition { part, offset } = &self.target
        {
            let (stage, message, class) = crate::dead_letter::sink_failure(&error);
            let letter = DeadLetter {
                record: route.original,
                class,
                stage,
                error_type: "eventbus_runtime::error::SinkError".to_owned(),
                message,
                attempts: self.attempts,
                first_failure_ms: self.first_failure_ms.unwrap_or_else(now_ms),
                job: part.job().name().to_owned(),
            };
            let ack = Ack::new(part.clone(), *offset, None);
            let queue = route.queue;
            route
                .runtime
                .spawn(async move { queue.send(letter, ack).await });
            return;
        }
        match &mut self.target {
            Target::Partition { part, offset } => {
                part.resolve(*offset, Resolution::Failed);
                part.job().fail(error.into());
            }
            Target::Channel { tx, .. } => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Err(error));
                }
            }
        }
    }

    /// Records how many times the record was tried and when it first failed, for the
    /// dead letter's headers. Retrying sinks call it before [`Ack::fail`].
    pub fn set_attempts(&mut self, attempts: u32, first_failure_ms: i64) {
        self.attempts = attempts;
        self.first_failure_ms = Some(first_failure_ms);
    }

    /// Asks the source to pause (`true`) or allows it to resume (`false`) the record's
    /// partition: a sink backing off before a retry holds its partition so nothing more
    /// is fetched for it meanwhile, while the other partitions keep flowing.
    pub fn hold_partition(&self, hold: bool) {
        if let Target::Partition { part, .. } = &self.target {
            part.set_held_back(hold);
        }
    }

    /// Where the acknowledged record came from.
    pub fn origin(&self) -> Origin {
        match &self.target {
            Target::Partition { part, offset } => Origin {
                topic: part.tp().topic.clone(),
                partition: part.tp().partition,
                offset: *offset,
            },
            Target::Channel { origin, .. } => origin.clone(),
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if self.resolved {
            return;
        }
        let origin = self.origin();
        match &mut self.target {
            Target::Partition { part, offset } => {
                part.resolve(*offset, Resolution::Failed);
                if !part.is_revoked() {
                    part.job()
                        .fail_weak(SinkError::AckDropped { origin }.into());
                }
            }
            Target::Channel { tx, .. } => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Err(SinkError::AckDropped { origin }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{JobShared, JobStats};

    fn partition(
        job: &Arc<JobShared>,
        p: i32,
        offsets: std::ops::Range<i64>,
    ) -> Arc<PartitionState> {
        let state = Arc::new(PartitionState::new(
            TopicPartition::new("t", p),
            job.clone(),
        ));
        let mut batch: Vec<Record<()>> = offsets.map(|o| Record::new("t", p, o, ())).collect();
        state.register_batch(&mut batch);
        state
    }

    #[test]
    fn done_all_settles_interleaved_partitions_and_channel_acks() {
        let stats = Arc::new(JobStats::default());
        let job = Arc::new(JobShared::new("test".to_owned(), stats.clone()));
        let a = partition(&job, 0, 0..5);
        let b = partition(&job, 1, 10..13);
        let ack = |p: &Arc<PartitionState>, o| Ack::new(p.clone(), o, None);
        let (channel, outcome) = Ack::channel(Origin {
            topic: "t".into(),
            partition: 2,
            offset: 7,
        });
        // Runs of one partition are broken up by the other's and by a channel ack.
        Ack::done_all([
            ack(&a, 0),
            ack(&b, 10),
            ack(&a, 1),
            ack(&a, 2),
            channel,
            ack(&b, 11),
        ]);
        assert_eq!(a.committable(), Some(3));
        assert_eq!(b.committable(), Some(12));
        assert_eq!((a.pending(), b.pending()), (2, 1));
        assert_eq!((a.held(), b.held()), (2, 1));
        assert_eq!(job.held(), 3);
        assert_eq!(stats.delivered(), 5);
        assert!(matches!(outcome.blocking_recv(), Ok(Ok(()))));
        assert!(!job.has_failed(), "no ack was dropped unresolved");
        // The rest of both partitions.
        Ack::done_all([ack(&a, 3), ack(&a, 4), ack(&b, 12)]);
        assert_eq!((a.committable(), b.committable()), (Some(5), Some(13)));
        assert_eq!(job.held(), 0);
        assert_eq!(stats.delivered(), 8);
    }
}
