//! brownout's layers as `ServiceBuilder` methods, and names for the
//! preset stacks' types.

use tower::ServiceBuilder;
use tower::layer::util::Stack;

use crate::breaker::CircuitBreakerLayer;
use crate::fallback::FallbackLayer;
use crate::limit::AdaptiveLimitLayer;
use crate::policy::{BreakerPolicy, LimitPolicy, Policy};

use super::BrownoutLayer;

/// The stack [`BrownoutLayer::http`] builds: `503` problem documents,
/// routes by path, classes and deadlines from headers, 5xx as failures.
#[cfg(feature = "http")]
pub type HttpBrownoutLayer = BrownoutLayer<
    super::PolicyFallback<crate::fallback::ProblemJson>,
    super::HttpRoute,
    crate::priority::HeaderPriority,
    crate::deadline::HeaderDeadline,
    crate::classify::ServerErrorsAsFailures,
>;

/// The service an [`HttpBrownoutLayer`] makes of `S`.
#[cfg(feature = "http")]
pub type HttpBrownout<S> = super::Budgeted<
    S,
    super::PolicyFallback<crate::fallback::ProblemJson>,
    super::HttpRoute,
    crate::priority::HeaderPriority,
    crate::deadline::HeaderDeadline,
    crate::classify::ServerErrorsAsFailures,
>;

/// The stack [`BrownoutLayer::grpc`] builds: `UNAVAILABLE` or
/// `RESOURCE_EXHAUSTED` with retry pushback, one route per method,
/// classes and deadlines from metadata, `grpc-status` as the outcome.
#[cfg(feature = "grpc")]
pub type GrpcBrownoutLayer = BrownoutLayer<
    crate::fallback::GrpcUnavailable,
    super::HttpRoute,
    crate::priority::HeaderPriority,
    crate::deadline::HeaderDeadline,
    crate::classify::GrpcErrorsAsFailures,
>;

/// The service a [`GrpcBrownoutLayer`] makes of `S`.
#[cfg(feature = "grpc")]
pub type GrpcBrownout<S> = super::Budgeted<
    S,
    crate::fallback::GrpcUnavailable,
    super::HttpRoute,
    crate::priority::HeaderPriority,
    crate::deadline::HeaderDeadline,
    crate::classify::GrpcErrorsAsFailures,
>;

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}

/// brownout's layers as [`ServiceBuilder`] methods, as tower-http adds
/// its own. Sealed: implemented for `ServiceBuilder` only. (A
/// [`WaitingRoomLayer`](crate::WaitingRoomLayer) needs the limit and the
/// breaker it waits for: build it with its own builder and add it with
/// [`ServiceBuilder::layer`].)
///
/// ```
/// use brownout::stack::ServiceBuilderExt;
/// use brownout::{Policy, Rejected};
/// use tower::{BoxError, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let policy = Policy::default();
/// let svc = ServiceBuilder::new()
///     .brownout(&policy)
///     .service_fn(|day: u32| async move { Ok::<_, BoxError>(format!("slots for day {day}")) });
/// assert_eq!(svc.oneshot(3).await.unwrap(), "slots for day 3");
///
/// // One stage at a time.
/// let breaker_only = ServiceBuilder::new()
///     .circuit_breaker(policy.breaker.clone())
///     .service_fn(|day: u32| async move { Ok::<_, BoxError>(day) });
/// assert_eq!(breaker_only.oneshot(4).await.unwrap(), 4);
/// # }
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed + Sized {
    /// The composed stack `policy` describes ([`BrownoutLayer::from_policy`]);
    /// its rejections are the service's errors ([`Rejected`](crate::Rejected)).
    fn brownout(self, policy: &Policy) -> ServiceBuilder<Stack<BrownoutLayer, L>>;

    /// The composed stack for an HTTP service ([`BrownoutLayer::http`]).
    #[cfg(feature = "http")]
    fn brownout_http(self, policy: &Policy) -> ServiceBuilder<Stack<HttpBrownoutLayer, L>>;

    /// The composed stack for a gRPC server ([`BrownoutLayer::grpc`]).
    #[cfg(feature = "grpc")]
    fn brownout_grpc(self, policy: &Policy) -> ServiceBuilder<Stack<GrpcBrownoutLayer, L>>;

    /// A circuit breaker ([`CircuitBreakerLayer::new`]).
    fn circuit_breaker(
        self,
        policy: BreakerPolicy,
    ) -> ServiceBuilder<Stack<CircuitBreakerLayer, L>>;

    /// An adaptive concurrency limit ([`AdaptiveLimitLayer::new`]).
    fn adaptive_limit(self, policy: LimitPolicy) -> ServiceBuilder<Stack<AdaptiveLimitLayer, L>>;

    /// Answers the rejections of the layers below with `fallback`
    /// ([`FallbackLayer::new`]).
    fn brownout_fallback<F>(self, fallback: F) -> ServiceBuilder<Stack<FallbackLayer<F>, L>>;
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    fn brownout(self, policy: &Policy) -> ServiceBuilder<Stack<BrownoutLayer, L>> {
        self.layer(BrownoutLayer::from_policy(policy))
    }

    #[cfg(feature = "http")]
    fn brownout_http(self, policy: &Policy) -> ServiceBuilder<Stack<HttpBrownoutLayer, L>> {
        self.layer(BrownoutLayer::from_policy(policy).http())
    }

    #[cfg(feature = "grpc")]
    fn brownout_grpc(self, policy: &Policy) -> ServiceBuilder<Stack<GrpcBrownoutLayer, L>> {
        self.layer(BrownoutLayer::from_policy(policy).grpc())
    }

    fn circuit_breaker(
        self,
        policy: BreakerPolicy,
    ) -> ServiceBuilder<Stack<CircuitBreakerLayer, L>> {
        self.layer(CircuitBreakerLayer::new(policy))
    }

    fn adaptive_limit(self, policy: LimitPolicy) -> ServiceBuilder<Stack<AdaptiveLimitLayer, L>> {
        self.layer(AdaptiveLimitLayer::new(policy))
    }

    fn brownout_fallback<F>(self, fallback: F) -> ServiceBuilder<Stack<FallbackLayer<F>, L>> {
        self.layer(FallbackLayer::new(fallback))
    }
}
