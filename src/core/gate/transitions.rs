//! The gate's changes of state that do not come from a call's outcome:
//! the end of a maintenance window, a new policy (reconfiguration), a new
//! mode, a manual action on the breaker; and the metrics, log line and
//! listener call of every breaker transition, limit change and shed.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use crate::clock::Clock;
use crate::clock::{Nanos, saturating_nanos};
use crate::core::breaker::{BreakerState, Manual, Transition, Until};
use crate::core::maintenance::Check;
use crate::core::room::Queues;
use crate::listen::{
    BreakerTransition, Cause, LimitChanged, MaintenanceEnded, MaintenanceStarted, Shed,
};
use crate::policy::Mode;
use crate::priority::Priority;
use crate::reject::{Reason, Rejected};

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
                self.maintenance_inside(now, &rejected);
                if asker == Asker::Arrival {
                    self.would_reject(rejected.reason());
                }
                Ok(())
            }
            Check::Inside(rejected) => {
                self.maintenance_inside(now, &rejected);
                Err(rejected)
            }
        }
    }

    /// A call found a maintenance window in force: the listener hears of
    /// the window the first time.
    #[inline]
    fn maintenance_inside(&self, now: Nanos, rejected: &Rejected) {
        let Some(listener) = self.listen.get() else {
            return;
        };
        // Inside a window, the next boundary is its end.
        let Some(until) = self.maintenance.boundary(now) else {
            return;
        };
        if self.listen.maintenance_seen(until) {
            listener.on_maintenance_start(&MaintenanceStarted {
                route: self.metrics.route(),
                until: self.clock.wall_at(until),
                message: rejected.message(),
            });
        }
    }

    /// A maintenance window is over: the back end coming out of it is
    /// probed (the breaker goes half-open) and fed from the limit's
    /// minimum up, not flooded. Waiters are let out by whoever called.
    #[cold]
    pub(in crate::core) fn maintenance_ended(&self, now: Nanos) {
        if let Some(breaker) = &self.breaker {
            if let Some(transition) = breaker.half_open(now) {
                self.report_as(transition, Cause::Maintenance);
            }
        }
        self.limit_recovered(true);
        tracing::info!(
            route = %self.metrics.route(),
            "brownout: maintenance window over: probing the back end, limit back where it served well"
        );
        if let Some(listener) = self.listen.get() {
            listener.on_maintenance_end(&MaintenanceEnded {
                route: self.metrics.route(),
            });
        }
    }

    /// The back end is back (a maintenance window ended, the breaker
    /// closed): the limit starts again where its learner says.
    #[cold]
    pub(in crate::core) fn limit_recovered(&self, maintenance: bool) {
        if let Some(limit) = &self.limit {
            if let Some(change) = limit.recovered(maintenance, self.clock.now()) {
                self.limit_changed(change.limit, self.inflight());
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
            let before = breaker.state(now);
            breaker.reconfigure(policy);
            let after = breaker.state(now);
            if before != after {
                // A new mode: ops changed it in the policy.
                self.report_as(
                    Transition {
                        from: before,
                        to: after,
                        open_for: None,
                    },
                    Cause::Policy,
                );
            }
        }
        if let (Some(limit), Some(policy)) = (&self.limit, spec.limit) {
            if let Some(change) = limit.reconfigure(policy) {
                self.limit_changed(change.limit, change.inflight);
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
            self.report_as(
                Transition {
                    from: before,
                    to: after,
                    open_for: None,
                },
                Cause::Manual,
            );
        }
        self.wake_room();
    }

    /// A hand on the breaker (see [`Manual`]): reported as a transition
    /// made by hand, and the room's waiters look again (a closed or
    /// half-open breaker lets them out; an open one changes when they
    /// must look again). The state after; `None` for a gate without a
    /// breaker.
    pub(crate) fn control(&self, action: Manual) -> Option<BreakerState> {
        self.control_with(|_| action, Cause::Manual)
    }

    /// [`control`](Self::control) with an action that depends on the
    /// gate's clock: `open_until(until)` in wall-clock time or from now.
    pub(crate) fn open_until(&self, until: Until) -> Option<BreakerState> {
        self.control_with(|clock| Manual::OpenUntil(until.on(clock)), Cause::Manual)
    }

    /// What the fleet's shared verdict does to this replica's breaker: a
    /// hand on it like [`control`](Self::control) (`action` reads the
    /// gate's clock for an open until a wall-clock time), reported with
    /// [`Cause::Fleet`] and without the warning of an operator's action:
    /// it is the fleet's routine.
    #[cfg(feature = "fleet")]
    pub(crate) fn follow_fleet(
        &self,
        action: impl FnOnce(&Clock) -> Manual,
    ) -> Option<BreakerState> {
        self.control_with(action, Cause::Fleet)
    }

    fn control_with(
        &self,
        action: impl FnOnce(&Clock) -> Manual,
        cause: Cause,
    ) -> Option<BreakerState> {
        let action = action(&self.clock);
        let breaker = self.breaker.as_ref()?;
        let now = self.clock.now();
        let transition = breaker.manual(action, now);
        if cause == Cause::Manual {
            tracing::warn!(
                route = %self.metrics.route(), action = action.as_str(),
                "brownout: circuit breaker acted on by hand"
            );
        }
        self.report_as(transition, cause);
        if let Some(room) = &self.room {
            if room.waiting() > 0 {
                room.with(Queues::wake_waiting);
            }
        }
        self.wake_room();
        Some(transition.to)
    }

    /// Metrics, a tracing event and the listener's call for a state change
    /// that is the breaker's own verdict.
    pub(in crate::core) fn report(&self, t: Transition) {
        self.report_as(t, Cause::Verdict);
    }

    /// Metrics, a tracing event and the listener's call for a state change
    /// made by `cause`.
    #[cold]
    pub(in crate::core) fn report_as(&self, t: Transition, cause: Cause) {
        self.metrics.breaker_state(t.to.gauge());
        self.metrics
            .breaker_transition(t.from.as_str(), t.to.as_str());
        let route = self.metrics.route();
        let how = cause.as_str();
        match (t.to, t.open_for) {
            (BreakerState::Open, Some(open_for)) => tracing::warn!(
                %route, from = t.from.as_str(), open_for = ?open_for, cause = how,
                "brownout: circuit breaker opened"
            ),
            (BreakerState::Closed, _) => tracing::info!(
                %route, from = t.from.as_str(), cause = how, "brownout: circuit breaker closed"
            ),
            _ => tracing::info!(
                %route, from = t.from.as_str(), to = t.to.as_str(), cause = how,
                "brownout: circuit breaker changed state"
            ),
        }
        if let Some(listener) = self.listen.get() {
            let open_for = t.open_for.filter(|_| t.to == BreakerState::Open);
            let next_probe_at = open_for.map(|open_for| {
                let at = self.clock.now().saturating_add(saturating_nanos(open_for));
                self.clock.wall_at(at)
            });
            listener.on_breaker(&BreakerTransition {
                route,
                from: t.from,
                to: t.to,
                cause,
                open_for,
                next_probe_at,
            });
        }
    }

    /// The limit is now `limit`, with `inflight` calls in flight: the
    /// gauges, and the listener if the limit moved since it last heard.
    pub(in crate::core) fn limit_changed(&self, limit: u32, inflight: u32) {
        self.metrics.limit(limit, inflight);
        if let Some(listener) = self.listen.get() {
            if let Some(from) = self.listen.limit_moved(limit) {
                listener.on_limit(&LimitChanged {
                    route: self.metrics.route(),
                    from,
                    to: limit,
                });
            }
        }
    }

    /// A request of class `priority` was turned away for `reason`: tells
    /// the listener. On the rejection path: no lock, no allocation.
    #[inline]
    pub(in crate::core) fn tell_shed(&self, reason: Reason, priority: Priority) {
        if let Some(listener) = self.listen.get() {
            listener.on_shed(&Shed {
                route: self.metrics.route(),
                reason,
                priority: self.classes.name(priority),
            });
        }
    }

    /// When the open breaker lets its next probe through, in wall-clock
    /// time, and how long that is from now; `None` unless the breaker is
    /// open by its own verdict (or by hand) and enforcing.
    pub(crate) fn next_probe(&self) -> Option<(SystemTime, Duration)> {
        let now = self.clock.now();
        let at = self.next_probe_at(now)?;
        Some((self.clock.wall_at(at), Duration::from_nanos(at - now)))
    }

    /// Requests waiting now, one count per class in order of importance
    /// (none without a waiting room). Takes the room's lock.
    pub(crate) fn waiting_by_class(&self) -> Vec<usize> {
        let Some(room) = &self.room else {
            return Vec::new();
        };
        let counts = room.with(|queues| queues.waiting_by_class());
        counts.into_iter().take(self.classes.len()).collect()
    }
}
