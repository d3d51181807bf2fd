//! The composed stack: one layer, built from one policy file, that gives
//! every request a clear answer.
//!
//! ```text
//! request ─► route, priority, deadline
//!         ─► admission: breaker × adaptive limit (per route)
//!               permit now ────────► inner service
//!               no permit, may wait ► waiting room ─► permit later ─► inner
//!               no permit, can't wait ► fallback (answers with the request in hand)
//!         ◄─ outcome classified (success / failure / slow) feeds breaker + limit
//! ```
//!
//! Each route has its own breaker, limit and waiting room, shared by every
//! clone of the service, following the policy's top-level sections with the
//! route's `[routes."…"]` overrides applied. A [`PolicyHandle`] replaces the
//! policy of the running stack without losing any of that state.
//!
//! # HTTP (axum)
//!
//! With the `http` feature, [`BrownoutLayer::http`] reads the class from
//! the policy's `priority.header`, the deadline from `grpc-timeout` or
//! `waiting_room.deadline_header`, counts 5xx as failures, routes by axum's
//! `MatchedPath` (feature `axum`) or the URI path, and answers rejections
//! with `503` + `Retry-After` + an RFC 9457 problem document. The class
//! and deadline headers are believed from every caller unless you strip
//! them at the edge or say whose to believe ([`trust`]). The stack
//! keeps the inner service's error type, so it goes straight into
//! `Router::layer` with no `HandleErrorLayer`:
//!
//! ```
//! # #[cfg(feature = "http")] {
//! use brownout::{BrownoutLayer, Policy};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let policy = Policy::from_toml(r#"
//!     [breaker]
//!     mode = "forced_open"
//! "#).unwrap();
//! let app = ServiceBuilder::new()
//!     .layer(BrownoutLayer::from_policy(&policy).http())
//!     .service_fn(|_: Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("slots")))
//!     });
//! let response = app.oneshot(Request::new(String::new())).await.unwrap();
//! assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(response.headers()["content-type"], "application/problem+json");
//! # }
//! # }
//! ```

mod ext;
mod extras;
mod future;
mod handle;
mod health;
mod layer;
mod route;
mod shared;
pub mod trust;
#[cfg(feature = "watch")]
mod watch;

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::Service;

use crate::classify::Classify;
use crate::clock::saturating_nanos;
use crate::core::gate::{Entry, Gate, Waiter};
use crate::deadline::DeadlineOf;
use crate::fallback::Fallback;
use crate::priority::PriorityOf;

pub use self::ext::ServiceBuilderExt;
#[cfg(feature = "grpc")]
pub use self::ext::{GrpcBrownout, GrpcBrownoutLayer};
#[cfg(feature = "http")]
pub use self::ext::{HttpBrownout, HttpBrownoutLayer};
#[cfg(feature = "defer")]
pub use self::extras::PolicyAnswer;
#[cfg(feature = "http")]
pub use self::extras::PolicyFallback;
pub use self::extras::{BudgetFallback, Budgeted, BudgetedFuture, BuildError};
pub use self::future::ResponseFuture;
pub use self::handle::PolicyHandle;
pub use self::health::{HealthSnapshot, RouteHealth};
pub use self::layer::{BrownoutLayer, DEFAULT_MAX_ROUTES};
#[cfg(feature = "http")]
pub use self::route::HttpRoute;
pub use self::route::{RouteFn, RouteOf, SingleRoute, route_fn};
pub use self::trust::{TrustFn, TrustOf, Trusted, TrustedCaller, TrustedOnly, trust_fn};
#[cfg(feature = "watch")]
pub use self::watch::{DEBOUNCE, PolicyWatcher};

use self::shared::Shared;

/// The route label of requests without a route.
pub const DEFAULT_ROUTE: &str = "default";

/// The composed stack in front of a service; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct Brownout<S, F, R, P, D, C> {
    inner: S,
    shared: Arc<Shared>,
    fallback: F,
    route: R,
    priority: P,
    deadline: D,
    classifier: C,
}

