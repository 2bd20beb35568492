//! The executor's view of one assigned partition: its tracker, its counters and its
//! flow control. Acks reach it through [`Settle`].

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

pub(crate) use super::collect::Collected;
use super::state::{JobShared, Settled};
use crate::error::{RuntimeError, SinkError};
use crate::record::{Origin, Record, TopicPartition};
use crate::sink::{Resolution, Settle, SinkFailure};
use crate::tracker::OffsetTracker;

/// Where a partition sends a record that failed at its sink: the job's dead-letter
/// queue, set up by the executor when the job has one.
pub(crate) trait FailureHook: Send + Sync {
    /// Writes the letter for `original`, settling `offset` through `part` once the
    /// letter is durable.
    fn sink_failed(
        &self,
        part: Arc<PartitionState>,
        offset: i64,
        original: Record<Bytes>,
        failure: SinkFailure,
    );
}

/// Shared state of one partition between the source, its task and the sink's acks.
pub(crate) struct PartitionState {
    tp: TopicPartition,
    job: Arc<JobShared>,
    letters: Option<Arc<dyn FailureHook>>,
    tracker: Mutex<Tracked>,
    /// Mirror of the tracker's held count, readable without the lock by flow control.
    held: AtomicUsize,
    /// Mirror of `Tracked::bytes`, readable without the lock by flow control.
    held_bytes: AtomicUsize,
    /// What this partition state settled; the job's counters sum these.
    counts: Arc<Settled>,
    /// Delivered records already reported to the per-topic output metric.
    reported: AtomicU64,
    idle: Notify,
    paused: AtomicBool,
    /// A sink asked for the partition to be paused (it is backing off before a retry).
    held_back: AtomicBool,
    revoked: AtomicBool,
}

impl std::fmt::Debug for PartitionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionState")
            .field("tp", &self.tp)
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

impl PartitionState {
    pub(crate) fn new(
        tp: TopicPartition,
        job: Arc<JobShared>,
        letters: Option<Arc<dyn FailureHook>>,
    ) -> Self {
        let counts = job.stats().partition();
        Self {
            tp,
            job,
            letters,
            tracker: Mutex::new(Tracked::default()),
            held: AtomicUsize::new(0),
            held_bytes: AtomicUsize::new(0),
            counts,
            reported: AtomicU64::new(0),
            idle: Notify::new(),
            paused: AtomicBool::new(false),
            held_back: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
        }
    }

    pub(crate) fn tp(&self) -> &TopicPartition {
        &self.tp
    }

    pub(crate) fn job(&self) -> &Arc<JobShared> {
        &self.job
    }

    fn tracker(&self) -> MutexGuard<'_, Tracked> {
        // A panic while holding this lock cannot leave the tracker half-updated in a way
        // that matters: every method is a single push, flag flip or pop loop.
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a batch in delivery order, removing from it any redelivery the tracker
    /// refuses (an offset it already holds or has finished). `bytes` is the batch's size,
    /// held until the commit point passes its last record.
    pub(crate) fn register_batch<T>(&self, batch: &mut Vec<Record<T>>, bytes: usize) {
        let mut t = self.tracker();
        batch.retain(|r| t.offsets.register(r.offset));
        let Some(last) = batch.last().map(|r| r.offset) else {
            return;
        };
        t.batches.push_back((last, bytes));
        t.bytes += bytes;
        self.held.store(t.offsets.held(), Ordering::Relaxed);
        self.held_bytes.store(t.bytes, Ordering::Relaxed);
    }

    /// Settles several records the same way under one lock.
    pub(crate) fn resolve_many(&self, offsets: &[i64], how: Resolution) {
        let mut t = self.tracker();
        let mut settled = 0u64;
        let mut unknown = None;
        for &offset in offsets {
            let known = match how {
                Resolution::Failed => t.offsets.fail(offset),
                Resolution::Delivered | Resolution::Filtered => t.offsets.done(offset),
            };
            if known {
                settled += 1;
            } else {
                unknown.get_or_insert(offset);
            }
        }
        t.release_committed();
        let idle = t.offsets.pending() == 0;
        self.held.store(t.offsets.held(), Ordering::Relaxed);
        self.held_bytes.store(t.bytes, Ordering::Relaxed);
        drop(t);
        if let Some(offset) = unknown
            && !self.is_revoked()
        {
            tracing::warn!(partition = %self.tp, offset, "settled an offset that was not pending");
        }
        if settled == 0 {
            return;
        }
        self.counts.count(how, settled);
        if idle {
            self.idle.notify_waiters();
        }
    }

