//! The [`WaitingRoom`](super::WaitingRoom)'s response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{BoxError, Service};

use crate::admission::{Gate, Waiter};
use crate::classify::Classify;
use crate::future::ResponseFuture as AdmittedFuture;

pin_project! {
    /// Waits in the room for a permit, then runs the inner call; or
    /// answers at once when admitted or rejected on arrival.
    ///
    /// Dropping the future while it waits frees its place at once (and a
    /// permit it had just been granted goes to the next waiter); dropping
    /// it while the inner call runs releases the call's permit.
    #[project = Proj]
    pub struct ResponseFuture<S, Req, C>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req, C>,
        gate: Arc<Gate>,
    }

    impl<S, Req, C> PinnedDrop for ResponseFuture<S, Req, C>
    where
        S: Service<Req>,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let StateProj::Waiting { waiter, .. } = this.state.project() {
                this.gate.leave(waiter);
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req, C>
    where
        S: Service<Req>,
    {
        Waiting {
            waiter: Waiter,
            // The service, ready (it was polled ready before `call`), and
            // the request, both kept for when a permit comes.
            inner: Option<S>,
            req: Option<Req>,
            classifier: Option<C>,
            #[pin]
            sleep: Option<Sleep>,
        },
        Running {
            #[pin]
            call: AdmittedFuture<S::Future, C>,
        },
    }
}

impl<S, Req, C> ResponseFuture<S, Req, C>
where
    S: Service<Req>,
{
    pub(crate) fn running(call: AdmittedFuture<S::Future, C>, gate: Arc<Gate>) -> Self {
        Self {
            state: State::Running { call },
            gate,
        }
    }

    pub(crate) fn waiting(
        waiter: Waiter,
        inner: S,
        req: Req,
        classifier: C,
        gate: Arc<Gate>,
    ) -> Self {
        Self {
            state: State::Waiting {
                waiter,
                inner: Some(inner),
                req: Some(req),
                classifier: Some(classifier),
                sleep: None,
            },
            gate,
        }
    }
}

impl<S, Req, C> std::fmt::Debug for ResponseFuture<S, Req, C>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Waiting { waiter, .. } => format!("Waiting({waiter:?})"),
            State::Running { .. } => "Running".to_owned(),
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl<S, Req, C> Future for ResponseFuture<S, Req, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
{
    type Output = Result<C::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let next = match this.state.as_mut().project() {
                StateProj::Running { call } => return call.poll(cx),
                StateProj::Waiting {
                    waiter,
                    inner,
                    req,
                    classifier,
                    mut sleep,
                } => match this.gate.poll_waiter(waiter, cx) {
                    Poll::Ready(verdict) => {
                        let (Some(mut inner), Some(req), Some(classifier)) =
                            (inner.take(), req.take(), classifier.take())
                        else {
                            unreachable!("a waiting future holds its call until it leaves");
                        };
                        let call = match verdict {
                            Ok(permit) => {
                                AdmittedFuture::admitted(inner.call(req), permit, classifier)
                            }
                            Err(rejected) => AdmittedFuture::rejected(rejected),
                        };
                        State::Running { call }
                    }
                    Poll::Pending => {
                        // Poll again when the wait runs out or the breaker
                        // is due to probe, whichever comes first; a permit
                        // freed before then wakes the waker directly.
                        let clock = this.gate.clock();
                        let at = clock.instant(this.gate.wake_at(waiter)) + clock.slack();
                        match sleep.as_mut().as_pin_mut() {
                            // Fired for this very time and the gate still
                            // says wait: never spin, look again a tick later.
                            Some(timer) if timer.deadline() >= at && timer.is_elapsed() => {
                                let later = timer.deadline() + std::time::Duration::from_millis(1);
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
                },
            };
            this.state.set(next);
        }
    }
}
