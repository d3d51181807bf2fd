//! A declared capacity budget: `capacity` admissions every `per`, with
//! shares reserved for priority classes, counted in this process or shared
//! by every replica through Redis (feature `fleet`).
//!
//! Ops know some capacities by decree rather than by measurement: the
//! office can book 600 appointments a day, a third of them urgent. The
//! budget admits at most that many requests per period, and answers the
//! rest at once with [`Reason::Budget`] and a retry hint: when the next
//! unit frees.
//!
//! ```
//! # #[cfg(feature = "toml")] {
//! use brownout::budget::{Budget, BudgetLayer};
//! use brownout::priority::{priority_fn, Priority};
//! use brownout::{Policy, Reason, Rejected};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), tower::BoxError> {
//! let policy = Policy::from_toml(
//!     r#"
//!     [budget]
//!     capacity = 3
//!     per = "1d"
//!     shares = { urgent = 0.34 }   # one unit kept for urgent requests
//!     "#,
//! )?;
//! let budget = Budget::from_policy(&policy)?.expect("a [budget] section");
//! // Requests are class ranks here: 0 urgent, 1 normal.
//! let layer = BudgetLayer::new(budget).priority(priority_fn(|rank: &u8, _: &_| Priority::new(*rank)));
//! let mut svc = ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|_: u8| async { Ok::<_, tower::BoxError>("booked") });
//!
//! assert!(svc.ready().await?.call(1).await.is_ok());
//! assert!(svc.ready().await?.call(1).await.is_ok());
//! // The third unit is urgent's reserve.
//! let err = svc.ready().await?.call(1).await.unwrap_err();
//! let rejected = err.downcast_ref::<Rejected>().unwrap();
//! assert_eq!(rejected.reason(), Reason::Budget);
//! assert!(rejected.retry_after().is_some());
//! assert!(svc.ready().await?.call(0).await.is_ok());
//! # Ok(()) }
//! # }
//! ```
//!
//! # What is counted, and when a unit frees
//!
//! Each admission takes one unit. A class with a share draws from its own
//! reserve first, then from the unreserved units; a class without one draws
//! only from the unreserved units, so it never takes a reserve. Units are
//! counted per time slot:
//!
//! - `window = "sliding"` (the default): any stretch of time `per` long
//!   holds at most `capacity` admissions. Units are counted in slots of
//!   `per / 60`, and a unit frees one period after the end of its slot (at
//!   most `per / 60` later than an exact log of timestamps would free it).
//!   Reserves are kept for their class all the time.
//! - `window = "calendar"`: periods `per` long aligned on midnight
//!   1970-01-01 in the zone `tz`, a zone name or a UTC offset (calendar
//!   days with `per = "1d"`, 23 or 25 hours long when the clocks change);
//!   each starts with the full capacity. In the period's last `release`
//!   (a tenth of `per` unless set), what is left of every reserve is
//!   released to every class.
//!
//! [`BrownoutLayer::from_policy`](crate::BrownoutLayer::from_policy)
//! counts the policy's `[budget]` itself, in front of admission: a unit
//! taken by a request admission then turns away before the back end sees
//! it (shed, breaker open, a wait run out) is given back, whichever
//! fallback answers it: at once to the local store; to Redis with the
//! replica's next admission (only the latest slot's units per pool wait
//! there, and a unit the local fallback admitted while Redis was away is
//! not given back: the fleet then admits fewer, never more).
//! [`BudgetLayer`] puts a budget in front of any other service; there, a unit is given back when the inner
//! service answers with a [`Rejected`] error (an inner stack that answers
//! its rejections itself keeps the unit). Do not put a `BudgetLayer` over
//! a stack built from the same `[budget]`: each request would take two
//! units.
//!
//! # Several replicas
//!
//! With `store = "redis"` (feature `fleet`), every admission runs one Lua
//! script on Redis that counts the fleet's units in the same slots, so the
//! fleet's total is exact. The call waits at most `shared_timeout`; if Redis
//! errs or is late, the replica decides from local pools sized
//! `capacity / replicas` (the larger of the policy's `replicas` and the
//! replicas Redis saw in the last ten minutes), starting from its share of
//! the fleet's last known use, logs once, counts
//! `brownout_shared_state_errors_total`, and tries Redis again a second
//! later. The units it admitted meanwhile are added to Redis's count when it
//! rejoins.
//!
//! [`Reason::Budget`]: crate::Reason::Budget

mod engine;
mod local;
#[cfg(feature = "fleet")]
mod redis;

#[cfg(feature = "fleet")]
pub(crate) use self::redis::replica_id;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower::{BoxError, Layer, Service};

pub(crate) use self::engine::Taken;
use self::engine::{LocalPools, Plan};
use crate::clock::Clock;
use crate::policy::{BudgetPolicy, BudgetStore, Policy, PolicyError, PriorityPolicy};
use crate::priority::{Classes, DefaultPriority, Priority, PriorityOf};
use crate::reject::{Reason, Rejected};

