//! The waiting room: hold requests through short outages and bursts, and
//! let them out in priority order, at the pace the back end can take, when
//! capacity returns.
//!
//! # How it works
//!
//! A request that cannot be admitted at once (the breaker is open or its
//! probes are all out, or the limit is full) takes a place in the room
//! instead of being rejected, as long as there is one and waiting can help.
//! It leaves:
//!
//! - **with a permit**, when one frees up: every freed permit (a call that
//!   ends, a limit that grows, a breaker that closes or starts probing) goes
//!   to exactly one waiter, the most important class first, then the
//!   oldest (`priority_fifo`) or, while a standing queue persists, the
//!   newest (`adaptive_lifo`). Nothing ever lets out more calls than the
//!   limit allows: a backlog drains at the pace the back end sets, and a
//!   recovering back end is not knocked over by a herd;
//! - **with [`Rejected`](crate::Rejected)** `QueueTimeout` after `max_wait`,
//!   or `Deadline` at the request's own deadline if that comes first; at
//!   once with `QueueFull` when the room is full (an urgent request arriving
//!   at a full room takes the place of the newest waiter of the least
//!   important class, which is told `QueueFull`); or with `Open` as soon as
//!   it is clear the breaker will not probe before its wait runs out.
//!
//! A request whose caller goes away (its future is dropped) leaves at once;
//! its place and waker are freed, and a permit it had just been granted
//! goes to the next waiter.
//!
//! # Cost
//!
//! While the room is empty, admission costs what the breaker and the limit
//! cost, plus one atomic load. Waiting costs one slot of fixed size (no
//! allocation once the room has reached its peak size) and a timer; places
//! are taken and given back in O(1) under one mutex that only waiting
//! requests and permit releases of a non-empty room take. No task is
//! spawned.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use brownout::{LimitPolicy, WaitingRoomLayer, WaitingRoomPolicy};
//! use brownout::policy::Algorithm;
//! use tower::{Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let room = WaitingRoomLayer::new(WaitingRoomPolicy {
//!     capacity: 100,
//!     max_wait: Duration::from_secs(5),
//!     ..WaitingRoomPolicy::default()
//! })
//! .limit(LimitPolicy { algorithm: Algorithm::Fixed, initial: 1, ..LimitPolicy::default() });
//! let svc = ServiceBuilder::new().layer(room).service_fn(|n: u32| async move {
//!     tokio::time::sleep(Duration::from_secs(1)).await;
//!     Ok::<_, std::io::Error>(n)
//! });
//!
//! // One call at a time: the second waits for the first, then runs.
//! let (a, b) = tokio::join!(svc.clone().oneshot(1), svc.clone().oneshot(2));
//! assert_eq!((a.unwrap(), b.unwrap()), (1, 2));
//! # }
//! ```

mod layer;

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{BoxError, Service};

use crate::classify::{Classify, ErrorsAsFailures};
use crate::clock::saturating_nanos;
use crate::core::gate::{Entry, Gate};
use crate::deadline::{DeadlineOf, NoDeadline};
use crate::fallback::RejectAsError;
use crate::priority::{DefaultPriority, PriorityOf};

pub use self::layer::WaitingRoomLayer;

/// The waiting room's response future: the composed stack's, with
/// rejections as errors.
pub type ResponseFuture<S, Req, C, D = NoDeadline> =
    crate::stack::ResponseFuture<S, Req, C, RejectAsError, D>;

/// A waiting room in front of a service; see the [module docs](self).
/// Clones share the room.
#[derive(Debug, Clone)]
pub struct WaitingRoom<S, P = DefaultPriority, D = NoDeadline, C = ErrorsAsFailures> {
    inner: S,
    gate: Arc<Gate>,
    priority: P,
    deadline: D,
    classifier: C,
}

impl<S, P, D, C> WaitingRoom<S, P, D, C> {
    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.gate.waiting()
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

impl<S, P, D, C, Req> Service<Req> for WaitingRoom<S, P, D, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: PriorityOf<Req>,
    D: DeadlineOf<Req> + Clone,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, C, D>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let priority = self.priority.priority_of(&req, self.gate.classes());
        let deadline = self.deadline.deadline_of(&req).map(|left| {
            self.gate
                .clock()
                .now()
                .saturating_add(saturating_nanos(left))
        });
        match self.gate.enter(priority, deadline) {
            Ok(Entry::Now(permit)) => ResponseFuture::calling(
                self.inner.call(req),
                permit,
                self.classifier.clone(),
                RejectAsError,
                deadline,
            ),
            Ok(Entry::Wait(waiter)) => {
                // Keep the service that was polled ready for this request,
                // and leave a fresh clone for the next one.
                let fresh = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, fresh);
                let gate = self.gate.clone();
                let classifier = self.classifier.clone();
                let propagate = self.deadline.clone();
                ResponseFuture::waiting(
                    gate,
                    waiter,
                    ready,
                    req,
                    classifier,
                    RejectAsError,
                    deadline,
                    propagate,
                )
            }
            Err(rejected) => ResponseFuture::answering(std::future::ready(Err(rejected.into()))),
        }
    }
}
