//! Sinks: where records leave a job, and the acknowledgement that makes them done.
//!
//! An [`Ack`] settles its record in the partition it came from through `Settle`, the
//! executor's partition state as a sink sees it: this module imports nothing of the
//! executor, which passes that trait down.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::error::{RuntimeError, SinkError};
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

    /// Whether partition tasks hand this sink its records in runs, through
    /// [`Sink::send_batch`], instead of one at a time through [`Sink::send`]. A run costs
    /// a move of each record into it (about 20 ns per record on this project's bench
    /// machine); a sink that looks up per-partition state for every record, or takes a
    /// lock, gains more than that by doing it once per run.
    const TAKES_RUNS: bool = false;

    /// Accepts a run of records, each with its ack, in order, all from one partition
    /// when a partition task calls it. Takes the records out of `batch` (which the
    /// caller reuses). Defaults to [`Sink::send`] for each, in order.
    ///
    /// A record whose ack [`Ack::is_abandoned`] is not to be taken: drop it with its
    /// ack. That is how a failure stops a run where per-record sends would stop, and
    /// how a revoked partition's run ends.
    ///
    /// # Errors
    /// As [`Sink::send`]. Records left in `batch` after an error are dropped with their
    /// acks, so they are never committed past.
    fn send_batch(
        &self,
        batch: &mut Vec<(Record<T>, Ack)>,
    ) -> impl Future<Output = Result<(), SinkError>> + Send
    where
        T: Send,
    {
        async move {
            for (record, ack) in batch.drain(..) {
                if !ack.is_abandoned() {
                    self.send(record, ack).await?;
                }
            }
            Ok(())
        }
    }

    /// Whether this sink fails every record it cannot take, record by record, with
    /// [`Ack::fail_with`], handing back the record it was sent. After an operator chain
    /// that [`crate::Operator::PASSES_THROUGH`], that record is the original, so a job
    /// with a dead-letter queue copies no record for it: the copy is made only when a
    /// record fails. A sink that may fail a record it no longer holds (a producer's
    /// delivery report, a retry) keeps the default, and the job keeps a copy of each
    /// record until its ack is settled.
    const GIVES_BACK: bool = false;

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

    /// The partitions were assigned to the job; their records may follow (or not, for an
    /// empty partition). Called on the source's thread during the rebalance: keep it
    /// short and never block. Defaults to nothing.
    fn partitions_assigned(&self, partitions: &[TopicPartition]) {
        let _ = partitions;
    }
}

/// How a record was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resolution {
    /// The sink made it durable.
    Delivered,
    /// An operator filtered it out.
    Filtered,
    /// It failed, or was abandoned on revoke: never committed past.
    Failed,
}

/// A record-level failure at a sink, on its way to the job's dead-letter queue.
#[derive(Debug)]
pub(crate) struct SinkFailure {
    pub(crate) error: SinkError,
    pub(crate) attempts: u32,
    pub(crate) first_failure_ms: Option<i64>,
}

/// The partition an ack settles: implemented by the executor's partition state.
pub(crate) trait Settle: Send + Sync + fmt::Debug {
    /// The partition.
    fn tp(&self) -> &TopicPartition;
    /// Settles these offsets the same way, under one lock.
    fn settle(&self, offsets: &[i64], how: Resolution);
    /// Stops the job with this error.
    fn fail_job(&self, error: RuntimeError);
    /// An ack was dropped unsettled: stops the job, unless the partition was revoked
    /// (another member owns it now).
    fn dropped(&self, origin: Origin);
    /// Pauses or lets resume the partition at the consumer.
    fn hold(&self, hold: bool);
    /// Whether the partition was revoked or the job has failed.
    fn abandoned(&self) -> bool;
    /// Adds (`true`) or removes one state hold on `offset`: nothing is committed past a
    /// held record.
    fn state_hold(&self, offset: i64, hold: bool);
    /// Hands the record that failed at `offset` to the job's dead-letter queue, whose
    /// ack then settles the offset. Gives the error back when the job has no queue.
    fn dead_letter(
        self: Arc<Self>,
        offset: i64,
        original: Record<Bytes>,
        failure: SinkFailure,
    ) -> Result<(), SinkError>;
}

