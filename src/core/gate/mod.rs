//! The admission path every brownout layer shares: one gate per route that
//! decides, lock-free, whether a call may reach the back end, and the
//! [`Permit`] an admitted call carries until its outcome is known.
//!
//! A gate has up to three stages, each optional: the circuit breaker, the
//! adaptive limit, and the waiting room. A call is admitted when the
//! breaker and the limit both say yes; otherwise it waits in the room (if
//! the gate has one and waiting can help) or is rejected.
//!
//! A permit is the only way an admitted call leaves a trace: it is settled
//! once, by the response future, with the classifier's
//! [`Outcome`](crate::classify::Outcome);
//! dropped unsettled (the caller went away, a classifier panicked, a
//! streaming body was abandoned) it gives back what it held (a half-open
//! probe slot, an in-flight slot) and is counted as `cancelled`, never as a
//! sample. Whatever a permit gives back goes to the room's next waiter
//! first.
//!
//! Before the stages, a gate built from a policy checks its maintenance
//! windows ([`maintenance`](crate::core::maintenance)): one relaxed load and a compare while no window
//! has started. Inside a window every call is answered `Maintenance`; as it
//! ends the breaker goes half-open and the limit restarts from its minimum.
//!
//! In shadow mode (`breaker.mode = "shadow"`) the gate rejects nothing: a
//! window, an open breaker, a full limit or a waiting room that would hold
//! or turn a call away is counted (`would_reject`, or `would_wait` for a
//! call the room would have held) and logged at debug level, and the call
//! goes through. A call past the limit is still counted in flight (on the
//! gate, as the limiter's own count stops at its limit) until it ends; the
//! limiter learns only from the calls within its limit.

mod config;
mod shadow;
mod transitions;
mod wait;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use metrics::SharedString;

use crate::clock::{Clock, Nanos, saturating_nanos};
use crate::core::breaker::{BreakerCore, BreakerState, Ticket, Transition};
use crate::core::limit::LimitCore;
use crate::core::limit::algorithm::CustomAlgorithm;
use crate::core::maintenance::{Check, Maintenance};
use crate::core::permit::Permit;
use crate::core::room::Room;
use crate::listen::{Hooks, SharedListener};
use crate::metrics::RouteMetrics;
use crate::policy::{BreakerPolicy, LimitPolicy, MaintenanceWindow, Mode, WaitingRoomPolicy};
use crate::priority::{Classes, Priority};
use crate::reject::{Reason, Rejected};

pub(crate) use self::config::GateConfig;

/// The retry hint of a rejection that waits on the limit (shed, a full or
/// timed-out room) before the limit has a latency sample to estimate when a
/// slot frees: one second, so that the first burst of rejections does not
/// come back at once.
pub(crate) const FIRST_HINT: Duration = Duration::from_secs(1);

/// The shortest retry hint of a `Deadline` rejection: the request's own
/// deadline ran out (or was too short for the back end), and trying again
/// at once with the same deadline would go the same way.
pub(crate) const DEADLINE_HINT_FLOOR: Duration = Duration::from_secs(1);
pub(crate) use self::wait::{Entry, Waiter};

/// What a gate is built from: which stages it has, and how it reports.
#[derive(Debug, Clone)]
pub(crate) struct GateSpec<'a> {
    pub(crate) breaker: Option<&'a BreakerPolicy>,
    pub(crate) limit: Option<&'a LimitPolicy>,
    pub(crate) room: Option<&'a WaitingRoomPolicy>,
    /// The policy's maintenance windows (empty for a standalone layer).
    pub(crate) maintenance: &'a [MaintenanceWindow],
    pub(crate) classes: &'a Classes,
    pub(crate) route: SharedString,
    pub(crate) clock: Clock,
    pub(crate) seed: Option<u64>,
    /// Told of every change of state (none: nobody listens).
    pub(crate) listener: Option<SharedListener>,
    /// The layer's own limit algorithm, for `algorithm = "custom"`.
    pub(crate) custom_limit: Option<CustomAlgorithm>,
}

