//! The typed job builder and the executor that runs a built job.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use bytes::Bytes;

use crate::Classify;
use crate::config::RuntimeConfig;
use crate::dead_letter::{DeadLetter, DeadLetterQueue, Letters, Route, now_ms};
use crate::error::{ErrorClass, RuntimeError, SinkError};
use crate::operator::{Filter, Identity, Map, MapRecord, Operator, Outcome, Then, TryMap};
use crate::partition::{PartitionState, Resolution};
use crate::record::{Record, TopicPartition};
use crate::sink::{Ack, Sink};
use crate::source::{BoxFuture, Dispatch, Pipeline as ErasedPipeline, Source};

/// Entry point of the builder: `Job::builder("name").source(..).map(..).sink(..).build()?`.
#[derive(Debug)]
pub struct Job {
    name: String,
    config: RuntimeConfig,
}

impl Job {
    /// Starts building a job with default runtime settings.
    pub fn builder(name: impl Into<String>) -> Job {
        Job {
            name: name.into(),
            config: RuntimeConfig::default(),
        }
    }

    /// Sets the runtime settings (in-flight bounds, drain timeout).
    pub fn config(mut self, config: RuntimeConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets where records come from.
    pub fn source<S: Source>(self, source: S) -> Pipeline<S, Identity> {
        Pipeline {
            name: self.name,
            config: self.config,
            source,
            op: Identity,
            letters: None,
        }
    }
}

/// A source and the operators chained after it so far. `Op::Out` is the value type of
/// the records at the end of the chain, and the compiler checks each next step against it.
#[derive(Debug)]
pub struct Pipeline<S: Source, Op> {
    name: String,
    config: RuntimeConfig,
    source: S,
    op: Op,
    letters: Option<Letters<S::Item>>,
}

impl<S: Source<Item = Bytes>, Op> Pipeline<S, Op> {
    /// Sends records that fail into `queue` instead of stopping the job: operator
    /// failures that are not Fatal, and sink failures of one record (see
    /// [`crate::dead_letter`]). A record is done once its letter is durable. Call it
    /// anywhere in the chain; it applies to the whole job.
    pub fn dead_letters(mut self, queue: impl DeadLetterQueue) -> Self {
        self.letters = Some(Letters {
            queue: Arc::new(queue),
            original: Record::clone,
        });
        self
    }
}

impl<S, Op> Pipeline<S, Op>
where
    S: Source,
    Op: Operator<S::Item>,
{
    /// Appends any operator.
    pub fn then<Next: Operator<Op::Out>>(self, next: Next) -> Pipeline<S, Then<Op, Next>> {
        Pipeline {
            name: self.name,
            config: self.config,
            source: self.source,
            op: Then::new(self.op, next),
            letters: self.letters,
        }
    }

    /// Transforms every value.
    pub fn map<U, F>(self, f: F) -> Pipeline<S, Then<Op, Map<F>>>
    where
        F: Fn(Op::Out) -> U + Send + Sync + 'static,
        U: Send + 'static,
    {
        self.then(Map(f))
    }

    /// Transforms whole records: key, headers and value. Coordinates cannot change.
    pub fn map_record<U, F>(self, f: F) -> Pipeline<S, Then<Op, MapRecord<F>>>
    where
        F: Fn(Record<Op::Out>) -> Record<U> + Send + Sync + 'static,
        U: Send + 'static,
    {
        self.then(MapRecord(f))
    }

    /// Keeps the records for which `f` holds; the others count as done.
    pub fn filter<F>(self, f: F) -> Pipeline<S, Then<Op, Filter<F>>>
    where
        F: Fn(&Record<Op::Out>) -> bool + Send + Sync + 'static,
    {
        self.then(Filter(f))
    }

    /// Transforms every value with a function that may fail with a classified error.
    pub fn try_map<U, E, F>(self, f: F) -> Pipeline<S, Then<Op, TryMap<F>>>
    where
        F: Fn(Op::Out) -> Result<U, E> + Send + Sync + 'static,
        E: std::error::Error + Classify + Send + Sync + 'static,
        U: Send + 'static,
    {
        self.then(TryMap(f))
    }

    /// Ends the chain in a sink.
    pub fn sink<K: Sink<Op::Out>>(self, sink: K) -> JobSpec<S, Op, K> {
        JobSpec {
            name: self.name,
            config: self.config,
            source: self.source,
            op: self.op,
            sink,
            letters: self.letters,
        }
    }
}

/// A complete chain, ready to be checked by [`JobSpec::build`].
#[derive(Debug)]
pub struct JobSpec<S: Source, Op, K> {
    name: String,
    config: RuntimeConfig,
    source: S,
    op: Op,
    sink: K,
    letters: Option<Letters<S::Item>>,
}

impl<S, Op, K> JobSpec<S, Op, K>
where
    S: Source,
    Op: Operator<S::Item>,
    K: Sink<Op::Out>,
{
    /// Checks the settings.
    ///
    /// # Errors
    /// [`RuntimeError::Config`] naming the setting that is out of range.
    pub fn build(self) -> Result<RunnableJob<S, Op, K>, RuntimeError> {
        self.config.validate()?;
        let stats = Arc::new(JobStats::default());
        Ok(RunnableJob {
            shared: Arc::new(JobShared::new(self.name, stats)),
            config: self.config,
            source: self.source,
            op: self.op,
            sink: self.sink,
            letters: self.letters,
        })
    }
}

/// A built job. [`RunnableJob::stats`] may be read while it runs.
#[derive(Debug)]
pub struct RunnableJob<S: Source, Op, K> {
    shared: Arc<JobShared>,
    config: RuntimeConfig,
    source: S,
    op: Op,
    sink: K,
    letters: Option<Letters<S::Item>>,
}

impl<S, Op, K> RunnableJob<S, Op, K>
where
    S: Source,
    Op: Operator<S::Item>,
    K: Sink<Op::Out>,
{
    /// Live counters of the job.
    pub fn stats(&self) -> Arc<JobStats> {
        self.shared.stats.clone()
    }

    /// Runs the job until its source ends, `shutdown` resolves, or a record fails.
    ///
    /// On shutdown the source stops fetching, in-flight records drain (bounded by
    /// `drain_timeout_ms`), the sink flushes, and done offsets are committed.
    ///
    /// # Errors
    /// The first fatal error: a start-up failure of the source, an operator failure (until
    /// the dead-letter queue handles them), or a sink failure. Offsets are never committed
    /// past the failed record.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<JobReport, RuntimeError> {
        let shared = self.shared;
        let pipeline = Arc::new(Chain {
            op: self.op,
            sink: self.sink,
            letters: self.letters,
        });
        let dispatch = Dispatch::new(shared.clone(), pipeline.clone(), self.config);
        let stopper = {
            let shared = shared.clone();
            tokio::spawn(async move {
                shutdown.await;
                tracing::info!(job = shared.name(), "shutdown requested: draining");
                shared.stop();
            })
        };
        let source_result = self.source.run(dispatch.clone()).await;
        stopper.abort();
        // A source that returned early may leave partitions behind: drain them too.
        let leftovers = dispatch.partitions();
        if !leftovers.is_empty() {
            dispatch.revoke(&leftovers).await;
        }
        let flush_result = pipeline.sink.flush().await;
        if let Some(e) = shared.take_error() {
            return Err(e);
        }
        source_result?;
        flush_result?;
        Ok(shared.stats.report())
    }
}

