//! Event time, watermarks and timers: the clock that windows run on.
//!
//! A record's event time comes from its value (an extractor) or from its Kafka timestamp
//! ([`EventTime`]). Each partition's watermark is the largest event time it has seen minus
//! the allowed out-of-orderness: the promise that nothing older is still expected (a
//! record older than that is late). The job's watermark ([`Watermarks::job`]) is the
//! minimum over its assigned partitions, so a window closes only once every partition
//! has passed it; a partition that has seen no record for `idle_timeout` stops holding it
//! back until it receives one again. The job's watermark never moves backwards.
//!
//! [`Timers`] fire per partition:
//! - an **event-time** timer fires once the job's watermark reaches its time;
//! - a **processing-time** timer fires once the wall clock reaches its time;
//! - each fires once, in time order (ties in the order registered);
//! - **on revoke**, a partition's timers are dropped, not fired: what they would have
//!   emitted depends on records that were never committed past, so the partition's next
//!   owner reads those records again and registers the same timers;
//! - **at shutdown**, likewise: timers are dropped and recomputed after the restart. A
//!   batch job that must emit everything at the end of its input fires its event-time
//!   timers explicitly with [`Timers::fire_all`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::record::{Record, TopicPartition};

/// A function giving a record's event time.
pub type Extractor<T> = Arc<dyn Fn(&Record<T>) -> Option<i64> + Send + Sync>;

/// Where a record's event time comes from, in milliseconds since the epoch.
pub enum EventTime<T> {
    /// The record's Kafka timestamp; a record without one has no event time.
    Kafka,
    /// A function of the record, e.g. a field of its decoded value.
    Extract(Extractor<T>),
}

impl<T> Clone for EventTime<T> {
    fn clone(&self) -> Self {
        match self {
            Self::Kafka => Self::Kafka,
            Self::Extract(f) => Self::Extract(f.clone()),
        }
    }
}

impl<T> std::fmt::Debug for EventTime<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Kafka => f.write_str("EventTime::Kafka"),
            Self::Extract(_) => f.write_str("EventTime::Extract(..)"),
        }
    }
}

impl<T> EventTime<T> {
    /// The event time of `record`.
    pub fn of(&self, record: &Record<T>) -> Option<i64> {
        match self {
            Self::Kafka => record.timestamp,
            Self::Extract(f) => f(record),
        }
    }
}