    pub(crate) fn resolve(&self, offset: i64, how: Resolution) {
        self.resolve_many(&[offset], how);
    }

    /// Applies what the task collected, one lock per kind of settlement.
    pub(crate) fn apply(&self, collected: &mut Collected) {
        if collected.is_empty() {
            return;
        }
        let mut offsets = Vec::with_capacity(collected.len());
        for how in [
            Resolution::Delivered,
            Resolution::Filtered,
            Resolution::Failed,
        ] {
            offsets.clear();
            offsets.extend(collected.offsets(how));
            if !offsets.is_empty() {
                self.resolve_many(&offsets, how);
            }
        }
        collected.clear();
    }

    /// The offset to commit: past the done prefix, but never past a record an operator
    /// still holds in its state (see [`crate::sink::StateHold`]).
    pub(crate) fn committable(&self) -> Option<i64> {
        let t = self.tracker();
        let done = t.offsets.committable();
        match (done, t.holds.keys().next()) {
            (Some(next), Some(&held)) => Some(next.min(held)),
            (None, Some(_)) => None,
            (done, None) => done,
        }
    }

    /// Records held in operators' state.
    #[cfg(test)]
    pub(crate) fn state_holds(&self) -> usize {
        self.tracker().holds.values().sum()
    }

    /// Records waiting and records done, for health probes.
    pub(crate) fn progress(&self) -> super::state::Progress {
        super::state::Progress {
            waiting: self.held(),
            done: self.counts.done(),
        }
    }

    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub(crate) fn held_bytes(&self) -> usize {
        self.held_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn pending(&self) -> usize {
        self.tracker().offsets.pending()
    }

    /// Waits until no record is pending, or the deadline passes. Returns whether idle.
    pub(crate) async fn wait_idle(&self, deadline: Instant) -> bool {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.pending() == 0 {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left == Duration::ZERO || tokio::time::timeout(left, notified).await.is_err() {
                return self.pending() == 0;
            }
        }
    }

    /// Records delivered since the last call, for the per-topic output metric.
    pub(crate) fn take_delivered(&self) -> u64 {
        let now = self.counts.delivered();
        now - self.reported.swap(now, Ordering::Relaxed)
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    pub(crate) fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::Relaxed);
    }

    pub(crate) fn is_held_back(&self) -> bool {
        self.held_back.load(Ordering::Relaxed)
    }

    /// After this, the partition task abandons queued records and dropped acks no longer
    /// fail the job: another member owns the partition now.
    pub(crate) fn mark_revoked(&self) {
        self.revoked.store(true, Ordering::Relaxed);
    }

    pub(crate) fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Relaxed)
    }

    /// Forgets the records still held once a revoke has given up on them (the drain
    /// timed out), so they no longer count as in flight (flow control would otherwise
    /// keep them for good and, past half of `max_in_flight`, pause every partition).
    /// Acks that arrive later settle nothing. Call after the final commit point is taken.
    pub(crate) fn release(&self) {
        *self.tracker() = Tracked::default();
        self.held.store(0, Ordering::Relaxed);
        self.held_bytes.store(0, Ordering::Relaxed);
    }
}

impl Drop for PartitionState {
    fn drop(&mut self) {
        self.job.stats().retire(&self.counts);
    }
}

impl Settle for PartitionState {
    fn tp(&self) -> &TopicPartition {
        &self.tp
    }

    fn settle(&self, offsets: &[i64], how: Resolution) {
        if !super::collect::collect_if_polling(self, offsets, how) {
            self.resolve_many(offsets, how);
        }
    }

    fn fail_job(&self, error: RuntimeError) {
        // A partition already given up (its revoke's deadline passed) commits nothing
        // more, and its next owner reads its records again: a failure settled late, such
        // as a sink's publish that outlived the deadline, does not stop the job.
        if self.is_revoked() {
            tracing::warn!(
                partition = %self.tp, error = %error,
                "a record of a revoked partition failed after the revoke; its next owner reads it again"
            );
            return;
        }
        self.job.fail(error);
    }

