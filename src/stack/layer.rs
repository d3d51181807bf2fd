//! [`BrownoutLayer`]: the composed stack's builder, and the layer that
//! wraps a service in it. What every clone of the stack shares, and how it
//! is built from the policy, is in [`shared`](super::shared).

use std::sync::Arc;

use tower::Layer;

use crate::classify::ErrorsAsFailures;
use crate::clock::Clock;
use crate::core::gate::Gate;
use crate::core::gate_map::OVERFLOW_KEY;
use crate::deadline::NoDeadline;
use crate::fallback::RejectAsError;
use crate::listen::SharedListener;
use crate::policy::Policy;
use crate::priority::{Classes, DefaultPriority};

#[cfg(feature = "defer")]
use super::extras::open_deferral;
use super::extras::{BudgetFallback, Budgeted, BuildError};
use super::shared::{Settings, Shared};
use super::{Brownout, SingleRoute};

/// Routes with a gate of their own before new ones share the overflow gate.
pub const DEFAULT_MAX_ROUTES: usize = 256;

/// The composed stack: fallback → admission (breaker × limit × waiting
/// room, per route) → inner service, from one [`Policy`]; see the
/// [module docs](super).
///
/// [`from_policy`](Self::from_policy) gives the generic stack: one route,
/// default classes, no deadlines, inner errors as failures, and rejections
/// as the service's error ([`RejectAsError`]). The builder methods swap
/// each part; [`http`](Self::http) and [`grpc`](Self::grpc) set them all
/// for HTTP and gRPC services.
#[derive(Debug, Clone)]
pub struct BrownoutLayer<
    F = RejectAsError,
    R = SingleRoute,
    P = DefaultPriority,
    D = NoDeadline,
    C = ErrorsAsFailures,
> {
    settings: Settings,
    shared: Arc<Shared>,
    parts: Parts<F, R, P, D, C>,
}

/// The parts that look at each request and answer it; the type-changing
/// builders swap one each.
#[derive(Debug, Clone)]
struct Parts<F, R, P, D, C> {
    fallback: F,
    route: R,
    priority: P,
    deadline: D,
    classifier: C,
}

impl BrownoutLayer {
    /// The stack `policy` describes. Build it after `tokio::time::pause()`
    /// in tests, so that it follows virtual time.
    ///
    /// With a `[budget]` section, every request takes a unit of the budget
    /// before admission ([`Budgeted`](super::Budgeted)); with
    /// `[routes."…".defer]` sections (feature `defer`), their stores are
    /// opened here and the HTTP preset ([`http`](Self::http)) defers the
    /// requests those routes reject. With a `[fleet]` section (feature
    /// `fleet`), every route's breaker shares its verdicts with the other
    /// replicas through Redis ([`fleet`](crate::fleet)): build the stack
    /// inside a tokio runtime, where its background task is spawned. All
    /// three are built once, here: a policy a
    /// [`PolicyHandle`](super::PolicyHandle) applies later changes the
    /// breakers, limits and rooms, not the budget, the stores or the fleet.
    ///
    /// A policy that does not validate is used with its bad values brought
    /// into range, and an error is logged; so is a part that cannot be
    /// built (a budget, a store that cannot be opened: the stack goes on
    /// without it). Load policies with [`Policy::from_path`] and friends,
    /// which validate, or build with [`try_from_policy`](Self::try_from_policy),
    /// which says what is wrong instead.
    pub fn from_policy(policy: &Policy) -> Self {
        Self::build(policy, false).unwrap_or_else(|err| {
            // Not reached: a lenient build logs what it leaves out.
            tracing::error!(%err, "brownout: stack built without its failing part");
            Self::build(&Policy::default(), false).expect("the default policy builds")
        })
    }

    /// [`from_policy`](Self::from_policy), or the first thing that stops
    /// the stack from being built as `policy` says: a field that does not
    /// validate, a `[budget]` or a `defer` section that needs a cargo
    /// feature this build lacks, a deferral store that cannot be opened
    /// (its path and why), a `[fleet]` whose `url` cannot be used or a
    /// stack with one built outside a tokio runtime. Each error names the
    /// field or the path.
    ///
    /// ```
    /// # #[cfg(feature = "toml")] {
    /// use brownout::{BrownoutLayer, Policy};
    ///
    /// let mut policy = Policy::default();
    /// policy.limit.min = 0;
    /// let err = BrownoutLayer::try_from_policy(&policy).unwrap_err();
    /// assert!(err.to_string().starts_with("limit.min: 0"), "{err}");
    /// # }
    /// ```
    pub fn try_from_policy(policy: &Policy) -> Result<Self, BuildError> {
        Self::build(policy, true)
    }

