//! Rebalance and commit callbacks of the source's consumer.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::runtime::Handle;

use crate::record::TopicPartition;
use crate::source::Dispatch;

/// Callbacks of the consumer, plus the set of partitions this member owns, so that a
/// batch polled before a revoke is never delivered after it.
pub(super) struct SourceContext {
    pub(super) dispatch: Dispatch<Bytes>,
    pub(super) runtime: Handle,
    owned: Mutex<HashSet<TopicPartition>>,
}

impl SourceContext {
    pub(super) fn new(dispatch: Dispatch<Bytes>, runtime: Handle) -> Self {
        Self {
            dispatch,
            runtime,
            owned: Mutex::new(HashSet::new()),
        }
    }

    pub(super) fn owned(&self) -> MutexGuard<'_, HashSet<TopicPartition>> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for SourceContext {}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let revoked = partitions_of(tpl);
        {
            let mut owned = self.owned();
            for tp in &revoked {
                owned.remove(tp);
            }
        }
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
        commit(consumer, &self.dispatch, &finals, CommitMode::Sync);
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let assigned = partitions_of(tpl);
                tracing::info!(
                    job = self.dispatch.job_name(),
                    partitions = %list(&assigned),
                    "partitions assigned"
                );
                self.owned().extend(assigned);
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

/// Commits `offsets`; returns whether librdkafka accepted the request. A failed commit is
/// logged and retried by the next one: commits carry absolute offsets, so nothing is lost.
pub(super) fn commit(
    consumer: &BaseConsumer<SourceContext>,
    dispatch: &Dispatch<Bytes>,
    offsets: &[(TopicPartition, i64)],
    mode: CommitMode,
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
    match consumer.commit(&tpl, mode) {
        Ok(()) => {
            tracing::debug!(
                partitions = offsets.len(),
                sync = matches!(mode, CommitMode::Sync),
                "commit sent"
            );
            if matches!(mode, CommitMode::Sync) {
                dispatch.committed(offsets);
            }
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, partitions = offsets.len(), "offset commit failed");
            false
        }
    }
}
