//! The executor's view of one assigned partition: its tracker and its flow control.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::job::JobShared;
use crate::record::{Record, TopicPartition};
use crate::tracker::OffsetTracker;

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

/// Shared state of one partition between the source, its task and the sink's acks.
#[derive(Debug)]
pub(crate) struct PartitionState {
    tp: TopicPartition,
    job: Arc<JobShared>,
    tracker: Mutex<Tracked>,
    /// Mirror of `tracker.held()`, readable without the lock by flow control.
    held: AtomicUsize,
    /// Mirror of `Tracked::bytes`, readable without the lock by flow control.
    held_bytes: AtomicUsize,
    idle: Notify,
    paused: AtomicBool,
    /// A sink asked for the partition to be paused (it is backing off before a retry).
    held_back: AtomicBool,
    revoked: AtomicBool,
    /// Records delivered since the last [`PartitionState::take_delivered`], so the
    /// per-topic output metric is emitted in batches, not per record.
    delivered: AtomicU64,
}

impl PartitionState {
    pub(crate) fn new(tp: TopicPartition, job: Arc<JobShared>) -> Self {
        Self {
            tp,
            job,
            tracker: Mutex::new(Tracked::default()),
            held: AtomicUsize::new(0),
            held_bytes: AtomicUsize::new(0),
            idle: Notify::new(),
            paused: AtomicBool::new(false),
            held_back: AtomicBool::new(false),
            revoked: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
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
        let before = t.offsets.held();
        batch.retain(|r| t.offsets.register(r.offset));
        let after = t.offsets.held();
        let bytes = if batch.is_empty() { 0 } else { bytes };
        if let Some(last) = batch.last() {
            t.batches.push_back((last.offset, bytes));
            t.bytes += bytes;
        }
        self.held.store(after, Ordering::Relaxed);
        self.held_bytes.store(t.bytes, Ordering::Relaxed);
        drop(t);
        self.job.add_held(after - before, bytes);
    }

    pub(crate) fn resolve(&self, offset: i64, how: Resolution) {
        self.resolve_many(&[offset], how);
    }

    /// Settles several records the same way under one lock: a sink that publishes a
    /// file acknowledges all its rows at once.
    pub(crate) fn resolve_many(&self, offsets: &[i64], how: Resolution) {
        let mut t = self.tracker();
        let before = t.offsets.held();
        let bytes_before = t.bytes;
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
        let after = t.offsets.held();
        let idle = t.offsets.pending() == 0;
        let bytes_freed = bytes_before - t.bytes;
        self.held.store(after, Ordering::Relaxed);
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
        self.job.sub_held(before - after, bytes_freed);
        self.job.stats().count(how, settled);
        if how == Resolution::Delivered {
            self.delivered.fetch_add(settled, Ordering::Relaxed);
        }
        if idle {
            self.idle.notify_waiters();
        }
    }

    pub(crate) fn committable(&self) -> Option<i64> {
        self.tracker().offsets.committable()
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

    /// Records delivered since the last call.
    pub(crate) fn take_delivered(&self) -> u64 {
        self.delivered.swap(0, Ordering::Relaxed)
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

    pub(crate) fn set_held_back(&self, hold: bool) {
        self.held_back.store(hold, Ordering::Relaxed);
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
    /// timed out): they leave the job-wide in-flight count, which would otherwise keep
    /// them for good and, past half of `max_in_flight`, pause every partition. Acks that
    /// arrive later settle nothing. Call after the final commit point is taken.
    pub(crate) fn release(&self) {
        let mut t = self.tracker();
        let left = std::mem::take(&mut *t);
        self.held.store(0, Ordering::Relaxed);
        self.held_bytes.store(0, Ordering::Relaxed);
        drop(t);
        self.job.sub_held(left.offsets.held(), left.bytes);
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
