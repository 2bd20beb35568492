//! A keyed aggregation over session windows, as a sink in front of the sink its results
//! go to: per key, a session is a run of event times no further apart than the gap
//! (`window::Sessions`); it closes once the partition's watermark passes its end (its
//! last event time plus the gap) plus the allowed lateness.
//!
//! Delivery is [`crate::windowed::Windowed`]'s: each record in an open session is a
//! [`StateHold`], released when the session's result is acknowledged; a revoke abandons
//! the open sessions; the state is bound in bytes. A record whose own session would
//! already be closed (`t + gap + lateness <= watermark`) is late: counted, and done.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use eventbus_runtime::event_time::EventTime;
use eventbus_runtime::{Ack, ErrorClass, Record, Sink, SinkError, StateHold, TopicPartition};

use crate::partitioned::Partitioned;
use crate::window::{Aggregate, Sessions, Window};
use crate::windowed::{WindowResult, send_results, settle};

/// Settings of a [`SessionWindowed`].
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    /// A key's session ends after this long without an event, ms.
    pub gap_ms: i64,
    /// How far behind the largest event time a record may arrive on time, ms.
    pub out_of_orderness_ms: i64,
    /// How long after its end a session still takes records, ms.
    pub lateness_ms: i64,
    /// Bound on the open sessions' state, bytes.
    pub max_state_bytes: usize,
}

/// One key's sessions and their state.
struct KeyState<Acc> {
    sessions: Sessions,
    state: HashMap<Window, (Acc, Vec<StateHold>)>,
}

struct Part<K, Acc> {
    max_event: Option<i64>,
    keys: HashMap<K, KeyState<Acc>>,
    /// The earliest end among open sessions: no scan for closed ones before it.
    next_end: Option<i64>,
}

type Field<T, U> = Box<dyn Fn(&T) -> U + Send + Sync>;

/// The keyed session aggregation; see the module docs.
pub struct SessionWindowed<T, K, A: Aggregate, S> {
    inner: Arc<Inner<T, K, A, S>>,
}

struct Inner<T, K, A: Aggregate, S> {
    settings: SessionSettings,
    event_time: EventTime<T>,
    key: Field<T, K>,
    value: Field<T, A::In>,
    agg: A,
    out: S,
    parts: Partitioned<TopicPartition, Part<K, A::Acc>>,
    late: AtomicU64,
    state_bytes: AtomicUsize,
}

impl<T, K, A: Aggregate, S> Clone for SessionWindowed<T, K, A, S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

const HOLD_BYTES: usize = std::mem::size_of::<StateHold>();

type Closed<K, Acc> = Vec<(Window, K, Acc, Vec<StateHold>)>;

