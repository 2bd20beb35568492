//! An in-memory source and sink, so a job author can test a chain without any broker.
//!
//! ```
//! use eventbus_runtime::{Job, memory::{CollectSink, MemorySource}, Record};
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let sink = CollectSink::new();
//! let report = Job::builder("double")
//!     .source(MemorySource::new((0..10).map(|i| Record::new("in", 0, i, i))))
//!     .filter(|r| r.value % 2 == 0)
//!     .map(|v: i64| v * 2)
//!     .sink(sink.clone())
//!     .build()?
//!     .run(std::future::pending())
//!     .await?;
//! assert_eq!(sink.values(), vec![0, 4, 8, 12, 16]);
//! assert_eq!(report.committed_total(), 10);
//! # Ok::<_, eventbus_runtime::RuntimeError>(()) }).unwrap();
//! ```

use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{RuntimeError, SinkError};
use crate::executor::Dispatch;
use crate::record::{Record, TopicPartition};
use crate::sink::{Ack, Sink};
use crate::source::Source;

/// Records per batch [`MemorySource`] hands over at most.
const BATCH: usize = 1024;

/// Delivers a fixed list of records, then ends once every one is settled. Records keep
/// their partitions and, within each, the order given.
#[derive(Debug)]
pub struct MemorySource<T> {
    records: Vec<Record<T>>,
}

impl<T> MemorySource<T> {
    /// A source over these records.
    pub fn new(records: impl IntoIterator<Item = Record<T>>) -> Self {
        Self {
            records: records.into_iter().collect(),
        }
    }
}

impl<T: Send + 'static> Source for MemorySource<T> {
    type Item = T;

    async fn run(self, dispatch: Dispatch<T>) -> Result<(), RuntimeError> {
        // Records are handed over front to back, each run of consecutive records of one
        // partition in batches of at most [`BATCH`] (so each partition's order holds),
        // and the source yields after each batch, as a Kafka source hands over poll
        // batches: the partition tasks take a batch while the next is built, so batches
        // are small allocations used again, not one copy of the whole input at once.
        let mut records = self.records.into_iter().peekable();
        let mut order: Vec<TopicPartition> = Vec::new();
        while let Some(first) = records.next() {
            if dispatch.is_stopping() {
                break;
            }
            let tp = first.topic_partition();
            let mut batch = Vec::with_capacity(BATCH.min(records.len() + 1));
            batch.push(first);
            while batch.len() < BATCH
                && let Some(next) = records.next_if(|r| {
                    r.partition == tp.partition
                        && (Arc::ptr_eq(&r.topic, &tp.topic) || r.topic == tp.topic)
                })
            {
                batch.push(next);
            }
            dispatch.deliver(&tp, batch);
            if !order.contains(&tp) {
                order.push(tp);
            }
            tokio::task::yield_now().await;
        }
        let finals = dispatch.revoke(&order).await;
        dispatch.committed(&finals);
        Ok(())
    }
}

/// Collects every record it receives. Acknowledges at once, or, with
/// [`CollectSink::ack_on_flush_reversed`], holds the acks and settles them in reverse
/// order on flush, to exercise out-of-order acknowledgement.
#[derive(Debug, Clone)]
pub struct CollectSink<T> {
    inner: Arc<Mutex<Collected<T>>>,
    hold_acks: bool,
}

#[derive(Debug)]
struct Collected<T> {
    records: Vec<Record<T>>,
    held: Vec<Ack>,
}

impl<T> Default for CollectSink<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> CollectSink<T> {
    /// A sink that acknowledges every record at once.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Collected {
                records: Vec::new(),
                held: Vec::new(),
            })),
            hold_acks: false,
        }
    }

    /// A sink that holds acknowledgements until flush, then settles them last-first.
    pub fn ack_on_flush_reversed() -> Self {
        Self {
            hold_acks: true,
            ..Self::new()
        }
    }

    fn lock(&self) -> MutexGuard<'_, Collected<T>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The records received so far, in arrival order.
    pub fn records(&self) -> Vec<Record<T>>
    where
        T: Clone,
    {
        self.lock().records.clone()
    }

    /// The values received so far, in arrival order.
    pub fn values(&self) -> Vec<T>
    where
        T: Clone,
    {
        self.lock()
            .records
            .iter()
            .map(|r| r.value.clone())
            .collect()
    }
}

