//! One source partition's windowing state: its open windows and their (window, key)
//! slots, and what closing a window hands on to be emitted.

use std::collections::{BTreeMap, HashMap};

use eventbus_runtime::StateHold;

use crate::window::Window;

/// Bytes a held record costs in the state, beside its aggregate.
pub(super) const HOLD_BYTES: usize = std::mem::size_of::<StateHold>();
/// Bytes a (window, key) slot costs beside its aggregate: the key and the map entry.
pub(super) fn slot_bytes<K>() -> usize {
    std::mem::size_of::<K>() + 48
}

/// Per open window and key: the aggregate, the hold of its first record and the offset
/// of its newest record. Looked up for every record, so hashed with foldhash rather than
/// SipHash.
pub(super) type Open<K, Acc> = BTreeMap<Window, HashMap<K, Slot<Acc>, foldhash::fast::RandomState>>;

/// One (window, key) of a partition.
pub(super) struct Slot<Acc> {
    pub(super) acc: Acc,
    /// The first record's hold (one; a `Vec` because closing hands holds on as one).
    pub(super) holds: Vec<StateHold>,
    /// The offset of the newest record: the result's offset.
    pub(super) newest: i64,
}

pub(super) struct Part<K, Acc> {
    pub(super) max_event: Option<i64>,
    pub(super) open: Open<K, Acc>,
    /// Results sent and not yet acknowledged, by window end.
    pub(super) pending: BTreeMap<i64, usize>,
    /// Records taken (on time or late).
    pub(super) records: u64,
    /// Offset of the last record taken.
    pub(super) last_offset: i64,
    /// Every window is closed: the end of input.
    pub(super) finished: bool,
    /// Tells this partition state from one after a revoke and re-assign.
    pub(super) generation: u64,
}

impl<K, Acc> Part<K, Acc> {
    pub(super) fn new(generation: u64) -> Self {
        Self {
            max_event: None,
            open: BTreeMap::new(),
            pending: BTreeMap::new(),
            records: 0,
            last_offset: -1,
            finished: false,
            generation,
        }
    }

    /// Moves windows out of the open set into the pending one.
    pub(super) fn close(&mut self, windows: impl IntoIterator<Item = Window>) -> Closed<K, Acc> {
        let mut closed = Vec::new();
        for w in windows {
            if let Some(keys) = self.open.remove(&w) {
                *self.pending.entry(w.end).or_default() += keys.len();
                closed.extend(keys.into_iter().map(|(k, slot)| Closing {
                    window: w,
                    key: k,
                    acc: slot.acc,
                    holds: slot.holds,
                    newest: slot.newest,
                }));
            }
        }
        closed
    }
}

pub(super) type Closed<K, Acc> = Vec<Closing<K, Acc>>;

/// A (window, key) whose result is due.
pub(super) struct Closing<K, Acc> {
    pub(super) window: Window,
    pub(super) key: K,
    pub(super) acc: Acc,
    pub(super) holds: Vec<StateHold>,
    pub(super) newest: i64,
}