    fn dropped(&self, origin: Origin) {
        if !self.is_revoked() {
            self.job.fail_weak(SinkError::AckDropped { origin }.into());
        }
    }

    fn hold(&self, hold: bool) {
        self.held_back.store(hold, Ordering::Relaxed);
    }

    fn abandoned(&self) -> bool {
        self.is_revoked() || self.job.has_failed()
    }

    fn state_hold(&self, offset: i64, hold: bool) {
        let mut t = self.tracker();
        if hold {
            *t.holds.entry(offset).or_default() += 1;
        } else if let Some(n) = t.holds.get_mut(&offset) {
            *n -= 1;
            if *n == 0 {
                t.holds.remove(&offset);
            }
        }
    }

    fn dead_letter(
        self: Arc<Self>,
        offset: i64,
        original: Record<Bytes>,
        failure: SinkFailure,
    ) -> Result<(), SinkError> {
        match self.letters.clone() {
            Some(hook) => {
                hook.sink_failed(self, offset, original, failure);
                Ok(())
            }
            None => Err(failure.error),
        }
    }
}

/// The tracker of one partition, with the sizes of the batches it holds.
#[derive(Debug, Default)]
struct Tracked {
    offsets: OffsetTracker,
    /// Each registered batch's last offset and size, oldest first.
    batches: VecDeque<(i64, usize)>,
    /// The sum of `batches`' sizes.
    bytes: usize,
    /// Records done for the tracker but held in an operator's state, with how many
    /// holds each: nothing is committed past the oldest.
    holds: std::collections::BTreeMap<i64, usize>,
}

impl Tracked {
    /// Frees the size of every batch the commit point has passed.
    fn release_committed(&mut self) {
        let Some(next) = self.offsets.committable() else {
            return;
        };
        while let Some(&(last, bytes)) = self.batches.front()
            && last < next
        {
            self.bytes -= bytes;
            self.batches.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::state::JobStats;
    use crate::sink::{Ack, Acks};

    fn partition(
        job: &Arc<JobShared>,
        p: i32,
        offsets: std::ops::Range<i64>,
    ) -> Arc<PartitionState> {
        let state = Arc::new(PartitionState::new(
            TopicPartition::new("t", p),
            job.clone(),
            None,
        ));
        let mut batch: Vec<Record<()>> = offsets.map(|o| Record::new("t", p, o, ())).collect();
        state.register_batch(&mut batch, 0);
        state
    }

    fn ack(p: &Arc<PartitionState>, offset: i64) -> Ack {
        Ack::new(p.clone(), offset, None)
    }

    #[test]
    fn a_record_held_in_state_is_not_in_flight_but_is_never_committed_past() {
        let stats = Arc::new(JobStats::default());
        let job = Arc::new(JobShared::new("test".to_owned(), stats));
        let p = partition(&job, 0, 0..5);
        let mut holds = Vec::new();
        for o in 0..5 {
            if o == 2 {
                let hold = ack(&p, o).into_state_hold();
                holds.push(hold.split());
                holds.push(hold);
            } else {
                ack(&p, o).done();
            }
        }
        assert_eq!(p.pending(), 0, "a held record is not in flight");
        assert_eq!(p.state_holds(), 2);
        assert_eq!(p.committable(), Some(2), "nothing past the held record");
        holds.pop().expect("hold").release();
        assert_eq!(p.committable(), Some(2), "one of its two holds is left");
        holds.pop().expect("hold").release();
        assert_eq!(p.committable(), Some(5));
        assert!(!job.has_failed());
    }

    #[test]
    fn a_state_hold_dropped_unreleased_stops_the_job_unless_revoked() {
        let stats = Arc::new(JobStats::default());
        let job = Arc::new(JobShared::new("test".to_owned(), stats));
        let p = partition(&job, 0, 0..2);
        let hold = ack(&p, 0).into_state_hold();
        p.mark_revoked();
        drop(hold);
        assert!(!job.has_failed(), "a revoked partition's state is let go");
        let q = partition(&job, 1, 0..2);
        drop(ack(&q, 0).into_state_hold());
        assert!(
            job.has_failed(),
            "a hold lost silently would stall the partition"
        );
        // A revoke that gives up lets the holds go with everything else.
        let r = partition(&job, 2, 0..2);
        let kept = ack(&r, 0).into_state_hold();
        r.release();
        assert_eq!((r.committable(), r.state_holds()), (None, 0));
        r.mark_revoked();
        kept.release();
    }

    #[test]
    fn held_acks_settle_like_the_acks_they_hold() {
        let stats = Arc::new(JobStats::default());
        let job = Arc::new(JobShared::new("test".to_owned(), stats.clone()));
        let a = partition(&job, 0, 0..6);
        let b = partition(&job, 1, 10..13);
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
        assert_eq!(a.held() + b.held(), 5);
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

        // Once none are held, the next partition's acks are kept compactly too.
        let mut again = Acks::new();
        again.push(ack(&a, 3));
        again.take_first(1).done();
        again.push(ack(&b, 12));
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

    #[test]
    fn acks_settled_inside_a_collecting_poll_apply_with_the_batch() {
        let stats = Arc::new(JobStats::default());
        let job = Arc::new(JobShared::new("test".to_owned(), stats.clone()));
        let a = partition(&job, 0, 0..4);
        let b = partition(&job, 1, 0..1);
        let mut collected = Collected::default();
        collected.during(a.as_ref(), || {
            ack(&a, 0).done();
            ack(&a, 1).done();
            // Another partition's ack settles at once.
            ack(&b, 0).done();
        });
        assert_eq!((a.committable(), b.committable()), (None, Some(1)));
        // Outside the poll, the partition's own acks settle at once too.
        ack(&a, 3).done();
        assert_eq!(a.pending(), 3);
        a.apply(&mut collected);
        assert_eq!((a.committable(), a.pending()), (Some(2), 1));
        assert_eq!(stats.delivered(), 4);

        // A panic inside the poll leaves no collector behind on the thread.
        let mut again = Collected::default();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            again.during(a.as_ref(), || panic!("a sink bug"));
        }));
        assert!(panicked.is_err());
        ack(&a, 2).done();
        assert_eq!(a.committable(), Some(4));
    }

