//! State shared by everything that runs for one job, and its live counters.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::error::RuntimeError;
use crate::record::TopicPartition;
use crate::sink::Resolution;

/// The job's name, its stop signal and its first error.
#[derive(Debug)]
pub(crate) struct JobShared {
    name: String,
    stats: Arc<JobStats>,
    failed: AtomicBool,
    stop: watch::Sender<bool>,
    error: Mutex<Option<(RuntimeError, bool)>>,
    /// The source's consumer group, once it said: replays for other groups are skipped.
    group: std::sync::OnceLock<String>,
}

impl JobShared {
    pub(crate) fn new(name: String, stats: Arc<JobStats>) -> Self {
        Self {
            name,
            stats,
            failed: AtomicBool::new(false),
            stop: watch::Sender::new(false),
            error: Mutex::new(None),
            group: std::sync::OnceLock::new(),
        }
    }

    /// Sets the source's consumer group (once).
    pub(crate) fn set_group(&self, group: &str) {
        let _ = self.group.set(group.to_owned());
    }

    /// The source's consumer group, if it said.
    pub(crate) fn group(&self) -> Option<&str> {
        self.group.get().map(String::as_str)
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn stats(&self) -> &Arc<JobStats> {
        &self.stats
    }

    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }

    pub(crate) fn is_stopping(&self) -> bool {
        *self.stop.borrow()
    }

    pub(crate) async fn stopping(&self) {
        let mut rx = self.stop.subscribe();
        // The sender lives as long as `self`, so waiting cannot fail.
        let _ = rx.wait_for(|s| *s).await;
    }

    pub(crate) fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Records the job's error and stops it. The first error wins, except that a definite
    /// error replaces a weak one (a dropped ack is usually the echo of a sink error).
    pub(crate) fn fail(&self, error: RuntimeError) {
        self.set_error(error, false);
    }

    pub(crate) fn fail_weak(&self, error: RuntimeError) {
        self.set_error(error, true);
    }

    fn set_error(&self, error: RuntimeError, weak: bool) {
        // Logged and returned only with personal data masked.
        let error = error.redacted();
        if !weak {
            self.stats.set_failure(error.to_string());
        }
        {
            let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
            match &*slot {
                Some((_, false)) => {}
                Some((_, true)) if weak => {}
                _ => {
                    if weak {
                        // Usually the echo of a failure reported next (a sink that
                        // returned an error had dropped the record's ack): not the cause.
                        tracing::warn!(job = %self.name, error = %error, "stopping");
                    } else {
                        tracing::error!(job = %self.name, error = %error, "job failed; stopping");
                    }
                    *slot = Some((error, weak));
                }
            }
        }
        self.failed.store(true, Ordering::Relaxed);
        self.stop();
    }

    pub(crate) fn take_error(&self) -> Option<RuntimeError> {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        slot.take().map(|(e, _)| e)
    }
}

/// How many records of one partition state were settled, each way. Only that
/// partition's acks write it, so its counters are not shared between threads that
/// settle different partitions.
#[derive(Debug, Default)]
pub(crate) struct Settled {
    delivered: AtomicU64,
    filtered: AtomicU64,
    failed: AtomicU64,
}

