//! Gates by key (a route, a tenant, a host): lock-free lookups, a new gate
//! the first time a key is seen, and bounded memory.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::core::gate::Gate;

/// The key, and `route` label, of the gate shared by keys beyond
/// `max_keys`.
pub const OVERFLOW_KEY: &str = "overflow";

/// Builds the gate of a key (or, given `None`, the overflow gate).
type Factory<K> = Box<dyn Fn(Option<&K>) -> Gate + Send + Sync>;

/// Slots per chunk of the table: a chunk is allocated when the first key
/// lands in it.
const CHUNK: usize = 64;

/// The most slots a table has: at most half of them hold a key, so a map
/// keeps at most 2^21 keys of its own, whatever its `max_keys`.
const MAX_SLOTS: usize = 1 << 22;

/// Gates by key. Past `max_keys` distinct keys, every new key shares one
/// overflow gate, so memory stays bounded whatever the callers send, and no
/// key's state is ever evicted.
///
/// The keys are in an open-addressed table with linear probing, sized for
/// `max_keys` and never more than half full, whose slots are written once
/// and never cleared (nothing is evicted): a lookup is a few plain atomic
/// loads, with no lock and no read-modify-write (a copy-on-write map behind
/// an atomically swapped `Arc` costs a few read-modify-writes per lookup,
/// on every request).
pub(crate) struct GateMap<K> {
    /// The table's slots, `CHUNK` at a time.
    chunks: Box<[OnceLock<Chunk<K>>]>,
    /// Slots − 1 (a power of two).
    mask: usize,
    hasher: foldhash::fast::RandomState,
    len: AtomicUsize,
    insert: Mutex<()>,
    overflow: Arc<Gate>,
    max_keys: usize,
    factory: Factory<K>,
}

/// `CHUNK` slots of the table.
type Chunk<K> = Box<[OnceLock<Entry<K>>]>;

/// A key with its gate.
struct Entry<K> {
    hash: u64,
    key: K,
    gate: Arc<Gate>,
}

impl<K: Hash + Eq + Clone> GateMap<K> {
    pub(crate) fn new(
        max_keys: usize,
        factory: impl Fn(Option<&K>) -> Gate + Send + Sync + 'static,
    ) -> Self {
        let slots = max_keys
            .saturating_mul(2)
            .checked_next_power_of_two()
            .unwrap_or(MAX_SLOTS)
            .clamp(CHUNK, MAX_SLOTS);
        Self {
            chunks: (0..slots / CHUNK).map(|_| OnceLock::new()).collect(),
            mask: slots - 1,
            hasher: foldhash::fast::RandomState::default(),
            len: AtomicUsize::new(0),
            insert: Mutex::new(()),
            overflow: Arc::new(factory(None)),
            max_keys: max_keys.min(slots / 2),
            factory: Box::new(factory),
        }
    }

