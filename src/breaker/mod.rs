//! Circuit breaking: stop calling a back end that is failing or slow, test
//! it with a few probes, and let traffic back when it has recovered.
//!
//! # How it decides
//!
//! A closed breaker lets every call through and records each outcome in a
//! window (the last `size` calls, or the calls of the last `size` of time).
//! Once the window holds `minimum_calls`, the breaker opens as soon as the
//! share of failures reaches `failure_rate` or the share of calls slower
//! than `slow_call_duration` reaches `slow_call_rate`.
//!
//! An open breaker rejects at once with [`Rejected`](crate::Rejected)
//! (reason [`Open`](crate::Reason::Open)) whose `retry_after()` is the time
//! left until it next probes. After `open_for` the next call becomes the
//! first of `half_open_probes` probes; the breaker closes when they pass the
//! same thresholds and reopens, for a period grown by `open_backoff`, when
//! they do not. The growth resets once the breaker has stayed closed for
//! `open_backoff.reset_after`.
//!
//! `mode` changes what is done with the verdict: `shadow` runs the state
//! machine and counts `would_reject` but lets everything through,
//! `forced_open` rejects everything, `forced_closed` admits everything.
//!
//! # Cost
//!
//! Admitting a call through a closed breaker is two atomic loads (the mode
//! and the state word) and a clock read of one more load; recording a
//! success into a count window is two atomic operations. Nothing is
//! locked, allocated or spawned per call. The fast-fail of an open breaker
//! is three loads. Only state changes take a mutex.
//!
//! # Rejections come from the future
//!
//! `poll_ready` only forwards the inner service's readiness: an open
//! breaker is not an error of the service (a `poll_ready` error means
//! "throw this service away"). The rejection is the response future's
//! error, so axum's clone-per-request and tonic work unchanged.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use brownout::{BreakerPolicy, CircuitBreakerLayer, Reason, Rejected};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let policy = BreakerPolicy {
//!     minimum_calls: 2,
//!     open_for: Duration::from_secs(30),
//!     ..BreakerPolicy::default()
//! };
//! let mut svc = ServiceBuilder::new()
//!     .layer(CircuitBreakerLayer::new(policy))
//!     .service_fn(|_: ()| async { Err::<(), _>(std::io::Error::other("back end down")) });
//!
//! for _ in 0..2 {
//!     let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
//!     assert!(err.downcast_ref::<Rejected>().is_none()); // the back end's own error
//! }
//! // Two failures out of two calls: the breaker is open.
//! let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
//! let rejected = err.downcast_ref::<Rejected>().unwrap();
//! assert_eq!(rejected.reason(), Reason::Open);
//! assert!(rejected.retry_after().unwrap() <= Duration::from_secs(33));
//! # }
//! ```

mod future;
mod keyed;
mod layer;

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{BoxError, Service};

use crate::classify::{Classify, ErrorsAsFailures};
use crate::core::gate::Gate;
use crate::policy::Mode;
use crate::priority::Priority;

pub use self::future::ResponseFuture;
pub use self::keyed::{KeyedCircuitBreaker, KeyedCircuitBreakerLayer, OVERFLOW_KEY};
pub use self::layer::CircuitBreakerLayer;
pub use crate::core::breaker::{BreakerState, MAX_PROBES, Until};

/// A circuit breaker in front of a service; see the [module docs](self).
///
/// Clones share the breaker's state.
#[derive(Debug, Clone)]
pub struct CircuitBreaker<S, C = ErrorsAsFailures> {
    inner: S,
    gate: Arc<Gate>,
    classifier: C,
}

impl<S, C> CircuitBreaker<S, C> {
    pub(crate) fn from_parts(inner: S, gate: Arc<Gate>, classifier: C) -> Self {
        Self {
            inner,
            gate,
            classifier,
        }
    }

    /// The breaker's state now.
    pub fn state(&self) -> BreakerState {
        self.gate.state()
    }

    /// Changes the mode of the running breaker (shared by all clones).
    pub fn set_mode(&self, mode: Mode) {
        self.gate.set_mode(mode);
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
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
        match self.gate.admit(Priority::HIGHEST) {
            Ok(permit) => {
                ResponseFuture::admitted(self.inner.call(req), permit, self.classifier.clone())
            }
            Err(rejected) => ResponseFuture::rejected(rejected),
        }
    }
}
