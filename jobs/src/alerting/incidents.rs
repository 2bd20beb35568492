//! One alert per incident: the event-time state of the `when` rules of one partition.
//!
//! For each (rule, key), in the partition's offset order:
//! - an **incident** is a run of events of the key for which the condition is true. It
//!   starts at the first such event and ends at the first event for which it is false,
//!   or once the partition's watermark has passed the incident's last true event by
//!   the incident gap (the key went quiet);
//! - an incident **fires** at its first event that is at least `for` after the
//!   incident's start (event time) and outside the key's cool-down; it fires once;
//! - after an alert the key is **cooling down** until the alert's event time plus
//!   `cooldown`: an incident that reaches `for` meanwhile fires at its first event
//!   past the cool-down, if it still holds then.
//!
//! The partition's watermark is the largest event time it has seen minus the allowed
//! out-of-orderness. Everything here is a function of the partition's events in offset
//! order, so a crash that replays them from the oldest state still needed gives the
//! same alerts. Each state keeps a hold (`H`) on the event it started from, which keeps
//! the partition's commit point at or before it.
//!
//! Releasing a state's hold when the state ends is not enough: a replay that starts
//! between the state's first and last event would miss it for the events in between.
//! So an ended state is kept as an interval (first event, last event] until the
//! partition's safe point has passed it. The safe point is the earliest position a
//! replay may start from: at or before every live state's first event and every alert
//! still being delivered, and inside no kept interval ([`Incidents::settle`]).

use std::collections::{BTreeSet, HashMap};

/// Event-time settings of the `when` rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How far behind the partition's largest event time an event is still on time, ms.
    pub out_of_orderness_ms: i64,
    /// An incident whose key sent nothing for this long (by the watermark) is over, ms.
    pub incident_gap_ms: i64,
}

/// A hold on the event at an offset.
struct Held<H> {
    offset: i64,
    hold: H,
}

struct Streak<H> {
    start_ms: i64,
    last_ms: i64,
    fired: bool,
    first: Held<H>,
}

struct KeyState<H> {
    streak: Option<Streak<H>>,
    /// Until when, and the hold on the event that fired.
    cooldown: Option<(i64, Held<H>)>,
}

/// An ended state: its first event's hold, and the offset at which it ended.
struct Ended<H> {
    first: Held<H>,
    end: i64,
}

/// The incidents of one partition. `H` is what keeps an event uncommitted.
pub struct Incidents<H> {
    timing: Timing,
    keys: HashMap<(usize, String), KeyState<H>>,
    /// When a state may be over: (watermark, rule, key); checked when due.
    due: BTreeSet<(i64, usize, String)>,
    max_event_ms: i64,
    ended: Vec<Ended<H>>,
}

impl<H> Incidents<H> {
    /// No state yet.
    pub fn new(timing: Timing) -> Self {
        Self {
            timing,
            keys: HashMap::new(),
            due: BTreeSet::new(),
            max_event_ms: i64::MIN,
            ended: Vec::new(),
        }
    }

    /// The partition's watermark.
    pub fn watermark(&self) -> i64 {
        self.max_event_ms
            .saturating_sub(self.timing.out_of_orderness_ms)
    }

    /// The event at `offset`, at `event_ms`, arrived: moves the watermark and ends the
    /// states it has passed.
    pub fn advance(&mut self, offset: i64, event_ms: i64) {
        self.max_event_ms = self.max_event_ms.max(event_ms);
        let watermark = self.watermark();
        let mut freed = Vec::new();
        while let Some(first) = self.due.first() {
            if first.0 >= watermark {
                break;
            }
            let Some((_, rule, key)) = self.due.pop_first() else {
                break;
            };
            let id = (rule, key);
            let Some(state) = self.keys.get_mut(&id) else {
                continue;
            };
            if let Some((until, _)) = &state.cooldown
                && *until < watermark
                && let Some((_, hold)) = state.cooldown.take()
            {
                freed.push(hold);
            }
            if let Some(streak) = &state.streak
                && streak.last_ms.saturating_add(self.timing.incident_gap_ms) < watermark
                && let Some(streak) = state.streak.take()
            {
                freed.push(streak.first);
            }
            match next_due(state, self.timing) {
                Some(at) => {
                    self.due.insert((at, id.0, id.1));
                }
                None => {
                    self.keys.remove(&id);
                }
            }
        }
        self.end(freed, offset);
    }

