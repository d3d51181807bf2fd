//! Which callers may say their class and their deadline.
//!
//! The HTTP and gRPC presets ([`BrownoutLayer::http`],
//! [`BrownoutLayer::grpc`]) read a request's class from the policy's
//! `priority.header` (`x-priority` by default) and its deadline from
//! `grpc-timeout` and the policy's `waiting_room.deadline_header`, from
//! **every** request. That is right behind an edge (a gateway, a mesh, your
//! own middleware) that sets or strips those headers, and wrong when
//! clients you do not control reach the stack directly: any of them can
//! then say `x-priority: urgent` and be let in first under overload, or
//! send a short `grpc-timeout` on slow calls, which the stack abandons at
//! the deadline and counts as the back end's failures.
//!
//! Two ways to close that, whichever fits:
//!
//! - **Strip at the edge**: remove the headers from untrusted requests
//!   before the stack sees them (a `map_request` in front of it). Your
//!   authentication can then set the class itself, as a [`Priority`] in
//!   the request's extensions, which [`HeaderPriority`] reads first.
//! - **Trust by predicate**: [`BrownoutLayer::trust_headers_if`] reads the
//!   class and the deadline only from the requests a [`TrustOf`] vouches
//!   for; the others get the default class and no deadline of their own.
//!   [`TrustedCaller`] vouches for requests your authentication marked
//!   with the [`Trusted`] extension; [`trust_fn`] takes a closure.
//!
//! ```
//! # #[cfg(feature = "http")] {
//! use brownout::stack::{Trusted, TrustedCaller};
//! use brownout::{BrownoutLayer, Policy};
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let stack = BrownoutLayer::from_policy(&Policy::default())
//!     .http()
//!     .trust_headers_if(TrustedCaller);
//! let app = ServiceBuilder::new()
//!     // Your authentication: marks the callers allowed to say their class.
//!     .map_request(|mut req: Request<String>| {
//!         if req.headers().get("authorization").is_some_and(|v| v == "Bearer ops") {
//!             req.extensions_mut().insert(Trusted);
//!         }
//!         req
//!     })
//!     .layer(stack)
//!     .service_fn(|_: Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::new()))
//!     });
//! let req = Request::builder().header("x-priority", "urgent").body(String::new()).unwrap();
//! app.oneshot(req).await.unwrap(); // served as `normal`: nobody vouched for it
//! # }
//! # }
//! ```
//!
//! [`BrownoutLayer::http`]: super::BrownoutLayer::http
//! [`BrownoutLayer::grpc`]: super::BrownoutLayer::grpc
//! [`BrownoutLayer::trust_headers_if`]: super::BrownoutLayer::trust_headers_if
//! [`HeaderPriority`]: crate::priority::HeaderPriority
//! [`Priority`]: crate::Priority

use std::fmt;
use std::time::Duration;

use crate::deadline::DeadlineOf;
use crate::priority::{Classes, Priority, PriorityOf};

/// Whether a request's own word (its class, its deadline) is to be
/// believed.
pub trait TrustOf<Req> {
    /// `true` if `req` comes from a caller allowed to say its class and
    /// deadline.
    fn trusted(&self, req: &Req) -> bool;
}

/// A request extension: the caller is trusted to say its class and
/// deadline. Your authentication inserts it; [`TrustedCaller`] reads it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trusted;

/// Trusts the requests that carry the [`Trusted`] extension.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrustedCaller;

#[cfg(feature = "http")]
impl<B> TrustOf<http::Request<B>> for TrustedCaller {
    #[inline]
    fn trusted(&self, req: &http::Request<B>) -> bool {
        req.extensions().get::<Trusted>().is_some()
    }
}

/// Trust from a closure; see [`trust_fn`].
#[derive(Clone, Copy)]
pub struct TrustFn<F>(F);

impl<F> fmt::Debug for TrustFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustFn").finish_non_exhaustive()
    }
}

/// Trusts the requests for which `f(&request)` is `true`.
pub fn trust_fn<F>(f: F) -> TrustFn<F> {
    TrustFn(f)
}

impl<Req, F> TrustOf<Req> for TrustFn<F>
where
    F: Fn(&Req) -> bool,
{
    #[inline]
    fn trusted(&self, req: &Req) -> bool {
        (self.0)(req)
    }
}

/// Reads the class or the deadline with `inner`, from trusted requests
/// only: the others get the default class and no deadline of their own.
/// Built by [`BrownoutLayer::trust_headers_if`](super::BrownoutLayer::trust_headers_if).
#[derive(Debug, Clone, Copy)]
pub struct TrustedOnly<I, T> {
    inner: I,
    trust: T,
}

impl<I, T> TrustedOnly<I, T> {
    /// `inner`, asked only about the requests `trust` vouches for.
    pub fn new(inner: I, trust: T) -> Self {
        Self { inner, trust }
    }
}

impl<Req, I, T> PriorityOf<Req> for TrustedOnly<I, T>
where
    I: PriorityOf<Req>,
    T: TrustOf<Req>,
{
    #[inline]
    fn priority_of(&self, req: &Req, classes: &Classes) -> Priority {
        if self.trust.trusted(req) {
            self.inner.priority_of(req, classes)
        } else {
            classes.default_priority()
        }
    }
}

impl<Req, I, T> DeadlineOf<Req> for TrustedOnly<I, T>
where
    I: DeadlineOf<Req>,
    T: TrustOf<Req>,
{
    #[inline]
    fn deadline_of(&self, req: &Req) -> Option<Duration> {
        if self.trust.trusted(req) {
            self.inner.deadline_of(req)
        } else {
            None
        }
    }

    fn propagate(&self, req: &mut Req, left: Duration) {
        if self.trust.trusted(req) {
            self.inner.propagate(req, left);
        }
    }
}