/// The promise to settle one record. Resolve it exactly once with [`Ack::done`] or
/// [`Ack::fail`]. Dropping it unresolved counts as a failure: the record is never
/// committed past and the job stops, because a silently lost acknowledgement would
/// otherwise stall its partition forever.
#[derive(Debug)]
pub struct Ack {
    target: Target,
    resolved: bool,
    /// The record as the source read it, kept when the job has a dead-letter queue so
    /// that a record-level failure becomes a dead letter instead of stopping the job.
    original: Option<Box<Record<Bytes>>>,
    attempts: u32,
    first_failure_ms: Option<i64>,
}

#[derive(Debug)]
enum Target {
    Partition {
        part: Arc<dyn Settle>,
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
    pub(crate) fn new(
        part: Arc<dyn Settle>,
        offset: i64,
        original: Option<Box<Record<Bytes>>>,
    ) -> Self {
        Self {
            target: Target::Partition { part, offset },
            resolved: false,
            original,
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
            original: None,
            attempts: 1,
            first_failure_ms: None,
        };
        (ack, rx)
    }

    /// The record is durable at the destination.
    pub fn done(mut self) {
        self.resolved = true;
        match &mut self.target {
            Target::Partition { part, offset } => part.settle(&[*offset], Resolution::Delivered),
            Target::Channel { tx, .. } => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Ok(()));
                }
            }
        }
    }

    /// The record is kept in an operator's state (a window, a pending alert): it no
    /// longer counts as in flight, so it does not hold back the partition the way an
    /// unfinished record does, but nothing is committed past it until the returned hold
    /// is released, once what the state emits for it is durable. After a crash the
    /// record is read again, and the state rebuilt from it.
    pub fn into_state_hold(self) -> StateHold {
        match &self.target {
            Target::Partition { part, offset } => {
                let (part, offset) = (part.clone(), *offset);
                // The hold first: the commit point never passes the record between the
                // two.
                part.state_hold(offset, true);
                self.done();
                StateHold {
                    target: HoldTarget::Partition { part, offset },
                    released: false,
                }
            }
            Target::Channel { .. } => StateHold {
                target: HoldTarget::Channel(Arc::new(std::sync::Mutex::new(Some(self)))),
                released: false,
            },
        }
    }

    /// The record could not be delivered. A [`SinkError::Delivery`] that is not Fatal
    /// sends the record to the job's dead-letter queue when it has one; anything else
    /// stops the job, and the record is never committed past.
    pub fn fail(mut self, error: SinkError) {
        self.resolved = true;
        let mut error = error;
        if error.is_record_failure()
            && let Some(original) = self.original.take()
            && let Target::Partition { part, offset } = &self.target
        {
            let failure = SinkFailure {
                error,
                attempts: self.attempts,
                first_failure_ms: self.first_failure_ms,
            };
            match part.clone().dead_letter(*offset, *original, failure) {
                Ok(()) => return,
                Err(back) => error = back,
            }
        }
        match &mut self.target {
            Target::Partition { part, offset } => {
                part.settle(&[*offset], Resolution::Failed);
                part.fail_job(error.into());
            }
            Target::Channel { tx, .. } => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Err(error));
                }
            }
        }
    }

    /// As [`Ack::fail`], for a sink that still holds the record it was sent: a record
    /// failure sends `record` to the dead-letter queue when the job kept no copy of the
    /// original (see [`Sink::GIVES_BACK`]); the copy is preferred when it did, since an
    /// operator may have changed the record since.
    pub fn fail_with(mut self, record: Record<Bytes>, error: SinkError) {
        if self.original.is_none() && error.is_record_failure() {
            self.original = Some(Box::new(record));
        }
        self.fail(error);
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
            part.hold(hold);
        }
    }

    /// Whether the record's job has stopped or its partition was revoked since the
    /// record was read. A sink taking a run of records ([`Sink::send_batch`]) skips such
    /// a record and drops its ack, which settles it as failed: never committed past.
    pub fn is_abandoned(&self) -> bool {
        match &self.target {
            Target::Partition { part, .. } => part.abandoned(),
            Target::Channel { .. } => false,
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
/// offset (8 bytes) instead of a whole [`Ack`] with a copy of the record, so a sink
/// buffering a file's worth of rows does not also keep the records alive twice.
/// Dropping unsettled acks counts as a failure, as dropping an [`Ack`] does.
#[derive(Debug, Default)]
pub struct Acks {
    /// The partition every [`Held::Offset`] belongs to.
    part: Option<Arc<dyn Settle>>,
    held: Vec<Held>,
}

#[derive(Debug)]
enum Held {
    Offset(i64),
    Other(Box<Ack>),
}

/// Whether two acks settle the same partition state (a partition assigned again comes
/// with a new state).
fn same(a: &Arc<dyn Settle>, b: &Arc<dyn Settle>) -> bool {
    std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(b))
}

impl Acks {
    /// No acks.
    pub fn new() -> Self {
        Self::default()
    }

    /// Holds `ack` after the others.
    pub fn push(&mut self, mut ack: Ack) {
        ack.original = None;
        if let Target::Partition { part, offset } = &ack.target {
            let mut same_part = self.part.as_ref().is_some_and(|p| same(p, part));
            if !same_part && self.held.is_empty() {
                // The first ack held, or the first since all were taken.
                self.part = Some(part.clone());
                same_part = true;
            }
            if same_part {
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
        whole.into_iter().for_each(Ack::done);
        if let Some(part) = &self.part {
            part.settle(&offsets, Resolution::Delivered);
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
            part.settle(&offsets, Resolution::Failed);
            part.fail_job(error().into());
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
        part.settle(&offsets, Resolution::Failed);
        part.dropped(Origin {
            topic: part.tp().topic.clone(),
            partition: part.tp().partition,
            offset: first,
        });
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
                part.settle(&[*offset], Resolution::Failed);
                part.dropped(origin);
            }
            Target::Channel { tx, .. } => {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Err(SinkError::AckDropped { origin }));
                }
            }
        }
    }
}
/// A record kept in an operator's state; see [`Ack::into_state_hold`]. Release it once
/// what the state emits for the record is durable. Dropping it unreleased stops the job
/// (unless its partition was revoked): a hold lost silently would keep the partition's
/// commit point back for good.
#[derive(Debug)]
pub struct StateHold {
    target: HoldTarget,
    released: bool,
}