/// A gate with only a breaker.
pub(crate) fn breaker_gate(
    policy: &BreakerPolicy,
    route: SharedString,
    clock: Clock,
    seed: Option<u64>,
    listener: Option<SharedListener>,
) -> Gate {
    Gate::new(GateSpec {
        breaker: Some(policy),
        limit: None,
        room: None,
        maintenance: &[],
        classes: &Classes::default(),
        route,
        clock,
        seed,
        listener,
        custom_limit: None,
    })
}

/// What the stages gave an admitted call: the breaker's ticket, and
/// whether the call went past a full limit in shadow mode (it then holds
/// none of the limiter's slots, and is counted in flight on the gate).
#[derive(Debug, Clone, Copy)]
pub(in crate::core) struct Taken {
    pub(in crate::core) ticket: Ticket,
    pub(in crate::core) over: bool,
}

impl Taken {
    pub(in crate::core) const fn within(ticket: Ticket) -> Self {
        Self {
            ticket,
            over: false,
        }
    }

    /// In one word, as a [`Permit`] keeps it; back with `from_bits`.
    pub(in crate::core) const fn to_bits(self) -> u64 {
        self.ticket.to_bits() | (self.over as u64) << 63
    }

    pub(in crate::core) const fn from_bits(bits: u64) -> Self {
        Self {
            ticket: Ticket::from_bits(bits & !(1 << 63)),
            over: bits >> 63 != 0,
        }
    }
}

/// Who asks the stages for a slot: a call arriving, which shadow mode lets
/// through whatever the stages say, or the waiting room letting a waiter
/// out, which only ever takes a slot the limit has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::core) enum Asker {
    Arrival,
    Room,
}

/// One route's admission state, shared by every clone of its services.
/// A stage a layer does not use is absent and costs nothing.
#[derive(Debug)]
pub(crate) struct Gate {
    pub(in crate::core) clock: Clock,
    pub(in crate::core) maintenance: Maintenance,
    pub(in crate::core) breaker: Option<BreakerCore>,
    pub(in crate::core) limit: Option<LimitCore>,
    pub(in crate::core) room: Option<Room>,
    /// The room's capacity (0 without a room), read without its lock by
    /// shadow mode to tell a call the room would hold from one it would
    /// turn away.
    pub(in crate::core) room_capacity: AtomicU32,
    /// Calls let past a full limit in shadow mode, still in flight.
    pub(in crate::core) over: AtomicU32,
    pub(in crate::core) classes: Classes,
    pub(in crate::core) metrics: RouteMetrics,
    /// The listener, and what it was last told.
    pub(in crate::core) listen: Hooks,
}

impl Gate {
    pub(crate) fn new(spec: GateSpec<'_>) -> Self {
        let now = spec.clock.now();
        let room = spec.room.filter(|room| room.capacity > 0);
        let gate = Self {
            maintenance: Maintenance::new(spec.maintenance, &spec.clock, now),
            room_capacity: AtomicU32::new(room.map_or(0, |room| room.capacity)),
            over: AtomicU32::new(0),
            breaker: spec
                .breaker
                .map(|policy| BreakerCore::new(policy, spec.seed.unwrap_or_else(fresh_seed))),
            limit: spec.limit.map(|policy| {
                LimitCore::with_custom(policy, spec.classes.len(), now, spec.custom_limit.clone())
            }),
            room: room.map(Room::new),
            metrics: RouteMetrics::new(
                spec.route,
                spec.limit.map(|_| spec.classes),
                room.map(|_| spec.classes),
            ),
            classes: spec.classes.clone(),
            clock: spec.clock,
            listen: Hooks::new(spec.listener, 0),
        };
        if let Some(breaker) = &gate.breaker {
            gate.metrics.breaker_state(breaker.state(now).gauge());
        }
        if let Some(limit) = &gate.limit {
            gate.metrics.limit(limit.limit(), 0);
            gate.listen.limit_moved(limit.limit());
        }
        gate
    }

    pub(crate) fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Decides whether a call of class `priority` may go to the back end
    /// now; never waits.
    #[inline(always)]
    pub(crate) fn admit(self: &Arc<Self>, priority: Priority) -> Result<Permit, Rejected> {
        let now = self.clock.now();
        if let Err(rejected) = self.throttle(now) {
            return Err(self.rejected(rejected, priority));
        }
        match self.acquire(priority, now, Asker::Arrival, None) {
            Ok(taken) => Ok(self.permit(taken, now)),
            Err(rejected) => Err(self.rejected(rejected, priority)),
        }
    }

