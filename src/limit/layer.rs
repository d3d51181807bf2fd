use std::sync::Arc;

use metrics::SharedString;
use tower::Layer;

use crate::admission::{Gate, GateSpec};
use crate::classify::ErrorsAsFailures;
use crate::clock::Clock;
use crate::policy::{LimitPolicy, PriorityPolicy};
use crate::priority::{Classes, DefaultPriority};

use super::AdaptiveLimit;

/// Applies an [`AdaptiveLimit`] to a service.
///
/// The limit's state is created with the layer and shared by every service
/// it wraps and their clones.
#[derive(Debug, Clone)]
pub struct AdaptiveLimitLayer<P = DefaultPriority, C = ErrorsAsFailures> {
    policy: LimitPolicy,
    classes: Classes,
    route: SharedString,
    clock: Clock,
    gate: Arc<Gate>,
    priority: P,
    classifier: C,
}

impl AdaptiveLimitLayer {
    /// A limit following `policy`, with the default priority classes
    /// (`urgent`, `normal`, `bulk`; every request `normal` unless a
    /// [`priority`](Self::priority) reader says otherwise) and the default
    /// classifier (inner errors are overload).
    pub fn new(policy: LimitPolicy) -> Self {
        let classes = Classes::default();
        let route = SharedString::const_str("default");
        let clock = Clock::detect();
        let gate = build(&policy, &classes, route.clone(), clock.clone());
        Self {
            policy,
            classes,
            route,
            clock,
            gate,
            priority: DefaultPriority,
            classifier: ErrorsAsFailures,
        }
    }
}

fn build(policy: &LimitPolicy, classes: &Classes, route: SharedString, clock: Clock) -> Arc<Gate> {
    Arc::new(Gate::new(GateSpec {
        breaker: None,
        limit: Some(policy),
        room: None,
        classes,
        route,
        clock,
        seed: None,
    }))
}

impl<P, C> AdaptiveLimitLayer<P, C> {
    /// Uses the classes of `policy`. Starts the limit afresh.
    pub fn priorities(mut self, policy: &PriorityPolicy) -> Self {
        self.classes = Classes::from_policy(policy);
        self.rebuild()
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
        self.rebuild()
    }

    /// Uses `clock` instead of the detected one. Starts the limit afresh.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self.rebuild()
    }

    /// The classes requests are sorted into.
    pub fn classes(&self) -> &Classes {
        &self.classes
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.gate.limiter().map_or(0, |limit| limit.limit())
    }

    /// Calls in flight now.
    pub fn inflight(&self) -> u32 {
        self.gate.limiter().map_or(0, |limit| limit.inflight())
    }

    fn rebuild(mut self) -> Self {
        self.gate = build(
            &self.policy,
            &self.classes,
            self.route.clone(),
            self.clock.clone(),
        );
        self
    }
}

impl<S, P: Clone, C: Clone> Layer<S> for AdaptiveLimitLayer<P, C> {
    type Service = AdaptiveLimit<S, P, C>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveLimit {
            inner,
            gate: self.gate.clone(),
            classes: self.classes.clone(),
            priority: self.priority.clone(),
            classifier: self.classifier.clone(),
        }
    }
}