    fn end(&mut self, states: Vec<Held<H>>, end: i64) {
        self.ended
            .extend(states.into_iter().map(|first| Ended { first, end }));
    }

    /// The partition's safe point, given the oldest alert still being delivered
    /// (`pending`) and the offset of the next event: where a replay may start. Returns
    /// the holds of the ended states it has passed, to release.
    pub fn settle(&mut self, pending: Option<i64>, next: i64) -> Vec<H> {
        if self.ended.is_empty() {
            return Vec::new();
        }
        let mut safe = self
            .keys
            .values()
            .flat_map(|s| {
                let streak = s.streak.as_ref().map(|s| s.first.offset);
                let cooldown = s.cooldown.as_ref().map(|(_, h)| h.offset);
                streak.into_iter().chain(cooldown)
            })
            .chain(pending)
            .fold(next, i64::min);
        // Inside an ended state's span, a replay would miss it: move before its start.
        while let Some(start) = self
            .ended
            .iter()
            .filter(|e| e.first.offset < safe && safe <= e.end)
            .map(|e| e.first.offset)
            .min()
        {
            safe = start;
        }
        let (passed, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ended)
            .into_iter()
            .partition(|e| e.end < safe);
        self.ended = kept;
        passed.into_iter().map(|e| e.first.hold).collect()
    }

    /// The condition of `rule` was `holds` for the key's event at `offset`, at
    /// `event_ms`. Returns whether the event raises an alert; `hold` makes a hold on the
    /// event when a state starts from it.
    #[allow(clippy::too_many_arguments)]
    pub fn evaluate(
        &mut self,
        rule: usize,
        key: &str,
        (offset, event_ms): (i64, i64),
        holds: bool,
        for_ms: i64,
        cooldown_ms: i64,
        mut hold: impl FnMut() -> H,
    ) -> bool {
        let id = (rule, key.to_owned());
        if !holds {
            if let Some(state) = self.keys.get_mut(&id)
                && let Some(streak) = state.streak.take()
            {
                if state.cooldown.is_none() {
                    self.keys.remove(&id);
                }
                self.end(vec![streak.first], offset);
            }
            return false;
        }
        let mut held = || Held {
            offset,
            hold: hold(),
        };
        let mut freed = Vec::new();
        let timing = self.timing;
        let state = self.keys.entry(id.clone()).or_insert(KeyState {
            streak: None,
            cooldown: None,
        });
        let streak = state.streak.get_or_insert_with(|| Streak {
            start_ms: event_ms,
            last_ms: event_ms,
            fired: false,
            first: held(),
        });
        streak.last_ms = streak.last_ms.max(event_ms);
        let cooling = state
            .cooldown
            .as_ref()
            .is_some_and(|(until, _)| event_ms < *until);
        let fire = !streak.fired && event_ms.saturating_sub(streak.start_ms) >= for_ms && !cooling;
        if fire {
            streak.fired = true;
            if cooldown_ms > 0 {
                let until = event_ms.saturating_add(cooldown_ms);
                if let Some((_, old)) = state.cooldown.replace((until, held())) {
                    freed.push(old);
                }
            }
        }
        if let Some(at) = next_due(state, timing) {
            self.due.insert((at, id.0, id.1));
        }
        self.end(freed, offset);
        fire
    }

    /// Drops the state of the rules `gone` says are gone (a reload removed or changed
    /// them), as if it ended at `at`.
    pub fn forget_rules(&mut self, gone: impl Fn(usize) -> bool, at: i64) {
        let ids: Vec<(usize, String)> = self
            .keys
            .keys()
            .filter(|(r, _)| gone(*r))
            .cloned()
            .collect();
        let mut freed = Vec::new();
        for id in ids {
            if let Some(state) = self.keys.remove(&id) {
                freed.extend(state.streak.map(|s| s.first));
                freed.extend(state.cooldown.map(|(_, h)| h));
            }
        }
        self.end(freed, at);
    }

    /// Every hold kept, for a partition given up.
    pub fn into_holds(self) -> Vec<H> {
        let mut holds: Vec<H> = self.ended.into_iter().map(|e| e.first.hold).collect();
        for (_, state) in self.keys {
            if let Some(s) = state.streak {
                holds.push(s.first.hold);
            }
            if let Some((_, h)) = state.cooldown {
                holds.push(h.hold);
            }
        }
        holds
    }
}

