//! Settling a batch's acks under one lock: while a partition task polls its sink, acks
//! the sink settles on the same thread are collected instead of each taking the
//! tracker's lock, and the task applies them together (`PartitionState::apply`).
//!
//! A partition is known here by its state's address only, so this module imports
//! nothing of the executor: the partition state imports it.

use std::cell::RefCell;

use crate::sink::{Resolution, Settle};

/// A partition's address and the settlements collected for it.
type Collector = (usize, Vec<(i64, Resolution)>);

thread_local! {
    /// The settlements a partition task collects while it polls its sink on this
    /// thread: the partition's address and the offsets settled so far. An ack settled
    /// synchronously inside that poll lands here instead of taking the tracker's lock;
    /// the task applies the whole batch under one lock. Acks settled anywhere else
    /// (another thread, another partition's poll) go to the tracker as usual.
    static COLLECTING: RefCell<Option<Collector>> = const { RefCell::new(None) };
}

/// What a partition task collected while polling: applied with `PartitionState::apply`.
#[derive(Debug, Default)]
pub(crate) struct Collected(Vec<(i64, Resolution)>);

impl Collected {
    /// Runs `f` with this thread collecting the settlements of the partition whose state
    /// is `part` into `self`.
    pub(crate) fn during<P: Settle, R>(&mut self, part: &P, f: impl FnOnce() -> R) -> R {
        /// Puts the thread back as it was, even when `f` panics: a collector left
        /// behind would swallow the settlements of a later partition state.
        struct Restore<'a> {
            collected: &'a mut Collected,
            outer: Option<Collector>,
        }
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                let outer = self.outer.take();
                let mine = COLLECTING.with(|c| std::mem::replace(&mut *c.borrow_mut(), outer));
                if let Some((_, buffer)) = mine {
                    self.collected.0 = buffer;
                }
            }
        }
        let addr = address(part);
        let buffer = std::mem::take(&mut self.0);
        let outer = COLLECTING.with(|c| c.borrow_mut().replace((addr, buffer)));
        let _restore = Restore {
            collected: self,
            outer,
        };
        f()
    }

    /// Collects a settlement made by the task itself.
    pub(crate) fn push(&mut self, offset: i64, how: Resolution) {
        self.0.push((offset, how));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// The offsets collected as settled `how`.
    pub(super) fn offsets(&self, how: Resolution) -> impl Iterator<Item = i64> + '_ {
        self.0
            .iter()
            .filter(move |(_, h)| *h == how)
            .map(|(o, _)| *o)
    }

    pub(super) fn clear(&mut self) {
        self.0.clear();
    }
}

/// Collects `offsets` for the partition whose state is `part` when this thread is
/// polling that partition's sink; `false` when it is not (the caller settles them
/// itself).
pub(super) fn collect_if_polling<P: Settle>(part: &P, offsets: &[i64], how: Resolution) -> bool {
    let addr = address(part);
    COLLECTING.with(|c| match &mut *c.borrow_mut() {
        Some((mine, buffer)) if *mine == addr => {
            buffer.extend(offsets.iter().map(|&o| (o, how)));
            true
        }
        _ => false,
    })
}

/// What a partition state is known by here: where it lives, which no other partition
/// state shares while it does.
fn address<P: Settle>(part: &P) -> usize {
    std::ptr::from_ref(part) as usize
}