impl<T, K, A, S> SessionWindowed<T, K, A, S>
where
    T: Send + Sync + 'static,
    K: Clone + Eq + Hash + Send + Sync + 'static,
    A: Aggregate,
    A::Acc: Sync,
    S: Sink<WindowResult<K, A::Out>>,
{
    /// Aggregates `value` of each record under `key` in its key's sessions with `agg`,
    /// and sends each closed session's result to `out`.
    pub fn new(
        settings: SessionSettings,
        event_time: EventTime<T>,
        key: impl Fn(&T) -> K + Send + Sync + 'static,
        value: impl Fn(&T) -> A::In + Send + Sync + 'static,
        agg: A,
        out: S,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                event_time,
                key: Box::new(key),
                value: Box::new(value),
                agg,
                out,
                parts: Partitioned::new(),
                late: AtomicU64::new(0),
                state_bytes: AtomicUsize::new(0),
            }),
        }
    }

    /// Records too late for their session (or without an event time), counted and done.
    pub fn late(&self) -> u64 {
        self.inner.late.load(Ordering::Relaxed)
    }

    fn bytes(&self, acc: &A::Acc, holds: usize) -> usize {
        self.inner.agg.size(acc) + holds * HOLD_BYTES + std::mem::size_of::<K>() + 48
    }

    /// Adds a record; returns the sessions the watermark closed.
    fn add(&self, tp: &TopicPartition, record: &Record<T>, ack: Ack) -> Closed<K, A::Acc> {
        let make = || Part {
            max_event: None,
            keys: HashMap::new(),
            next_end: None,
        };
        self.inner
            .parts
            .with(tp, make, |part| self.add_to(part, record, ack))
    }

    fn add_to(
        &self,
        part: &mut Part<K, A::Acc>,
        record: &Record<T>,
        ack: Ack,
    ) -> Closed<K, A::Acc> {
        let s = self.inner.settings;
        let gap = s.gap_ms.max(1);
        let watermark = |p: &Part<K, A::Acc>| {
            p.max_event
                .map_or(i64::MIN, |m| m.saturating_sub(s.out_of_orderness_ms))
        };
        let Some(t) = self.inner.event_time.of(record) else {
            self.inner.late.fetch_add(1, Ordering::Relaxed);
            ack.done();
            return Vec::new();
        };
        if t.saturating_add(gap).saturating_add(s.lateness_ms) <= watermark(part) {
            self.inner.late.fetch_add(1, Ordering::Relaxed);
            ack.done();
            return Vec::new();
        }
        let held = self.inner.state_bytes.load(Ordering::Relaxed);
        let adds = HOLD_BYTES + std::mem::size_of::<K>() + 48 + std::mem::size_of::<A::Acc>();
        if held.saturating_add(adds) > s.max_state_bytes {
            let origin = ack.origin();
            ack.fail(SinkError::Delivery {
                sink: "sessions",
                origin,
                reason: format!(
                    "the open sessions' state holds {held} bytes and this record would take \
                     it over its bound of {} bytes (max_state_bytes)",
                    s.max_state_bytes
                ),
                class: ErrorClass::Fatal,
            });
            return Vec::new();
        }
        let key = (self.inner.key)(&record.value);
        let value = (self.inner.value)(&record.value);
        let ks = part.keys.entry(key).or_insert_with(|| KeyState {
            sessions: Sessions::new(gap),
            state: HashMap::new(),
        });
        let (session, merged) = ks.sessions.add(t);
        let mut before = 0;
        let mut slot = (self.inner.agg.create(), Vec::new());
        for w in merged.into_iter().chain(std::iter::once(session)) {
            if let Some((acc, holds)) = ks.state.remove(&w) {
                before += self.bytes(&acc, holds.len());
                slot.0 = self.inner.agg.merge(slot.0, acc);
                slot.1.extend(holds);
            }
        }
        self.inner.agg.add(&mut slot.0, &value);
        slot.1.push(ack.into_state_hold());
        let after = self.bytes(&slot.0, slot.1.len());
        ks.state.insert(session, slot);
        self.inner
            .state_bytes
            .fetch_add(after.wrapping_sub(before), Ordering::Relaxed);
        part.next_end = Some(part.next_end.map_or(session.end, |e| e.min(session.end)));
        part.max_event = Some(part.max_event.map_or(t, |m| m.max(t)));
        let now = watermark(part).saturating_sub(s.lateness_ms);
        if part.next_end.is_none_or(|e| e > now) {
            return Vec::new();
        }
        let mut closed = Vec::new();
        let mut next_end = None::<i64>;
        part.keys.retain(|key, ks| {
            for w in ks.sessions.close(now) {
                if let Some((acc, holds)) = ks.state.remove(&w) {
                    closed.push((w, key.clone(), acc, holds));
                }
            }
            if let Some(w) = ks.sessions.open().next() {
                next_end = Some(next_end.map_or(w.end, |e| e.min(w.end)));
            }
            !ks.state.is_empty()
        });
        part.next_end = next_end;
        let gone: usize = closed
            .iter()
            .map(|(_, _, acc, holds)| self.bytes(acc, holds.len()))
            .sum();
        let _ = self
            .inner
            .state_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_sub(gone))
            });
        closed
    }

    /// Sends the results of sessions that closed together; one task waits for them
    /// and releases each one's holds once it is acknowledged.
    async fn emit(&self, tp: &TopicPartition, closed: Closed<K, A::Acc>) -> Result<(), SinkError> {
        if closed.is_empty() {
            return Ok(());
        }
        let agg = &self.inner.agg;
        let results = closed.into_iter().map(|(window, key, acc, holds)| {
            let newest = holds.iter().map(|h| h.origin().offset).max().unwrap_or(-1);
            (window, key, agg.finish(&acc), newest, holds)
        });
        let (sent, failed) = send_results(&self.inner.out, tp, results).await;
        tokio::spawn(async move {
            for (_, outcome, holds) in sent {
                settle(outcome.await, holds);
            }
        });
        failed.map_or(Ok(()), Err)
    }
}

impl<T, K, A, S> Sink<T> for SessionWindowed<T, K, A, S>
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
        let closed = self.add(&tp, &record, ack);
        self.emit(&tp, closed).await
    }

    async fn flush(&self) -> Result<(), SinkError> {
        self.inner.out.flush().await
    }

    /// Open sessions of revoked partitions are given up: the next owner reads their
    /// records again.
    async fn partitions_revoked(&self, partitions: &[TopicPartition]) -> Result<(), SinkError> {
        let dropped = self.inner.parts.remove(partitions);
        for part in dropped {
            for ks in part.keys.into_values() {
                for (acc, holds) in ks.state.into_values() {
                    let gone = self.bytes(&acc, holds.len());
                    let _ = self.inner.state_bytes.fetch_update(
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                        |b| Some(b.saturating_sub(gone)),
                    );
                    holds.into_iter().for_each(StateHold::abandon);
                }
            }
        }
        self.inner.out.partitions_revoked(partitions).await
    }
}