/// The earliest watermark at which part of `state` may be over.
fn next_due<H>(state: &KeyState<H>, timing: Timing) -> Option<i64> {
    let streak = state
        .streak
        .as_ref()
        .map(|s| s.last_ms.saturating_add(timing.incident_gap_ms));
    let cooldown = state.cooldown.as_ref().map(|(until, _)| *until);
    match (streak, cooldown) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TIMING: Timing = Timing {
        out_of_orderness_ms: 0,
        incident_gap_ms: 60_000,
    };

    /// Runs events (key, time, condition) through one rule, from index `from`; the
    /// offset of an event is its index. Returns the indices that fired and the safe
    /// point after the last event.
    fn run(
        events: &[(u8, i64, bool)],
        for_ms: i64,
        cooldown_ms: i64,
        from: usize,
    ) -> (Vec<usize>, i64) {
        let mut inc = Incidents::new(TIMING);
        let mut fired = Vec::new();
        let mut kept: BTreeSet<i64> = BTreeSet::new();
        let mut next = i64::try_from(from).unwrap_or_default();
        for (i, (key, t, holds)) in events.iter().enumerate().skip(from) {
            let offset = i64::try_from(i).unwrap_or_default();
            inc.advance(offset, *t);
            let fire = inc.evaluate(
                0,
                &key.to_string(),
                (offset, *t),
                *holds,
                for_ms,
                cooldown_ms,
                || {
                    kept.insert(offset);
                    offset
                },
            );
            next = offset + 1;
            for released in inc.settle(None, next) {
                kept.remove(&released);
            }
            if fire {
                fired.push(i);
            }
        }
        // What the tracker commits: the oldest hold, or the next event.
        let holds: BTreeSet<i64> = inc.into_holds().into_iter().collect();
        (fired, holds.first().copied().unwrap_or(next))
    }

    #[test]
    fn a_sustained_condition_fires_once_a_brief_one_never() {
        // Key 1 holds for 12 s, key 2 for 5 s, both sampled every second.
        let mut events = Vec::new();
        for s in 0..20 {
            events.push((1, s * 1_000, s < 12));
            events.push((2, s * 1_000, s < 5));
        }
        let (fired, _) = run(&events, 10_000, 0, 0);
        assert_eq!(
            fired,
            vec![20],
            "key 1 fires at its event of second 10, once"
        );
    }

    #[test]
    fn a_cool_down_delays_the_next_incident() {
        // Incidents at 0 s, 10 s (inside the 60 s cool-down), 70 s.
        let events = [
            (1, 0, true),
            (1, 1_000, false),
            (1, 10_000, true),
            (1, 20_000, true),
            (1, 61_000, true),
            (1, 62_000, false),
            (1, 70_000, true),
        ];
        let (fired, _) = run(&events, 0, 60_000, 0);
        assert_eq!(
            fired,
            vec![0, 4],
            "the second incident fires once the cool-down is over"
        );
    }

    proptest! {
        /// A crash replays from the commit point: the alerts from there on are the ones
        /// the uninterrupted run raised, no more and no fewer.
        #[test]
        fn replaying_from_the_oldest_hold_gives_the_same_alerts(
            steps in proptest::collection::vec((0u8..4, 0i64..3_000, any::<bool>()), 1..200),
            cut in any::<prop::sample::Index>(),
            for_ms in 0i64..5_000,
            cooldown_ms in 0i64..20_000,
        ) {
            // Event times move forward (no disorder beyond the allowance of 0).
            let mut t = 0;
            let events: Vec<(u8, i64, bool)> = steps
                .iter()
                .map(|(k, dt, c)| { t += dt; (*k, t, *c) })
                .collect();
            let all = run(&events, for_ms, cooldown_ms, 0).0;
            // The run as of the crash commits up to its oldest hold; the next run
            // starts there and raises exactly the alerts the first raised from there.
            let crash = cut.index(events.len() + 1);
            let (_, committed) = run(&events[..crash], for_ms, cooldown_ms, 0);
            let from = usize::try_from(committed).unwrap_or_default();
            prop_assert!(from <= crash);
            let (got, _) = run(&events, for_ms, cooldown_ms, from);
            let expected: Vec<usize> = all.into_iter().filter(|i| *i >= from).collect();
            prop_assert_eq!(got, expected);
        }
    }
}