/// A budget that cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BudgetError {
    /// The policy does not validate.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// `store = "redis"` in a build without the `fleet` feature.
    #[error(
        "budget.store: \"redis\" needs brownout's `fleet` cargo feature, which this build lacks"
    )]
    FeatureDisabled,
    /// The Redis URL cannot be used.
    #[error("budget.url: {url:?} cannot be used: {why}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
}

/// A declared capacity budget, shared by every clone (and every layer
/// built from it). Build it with [`Budget::new`] or
/// [`Budget::from_policy`]; put it in front of a service with
/// [`BudgetLayer`].
#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

struct Inner {
    plan: Plan,
    classes: Classes,
    store: Store,
}

enum Store {
    Local(LocalPools),
    #[cfg(feature = "fleet")]
    Redis(Box<redis::Shared>),
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("sizes", &self.inner.plan.sizes)
            .field("window", &self.inner.plan.window)
            .field(
                "store",
                &match self.inner.store {
                    Store::Local(_) => "local",
                    #[cfg(feature = "fleet")]
                    Store::Redis(_) => "redis",
                },
            )
            .finish()
    }
}

/// The budget's answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Admit(Option<Taken>),
    Reject(Duration),
}

impl Budget {
    /// The budget of `policy` with the classes of `priority`; checks both.
    /// With `store = "redis"`, the URL is parsed here (a bad one is an
    /// error) but nothing is connected: a Redis that does not answer is a
    /// logged fallback at run time, not an error.
    ///
    /// Build it after `tokio::time::pause()` in tests: it reads the
    /// layers' clock ([`Clock::detect`]).
    pub fn new(policy: &BudgetPolicy, priority: &PriorityPolicy) -> Result<Self, BudgetError> {
        Self::with_clock(policy, priority, Clock::detect())
    }

    /// [`new`](Self::new) on `clock`: calendar periods follow its
    /// wall-clock time ([`Clock::tokio_at`] lets a test in paused time
    /// start at a chosen moment).
    pub fn with_clock(
        policy: &BudgetPolicy,
        priority: &PriorityPolicy,
        clock: Clock,
    ) -> Result<Self, BudgetError> {
        policy.validate()?;
        priority.validate()?;
        policy.validate_classes(priority)?;
        let classes = Classes::from_policy(priority);
        let plan = Plan::new(policy, &classes, clock);
        let store = match policy.store {
            BudgetStore::Redis => {
                #[cfg(feature = "fleet")]
                {
                    Store::Redis(Box::new(redis::Shared::new(policy, &plan)?))
                }
                #[cfg(not(feature = "fleet"))]
                {
                    return Err(BudgetError::FeatureDisabled);
                }
            }
            _ => Store::Local(LocalPools::new(&plan)),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                plan,
                classes,
                store,
            }),
        })
    }

    /// The budget of `policy.budget` with `policy.priority`, or `None` when
    /// the policy has no `[budget]` section.
    pub fn from_policy(policy: &Policy) -> Result<Option<Self>, BudgetError> {
        policy
            .budget
            .as_ref()
            .map(|budget| Self::new(budget, &policy.priority))
            .transpose()
    }

    /// The classes the budget knows, from `[priority]`.
    pub fn classes(&self) -> &Classes {
        &self.inner.classes
    }

    /// Units each pool holds: the unreserved units first, then each share's
    /// reserve in the order of the class names.
    pub fn pool_sizes(&self) -> &[u64] {
        &self.inner.plan.sizes
    }

    /// Takes a unit for a request of class `priority` without a service:
    /// `Ok(())` if admitted, or the rejection (with its retry hint). With
    /// the Redis store this is one script call (at most `shared_timeout`).
    pub async fn try_admit(&self, priority: Priority) -> Result<(), Rejected> {
        match self.check(priority) {
            Check::Done(verdict) => verdict_result(verdict),
            #[cfg(feature = "fleet")]
            Check::Pending(fut) => verdict_result(fut.await),
        }
    }

    /// Takes a unit for `priority` now (local store), or the future of the
    /// Redis script's verdict.
    pub(crate) fn check(&self, priority: Priority) -> Check {
        let inner = &self.inner;
        let priority = inner.classes.clamp(priority);
        let now = inner.plan.clock.now();
        match &inner.store {
            Store::Local(pools) => Check::Done(match pools.admit(&inner.plan, priority, now) {
                Ok(taken) => Verdict::Admit(Some(taken)),
                Err(after) => Verdict::Reject(after),
            }),
            #[cfg(feature = "fleet")]
            Store::Redis(shared) => match shared.try_local(&inner.plan, priority, now) {
                Some(verdict) => Check::Done(verdict),
                None => Check::Pending(redis::admit(self.inner.clone(), priority, now)),
            },
        }
    }

    /// Gives back a unit a request took and did not use: at once to the
    /// local pools; to Redis with the replica's next admission (a unit the
    /// local fallback admitted while Redis was away is not given back).
    pub(crate) fn give_back(&self, taken: Taken) {
        match &self.inner.store {
            Store::Local(pools) => pools.give_back(taken),
            #[cfg(feature = "fleet")]
            Store::Redis(shared) => shared.give_back(taken),
        }
    }
}

