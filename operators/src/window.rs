//! Windows over event time, and the aggregates computed in them.
//!
//! - [`Windows::Tumbling`]: fixed, back to back; each time is in exactly one window.
//! - [`Windows::Hopping`]: fixed size, starting every `slide`; a time is in
//!   `size / slide` windows (rounded up) when they overlap.
//! - [`Sessions`]: per key, a session is a run of times no further apart than `gap`;
//!   a time that bridges two sessions merges them.
//!
//! Windows are half-open, `[start, end)`, in milliseconds since the epoch, aligned to the
//! epoch (a one-minute tumbling window starts on a UTC minute). A window is complete
//! once the watermark reaches its `end` plus the allowed lateness.
//!
//! [`Aggregate`] is the typed contract of what is computed per (key, window): create,
//! add, merge, finish. Merging is how partial results combine (two stages through
//! Kafka, sessions that merge), so it must not depend on order; the ready-made ones
//! ([`Count`], [`Sum`], [`Min`], [`Max`], [`Mean`], [`DistinctCount`]) are
//! property-tested for it.

use std::collections::BTreeSet;

/// A half-open window `[start, end)` of event time, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Window {
    /// First millisecond in the window.
    pub start: i64,
    /// First millisecond after it.
    pub end: i64,
}

impl Window {
    /// Whether `t` is in the window.
    pub fn contains(&self, t: i64) -> bool {
        self.start <= t && t < self.end
    }
}

/// Fixed windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Windows {
    /// Back-to-back windows of `size_ms`.
    Tumbling {
        /// Length, ms (at least 1).
        size_ms: i64,
    },
    /// Windows of `size_ms` starting every `slide_ms`.
    Hopping {
        /// Length, ms (at least 1).
        size_ms: i64,
        /// Distance between starts, ms (at least 1).
        slide_ms: i64,
    },
}

impl Windows {
    /// The windows `t` belongs to, earliest first.
    pub fn assign(&self, t: i64) -> Vec<Window> {
        let (size, slide) = match *self {
            Self::Tumbling { size_ms } => (size_ms.max(1), size_ms.max(1)),
            Self::Hopping { size_ms, slide_ms } => (size_ms.max(1), slide_ms.max(1)),
        };
        // The last window starting at or before t, then back while it still holds t.
        let last = t.div_euclid(slide) * slide;
        let mut out = Vec::new();
        let mut start = last;
        while start > t.saturating_sub(size) {
            out.push(Window {
                start,
                end: start.saturating_add(size),
            });
            start -= slide;
        }
        out.reverse();
        out
    }
}

/// One key's sessions: runs of event times no further apart than `gap_ms`. A session
/// of a single time `t` is `[t, t + gap)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sessions {
    gap_ms: i64,
    open: BTreeSet<Window>,
}

impl Sessions {
    /// No sessions yet.
    pub fn new(gap_ms: i64) -> Self {
        Self {
            gap_ms: gap_ms.max(1),
            open: BTreeSet::new(),
        }
    }

    /// Adds a time. Returns the session it is in now, and the sessions it merged away
    /// (whose state the caller merges into the returned one).
    pub fn add(&mut self, t: i64) -> (Window, Vec<Window>) {
        let mut merged = Window {
            start: t,
            end: t.saturating_add(self.gap_ms),
        };
        let touching: Vec<Window> = self
            .open
            .iter()
            .filter(|w| w.start <= merged.end && merged.start <= w.end)
            .copied()
            .collect();
        for w in &touching {
            self.open.remove(w);
            merged.start = merged.start.min(w.start);
            merged.end = merged.end.max(w.end);
        }
        self.open.insert(merged);
        let gone = touching.into_iter().filter(|w| *w != merged).collect();
        (merged, gone)
    }

    /// Removes and returns the sessions that end at or before `watermark`.
    pub fn close(&mut self, watermark: i64) -> Vec<Window> {
        let done: Vec<Window> = self
            .open
            .iter()
            .filter(|w| w.end <= watermark)
            .copied()
            .collect();
        for w in &done {
            self.open.remove(w);
        }
        done
    }

    /// The open sessions, earliest first.
    pub fn open(&self) -> impl Iterator<Item = &Window> {
        self.open.iter()
    }
}

/// What is computed per (key, window).
pub trait Aggregate: Send + Sync + 'static {
    /// What is added.
    type In;
    /// The running state.
    type Acc: Clone + Send + 'static;
    /// The result.
    type Out;
    /// The empty state.
    fn create(&self) -> Self::Acc;
    /// Adds one value.
    fn add(&self, acc: &mut Self::Acc, value: &Self::In);
    /// Combines two states, in any order, to the state of both inputs.
    fn merge(&self, a: Self::Acc, b: Self::Acc) -> Self::Acc;
    /// The result of a state.
    fn finish(&self, acc: &Self::Acc) -> Self::Out;
    /// About how many bytes a state takes, heap included: what the window state's byte
    /// bound counts. The default is the inline size; aggregates whose state grows (a
    /// distinct set) say more.
    fn size(&self, acc: &Self::Acc) -> usize {
        let _ = acc;
        std::mem::size_of::<Self::Acc>()
    }
}

