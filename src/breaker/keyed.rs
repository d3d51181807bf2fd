//! One breaker per key (a route, a tenant, a downstream host), with bounded
//! memory.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{BoxError, Layer, Service};

use crate::classify::{Classify, ErrorsAsFailures};
use crate::core::breaker::Manual;
use crate::core::gate::Gate;
use crate::core::gate_map::GateMap;
use crate::priority::Priority;

use super::{BreakerState, ResponseFuture, Until};

pub use crate::core::gate_map::OVERFLOW_KEY;

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
        self.gates.get(key).map(|gate| gate.state())
    }

    /// How many keys have a breaker of their own (at most `max_keys`).
    pub fn keys(&self) -> usize {
        self.gates.len()
    }

    /// Puts `key`'s breaker in `mode` by hand (`forced_open`,
    /// `forced_closed`, back to `enforce`); `false` if the key has not been
    /// seen. Reported as a transition when the state changes.
    pub fn set_mode(&self, key: &K, mode: crate::policy::Mode) -> bool {
        self.act(key, |gate| gate.set_mode(mode))
    }

    /// Resets `key`'s breaker by hand: closed, its window emptied, its
    /// backoff forgotten (a forced mode goes back to `enforce`); `false` if
    /// the key has not been seen. Reported as a transition.
    pub fn reset(&self, key: &K) -> bool {
        self.act(key, |gate| {
            gate.control(Manual::Reset);
        })
    }

    /// Opens `key`'s breaker by hand until `until` (a wall-clock time or a
    /// duration from now; see [`Until`]), when it probes; `false` if the
    /// key has not been seen.
    pub fn open_until(&self, key: &K, until: impl Into<Until>) -> bool {
        let until = until.into();
        self.act(key, |gate| {
            gate.open_until(until);
        })
    }

    /// Puts `key`'s breaker half-open by hand: its next calls probe.
    /// `false` if the key has not been seen.
    pub fn half_open_now(&self, key: &K) -> bool {
        self.act(key, |gate| {
            gate.control(Manual::HalfOpenNow);
        })
    }

    fn act(&self, key: &K, act: impl FnOnce(&Gate)) -> bool {
        match self.gates.get(key) {
            Some(gate) => {
                act(&gate);
                true
            }
            None => false,
        }
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
        self.gates.get(key).map(|gate| gate.state())
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
        match self
            .gates
            .with(&key, K::clone, |gate| gate.admit(Priority::HIGHEST))
        {
            Ok(permit) => {
                ResponseFuture::admitted(self.inner.call(req), permit, self.classifier.clone())
            }
            Err(rejected) => ResponseFuture::rejected(rejected),
        }
    }
}