    /// Runs `f` with the gate of `key`, creating it on first sight (with
    /// the key `own(key)` makes).
    #[inline]
    pub(crate) fn with<Q, R>(
        &self,
        key: &Q,
        own: impl FnOnce(&Q) -> K,
        f: impl FnOnce(&Arc<Gate>) -> R,
    ) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hasher.hash_one(key);
        if let Some(gate) = self.find(key, hash) {
            return f(gate);
        }
        let gate = self.insert(key, hash, own);
        f(&gate)
    }

    /// The slot at `index`, if it holds a key.
    #[inline]
    fn slot(&self, index: usize) -> Option<&Entry<K>> {
        self.chunks[index / CHUNK].get()?[index % CHUNK].get()
    }

    /// The gate of `key`, if it has one of its own. A key is in the first
    /// empty slot from its hash on at the time it was inserted, and slots
    /// are never cleared, so the first empty slot ends the search.
    #[inline]
    fn find<Q>(&self, key: &Q, hash: u64) -> Option<&Arc<Gate>>
    where
        K: Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let mut index = hash as usize & self.mask;
        loop {
            let entry = self.slot(index)?;
            if entry.hash == hash && entry.key.borrow() == key {
                return Some(&entry.gate);
            }
            index = (index + 1) & self.mask;
        }
    }

    /// The gate keys beyond `max_keys` share.
    pub(crate) fn overflow(&self) -> &Arc<Gate> {
        &self.overflow
    }

    /// The gate of `key`, if it has one of its own.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<Arc<Gate>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.find(key, self.hasher.hash_one(key)).cloned()
    }

    /// Every key with its gate, and the overflow gate (key `None`).
    pub(crate) fn entries(&self) -> Vec<(Option<K>, Arc<Gate>)> {
        let mut entries = vec![(None, self.overflow.clone())];
        entries.extend(
            self.chunks
                .iter()
                .filter_map(OnceLock::get)
                .flat_map(|chunk| chunk.iter().filter_map(OnceLock::get))
                .map(|entry| (Some(entry.key.clone()), entry.gate.clone())),
        );
        entries
    }

    /// How many keys have a gate of their own.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    #[cold]
    fn insert<Q>(&self, key: &Q, hash: u64, own: impl FnOnce(&Q) -> K) -> Arc<Gate>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let _guard = self.insert.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(gate) = self.find(key, hash) {
            return gate.clone(); // inserted while we waited
        }
        let len = self.len.load(Ordering::Relaxed);
        if len >= self.max_keys {
            tracing::debug!(
                max_keys = self.max_keys,
                "brownout: a key beyond max_keys shares the overflow gate"
            );
            return self.overflow.clone();
        }
        let owned = own(key);
        let gate = Arc::new((self.factory)(Some(&owned)));
        let mut index = hash as usize & self.mask;
        while self.slot(index).is_some() {
            index = (index + 1) & self.mask;
        }
        let chunk = self.chunks[index / CHUNK]
            .get_or_init(|| (0..CHUNK).map(|_| OnceLock::new()).collect());
        let entry = Entry {
            hash,
            key: owned,
            gate: gate.clone(),
        };
        // Only inserts write slots, one at a time (under `insert`).
        let _ = chunk[index % CHUNK].set(entry);
        self.len.store(len + 1, Ordering::Relaxed);
        gate
    }
}

impl<K> fmt::Debug for GateMap<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GateMap")
            .field("keys", &self.len.load(Ordering::Relaxed))
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{CHUNK, GateMap};
    use crate::clock::Clock;
    use crate::core::gate::breaker_gate;
    use crate::policy::BreakerPolicy;

    fn map(max_keys: usize) -> GateMap<Arc<str>> {
        let clock = Clock::coarse();
        GateMap::new(max_keys, move |key: Option<&Arc<str>>| {
            let route = key.map_or("overflow".to_owned(), |key| key.to_string());
            breaker_gate(
                &BreakerPolicy::default(),
                route.into(),
                clock.clone(),
                Some(1),
                None,
            )
        })
    }

    fn gate_of(map: &GateMap<Arc<str>>, key: &str) -> Arc<super::Gate> {
        map.with(key, |key: &str| Arc::<str>::from(key), Arc::clone)
    }

    #[test]
    fn every_key_up_to_max_keys_keeps_its_own_gate_and_later_keys_share_the_overflow() {
        let keys = 10 * CHUNK;
        let map = map(keys);
        let gates: Vec<_> = (0..keys).map(|i| gate_of(&map, &format!("k{i}"))).collect();
        assert_eq!(map.len(), keys);
        for (i, gate) in gates.iter().enumerate() {
            let key = format!("k{i}");
            assert!(Arc::ptr_eq(gate, &gate_of(&map, &key)), "{key} found again");
            assert!(Arc::ptr_eq(gate, &map.get(key.as_str()).expect("kept")));
            assert!(!Arc::ptr_eq(gate, map.overflow()));
        }
        let beyond = gate_of(&map, "one too many");
        assert!(Arc::ptr_eq(&beyond, map.overflow()));
        assert!(map.get("one too many").is_none());
        assert_eq!(map.len(), keys);
        let entries = map.entries();
        assert_eq!(entries.len(), keys + 1, "every key, and the overflow");
        assert_eq!(entries.iter().filter(|(key, _)| key.is_none()).count(), 1);
    }

    #[test]
    fn no_key_of_its_own_with_max_keys_0_and_at_most_half_the_slots() {
        let none = map(0);
        assert!(Arc::ptr_eq(&gate_of(&none, "a"), none.overflow()));
        assert_eq!(none.len(), 0);
        let huge = map(usize::MAX);
        assert_eq!(huge.max_keys, super::MAX_SLOTS / 2);
        assert!(!Arc::ptr_eq(&gate_of(&huge, "a"), huge.overflow()));
    }
}
