//! The typed job builder and the executor that runs a built job.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use crate::Classify;
use crate::config::RuntimeConfig;
use crate::dead_letter::{DeadLetterQueue, Letters};
use crate::error::RuntimeError;
use crate::executor::{Chain, Dispatch, JobShared, JobStats};
use crate::operator::{Filter, Identity, Map, MapRecord, Operator, Then, TryMap};
use crate::record::Record;
use crate::sink::Sink;
use crate::source::Source;

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
        self.shared.stats().clone()
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
    ) -> Result<crate::JobReport, RuntimeError> {
        let shared = self.shared;
        crate::health::register(shared.name(), shared.stats());
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
        shared.stats().set_finished();
        if let Some(e) = shared.take_error() {
            return Err(e);
        }
        source_result?;
        flush_result?;
        Ok(shared.stats().report())
    }
}