    #[test]
    fn counts_outlive_the_partition_state_that_kept_them() {
        let stats = Arc::new(JobStats::default());
        let job = Arc::new(JobShared::new("test".to_owned(), stats.clone()));
        let a = partition(&job, 0, 0..3);
        ack(&a, 0).done();
        ack(&a, 1).done();
        a.resolve(2, Resolution::Filtered);
        assert_eq!((stats.delivered(), stats.filtered()), (2, 1));
        drop(a);
        assert_eq!((stats.delivered(), stats.filtered()), (2, 1));
        let b = partition(&job, 0, 3..4);
        ack(&b, 3).done();
        assert_eq!(stats.report().delivered, 3);
    }

    #[test]
    fn byte_sizes_are_held_until_the_commit_point_passes_their_batch() {
        let stats = Arc::new(JobStats::default());
        let job = Arc::new(JobShared::new("test".to_owned(), stats));
        let p = Arc::new(PartitionState::new(TopicPartition::new("t", 0), job, None));
        let batch = |r: std::ops::Range<i64>| -> Vec<Record<()>> {
            r.map(|o| Record::new("t", 0, o, ())).collect()
        };
        p.register_batch(&mut batch(0..3), 300);
        p.register_batch(&mut batch(3..5), 200);
        // A redelivered prefix is refused; the rest registers.
        let mut again = batch(4..7);
        p.register_batch(&mut again, 30);
        assert_eq!(
            again.iter().map(|r| r.offset).collect::<Vec<_>>(),
            vec![5, 6]
        );
        assert_eq!((p.held(), p.held_bytes()), (7, 530));
        p.resolve_many(&[1, 2], Resolution::Delivered);
        assert_eq!(p.held_bytes(), 530, "offset 0 still holds the first batch");
        p.resolve_many(&[0, 3], Resolution::Delivered);
        assert_eq!((p.held(), p.held_bytes()), (3, 230));
        p.resolve_many(&[4, 5, 6], Resolution::Delivered);
        assert_eq!((p.held(), p.held_bytes(), p.committable()), (0, 0, Some(7)));
    }
}
