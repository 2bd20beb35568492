//! The final stage: merges the partials of each fleet-minute from every source partition
//! and emits it once every source partition's watermark has passed the minute.
//!
//! Per partials partition `r`:
//! - a partial is held ([`StateHold`]) until its fleet-minute's result is delivered and
//!   the progress record that says so is delivered too;
//! - minutes are released in order, so whatever the group has committed past, the
//!   progress topic's partition `r` says was emitted;
//! - on the first record after an assignment the progress is read back, and partials of
//!   minutes it covers are dropped: they are copies a restarted first stage sent again,
//!   or records read again after a crash, and emitting them would replace a complete
//!   result with part of it;
//! - a second partial of one source partition for one fleet-minute is dropped the same
//!   way (the first is complete: the first stage emits a partial only once its
//!   partition's watermark has passed the minute).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use apache_avro::Schema;
use eventbus_operators::KafkaSink;
use eventbus_operators::partitioned::Partitioned;
use eventbus_runtime::sink::AckOutcome;
use eventbus_runtime::{Ack, Record, Sink, SinkError, StateHold, TopicPartition};
use eventbus_schemas::events::{FleetMinutePartial, PartialKind};

use super::partial::{FleetAcc, PartialWriter, result_of};

/// Reads the progress of a partials partition back: the end of the last minute whose
/// results were all delivered, `i64::MIN` when none. Blocks.
pub type ProgressReader = Arc<dyn Fn(i32) -> Result<i64, String> + Send + Sync>;

/// Settings of the final stage.
pub struct FinalSettings {
    /// The output producer (by key).
    pub out: KafkaSink,
    /// Registry id and schema of `FleetMinute`.
    pub out_schema: (u32, Arc<Schema>),
    /// Writes progress records (by partition number).
    pub progress: PartialWriter,
    /// Reads them back.
    pub progress_reader: ProgressReader,
    /// Window length, ms.
    pub window_ms: i64,
}

/// The final stage, as the sink of the job that reads the partials topic.
#[derive(Clone)]
pub struct FinalStage {
    inner: Arc<Inner>,
}

struct Inner {
    settings: FinalSettings,
    parts: Partitioned<i32, Part>,
    generations: AtomicU64,
    duplicates: AtomicU64,
    emitted: AtomicU64,
    /// Partials partitions assigned to this process.
    assigned: Mutex<std::collections::BTreeSet<i32>>,
    /// Minutes delivered whose progress record is on its way: their holds are not yet
    /// released.
    releasing: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct Minute {
    end: i64,
    /// Fleet → source partition → its partial.
    fleets: BTreeMap<String, BTreeMap<i32, FleetMinutePartial>>,
    holds: Vec<StateHold>,
}

struct Pending {
    end: i64,
    remaining: usize,
    holds: Vec<StateHold>,
}

#[derive(Clone, Copy)]
struct Mark {
    closed_through: i64,
    idle: bool,
}

struct Part {
    generation: u64,
    /// Every minute ending at or before this is delivered (and recorded as progress).
    acked_through: i64,
    /// Every minute ending at or before this has been emitted.
    emitted_through: i64,
    source_partitions: i32,
    marks: HashMap<i32, Mark>,
    open: BTreeMap<i64, Minute>,
    pending: BTreeMap<i64, Pending>,
}

/// One minute's results, ready to send.
type Ready = (i64, Vec<eventbus_schemas::events::FleetMinute>);

impl Part {
    fn new(generation: u64, progress: i64) -> Self {
        Self {
            generation,
            acked_through: progress,
            emitted_through: progress,
            source_partitions: 0,
            marks: HashMap::new(),
            open: BTreeMap::new(),
            pending: BTreeMap::new(),
        }
    }

    /// The minimum watermark over the source partitions that are not idle.
    fn watermark(&self) -> Option<i64> {
        if self.source_partitions == 0 {
            return None;
        }
        // A source partition not heard from holds results back: its owner (which says
        // so, idle or not, for every partition it is assigned, records or none) may be
        // down, and its partials still to come.
        // When every source partition is idle, none holds the others back: the
        // watermark is the furthest any of them has got (as Flink does).
        let mut min = None::<i64>;
        let mut idle_max = None::<i64>;
        for p in 0..self.source_partitions {
            let at = match self.marks.get(&p) {
                Some(m) if m.idle => {
                    idle_max = Some(idle_max.map_or(m.closed_through, |x| x.max(m.closed_through)));
                    continue;
                }
                Some(m) => m.closed_through,
                None => i64::MIN,
            };
            min = Some(min.map_or(at, |m| m.min(at)));
        }
        min.or(idle_max)
    }