impl<S, F, R, P, D, C> Brownout<S, F, R, P, D, C> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, F, R, P, D, C, Req> Service<Req> for Brownout<S, F, R, P, D, C>
where
    S: Service<Req> + Clone,
    C: Classify<S::Response, S::Error> + Clone,
    F: Fallback<Req, C::Response, S::Error> + Clone,
    R: RouteOf<Req>,
    P: PriorityOf<Req>,
    D: DeadlineOf<Req> + Clone,
{
    type Response = C::Response;
    type Error = F::Error;
    type Future = ResponseFuture<S, Req, C, F, D>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| self.fallback.inner_error(e))
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let priority = self.priority.priority_of(&req, &self.shared.classes);
        let left = self.deadline.deadline_of(&req);
        let route = self.route.route_of(&req);
        if route.is_none() {
            if let Some(gate) = self.shared.default_gate.get() {
                // The default route's gate, built already: no lookup, and
                // no borrow of the request left to keep it from moving.
                let deadline = deadline_at(gate, left);
                return match gate.enter(priority, deadline) {
                    Ok(Entry::Wait(waiter)) => {
                        let gate = gate.clone();
                        self.wait(gate, waiter, req, deadline)
                    }
                    entered => self.respond_now(entered, req, deadline),
                };
            }
        }
        let (entered, waiting_at, deadline) = self.shared.with_gate(route, |gate| {
            let deadline = deadline_at(gate, left);
            match gate.enter(priority, deadline) {
                Ok(Entry::Wait(waiter)) => (Ok(Entry::Wait(waiter)), Some(gate.clone()), deadline),
                entered => (entered, None, deadline),
            }
        });
        match (entered, waiting_at) {
            (Ok(Entry::Wait(waiter)), Some(gate)) => self.wait(gate, waiter, req, deadline),
            (entered, _) => self.respond_now(entered, req, deadline),
        }
    }
}

/// The request's own deadline on `gate`'s clock, from the time it has
/// `left`.
#[inline(always)]
fn deadline_at(gate: &Gate, left: Option<std::time::Duration>) -> Option<u64> {
    left.map(|left| gate.clock().now().saturating_add(saturating_nanos(left)))
}

impl<S, F, R, P, D, C> Brownout<S, F, R, P, D, C> {
    /// The response future of a request seated in `gate`'s room.
    #[inline(never)]
    fn wait<Req>(
        &mut self,
        gate: Arc<Gate>,
        waiter: Waiter,
        req: Req,
        deadline: Option<u64>,
    ) -> ResponseFuture<S, Req, C, F, D>
    where
        S: Service<Req> + Clone,
        C: Classify<S::Response, S::Error> + Clone,
        F: Fallback<Req, C::Response, S::Error> + Clone,
        D: Clone,
    {
        // Keep the service that was polled ready for this request, and
        // leave a fresh clone for the next one.
        let fresh = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, fresh);
        ResponseFuture::waiting(
            gate,
            waiter,
            ready,
            req,
            self.classifier.clone(),
            self.fallback.clone(),
            deadline,
            self.deadline.clone(),
        )
    }

    /// The response future of a request admitted or turned away at once
    /// (never one that waits).
    #[inline(always)]
    fn respond_now<Req>(
        &mut self,
        entered: Result<Entry, crate::Rejected>,
        req: Req,
        deadline: Option<u64>,
    ) -> ResponseFuture<S, Req, C, F, D>
    where
        S: Service<Req>,
        C: Classify<S::Response, S::Error> + Clone,
        F: Fallback<Req, C::Response, S::Error> + Clone,
    {
        match entered {
            Ok(Entry::Now(permit)) => ResponseFuture::calling(
                self.inner.call(req),
                permit,
                self.classifier.clone(),
                self.fallback.clone(),
                deadline,
            ),
            Ok(Entry::Wait(_)) => unreachable!("a seated request is answered by `wait`"),
            Err(rejected) => ResponseFuture::answering(self.fallback.fallback(rejected, Some(req))),
        }
    }
}
