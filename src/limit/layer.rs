use std::sync::Arc;

use metrics::SharedString;
use tower::Layer;

use crate::admission::{Gate, GateSpec, LazyGate};
use crate::classify::ErrorsAsFailures;
use crate::clock::Clock;
use crate::policy::{LimitPolicy, PriorityPolicy};
use crate::priority::{Classes, DefaultPriority};

use super::AdaptiveLimit;

/// Applies an [`AdaptiveLimit`] to a service.
///
/// Every service the layer wraps, and their clones, share one limit
/// (created when the layer first wraps a service).
#[derive(Debug, Clone)]
pub struct AdaptiveLimitLayer<P = DefaultPriority, C = ErrorsAsFailures> {
    policy: LimitPolicy,
    classes: Classes,
    route: SharedString,
    clock: Option<Clock>,
    gate: LazyGate,
    priority: P,
    classifier: C,
}

impl AdaptiveLimitLayer {
    /// A limit following `policy`, with the default priority classes
    /// (`urgent`, `normal`, `bulk`; every request `normal` unless a
    /// [`priority`](Self::priority) reader says otherwise) and the default
    /// classifier (inner errors are overload).
    pub fn new(policy: LimitPolicy) -> Self {
        Self {
            policy,
            classes: Classes::default(),
            route: SharedString::const_str("default"),
            clock: None,
            gate: LazyGate::default(),
            priority: DefaultPriority,
            classifier: ErrorsAsFailures,
        }
    }
}

impl<P, C> AdaptiveLimitLayer<P, C> {
    /// Uses the classes of `policy`. Starts the limit afresh.
    pub fn priorities(mut self, policy: &PriorityPolicy) -> Self {
        self.classes = Classes::from_policy(policy);
        self.gate = LazyGate::default();
        self
    }

    /// Finds each request's class with `priority` (a
    /// [`PriorityOf`](crate::priority::PriorityOf): `HeaderPriority` for
    /// HTTP, [`priority_fn`](crate::priority::priority_fn) for a closure).
    pub fn priority<P2>(self, priority: P2) -> AdaptiveLimitLayer<P2, C> {
        AdaptiveLimitLayer {
            policy: self.policy,
            classes: self.classes,
            route: self.route,
            clock: self.clock,
            gate: self.gate,
            priority,
            classifier: self.classifier,
        }
    }

    /// Uses `classifier` to tell overload (failures) from success.
    pub fn classify<C2>(self, classifier: C2) -> AdaptiveLimitLayer<P, C2> {
        AdaptiveLimitLayer {
            policy: self.policy,
            classes: self.classes,
            route: self.route,
            clock: self.clock,
            gate: self.gate,
            priority: self.priority,
            classifier,
        }
    }

    /// Names the route in metrics and logs. Starts the limit afresh.
    pub fn route(mut self, route: impl Into<SharedString>) -> Self {
        self.route = route.into();
        self.gate = LazyGate::default();
        self
    }

    /// Uses `clock` instead of the one [detected](Clock::detect) when the
    /// limit is created. Starts the limit afresh.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self.gate = LazyGate::default();
        self
    }

    /// The classes requests are sorted into.
    pub fn classes(&self) -> &Classes {
        &self.classes
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.gate().limiter().map_or(0, |limit| limit.limit())
    }

    /// Calls in flight now.
    pub fn inflight(&self) -> u32 {
        self.gate().limiter().map_or(0, |limit| limit.inflight())
    }

    fn gate(&self) -> &Arc<Gate> {
        self.gate.get(|| {
            Gate::new(GateSpec {
                breaker: None,
                limit: Some(&self.policy),
                room: None,
                classes: &self.classes,
                route: self.route.clone(),
                clock: self.clock.clone().unwrap_or_else(Clock::detect),
                seed: None,
            })
        })
    }
}

impl<S, P: Clone, C: Clone> Layer<S> for AdaptiveLimitLayer<P, C> {
    type Service = AdaptiveLimit<S, P, C>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveLimit {
            inner,
            gate: self.gate().clone(),
            classes: self.classes.clone(),
            priority: self.priority.clone(),
            classifier: self.classifier.clone(),
        }
    }
}
