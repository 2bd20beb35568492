//! State kept per partition, locked per partition.
//!
//! A stateful sink is called by every partition's task, and the runtime runs those
//! tasks on several workers at once. One lock over every partition's state makes the
//! workers wait on each other for every record; here the map of partitions is read-locked
//! (shared) on the record path, and each partition's state has a lock of its own, which
//! only that partition's task (and the odd timer or progress report) takes. The map is
//! write-locked only to add or remove a partition.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, RwLock};

use foldhash::fast::RandomState;

/// Per-partition state `V` under keys `K` (a topic-partition, or a partition number).
pub struct Partitioned<K, V> {
    /// Hashed with foldhash: a topic-partition is hashed for every record, and SipHash
    /// over the topic's name cost more than the lookup.
    map: RwLock<HashMap<K, Mutex<V>, RandomState>>,
}

impl<K, V> Default for Partitioned<K, V> {
    fn default() -> Self {
        Self {
            map: RwLock::new(HashMap::default()),
        }
    }
}

fn lock<V>(m: &Mutex<V>) -> MutexGuard<'_, V> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<K: Eq + Hash + Clone, V> Partitioned<K, V> {
    /// Nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` on `key`'s state, made by `make` if there is none yet.
    pub fn with<R>(&self, key: &K, make: impl FnOnce() -> V, f: impl FnOnce(&mut V) -> R) -> R {
        {
            let map = self.map.read().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = map.get(key) {
                return f(&mut lock(v));
            }
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let v = map
            .entry(key.clone())
            .or_insert_with(|| Mutex::new(make()))
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        f(v)
    }

    /// Runs `f` on `key`'s state, if it has one.
    pub fn with_existing<R>(&self, key: &K, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(key).map(|v| f(&mut lock(v)))
    }

    /// Whether `key` has state.
    pub fn contains(&self, key: &K) -> bool {
        self.map
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
    }

    /// Makes state for each of `keys` that has none.
    pub fn insert_missing<'a>(&self, keys: impl IntoIterator<Item = &'a K>, make: impl Fn() -> V)
    where
        K: 'a,
    {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            map.entry(key.clone()).or_insert_with(|| Mutex::new(make()));
        }
    }

    /// Takes the state of each of `keys` out.
    pub fn remove<'a>(&self, keys: impl IntoIterator<Item = &'a K>) -> Vec<V>
    where
        K: 'a,
    {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        keys.into_iter()
            .filter_map(|k| map.remove(k))
            .map(|v| v.into_inner().unwrap_or_else(|p| p.into_inner()))
            .collect()
    }

    /// `f` of every partition's state, one partition locked at a time.
    pub fn map_all<R>(&self, mut f: impl FnMut(&K, &mut V) -> R) -> Vec<R> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| f(k, &mut lock(v))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_made_once_kept_per_key_and_taken_out_on_remove() {
        let parts: Partitioned<i32, Vec<i32>> = Partitioned::new();
        parts.with(&1, Vec::new, |v| v.push(10));
        parts.with(&1, || vec![99], |v| v.push(11));
        parts.insert_missing(&[1, 2], || vec![7]);
        assert_eq!(parts.with_existing(&1, |v| v.clone()), Some(vec![10, 11]));
        assert_eq!(parts.with_existing(&2, |v| v.clone()), Some(vec![7]));
        assert_eq!(parts.with_existing(&3, |v| v.len()), None);
        let mut all = parts.map_all(|k, v| (*k, v.len()));
        all.sort_unstable();
        assert_eq!(all, vec![(1, 2), (2, 1)]);
        assert_eq!(parts.remove(&[2, 3]), vec![vec![7]]);
        assert!(!parts.contains(&2));
        assert!(parts.contains(&1));
    }
}