    /// Takes the minutes the watermark has passed out of the open set.
    fn due(&mut self) -> Vec<Ready> {
        let Some(watermark) = self.watermark() else {
            return Vec::new();
        };
        let mut ready = Vec::new();
        while let Some(entry) = self.open.first_entry() {
            if entry.get().end > watermark {
                break;
            }
            let (minute, m) = entry.remove_entry();
            let results = m
                .fleets
                .iter()
                .map(|(fleet, parts)| result_of(fleet, minute, parts.values()))
                .collect::<Vec<_>>();
            self.pending.insert(
                minute,
                Pending {
                    end: m.end,
                    remaining: results.len(),
                    holds: m.holds,
                },
            );
            ready.push((minute, results));
        }
        self.emitted_through = self.emitted_through.max(watermark);
        ready
    }

    fn abandon(self) {
        for m in self.open.into_values() {
            m.holds.into_iter().for_each(StateHold::abandon);
        }
        for p in self.pending.into_values() {
            p.holds.into_iter().for_each(StateHold::abandon);
        }
    }
}

impl FinalStage {
    /// A final stage with nothing read yet.
    pub fn new(settings: FinalSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                parts: Partitioned::new(),
                generations: AtomicU64::new(0),
                duplicates: AtomicU64::new(0),
                emitted: AtomicU64::new(0),
                assigned: Mutex::new(std::collections::BTreeSet::new()),
                releasing: std::sync::atomic::AtomicUsize::new(0),
            }),
        }
    }

    /// Partials dropped as copies of what was already merged or emitted.
    pub fn duplicates(&self) -> u64 {
        self.inner.duplicates.load(Ordering::Relaxed)
    }

    /// Fleet-minutes emitted.
    pub fn emitted(&self) -> u64 {
        self.inner.emitted.load(Ordering::Relaxed)
    }

    /// Batch mode: whether every partials partition this process is assigned has been
    /// read to the end of input (every source partition's watermark at the end, every
    /// result delivered and its holds released), and which of `0..partitions` it is not
    /// assigned. `None` while it has no assignment yet.
    pub fn complete(&self, partitions: i32) -> Option<(bool, Vec<i32>)> {
        let assigned = self
            .inner
            .assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if assigned.is_empty() {
            return None;
        }
        // A partition assigned but not read yet (taken over from a member that had
        // finished it) is judged like one another member holds: by its commits. Each
        // partition is looked at once, so it counts as one or the other, never neither.
        let mut done = self.inner.releasing.load(Ordering::Relaxed) == 0;
        let mut others = Vec::new();
        for r in 0..partitions {
            let finished = assigned
                .contains(&r)
                .then(|| {
                    self.inner.parts.with_existing(&r, |p| {
                        p.source_partitions > 0
                            && p.open.is_empty()
                            && p.pending.is_empty()
                            && (0..p.source_partitions).all(|s| {
                                p.marks
                                    .get(&s)
                                    .is_some_and(|m| m.closed_through == i64::MAX)
                            })
                    })
                })
                .flatten();
            match finished {
                Some(finished) => done &= finished,
                None => others.push(r),
            }
        }
        Some((done, others))
    }

    /// Reads partition `r`'s progress back on its first record after an assignment.
    async fn ensure(&self, r: i32) -> Result<(), SinkError> {
        if self.inner.parts.contains(&r) {
            return Ok(());
        }
        let reader = self.inner.settings.progress_reader.clone();
        let progress = tokio::task::spawn_blocking(move || reader(r))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r)
            .map_err(|reason| SinkError::Delivery {
                sink: "analytics final stage",
                origin: eventbus_runtime::Origin {
                    topic: Arc::from("analytics progress"),
                    partition: r,
                    offset: -1,
                },
                reason: format!("cannot read the progress of partials partition {r}: {reason}"),
                class: eventbus_runtime::ErrorClass::Transient,
            })?;
        let generation = self.inner.generations.fetch_add(1, Ordering::Relaxed);
        self.inner
            .parts
            .with(&r, || Part::new(generation, progress), |_| ());
        Ok(())
    }

    /// Takes one record; returns the minutes it made due, with the partition's
    /// generation.
    fn take(&self, record: Record<FleetMinutePartial>, ack: Ack) -> Option<(u64, Vec<Ready>)> {
        let r = record.partition;
        let mut taking = Some((record.value, ack));
        let taken = self.inner.parts.with_existing(&r, |part| {
            taking.take().map(|(v, ack)| self.take_into(part, v, ack))
        });
        if let Some((_, ack)) = taking {
            // Revoked between `ensure` and here: the next owner reads it again.
            ack.into_state_hold().abandon();
        }
        taken.flatten()
    }

    fn take_into(&self, part: &mut Part, v: FleetMinutePartial, ack: Ack) -> (u64, Vec<Ready>) {
        let window_ms = self.inner.settings.window_ms;
        // Only a watermark, or a wider count of source partitions, moves the minimum
        // watermark; after each move every minute it passed is taken (and
        // `emitted_through` reaches it), so a partial alone never makes one due.
        let moved =
            v.kind == PartialKind::Watermark || v.source_partitions > part.source_partitions;
        part.source_partitions = part.source_partitions.max(v.source_partitions);
        match v.kind {
            PartialKind::Partial => {
                let end = v.minute.saturating_add(window_ms);
                let done = end <= part.acked_through.max(part.emitted_through);
                let minute = part.open.entry(v.minute).or_insert_with(|| Minute {
                    end,
                    ..Minute::default()
                });
                let slot = minute.fleets.entry(v.fleet_id.clone()).or_default();
                if done || slot.contains_key(&v.source_partition) {
                    if slot.is_empty() {
                        minute.fleets.remove(&v.fleet_id);
                    }
                    if minute.fleets.is_empty() {
                        part.open.remove(&v.minute);
                    }
                    self.inner.duplicates.fetch_add(1, Ordering::Relaxed);
                    ack.done();
                } else {
                    slot.insert(v.source_partition, v);
                    minute.holds.push(ack.into_state_hold());
                }
            }
            PartialKind::Watermark => {
                let mark = part.marks.entry(v.source_partition).or_insert(Mark {
                    closed_through: i64::MIN,
                    idle: false,
                });
                mark.closed_through = mark.closed_through.max(v.watermark);
                mark.idle = v.idle;
                ack.done();
            }
            PartialKind::Progress => ack.done(),
        }
        let ready = if moved { part.due() } else { Vec::new() };
        (part.generation, ready)
    }

    async fn emit(
        &self,
        r: i32,
        generation: u64,
        (minute, results): Ready,
    ) -> Result<(), SinkError> {
        let (id, schema) = &self.inner.settings.out_schema;
        let mut outcomes: Vec<AckOutcome> = Vec::with_capacity(results.len());
        for result in results {
            let origin = eventbus_runtime::Origin {
                topic: Arc::from("analytics result"),
                partition: r,
                offset: -1,
            };
            let (ack, outcome) = Ack::channel(origin.clone());
            let bytes = eventbus_schemas::encode_direct(*id, schema, &result).map_err(|e| {
                SinkError::Delivery {
                    sink: "analytics final stage",
                    origin,
                    reason: format!("cannot encode a FleetMinute: {e}"),
                    class: eventbus_runtime::ErrorClass::Permanent,
                }
            })?;
            let mut record = Record::new(Arc::<str>::from(""), r, -1, bytes::Bytes::from(bytes));
            record.key = Some(bytes::Bytes::copy_from_slice(result.fleet_id.as_bytes()));
            self.inner.settings.out.send(record, ack).await?;
            outcomes.push(outcome);
        }
        self.inner
            .emitted
            .fetch_add(outcomes.len() as u64, Ordering::Relaxed);
        let this = self.clone();
        tokio::spawn(async move {
            let mut failure = None;
            for outcome in outcomes {
                match outcome.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failure = Some(e),
                    Err(_) => {
                        failure.get_or_insert(SinkError::Flush {
                            sink: "analytics final stage",
                            reason: "a result's delivery report was lost".to_owned(),
                        });
                    }
                }
            }
            this.delivered(r, generation, minute, failure).await;
        });
        Ok(())
    }

    /// One result of `minute` in partition `r` is delivered (or failed): releases, in
    /// minute order, what is fully delivered, once its progress record is delivered.
    async fn delivered(&self, r: i32, generation: u64, minute: i64, failure: Option<SinkError>) {
        let released = self.inner.parts.with_existing(&r, |part| {
            if part.generation != generation {
                return None;
            }
            if let Some(e) = failure {
                if let Some(p) = part.pending.remove(&minute) {
                    let mut holds = p.holds.into_iter();
                    if let Some(first) = holds.next() {
                        first.fail(e);
                    }
                    holds.for_each(StateHold::abandon);
                }
                return None;
            }
            if let Some(p) = part.pending.get_mut(&minute) {
                p.remaining = 0;
            }
            let mut holds = Vec::new();
            while let Some(entry) = part.pending.first_entry() {
                if entry.get().remaining > 0 {
                    break;
                }
                let p = entry.remove();
                part.acked_through = part.acked_through.max(p.end);
                holds.extend(p.holds);
            }
            if holds.is_empty() {
                return None;
            }
            self.inner.releasing.fetch_add(1, Ordering::Relaxed);
            Some((part.acked_through, holds))
        });
        let Some((through, holds)) = released.flatten() else {
            return;
        };
        self.release_after_progress(r, through, holds).await;
        self.inner.releasing.fetch_sub(1, Ordering::Relaxed);
    }

    /// Writes partition `r`'s progress (`through`), then releases `holds`.
    async fn release_after_progress(&self, r: i32, through: i64, holds: Vec<StateHold>) {
        let mut progress = FleetAcc::empty().to_partial("", 0, r, 0);
        progress.kind = PartialKind::Progress;
        progress.watermark = through;
        progress.min_battery_pct = 0.0;
        let (ack, outcome) = Ack::channel(eventbus_runtime::Origin {
            topic: Arc::from("analytics progress"),
            partition: r,
            offset: -1,
        });
        let writer = &self.inner.settings.progress;
        if let Err(e) = writer.send(r, "", &progress, ack).await {
            fail_all(holds, e);
            return;
        }
        match outcome.await {
            Ok(Ok(())) => holds.into_iter().for_each(StateHold::release),
            Ok(Err(e)) => fail_all(holds, e),
            Err(_) => holds.into_iter().for_each(StateHold::abandon),
        }
    }
}

