//! The dispatcher: the handle through which a source feeds the executor, and the
//! per-partition lanes behind it (a state and a task each).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::partition::{FailureHook, PartitionState};
use super::state::JobShared;
use crate::config::RuntimeConfig;
use crate::error::{RuntimeError, SinkError};
use crate::record::{Record, TopicPartition};

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The part of a job that sits behind the dispatcher: the operator chain and the sink,
/// with their types erased so sources need only know the item type.
pub(crate) trait Pipeline<T>: Send + Sync + 'static {
    fn spawn_partition(
        self: Arc<Self>,
        runtime: &tokio::runtime::Handle,
        part: Arc<PartitionState>,
        rx: mpsc::UnboundedReceiver<Vec<Record<T>>>,
    ) -> JoinHandle<()>;
    fn revoked<'a>(
        &'a self,
        partitions: &'a [TopicPartition],
    ) -> BoxFuture<'a, Result<(), SinkError>>;
    /// Tells the sink which partitions were assigned.
    fn assigned(&self, partitions: &[TopicPartition]);
    /// Where records that fail at the sink go, when the job has a dead-letter queue.
    fn failure_hook(&self) -> Option<Arc<dyn FailureHook>>;
}

struct Lane<T> {
    state: Arc<PartitionState>,
    tx: mpsc::UnboundedSender<Vec<Record<T>>>,
    task: JoinHandle<()>,
    /// The last offset and Kafka timestamp of recent batches, for the end-to-end
    /// latency metric: sampled when the commit point passes them.
    stamps: std::collections::VecDeque<(i64, i64)>,
}

/// Records and bytes held by all the job's partitions.
fn job_held<T>(lanes: &HashMap<TopicPartition, Lane<T>>) -> (usize, usize) {
    lanes.values().fold((0, 0), |(n, b), l| {
        (n + l.state.held(), b + l.state.held_bytes())
    })
}

/// Whether a partition holds as many records or bytes as its bounds allow.
fn lane_full(cfg: &RuntimeConfig, state: &PartitionState) -> bool {
    state.held() >= cfg.max_in_flight_per_partition
        || state.held_bytes() >= cfg.max_in_flight_bytes_per_partition
}

/// Pause and resume decisions for the source to apply at the consumer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Flow {
    /// Partitions to pause: too many of their records are in flight.
    pub pause: Vec<TopicPartition>,
    /// Paused partitions that have drained enough to resume.
    pub resume: Vec<TopicPartition>,
}

/// The executor's handle, given to [`crate::Source::run`]. Cheap to clone.
pub struct Dispatch<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Dispatch<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<T> {
    job: Arc<JobShared>,
    pipeline: Arc<dyn Pipeline<T>>,
    letters: Option<Arc<dyn FailureHook>>,
    lanes: Mutex<HashMap<TopicPartition, Lane<T>>>,
    config: RuntimeConfig,
    /// Partition tasks are spawned from the source's own threads, outside the runtime.
    runtime: tokio::runtime::Handle,
}

