//! The [`Permit`] an admitted call carries until its outcome is known, and
//! what the gate does with that outcome: feed it to the breaker and the
//! limit, give back what the call held, and hand it to the room.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::classify::Outcome;
use crate::clock::{Clock, Nanos};
use crate::core::breaker::BreakerState;
use crate::core::gate::{Gate, Taken};
use crate::core::room::Queues;
use crate::reject::{Reason, Rejected};

impl Gate {
    #[inline]
    pub(in crate::core) fn permit(self: &Arc<Self>, taken: Taken, now: Nanos) -> Permit {
        Permit {
            gate: Some(self.clone()),
            taken: taken.to_bits(),
            start: now,
            responded: None,
        }
    }

    #[inline(always)]
    pub(in crate::core) fn settle(
        &self,
        taken: Taken,
        outcome: Outcome,
        start: Nanos,
        responded: Option<Nanos>,
    ) {
        let now = self.clock.now();
        let elapsed = responded.unwrap_or(now).saturating_sub(start);
        let failed = match outcome {
            Outcome::Success => false,
            Outcome::Failure => true,
            Outcome::Ignored => {
                // Served, but no evidence about the back end: give back
                // what the call held, teach nothing.
                self.metrics.served(false, elapsed as f64 * 1e-9);
                self.give_back(taken);
                return;
            }
        };
        self.metrics.served(failed, elapsed as f64 * 1e-9);
        self.learn(taken, failed, elapsed, now);
    }

    /// See [`Permit::abandon_at_deadline`].
    #[cold]
    pub(in crate::core) fn settle_abandoned(&self, taken: Taken, start: Nanos) -> Rejected {
        let now = self.clock.now();
        self.metrics.rejected(Reason::Deadline);
        self.abandon(taken, now.saturating_sub(start), now, true);
        self.with_hint(Reason::Deadline, now)
    }

    /// A call that ended with no verdict after running `elapsed` (its
    /// caller's deadline passed, or its caller went away): a censored
    /// latency, never a failure. The breaker counts it as a slow call if it
    /// had already run for `slow_call_duration`, and otherwise learns
    /// nothing. With `censored_sample` (the caller's deadline ran out) the
    /// limit learns that the call took at least `elapsed`; otherwise (the
    /// caller went away, for all we know at once) it only gets its slot
    /// back.
    #[cold]
    fn abandon(&self, taken: Taken, elapsed: Nanos, now: Nanos, censored_sample: bool) {
        let Taken { ticket, over } = taken;
        let mut opened = false;
        if let Some(breaker) = &self.breaker {
            if let Some(transition) = breaker.abandoned(ticket, elapsed, now) {
                opened = transition.to == BreakerState::Open;
                self.report(transition);
            }
            if let Some(share) = breaker.throttle_news() {
                self.metrics.breaker_throttle(share);
            }
        }
        if let Some(limit) = &self.limit {
            if over {
                self.over.fetch_sub(1, Ordering::Relaxed);
            } else if !censored_sample {
                limit.release();
            } else if let Some(change) = limit.complete_censored(elapsed, now) {
                let over = self.over.load(Ordering::Relaxed);
                self.limit_changed(change.limit, change.inflight.saturating_add(over));
            }
        }
        self.after_sample(opened, true);
    }

    /// Feeds a finished call to the breaker and the limit, and hands what
    /// it freed to the room.
    #[inline(always)]
    pub(in crate::core) fn learn(&self, taken: Taken, failed: bool, elapsed: Nanos, now: Nanos) {
        let Taken { ticket, over } = taken;
        let mut opened = false;
        // Whether the gate changed other than by the read-modify-writes
        // that give a slot back (a transition, a new limit): the room is
        // then woken behind a fence (see `after_sample`).
        let mut changed = false;
        if let Some(breaker) = &self.breaker {
            if let Some(transition) = breaker.complete(ticket, failed, elapsed, now) {
                changed = true;
                opened = transition.to == BreakerState::Open;
                if transition.to == BreakerState::Closed {
                    // The probes found the back end serving again.
                    self.limit_recovered(false);
                }
                self.report(transition);
            }
            if let Some(share) = breaker.throttle_news() {
                self.throttle_moved(share);
            }
        }
        if let Some(limit) = &self.limit {
            if over {
                // Past the limit in shadow mode: it held no slot of the
                // limiter's, and is no sample of it.
                self.over.fetch_sub(1, Ordering::Relaxed);
            } else if let Some(change) = limit.complete(elapsed, failed, now) {
                changed = true;
                let over = self.over.load(Ordering::Relaxed);
                self.limit_changed(change.limit, change.inflight.saturating_add(over));
                tracing::trace!(route = %self.metrics.route(), limit = change.limit, inflight = change.inflight, "brownout: limit updated");
            }
        }
        self.after_sample(opened, changed);
    }

