use std::sync::Arc;

use metrics::SharedString;
use tower::Layer;

use crate::admission::Gate;
use crate::classify::ErrorsAsFailures;
use crate::clock::Clock;
use crate::policy::{BreakerPolicy, Mode, PolicyError};

use super::{BreakerState, CircuitBreaker};

/// Applies a [`CircuitBreaker`] to a service.
///
/// The breaker's state is created with the layer: every service the layer
/// wraps, and every clone of those, shares it. Build one layer per back end
/// you want judged separately.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C = ErrorsAsFailures> {
    policy: BreakerPolicy,
    gate: Arc<Gate>,
    classifier: C,
    route: SharedString,
    seed: Option<u64>,
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
        let route = SharedString::const_str("default");
        Self {
            gate: Arc::new(Gate::new(&policy, route.clone(), Clock::detect(), None)),
            policy,
            classifier: ErrorsAsFailures,
            route,
            seed: None,
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
            policy: self.policy,
            gate: self.gate,
            classifier,
            route: self.route,
            seed: self.seed,
        }
    }

    /// Names the route in metrics (`route` label) and logs. Starts the
    /// breaker afresh: call it while building the layer.
    pub fn route(mut self, route: impl Into<SharedString>) -> Self {
        self.route = route.into();
        self.rebuild(Clock::detect())
    }

    /// Seeds the open periods' jitter, for reproducible drills. Starts the
    /// breaker afresh.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self.rebuild(Clock::detect())
    }

    /// Uses `clock` instead of the detected one. Starts the breaker afresh.
    pub fn clock(self, clock: Clock) -> Self {
        self.rebuild(clock)
    }

    /// The breaker's state now.
    pub fn state(&self) -> BreakerState {
        self.gate.state()
    }

    /// The breaker's mode.
    pub fn mode(&self) -> Mode {
        self.gate.mode()
    }

    /// Changes the mode of the running breaker (and of every service built
    /// from this layer); takes effect on the next request.
    pub fn set_mode(&self, mode: Mode) {
        self.gate.set_mode(mode);
    }

    fn rebuild(mut self, clock: Clock) -> Self {
        self.gate = Arc::new(Gate::new(
            &self.policy,
            self.route.clone(),
            clock,
            self.seed,
        ));
        self
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::from_parts(inner, self.gate.clone(), self.classifier.clone())
    }
}