impl<T: Send + 'static> Sink<T> for CollectSink<T> {
    async fn send(&self, record: Record<T>, ack: Ack) -> Result<(), SinkError> {
        let mut c = self.lock();
        c.records.push(record);
        if self.hold_acks {
            c.held.push(ack);
        } else {
            drop(c);
            ack.done();
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), SinkError> {
        let held = std::mem::take(&mut self.lock().held);
        for ack in held.into_iter().rev() {
            ack.done();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{ErrorClass, ProcessError};
    use crate::{Classify, Job};

    fn records(partitions: i32, per_partition: i64) -> Vec<Record<i64>> {
        (0..per_partition)
            .flat_map(|o| (0..partitions).map(move |p| Record::new("in", p, o, o)))
            .collect()
    }

    #[tokio::test]
    async fn a_typed_chain_runs_without_a_broker_and_keeps_partition_order() {
        let sink = CollectSink::new();
        let report = Job::builder("t")
            .source(MemorySource::new(records(3, 1000)))
            .map(|v: i64| v.to_string())
            .filter(|r| !r.value.ends_with('7'))
            .try_map(|s: String| s.parse::<u64>().map_err(ProcessError::permanent))
            .sink(sink.clone())
            .build()
            .expect("valid job")
            .run(std::future::pending())
            .await
            .expect("job succeeds");
        assert_eq!(report.consumed, 3000);
        assert_eq!(report.filtered, 300);
        assert_eq!(report.delivered, 2700);
        for p in 0..3 {
            let got: Vec<u64> = sink
                .records()
                .into_iter()
                .filter(|r| r.partition == p)
                .map(|r| r.value)
                .collect();
            let want: Vec<u64> = (0..1000).filter(|v| v % 10 != 7).collect();
            assert_eq!(got, want, "partition {p} out of order");
            assert_eq!(report.committed[&TopicPartition::new("in", p)], 1000);
        }
    }

    #[tokio::test]
    async fn acks_out_of_order_still_commit_the_whole_prefix() {
        let sink = CollectSink::ack_on_flush_reversed();
        let report = Job::builder("t")
            .source(MemorySource::new(records(2, 50)))
            .sink(sink.clone())
            .build()
            .expect("valid job")
            .run(std::future::pending())
            .await
            .expect("job succeeds");
        assert_eq!(report.delivered, 100);
        assert_eq!(report.committed_total(), 100);
    }

    /// Runs 100 records of one partition through a map that fails record 40 into
    /// `sink`: the job's error and the offset it committed.
    async fn failing_at_40<K: Sink<i64>>(sink: K) -> (RuntimeError, Option<i64>) {
        let job = Job::builder("t")
            .source(MemorySource::new(records(1, 100)))
            .try_map(|v: i64| {
                if v == 40 {
                    Err(ProcessError::transient("downstream said no"))
                } else {
                    Ok(v)
                }
            })
            .sink(sink)
            .build()
            .expect("valid job");
        let stats = job.stats();
        let err = job
            .run(std::future::pending())
            .await
            .expect_err("job fails");
        let committed = stats
            .committed()
            .get(&TopicPartition::new("in", 0))
            .copied();
        (err, committed)
    }

    #[tokio::test]
    async fn a_failing_record_stops_the_job_and_is_never_committed_past() {
        let sink = CollectSink::new();
        let (err, committed) = failing_at_40(sink.clone()).await;
        assert_eq!(
            committed,
            Some(40),
            "committed up to the failed record, not past it"
        );
        assert_eq!(err.class(), ErrorClass::Transient);
        assert!(err.to_string().contains("offset 40"), "{err}");
        assert_eq!(sink.values(), (0..40).collect::<Vec<_>>());
    }

    /// A collecting sink that takes runs.
    struct Runs(CollectSink<i64>);
    impl Sink<i64> for Runs {
        const TAKES_RUNS: bool = true;

        async fn send(&self, record: Record<i64>, ack: Ack) -> Result<(), SinkError> {
            self.0.send(record, ack).await
        }
    }

    #[tokio::test]
    async fn the_records_before_an_operator_failure_reach_a_sink_that_takes_runs() {
        let sink = CollectSink::new();
        let (_, committed) = failing_at_40(Runs(sink.clone())).await;
        assert_eq!(sink.values(), (0..40).collect::<Vec<_>>());
        assert_eq!(committed, Some(40));
    }

    /// Fails record 40 (stopping the job) and keeps the highest offset it was given. It
    /// takes runs, through the default `send_batch`.
    struct FailsAt40(Arc<std::sync::atomic::AtomicI64>);
    impl Sink<i64> for FailsAt40 {
        const TAKES_RUNS: bool = true;

        async fn send(&self, record: Record<i64>, ack: Ack) -> Result<(), SinkError> {
            self.0
                .fetch_max(record.offset, std::sync::atomic::Ordering::Relaxed);
            if record.offset == 40 {
                let origin = ack.origin();
                ack.fail(SinkError::Delivery {
                    sink: "test",
                    origin,
                    reason: "refused".into(),
                    class: ErrorClass::Fatal,
                });
            } else {
                ack.done();
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_failure_at_the_sink_stops_the_rest_of_its_batch() {
        // MemorySource hands over 100 records in one batch, and the sink takes them in
        // runs: it must see none after the failed one, as it would one by one.
        let highest = Arc::new(std::sync::atomic::AtomicI64::new(-1));
        let job = Job::builder("t")
            .source(MemorySource::new(records(1, 100)))
            .sink(FailsAt40(highest.clone()))
            .build()
            .expect("valid job");
        let stats = job.stats();
        let err = job
            .run(std::future::pending())
            .await
            .expect_err("job fails");
        assert!(err.to_string().contains("offset 40"), "{err}");
        assert_eq!(highest.load(std::sync::atomic::Ordering::Relaxed), 40);
        assert_eq!(
            stats.committed().get(&TopicPartition::new("in", 0)),
            Some(&40),
            "committed up to the failed record, not past it"
        );
    }

    struct DroppingSink;
    impl Sink<i64> for DroppingSink {
        async fn send(&self, _record: Record<i64>, ack: Ack) -> Result<(), SinkError> {
            drop(ack);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_dropped_ack_stops_the_job_naming_the_record() {
        let err = Job::builder("t")
            .source(MemorySource::new(records(1, 5)))
            .sink(DroppingSink)
            .build()
            .expect("valid job")
            .run(std::future::pending())
            .await
            .expect_err("job fails");
        assert!(err.to_string().contains("offset 0"), "{err}");
        assert_eq!(err.class(), ErrorClass::Fatal);
    }
}
