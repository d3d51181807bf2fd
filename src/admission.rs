//! The admission path every brownout layer shares: one gate per route that
//! decides, lock-free, whether a call may reach the back end, and the
//! [`Permit`] an admitted call carries until its outcome is known.
//!
//! A permit is the only way an admitted call leaves a trace: it is settled
//! once, by the classifier, with an [`Outcome`](crate::classify::Outcome);
//! dropped unsettled (the caller went away, a classifier panicked, a
//! streaming body was abandoned) it gives back what it held (a half-open
//! probe slot) and is counted as `cancelled`, never as a sample.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::SharedString;

use crate::breaker::state::{BreakerCore, BreakerState, Ticket, Transition};
use crate::classify::Outcome;
use crate::clock::{Clock, Nanos};
use crate::metrics::RouteMetrics;
use crate::policy::{BreakerPolicy, Mode};
use crate::reject::Rejected;

/// One route's admission state, shared by every clone of its services.
#[derive(Debug)]
pub(crate) struct Gate {
    clock: Clock,
    breaker: BreakerCore,
    metrics: RouteMetrics,
}

impl Gate {
    pub(crate) fn new(
        policy: &BreakerPolicy,
        route: SharedString,
        clock: Clock,
        seed: Option<u64>,
    ) -> Self {
        let gate = Self {
            breaker: BreakerCore::new(policy, seed.unwrap_or_else(fresh_seed)),
            metrics: RouteMetrics::new(route),
            clock,
        };
        gate.metrics
            .breaker_state(gate.breaker.state(gate.clock.now()).gauge());
        gate
    }

    /// Decides whether a call may go to the back end now.
    #[inline]
    pub(crate) fn admit(self: &Arc<Self>) -> Result<Permit, Rejected> {
        let now = self.clock.now();
        let admission = self.breaker.admit(now);
        if let Some(transition) = admission.transition {
            self.report(transition);
        }
        if let Some(would) = &admission.would_reject {
            self.metrics.would_reject(would.reason());
            tracing::debug!(route = %self.metrics.route(), reason = %would.reason(), "brownout: shadow mode would have rejected this request");
        }
        match admission.verdict {
            Ok(ticket) => Ok(Permit {
                gate: Some(self.clone()),
                ticket,
                start: now,
                responded: None,
            }),
            Err(rejected) => {
                self.metrics.rejected(rejected.reason());
                Err(rejected)
            }
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.breaker.state(self.clock.now())
    }

    pub(crate) fn mode(&self) -> Mode {
        self.breaker.mode()
    }

    pub(crate) fn set_mode(&self, mode: Mode) {
        let before = self.state();
        self.breaker.set_mode(mode);
        let after = self.state();
        if before != after {
            self.report(Transition {
                from: before,
                to: after,
                open_for: None,
            });
        }
    }

    #[cfg(test)]
    pub(crate) fn breaker(&self) -> &BreakerCore {
        &self.breaker
    }

    fn settle(&self, ticket: Ticket, outcome: Outcome, start: Nanos, responded: Option<Nanos>) {
        let now = self.clock.now();
        let elapsed = responded.unwrap_or(now).saturating_sub(start);
        let failed = outcome == Outcome::Failure;
        self.metrics.served(failed, elapsed as f64 * 1e-9);
        if let Some(transition) = self.breaker.complete(ticket, failed, elapsed, now) {
            self.report(transition);
        }
    }

    fn cancel(&self, ticket: Ticket) {
        self.metrics.cancelled();
        self.breaker.cancel(ticket);
    }

    /// Metrics and a tracing event for a state change.
    fn report(&self, t: Transition) {
        self.metrics.breaker_state(t.to.gauge());
        self.metrics
            .breaker_transition(t.from.as_str(), t.to.as_str());
        let route = self.metrics.route();
        match (t.to, t.open_for) {
            (BreakerState::Open, Some(open_for)) => tracing::warn!(
                %route, from = t.from.as_str(), open_for = ?open_for,
                "brownout: circuit breaker opened"
            ),
            (BreakerState::Closed, _) => tracing::info!(
                %route, from = t.from.as_str(), "brownout: circuit breaker closed"
            ),
            _ => tracing::info!(
                %route, from = t.from.as_str(), to = t.to.as_str(),
                "brownout: circuit breaker changed state"
            ),
        }
    }
}

/// A seed for the jitter of a breaker built without one: distinct per
/// breaker and per process, so that replicas do not probe in step.
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The right to call the back end once, held by an admitted call until its
/// outcome is known.
///
/// A [`Classify`](crate::classify::Classify) implementation receives the
/// permit with the inner service's result and settles it with
/// [`record`](Permit::record), at once or, for a streaming body whose
/// verdict comes in its trailers, when the body ends. A permit dropped
/// without a verdict counts as cancelled: not a sample, and a half-open
/// probe slot it held is given back.
pub struct Permit {
    /// `None` once settled.
    gate: Option<Arc<Gate>>,
    ticket: Ticket,
    start: Nanos,
    responded: Option<Nanos>,
}

impl Permit {
    /// Settles the call with its outcome.
    pub fn record(mut self, outcome: Outcome) {
        if let Some(gate) = self.gate.take() {
            gate.settle(self.ticket, outcome, self.start, self.responded);
        }
    }

    /// Notes that the response has started (its headers arrived), so that
    /// slow-call detection measures time to the response rather than to
    /// the end of a long body. Calling it again has no effect.
    pub fn responded(&mut self) {
        if self.responded.is_none() {
            if let Some(gate) = &self.gate {
                self.responded = Some(gate.clock.now());
            }
        }
    }

    /// How long ago the call was admitted.
    pub fn elapsed(&self) -> Duration {
        match &self.gate {
            Some(gate) => Duration::from_nanos(gate.clock.now().saturating_sub(self.start)),
            None => Duration::ZERO,
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(gate) = self.gate.take() {
            gate.cancel(self.ticket);
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("settled", &self.gate.is_none())
            .field("ticket", &self.ticket)
            .finish()
    }
}