/// How many values.
#[derive(Debug, Clone, Copy, Default)]
pub struct Count;

impl Aggregate for Count {
    type In = ();
    type Acc = u64;
    type Out = u64;
    fn create(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _: &()) {
        *acc += 1;
    }
    fn merge(&self, a: u64, b: u64) -> u64 {
        a + b
    }
    fn finish(&self, acc: &u64) -> u64 {
        *acc
    }
}

/// The sum of integers (exact; wraps never: i128 inside).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sum;

impl Aggregate for Sum {
    type In = i64;
    type Acc = i128;
    type Out = i128;
    fn create(&self) -> i128 {
        0
    }
    fn add(&self, acc: &mut i128, v: &i64) {
        *acc += i128::from(*v);
    }
    fn merge(&self, a: i128, b: i128) -> i128 {
        a + b
    }
    fn finish(&self, acc: &i128) -> i128 {
        *acc
    }
}

/// One of two optional values by `pick`, or whichever there is.
fn either(a: Option<f64>, b: Option<f64>, pick: fn(f64, f64) -> f64) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(pick(x, y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// The smallest value, `None` when there was none.
#[derive(Debug, Clone, Copy, Default)]
pub struct Min;

/// The largest value, `None` when there was none.
#[derive(Debug, Clone, Copy, Default)]
pub struct Max;

macro_rules! extreme {
    ($agg:ty, $pick:expr) => {
        impl Aggregate for $agg {
            type In = f64;
            type Acc = Option<f64>;
            type Out = Option<f64>;
            fn create(&self) -> Option<f64> {
                None
            }
            fn add(&self, acc: &mut Option<f64>, v: &f64) {
                *acc = either(*acc, Some(*v), $pick);
            }
            fn merge(&self, a: Option<f64>, b: Option<f64>) -> Option<f64> {
                either(a, b, $pick)
            }
            fn finish(&self, acc: &Option<f64>) -> Option<f64> {
                *acc
            }
        }
    };
}

extreme!(Min, f64::min);
extreme!(Max, f64::max);

/// The mean, `None` when there was no value. The sum is kept with compensation (Kahan
/// and Neumaier), so the order values arrive in changes the result by no more than the
/// last bits.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mean;

/// [`Mean`]'s state: a compensated sum and a count.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MeanAcc {
    sum: f64,
    compensation: f64,
    count: u64,
}

impl MeanAcc {
    fn add(&mut self, v: f64) {
        let t = self.sum + v;
        if self.sum.abs() >= v.abs() {
            self.compensation += (self.sum - t) + v;
        } else {
            self.compensation += (v - t) + self.sum;
        }
        self.sum = t;
    }
}

impl Aggregate for Mean {
    type In = f64;
    type Acc = MeanAcc;
    type Out = Option<f64>;
    fn create(&self) -> MeanAcc {
        MeanAcc::default()
    }
    fn add(&self, acc: &mut MeanAcc, v: &f64) {
        acc.add(*v);
        acc.count += 1;
    }
    fn merge(&self, mut a: MeanAcc, b: MeanAcc) -> MeanAcc {
        a.add(b.sum);
        a.add(b.compensation);
        a.count += b.count;
        a
    }
    fn finish(&self, acc: &MeanAcc) -> Option<f64> {
        (acc.count > 0).then(|| (acc.sum + acc.compensation) / acc.count as f64)
    }
}

/// How many distinct values, exactly.
#[derive(Debug, Clone, Copy, Default)]
pub struct DistinctCount;

impl Aggregate for DistinctCount {
    type In = String;
    type Acc = BTreeSet<String>;
    type Out = u64;
    fn create(&self) -> BTreeSet<String> {
        BTreeSet::new()
    }
    fn add(&self, acc: &mut BTreeSet<String>, v: &String) {
        if !acc.contains(v) {
            acc.insert(v.clone());
        }
    }
    fn merge(&self, mut a: BTreeSet<String>, mut b: BTreeSet<String>) -> BTreeSet<String> {
        if a.len() < b.len() {
            std::mem::swap(&mut a, &mut b);
        }
        a.extend(b);
        a
    }
    fn finish(&self, acc: &BTreeSet<String>) -> u64 {
        acc.len() as u64
    }
    /// An estimate: a tree node's share and a short string per value.
    fn size(&self, acc: &BTreeSet<String>) -> usize {
        std::mem::size_of::<BTreeSet<String>>() + acc.len() * 64
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn windows_are_aligned_half_open_and_overlap_when_hopping() {
        let minute = Windows::Tumbling { size_ms: 60_000 };
        assert_eq!(
            minute.assign(59_999),
            vec![Window {
                start: 0,
                end: 60_000
            }]
        );
        assert_eq!(
            minute.assign(60_000)[0].start,
            60_000,
            "the end is not inside"
        );
        assert_eq!(minute.assign(-1)[0].start, -60_000);
        let hop = Windows::Hopping {
            size_ms: 10,
            slide_ms: 4,
        };
        let starts: Vec<i64> = hop.assign(9).iter().map(|w| w.start).collect();
        assert_eq!(starts, vec![0, 4, 8]);
    }

    #[test]
    fn a_time_between_two_sessions_merges_them() {
        let mut s = Sessions::new(10);
        s.add(0);
        s.add(18);
        s.add(40);
        assert_eq!(s.open().count(), 3);
        // 9 is within the gap of both 0 and 18.
        let (merged, gone) = s.add(9);
        assert_eq!(merged, Window { start: 0, end: 28 });
        assert_eq!(gone.len(), 2);
        assert_eq!(s.close(27), vec![]);
        assert_eq!(s.close(28), vec![merged]);
        assert_eq!(s.open().count(), 1);
    }

    fn merged_in_any_split<A: Aggregate>(agg: &A, values: &[A::In], cut: usize) -> A::Out {
        let cut = cut % (values.len() + 1);
        let (left, right) = values.split_at(cut);
        let mut a = agg.create();
        left.iter().for_each(|v| agg.add(&mut a, v));
        let mut b = agg.create();
        right.iter().rev().for_each(|v| agg.add(&mut b, v));
        agg.finish(&agg.merge(b, a))
    }

    fn all_at_once<A: Aggregate>(agg: &A, values: &[A::In]) -> A::Out {
        let mut a = agg.create();
        values.iter().for_each(|v| agg.add(&mut a, v));
        agg.finish(&a)
    }

    proptest! {
        /// Every time is in each window `assign` gives, and in no other: the windows
        /// around it that `assign` leaves out do not hold it.
        #[test]
        fn assignment_is_exactly_the_windows_that_hold_the_time(
            t in -10_000_000i64..10_000_000,
            size in 1i64..5_000,
            slide in 1i64..5_000,
        ) {
            let hop = Windows::Hopping { size_ms: size, slide_ms: slide };
            let got = hop.assign(t);
            for w in &got {
                prop_assert!(w.contains(t));
                prop_assert_eq!(w.start.rem_euclid(slide), 0);
                prop_assert_eq!(w.end - w.start, size);
            }
            let before = got.first().map_or(t.div_euclid(slide) * slide, |w| w.start) - slide;
            let outside = Window { start: before, end: before + size };
            prop_assert!(!outside.contains(t));
            let expected = (0..=size / slide + 1)
                .map(|k| t.div_euclid(slide) * slide - k * slide)
                .filter(|s| *s <= t && t < s + size)
                .count();
            prop_assert_eq!(got.len(), expected);
            let tumbling = Windows::Tumbling { size_ms: size }.assign(t);
            prop_assert_eq!(tumbling.len(), 1);
        }

        /// Sessions never overlap, and every time added is inside one of them.
        #[test]
        fn sessions_stay_disjoint_and_cover_their_times(
            times in proptest::collection::vec(0i64..1_000, 1..40),
            gap in 1i64..50,
        ) {
            let mut s = Sessions::new(gap);
            for t in &times {
                s.add(*t);
            }
            let open: Vec<Window> = s.open().copied().collect();
            for pair in open.windows(2) {
                prop_assert!(pair[0].end < pair[1].start, "{:?}", pair);
            }
            for t in &times {
                prop_assert!(open.iter().any(|w| w.contains(*t)));
            }
        }

        /// Each aggregate gives the same result however its input is split and merged.
        #[test]
        fn merging_does_not_depend_on_order(
            ints in proptest::collection::vec(any::<i64>(), 0..50),
            floats in proptest::collection::vec(-1e6f64..1e6, 0..50),
            names in proptest::collection::vec("[a-d]{1,2}", 0..50),
            cut in any::<usize>(),
        ) {
            let units = vec![(); ints.len()];
            prop_assert_eq!(merged_in_any_split(&Count, &units, cut), all_at_once(&Count, &units));
            prop_assert_eq!(merged_in_any_split(&Sum, &ints, cut), all_at_once(&Sum, &ints));
            prop_assert_eq!(merged_in_any_split(&Min, &floats, cut), all_at_once(&Min, &floats));
            prop_assert_eq!(merged_in_any_split(&Max, &floats, cut), all_at_once(&Max, &floats));
            prop_assert_eq!(
                merged_in_any_split(&DistinctCount, &names, cut),
                all_at_once(&DistinctCount, &names)
            );
            let (m1, m2) = (merged_in_any_split(&Mean, &floats, cut), all_at_once(&Mean, &floats));
            match (m1, m2) {
                (Some(a), Some(b)) => prop_assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{} vs {}", a, b),
                (a, b) => prop_assert_eq!(a, b),
            }
        }
    }
}
