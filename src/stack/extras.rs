//! What the policy's optional sections add to the composed stack: the
//! `[budget]` in front of admission ([`Budgeted`], the service every
//! [`BrownoutLayer`](super::BrownoutLayer) makes), and the deferral of the
//! `[routes."…".defer]` sections in the HTTP preset's fallback
//! ([`PolicyFallback`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::Service;

use crate::budget::{Budget, Check, Taken, Verdict};
use crate::classify::Classify;
use crate::core::gate_map::OVERFLOW_KEY;
use crate::deadline::DeadlineOf;
use crate::fallback::Fallback;
use crate::metrics::{REQUESTS_TOTAL, outcome};
use crate::priority::PriorityOf;
use crate::reject::{Reason, Rejected};

use super::shared::Shared;
use super::{Brownout, DEFAULT_ROUTE, ResponseFuture, RouteOf};

/// A stack that cannot be built as its policy says; see
/// [`BrownoutLayer::try_from_policy`](super::BrownoutLayer::try_from_policy).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The policy does not validate (it names the field and its value).
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    /// The `[budget]` cannot be built.
    #[error(transparent)]
    Budget(#[from] crate::budget::BudgetError),
    /// A deferring route's store cannot be opened (it names the path).
    #[cfg(feature = "defer")]
    #[error(transparent)]
    Defer(#[from] crate::defer::StoreError),
    /// The policy has a `[fleet]` section and the stack is built outside a
    /// tokio runtime: the task that shares its breakers needs one.
    #[cfg(feature = "fleet")]
    #[error(
        "fleet: sharing the breakers through Redis needs a tokio runtime where the stack is \
         built (its background task runs there): build it inside one (#[tokio::main], \
         Runtime::enter), or remove the [fleet] section"
    )]
    FleetNeedsRuntime,
}

/// The stores of `policy`'s deferring routes: an error when `strict`, else
/// logged, leaving out the routes whose store cannot be opened.
#[cfg(feature = "defer")]
pub(super) fn open_deferral(
    policy: &crate::Policy,
    strict: bool,
) -> Result<Option<crate::defer::Deferral>, BuildError> {
    if !policy.routes.values().any(|route| route.defer.is_some()) {
        return Ok(None);
    }
    match crate::defer::Deferral::open_now(policy, strict) {
        Ok(deferral) => Ok(Some(deferral)),
        Err(err) => Err(err.into()),
    }
}

/// The fallback of the stack's admission stage: `F`, holding the budget
/// unit of the request being admitted, which it gives back when the stack
/// rejects that request before the inner service saw it (the room was
/// full, the breaker open, the wait ran out…). A unit of a request that
/// reached the inner service is kept, whatever its answer.
#[derive(Debug, Clone)]
pub struct BudgetFallback<F> {
    pub(super) inner: F,
    pub(super) taken: Option<(Taken, Budget)>,
}

impl<F> BudgetFallback<F> {
    pub(super) fn new(inner: F) -> Self {
        Self { inner, taken: None }
    }
}

impl<Req, Resp, E, F> Fallback<Req, Resp, E> for BudgetFallback<F>
where
    F: Fallback<Req, Resp, E>,
{
    type Error = F::Error;
    type Future = F::Future;

    fn fallback(&self, rejected: Rejected, request: Option<Req>) -> Self::Future {
        if request.is_some() {
            if let Some((taken, budget)) = &self.taken {
                budget.give_back(*taken);
            }
        }
        self.inner.fallback(rejected, request)
    }

    fn inner_error(&self, error: E) -> Self::Error {
        self.inner.inner_error(error)
    }

    fn on_inner_error(&self, error: E) -> Result<Self::Future, Self::Error> {
        self.inner.on_inner_error(error)
    }
}