struct Chain<T, Op, K> {
    op: Op,
    sink: K,
    letters: Option<Letters<T>>,
}

impl<T, Op, K> ErasedPipeline<T> for Chain<T, Op, K>
where
    T: Send + 'static,
    Op: Operator<T>,
    K: Sink<Op::Out>,
{
    fn spawn_partition(
        self: Arc<Self>,
        runtime: &tokio::runtime::Handle,
        part: Arc<PartitionState>,
        rx: mpsc::UnboundedReceiver<Vec<Record<T>>>,
    ) -> JoinHandle<()> {
        runtime.spawn(run_partition(self, part, rx))
    }

    fn revoked<'a>(
        &'a self,
        partitions: &'a [TopicPartition],
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(self.sink.partitions_revoked(partitions))
    }
}

/// Runs one partition: records in order through the chain into the sink.
async fn run_partition<T, Op, K>(
    chain: Arc<Chain<T, Op, K>>,
    part: Arc<PartitionState>,
    mut rx: mpsc::UnboundedReceiver<Vec<Record<T>>>,
) where
    T: Send + 'static,
    Op: Operator<T>,
    K: Sink<Op::Out>,
{
    // Where a failed record's dead letter is written from (the ack may fail on a
    // librdkafka thread); looked up once per partition, not per record.
    let runtime = tokio::runtime::Handle::current();
    while let Some(batch) = rx.recv().await {
        for record in batch {
            let offset = record.offset;
            if part.is_revoked() || part.job().has_failed() {
                // Left pending-then-failed so the drain sees it settled; never committed.
                part.resolve(offset, Resolution::Failed);
                continue;
            }
            let original = chain
                .letters
                .as_ref()
                .map(|l| (l.queue.clone(), (l.original)(&record)));
            match chain.op.apply(record) {
                Outcome::Emit(out) => {
                    let route = original.map(|(queue, original)| {
                        Box::new(Route {
                            queue,
                            original,
                            runtime: runtime.clone(),
                        })
                    });
                    let ack = Ack::new(part.clone(), offset, route);
                    if let Err(e) = chain.sink.send(out, ack).await {
                        part.job().fail(e.into());
                    }
                }
                Outcome::Filtered => part.resolve(offset, Resolution::Filtered),
                Outcome::Failed { origin, error } => match original {
                    Some((queue, record)) if error.class() != ErrorClass::Fatal => {
                        let letter = DeadLetter {
                            record,
                            class: error.class(),
                            stage: "operator".to_owned(),
                            error_type: error.type_name().to_owned(),
                            message: error.to_string(),
                            attempts: 1,
                            first_failure_ms: now_ms(),
                            job: part.job().name().to_owned(),
                        };
                        queue
                            .send(letter, Ack::new(part.clone(), offset, None))
                            .await;
                    }
                    _ => {
                        part.resolve(offset, Resolution::Failed);
                        let class = error.class();
                        part.job().fail(RuntimeError::Operator {
                            origin,
                            class,
                            source: error,
                        });
                    }
                },
            }
        }
    }
}