fn fail_all(holds: Vec<StateHold>, error: SinkError) {
    let mut holds = holds.into_iter();
    if let Some(first) = holds.next() {
        first.fail(error);
    }
    holds.for_each(StateHold::abandon);
}

impl Sink<FleetMinutePartial> for FinalStage {
    async fn send(&self, record: Record<FleetMinutePartial>, ack: Ack) -> Result<(), SinkError> {
        let r = record.partition;
        self.ensure(r).await?;
        let Some((generation, ready)) = self.take(record, ack) else {
            return Ok(());
        };
        for minute in ready {
            self.emit(r, generation, minute).await?;
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), SinkError> {
        <KafkaSink as Sink<bytes::Bytes>>::flush(&self.inner.settings.out).await
    }

    fn partitions_assigned(&self, partitions: &[TopicPartition]) {
        let mut assigned = self
            .inner
            .assigned
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        assigned.extend(partitions.iter().map(|tp| tp.partition));
    }

    /// State of revoked partitions is given up: nothing was committed past it, and the
    /// next owner reads it again.
    async fn partitions_revoked(&self, partitions: &[TopicPartition]) -> Result<(), SinkError> {
        {
            let mut assigned = self
                .inner
                .assigned
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for tp in partitions {
                assigned.remove(&tp.partition);
            }
        }
        let gone = self
            .inner
            .parts
            .remove(partitions.iter().map(|tp| &tp.partition));
        gone.into_iter().for_each(Part::abandon);
        Ok(())
    }
}