    fn build(policy: &Policy, strict: bool) -> Result<Self, BuildError> {
        if strict {
            policy.validate()?;
        }
        let settings = Settings {
            policy: Arc::new(policy.clone()),
            max_routes: DEFAULT_MAX_ROUTES,
            clock: None,
            seed: None,
            listener: None,
            custom_limit: None,
            #[cfg(feature = "defer")]
            deferral: open_deferral(policy, strict)?,
        };
        Ok(Self {
            shared: settings.build_checked(strict)?,
            settings,
            parts: Parts {
                fallback: RejectAsError,
                route: SingleRoute,
                priority: DefaultPriority,
                deadline: NoDeadline,
                classifier: ErrorsAsFailures,
            },
        })
    }
}

impl<F, R, P, D, C> BrownoutLayer<F, R, P, D, C> {
    /// At most `max_routes` routes get gates of their own (default
    /// [`DEFAULT_MAX_ROUTES`]); later ones share one, labelled `overflow`.
    /// Starts the stack afresh.
    pub fn max_routes(mut self, max_routes: usize) -> Self {
        self.settings.max_routes = max_routes;
        self.shared = self.settings.build();
        self
    }

    /// Uses `clock` instead of the detected one. Starts the stack afresh.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.settings.clock = Some(clock);
        self.shared = self.settings.build();
        self
    }

    /// Seeds the jitter of every route's breaker open periods (each route
    /// mixes in its name), so that a run can be replayed: the drill uses
    /// its scenario's seed. Without it each breaker draws a fresh seed.
    /// Starts the stack afresh: call it while building the layer.
    pub fn seed(mut self, seed: u64) -> Self {
        self.settings.seed = Some(seed);
        self.shared = self.settings.build();
        self
    }

    /// Tells `listener` of every route's state changes: breaker
    /// transitions (manual ones included), limit changes, requests turned
    /// away, maintenance windows starting and ending; see
    /// [`listen`](crate::listen). Starts the stack afresh: call it while
    /// building the layer.
    pub fn listener(mut self, listener: impl crate::listen::Listener) -> Self {
        self.settings.listener = Some(SharedListener::new(listener));
        self.shared = self.settings.build();
        self
    }

    /// Learns the limit with the application's own algorithm on the routes
    /// whose policy says `algorithm = "custom"` (see
    /// [`LimitAlgorithm`](crate::limit::LimitAlgorithm)); `make` builds
    /// each route's instance. The algorithm belongs to the layer, not to
    /// the policy: a reload that names `custom` again keeps using it, one
    /// that names another algorithm switches to that one. Starts the stack
    /// afresh: call it while building the layer.
    pub fn limit_algorithm<A, M>(mut self, make: M) -> Self
    where
        A: crate::limit::LimitAlgorithm,
        M: Fn() -> A + Send + Sync + 'static,
    {
        self.settings.custom_limit = Some(crate::limit::CustomAlgorithm::new(make));
        self.shared = self.settings.build();
        self
    }

    /// The same stack with its request parts changed by `change`.
    fn with_parts<F2, R2, P2, D2, C2>(
        self,
        change: impl FnOnce(Parts<F, R, P, D, C>) -> Parts<F2, R2, P2, D2, C2>,
    ) -> BrownoutLayer<F2, R2, P2, D2, C2> {
        BrownoutLayer {
            settings: self.settings,
            shared: self.shared,
            parts: change(self.parts),
        }
    }

    /// The policy the stack follows now (a [`PolicyHandle`](super::PolicyHandle)
    /// may have replaced the one it was built from).
    pub fn policy(&self) -> Arc<Policy> {
        self.shared.policy.load_full()
    }

    /// A handle that replaces the running stack's policy, live.
    pub fn handle(&self) -> super::PolicyHandle {
        super::PolicyHandle::new(self.shared.clone())
    }

    /// Every route's state now; see [`PolicyHandle::snapshot`](super::PolicyHandle::snapshot).
    pub fn snapshot(&self) -> super::HealthSnapshot {
        super::health::snapshot(&self.shared)
    }

    /// The policy's `[budget]` as the stack counts it, if it has one.
    pub fn budget(&self) -> Option<&crate::budget::Budget> {
        self.shared.budget.as_ref()
    }

    /// The deferring routes of the policy with their open stores, if it
    /// has any (feature `defer`): the source of the status endpoint
    /// ([`Deferral::status_layer`](crate::defer::Deferral::status_layer))
    /// and the replayers ([`replay`](Self::replay)).
    #[cfg(feature = "defer")]
    pub fn deferral(&self) -> Option<&crate::defer::Deferral> {
        self.settings.deferral.as_ref()
    }

    /// The priority classes requests are sorted into.
    pub fn classes(&self) -> &Classes {
        &self.shared.classes
    }

    /// The gate of `route`: its own, the shared overflow gate for
    /// [`OVERFLOW_KEY`](crate::breaker::OVERFLOW_KEY), or none if the route
    /// has not been seen.
    fn gate_of(&self, route: &str) -> Option<Arc<Gate>> {
        match route {
            OVERFLOW_KEY => Some(self.shared.gates.overflow().clone()),
            route => self.shared.gates.get(route),
        }
    }

    /// The breaker state of `route` (`"default"` for requests without a
    /// route, `"overflow"` for routes beyond `max_routes`), if the route has
    /// been seen.
    pub fn state(&self, route: &str) -> Option<crate::BreakerState> {
        self.gate_of(route).map(|gate| gate.state())
    }

    /// The current limit of `route`, if the route has been seen.
    pub fn limit(&self, route: &str) -> Option<u32> {
        let gate = self.gate_of(route)?;
        gate.limiter().map(|limit| limit.limit())
    }

    /// The calls in flight past which `route`'s callers of class
    /// `priority` wait for a slot (their share of the limit, as admission
    /// reckons it), if the route has a limit.
    pub(crate) fn class_cap(
        &self,
        route: &str,
        priority: crate::priority::Priority,
    ) -> Option<u32> {
        self.gate_of(route)?
            .limiter()
            .map(|limit| limit.cap(priority))
    }

    /// Calls in flight on `route` now, if the route has been seen: those
    /// within its limit and, in shadow mode, those let past it.
    pub fn inflight(&self, route: &str) -> Option<u32> {
        self.gate_of(route).map(|gate| gate.inflight())
    }

    /// Requests waiting on `route` now (0 if it has not been seen).
    pub fn waiting(&self, route: &str) -> usize {
        self.gate_of(route).map_or(0, |gate| gate.waiting())
    }

    /// Answers rejections with `fallback`.
    pub fn fallback<F2>(self, fallback: F2) -> BrownoutLayer<F2, R, P, D, C> {
        self.with_parts(|parts| Parts {
            fallback,
            route: parts.route,
            priority: parts.priority,
            deadline: parts.deadline,
            classifier: parts.classifier,
        })
    }

    /// Names each request's route with `route`.
    pub fn route_by<R2>(self, route: R2) -> BrownoutLayer<F, R2, P, D, C> {
        self.with_parts(|parts| Parts {
            fallback: parts.fallback,
            route,
            priority: parts.priority,
            deadline: parts.deadline,
            classifier: parts.classifier,
        })
    }

    /// Finds each request's class with `priority`.
    pub fn priority<P2>(self, priority: P2) -> BrownoutLayer<F, R, P2, D, C> {
        self.with_parts(|parts| Parts {
            fallback: parts.fallback,
            route: parts.route,
            priority,
            deadline: parts.deadline,
            classifier: parts.classifier,
        })
    }

    /// Finds each request's own deadline with `deadline`.
    pub fn deadline<D2>(self, deadline: D2) -> BrownoutLayer<F, R, P, D2, C> {
        self.with_parts(|parts| Parts {
            fallback: parts.fallback,
            route: parts.route,
            priority: parts.priority,
            deadline,
            classifier: parts.classifier,
        })
    }

    /// Reads each request's class and deadline only from the requests
    /// `trust` vouches for; the others get the default class and no
    /// deadline of their own. See [`trust`](super::trust) for why, and for
    /// the other way (strip the headers at the edge).
    #[allow(clippy::type_complexity)]
    pub fn trust_headers_if<T: Clone>(
        self,
        trust: T,
    ) -> BrownoutLayer<F, R, super::TrustedOnly<P, T>, super::TrustedOnly<D, T>, C> {
        self.with_parts(|parts| Parts {
            fallback: parts.fallback,
            route: parts.route,
            priority: super::TrustedOnly::new(parts.priority, trust.clone()),
            deadline: super::TrustedOnly::new(parts.deadline, trust),
            classifier: parts.classifier,
        })
    }

    /// Uses `classifier` to tell failures from successes.
    pub fn classify<C2>(self, classifier: C2) -> BrownoutLayer<F, R, P, D, C2> {
        self.with_parts(|parts| Parts {
            fallback: parts.fallback,
            route: parts.route,
            priority: parts.priority,
            deadline: parts.deadline,
            classifier,
        })
    }
}