/// The service a [`BrownoutLayer`](super::BrownoutLayer) makes: the
/// policy's `[budget]`, when it has one, then admission ([`Brownout`]).
///
/// Without a `[budget]` it is [`Brownout`] and one branch more. With one,
/// each request takes a unit of its class before admission (one Lua script
/// on Redis with `store = "redis"`, waiting at most `shared_timeout`); a
/// request the budget has no unit for is answered by the stack's fallback
/// with [`Reason::Budget`] (HTTP `429` with `Retry-After`: when the next
/// unit frees) and counted as `rejected` with reason `budget` on its
/// route. A unit taken by a request admission then rejects is given back
/// (to Redis with the replica's next admission, never below what the
/// fleet admitted); a request dropped while it waits in the room keeps
/// its unit.
#[derive(Debug, Clone)]
pub struct Budgeted<S, F, R, P, D, C> {
    pub(super) inner: Brownout<S, BudgetFallback<F>, R, P, D, C>,
}

impl<S, F, R, P, D, C> Budgeted<S, F, R, P, D, C> {
    /// The admission stage behind the budget.
    pub fn admission(&self) -> &Brownout<S, BudgetFallback<F>, R, P, D, C> {
        &self.inner
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner.into_inner()
    }
}

/// Counts a budget rejection on the route's series (`overflow` for a
/// route past `max_routes`), building the route's gate as its first
/// request would.
#[cold]
fn count_budget(shared: &Shared, key: &str) {
    let gates = &shared.gates;
    if gates.get(key).is_none() {
        gates.with(key, |key: &str| Arc::<str>::from(key), |_| ());
    }
    let label = if gates.get(key).is_some() {
        key
    } else {
        OVERFLOW_KEY
    };
    metrics::counter!(
        REQUESTS_TOTAL,
        "route" => label.to_owned(),
        "outcome" => outcome::REJECTED,
        "reason" => Reason::Budget.as_str()
    )
    .increment(1);
}

impl<S, F, R, P, D, C> Budgeted<S, F, R, P, D, C> {
    /// The budget's rejection of `req`, counted and answered.
    fn reject<Req>(
        inner: &Brownout<S, BudgetFallback<F>, R, P, D, C>,
        after: std::time::Duration,
        req: Req,
    ) -> F::Future
    where
        S: Service<Req>,
        C: Classify<S::Response, S::Error>,
        F: Fallback<Req, C::Response, S::Error>,
        R: RouteOf<Req>,
    {
        count_budget(
            &inner.shared,
            inner.route.route_of(&req).unwrap_or(DEFAULT_ROUTE),
        );
        let rejected = Rejected::new(Reason::Budget).with_retry_after(after);
        inner.fallback.inner.fallback(rejected, Some(req))
    }

    /// `req` into admission, holding the budget unit it took (if the store
    /// gave one) in the stack's fallback, which gives it back if admission
    /// turns the request away before the inner service sees it.
    fn admit<Req>(
        inner: &mut Brownout<S, BudgetFallback<F>, R, P, D, C>,
        taken: Option<Taken>,
        req: Req,
    ) -> ResponseFuture<S, Req, C, BudgetFallback<F>, D>
    where
        S: Service<Req> + Clone,
        C: Classify<S::Response, S::Error> + Clone,
        F: Fallback<Req, C::Response, S::Error> + Clone,
        R: RouteOf<Req>,
        P: PriorityOf<Req>,
        D: DeadlineOf<Req> + Clone,
    {
        inner.fallback.taken = taken.and_then(|taken| Some((taken, inner.shared.budget.clone()?)));
        let future = inner.call(req);
        inner.fallback.taken = None;
        future
    }
}