    #[cold]
    fn throttle_moved(&self, share: f64) {
        self.metrics.breaker_throttle(share);
    }

    /// Hands what a finished call freed to the room; if the breaker just
    /// opened, wakes every waiter to sleep until the next probe (waiters
    /// seated while calls went through sleep until their wait runs out).
    /// `changed`: the call changed the gate other than by the
    /// read-modify-writes that give its slot back.
    #[inline(always)]
    fn after_sample(&self, opened: bool, changed: bool) {
        if changed {
            self.wake_room();
        } else {
            self.wake_room_after_release();
        }
        if opened {
            if let Some(room) = &self.room {
                if room.waiting() > 0 {
                    room.with(Queues::wake_waiting);
                }
            }
        }
    }

    /// A permit dropped unsettled: its caller went away (or a user's
    /// closure panicked). Counted as cancelled. A call that had not yet
    /// answered is abandoned: a censored latency (see
    /// [`abandon`](Self::abandon)); one that had (a stream dropped before
    /// its trailers) gives back what it held, no sample.
    #[inline]
    pub(in crate::core) fn cancel(&self, taken: Taken, start: Nanos, responded: Option<Nanos>) {
        self.metrics.cancelled();
        match responded {
            Some(_) => self.give_back(taken),
            None => {
                let now = self.clock.now();
                self.abandon(taken, now.saturating_sub(start), now, false);
            }
        }
    }

    /// Returns what an admitted call held, without a sample.
    pub(in crate::core) fn give_back(&self, taken: Taken) {
        if let Some(breaker) = &self.breaker {
            breaker.cancel(taken.ticket);
        }
        if let Some(limit) = &self.limit {
            if taken.over {
                self.over.fetch_sub(1, Ordering::Relaxed);
            } else {
                limit.release();
            }
        }
        self.wake_room_after_release();
    }

    /// Hands whatever is free to the room's waiters, if there are any,
    /// after any change of the gate (behind a fence: see
    /// [`Room::waiting_after_release`]).
    #[inline]
    pub(in crate::core) fn wake_room(&self) {
        if let Some(room) = &self.room {
            if room.waiting_after_release() > 0 {
                self.pump_now(room);
            }
        }
    }

    /// [`wake_room`](Self::wake_room) for a call that gave back what it
    /// held only by read-modify-writes of the limiter's in-flight word
    /// and the breaker's state word (AcqRel, every one): a finished or
    /// cancelled call. No fence: seating a waiter publishes the room's
    /// count and then makes a read-modify-write of each of those words
    /// ([`after_seating`](Self::after_seating)). On each word the two
    /// read-modify-writes are ordered one way or the other: if the
    /// seating's comes second it reads this call's release, so the
    /// waiter's next look at the gate sees the slot; if this call's comes
    /// second it reads the seating's (its release sequence: the words
    /// change by read-modify-writes only, but for the breaker's
    /// transitions, after which an older ticket gives nothing back), so it
    /// synchronises with the seating and the load below sees the waiter.
    /// (`tests/loom.rs` explores the race.)
    #[inline(always)]
    pub(in crate::core) fn wake_room_after_release(&self) {
        if let Some(room) = &self.room {
            if room.waiting() > 0 {
                self.pump_now(room);
            }
        }
    }