#[cfg(feature = "http")]
impl<F, R, P, D, C> BrownoutLayer<F, R, P, D, C> {
    /// Everything an HTTP service needs: rejections answered with
    /// [`ProblemJson`](crate::fallback::ProblemJson) (503, `Retry-After`;
    /// `429` over the budget), or deferred on the routes with a `defer`
    /// section ([`PolicyFallback`](super::PolicyFallback)),
    /// routes by [`HttpRoute`](super::HttpRoute), classes from the policy's
    /// `priority.header`, deadlines from `grpc-timeout` or the policy's
    /// `waiting_room.deadline_header`, 5xx as failures.
    ///
    /// The class and the deadline are read from every request, whoever
    /// sent it: strip those headers at your edge, or trust only some
    /// callers with [`trust_headers_if`](Self::trust_headers_if) (see
    /// [`trust`](super::trust)).
    #[allow(clippy::type_complexity)]
    pub fn http(
        self,
    ) -> BrownoutLayer<
        super::PolicyFallback<crate::fallback::ProblemJson>,
        super::HttpRoute,
        crate::priority::HeaderPriority,
        crate::deadline::HeaderDeadline,
        crate::classify::ServerErrorsAsFailures,
    > {
        let priority = crate::priority::HeaderPriority::from_policy(&self.settings.policy.priority);
        let deadline = crate::deadline::HeaderDeadline::new(
            self.settings.policy.waiting_room.deadline_header.as_deref(),
        );
        let fallback = self.policy_fallback(crate::fallback::ProblemJson);
        self.fallback(fallback)
            .route_by(super::HttpRoute)
            .priority(priority)
            .deadline(deadline)
            .classify(crate::classify::ServerErrorsAsFailures)
    }
}