impl<S, F, R, P, D, C, Req> Service<Req> for Budgeted<S, F, R, P, D, C>
where
    S: Service<Req> + Clone,
    C: Classify<S::Response, S::Error> + Clone,
    F: Fallback<Req, C::Response, S::Error> + Clone,
    R: RouteOf<Req> + Clone,
    P: PriorityOf<Req> + Clone,
    D: DeadlineOf<Req> + Clone,
{
    type Response = C::Response;
    type Error = F::Error;
    type Future = BudgetedFuture<S, Req, F, R, P, D, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let Some(budget) = &self.inner.shared.budget else {
            return BudgetedFuture::of(State::Admission {
                future: self.inner.call(req),
            });
        };
        let priority = self
            .inner
            .priority
            .priority_of(&req, &self.inner.shared.classes);
        match budget.check(priority) {
            Check::Done(Verdict::Admit(taken)) => BudgetedFuture::of(State::Admission {
                future: Self::admit(&mut self.inner, taken, req),
            }),
            Check::Done(Verdict::Reject(after)) => BudgetedFuture::of(State::Answer {
                future: Self::reject(&self.inner, after, req),
            }),
            #[cfg(feature = "fleet")]
            Check::Pending(check) => {
                // The service polled ready goes with the request; a clone
                // stays for the next one.
                let fresh = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, fresh);
                BudgetedFuture::of(State::Checking {
                    check,
                    call: Some((ready, req)),
                })
            }
        }
    }
}

pin_project! {
    /// The response future of [`Budgeted`].
    pub struct BudgetedFuture<S, Req, F, R, P, D, C>
    where
        S: Service<Req>,
        C: Classify<S::Response, S::Error>,
        F: Fallback<Req, C::Response, S::Error>,
    {
        #[pin]
        state: State<S, Req, F, R, P, D, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req, F, R, P, D, C>
    where
        S: Service<Req>,
        C: Classify<S::Response, S::Error>,
        F: Fallback<Req, C::Response, S::Error>,
    {
        // Through admission.
        Admission {
            #[pin]
            future: ResponseFuture<S, Req, C, BudgetFallback<F>, D>,
        },
        // Answered by the fallback: no budget unit.
        Answer {
            #[pin]
            future: F::Future,
        },
        // Waiting for the shared budget's verdict.
        Checking {
            check: Pin<Box<dyn Future<Output = Verdict> + Send>>,
            call: Option<(Brownout<S, BudgetFallback<F>, R, P, D, C>, Req)>,
        },
    }
}

impl<S, Req, F, R, P, D, C> BudgetedFuture<S, Req, F, R, P, D, C>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error>,
    F: Fallback<Req, C::Response, S::Error>,
{
    fn of(state: State<S, Req, F, R, P, D, C>) -> Self {
        Self { state }
    }
}

impl<S, Req, F, R, P, D, C> std::fmt::Debug for BudgetedFuture<S, Req, F, R, P, D, C>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error>,
    F: Fallback<Req, C::Response, S::Error>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BudgetedFuture")
    }
}

impl<S, Req, F, R, P, D, C> Future for BudgetedFuture<S, Req, F, R, P, D, C>
where
    S: Service<Req> + Clone,
    C: Classify<S::Response, S::Error> + Clone,
    F: Fallback<Req, C::Response, S::Error> + Clone,
    R: RouteOf<Req>,
    P: PriorityOf<Req>,
    D: DeadlineOf<Req> + Clone,
{
    type Output = Result<C::Response, F::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            let next = match state.as_mut().project() {
                StateProj::Admission { future } => return future.poll(cx),
                StateProj::Answer { future } => return future.poll(cx),
                StateProj::Checking { check, call } => {
                    let verdict = ready!(check.as_mut().poll(cx));
                    let Some((mut inner, req)) = call.take() else {
                        // Only after an answer: the state has moved on by then.
                        return Poll::Pending;
                    };
                    match verdict {
                        Verdict::Admit(taken) => State::Admission {
                            future: Budgeted::admit(&mut inner, taken, req),
                        },
                        Verdict::Reject(after) => State::Answer {
                            future: Budgeted::reject(&inner, after, req),
                        },
                    }
                }
            };
            state.set(next);
        }
    }
}

