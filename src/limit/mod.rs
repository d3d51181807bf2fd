//! Adaptive load shedding: learn how many calls the back end can take at
//! once, admit that many, and shed the excess at once, least important
//! class first.
//!
//! # How it decides
//!
//! The limiter counts calls in flight. A call is admitted while the count
//! is below its class's share of the limit (all of it for the most
//! important class, `1 - reserve` of it for the least important one), and
//! shed otherwise, at once, with [`Rejected`](crate::Rejected) (reason
//! [`Shed`](crate::Reason::Shed)) and a `retry_after()` of about one mean
//! response time. Shedding never waits: waiting is the waiting room's job.
//!
//! The limit is learned. Completed calls are collected in windows of about
//! one round trip; at the end of each window the policy's `algorithm`
//! turns what the window saw (completions, their mean latency, the peak in
//! flight, failures, and whether demand pressed on the limit) into a new
//! limit between `min` and `max`:
//!
//! - `capacity` (default): learns the back end's capacity by testing it.
//!   While demand is below the limit it keeps the limit at twice the peak
//!   in flight, so a healthy back end never sheds. Once demand presses on
//!   it, it steps the limit up while latency holds, and when latency rises
//!   it steps down to what the back end delivers times its unloaded
//!   latency (Little's law): if latency falls, that was a queue and the
//!   lower limit is the back end's capacity (a cut to 27% is learned in one
//!   step); if it does not, the back end is merely slower and the limit goes
//!   back. After an outage the last good limit comes back at once.
//! - `gradient`: Gradient2 from Netflix's concurrency-limits. The
//!   ratio of long-term to short-term latency scales the limit down when
//!   latency rises; a queue allowance of √limit lets it grow while latency
//!   holds. It reads a slower back end as a queue.
//! - `vegas`: TCP Vegas. Estimates the calls queued inside the back end from
//!   its unloaded latency and keeps that queue small.
//! - `aimd`: +1 per window while the back end keeps up, ×0.9 on failures.
//! - `fixed`: `initial`, always.
//!
//! Failures (as the classifier says: inner errors, 5xx, timeouts; not 4xx)
//! count as overload. Cancelled calls are not samples. Lowering the limit
//! never revokes a call already admitted: the count drains to the new
//! limit as calls finish.
//!
//! # Cost
//!
//! Admission is one compare-exchange on the in-flight count; completion one
//! subtraction and one addition to the window. Only the call that closes a
//! window runs the algorithm, under a lock no other call waits for.
//!
//! # Example
//!
//! ```
//! use brownout::{AdaptiveLimitLayer, LimitPolicy, Reason, Rejected};
//! use brownout::policy::Algorithm;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let policy = LimitPolicy { algorithm: Algorithm::Fixed, initial: 1, ..LimitPolicy::default() };
//! let mut svc = ServiceBuilder::new()
//!     .layer(AdaptiveLimitLayer::new(policy))
//!     .service_fn(|_: ()| async { Ok::<_, std::io::Error>("booked") });
//!
//! let first = svc.ready().await.unwrap().call(()); // holds the only slot
//! let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
//! assert_eq!(err.downcast_ref::<Rejected>().unwrap().reason(), Reason::Shed);
//! assert_eq!(first.await.unwrap(), "booked");
//! # }
//! ```

mod future;
mod layer;

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{BoxError, Service};

use crate::classify::{Classify, ErrorsAsFailures};
use crate::core::gate::Gate;
use crate::priority::{Classes, DefaultPriority, PriorityOf};

pub use self::future::ResponseFuture;
pub use self::layer::AdaptiveLimitLayer;
pub use crate::core::limit::pluggable::{CustomAlgorithm, LimitAlgorithm, WindowSample};

/// An adaptive concurrency limit in front of a service; see the
/// [module docs](self). Clones share the limit.
#[derive(Debug, Clone)]
pub struct AdaptiveLimit<S, P = DefaultPriority, C = ErrorsAsFailures> {
    inner: S,
    gate: Arc<Gate>,
    classes: Classes,
    priority: P,
    classifier: C,
}

impl<S, P, C> AdaptiveLimit<S, P, C> {
    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.gate.limiter().map_or(0, |limit| limit.limit())
    }

    /// Calls in flight now.
    pub fn inflight(&self) -> u32 {
        self.gate.limiter().map_or(0, |limit| limit.inflight())
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

impl<S, P, C, Req> Service<Req> for AdaptiveLimit<S, P, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: PriorityOf<Req>,
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
        let priority = self.priority.priority_of(&req, &self.classes);
        match self.gate.admit(priority) {
            Ok(permit) => {
                ResponseFuture::admitted(self.inner.call(req), permit, self.classifier.clone())
            }
            Err(rejected) => ResponseFuture::rejected(rejected),
        }
    }
}
