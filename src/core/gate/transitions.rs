//! The gate's changes of state that do not come from a call's outcome:
//! the end of a maintenance window, a new policy (reconfiguration), a new
//! mode; and the metrics and log line of every breaker transition.

use std::sync::atomic::Ordering;

use crate::clock::Nanos;
use crate::core::breaker::{BreakerState, Transition};
use crate::core::maintenance::Check;
use crate::core::room::Queues;
use crate::policy::Mode;
use crate::reject::Rejected;

use super::{Asker, Gate, GateSpec};

impl Gate {
    /// A window may be in force at `now`: rejects inside it (counts, in
    /// shadow mode), and runs the end-of-window steps once as it ends.
    #[cold]
    pub(in crate::core) fn check_maintenance(
        &self,
        now: Nanos,
        asker: Asker,
    ) -> Result<(), Rejected> {
        match self.maintenance.check(now) {
            Check::Clear => Ok(()),
            Check::Ended => {
                self.maintenance_ended(now);
                Ok(())
            }
            Check::Inside(rejected) if self.shadow() => {
                if asker == Asker::Arrival {
                    self.would_reject(rejected.reason());
                }
                Ok(())
            }
            Check::Inside(rejected) => Err(rejected),
        }
    }

    /// A maintenance window is over: the back end coming out of it is
    /// probed (the breaker goes half-open) and fed from the limit's
    /// minimum up, not flooded. Waiters are let out by whoever called.
    #[cold]
    pub(in crate::core) fn maintenance_ended(&self, now: Nanos) {
        if let Some(breaker) = &self.breaker {
            if let Some(transition) = breaker.half_open(now) {
                self.report(transition);
            }
        }
        self.limit_recovered(true);
        tracing::info!(
            route = %self.metrics.route(),
            "brownout: maintenance window over: probing the back end, limit back where it served well"
        );
    }

    /// The back end is back (a maintenance window ended, the breaker
    /// closed): the limit starts again where its learner says.
    #[cold]
    pub(in crate::core) fn limit_recovered(&self, maintenance: bool) {
        if let Some(limit) = &self.limit {
            if let Some(change) = limit.recovered(maintenance) {
                self.metrics.limit(change.limit, self.inflight());
            }
        }
    }

    /// Takes the thresholds, bounds and settings of `spec`'s stages, keeping
    /// the state: the breaker's window and verdict, the learned limit, the
    /// calls in flight and the waiters (a smaller room turns away its excess,
    /// least important first, with `QueueFull`). A stage the gate was built
    /// without stays absent. The maintenance windows are replaced: a window
    /// in force that is gone ends now, with the usual end-of-window steps.
    pub(crate) fn reconfigure(&self, spec: &GateSpec<'_>) {
        let now = self.clock.now();
        let windows_changed = match self.maintenance.replace(spec.maintenance, &self.clock, now) {
            None => false,
            Some(Check::Ended) => {
                self.maintenance_ended(now);
                true
            }
            Some(Check::Clear | Check::Inside(_)) => true,
        };
        if let (Some(breaker), Some(policy)) = (&self.breaker, spec.breaker) {
            breaker.reconfigure(policy);
        }
        if let (Some(limit), Some(policy)) = (&self.limit, spec.limit) {
            if let Some(change) = limit.reconfigure(policy) {
                self.metrics.limit(change.limit, change.inflight);
            }
        }
        if let (Some(room), Some(policy)) = (&self.room, spec.room) {
            self.room_capacity.store(policy.capacity, Ordering::Relaxed);
            let turned_away = room.reconfigure(policy);
            for priority in &turned_away {
                self.metrics.waiting(*priority, -1.0);
            }
            if !turned_away.is_empty() {
                tracing::warn!(
                    route = %self.metrics.route(),
                    turned_away = turned_away.len(),
                    "brownout: a smaller waiting room turned away its excess waiters"
                );
            }
        }
        self.metrics.breaker_state(self.state().gauge());
        if windows_changed {
            // Waiters sleep until a time computed from the old windows:
            // wake them to look again.
            if let Some(room) = &self.room {
                if room.waiting() > 0 {
                    room.with(Queues::wake_waiting);
                }
            }
        }
        self.wake_room();
    }

    pub(crate) fn set_mode(&self, mode: Mode) {
        let Some(breaker) = &self.breaker else {
            return;
        };
        let before = self.state();
        breaker.set_mode(mode);
        let after = self.state();
        if before != after {
            self.report(Transition {
                from: before,
                to: after,
                open_for: None,
            });
        }
        self.wake_room();
    }

    /// Metrics and a tracing event for a state change.
    pub(in crate::core) fn report(&self, t: Transition) {
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