/// Watermark settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatermarkConfig {
    /// How far behind the largest event time seen a record may still arrive on time.
    /// Default 5 s.
    pub out_of_orderness: Duration,
    /// A partition with no record for this long stops holding the job's watermark back.
    /// Default 30 s.
    pub idle_timeout: Duration,
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        Self {
            out_of_orderness: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct PartitionClock {
    max_event: Option<i64>,
    last_record: Instant,
}

/// The watermarks of a job's assigned partitions; see the module docs.
#[derive(Debug)]
pub struct Watermarks {
    config: WatermarkConfig,
    partitions: HashMap<TopicPartition, PartitionClock>,
    /// The job's watermark as last reported: it never moves backwards.
    reported: Option<i64>,
}

impl Watermarks {
    /// Tracking nothing yet.
    pub fn new(config: WatermarkConfig) -> Self {
        Self {
            config,
            partitions: HashMap::new(),
            reported: None,
        }
    }

    /// A partition was assigned: until its first record it holds the watermark back
    /// (for at most `idle_timeout`).
    pub fn assigned(&mut self, tp: TopicPartition, now: Instant) {
        self.partitions.entry(tp).or_insert(PartitionClock {
            max_event: None,
            last_record: now,
        });
    }

    /// A partition was revoked: it no longer counts.
    pub fn revoked(&mut self, tp: &TopicPartition) {
        self.partitions.remove(tp);
    }

    /// A record of `tp` with event time `event_ms` arrived at `now`. Returns whether it
    /// is late: older than the job's watermark.
    pub fn observe(&mut self, tp: &TopicPartition, event_ms: i64, now: Instant) -> bool {
        let late = self.reported.is_some_and(|w| event_ms < w);
        let clock = self.partitions.entry(tp.clone()).or_insert(PartitionClock {
            max_event: None,
            last_record: now,
        });
        clock.max_event = Some(clock.max_event.map_or(event_ms, |m| m.max(event_ms)));
        clock.last_record = now;
        late
    }

    /// The watermark of one partition: its largest event time less the allowance.
    pub fn partition(&self, tp: &TopicPartition) -> Option<i64> {
        let ooo = i64::try_from(self.config.out_of_orderness.as_millis()).unwrap_or(i64::MAX);
        self.partitions
            .get(tp)?
            .max_event
            .map(|m| m.saturating_sub(ooo))
    }

    /// The job's watermark at `now`: the minimum over assigned partitions that are not
    /// idle, never lower than what it reported before. `None` until every active
    /// partition has a watermark.
    pub fn job(&mut self, now: Instant) -> Option<i64> {
        let mut min: Option<i64> = None;
        let mut any_active = false;
        for (tp, clock) in &self.partitions {
            if now.saturating_duration_since(clock.last_record) >= self.config.idle_timeout {
                continue;
            }
            any_active = true;
            match self.partition(tp) {
                // An active partition with nothing yet holds everything back.
                None => return self.reported,
                Some(w) => min = Some(min.map_or(w, |m| m.min(w))),
            }
        }
        if any_active && let Some(m) = min {
            self.reported = Some(self.reported.map_or(m, |r| r.max(m)));
        }
        self.reported
    }
}

/// Per-partition timers keyed by `K`; see the module docs for when they fire.
#[derive(Debug)]
pub struct Timers<K> {
    event: BTreeMap<(i64, u64), (TopicPartition, K)>,
    processing: BTreeMap<(Instant, u64), (TopicPartition, K)>,
    seq: u64,
}

impl<K> Default for Timers<K> {
    fn default() -> Self {
        Self {
            event: BTreeMap::new(),
            processing: BTreeMap::new(),
            seq: 0,
        }
    }
}

impl<K> Timers<K> {
    /// No timers.
    pub fn new() -> Self {
        Self::default()
    }

    fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Fires `key` once the job's watermark reaches `at_ms`.
    pub fn at_event_time(&mut self, tp: TopicPartition, at_ms: i64, key: K) {
        let n = self.next();
        self.event.insert((at_ms, n), (tp, key));
    }

    /// Fires `key` once the wall clock reaches `at`.
    pub fn at_processing_time(&mut self, tp: TopicPartition, at: Instant, key: K) {
        let n = self.next();
        self.processing.insert((at, n), (tp, key));
    }

    /// The event-time timers due at `watermark`, in time order, removed.
    pub fn due_at_watermark(&mut self, watermark: i64) -> Vec<(i64, TopicPartition, K)> {
        let later = self.event.split_off(&(watermark.saturating_add(1), 0));
        let due = std::mem::replace(&mut self.event, later);
        due.into_iter()
            .map(|((t, _), (tp, k))| (t, tp, k))
            .collect()
    }

    /// The processing-time timers due at `now`, in time order, removed.
    pub fn due_at(&mut self, now: Instant) -> Vec<(Instant, TopicPartition, K)> {
        let mut due = Vec::new();
        while let Some(entry) = self.processing.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((t, _), (tp, k)) = entry.remove_entry();
            due.push((t, tp, k));
        }
        due
    }

    /// Every event-time timer, in time order, removed: the end of a batch job's input.
    pub fn fire_all(&mut self) -> Vec<(i64, TopicPartition, K)> {
        std::mem::take(&mut self.event)
            .into_iter()
            .map(|((t, _), (tp, k))| (t, tp, k))
            .collect()
    }

    /// Drops a revoked partition's timers, unfired.
    pub fn revoked(&mut self, tp: &TopicPartition) {
        self.event.retain(|_, (p, _)| p != tp);
        self.processing.retain(|_, (p, _)| p != tp);
    }

    /// Timers waiting.
    pub fn len(&self) -> usize {
        self.event.len() + self.processing.len()
    }

    /// Whether no timer waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn tp(p: i32) -> TopicPartition {
        TopicPartition::new("t", p)
    }

    #[test]
    fn the_job_watermark_is_the_slowest_active_partition_less_the_allowance() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(WatermarkConfig::default());
        w.assigned(tp(0), t0);
        w.assigned(tp(1), t0);
        w.observe(&tp(0), 100_000, t0);
        assert_eq!(w.job(t0), None, "partition 1 has nothing yet");
        w.observe(&tp(1), 60_000, t0);
        assert_eq!(w.job(t0), Some(55_000));
        // Partition 1 goes quiet: after the idle timeout it no longer holds back.
        let later = t0 + Duration::from_secs(31);
        w.observe(&tp(0), 130_000, later);
        assert_eq!(w.job(later), Some(125_000));
        // It comes back behind: the job's watermark does not move backwards, and its
        // record is late.
        assert!(w.observe(&tp(1), 70_000, later));
        assert_eq!(w.job(later), Some(125_000));
        // Revoked partitions no longer count.
        w.revoked(&tp(1));
        w.observe(&tp(0), 200_000, later);
        assert_eq!(w.job(later), Some(195_000));
    }

    #[test]
    fn timers_fire_once_in_order_and_a_revoke_drops_them() {
        let mut t: Timers<&str> = Timers::new();
        t.at_event_time(tp(0), 30, "c");
        t.at_event_time(tp(1), 10, "a");
        t.at_event_time(tp(0), 10, "b");
        t.at_event_time(tp(1), 50, "gone");
        let fired: Vec<_> = t.due_at_watermark(30).into_iter().map(|x| x.2).collect();
        assert_eq!(fired, vec!["a", "b", "c"]);
        assert!(t.due_at_watermark(30).is_empty(), "each fires once");
        t.revoked(&tp(1));
        assert!(t.fire_all().is_empty(), "revoked timers never fire");
        let now = Instant::now();
        t.at_processing_time(tp(0), now + Duration::from_secs(1), "p");
        assert!(t.due_at(now).is_empty());
        assert_eq!(t.due_at(now + Duration::from_secs(1)).len(), 1);
        assert!(t.is_empty());
    }

    proptest! {
        /// Any interleaving of records, idle gaps and revokes: the job's watermark never
        /// moves backwards and never passes the slowest active partition's watermark as
        /// it stood when reported.
        #[test]
        fn the_job_watermark_is_monotonic_and_bounded_by_active_partitions(
            steps in proptest::collection::vec((0i32..4, 0i64..1_000_000, 0u64..40_000, any::<bool>()), 1..60),
        ) {
            let config = WatermarkConfig {
                out_of_orderness: Duration::from_millis(500),
                idle_timeout: Duration::from_secs(30),
            };
            let t0 = Instant::now();
            let mut now = t0;
            let mut w = Watermarks::new(config);
            let mut last = None;
            for (p, event, gap_ms, revoke) in steps {
                now += Duration::from_millis(gap_ms);
                if revoke {
                    w.revoked(&tp(p));
                } else {
                    w.observe(&tp(p), event, now);
                }
                let before = last;
                let mark = w.job(now);
                prop_assert!(mark >= before, "moved back: {before:?} -> {mark:?}");
                if mark != before
                    && let Some(m) = mark
                {
                    // A newly reported mark is the minimum over the active partitions.
                    let active_min = w
                        .partitions
                        .iter()
                        .filter(|(_, c)| now.saturating_duration_since(c.last_record) < config.idle_timeout)
                        .filter_map(|(tp, _)| w.partition(tp))
                        .min();
                    prop_assert_eq!(Some(m), active_min);
                }
                last = mark;
            }
        }
    }
}
