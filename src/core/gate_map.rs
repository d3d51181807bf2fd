//! Gates by key (a route, a tenant, a host): lock-free lookups, a new gate
//! the first time a key is seen, and bounded memory.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::core::gate::Gate;

/// The key, and `route` label, of the gate shared by keys beyond
/// `max_keys`.
pub const OVERFLOW_KEY: &str = "overflow";

type Map<K> = HashMap<K, Arc<Gate>, foldhash::fast::RandomState>;

/// Builds the gate of a key (or, given `None`, the overflow gate).
type Factory<K> = Box<dyn Fn(Option<&K>) -> Gate + Send + Sync>;

/// Gates by key. Past `max_keys` distinct keys, every new key shares one
/// overflow gate, so memory stays bounded whatever the callers send, and no
/// key's state is ever evicted.
pub(crate) struct GateMap<K> {
    /// Copied on write: a lookup is an atomic load, an insert clones the
    /// map under `insert` (new keys are rare: routes, tenants).
    gates: ArcSwap<Map<K>>,
    insert: Mutex<()>,
    overflow: Arc<Gate>,
    max_keys: usize,
    factory: Factory<K>,
}

impl<K: Hash + Eq + Clone> GateMap<K> {
    pub(crate) fn new(
        max_keys: usize,
        factory: impl Fn(Option<&K>) -> Gate + Send + Sync + 'static,
    ) -> Self {
        Self {
            gates: ArcSwap::from_pointee(Map::default()),
            insert: Mutex::new(()),
            overflow: Arc::new(factory(None)),
            max_keys,
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
        if let Some(gate) = self.gates.load().get(key) {
            return f(gate);
        }
        let gate = self.insert(key, own);
        f(&gate)
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
        self.gates.load().get(key).cloned()
    }

    /// Every key with its gate, and the overflow gate (key `None`).
    pub(crate) fn entries(&self) -> Vec<(Option<K>, Arc<Gate>)> {
        let mut entries = vec![(None, self.overflow.clone())];
        entries.extend(
            self.gates
                .load()
                .iter()
                .map(|(key, gate)| (Some(key.clone()), gate.clone())),
        );
        entries
    }

    /// How many keys have a gate of their own.
    pub(crate) fn len(&self) -> usize {
        self.gates.load().len()
    }

    #[cold]
    fn insert<Q>(&self, key: &Q, own: impl FnOnce(&Q) -> K) -> Arc<Gate>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let _guard = self.insert.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.gates.load();
        if let Some(gate) = current.get(key) {
            return gate.clone(); // inserted while we waited
        }
        if current.len() >= self.max_keys {
            tracing::debug!(
                max_keys = self.max_keys,
                "brownout: a key beyond max_keys shares the overflow gate"
            );
            return self.overflow.clone();
        }
        let owned = own(key);
        let gate = Arc::new((self.factory)(Some(&owned)));
        let mut next = Map::clone(&current);
        next.insert(owned, gate.clone());
        self.gates.store(Arc::new(next));
        gate
    }
}

impl<K> fmt::Debug for GateMap<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GateMap")
            .field("keys", &self.gates.load().len())
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}