    /// The gate's stages in order: the maintenance windows, the breaker's
    /// ticket, then an in-flight slot. A probe taken by the breaker goes
    /// back if the limit sheds. In shadow mode an arrival passes every
    /// stage, and what would have stopped it is counted.
    ///
    /// A half-open probe goes only to a request with time to finish: one
    /// whose own `deadline` leaves less than the back end's typical latency
    /// ([`too_short`](Self::too_short)) gives the probe back and is
    /// answered `Deadline`, so that the probe's verdict is about the back
    /// end, not about an impatient caller.
    #[inline(always)]
    pub(in crate::core) fn acquire(
        &self,
        priority: Priority,
        now: Nanos,
        asker: Asker,
        deadline: Option<Nanos>,
    ) -> Result<Taken, Rejected> {
        if self.maintenance.near(now) {
            self.check_maintenance(now, asker)?;
        }
        let ticket = match &self.breaker {
            Some(breaker) => self.admit_breaker(breaker, now)?,
            None => Ticket::UNTRACKED,
        };
        if ticket.is_probe() {
            if let Some(deadline) = deadline {
                self.probe_in_time(ticket, deadline, now)?;
            }
        }
        if let Some(limit) = &self.limit {
            if let Err(shed) = limit.acquire(priority) {
                if asker == Asker::Arrival && self.shadow() {
                    return Ok(self.past_the_limit(ticket, priority));
                }
                if let Some(breaker) = &self.breaker {
                    breaker.cancel(ticket);
                }
                return Err(self.shed_hint(shed));
            }
        }
        Ok(Taken::within(ticket))
    }

    /// The back end's typical latency, if the gate knows it: the limit's
    /// smoothed mean response time (none before the limit's first window,
    /// nor without a limit).
    pub(in crate::core) fn typical_latency(&self) -> Option<Nanos> {
        let rtt = saturating_nanos(self.limit.as_ref()?.mean_rtt());
        (rtt > 0).then_some(rtt)
    }

    /// Whether a request whose own deadline is `deadline` has too little
    /// time left at `now` to be served: its deadline has passed, or what is
    /// left is shorter than the back end's typical latency. Such a request
    /// is answered `Deadline` at once rather than seated, let out of the
    /// room, or given a half-open probe: it would most likely be abandoned
    /// at its deadline, having held a slot (or a probe) for nothing.
    pub(in crate::core) fn too_short(&self, deadline: Nanos, now: Nanos) -> bool {
        deadline <= now
            || self
                .typical_latency()
                .is_some_and(|typical| deadline - now < typical)
    }

    /// A probe was taken for a request with `deadline`: keeps it if the
    /// request has time to finish, else gives it back and says `Deadline`.
    #[cold]
    fn probe_in_time(&self, ticket: Ticket, deadline: Nanos, now: Nanos) -> Result<(), Rejected> {
        if !self.too_short(deadline, now) {
            return Ok(());
        }
        if let Some(breaker) = &self.breaker {
            breaker.cancel(ticket);
        }
        Err(self.with_hint(Reason::Deadline, now))
    }

    /// The limit's shed, with a sane retry hint before the limit has any
    /// latency sample (the limit's own hint is then its floor of 1 ms, which
    /// would invite an immediate retry storm): [`FIRST_HINT`].
    #[cold]
    fn shed_hint(&self, shed: Rejected) -> Rejected {
        match self.typical_latency() {
            Some(_) => shed,
            None => Rejected::new(Reason::Shed).with_retry_after(FIRST_HINT),
        }
    }

    /// Calls in flight: the limiter's, and those shadow mode let past it.
    pub(crate) fn inflight(&self) -> u32 {
        let within = self.limit.as_ref().map_or(0, LimitCore::inflight);
        within.saturating_add(self.over.load(Ordering::Relaxed))
    }

    /// Counts a rejection, and returns it.
    #[inline(always)]
    pub(in crate::core) fn rejected(&self, rejected: Rejected, priority: Priority) -> Rejected {
        // The rejection stays where the caller built it: only its reason
        // goes to the counting (copying a rejection in and out of a call
        // right after it was written stalls on store forwarding).
        self.count_rejected(rejected.reason(), priority);
        rejected
    }

