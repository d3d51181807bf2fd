//! One breaker per key (a route, a tenant, a downstream host), with bounded
//! memory.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use metrics::SharedString;
use tower::{BoxError, Layer, Service};

use crate::admission::{Gate, breaker_gate};
use crate::classify::{Classify, ErrorsAsFailures};
use crate::clock::Clock;
use crate::policy::BreakerPolicy;
use crate::priority::Priority;

use super::{BreakerState, ResponseFuture};

/// The `route` label of the breaker shared by keys beyond `max_keys`.
pub const OVERFLOW_KEY: &str = "overflow";

type Map<K> = HashMap<K, Arc<Gate>, foldhash::fast::RandomState>;

/// Gates by key: lock-free lookups, and a new gate only the first time a
/// key is seen. Past `max_keys` distinct keys, every new key shares one
/// overflow gate, so memory stays bounded whatever the callers send, and no
/// key's state is ever evicted.
pub(crate) struct GateMap<K> {
    /// Copied on write: a lookup is an atomic load, an insert clones the
    /// map under `insert` (new keys are rare: routes, tenants).
    gates: ArcSwap<Map<K>>,
    insert: Mutex<()>,
    overflow: Arc<Gate>,
    max_keys: usize,
    policy: BreakerPolicy,
    clock: Clock,
    seed: Option<u64>,
}

impl<K> GateMap<K>
where
    K: Hash + Eq + Clone + fmt::Display,
{
    pub(crate) fn new(
        policy: BreakerPolicy,
        max_keys: usize,
        clock: Clock,
        seed: Option<u64>,
    ) -> Self {
        Self {
            gates: ArcSwap::from_pointee(Map::default()),
            insert: Mutex::new(()),
            overflow: Arc::new(breaker_gate(
                &policy,
                SharedString::const_str(OVERFLOW_KEY),
                clock.clone(),
                seed,
            )),
            max_keys,
            policy,
            clock,
            seed,
        }
    }

    /// Runs `f` with the gate of `key`, creating it on first sight.
    #[inline]
    pub(crate) fn with<R>(&self, key: &K, f: impl FnOnce(&Arc<Gate>) -> R) -> R {
        if let Some(gate) = self.gates.load().get(key) {
            return f(gate);
        }
        let gate = self.insert(key);
        f(&gate)
    }

    /// The state of `key`'s breaker, if it has one of its own.
    pub(crate) fn state(&self, key: &K) -> Option<BreakerState> {
        self.gates.load().get(key).map(|gate| gate.state())
    }

    /// How many keys have a breaker of their own.
    pub(crate) fn len(&self) -> usize {
        self.gates.load().len()
    }

    #[cold]
    fn insert(&self, key: &K) -> Arc<Gate> {
        let _guard = self.insert.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.gates.load();
        if let Some(gate) = current.get(key) {
            return gate.clone(); // inserted while we waited
        }
        if current.len() >= self.max_keys {
            tracing::debug!(key = %key, max_keys = self.max_keys, "brownout: key beyond max_keys shares the overflow breaker");
            return self.overflow.clone();
        }
        let seed = self.seed.map(|s| s.wrapping_add(current.len() as u64 + 1));
        let gate = Arc::new(breaker_gate(
            &self.policy,
            SharedString::from(key.to_string()),
            self.clock.clone(),
            seed,
        ));
        let mut next = Map::clone(&current);
        next.insert(key.clone(), gate.clone());
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

/// Applies a [`KeyedCircuitBreaker`]: one breaker per key of the request.
///
/// Built with [`CircuitBreakerLayer::per_key`](super::CircuitBreakerLayer::per_key).
pub struct KeyedCircuitBreakerLayer<K, F, C = ErrorsAsFailures> {
    gates: Arc<GateMap<K>>,
    key_of: F,
    classifier: C,
}

impl<K, F, C> KeyedCircuitBreakerLayer<K, F, C>
where
    K: Hash + Eq + Clone + fmt::Display,
{
    pub(crate) fn from_parts(gates: GateMap<K>, key_of: F, classifier: C) -> Self {
        Self {
            gates: Arc::new(gates),
            key_of,
            classifier,
        }
    }

    /// The state of `key`'s breaker; `None` if the key has not been seen
    /// (or shares the overflow breaker).
    pub fn state(&self, key: &K) -> Option<BreakerState> {
        self.gates.state(key)
    }

    /// How many keys have a breaker of their own (at most `max_keys`).
    pub fn keys(&self) -> usize {
        self.gates.len()
    }
}

impl<K, F: Clone, C: Clone> Clone for KeyedCircuitBreakerLayer<K, F, C> {
    fn clone(&self) -> Self {
        Self {
            gates: self.gates.clone(),
            key_of: self.key_of.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<K, F, C: fmt::Debug> fmt::Debug for KeyedCircuitBreakerLayer<K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("gates", &self.gates)
            .field("classifier", &self.classifier)
            .finish_non_exhaustive()
    }
}

impl<S, K, F: Clone, C: Clone> Layer<S> for KeyedCircuitBreakerLayer<K, F, C> {
    type Service = KeyedCircuitBreaker<S, K, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker {
            inner,
            gates: self.gates.clone(),
            key_of: self.key_of.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// A circuit breaker per key of the request: a failing `/payments` does not
/// open the breaker of `/slots`. Clones share every key's state.
pub struct KeyedCircuitBreaker<S, K, F, C = ErrorsAsFailures> {
    inner: S,
    gates: Arc<GateMap<K>>,
    key_of: F,
    classifier: C,
}

impl<S, K, F, C> KeyedCircuitBreaker<S, K, F, C>
where
    K: Hash + Eq + Clone + fmt::Display,
{
    /// The state of `key`'s breaker; `None` if the key has not been seen
    /// (or shares the overflow breaker).
    pub fn state(&self, key: &K) -> Option<BreakerState> {
        self.gates.state(key)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, K, F: Clone, C: Clone> Clone for KeyedCircuitBreaker<S, K, F, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            gates: self.gates.clone(),
            key_of: self.key_of.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S: fmt::Debug, K, F, C: fmt::Debug> fmt::Debug for KeyedCircuitBreaker<S, K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .field("gates", &self.gates)
            .field("classifier", &self.classifier)
            .finish_non_exhaustive()
    }
}

impl<S, K, F, C, Req> Service<Req> for KeyedCircuitBreaker<S, K, F, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone + fmt::Display,
    F: Fn(&Req) -> K,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let key = (self.key_of)(&req);
        match self.gates.with(&key, |gate| gate.admit(Priority::HIGHEST)) {
            Ok(permit) => {
                ResponseFuture::admitted(self.inner.call(req), permit, self.classifier.clone())
            }
            Err(rejected) => ResponseFuture::rejected(rejected),
        }
    }
}