#[derive(Debug)]
enum HoldTarget {
    Partition {
        part: Arc<dyn Settle>,
        offset: i64,
    },
    /// A channel ack (under a wrapping sink), settled when the last hold on it goes.
    Channel(Arc<std::sync::Mutex<Option<Ack>>>),
}

impl StateHold {
    /// Another hold on the same record, for state that keeps it twice (a record in two
    /// overlapping windows). The record is committed past once every hold is released.
    pub fn split(&self) -> Self {
        let target = match &self.target {
            HoldTarget::Partition { part, offset } => {
                part.state_hold(*offset, true);
                HoldTarget::Partition {
                    part: part.clone(),
                    offset: *offset,
                }
            }
            HoldTarget::Channel(ack) => HoldTarget::Channel(ack.clone()),
        };
        Self {
            target,
            released: false,
        }
    }

    /// What the state emitted for the record is durable: it may be committed past.
    pub fn release(mut self) {
        self.released = true;
        match &self.target {
            HoldTarget::Partition { part, offset } => part.state_hold(*offset, false),
            HoldTarget::Channel(ack) => {
                if Arc::strong_count(ack) == 1
                    && let Some(ack) = ack.lock().unwrap_or_else(|p| p.into_inner()).take()
                {
                    ack.done();
                }
            }
        }
    }

    /// What the state emitted for the record could not be made durable: the record is
    /// never committed past and the job stops.
    pub fn fail(mut self, error: SinkError) {
        self.released = true;
        match &self.target {
            // The hold stays: nothing is committed past the record.
            HoldTarget::Partition { part, .. } => part.fail_job(error.into()),
            HoldTarget::Channel(ack) => {
                if let Some(ack) = ack.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    ack.fail(error);
                }
            }
        }
    }

    /// The state is given up because its partition is being revoked: the hold stays
    /// where it is, so the final commit point stays at or before the record (whose next
    /// owner reads it again), and goes when the revoke lets the partition go.
    pub fn abandon(mut self) {
        self.released = true;
    }

    /// Where the held record came from.
    pub fn origin(&self) -> Origin {
        match &self.target {
            HoldTarget::Partition { part, offset } => Origin {
                topic: part.tp().topic.clone(),
                partition: part.tp().partition,
                offset: *offset,
            },
            HoldTarget::Channel(ack) => ack
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(Ack::origin)
                .unwrap_or_else(|| Origin {
                    topic: "".into(),
                    partition: -1,
                    offset: -1,
                }),
        }
    }
}

impl Drop for StateHold {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        match &self.target {
            HoldTarget::Partition { part, offset } => part.dropped(Origin {
                topic: part.tp().topic.clone(),
                partition: part.tp().partition,
                offset: *offset,
            }),
            // The channel ack drops with the last hold, and reports itself.
            HoldTarget::Channel(_) => {}
        }
    }
}