/// The fallback of the HTTP preset ([`BrownoutLayer::http`](super::BrownoutLayer::http)):
/// `F` ([`ProblemJson`](crate::fallback::ProblemJson): `503` or `429` with
/// `Retry-After`) for every rejection, except, with the `defer` feature,
/// those of the routes with a `[routes."…".defer]` section, which are
/// deferred as [`DeferFallback`](crate::defer::DeferFallback) says
/// (`202 Accepted` with a ticket). A replayed request
/// ([`Replayed`](crate::defer::Replayed)) is never deferred again.
///
/// A stack given another fallback ([`BrownoutLayer::fallback`](super::BrownoutLayer::fallback))
/// defers nothing unless that fallback does: wrap it with
/// [`BrownoutLayer::policy_fallback`](super::BrownoutLayer::policy_fallback).
#[cfg(feature = "http")]
#[derive(Debug, Clone)]
pub struct PolicyFallback<F> {
    pub(super) inner: F,
    #[cfg(feature = "defer")]
    pub(super) defer: Option<crate::defer::DeferFallback<F>>,
}

#[cfg(all(feature = "http", not(feature = "defer")))]
impl<Req, Resp, E, F> Fallback<Req, Resp, E> for PolicyFallback<F>
where
    F: Fallback<Req, Resp, E>,
{
    type Error = F::Error;
    type Future = F::Future;

    fn fallback(&self, rejected: Rejected, request: Option<Req>) -> Self::Future {
        self.inner.fallback(rejected, request)
    }

    fn inner_error(&self, error: E) -> Self::Error {
        self.inner.inner_error(error)
    }

    fn on_inner_error(&self, error: E) -> Result<Self::Future, Self::Error> {
        self.inner.on_inner_error(error)
    }
}

#[cfg(feature = "defer")]
pin_project! {
    /// The answer of a [`PolicyFallback`]: the ordinary fallback's, or a
    /// deferral's.
    #[project = PolicyAnswerProj]
    #[allow(missing_docs)]
    pub enum PolicyAnswer<A, B> {
        /// The ordinary fallback's answer.
        Plain { #[pin] future: A },
        /// The deferral's answer (`202` with a ticket, or the ordinary one
        /// when the request cannot be deferred).
        Deferred { #[pin] future: B },
    }
}

#[cfg(feature = "defer")]
impl<A, B> std::fmt::Debug for PolicyAnswer<A, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PolicyAnswer::Plain { .. } => "PolicyAnswer::Plain",
            PolicyAnswer::Deferred { .. } => "PolicyAnswer::Deferred",
        })
    }
}

#[cfg(feature = "defer")]
impl<A, B, T> Future for PolicyAnswer<A, B>
where
    A: Future<Output = T>,
    B: Future<Output = T>,
{
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match self.project() {
            PolicyAnswerProj::Plain { future } => future.poll(cx),
            PolicyAnswerProj::Deferred { future } => future.poll(cx),
        }
    }
}

#[cfg(feature = "defer")]
impl<B, RB, E, F> Fallback<http::Request<B>, http::Response<RB>, E> for PolicyFallback<F>
where
    F: Fallback<http::Request<B>, http::Response<RB>, E> + Clone + Send + Sync + 'static,
    F::Future: Send + 'static,
    F::Error: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<tower::BoxError>,
    RB: From<String> + Send + 'static,
{
    type Error = F::Error;
    type Future = PolicyAnswer<
        F::Future,
        <crate::defer::DeferFallback<F> as Fallback<http::Request<B>, http::Response<RB>, E>>::Future,
    >;

    fn fallback(&self, rejected: Rejected, request: Option<http::Request<B>>) -> Self::Future {
        match (&self.defer, request) {
            (Some(defer), Some(req)) if defer.would_defer(&rejected, &req) => {
                PolicyAnswer::Deferred {
                    future: defer.fallback(rejected, Some(req)),
                }
            }
            (_, request) => PolicyAnswer::Plain {
                future: self.inner.fallback(rejected, request),
            },
        }
    }

    fn inner_error(&self, error: E) -> Self::Error {
        self.inner.inner_error(error)
    }

    fn on_inner_error(&self, error: E) -> Result<Self::Future, Self::Error> {
        self.inner
            .on_inner_error(error)
            .map(|future| PolicyAnswer::Plain { future })
    }
}
