use std::fmt;
use std::hash::{BuildHasher, Hash};

use metrics::SharedString;
use tower::Layer;

use crate::classify::ErrorsAsFailures;
use crate::clock::Clock;
use crate::core::gate::{GateConfig, breaker_gate};
use crate::core::gate_map::{GateMap, OVERFLOW_KEY};
use crate::policy::{BreakerPolicy, Mode, PolicyError};

use super::keyed::KeyedCircuitBreakerLayer;
use super::{BreakerState, CircuitBreaker};

/// Applies a [`CircuitBreaker`] to a service.
///
/// Every service the layer wraps, and every clone of those, shares one
/// breaker (created when the layer first wraps a service). Build one layer
/// per back end you want judged separately, or use
/// [`per_key`](Self::per_key).
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C = ErrorsAsFailures> {
    config: GateConfig,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// A breaker following `policy`, with the default classifier (inner
    /// errors are failures) and the route label `default`.
    ///
    /// A policy that does not validate is used with its bad values brought
    /// into range, and an error is logged; [`try_new`](Self::try_new)
    /// returns the error instead.
    pub fn new(policy: BreakerPolicy) -> Self {
        if let Err(err) = policy.validate() {
            tracing::error!(%err, "brownout: invalid breaker policy, using it with its values clamped");
        }
        Self {
            config: GateConfig::default().breaker(policy),
            classifier: ErrorsAsFailures,
        }
    }

    /// A breaker following `policy`, or the first thing wrong with it.
    pub fn try_new(policy: BreakerPolicy) -> Result<Self, PolicyError> {
        policy.validate()?;
        Ok(Self::new(policy))
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Uses `classifier` to tell failures from successes.
    pub fn classify<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            config: self.config,
            classifier,
        }
    }

    /// Names the route in metrics (`route` label) and logs. Starts the
    /// breaker afresh: call it while building the layer.
    pub fn route(mut self, route: impl Into<SharedString>) -> Self {
        self.config = self.config.route(route.into());
        self
    }

    /// Seeds the open periods' jitter, for reproducible drills. Starts the
    /// breaker afresh.
    pub fn seed(mut self, seed: u64) -> Self {
        self.config = self.config.seed(seed);
        self
    }

    /// Uses `clock` instead of the one [detected](Clock::detect) when the
    /// breaker is created. Starts the breaker afresh.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.config = self.config.clock(clock);
        self
    }

    /// Tells `listener` of the breaker's transitions and of the calls it
    /// turns away (see [`listen`](crate::listen)); of every key's when
    /// [`per_key`](Self::per_key) is called after it. Starts the breaker
    /// afresh.
    pub fn listener(mut self, listener: impl crate::listen::Listener) -> Self {
        self.config = self
            .config
            .listener(crate::listen::SharedListener::new(listener));
        self
    }

    /// The breaker's state now.
    pub fn state(&self) -> BreakerState {
        self.config.gate().state()
    }

    /// The breaker's mode.
    pub fn mode(&self) -> Mode {
        self.config.gate().mode()
    }

    /// Changes the mode of the running breaker (and of every service built
    /// from this layer); takes effect on the next request.
    pub fn set_mode(&self, mode: Mode) {
        self.config.gate().set_mode(mode);
    }

    /// Resets the running breaker by hand: closed, its window emptied, its
    /// backoff forgotten (a forced mode goes back to `enforce`). Reported
    /// as a transition (metrics, log, [listener](crate::listen)).
    pub fn reset(&self) {
        self.config
            .gate()
            .control(crate::core::breaker::Manual::Reset);
    }

    /// Opens the running breaker by hand until `until` (a wall-clock time
    /// or a duration from now), when it probes; see [`Until`](super::Until).
    pub fn open_until(&self, until: impl Into<super::Until>) {
        self.config.gate().open_until(until.into());
    }

    /// Puts the running breaker half-open by hand: the next calls probe.
    pub fn half_open_now(&self) {
        self.config
            .gate()
            .control(crate::core::breaker::Manual::HalfOpenNow);
    }

    /// One breaker per key instead of one for all calls: `key_of` names the
    /// key of each request (a route, a tenant, a host); the key's `Display`
    /// is its `route` label. At most `max_keys` keys get a breaker of their
    /// own (and at most 2^21, whatever `max_keys` says); later keys share
    /// one more, labelled [`OVERFLOW_KEY`](super::OVERFLOW_KEY), so memory
    /// stays bounded whatever the callers send.
    ///
    /// Lookups are lock-free (a few atomic loads); a key's breaker is
    /// created the first time the key is seen. Make the key cheap to hash and clone (an enum, a
    /// `&'static str`, an `Arc<str>`): it is computed on every call.
    ///
    /// ```
    /// use brownout::{BreakerPolicy, CircuitBreakerLayer};
    /// use tower::ServiceBuilder;
    ///
    /// let layer = CircuitBreakerLayer::new(BreakerPolicy::default())
    ///     .per_key(64, |path: &&'static str| *path);
    /// let svc = ServiceBuilder::new()
    ///     .layer(layer)
    ///     .service_fn(|path: &'static str| async move { Ok::<_, std::io::Error>(path.len()) });
    /// # let _ = svc;
    /// ```
    pub fn per_key<Req, K, F>(self, max_keys: usize, key_of: F) -> KeyedCircuitBreakerLayer<K, F, C>
    where
        K: Hash + Eq + Clone + fmt::Display + Send + Sync + 'static,
        F: Fn(&Req) -> K,
    {
        let clock = self.config.clock_or_detect();
        let seed = self.config.seed_value();
        let listener = self.config.listener_value();
        let policy = self.config.breaker_policy().cloned().unwrap_or_default();
        let gates = GateMap::new(max_keys, move |key: Option<&K>| {
            let route = match key {
                Some(key) => SharedString::from(key.to_string()),
                None => SharedString::const_str(OVERFLOW_KEY),
            };
            // Distinct but reproducible jitter per key when seeded.
            let seed =
                seed.map(|s| s ^ foldhash::fast::FixedState::with_seed(s).hash_one(route.as_ref()));
            breaker_gate(&policy, route, clock.clone(), seed, listener.clone())
        });
        KeyedCircuitBreakerLayer::from_parts(gates, key_of, self.classifier)
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::from_parts(inner, self.config.gate().clone(), self.classifier.clone())
    }
}
