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

/// Acknowledgements a sink holds until their records are durable, in the order they
/// were pushed: what a sink that writes files keeps per buffered row.
///
/// A held record can no longer become a dead letter: [`Acks::push`] drops the copy of
/// the original the job keeps for that, and a later failure stops the job. That is what
/// makes holding cheap: an ack of the partition the others came from is kept as its
/// offset (16 bytes) instead of a whole [`Ack`] with a copy of the record, so a sink
/// buffering a file's worth of rows does not also keep the records alive twice.
/// Dropping unsettled acks counts as a failure, as dropping an [`Ack`] does.
#[derive(Debug, Default)]
pub struct Acks {
    /// The partition every [`Held::Offset`] belongs to.
    part: Option<Arc<PartitionState>>,
    held: Vec<Held>,
}

#[derive(Debug)]
enum Held {
    Offset(i64),
    Other(Box<Ack>),
}

impl Acks {
    /// No acks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Holds `ack` after the others.
    pub fn push(&mut self, mut ack: Ack) {
        ack.route = None;
        if let Target::Partition { part, offset } = &ack.target {
            let mut same = self.part.as_ref().is_some_and(|p| Arc::ptr_eq(p, part));
            if !same && self.held.is_empty() {
                // The first ack held, or the first since all were taken: after a
                // rebalance, a partition assigned again comes with a new state.
                self.part = Some(part.clone());
                same = true;
            }
            if same {
                self.held.push(Held::Offset(*offset));
                ack.resolved = true;
                return;
            }
        }
        self.held.push(Held::Other(Box::new(ack)));
    }

    /// How many acks are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether none are held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Removes the first `n` (all, if fewer are held) and returns them.
    pub fn take_first(&mut self, n: usize) -> Acks {
        let n = n.min(self.held.len());
        Acks {
            part: self.part.clone(),
            held: self.held.drain(..n).collect(),
        }
    }

    /// Every held record is durable at the destination: the same as calling
    /// [`Ack::done`] on each, with one tracker lock for the partition's offsets.
    pub fn done(mut self) {
        let (offsets, whole) = self.take_all();
        whole.into_iter().for_each(|ack| ack.done());
        if let Some(part) = &self.part {
            part.resolve_many(&offsets, Resolution::Delivered);
        }
    }

    /// No held record could be delivered: each is never committed past, and `error()`
    /// (called once per [`Ack`] kept whole, and once for the partition's offsets) stops
    /// the job.
    pub fn fail(mut self, error: impl Fn() -> SinkError) {
        let (offsets, whole) = self.take_all();
        whole.into_iter().for_each(|ack| ack.fail(error()));
        if let Some(part) = &self.part
            && !offsets.is_empty()
        {
            part.resolve_many(&offsets, Resolution::Failed);
            part.job().fail(error().into());
        }
    }

    /// Empties the holding: the partition's offsets, and the acks kept whole.
    fn take_all(&mut self) -> (Vec<i64>, Vec<Ack>) {
        let mut offsets = Vec::with_capacity(self.held.len());
        let mut whole = Vec::new();
        for held in self.held.drain(..) {
            match held {
                Held::Offset(offset) => offsets.push(offset),
                Held::Other(ack) => whole.push(*ack),
            }
        }
        (offsets, whole)
    }
}

impl Drop for Acks {
    fn drop(&mut self) {
        // The acks kept whole fail by their own drop.
        let (offsets, _whole) = self.take_all();
        let (Some(part), Some(&first)) = (&self.part, offsets.first()) else {
            return;
        };
        part.resolve_many(&offsets, Resolution::Failed);
        if !part.is_revoked() {
            let origin = Origin {
                topic: part.tp().topic.clone(),
                partition: part.tp().partition,
                offset: first,
            };
            part.job()
                .fail_weak(SinkError::AckDropped { origin }.into());
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
        state.register_batch(&mut batch, 0);
        state
    }

    #[test]
    fn held_acks_settle_like_the_acks_they_hold() {
        let stats = Arc::new(JobStats::default());
        let job = Arc::new(JobShared::new("test".to_owned(), stats.clone()));
        let a = partition(&job, 0, 0..6);
        let b = partition(&job, 1, 10..13);
        let ack = |p: &Arc<PartitionState>, o| Ack::new(p.clone(), o, None);
        let (channel, outcome) = Ack::channel(Origin {
            topic: "t".into(),
            partition: 2,
            offset: 7,
        });
        // The first partition's acks are kept as offsets; the other's and the channel
        // ack are kept whole, in order.
        let mut acks = Acks::new();
        for held in [ack(&a, 0), ack(&b, 10), ack(&a, 1), ack(&a, 2), channel] {
            acks.push(held);
        }
        acks.push(ack(&b, 11));
        assert_eq!(acks.len(), 6);
        let first = acks.take_first(4);
        assert_eq!((first.len(), acks.len()), (4, 2));
        first.done();
        assert_eq!(a.committable(), Some(3));
        assert_eq!(b.committable(), Some(11));
        assert_eq!((a.pending(), b.pending()), (3, 2));
        assert_eq!(job.held(), 5);
        assert_eq!(stats.delivered(), 4);
        acks.done();
        assert_eq!(b.committable(), Some(12));
        assert!(matches!(outcome.blocking_recv(), Ok(Ok(()))));
        assert_eq!(
            stats.delivered(),
            5,
            "a channel ack reports to its caller only"
        );
        assert!(!job.has_failed(), "nothing was dropped unsettled");

        // Once none are held, the next partition's acks are the compact ones (a
        // partition assigned again comes with a new state).
        let mut again = Acks::new();
        again.push(ack(&a, 3));
        again.take_first(1).done();
        again.push(ack(&b, 12));
        assert!(matches!(again.held[..], [Held::Offset(12)]), "{again:?}");
        again.done();
        assert_eq!((a.committable(), b.committable()), (Some(4), Some(13)));

        // A failure settles the offsets as failed (never committed past) and stops
        // the job.
        let mut failing = Acks::new();
        failing.push(ack(&a, 4));
        failing.push(ack(&a, 5));
        failing.fail(|| SinkError::Flush {
            sink: "test",
            reason: "disk full".to_owned(),
        });
        assert_eq!(a.committable(), Some(4));
        assert_eq!(a.pending(), 0);
        assert!(job.has_failed());

        // Dropped unsettled: failed, as a dropped Ack is.
        let other = Arc::new(JobShared::new("other".to_owned(), stats.clone()));
        let c = partition(&other, 0, 0..2);
        let mut dropped = Acks::new();
        dropped.push(ack(&c, 0));
        drop(dropped);
        assert_eq!((c.committable(), c.pending()), (None, 1));
        assert!(other.has_failed(), "a dropped unsettled ack stops the job");
    }
}
