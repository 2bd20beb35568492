//! Per-partition offset tracking: the heart of at-least-once.
//!
//! Records are registered in the order the partition delivered them. Sinks may finish
//! them in any order. The tracker only ever reports, as committable, the offset just past
//! the longest prefix of finished records, so a commit can never skip a record that is
//! still in flight or that failed.

use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Done,
    Failed,
}

/// Tracks which offsets of one partition are done.
///
/// Guarantee: [`OffsetTracker::committable`] is always `last + 1` where `last` ends the
/// contiguous run of done records from the first one registered. A failed record is a
/// permanent hole: nothing after it becomes committable.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    entries: VecDeque<(i64, State)>,
    last_registered: Option<i64>,
    committable: Option<i64>,
    pending: usize,
}

impl OffsetTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the next record of the partition. Returns `false`, registering nothing,
    /// for an offset not above the last registered one: that is a redelivery of a record
    /// the tracker already holds or has finished.
    pub fn register(&mut self, offset: i64) -> bool {
        if self.last_registered.is_some_and(|last| offset <= last) {
            return false;
        }
        self.last_registered = Some(offset);
        self.entries.push_back((offset, State::Pending));
        self.pending += 1;
        true
    }

    /// Marks a registered record done. Returns `false` if the offset is not pending here.
    pub fn done(&mut self, offset: i64) -> bool {
        if !self.resolve(offset, State::Done) {
            return false;
        }
        while let Some(&(front, State::Done)) = self.entries.front() {
            self.committable = Some(front + 1);
            self.entries.pop_front();
        }
        true
    }

    /// Marks a registered record failed: it stays a hole that nothing commits past.
    /// Returns `false` if the offset is not pending here.
    pub fn fail(&mut self, offset: i64) -> bool {
        self.resolve(offset, State::Failed)
    }

    fn resolve(&mut self, offset: i64, to: State) -> bool {
        // Records mostly finish in order: the oldest held one first, found without a
        // search.
        let i = if self.entries.front().is_some_and(|&(o, _)| o == offset) {
            0
        } else {
            match self.entries.binary_search_by_key(&offset, |&(o, _)| o) {
                Ok(i) => i,
                Err(_) => return false,
            }
        };
        let slot = &mut self.entries[i].1;
        if *slot != State::Pending {
            return false;
        }
        *slot = to;
        self.pending -= 1;
        true
    }

    /// The offset to commit (one past the done prefix), `None` before the first record
    /// is done.
    pub fn committable(&self) -> Option<i64> {
        self.committable
    }

    /// Records registered and neither done nor failed.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Records held because they are not yet below the commit point (pending, or done
    /// behind a pending or failed one). This is what backpressure bounds.
    pub fn held(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn out_of_order_acks_wait_for_the_hole() {
        let mut t = OffsetTracker::new();
        for o in [10, 11, 12, 15] {
            assert!(t.register(o));
        }
        assert!(t.done(12));
        assert!(t.done(11));
        assert_eq!(t.committable(), None);
        assert!(t.done(10));
        assert_eq!(t.committable(), Some(13));
        assert_eq!(t.held(), 1);
        assert!(t.done(15));
        assert_eq!(t.committable(), Some(16));
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn a_failed_record_is_never_committed_past() {
        let mut t = OffsetTracker::new();
        for o in 0..4 {
            t.register(o);
        }
        t.done(0);
        t.fail(1);
        t.done(2);
        t.done(3);
        assert_eq!(t.committable(), Some(1));
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn redeliveries_and_unknown_offsets_are_refused() {
        let mut t = OffsetTracker::new();
        assert!(t.register(5));
        assert!(!t.register(5));
        assert!(!t.register(3));
        assert!(!t.done(4));
        assert!(t.done(5));
        assert!(!t.done(5));
    }

    /// Offsets with random gaps (compaction, transaction markers), a random subset of them
    /// resolved in a random order, some as failures.
    fn scenario() -> impl Strategy<Value = (Vec<i64>, Vec<(usize, bool)>)> {
        prop::collection::vec(1i64..4, 1..200).prop_flat_map(|gaps| {
            let offsets: Vec<i64> = gaps
                .iter()
                .scan(100i64, |acc, g| {
                    *acc += g;
                    Some(*acc)
                })
                .collect();
            let n = offsets.len();
            let order = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
            (
                Just(offsets),
                order,
                prop::collection::vec(0u8..20, n),
                0..=n,
            )
                .prop_map(|(offsets, order, fate, take)| {
                    let acks = order
                        .into_iter()
                        .take(take)
                        .map(|i| (i, fate[i] == 0))
                        .collect();
                    (offsets, acks)
                })
        })
    }

    proptest! {
        #[test]
        fn commits_exactly_the_contiguous_done_prefix((offsets, acks) in scenario()) {
            let mut t = OffsetTracker::new();
            for &o in &offsets {
                prop_assert!(t.register(o));
            }
            let mut state = vec![State::Pending; offsets.len()];
            for (i, failed) in acks {
                if failed {
                    prop_assert!(t.fail(offsets[i]));
                    state[i] = State::Failed;
                } else {
                    prop_assert!(t.done(offsets[i]));
                    state[i] = State::Done;
                }
                let prefix = state.iter().take_while(|s| **s == State::Done).count();
                let expected = prefix.checked_sub(1).map(|last| offsets[last] + 1);
                prop_assert_eq!(t.committable(), expected);
                if let Some(hole) = state.iter().position(|s| *s != State::Done) {
                    prop_assert!(t.committable().is_none_or(|c| c <= offsets[hole]));
                }
                let pending = state.iter().filter(|s| **s == State::Pending).count();
                prop_assert_eq!(t.pending(), pending);
                prop_assert_eq!(t.held(), offsets.len() - prefix);
            }
        }
    }
}
