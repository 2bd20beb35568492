//! Rebalance and commit callbacks of the source's consumer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;

use crate::executor::Dispatch;
use crate::record::TopicPartition;

/// The partitions this member owns, each with the generation of its assignment, so that
/// records polled under one assignment never reach the state of a later one.
///
/// Rebalance callbacks run inside `poll`, on the consumer thread. A batch gathered over
/// several polls can therefore hold records of a partition from before a revoke that a
/// later poll of the same batch followed with an assign of that same partition. Those
/// records belong to the old assignment: delivered to the new partition state they would
/// register first, and the re-fetched records at lower offsets would then be refused as
/// redeliveries and committed past.
#[derive(Debug, Default)]
pub(super) struct Assignment {
    owned: Mutex<HashMap<TopicPartition, u64>>,
    /// Bumped by every assign and revoke; the consumer thread reads it once per message
    /// to notice that a callback ran during its last poll.
    changes: AtomicU64,
}

impl Assignment {
    fn owned(&self) -> MutexGuard<'_, HashMap<TopicPartition, u64>> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn assign(&self, partitions: impl IntoIterator<Item = TopicPartition>) {
        let generation = self.changes.fetch_add(1, Ordering::AcqRel) + 1;
        self.owned()
            .extend(partitions.into_iter().map(|tp| (tp, generation)));
    }

    pub(super) fn revoke(&self, partitions: &[TopicPartition]) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        let mut owned = self.owned();
        for tp in partitions {
            owned.remove(tp);
        }
    }

    /// The generation of the partition's current assignment; `None` when not owned.
    pub(super) fn generation(&self, tp: &TopicPartition) -> Option<u64> {
        self.owned().get(tp).copied()
    }

    /// The partitions owned now.
    pub(super) fn partitions(&self) -> Vec<TopicPartition> {
        self.owned().keys().cloned().collect()
    }

    /// Changes so far: equal readings mean no assign or revoke happened in between.
    pub(super) fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }
}

/// Callbacks of the consumer, plus the partitions this member owns.
pub(super) struct SourceContext {
    pub(super) dispatch: Dispatch<Bytes>,
    pub(super) runtime: Handle,
    pub(super) assignment: Assignment,
    /// What librdkafka's error callback said last: a start-up that cannot reach the
    /// brokers names it (a failed TLS handshake, a refused login).
    pub(super) last_error: super::LastError,
}

impl SourceContext {
    pub(super) fn new(dispatch: Dispatch<Bytes>, runtime: Handle) -> Self {
        Self {
            dispatch,
            runtime,
            assignment: Assignment::default(),
            last_error: super::LastError::default(),
        }
    }
}

impl ClientContext for SourceContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.last_error.record(&error, reason);
    }

    /// Each assigned partition's lag: the high watermark minus the group's committed
    /// offset (the low watermark when the group has committed none), as librdkafka
    /// last saw them.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let job = self.dispatch.job_name();
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 || !p.desired || p.hi_offset < 0 {
                    continue;
                }
                let committed = if p.committed_offset >= 0 {
                    p.committed_offset
                } else {
                    p.lo_offset.max(0)
                };
                crate::telemetry::lag(
                    job,
                    topic,
                    *partition,
                    (p.hi_offset - committed).max(0),
                    committed,
                );
            }
        }
    }
}

impl super::Remembers for SourceContext {
    fn last_error(&self) -> &super::LastError {
        &self.last_error
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let revoked = partitions_of(tpl);
        self.assignment.revoke(&revoked);
        tracing::info!(
            job = self.dispatch.job_name(),
            partitions = %list(&revoked),
            lost = consumer.assignment_lost(),
            "partitions revoked: draining before release"
        );
        // This runs on the consumer's own thread, never on a runtime worker, so blocking
        // here is what we want: librdkafka must not hand the partitions over before
        // their done offsets are committed.
        let finals = self.runtime.block_on(self.dispatch.revoke(&revoked));
        commit(consumer, &self.dispatch, &finals);
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let assigned = partitions_of(tpl);
                tracing::info!(
                    job = self.dispatch.job_name(),
                    partitions = %list(&assigned),
                    "partitions assigned"
                );
                // librdkafka keeps the application's pause flag on a partition across
                // unassign and assign: one paused by flow control before it was revoked
                // would come back paused, while its fresh executor state says it flows,
                // and nobody would ever resume it.
                if let Err(e) = consumer.resume(tpl) {
                    tracing::warn!(error = %e, "cannot resume newly assigned partitions");
                }
                self.dispatch.assigned(&assigned);
                crate::telemetry::rebalance(self.dispatch.job_name(), "assign");
                self.assignment.assign(assigned);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => self.dispatch.committed(&super::offsets_of(offsets)),
            Err(e) => tracing::warn!(error = %e, "offset commit failed; the next commit retries"),
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

/// A short description of a partition list for logs: every name up to a few, then a count.
fn list(tps: &[TopicPartition]) -> String {
    const SHOWN: usize = 6;
    let mut s = tps
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    if tps.len() > SHOWN {
        s.push_str(&format!(" and {} more", tps.len() - SHOWN));
    }
    s
}

/// How long a synchronous commit waits for the group coordinator's answer. One that
/// times out is retried by the next commit (every commit interval while running); at
/// shutdown the job then exits without it, and the records after the last committed
/// offset are read again by the next owner.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Commits `offsets` and waits, at most [`COMMIT_TIMEOUT`], for the coordinator's answer
/// (librdkafka's own synchronous commit never returns while the coordinator is
/// unreachable, and a consumer thread stuck there never stops). Returns whether the
/// commit went through. A failed commit is logged and retried by the next one: commits
/// carry absolute offsets, so nothing is lost.
pub(super) fn commit(
    consumer: &BaseConsumer<SourceContext>,
    dispatch: &Dispatch<Bytes>,
    offsets: &[(TopicPartition, i64)],
) -> bool {
    if offsets.is_empty() {
        return true;
    }
    let mut tpl = TopicPartitionList::with_capacity(offsets.len());
    for (tp, o) in offsets {
        if let Err(e) = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*o)) {
            tracing::warn!(partition = %tp, offset = o, error = %e, "cannot build commit");
            return false;
        }
    }
    let started = std::time::Instant::now();
    let result = super::commit::commit_within(consumer, &tpl, COMMIT_TIMEOUT);
    crate::telemetry::commit_duration(dispatch.job_name(), started.elapsed());
    match result {
        Ok(()) => {
            tracing::debug!(partitions = offsets.len(), "committed");
            dispatch.committed(offsets);
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, partitions = offsets.len(), "offset commit failed");
            false
        }
    }
}
