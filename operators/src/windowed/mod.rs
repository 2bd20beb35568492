//! A keyed aggregation over event-time windows, as a sink in front of the sink its
//! results go to.
//!
//! Each record is added to the windows of its event time, under its key, per source
//! partition. The partition's watermark is its largest event time less the allowed
//! out-of-orderness; a window is emitted once the watermark passes its end plus the
//! allowed lateness. A record behind that for every window it belongs to is late: it is
//! counted ([`Windowed::late`]) and taken as done.
//!
//! **Delivery.** The first record of each (window, key) is held in state
//! ([`StateHold`]) until the window's result has been acknowledged by the result sink;
//! the window's later records are done at once. A partition's records arrive in offset
//! order, so that first record is the window's oldest: nothing is committed past it
//! while the window is open, and after a crash the partition is read again from the
//! oldest open window's first record, which brings back every record of every open
//! window. No record counts as in flight while its window is open, so a long window
//! over a busy partition never stalls backpressure; and a record costs no hold of its
//! own.
//!
//! **Progress.** [`Windowed::progress`] tells, per partition, through which window end
//! every result has been acknowledged; [`Windowed::finish`] closes every open window of
//! some partitions at the end of input. The analytics job publishes the first as its
//! watermark (see `eventbus_jobs::analytics`).
//!
//! Not yet: the job-wide watermark across partitions (this one is per partition), a
//! byte bound on the state, and a restart that keeps already-emitted windows closed:
//! after a crash a window whose result was acknowledged may be emitted again with only
//! the records read again; the analytics job's final stage drops those.

use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use eventbus_runtime::event_time::EventTime;
use eventbus_runtime::sink::AckOutcome;
use eventbus_runtime::{Ack, Record, Sink, SinkError, StateHold, TopicPartition};

use crate::partitioned::Partitioned;
use crate::window::{Aggregate, Window, Windows};

mod part;
use part::{Closed, Closing, HOLD_BYTES, Part, Slot, slot_bytes};

/// One window's result for one key.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowResult<K, O> {
    /// The key.
    pub key: K,
    /// The window.
    pub window: Window,
    /// The aggregate.
    pub value: O,
}

/// Settings of a [`Windowed`].
#[derive(Debug, Clone, Copy)]
pub struct WindowSettings {
    /// The windows.
    pub windows: Windows,
    /// How far behind the largest event time a record may arrive on time, ms.
    pub out_of_orderness_ms: i64,
    /// How long after its end a window still takes records, ms.
    pub lateness_ms: i64,
    /// Bound on the open windows' state, in bytes (keys, aggregates, held records): a
    /// record that would take it over stops the job with an error naming the bound,
    /// instead of growing until the process is killed.
    pub max_state_bytes: usize,
}

/// How far one partition's windows are done; see [`Windowed::progress`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProgress {
    /// The source partition.
    pub partition: TopicPartition,
    /// Every window of this partition ending at or before this has had its result
    /// acknowledged (or had no records); `i64::MIN` before the first record, `i64::MAX`
    /// once [`Windowed::finish`] closed them all.
    pub closed_through: i64,
    /// Records taken so far from this partition.
    pub records: u64,
    /// Offset of the last record taken; -1 before the first.
    pub last_offset: i64,
}

/// What adding a record did: the windows it closed (with the partition state's
/// generation), or nothing, the record being late.
enum Added<T, K, Acc> {
    Windows(u64, Closed<K, Acc>),
    Late(Record<T>, Ack),
}

/// Where late records go, when somewhere: a sink's `send`, boxed.
type LateOutput<T> = Arc<
    dyn Fn(
            Record<T>,
            Ack,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), SinkError>> + Send>>
        + Send
        + Sync,
>;

/// Takes a record's value apart into its key and what the aggregate adds.
type Split<T, K, In> = Box<dyn Fn(T) -> (K, In) + Send + Sync>;

