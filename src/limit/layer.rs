use metrics::SharedString;
use tower::Layer;

use crate::classify::ErrorsAsFailures;
use crate::clock::Clock;
use crate::core::gate::GateConfig;
use crate::policy::{LimitPolicy, PriorityPolicy};
use crate::priority::{Classes, DefaultPriority};

use super::AdaptiveLimit;

/// Applies an [`AdaptiveLimit`] to a service.
///
/// Every service the layer wraps, and their clones, share one limit
/// (created when the layer first wraps a service).
#[derive(Debug, Clone)]
pub struct AdaptiveLimitLayer<P = DefaultPriority, C = ErrorsAsFailures> {
    config: GateConfig,
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
            config: GateConfig::default().limit(policy),
            priority: DefaultPriority,
            classifier: ErrorsAsFailures,
        }
    }
}

impl<P, C> AdaptiveLimitLayer<P, C> {
    /// Uses the classes of `policy`. Starts the limit afresh.
    pub fn priorities(mut self, policy: &PriorityPolicy) -> Self {
        self.config = self.config.priorities(policy);
        self
    }

    /// Finds each request's class with `priority` (a
    /// [`PriorityOf`](crate::priority::PriorityOf): `HeaderPriority` for
    /// HTTP, [`priority_fn`](crate::priority::priority_fn) for a closure).
    pub fn priority<P2>(self, priority: P2) -> AdaptiveLimitLayer<P2, C> {
        AdaptiveLimitLayer {
            config: self.config,
            priority,
            classifier: self.classifier,
        }
    }

    /// Uses `classifier` to tell overload (failures) from success.
    pub fn classify<C2>(self, classifier: C2) -> AdaptiveLimitLayer<P, C2> {
        AdaptiveLimitLayer {
            config: self.config,
            priority: self.priority,
            classifier,
        }
    }

    /// Names the route in metrics and logs. Starts the limit afresh.
    pub fn route(mut self, route: impl Into<SharedString>) -> Self {
        self.config = self.config.route(route.into());
        self
    }

    /// Tells `listener` of the limit's changes and of the calls it turns
    /// away (see [`listen`](crate::listen)). Starts afresh.
    pub fn listener(mut self, listener: impl crate::listen::Listener) -> Self {
        self.config = self
            .config
            .listener(crate::listen::SharedListener::new(listener));
        self
    }

    /// Learns the limit with the application's own algorithm where the
    /// policy says `algorithm = "custom"` (see
    /// [`LimitAlgorithm`](crate::limit::LimitAlgorithm)); `make` builds its
    /// instance. Starts the limit afresh.
    ///
    /// ```
    /// use brownout::limit::{LimitAlgorithm, WindowSample};
    /// use brownout::policy::Algorithm;
    /// use brownout::{AdaptiveLimitLayer, LimitPolicy};
    ///
    /// #[derive(Debug)]
    /// struct Steady;
    /// impl LimitAlgorithm for Steady {
    ///     fn update(&mut self, limit: f64, _: &WindowSample) -> f64 {
    ///         limit
    ///     }
    /// }
    ///
    /// let policy = LimitPolicy { algorithm: Algorithm::Custom, initial: 7, ..LimitPolicy::default() };
    /// let layer = AdaptiveLimitLayer::new(policy).algorithm(|| Steady);
    /// assert_eq!(layer.limit(), 7);
    /// ```
    pub fn algorithm<A, F>(mut self, make: F) -> Self
    where
        A: crate::limit::LimitAlgorithm,
        F: Fn() -> A + Send + Sync + 'static,
    {
        self.config = self
            .config
            .custom_limit(crate::limit::CustomAlgorithm::new(make));
        self
    }

    /// Uses `clock` instead of the one [detected](Clock::detect) when the
    /// limit is created. Starts the limit afresh.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.config = self.config.clock(clock);
        self
    }

    /// The classes requests are sorted into.
    pub fn classes(&self) -> &Classes {
        self.config.classes()
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.config
            .gate()
            .limiter()
            .map_or(0, |limit| limit.limit())
    }

    /// Calls in flight now.
    pub fn inflight(&self) -> u32 {
        self.config
            .gate()
            .limiter()
            .map_or(0, |limit| limit.inflight())
    }
}

impl<S, P: Clone, C: Clone> Layer<S> for AdaptiveLimitLayer<P, C> {
    type Service = AdaptiveLimit<S, P, C>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveLimit {
            inner,
            gate: self.config.gate().clone(),
            classes: self.config.classes().clone(),
            priority: self.priority.clone(),
            classifier: self.classifier.clone(),
        }
    }
}