impl Settled {
    pub(crate) fn count(&self, how: Resolution, n: u64) {
        let counter = match how {
            Resolution::Delivered => &self.delivered,
            Resolution::Filtered => &self.filtered,
            Resolution::Failed => &self.failed,
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Records settled, however.
    pub(crate) fn done(&self) -> u64 {
        self.delivered()
            + self.filtered.load(Ordering::Relaxed)
            + self.failed.load(Ordering::Relaxed)
    }

    fn add(&self, other: &Settled) {
        for (mine, theirs) in [
            (&self.delivered, &other.delivered),
            (&self.filtered, &other.filtered),
            (&self.failed, &other.failed),
        ] {
            mine.fetch_add(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }
}

/// Live counters of a job, readable while it runs.
///
/// Each count is kept once: records consumed here, records settled by the partition
/// state that settled them (summed when read), and the counts of partition states that
/// are gone, folded into `retired`.
#[derive(Debug, Default)]
pub struct JobStats {
    consumed: AtomicU64,
    /// When the source handed over its first records.
    first_consumed: std::sync::OnceLock<std::time::Instant>,
    live: Mutex<Vec<Arc<Settled>>>,
    retired: Settled,
    committed: Mutex<BTreeMap<TopicPartition, i64>>,
    /// Health: given partitions at least once; stopped; the failure; per-partition
    /// progress as last refreshed by the source.
    started: AtomicBool,
    finished: AtomicBool,
    failure: Mutex<Option<String>>,
    progress: Mutex<ProgressMap>,
}

/// One partition's progress, as last refreshed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Records delivered to the executor and not yet done.
    pub waiting: usize,
    /// Records done so far (delivered, filtered or failed).
    pub done: u64,
}

/// Progress per partition, for [`JobStats`].
pub(crate) type ProgressMap = BTreeMap<TopicPartition, Progress>;

impl JobStats {
    pub(crate) fn add_consumed(&self, n: u64) {
        if self.first_consumed.get().is_none() {
            let _ = self.first_consumed.set(std::time::Instant::now());
        }
        self.consumed.fetch_add(n, Ordering::Relaxed);
    }

    fn live(&self) -> MutexGuard<'_, Vec<Arc<Settled>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The counters of a new partition state.
    pub(crate) fn partition(&self) -> Arc<Settled> {
        let counts = Arc::new(Settled::default());
        self.live().push(counts.clone());
        counts
    }

    /// A partition state is gone: its counts are final.
    pub(crate) fn retire(&self, counts: &Arc<Settled>) {
        let mut live = self.live();
        if let Some(i) = live.iter().position(|c| Arc::ptr_eq(c, counts)) {
            live.swap_remove(i);
            self.retired.add(counts);
        }
    }

    fn settled(&self, field: impl Fn(&Settled) -> &AtomicU64) -> u64 {
        let live: u64 = self
            .live()
            .iter()
            .map(|c| field(c).load(Ordering::Relaxed))
            .sum();
        live + field(&self.retired).load(Ordering::Relaxed)
    }

    pub(crate) fn set_committed(&self, offsets: &[(TopicPartition, i64)]) {
        let mut map = self.committed.lock().unwrap_or_else(|p| p.into_inner());
        for (tp, o) in offsets {
            let slot = map.entry(tp.clone()).or_insert(*o);
            *slot = (*slot).max(*o);
        }
    }

    /// Records handed to the executor by the source.
    pub fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::Relaxed)
    }

    /// When the source handed the executor its first records; `None` before that. A
    /// job's throughput is best timed from here: it leaves out start-up and the group
    /// join.
    pub fn first_consumed_at(&self) -> Option<std::time::Instant> {
        self.first_consumed.get().copied()
    }

    /// Records the sink acknowledged as durable.
    pub fn delivered(&self) -> u64 {
        self.settled(|c| &c.delivered)
    }

    /// Records filtered out by an operator.
    pub fn filtered(&self) -> u64 {
        self.settled(|c| &c.filtered)
    }

    /// The offsets committed so far, per partition (the next offset to read).
    pub fn committed(&self) -> BTreeMap<TopicPartition, i64> {
        self.committed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Marks the job as given partitions.
    pub fn set_started(&self) {
        self.started.store(true, Ordering::Relaxed);
    }

    /// Whether the job's group has given it partitions.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    pub(crate) fn set_finished(&self) {
        self.finished.store(true, Ordering::Relaxed);
    }

    /// Whether the job has stopped.
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }

    /// Records why the job failed.
    pub fn set_failure(&self, why: String) {
        let mut slot = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(why);
    }

    /// Why the job failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the per-partition progress.
    pub fn set_progress(&self, progress: ProgressMap) {
        *self.progress.lock().unwrap_or_else(|p| p.into_inner()) = progress;
    }

    /// Per-partition progress, as last refreshed.
    pub fn progress(&self) -> ProgressMap {
        self.progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A snapshot of every counter.
    pub fn report(&self) -> JobReport {
        JobReport {
            consumed: self.consumed(),
            delivered: self.delivered(),
            filtered: self.filtered(),
            failed: self.settled(|c| &c.failed),
            committed: self.committed(),
        }
    }
}

/// What a job did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobReport {
    /// Records read from the source.
    pub consumed: u64,
    /// Records the sink acknowledged.
    pub delivered: u64,
    /// Records filtered out.
    pub filtered: u64,
    /// Records that failed or were abandoned on revoke (never committed past).
    pub failed: u64,
    /// Final committed offset per partition (the next offset to read).
    pub committed: BTreeMap<TopicPartition, i64>,
}

impl JobReport {
    /// Sum of committed offsets: for topics that start at offset 0, the number of records
    /// committed.
    pub fn committed_total(&self) -> i64 {
        self.committed.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_records_time_is_kept_once() {
        let stats = JobStats::default();
        assert_eq!(stats.first_consumed_at(), None);
        stats.add_consumed(3);
        let first = stats.first_consumed_at().expect("set by the first batch");
        std::thread::sleep(std::time::Duration::from_millis(2));
        stats.add_consumed(5);
        assert_eq!(stats.first_consumed_at(), Some(first));
        assert_eq!(stats.consumed(), 8);
    }
}