/// State shared by everything that runs for one job.
#[derive(Debug)]
pub(crate) struct JobShared {
    name: String,
    stats: Arc<JobStats>,
    held: AtomicUsize,
    held_bytes: AtomicUsize,
    failed: AtomicBool,
    stop: watch::Sender<bool>,
    error: Mutex<Option<(RuntimeError, bool)>>,
}

impl JobShared {
    pub(crate) fn new(name: String, stats: Arc<JobStats>) -> Self {
        Self {
            name,
            stats,
            held: AtomicUsize::new(0),
            held_bytes: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            stop: watch::Sender::new(false),
            error: Mutex::new(None),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn stats(&self) -> &JobStats {
        &self.stats
    }

    pub(crate) fn add_held(&self, records: usize, bytes: usize) {
        self.held.fetch_add(records, Ordering::Relaxed);
        if bytes > 0 {
            self.held_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    pub(crate) fn sub_held(&self, records: usize, bytes: usize) {
        self.held.fetch_sub(records, Ordering::Relaxed);
        if bytes > 0 {
            self.held_bytes.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub(crate) fn held_bytes(&self) -> usize {
        self.held_bytes.load(Ordering::Relaxed)
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

    fn take_error(&self) -> Option<RuntimeError> {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        slot.take().map(|(e, _)| e)
    }
}

/// Live counters of a job, readable while it runs.
#[derive(Debug, Default)]
pub struct JobStats {
    consumed: AtomicU64,
    delivered: AtomicU64,
    filtered: AtomicU64,
    failed: AtomicU64,
    committed: Mutex<BTreeMap<TopicPartition, i64>>,
}

impl JobStats {
    pub(crate) fn add_consumed(&self, n: u64) {
        self.consumed.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn count(&self, how: Resolution, n: u64) {
        let counter = match how {
            Resolution::Delivered => &self.delivered,
            Resolution::Filtered => &self.filtered,
            Resolution::Failed => &self.failed,
        };
        counter.fetch_add(n, Ordering::Relaxed);
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

    /// Records the sink acknowledged as durable.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Records filtered out by an operator.
    pub fn filtered(&self) -> u64 {
        self.filtered.load(Ordering::Relaxed)
    }

    /// The offsets committed so far, per partition (the next offset to read).
    pub fn committed(&self) -> BTreeMap<TopicPartition, i64> {
        self.committed
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
            failed: self.failed.load(Ordering::Relaxed),
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
