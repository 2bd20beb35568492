//! Partition tasks: each assigned partition's records, in order, through the operator
//! chain into the sink; and where records that fail go.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::dispatch::{BoxFuture, Pipeline};
use super::partition::{Collected, FailureHook, PartitionState};
use crate::dead_letter::{DeadLetter, DeadLetterQueue, Letters, now_ms, sink_failure};
use crate::error::{Classify, ErrorClass, RuntimeError, SinkError};
use crate::operator::{Operator, Outcome};
use crate::record::{Record, TopicPartition};
use crate::sink::{Ack, Resolution, Sink, SinkFailure};

/// A job's operator chain and sink, as the dispatcher runs them.
pub(crate) struct Chain<T, Op, K> {
    pub(crate) op: Op,
    pub(crate) sink: K,
    pub(crate) letters: Option<Letters<T>>,
}

impl<T, Op, K> Pipeline<T> for Chain<T, Op, K>
where
    T: Send + 'static,
    Op: Operator<T>,
    K: Sink<Op::Out>,
{
    fn spawn_partition(
        self: Arc<Self>,
        runtime: &Handle,
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

    fn assigned(&self, partitions: &[TopicPartition]) {
        self.sink.partitions_assigned(partitions);
    }

    fn failure_hook(&self) -> Option<Arc<dyn FailureHook>> {
        self.letters.as_ref().map(|l| {
            Arc::new(QueueHook {
                queue: l.queue.clone(),
                runtime: Handle::current(),
            }) as Arc<dyn FailureHook>
        })
    }
}

/// The most records handed to a sink in one run: enough to find the sink's partition
/// state once for many records, few enough that the run is still in the core's cache
/// when the sink reads it.
const RUN: usize = 64;

/// Runs one partition: records in order through the chain into the sink, one at a time
/// or, to a sink that [`Sink::TAKES_RUNS`], in runs. Woken once per batch the dispatcher
/// hands over.
async fn run_partition<T, Op, K>(
    chain: Arc<Chain<T, Op, K>>,
    part: Arc<PartitionState>,
    mut rx: mpsc::UnboundedReceiver<Vec<Record<T>>>,
) where
    T: Send + 'static,
    Op: Operator<T>,
    K: Sink<Op::Out>,
{
    let mut collected = Collected::default();
    let mut out = Vec::new();
    while let Some(batch) = rx.recv().await {
        for record in batch {
            let offset = record.offset;
            if part.is_revoked() || part.job().has_failed() {
                // Left pending-then-failed so the drain sees it settled; never committed.
                part.resolve(offset, Resolution::Failed);
                continue;
            }
            // A replay for another consumer group is that group's business.
            if let Some(group) = part.job().group()
                && record.headers.is_replay_for_another_group(group)
            {
                collected.push(offset, Resolution::Filtered);
                continue;
            }
            // With a dead-letter queue, the original travels with the record (its bytes
            // are shared, not copied) until the record is settled; unless the sink hands
            // failed records back and nothing before it changes them.
            let original = match &chain.letters {
                Some(l) if !(Op::PASSES_THROUGH && K::GIVES_BACK) => Some((l.original)(&record)),
                _ => None,
            };
            match chain.op.apply(record) {
                Outcome::Emit(record) => {
                    let ack = Ack::new(part.clone(), offset, original.map(Box::new));
                    if K::TAKES_RUNS {
                        out.push((record, ack));
                        if out.len() == RUN {
                            deliver(&chain.sink, &part, &mut collected, &mut out).await;
                        }
                    } else {
                        let inner = std::pin::pin!(chain.sink.send(record, ack));
                        let send = Collecting {
                            part: &part,
                            collected: &mut collected,
                            inner,
                        };
                        if let Err(e) = send.await {
                            part.job().fail(e.into());
                        }
                    }
                }
                Outcome::Filtered => collected.push(offset, Resolution::Filtered),
                Outcome::Failed { origin, error } => match (&chain.letters, original) {
                    (Some(letters), Some(record)) if error.class() != ErrorClass::Fatal => {
                        let letter = DeadLetter {
                            record,
                            class: error.class(),
                            stage: "operator".to_owned(),
                            error_type: error.type_name().to_owned(),
                            message: error.to_string(),
                            attempts: 1,
                            first_failure_ms: now_ms(),
                            job: part.job().name().to_owned(),
                            group: part.job().group().map(str::to_owned),
                        };
                        crate::telemetry::dead_lettered(&letter);
                        let ack = Ack::new(part.clone(), offset, None);
                        letters.queue.send(letter, ack).await;
                    }
                    _ => {
                        // The records before it reach the sink first, as they would one
                        // by one: the failure stops what comes after it, not before.
                        deliver(&chain.sink, &part, &mut collected, &mut out).await;
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
        deliver(&chain.sink, &part, &mut collected, &mut out).await;
        // The batch's settlements, under one lock.
        part.apply(&mut collected);
    }
}

/// Hands the records `out` holds to the sink in one run, collecting what it settles
/// right away. A sink error fails the job; what it left untaken is dropped unsettled,
/// never committed.
async fn deliver<T, K: Sink<T>>(
    sink: &K,
    part: &PartitionState,
    collected: &mut Collected,
    out: &mut Vec<(Record<T>, Ack)>,
) where
    T: Send,
{
    if out.is_empty() {
        return;
    }
    let result = {
        let inner = std::pin::pin!(sink.send_batch(out));
        Collecting {
            part,
            collected,
            inner,
        }
        .await
    };
    out.clear();
    if let Err(e) = result {
        part.job().fail(e.into());
    }
}

/// Polls a sink's `send` or `send_batch` with this thread collecting the partition's
/// settlements, so acks the sink settles right away cost no lock of their own.
struct Collecting<'a, F> {
    part: &'a PartitionState,
    collected: &'a mut Collected,
    inner: Pin<&'a mut F>,
}

impl<F: Future> Future for Collecting<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let inner = &mut this.inner;
        this.collected.during(this.part, || inner.as_mut().poll(cx))
    }
}

/// Sends records that fail at the sink to the job's dead-letter queue. The ack may fail
/// on a librdkafka thread, so the letter is written from the job's runtime.
struct QueueHook {
    queue: Arc<dyn DeadLetterQueue>,
    runtime: Handle,
}

impl FailureHook for QueueHook {
    fn sink_failed(
        &self,
        part: Arc<PartitionState>,
        offset: i64,
        original: Record<Bytes>,
        failure: SinkFailure,
    ) {
        let (stage, message, class) = sink_failure(&failure.error);
        let letter = DeadLetter {
            record: original,
            class,
            stage,
            error_type: "eventbus_runtime::error::SinkError".to_owned(),
            message,
            attempts: failure.attempts,
            first_failure_ms: failure.first_failure_ms.unwrap_or_else(now_ms),
            job: part.job().name().to_owned(),
            group: part.job().group().map(str::to_owned),
        };
        crate::telemetry::dead_lettered(&letter);
        let ack = Ack::new(part, offset, None);
        let queue = self.queue.clone();
        self.runtime
            .spawn(async move { queue.send(letter, ack).await });
    }
}
