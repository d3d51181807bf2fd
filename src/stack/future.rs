//! The composed stack's response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::Service;

use crate::classify::Classify;
use crate::clock::{Clock, Nanos};
use crate::core::gate::{Gate, Waiter};
use crate::core::permit::Permit;
use crate::deadline::{DeadlineOf, NoDeadline};
use crate::fallback::Fallback;

pin_project! {
    /// A request through the stack: waiting in the room, calling the inner
    /// service with its permit, or being answered by the fallback.
    ///
    /// Dropping it while it waits frees its place at once (a permit it had
    /// just been granted goes to the next waiter); while it calls, its
    /// permit is released and the call counted as cancelled.
    pub struct ResponseFuture<S, Req, C, F, D = NoDeadline>
    where
        S: Service<Req>,
        C: Classify<S::Response, S::Error>,
        F: Fallback<Req, C::Response, S::Error>,
    {
        #[pin]
        state: State<S, Req, C, F, D>,
    }

    impl<S, Req, C, F, D> PinnedDrop for ResponseFuture<S, Req, C, F, D>
    where
        S: Service<Req>,
        C: Classify<S::Response, S::Error>,
        F: Fallback<Req, C::Response, S::Error>,
    {
        fn drop(this: Pin<&mut Self>) {
            if let StateProj::Waiting { parts } = this.project().state.project() {
                parts.gate.leave(&parts.waiter);
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req, C, F, D>
    where
        S: Service<Req>,
        C: Classify<S::Response, S::Error>,
        F: Fallback<Req, C::Response, S::Error>,
    {
        Waiting {
            // Boxed: a waiting request carries its request, its service, a
            // timer and more; boxing them (only a request that waits pays
            // the allocation) keeps the future of an admitted request small.
            parts: Pin<Box<WaitingFor<S, Req, C, F, D>>>,
        },
        Calling {
            #[pin]
            call: S::Future,
            permit: Option<Permit>,
            classifier: C,
            fallback: F,
            // Fires at the request's deadline: the call is abandoned (a
            // failure for the breaker and the limit) and the fallback
            // answers.
            #[pin]
            timer: Option<Sleep>,
        },
        Answering {
            #[pin]
            answer: F::Future,
        },
    }
}

pin_project! {
    /// What a waiting request holds until it leaves the room.
    #[project = WaitingForProj]
    struct WaitingFor<S, Req, C, F, D> {
        gate: Arc<Gate>,
        waiter: Waiter,
        // The service, polled ready before `call`, and the request, kept
        // for when a permit comes (or handed to the fallback).
        inner: Option<S>,
        req: Option<Req>,
        classifier: Option<C>,
        fallback: Option<F>,
        // The request's own deadline, and what rewrites it on the request
        // once the wait is over.
        deadline: Option<Nanos>,
        propagate: Option<D>,
        #[pin]
        sleep: Option<Sleep>,
    }
}

impl<S, Req, C, F, D> ResponseFuture<S, Req, C, F, D>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error>,
    F: Fallback<Req, C::Response, S::Error>,
{
    pub(crate) fn calling(
        call: S::Future,
        permit: Permit,
        classifier: C,
        fallback: F,
        deadline: Option<Nanos>,
    ) -> Self {
        let timer = deadline.and_then(|at| Some(deadline_timer(permit.clock()?, at)));
        Self {
            state: State::Calling {
                call,
                permit: Some(permit),
                classifier,
                fallback,
                timer,
            },
        }
    }

    pub(crate) fn answering(answer: F::Future) -> Self {
        Self {
            state: State::Answering { answer },
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn waiting(
        gate: Arc<Gate>,
        waiter: Waiter,
        inner: S,
        req: Req,
        classifier: C,
        fallback: F,
        deadline: Option<Nanos>,
        propagate: D,
    ) -> Self {
        Self {
            state: State::Waiting {
                parts: Box::pin(WaitingFor {
                    gate,
                    waiter,
                    inner: Some(inner),
                    req: Some(req),
                    classifier: Some(classifier),
                    fallback: Some(fallback),
                    deadline,
                    propagate: Some(propagate),
                    sleep: None,
                }),
            },
        }
    }
}

/// A timer for `at` on `clock`'s time line.
fn deadline_timer(clock: &Clock, at: Nanos) -> Sleep {
    tokio::time::sleep_until(clock.instant(at) + clock.slack())
}

impl<S, Req, C, F, D> std::fmt::Debug for ResponseFuture<S, Req, C, F, D>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error>,
    F: Fallback<Req, C::Response, S::Error>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Waiting { .. } => "waiting",
            State::Calling { .. } => "calling",
            State::Answering { .. } => "answering",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<S, Req, C, F, D> Future for ResponseFuture<S, Req, C, F, D>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error>,
    F: Fallback<Req, C::Response, S::Error>,
    D: DeadlineOf<Req>,
{
    type Output = Result<C::Response, F::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Answering { answer } => return answer.poll(cx),
                StateProj::Calling {
                    call,
                    permit,
                    classifier,
                    fallback,
                    timer,
                } => {
                    if let Poll::Ready(result) = call.poll(cx) {
                        let permit = permit.take().expect("polled after completion");
                        match crate::classify::settle(&*classifier, result, permit) {
                            Ok(response) => return Poll::Ready(Ok(response)),
                            Err(error) => match fallback.on_inner_error(error) {
                                Ok(answer) => State::Answering { answer },
                                Err(error) => return Poll::Ready(Err(error)),
                            },
                        }
                    } else {
                        let Some(timer) = timer.as_pin_mut() else {
                            return Poll::Pending;
                        };
                        ready!(timer.poll(cx));
                        // The deadline passed with the call still running: the
                        // caller has gone, so stop waiting for the back end; a
                        // call that outlives its caller's deadline is overload.
                        let permit = permit.take().expect("polled after completion");
                        let rejected = permit.abandon_at_deadline();
                        State::Answering {
                            answer: fallback.fallback(rejected, None),
                        }
                    }
                }
                StateProj::Waiting { parts } => {
                    let WaitingForProj {
                        gate,
                        waiter,
                        inner,
                        req,
                        classifier,
                        fallback,
                        deadline,
                        propagate,
                        mut sleep,
                    } = parts.as_mut().project();
                    match gate.poll_waiter(waiter, cx) {
                        Poll::Ready(verdict) => {
                            let (Some(mut inner), Some(mut req), Some(classifier), Some(fallback)) =
                                (inner.take(), req.take(), classifier.take(), fallback.take())
                            else {
                                unreachable!("a waiting future holds its call until it leaves");
                            };
                            match verdict {
                                Ok(permit) => {
                                    let timer = deadline.map(|at| {
                                        // Tell the back end how much time is left
                                        // after the wait (gRPC's `grpc-timeout`).
                                        let left = at.saturating_sub(gate.clock().now());
                                        if let Some(propagate) = propagate.take() {
                                            propagate
                                                .propagate(&mut req, Duration::from_nanos(left));
                                        }
                                        deadline_timer(gate.clock(), at)
                                    });
                                    State::Calling {
                                        call: inner.call(req),
                                        permit: Some(permit),
                                        classifier,
                                        fallback,
                                        timer,
                                    }
                                }
                                Err(rejected) => State::Answering {
                                    answer: fallback.fallback(rejected, Some(req)),
                                },
                            }
                        }
                        Poll::Pending => {
                            // Poll again when the wait runs out or the breaker
                            // is due to probe, whichever comes first; a permit
                            // freed before then wakes the waker directly.
                            let clock = gate.clock();
                            let at = clock.instant(gate.wake_at(waiter)) + clock.slack();
                            match sleep.as_mut().as_pin_mut() {
                                // Fired for this very time and the gate still
                                // says wait: never spin, look again a tick later.
                                Some(timer) if timer.deadline() >= at && timer.is_elapsed() => {
                                    let later = timer.deadline() + Duration::from_millis(1);
                                    timer.reset(later);
                                }
                                Some(timer) if timer.deadline() == at => {}
                                Some(timer) => timer.reset(at),
                                None => sleep.set(Some(tokio::time::sleep_until(at))),
                            }
                            let timer = sleep.as_pin_mut().expect("the timer was just set");
                            match timer.poll(cx) {
                                Poll::Ready(()) => continue,
                                Poll::Pending => return Poll::Pending,
                            }
                        }
                    }
                }
            };
            this.state.set(next);
        }
    }
}