    /// Hands whatever is free to the room's waiters now.
    #[cold]
    fn pump_now(&self, room: &crate::core::room::Room) {
        let now = self.clock.now();
        room.with(|queues| self.pump(room, queues, now));
    }

    /// A waiter has just been seated, and the room's count published:
    /// one read-modify-write, changing nothing, of each word a finished
    /// call gives its slot back through, so that such a call either sees
    /// the waiter or the waiter's next look sees its slot (see
    /// [`wake_room_after_release`](Self::wake_room_after_release)).
    pub(in crate::core) fn after_seating(&self) {
        if let Some(breaker) = &self.breaker {
            breaker.touch();
        }
        if let Some(limit) = &self.limit {
            limit.touch();
        }
    }
}

/// The right to call the back end once, held by an admitted call until its
/// outcome is known.
///
/// The layer's response future settles it with
/// [`record`](Permit::record) and the verdict of its
/// [`Classify`](crate::classify::Classify) implementation, at once or, for
/// a streaming body whose verdict comes in its trailers, through an
/// [`Unsettled`](crate::classify::Unsettled) call the body settles when it
/// ends. A permit dropped without a verdict counts as cancelled: not a
/// sample, and a half-open probe slot it held is given back.
pub struct Permit {
    // Whole words only (no `bool` beside padding): a permit is moved, in
    // a `Result` or a future's state, several times on the admitted path.
    /// `None` once settled.
    gate: Option<Arc<Gate>>,
    /// What the stages gave the call ([`Taken::to_bits`]).
    taken: u64,
    start: Nanos,
    responded: Option<Nanos>,
}

impl Permit {
    /// Settles the call with its outcome.
    #[inline(always)]
    pub fn record(mut self, outcome: Outcome) {
        let gate = self.gate.take();
        let (taken, start, responded) = (self.taken, self.start, self.responded);
        // Settled here: its `Drop` would find nothing left to give back.
        // (The other fields are plain numbers: forgetting leaks nothing.)
        std::mem::forget(self);
        if let Some(gate) = gate {
            gate.settle(Taken::from_bits(taken), outcome, start, responded);
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

    /// The call outlived its caller's deadline and is abandoned: a censored
    /// latency for the breaker and the limit (never a failure: the caller's
    /// deadline says nothing about the back end; a slow call if it had run
    /// for `slow_call_duration`), and for the caller a `deadline`
    /// rejection, not a served call, with the gate's retry hint.
    pub(crate) fn abandon_at_deadline(mut self) -> Rejected {
        match self.gate.take() {
            Some(gate) => gate.settle_abandoned(Taken::from_bits(self.taken), self.start),
            None => Rejected::new(Reason::Deadline),
        }
    }

    /// The clock the call is timed by (none once settled).
    pub(crate) fn clock(&self) -> Option<&Clock> {
        self.gate.as_ref().map(|gate| &gate.clock)
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
    #[inline]
    fn drop(&mut self) {
        if let Some(gate) = self.gate.take() {
            gate.cancel(Taken::from_bits(self.taken), self.start, self.responded);
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("settled", &self.gate.is_none())
            .field("taken", &Taken::from_bits(self.taken))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use metrics::SharedString;

    use crate::classify::Outcome;
    use crate::clock::Clock;
    use crate::core::gate::breaker_gate;
    use crate::policy::BreakerPolicy;
    use crate::priority::Priority;

    #[test]
    fn a_settled_or_dropped_permit_lets_go_of_its_gate() {
        let policy = BreakerPolicy::default();
        let route = SharedString::const_str("test");
        let gate = Arc::new(breaker_gate(&policy, route, Clock::coarse(), Some(1), None));
        let permit = gate
            .admit(Priority::HIGHEST)
            .expect("a closed breaker admits");
        assert_eq!(Arc::strong_count(&gate), 2, "a permit holds its gate");
        permit.record(Outcome::Success);
        assert_eq!(Arc::strong_count(&gate), 1, "a settled permit let go");
        drop(
            gate.admit(Priority::HIGHEST)
                .expect("a closed breaker admits"),
        );
        assert_eq!(Arc::strong_count(&gate), 1, "a dropped permit let go");
    }
}