#[cfg(feature = "http")]
impl<F, R, P, D, C> BrownoutLayer<F, R, P, D, C> {
    /// `fallback`, deferring what the policy's deferring routes reject
    /// (feature `defer`; without it, or without such routes, `fallback`
    /// answers everything). [`http`](Self::http) uses it with
    /// [`ProblemJson`](crate::fallback::ProblemJson); give it a fallback of
    /// your own to keep the deferral:
    /// `layer.clone().fallback(layer.policy_fallback(mine))`.
    pub fn policy_fallback<G: Clone>(&self, fallback: G) -> super::PolicyFallback<G> {
        super::PolicyFallback {
            #[cfg(feature = "defer")]
            defer: self
                .settings
                .deferral
                .as_ref()
                .map(|deferral| deferral.fallback(fallback.clone())),
            inner: fallback,
        }
    }
}

#[cfg(feature = "grpc")]
impl<F, R, P, D, C> BrownoutLayer<F, R, P, D, C> {
    /// Everything a gRPC server needs: rejections answered with
    /// [`GrpcUnavailable`](crate::fallback::GrpcUnavailable) (`UNAVAILABLE`,
    /// `RESOURCE_EXHAUSTED` when shed, retry pushback), one route per
    /// method, classes from the policy's `priority.header`, deadlines from
    /// `grpc-timeout`, and `grpc-status` read from headers or trailers.
    /// As with [`http`](Self::http), the class and the deadline are read
    /// from every call unless [`trust_headers_if`](Self::trust_headers_if)
    /// says whose to believe.
    #[allow(clippy::type_complexity)]
    pub fn grpc(
        self,
    ) -> BrownoutLayer<
        crate::fallback::GrpcUnavailable,
        super::HttpRoute,
        crate::priority::HeaderPriority,
        crate::deadline::HeaderDeadline,
        crate::classify::GrpcErrorsAsFailures,
    > {
        let priority = crate::priority::HeaderPriority::from_policy(&self.settings.policy.priority);
        self.fallback(crate::fallback::GrpcUnavailable)
            .route_by(super::HttpRoute)
            .priority(priority)
            .deadline(crate::deadline::HeaderDeadline::new(None))
            .classify(crate::classify::GrpcErrorsAsFailures::new())
    }
}

impl<S, F: Clone, R: Clone, P: Clone, D: Clone, C: Clone> Layer<S>
    for BrownoutLayer<F, R, P, D, C>
{
    type Service = Budgeted<S, F, R, P, D, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Budgeted {
            inner: Brownout {
                inner,
                shared: self.shared.clone(),
                fallback: BudgetFallback::new(self.parts.fallback.clone()),
                route: self.parts.route.clone(),
                priority: self.parts.priority.clone(),
                deadline: self.parts.deadline.clone(),
                classifier: self.parts.classifier.clone(),
            },
        }
    }
}
