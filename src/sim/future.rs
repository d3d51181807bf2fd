//! The simulated back end's response future, answer and error.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};

use super::config::scale;
use super::core::{Arrival, Decision, Held, Shared};

/// A served call's answer: how long it queued inside the back end and how
/// long it was then served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimResponse {
    /// The call's number on this back end, from 0, in call order (shared by
    /// all clones).
    pub seq: u64,
    /// Time spent waiting for a free slot, from `call` to the start of
    /// service.
    pub queue_delay: Duration,
    /// Time spent in service, as measured on tokio's clock: the drawn base
    /// service time times the slow factor in force when service started
    /// (in paused time exactly; a timer may fire a little late otherwise).
    pub service_time: Duration,
}

impl SimResponse {
    /// The call's latency as the caller saw it: queueing delay plus service
    /// time.
    pub fn latency(&self) -> Duration {
        self.queue_delay.saturating_add(self.service_time)
    }
}

/// A simulated back end's failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SimError {
    /// The back end was down ([`Condition::DownFast`](super::Condition::DownFast)
    /// or the down half of [`Condition::Flapping`](super::Condition::Flapping))
    /// and refused the call.
    #[error("the simulated back end is down: the call was refused")]
    Down,
}

#[derive(Debug, Clone, Copy)]
enum Stage {
    /// In the back end's queue (or given a slot it has not seen yet).
    Queued,
    /// Being served; answers at `deadline` (never if `None`).
    Serving {
        start: Instant,
        deadline: Option<Instant>,
    },
    /// Answers [`SimError::Down`] at `at`.
    Failing { at: Instant },
    /// Never answers.
    Hanging,
    /// Answered.
    Done,
}

pin_project! {
    /// The answer of a [`SimBackend`](super::SimBackend) call: ready when
    /// the call has queued and been served, or failed; pending for ever
    /// while the back end hangs.
    ///
    /// Dropping it before it answers counts the call as cancelled and gives
    /// back what it held: its place in the queue or its service slot (which
    /// goes to the next queued call at once).
    pub struct ResponseFuture {
        shared: Arc<Shared>,
        seq: u64,
        arrival: Instant,
        base: Duration,
        stage: Stage,
        #[pin]
        sleep: Option<Sleep>,
    }

    impl PinnedDrop for ResponseFuture {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let held = match *this.stage {
                Stage::Done => return,
                Stage::Queued => Held::Queued,
                Stage::Serving { deadline, .. } => Held::Service { until: deadline },
                Stage::Failing { .. } => Held::Nothing,
                Stage::Hanging => Held::Hang,
            };
            this.shared.cancel(*this.seq, *this.base, held);
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("seq", &self.seq)
            .field("stage", &self.stage)
            .finish_non_exhaustive()
    }
}

impl ResponseFuture {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let (seq, arrival, base, first) = shared.arrive();
        let stage = match first {
            Arrival::Queued => Stage::Queued,
            Arrival::Fail(at) => Stage::Failing { at },
            Arrival::Hang => Stage::Hanging,
        };
        Self {
            shared,
            seq,
            arrival,
            base,
            stage,
            sleep: None,
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<SimResponse, SimError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match *this.stage {
                Stage::Queued => match this.shared.decision(*this.seq, cx.waker()) {
                    Decision::Waiting => return Poll::Pending,
                    Decision::Serve { start, factor } => {
                        let service = scale(*this.base, factor);
                        *this.stage = Stage::Serving {
                            start,
                            deadline: start.checked_add(service),
                        };
                    }
                    Decision::Fail { at } => {
                        let at = at.checked_add(this.shared.down_latency).unwrap_or(at);
                        *this.stage = Stage::Failing { at };
                    }
                    Decision::Hang => *this.stage = Stage::Hanging,
                },
                Stage::Serving {
                    start, deadline, ..
                } => {
                    // A service time too long for the clock never ends.
                    let Some(deadline) = deadline else {
                        return Poll::Pending;
                    };
                    ready!(poll_sleep(this.sleep.as_mut(), deadline, cx));
                    *this.stage = Stage::Done;
                    this.shared.served();
                    return Poll::Ready(Ok(SimResponse {
                        seq: *this.seq,
                        queue_delay: start.saturating_duration_since(*this.arrival),
                        service_time: Instant::now().saturating_duration_since(start),
                    }));
                }
                Stage::Failing { at } => {
                    ready!(poll_sleep(this.sleep.as_mut(), at, cx));
                    *this.stage = Stage::Done;
                    this.shared.failed();
                    return Poll::Ready(Err(SimError::Down));
                }
                // Hanging: pending until dropped. Done: polled after it
                // answered, which the Future contract leaves open; pending
                // is the harmless answer.
                Stage::Hanging | Stage::Done => return Poll::Pending,
            }
        }
    }
}

/// Polls a timer for `deadline`, created on first use (so that `call` works
/// outside a runtime and the timer is made on the runtime that polls).
fn poll_sleep(
    mut sleep: Pin<&mut Option<Sleep>>,
    deadline: Instant,
    cx: &mut Context<'_>,
) -> Poll<()> {
    if sleep.as_mut().as_pin_mut().is_none() {
        sleep.set(Some(sleep_until(deadline)));
    }
    match sleep.as_pin_mut() {
        Some(s) => s.poll(cx),
        None => Poll::Pending,
    }
}