/// The keyed windowed aggregation; see the module docs.
pub struct Windowed<T, K, A: Aggregate, S> {
    inner: Arc<Inner<T, K, A, S>>,
}

struct Inner<T, K, A: Aggregate, S> {
    settings: WindowSettings,
    event_time: EventTime<T>,
    split: Split<T, K, A::In>,
    agg: A,
    out: S,
    parts: Partitioned<TopicPartition, Part<K, A::Acc>>,
    generations: AtomicU64,
    late: AtomicU64,
    state_bytes: std::sync::atomic::AtomicUsize,
    late_logged: Mutex<Option<std::time::Instant>>,
    late_output: Option<LateOutput<T>>,
}

impl<T, K, A: Aggregate, S> Clone for Windowed<T, K, A, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T, K, A: Aggregate, S> std::fmt::Debug for Windowed<T, K, A, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Windowed")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl<T, K, A, S> Windowed<T, K, A, S>
where
    T: Send + Sync + 'static,
    K: Clone + Eq + Hash + Send + Sync + 'static,
    A: Aggregate,
    A::Acc: Sync,
    S: Sink<WindowResult<K, A::Out>>,
{
    /// Aggregates `value` of each record under `key` with `agg`, and sends each
    /// window's result to `out`.
    pub fn new(
        settings: WindowSettings,
        event_time: EventTime<T>,
        key: impl Fn(&T) -> K + Send + Sync + 'static,
        value: impl Fn(&T) -> A::In + Send + Sync + 'static,
        agg: A,
        out: S,
    ) -> Self {
        let split = move |t: T| (key(&t), value(&t));
        Self::by_value(settings, event_time, split, agg, out)
    }

    /// Like [`Windowed::new`], with one function that takes each record's value apart
    /// into its key and what the aggregate adds, so that neither has to be copied out of
    /// it. It is called only for a record that is not late (a late one goes to the late
    /// output whole).
    pub fn by_value(
        settings: WindowSettings,
        event_time: EventTime<T>,
        split: impl Fn(T) -> (K, A::In) + Send + Sync + 'static,
        agg: A,
        out: S,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                event_time,
                split: Box::new(split),
                agg,
                out,
                parts: Partitioned::new(),
                generations: AtomicU64::new(0),
                late: AtomicU64::new(0),
                state_bytes: std::sync::atomic::AtomicUsize::new(0),
                late_logged: Mutex::new(None),
                late_output: None,
            }),
        }
    }

    /// Sends late records to `out` (a side output) as well as counting them; each is
    /// done once `out` has it. Call before the job starts.
    ///
    /// # Panics
    /// When the aggregation is already shared (cloned), which a running job does.
    #[must_use]
    pub fn with_late_output<L: Sink<T> + Clone>(mut self, out: L) -> Self {
        #[allow(clippy::expect_used)]
        let inner = Arc::get_mut(&mut self.inner)
            .expect("with_late_output is called before the aggregation is shared");
        inner.late_output = Some(Arc::new(move |record, ack| {
            let out = out.clone();
            Box::pin(async move { out.send(record, ack).await })
        }));
        self
    }

    /// Records that came too late for every window they belong to (or had no event
    /// time), counted and taken as done.
    pub fn late(&self) -> u64 {
        self.inner.late.load(Ordering::Relaxed)
    }

    /// Adds a record to its windows; returns the windows the watermark closed, with the
    /// partition state's generation.
    fn add(&self, tp: &TopicPartition, record: Record<T>, ack: Ack) -> Added<T, K, A::Acc> {
        let time = self.inner.event_time.of(&record);
        let make = || Part::new(self.inner.generations.fetch_add(1, Ordering::Relaxed));
        self.inner
            .parts
            .with(tp, make, |part| self.add_to(part, time, record, ack))
    }

    fn add_to(
        &self,
        part: &mut Part<K, A::Acc>,
        time: Option<i64>,
        record: Record<T>,
        ack: Ack,
    ) -> Added<T, K, A::Acc> {
        let s = &self.inner.settings;
        part.records += 1;
        part.last_offset = part.last_offset.max(record.offset);
        let Some(t) = time else {
            self.count_late(&record);
            return Added::Late(record, ack);
        };
        let watermark = |p: &Part<K, A::Acc>| {
            p.max_event
                .map_or(i64::MIN, |m| m.saturating_sub(s.out_of_orderness_ms))
        };
        let before = watermark(part);
        let targets: Vec<Window> = s
            .windows
            .assign(t)
            .into_iter()
            .filter(|w| w.end.saturating_add(s.lateness_ms) > before)
            .collect();
        if targets.is_empty() {
            self.count_late(&record);
            return Added::Late(record, ack);
        }
        let (key, value) = (self.inner.split)(record.value);
        // The bound, checked with what this record adds at most: a new slot per window.
        let held = self.inner.state_bytes.load(Ordering::Relaxed);
        let adds = targets.len() * (HOLD_BYTES + slot_bytes::<K>() + std::mem::size_of::<A::Acc>());
        if held.saturating_add(adds) > s.max_state_bytes {
            let origin = ack.origin();
            ack.fail(SinkError::Delivery {
                sink: "windowed",
                origin,
                reason: format!(
                    "the open windows' state holds {held} bytes and this record would take it \
                     over its bound of {} bytes (max_state_bytes): raise the bound, or use \
                     shorter windows or fewer keys",
                    s.max_state_bytes
                ),
                class: eventbus_runtime::ErrorClass::Fatal,
            });
            return Added::Windows(part.generation, Vec::new());
        }
        let offset = ack.origin().offset;
        // Only a window's first record for a key is held; a record first in none of its
        // windows is done at once.
        let firsts = targets
            .iter()
            .filter(|w| part.open.get(w).is_none_or(|keys| !keys.contains_key(&key)))
            .count();
        let mut hold = if firsts == 0 {
            ack.done();
            None
        } else {
            Some(ack.into_state_hold())
        };
        let mut splits = firsts.saturating_sub(1);
        for w in targets {
            let keys = part.open.entry(w).or_default();
            // The key is cloned only for a new slot.
            if !keys.contains_key(&key) {
                let this = if splits > 0 {
                    splits -= 1;
                    hold.as_ref().map(StateHold::split)
                } else {
                    hold.take()
                };
                self.inner
                    .state_bytes
                    .fetch_add(slot_bytes::<K>() + HOLD_BYTES, Ordering::Relaxed);
                keys.insert(
                    key.clone(),
                    Slot {
                        acc: self.inner.agg.create(),
                        holds: this.into_iter().collect(),
                        newest: offset,
                    },
                );
            }
            let Some(slot) = keys.get_mut(&key) else {
                continue;
            };
            let before = self.inner.agg.size(&slot.acc);
            self.inner.agg.add(&mut slot.acc, &value);
            slot.newest = slot.newest.max(offset);
            let after = self.inner.agg.size(&slot.acc);
            self.inner
                .state_bytes
                .fetch_add(after.wrapping_sub(before), Ordering::Relaxed);
        }
        part.max_event = Some(part.max_event.map_or(t, |m| m.max(t)));
        let now = watermark(part);
        let due: Vec<Window> = part
            .open
            .keys()
            .take_while(|w| w.end.saturating_add(s.lateness_ms) <= now)
            .copied()
            .collect();
        let closed = part.close(due);
        self.forget(closed.iter().map(|c| (&c.acc, c.holds.len())));
        Added::Windows(part.generation, closed)
    }

    /// Takes slots that left the open windows off the state's byte count.
    fn forget<'a>(&self, slots: impl Iterator<Item = (&'a A::Acc, usize)>)
    where
        A::Acc: 'a,
    {
        let bytes: usize = slots
            .map(|(acc, holds)| self.inner.agg.size(acc) + holds * HOLD_BYTES + slot_bytes::<K>())
            .sum();
        let _ = self
            .inner
            .state_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(bytes))
            });
    }

    /// Counts a late record, and says so in the log at most every 10 s.
    fn count_late(&self, record: &Record<T>) {
        let n = self.inner.late.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::counter!("eventbus_late_records_total", "topic" => record.topic.to_string())
            .increment(1);
        let mut logged = self
            .inner
            .late_logged
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if logged.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(10)) {
            *logged = Some(std::time::Instant::now());
            tracing::warn!(
                late_total = n,
                topic = %record.topic,
                partition = record.partition,
                offset = record.offset,
                "a record came too late for every window it belongs to (or has no event \
                 time): counted, not aggregated"
            );
        }
    }

    /// About how many bytes the open windows hold (keys, aggregates, held records).
    pub fn state_bytes(&self) -> usize {
        self.inner.state_bytes.load(Ordering::Relaxed)
    }

    /// Per assigned partition (and any that has had a record): through which window end
    /// every result is acknowledged. A consumer of the results that has this from every source
    /// partition has every result of the windows ending there.
    pub fn progress(&self) -> Vec<PartitionProgress> {
        let s = &self.inner.settings;
        self.inner.parts.map_all(|tp, part| {
            let closed_through = if part.finished && part.pending.is_empty() {
                i64::MAX
            } else {
                let watermark = part.max_event.map_or(i64::MIN, |m| {
                    m.saturating_sub(s.out_of_orderness_ms)
                        .saturating_sub(s.lateness_ms)
                });
                let unacked = part.pending.keys().next().map_or(i64::MAX, |e| e - 1);
                watermark.min(unacked)
            };
            PartitionProgress {
                partition: tp.clone(),
                closed_through,
                records: part.records,
                last_offset: part.last_offset,
            }
        })
    }

    /// The end of input for `partitions`: closes every open window, sends the results,
    /// and returns once the result sink has acknowledged them all. Their
    /// [`PartitionProgress::closed_through`] is then `i64::MAX`.
    ///
    /// # Errors
    /// The result sink refused a result.
    pub async fn finish(&self, partitions: &[TopicPartition]) -> Result<(), SinkError> {
        for tp in partitions {
            let make = || Part::new(self.inner.generations.fetch_add(1, Ordering::Relaxed));
            let closed = self.inner.parts.with(tp, make, |part| {
                part.finished = true;
                let all: Vec<Window> = part.open.keys().copied().collect();
                (part.generation, part.close(all))
            });
            self.forget(closed.1.iter().map(|c| (&c.acc, c.holds.len())));
            self.emit(tp, closed.0, closed.1).await?;
        }
        loop {
            let waiting = partitions.iter().any(|tp| {
                self.inner
                    .parts
                    .with_existing(tp, |p| !p.pending.is_empty())
                    .unwrap_or(false)
            });
            if !waiting {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Sends the results of windows that closed together; each window's holds go once
    /// the result sink has acknowledged its result. One task waits for all of them.
    async fn emit(
        &self,
        tp: &TopicPartition,
        generation: u64,
        closed: Closed<K, A::Acc>,
    ) -> Result<(), SinkError> {
        if closed.is_empty() {
            return Ok(());
        }
        metrics::counter!("eventbus_windows_emitted_total", "topic" => tp.topic.to_string())
            .increment(closed.len() as u64);
        let agg = &self.inner.agg;
        let results = closed.into_iter().map(
            |Closing {
                 window,
                 key,
                 acc,
                 holds,
                 newest,
             }| (window, key, agg.finish(&acc), newest, holds),
        );
        let (sent, failed) = send_results(&self.inner.out, tp, results).await;
        let this = self.clone();
        let tp = tp.clone();
        tokio::spawn(async move {
            for (window, outcome, holds) in sent {
                let result = outcome.await;
                this.inner.parts.with_existing(&tp, |part| {
                    if part.generation == generation
                        && let Some(n) = part.pending.get_mut(&window.end)
                    {
                        *n -= 1;
                        if *n == 0 {
                            part.pending.remove(&window.end);
                        }
                    }
                });
                settle(result, holds);
            }
        });
        failed.map_or(Ok(()), Err)
    }
}

/// One window's result on its way: the window, the key, the value, the offset of the
/// window's newest record (the result record's offset) and the holds it releases.
pub(crate) type Outgoing<K, O> = (Window, K, O, i64, Vec<StateHold>);

/// Sends `results` to `out` in turn, each as a record of the source partition `tp`,
/// stopping at the first refusal. Returns what was sent (each window, the outcome of its
/// delivery and its holds, for [`settle`]) and the refusal, if any; the holds of what was
/// not sent are dropped with it.
pub(crate) async fn send_results<K, O, S: Sink<WindowResult<K, O>>>(
    out: &S,
    tp: &TopicPartition,
    results: impl IntoIterator<Item = Outgoing<K, O>>,
) -> (Vec<(Window, AckOutcome, Vec<StateHold>)>, Option<SinkError>) {
    let mut sent = Vec::new();
    for (window, key, value, offset, holds) in results {
        let result = WindowResult { key, window, value };
        let record = Record::new(tp.topic.clone(), tp.partition, offset, result);
        let (ack, outcome) = Ack::channel(record.origin());
        if let Err(e) = out.send(record, ack).await {
            return (sent, Some(e));
        }
        sent.push((window, outcome, holds));
    }
    (sent, None)
}

pub(crate) fn settle(
    delivered: Result<Result<(), SinkError>, tokio::sync::oneshot::error::RecvError>,
    holds: Vec<StateHold>,
) {
    match delivered {
        Ok(Ok(())) => holds.into_iter().for_each(StateHold::release),
        Ok(Err(e)) => {
            let mut holds = holds.into_iter();
            if let Some(first) = holds.next() {
                first.fail(e);
            }
            holds.for_each(StateHold::abandon);
        }
        Err(_) => holds.into_iter().for_each(StateHold::abandon),
    }
}

impl<T, K, A, S> Sink<T> for Windowed<T, K, A, S>
where
    T: Send + Sync + 'static,
    K: Clone + Eq + Hash + Send + Sync + 'static,
    A: Aggregate,
    A::Acc: Sync,
    A::Out: Send,
    S: Sink<WindowResult<K, A::Out>>,
{
    async fn send(&self, record: Record<T>, ack: Ack) -> Result<(), SinkError> {
        let tp = record.topic_partition();
        let (generation, closed) = match self.add(&tp, record, ack) {
            Added::Windows(generation, closed) => (generation, closed),
            Added::Late(record, ack) => {
                return match &self.inner.late_output {
                    Some(out) => out(record, ack).await,
                    None => {
                        ack.done();
                        Ok(())
                    }
                };
            }
        };
        self.emit(&tp, generation, closed).await
    }

    async fn flush(&self) -> Result<(), SinkError> {
        self.inner.out.flush().await
    }

    /// Assigned partitions are known before their first record, so
    /// [`Windowed::progress`] covers an empty one too.
    fn partitions_assigned(&self, partitions: &[TopicPartition]) {
        self.inner.parts.insert_missing(partitions, || {
            Part::new(self.inner.generations.fetch_add(1, Ordering::Relaxed))
        });
    }

    /// Open windows of revoked partitions are given up: their records were never
    /// committed past, and the partitions' next owner reads them again.
    async fn partitions_revoked(&self, partitions: &[TopicPartition]) -> Result<(), SinkError> {
        let dropped = self.inner.parts.remove(partitions);
        for part in dropped {
            self.forget(
                part.open
                    .values()
                    .flat_map(|keys| keys.values().map(|slot| (&slot.acc, slot.holds.len()))),
            );
            for (_, keys) in part.open {
                for (_, slot) in keys {
                    slot.holds.into_iter().for_each(StateHold::abandon);
                }
            }
        }
        self.inner.out.partitions_revoked(partitions).await
    }
}