impl<T: Send + 'static> Dispatch<T> {
    /// Must be called inside the tokio runtime that will run the partition tasks.
    pub(crate) fn new(
        job: Arc<JobShared>,
        pipeline: Arc<dyn Pipeline<T>>,
        config: RuntimeConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                job,
                letters: pipeline.failure_hook(),
                pipeline,
                lanes: Mutex::new(HashMap::new()),
                config,
                runtime: tokio::runtime::Handle::current(),
            }),
        }
    }

    fn lanes(&self) -> MutexGuard<'_, HashMap<TopicPartition, Lane<T>>> {
        self.inner.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The job's name, for logs and client ids.
    pub fn job_name(&self) -> &str {
        self.inner.job.name()
    }

    /// The runtime settings of the job.
    pub fn config(&self) -> &RuntimeConfig {
        &self.inner.config
    }

    /// True once the job is shutting down or has failed: stop fetching.
    pub fn is_stopping(&self) -> bool {
        self.inner.job.is_stopping()
    }

    /// Resolves when the job starts shutting down.
    pub async fn stopping(&self) {
        self.inner.job.stopping().await
    }

    /// Says which consumer group the source reads as. Records replayed for another group
    /// (header `eventbus.replay.group`) are then taken as done without being processed.
    pub fn consumer_group(&self, group: &str) {
        self.inner.job.set_group(group);
    }

    /// Hands records of one partition, in partition order, to the executor. The partition's
    /// task starts on its first batch. Their size counts as nothing against
    /// `max_in_flight_bytes`; see [`Dispatch::deliver_sized`].
    pub fn deliver(&self, tp: &TopicPartition, batch: Vec<Record<T>>) {
        self.deliver_sized(tp, batch, 0);
    }

    /// [`Dispatch::deliver`] for a batch of `bytes` bytes (keys, values, headers), which
    /// count against the byte bounds until the commit point passes the batch.
    pub fn deliver_sized(&self, tp: &TopicPartition, mut batch: Vec<Record<T>>, bytes: usize) {
        let mut lanes = self.lanes();
        let lane = self.lane(&mut lanes, tp);
        let n = batch.len() as u64;
        if let Some((offset, Some(ts))) = batch.last().map(|r| (r.offset, r.timestamp)) {
            if lane.stamps.len() >= 64 {
                lane.stamps.pop_front();
            }
            lane.stamps.push_back((offset, ts));
        }
        lane.state.register_batch(&mut batch, bytes);
        self.inner.job.stats().add_consumed(n);
        crate::telemetry::records_in(self.job_name(), &tp.topic, n);
        if !batch.is_empty() {
            // The task only exits after its sender is dropped, so this cannot fail while
            // the lane is in the map; if it ever did, the records stay pending and are
            // never committed past.
            let _ = lane.tx.send(batch);
        }
    }

    /// The source was given these partitions: their tasks start now, so that flow
    /// control covers them before their first batch (a job already full pauses them at
    /// once, instead of taking one batch of each).
    pub fn assigned(&self, partitions: &[TopicPartition]) {
        self.inner.job.stats().set_started();
        {
            let mut lanes = self.lanes();
            for tp in partitions {
                self.lane(&mut lanes, tp);
            }
        }
        self.inner.pipeline.assigned(partitions);
    }

    /// The partition's lane, its task started if it has none yet.
    fn lane<'a>(
        &self,
        lanes: &'a mut HashMap<TopicPartition, Lane<T>>,
        tp: &TopicPartition,
    ) -> &'a mut Lane<T> {
        lanes.entry(tp.clone()).or_insert_with(|| {
            let state = Arc::new(PartitionState::new(
                tp.clone(),
                self.inner.job.clone(),
                self.inner.letters.clone(),
            ));
            let (tx, rx) = mpsc::unbounded_channel();
            let task =
                self.inner
                    .pipeline
                    .clone()
                    .spawn_partition(&self.inner.runtime, state.clone(), rx);
            tracing::debug!(partition = %tp, "partition task started");
            Lane {
                state,
                tx,
                task,
                stamps: std::collections::VecDeque::new(),
            }
        })
    }

    /// The partitions that have a running task.
    pub fn partitions(&self) -> Vec<TopicPartition> {
        self.lanes().keys().cloned().collect()
    }

    /// For every live partition with progress, the offset to commit: one past the
    /// contiguous prefix of done records.
    pub fn commit_points(&self) -> Vec<(TopicPartition, i64)> {
        self.lanes()
            .iter()
            .filter_map(|(tp, lane)| lane.state.committable().map(|o| (tp.clone(), o)))
            .collect()
    }

    /// Records delivered and not yet committable, job-wide: the sum over the partitions
    /// that hold them (each count is kept once, by its partition).
    pub fn held(&self) -> usize {
        self.lanes().values().map(|l| l.state.held()).sum()
    }

    /// Which partitions to pause or resume so that in-flight records stay within the
    /// per-partition and per-job bounds. The source must apply the answer; the
    /// dispatcher then considers it applied.
    pub fn flow(&self) -> Flow {
        let cfg = &self.inner.config;
        let lanes = self.lanes();
        let (job_held, job_bytes) = job_held(&lanes);
        let job_full = job_held >= cfg.max_in_flight || job_bytes >= cfg.max_in_flight_bytes;
        let job_low = job_held <= cfg.max_in_flight / 2 && job_bytes <= cfg.max_in_flight_bytes / 2;
        let mut flow = Flow::default();
        for (tp, lane) in lanes.iter() {
            let (held, bytes) = (lane.state.held(), lane.state.held_bytes());
            let full = lane_full(cfg, &lane.state);
            let low = held <= cfg.max_in_flight_per_partition / 2
                && bytes <= cfg.max_in_flight_bytes_per_partition / 2;
            let paused = lane.state.is_paused();
            let held_back = lane.state.is_held_back();
            if !paused && (job_full || held_back || full) {
                lane.state.set_paused(true);
                flow.pause.push(tp.clone());
            } else if paused && !held_back && job_low && low {
                lane.state.set_paused(false);
                flow.resume.push(tp.clone());
            }
        }
        flow
    }

    /// Whether a partition that flows holds as many records or bytes as the bounds allow,
    /// so that [`Dispatch::flow`] would pause it now.
    pub fn over_bound(&self) -> bool {
        let cfg = &self.inner.config;
        let lanes = self.lanes();
        let (held, bytes) = job_held(&lanes);
        let job_full = held >= cfg.max_in_flight || bytes >= cfg.max_in_flight_bytes;
        lanes
            .values()
            .any(|l| !l.state.is_paused() && (job_full || lane_full(cfg, &l.state)))
    }

    /// Whether flow control holds any partition paused: the source should then look
    /// again soon, since a resume is decided when it asks for [`Dispatch::flow`].
    pub fn any_paused(&self) -> bool {
        self.lanes().values().any(|l| l.state.is_paused())
    }

    /// Refreshes each partition's records waiting and done, for health probes (see
    /// [`crate::health`]).
    pub fn refresh_health(&self) {
        let now = crate::dead_letter::now_ms();
        let mut lanes = self.lanes();
        let mut latencies = Vec::new();
        for lane in lanes.values_mut() {
            let Some(point) = lane.state.committable() else {
                continue;
            };
            let mut passed = None;
            while lane
                .stamps
                .front()
                .is_some_and(|(offset, _)| *offset < point)
            {
                passed = lane.stamps.pop_front();
            }
            if let Some((_, ts)) = passed {
                latencies.push(now.saturating_sub(ts));
            }
        }
        let progress = lanes
            .iter()
            .map(|(tp, lane)| (tp.clone(), lane.state.progress()))
            .collect();
        drop(lanes);
        for ms in latencies {
            crate::telemetry::end_to_end(self.job_name(), ms);
        }
        self.inner.job.stats().set_progress(progress);
    }

    /// Emits the job's gauges and the per-topic count of records delivered since the
    /// last call. Sources call it about once a second.
    pub fn emit_metrics(&self) {
        let lanes = self.lanes();
        let paused = lanes.values().filter(|l| l.state.is_paused()).count();
        let mut held = 0;
        let mut held_bytes = 0;
        for (tp, lane) in lanes.iter() {
            held += lane.state.held();
            held_bytes += lane.state.held_bytes();
            let n = lane.state.take_delivered();
            if n > 0 {
                crate::telemetry::records_out(self.job_name(), &tp.topic, n);
            }
        }
        drop(lanes);
        crate::telemetry::flow(self.job_name(), held, held_bytes, paused);
    }

    /// Stops feeding these partitions and drains them: queued records are processed, the
    /// sink is asked to make their records durable, and in-flight acknowledgements are
    /// awaited, all within `drain_timeout_ms`. Returns the final offset to commit for each
    /// partition that made progress. Records not done by the deadline stay uncommitted.
    pub async fn revoke(&self, partitions: &[TopicPartition]) -> Vec<(TopicPartition, i64)> {
        let lanes: Vec<(TopicPartition, Lane<T>)> = {
            let mut map = self.lanes();
            partitions
                .iter()
                .filter_map(|tp| map.remove_entry(tp))
                .collect()
        };
        if lanes.is_empty() {
            return Vec::new();
        }
        let timeout = Duration::from_millis(self.inner.config.drain_timeout_ms);
        let deadline = Instant::now() + timeout;
        let mut states = Vec::with_capacity(lanes.len());
        let mut tasks = Vec::with_capacity(lanes.len());
        for (_, lane) in lanes {
            // Dropping the sender lets the task finish its queue, then exit.
            drop(lane.tx);
            states.push(lane.state);
            tasks.push(lane.task);
        }
        for (state, task) in states.iter().zip(tasks.iter_mut()) {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, &mut *task).await.is_err() {
                state.mark_revoked();
                task.abort();
                let _ = task.await;
            }
        }
        let tps: Vec<TopicPartition> = states.iter().map(|s| s.tp().clone()).collect();
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.inner.pipeline.revoked(&tps)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "sink could not flush revoked partitions"),
            Err(_) => tracing::warn!("sink flush for revoked partitions timed out"),
        }
        let mut finals = Vec::with_capacity(states.len());
        for state in &states {
            if !state.wait_idle(deadline).await {
                tracing::warn!(
                    partition = %state.tp(),
                    pending = state.pending(),
                    timeout_ms = self.inner.config.drain_timeout_ms,
                    "records still in flight when the drain timed out; they stay uncommitted"
                );
            }
            state.mark_revoked();
            let n = state.take_delivered();
            if n > 0 {
                crate::telemetry::records_out(self.job_name(), &state.tp().topic, n);
            }
            if let Some(o) = state.committable() {
                finals.push((state.tp().clone(), o));
            }
            state.release();
        }
        finals
    }

    /// Records that the given offsets were committed to the group.
    pub fn committed(&self, offsets: &[(TopicPartition, i64)]) {
        self.inner.job.stats().set_committed(offsets);
        crate::telemetry::commit(self.job_name(), offsets.len());
    }

    /// Stops the job with an error.
    pub fn fail(&self, error: RuntimeError) {
        self.inner.job.fail(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Source;
    use crate::job::Job;
    use crate::sink::{Ack, Sink};

    /// Keeps every ack unresolved: a destination that never answers.
    #[derive(Clone, Default)]
    struct Silent(Arc<Mutex<Vec<Ack>>>);

    impl Sink<u32> for Silent {
        async fn send(&self, _record: Record<u32>, ack: Ack) -> Result<(), SinkError> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(ack);
            Ok(())
        }
    }

    /// Delivers one batch, waits until the sink holds it all, revokes the partition (the
    /// drain times out, since the sink never answers) and reports the job-wide count of
    /// records in flight afterwards.
    struct RevokeUnanswered {
        sink: Silent,
        held_after: Arc<Mutex<Option<usize>>>,
    }

    impl Source for RevokeUnanswered {
        type Item = u32;

        async fn run(self, dispatch: Dispatch<u32>) -> Result<(), RuntimeError> {
            let tp = TopicPartition::new("t", 0);
            dispatch.deliver(&tp, (0..10).map(|o| Record::new("t", 0, o, 0)).collect());
            while self.sink.0.lock().unwrap_or_else(|p| p.into_inner()).len() < 10 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(dispatch.held(), 10);
            let finals = dispatch.revoke(std::slice::from_ref(&tp)).await;
            assert!(finals.is_empty(), "nothing was done: {finals:?}");
            *self.held_after.lock().unwrap_or_else(|p| p.into_inner()) = Some(dispatch.held());
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_drain_timeout_at_revoke_gives_back_the_job_wide_in_flight_count() {
        let sink = Silent::default();
        let held_after = Arc::new(Mutex::new(None));
        let config = RuntimeConfig {
            drain_timeout_ms: 50,
            ..RuntimeConfig::default()
        };
        let source = RevokeUnanswered {
            sink: sink.clone(),
            held_after: held_after.clone(),
        };
        let report = Job::builder("leak")
            .config(config)
            .source(source)
            .sink(sink.clone())
            .build()
            .expect("job")
            .run(std::future::pending())
            .await
            .expect("a revoked partition's dropped acks do not fail the job");
        assert_eq!(*held_after.lock().expect("lock"), Some(0));
        assert!(report.committed.is_empty());
        // Acks that come after the revoke settle nothing and count nothing.
        let late = std::mem::take(&mut *sink.0.lock().expect("lock"));
        late.into_iter().for_each(Ack::done);
    }
}