    fn count_rejected(&self, reason: Reason, priority: Priority) {
        self.metrics.rejected(reason);
        if reason == Reason::Shed {
            self.metrics.shed(priority);
        }
        self.tell_shed(reason, priority);
    }

    #[inline]
    pub(in crate::core) fn admit_breaker(
        &self,
        breaker: &BreakerCore,
        now: Nanos,
    ) -> Result<Ticket, Rejected> {
        let admission = breaker.admit(now);
        if admission.half_opened {
            self.report(Transition {
                from: BreakerState::Open,
                to: BreakerState::HalfOpen,
                open_for: None,
            });
        }
        if admission.would_reject {
            self.would_reject(Reason::Open);
        }
        admission.verdict.map_err(open_rejection)
    }

    /// Draws an arrival against the share of calls a closed breaker
    /// throttles (`trip = "throttle"`; the share is 0, and this one load,
    /// unless the back end fails past a threshold). One of the share is
    /// rejected as `Open` with the gate's retry hint, before the limit and
    /// the room: not worth a seat, the rejection is the point (in shadow
    /// mode it is counted and let through). Drawn once per arrival: a
    /// waiter let out of the room was drawn when it came.
    #[inline(always)]
    pub(in crate::core) fn throttle(&self, now: Nanos) -> Result<(), Rejected> {
        match &self.breaker {
            Some(breaker) if breaker.throttles() => self.throttled(now),
            _ => Ok(()),
        }
    }

    #[cold]
    fn throttled(&self, now: Nanos) -> Result<(), Rejected> {
        if self.maintenance.inside(now).is_some() {
            // A maintenance window in force answers with its own reason
            // and message (the stages that follow give it).
            return Ok(());
        }
        if self.shadow() {
            self.would_reject(Reason::Open);
            return Ok(());
        }
        Err(self.with_hint(Reason::Open, now))
    }

    /// The breaker's state now (closed for a gate without a breaker). A
    /// maintenance window that has ended without a call since is ended
    /// first, so the state read is the half-open one that follows it.
    pub(crate) fn state(&self) -> BreakerState {
        let now = self.clock.now();
        if self.maintenance.near(now) {
            if let Check::Ended = self.maintenance.check(now) {
                self.maintenance_ended(now);
            }
        }
        match &self.breaker {
            Some(breaker) => breaker.state(now),
            None => BreakerState::Closed,
        }
    }

    /// The share of new calls the closed breaker throttles now (0 when it
    /// is not closed, or has no breaker).
    pub(crate) fn throttled_share(&self) -> f64 {
        match &self.breaker {
            Some(breaker) if breaker.is_closed() => breaker.throttled_share(),
            _ => 0.0,
        }
    }

    pub(crate) fn mode(&self) -> Mode {
        self.breaker
            .as_ref()
            .map_or(Mode::Enforce, BreakerCore::mode)
    }

    /// The limiter, if this gate has one.
    pub(crate) fn limiter(&self) -> Option<&LimitCore> {
        self.limit.as_ref()
    }

    /// The priority classes of this gate.
    pub(crate) fn classes(&self) -> &Classes {
        &self.classes
    }

    /// Requests waiting in the room now.
    pub(crate) fn waiting(&self) -> usize {
        self.room.as_ref().map_or(0, Room::waiting)
    }

    /// Slots the room has allocated: its memory high-water mark.
    pub(crate) fn room_slots(&self) -> usize {
        self.room
            .as_ref()
            .map_or(0, |room| room.with(|queues| queues.slots_allocated()))
    }
}

/// An open breaker's rejection, with the time to its next probe as the
/// retry hint when it has one (a forced-open breaker has none).
fn open_rejection(hint: Option<Nanos>) -> Rejected {
    let rejected = Rejected::new(Reason::Open);
    match hint {
        Some(nanos) => rejected.with_retry_after(Duration::from_nanos(nanos)),
        None => rejected,
    }
}

/// A seed for the jitter of a breaker's open periods, fresh for each
/// breaker and per process, so that replicas do not probe in step.
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}