pub(crate) fn verdict_result(verdict: Verdict) -> Result<(), Rejected> {
    match verdict {
        Verdict::Admit(_) => Ok(()),
        Verdict::Reject(after) => Err(Rejected::new(Reason::Budget).with_retry_after(after)),
    }
}

pub(crate) enum Check {
    Done(Verdict),
    #[cfg(feature = "fleet")]
    Pending(Pin<Box<dyn Future<Output = Verdict> + Send>>),
}

/// Puts a [`Budget`] in front of a service: a request the budget has no
/// unit for is answered with [`Reason::Budget`] from the response future
/// (never from `poll_ready`), the retry hint set to when the next unit
/// frees.
///
/// Each request's class comes from [`priority`](Self::priority) (the
/// default class without one). Place it outside the rest of brownout's
/// stack (`ServiceBuilder::new().layer(budget).layer(brownout)`): a unit
/// taken by a request the inner stack rejects is given back.
#[derive(Debug, Clone)]
pub struct BudgetLayer<P = DefaultPriority> {
    budget: Budget,
    priority: P,
}

impl BudgetLayer {
    /// A layer over `budget`; every request gets the default class.
    pub fn new(budget: Budget) -> Self {
        Self {
            budget,
            priority: DefaultPriority,
        }
    }
}

impl<P> BudgetLayer<P> {
    /// Finds each request's class with `priority` (e.g.
    /// `HeaderPriority::from_policy(&policy.priority)` for HTTP).
    pub fn priority<P2>(self, priority: P2) -> BudgetLayer<P2> {
        BudgetLayer {
            budget: self.budget,
            priority,
        }
    }
}

impl<S, P: Clone> Layer<S> for BudgetLayer<P> {
    type Service = BudgetService<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        BudgetService {
            inner,
            budget: self.budget.clone(),
            priority: self.priority.clone(),
        }
    }
}

/// The service of a [`BudgetLayer`].
#[derive(Debug, Clone)]
pub struct BudgetService<S, P = DefaultPriority> {
    inner: S,
    budget: Budget,
    priority: P,
}

impl<S, P, Req> Service<Req> for BudgetService<S, P>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: PriorityOf<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BudgetFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let priority = self.priority.priority_of(&req, &self.budget.inner.classes);
        match self.budget.check(priority) {
            Check::Done(Verdict::Admit(taken)) => BudgetFuture::calling(
                self.inner.call(req),
                taken.map(|t| (t, self.budget.clone())),
            ),
            Check::Done(Verdict::Reject(after)) => BudgetFuture::rejected(after),
            #[cfg(feature = "fleet")]
            Check::Pending(check) => {
                // The ready inner service goes with the request; a clone
                // stays for the next one.
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                BudgetFuture {
                    state: State::Checking {
                        check,
                        call: Some((ready, req)),
                        budget: self.budget.clone(),
                    },
                }
            }
        }
    }
}

pin_project! {
    /// The response future of a [`BudgetService`].
    pub struct BudgetFuture<S: Service<Req>, Req> {
        #[pin]
        state: State<S, Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Req>, Req> {
        Rejected { after: Duration },
        Checking {
            check: Pin<Box<dyn Future<Output = Verdict> + Send>>,
            call: Option<(S, Req)>,
            // Where a unit the inner service does not use goes back.
            budget: Budget,
        },
        Calling {
            #[pin]
            fut: S::Future,
            taken: Option<(Taken, Budget)>,
        },
    }
}

impl<S: Service<Req>, Req> fmt::Debug for BudgetFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetFuture").finish_non_exhaustive()
    }
}

impl<S: Service<Req>, Req> BudgetFuture<S, Req> {
    fn calling(fut: S::Future, taken: Option<(Taken, Budget)>) -> Self {
        Self {
            state: State::Calling { fut, taken },
        }
    }

    fn rejected(after: Duration) -> Self {
        Self {
            state: State::Rejected { after },
        }
    }
}

impl<S, Req> Future for BudgetFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Rejected { after } => {
                    return Poll::Ready(Err(Rejected::new(Reason::Budget)
                        .with_retry_after(*after)
                        .into()));
                }
                StateProj::Checking {
                    check,
                    call,
                    budget,
                } => {
                    let verdict = ready!(check.as_mut().poll(cx));
                    match verdict {
                        Verdict::Reject(after) => {
                            this.state.set(State::Rejected { after });
                        }
                        Verdict::Admit(taken) => {
                            let Some((mut svc, req)) = call.take() else {
                                return Poll::Ready(Err(Rejected::new(Reason::Budget).into()));
                            };
                            let fut = svc.call(req);
                            let taken = taken.map(|taken| (taken, budget.clone()));
                            this.state.set(State::Calling { fut, taken });
                        }
                    }
                }
                StateProj::Calling { fut, taken } => {
                    let result = ready!(fut.poll(cx)).map_err(Into::into);
                    if let Err(err) = &result {
                        if err.downcast_ref::<Rejected>().is_some() {
                            if let Some((taken, budget)) = taken.take() {
                                budget.give_back(taken);
                            }
                        }
                    }
                    return Poll::Ready(result);
                }
            }
        }
    }
}
