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
//! once, by the classifier, with an [`Outcome`](crate::classify::Outcome);
//! dropped unsettled (the caller went away, a classifier panicked, a
//! streaming body was abandoned) it gives back what it held (a half-open
//! probe slot, an in-flight slot) and is counted as `cancelled`, never as a
//! sample. Whatever a permit gives back goes to the room's next waiter
//! first.
//!
//! Before the stages, a gate built from a policy checks its maintenance
//! windows ([`maintenance`]): one relaxed load and a compare while no window
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

mod maintenance;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::SharedString;

use crate::breaker::state::{BreakerCore, BreakerState, Ticket, Transition};
use crate::classify::Outcome;
use crate::clock::{Clock, Nanos, saturating_nanos};
use crate::limit::state::LimitCore;
use crate::metrics::RouteMetrics;
use crate::policy::{
    BreakerPolicy, LimitPolicy, MaintenanceWindow, Mode, PriorityPolicy, WaitingRoomPolicy,
};
use crate::priority::{Classes, Priority};
use crate::reject::{Reason, Rejected};
use crate::waiting_room::room::{Grant, Key, Queues, Room, Standing};

use self::maintenance::{Check, Maintenance};

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
}

/// A gate with only a breaker.
pub(crate) fn breaker_gate(
    policy: &BreakerPolicy,
    route: SharedString,
    clock: Clock,
    seed: Option<u64>,
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
    })
}

/// What a layer builds its gate from, and the gate itself, built on first
/// use (the first service the layer wraps, or the first question about its
/// state) rather than when the layer is created, so that builder calls (a
/// route name, a clock) do not leave the metrics of a gate nobody uses
/// behind. Clones share the gate; changing a setting starts a new one.
#[derive(Debug, Clone)]
pub(crate) struct GateConfig {
    breaker: Option<BreakerPolicy>,
    limit: Option<LimitPolicy>,
    room: Option<WaitingRoomPolicy>,
    classes: Classes,
    route: SharedString,
    clock: Option<Clock>,
    seed: Option<u64>,
    gate: Arc<std::sync::OnceLock<Arc<Gate>>>,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            breaker: None,
            limit: None,
            room: None,
            classes: Classes::default(),
            route: SharedString::const_str("default"),
            clock: None,
            seed: None,
            gate: Arc::default(),
        }
    }
}

impl GateConfig {
    /// The gate, built now if it was not yet.
    pub(crate) fn gate(&self) -> &Arc<Gate> {
        self.gate.get_or_init(|| {
            Arc::new(Gate::new(GateSpec {
                breaker: self.breaker.as_ref(),
                limit: self.limit.as_ref(),
                room: self.room.as_ref(),
                maintenance: &[],
                classes: &self.classes,
                route: self.route.clone(),
                clock: self.clock.clone().unwrap_or_else(Clock::detect),
                seed: self.seed,
            }))
        })
    }

    /// Applies `change` to the settings and forgets the gate built from
    /// the old ones.
    fn changed(mut self, change: impl FnOnce(&mut Self)) -> Self {
        change(&mut self);
        self.gate = Arc::default();
        self
    }

    pub(crate) fn breaker(self, policy: BreakerPolicy) -> Self {
        self.changed(|c| c.breaker = Some(policy))
    }

    pub(crate) fn limit(self, policy: LimitPolicy) -> Self {
        self.changed(|c| c.limit = Some(policy))
    }

    pub(crate) fn room(self, policy: WaitingRoomPolicy) -> Self {
        self.changed(|c| c.room = Some(policy))
    }

    pub(crate) fn priorities(self, policy: &PriorityPolicy) -> Self {
        self.changed(|c| c.classes = Classes::from_policy(policy))
    }

    pub(crate) fn route(self, route: SharedString) -> Self {
        self.changed(|c| c.route = route)
    }

    pub(crate) fn clock(self, clock: Clock) -> Self {
        self.changed(|c| c.clock = Some(clock))
    }

    pub(crate) fn seed(self, seed: u64) -> Self {
        self.changed(|c| c.seed = Some(seed))
    }

    pub(crate) fn breaker_policy(&self) -> Option<&BreakerPolicy> {
        self.breaker.as_ref()
    }

    pub(crate) fn classes(&self) -> &Classes {
        &self.classes
    }

    pub(crate) fn seed_value(&self) -> Option<u64> {
        self.seed
    }

    pub(crate) fn clock_or_detect(&self) -> Clock {
        self.clock.clone().unwrap_or_else(Clock::detect)
    }
}

/// How a call entered: admitted now, or waiting in the room.
#[derive(Debug)]
pub(crate) enum Entry {
    Now(Permit),
    Wait(Waiter),
}

/// A call waiting in the room: its place and when its wait runs out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waiter {
    key: Key,
    until: Nanos,
    /// What it is told if its wait runs out: `QueueTimeout`, or `Deadline`
    /// when its own deadline came before the room's `max_wait`.
    timeout: Reason,
}

/// What the stages gave an admitted call: the breaker's ticket, and
/// whether the call went past a full limit in shadow mode (it then holds
/// none of the limiter's slots, and is counted in flight on the gate).
#[derive(Debug, Clone, Copy)]
struct Taken {
    ticket: Ticket,
    over: bool,
}

impl Taken {
    const fn within(ticket: Ticket) -> Self {
        Self {
            ticket,
            over: false,
        }
    }
}

/// Who asks the stages for a slot: a call arriving, which shadow mode lets
/// through whatever the stages say, or the waiting room letting a waiter
/// out, which only ever takes a slot the limit has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asker {
    Arrival,
    Room,
}

/// One route's admission state, shared by every clone of its services.
/// A stage a layer does not use is absent and costs nothing.
#[derive(Debug)]
pub(crate) struct Gate {
    clock: Clock,
    maintenance: Maintenance,
    breaker: Option<BreakerCore>,
    limit: Option<LimitCore>,
    room: Option<Room>,
    /// The room's capacity (0 without a room), read without its lock by
    /// shadow mode to tell a call the room would hold from one it would
    /// turn away.
    room_capacity: AtomicU32,
    /// Calls let past a full limit in shadow mode, still in flight.
    over: AtomicU32,
    classes: Classes,
    metrics: RouteMetrics,
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
            limit: spec
                .limit
                .map(|policy| LimitCore::new(policy, spec.classes.len(), now)),
            room: room.map(Room::new),
            metrics: RouteMetrics::new(
                spec.route,
                spec.limit.map(|_| spec.classes),
                room.map(|_| spec.classes),
            ),
            classes: spec.classes.clone(),
            clock: spec.clock,
        };
        if let Some(breaker) = &gate.breaker {
            gate.metrics.breaker_state(breaker.state(now).gauge());
        }
        if let Some(limit) = &gate.limit {
            gate.metrics.limit(limit.limit(), 0);
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
        match self.acquire(priority, now, Asker::Arrival) {
            Ok(taken) => Ok(self.permit(taken, now)),
            Err(rejected) => Err(self.rejected(rejected, priority)),
        }
    }

    /// Admits a call now, or seats it in the waiting room when it cannot be
    /// admitted yet but could be before its wait runs out. `deadline` is the
    /// request's own, if it has one.
    #[inline]
    pub(crate) fn enter(
        self: &Arc<Self>,
        priority: Priority,
        deadline: Option<Nanos>,
    ) -> Result<Entry, Rejected> {
        let Some(room) = &self.room else {
            return self.admit(priority).map(Entry::Now);
        };
        let now = self.clock.now();
        if deadline.is_some_and(|deadline| deadline <= now) {
            return Err(self.rejected(self.with_hint(Reason::Deadline, now), priority));
        }
        if room.waiting() == 0 {
            // The common case: nobody waits, so nobody is overtaken.
            match self.acquire(priority, now, Asker::Arrival) {
                Ok(taken) => return Ok(Entry::Now(self.permit(taken, now))),
                Err(rejected) if !waitable(&rejected) => {
                    return Err(self.rejected(rejected, priority));
                }
                Err(_) => {}
            }
        }
        let seated = room.with(|queues| {
            // Callers of the same or a more important class already wait:
            // queue behind them rather than take a slot before them (but
            // shadow mode seats nobody).
            if !queues.has_waiters_at_or_above(priority) || self.shadow() {
                match self.acquire(priority, now, Asker::Arrival) {
                    Ok(taken) => return Ok(Entry::Now(self.permit(taken, now))),
                    Err(rejected) if !waitable(&rejected) => return Err(rejected),
                    Err(_) => {}
                }
            }
            let (until, timeout) = self.wait_budget(room, queues, now, deadline);
            if let Some((reopen_at, rejected)) = self.reopens_at(now) {
                if reopen_at > until {
                    // The maintenance window or the open breaker lasts past
                    // this wait: say so now rather than at its end.
                    return Err(rejected);
                }
            }
            // A full room turns away a less important waiter for this one:
            // count it out of the room.
            if let Some(displaced) = queues.make_room(priority)? {
                self.metrics.waiting(displaced, -1.0);
            }
            let key = queues.push(priority, now, until)?;
            self.metrics.waiting(priority, 1.0);
            // A slot may have freed between the failed attempt and the
            // seat: hand it out now, or it would wait for the next release.
            self.pump(room, queues, now);
            Ok(Entry::Wait(Waiter {
                key,
                until,
                timeout,
            }))
        });
        seated.map_err(|rejected| self.rejected(rejected, priority))
    }

    /// Where a waiter stands: `Ready` with its permit or its rejection, or
    /// `Pending` with the time at which it must be polled again (its wait
    /// runs out, or the breaker is due to probe).
    pub(crate) fn poll_waiter(
        self: &Arc<Self>,
        waiter: &Waiter,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Permit, Rejected>> {
        let Some(room) = &self.room else {
            return Poll::Ready(Err(Rejected::new(waiter.timeout)));
        };
        let now = self.clock.now();
        let standing = room.with(|queues| {
            self.pump(room, queues, now);
            match queues.poll(waiter.key, cx.waker()) {
                Standing::Waiting if now >= waiter.until => {
                    if let Some(priority) = queues.waiting_priority(waiter.key) {
                        self.metrics.waiting(priority, -1.0);
                    }
                    let grant = queues.leave(waiter.key);
                    debug_assert!(grant.is_none(), "a waiting slot holds no grant");
                    Standing::Rejected(self.with_hint(waiter.timeout, now))
                }
                standing => standing,
            }
        });
        match standing {
            Standing::Waiting => Poll::Pending,
            Standing::Granted(grant) => {
                Poll::Ready(Ok(self.permit(Taken::within(grant.ticket), now)))
            }
            Standing::Rejected(rejected) => {
                self.metrics.rejected(rejected.reason());
                Poll::Ready(Err(rejected))
            }
        }
    }

    /// When a pending waiter must be polled again if nothing wakes it: its
    /// wait runs out, the breaker is due to probe, or a maintenance window
    /// starts or ends.
    pub(crate) fn wake_at(&self, waiter: &Waiter) -> Nanos {
        let now = self.clock.now();
        let mut at = waiter.until;
        if let Some(probe_at) = self.next_probe_at(now) {
            at = at.min(probe_at);
        }
        if let Some(boundary) = self.maintenance.boundary(now) {
            at = at.min(boundary);
        }
        at
    }

    /// A waiter's future was dropped: it leaves the room at once, and a
    /// permit it had been granted but not taken goes to the next waiter.
    pub(crate) fn leave(&self, waiter: &Waiter) {
        let Some(room) = &self.room else {
            return;
        };
        let (held, grant) = room.with(|queues| {
            if let Some(priority) = queues.waiting_priority(waiter.key) {
                self.metrics.waiting(priority, -1.0);
            }
            (queues.holds(waiter.key), queues.leave(waiter.key))
        });
        // A waiter that already read its answer (a user's fallback or back
        // end panicked right after) was counted with it.
        if held {
            self.metrics.cancelled();
        }
        if let Some(grant) = grant {
            self.give_back(Taken::within(grant.ticket));
        }
    }

    /// The gate's stages in order: the maintenance windows, the breaker's
    /// ticket, then an in-flight slot. A probe taken by the breaker goes
    /// back if the limit sheds. In shadow mode an arrival passes every
    /// stage, and what would have stopped it is counted.
    #[inline]
    fn acquire(&self, priority: Priority, now: Nanos, asker: Asker) -> Result<Taken, Rejected> {
        if self.maintenance.near(now) {
            self.check_maintenance(now, asker)?;
        }
        let ticket = match &self.breaker {
            Some(breaker) => self.admit_breaker(breaker, now)?,
            None => Ticket::UNTRACKED,
        };
        if let Some(limit) = &self.limit {
            if let Err(shed) = limit.acquire(priority) {
                if asker == Asker::Arrival && self.shadow() {
                    return Ok(self.past_the_limit(ticket, priority));
                }
                if let Some(breaker) = &self.breaker {
                    breaker.cancel(ticket);
                }
                return Err(shed);
            }
        }
        Ok(Taken::within(ticket))
    }

    /// A window may be in force at `now`: rejects inside it (counts, in
    /// shadow mode), and runs the end-of-window steps once as it ends.
    #[cold]
    fn check_maintenance(&self, now: Nanos, asker: Asker) -> Result<(), Rejected> {
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
    fn maintenance_ended(&self, now: Nanos) {
        if let Some(breaker) = &self.breaker {
            if let Some(transition) = breaker.half_open(now) {
                self.report(transition);
            }
        }
        if let Some(limit) = &self.limit {
            limit.restart_from_min();
            self.metrics.limit(limit.limit(), self.inflight());
        }
        tracing::info!(
            route = %self.metrics.route(),
            "brownout: maintenance window over: probing the back end, limit restarting from its minimum"
        );
    }

    /// Whether the gate only counts what it would reject (`mode = "shadow"`).
    #[inline]
    fn shadow(&self) -> bool {
        self.breaker
            .as_ref()
            .is_some_and(|breaker| breaker.mode() == Mode::Shadow)
    }

    /// Shadow mode: the limit is full, and the call goes through anyway,
    /// counted in flight on the gate. Counts what enforce mode would have
    /// done: shed it (no room), hold it (room to spare: `would_wait`), or
    /// turn it away (the room would be full: the calls already past the
    /// limit are the ones it would hold).
    #[cold]
    fn past_the_limit(&self, ticket: Ticket, priority: Priority) -> Taken {
        let held = self.over.fetch_add(1, Ordering::Relaxed);
        match self.room_capacity.load(Ordering::Relaxed) {
            0 => self.would_reject(Reason::Shed),
            capacity if held < capacity => {
                self.metrics.would_wait();
                tracing::debug!(
                    route = %self.metrics.route(),
                    priority = priority.rank(),
                    "brownout: shadow mode would have held this request in the waiting room"
                );
            }
            _ => self.would_reject(Reason::QueueFull),
        }
        Taken { ticket, over: true }
    }

    /// Counts and logs what shadow mode let through.
    fn would_reject(&self, reason: Reason) {
        self.metrics.would_reject(reason);
        tracing::debug!(
            route = %self.metrics.route(),
            %reason,
            "brownout: shadow mode would have rejected this request"
        );
    }

    /// Calls in flight: the limiter's, and those shadow mode let past it.
    pub(crate) fn inflight(&self) -> u32 {
        let within = self.limit.as_ref().map_or(0, LimitCore::inflight);
        within.saturating_add(self.over.load(Ordering::Relaxed))
    }

    #[inline]
    fn permit(self: &Arc<Self>, taken: Taken, now: Nanos) -> Permit {
        Permit {
            gate: Some(self.clone()),
            ticket: taken.ticket,
            over: taken.over,
            start: now,
            responded: None,
        }
    }

    /// Counts a rejection, and returns it.
    fn rejected(&self, rejected: Rejected, priority: Priority) -> Rejected {
        self.metrics.rejected(rejected.reason());
        if rejected.reason() == Reason::Shed {
            self.metrics.shed(priority);
        }
        rejected
    }

    #[inline]
    fn admit_breaker(&self, breaker: &BreakerCore, now: Nanos) -> Result<Ticket, Rejected> {
        let admission = breaker.admit(now);
        if let Some(transition) = admission.transition {
            self.report(transition);
        }
        if let Some(would) = &admission.would_reject {
            self.would_reject(would.reason());
        }
        admission.verdict
    }

    /// Hands freed capacity to waiters, most important first, until the
    /// gate says no; turns away waiters the breaker will not let through
    /// before their wait runs out. Called with the room's lock held.
    fn pump(&self, room: &Room, queues: &mut Queues, now: Nanos) {
        loop {
            let newest_first = room.newest_first(queues, now);
            let Some((priority, since)) = queues.next_out(newest_first) else {
                return;
            };
            match self.acquire(priority, now, Asker::Room) {
                Ok(taken) => {
                    debug_assert!(!taken.over, "a waiter only gets a slot of the limit's");
                    let ticket = taken.ticket;
                    queues.grant_next(newest_first, Grant { ticket, at: now });
                    self.metrics.waiting(priority, -1.0);
                    self.metrics.waited(priority, now.saturating_sub(since));
                }
                Err(_) => {
                    if let Some((reopen_at, rejected)) = self.reopens_at(now) {
                        let metrics = &self.metrics;
                        queues.reject_where(|priority, until| {
                            (until < reopen_at).then(|| {
                                metrics.waiting(priority, -1.0);
                                rejected.clone()
                            })
                        });
                    }
                    return;
                }
            }
        }
    }

    /// When a waiter seated now must leave, and what it is told then.
    fn wait_budget(
        &self,
        room: &Room,
        queues: &Queues,
        now: Nanos,
        deadline: Option<Nanos>,
    ) -> (Nanos, Reason) {
        let settings = queues.settings();
        let mut max_wait = settings.max_wait;
        if room.newest_first(queues, now) {
            // A standing queue: cut waits short (CoDel).
            max_wait = max_wait.min(settings.codel_target);
        }
        let room_until = now.saturating_add(max_wait);
        match deadline {
            Some(deadline) if deadline < room_until => (deadline, Reason::Deadline),
            _ => (room_until, Reason::QueueTimeout),
        }
    }

    /// When an open breaker will let its next probe through, if it is open.
    fn next_probe_at(&self, now: Nanos) -> Option<Nanos> {
        self.breaker.as_ref()?.next_probe_at(now)
    }

    /// When the gate opens again if something other than the limit keeps
    /// it shut at `now`, and the answer until then: the end of the
    /// maintenance window in force (unless in shadow mode), else the open
    /// breaker's next probe.
    fn reopens_at(&self, now: Nanos) -> Option<(Nanos, Rejected)> {
        if let Some(inside) = self.maintenance.inside(now) {
            if !self.shadow() {
                return Some(inside);
            }
        }
        let probe_at = self.next_probe_at(now)?;
        let wait = Duration::from_nanos(probe_at - now);
        Some((probe_at, Rejected::new(Reason::Open).with_retry_after(wait)))
    }

    /// A rejection of `reason` with the best retry hint the gate has: the
    /// end of a maintenance window, the breaker's next probe, or the time
    /// the room takes to drain.
    fn with_hint(&self, reason: Reason, now: Nanos) -> Rejected {
        let rejected = Rejected::new(reason);
        if let Some((reopen_at, _)) = self.reopens_at(now) {
            return rejected.with_retry_after(Duration::from_nanos(reopen_at.saturating_sub(now)));
        }
        match &self.limit {
            Some(limit) => {
                let waiting = self.room.as_ref().map_or(0, Room::waiting) as u64;
                let turns = 1 + waiting / u64::from(limit.limit().max(1));
                let rtt = saturating_nanos(limit.mean_rtt()).max(1_000_000);
                rejected.with_retry_after(Duration::from_nanos(rtt.saturating_mul(turns)))
            }
            None => rejected,
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

    pub(crate) fn mode(&self) -> Mode {
        self.breaker
            .as_ref()
            .map_or(Mode::Enforce, BreakerCore::mode)
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

    #[inline(always)]
    fn settle(&self, taken: Taken, outcome: Outcome, start: Nanos, responded: Option<Nanos>) {
        let now = self.clock.now();
        let elapsed = responded.unwrap_or(now).saturating_sub(start);
        let failed = outcome == Outcome::Failure;
        self.metrics.served(failed, elapsed as f64 * 1e-9);
        self.learn(taken, failed, elapsed, now);
    }

    /// See [`Permit::abandon_at_deadline`].
    #[cold]
    fn settle_abandoned(&self, taken: Taken, start: Nanos) -> Rejected {
        let now = self.clock.now();
        self.metrics.rejected(Reason::Deadline);
        self.learn(taken, true, now.saturating_sub(start), now);
        self.with_hint(Reason::Deadline, now)
    }

    /// Feeds a finished call to the breaker and the limit, and hands what
    /// it freed to the room.
    #[inline(always)]
    fn learn(&self, taken: Taken, failed: bool, elapsed: Nanos, now: Nanos) {
        let Taken { ticket, over } = taken;
        let mut opened = false;
        if let Some(breaker) = &self.breaker {
            if let Some(transition) = breaker.complete(ticket, failed, elapsed, now) {
                opened = transition.to == BreakerState::Open;
                self.report(transition);
            }
        }
        if let Some(limit) = &self.limit {
            if over {
                // Past the limit in shadow mode: it held no slot of the
                // limiter's, and is no sample of it.
                self.over.fetch_sub(1, Ordering::Relaxed);
            } else if let Some(change) = limit.complete(elapsed, failed, now) {
                let over = self.over.load(Ordering::Relaxed);
                self.metrics
                    .limit(change.limit, change.inflight.saturating_add(over));
                tracing::trace!(route = %self.metrics.route(), limit = change.limit, inflight = change.inflight, "brownout: limit updated");
            }
        }
        self.wake_room();
        if opened {
            // Waiters seated while calls went through sleep until their
            // wait runs out: wake them to sleep until the next probe.
            if let Some(room) = &self.room {
                if room.waiting() > 0 {
                    room.with(Queues::wake_waiting);
                }
            }
        }
    }

    #[inline]
    fn cancel(&self, taken: Taken) {
        self.metrics.cancelled();
        self.give_back(taken);
    }

    /// Returns what an admitted call held, without a sample.
    fn give_back(&self, taken: Taken) {
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
        self.wake_room();
    }

    /// Hands whatever is free to the room's waiters, if there are any.
    #[inline]
    fn wake_room(&self) {
        if let Some(room) = &self.room {
            if room.waiting_after_release() > 0 {
                let now = self.clock.now();
                room.with(|queues| self.pump(room, queues, now));
            }
        }
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

/// Whether waiting can help: the breaker will let calls through again, a
/// maintenance window will end, or the limit will free a slot. (A
/// forced-open breaker says `Open` with no next probe; waiting cannot help
/// it.)
fn waitable(rejected: &Rejected) -> bool {
    match rejected.reason() {
        Reason::Shed => true,
        // The room then checks that the breaker probes, or the window
        // ends, before the wait runs out.
        Reason::Open | Reason::Maintenance => rejected.retry_after().is_some(),
        _ => false,
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
    /// Let past a full limit in shadow mode.
    over: bool,
    start: Nanos,
    responded: Option<Nanos>,
}

impl Permit {
    /// Settles the call with its outcome.
    #[inline(always)]
    pub fn record(mut self, outcome: Outcome) {
        if let Some(gate) = self.gate.take() {
            let taken = Taken {
                ticket: self.ticket,
                over: self.over,
            };
            gate.settle(taken, outcome, self.start, self.responded);
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

    /// The call outlived its caller's deadline and is abandoned: a failure
    /// for the breaker and the limit (the back end did not answer in time),
    /// and for the caller a `deadline` rejection, not a served call, with
    /// the gate's retry hint.
    pub(crate) fn abandon_at_deadline(mut self) -> Rejected {
        match self.gate.take() {
            Some(gate) => {
                let taken = Taken {
                    ticket: self.ticket,
                    over: self.over,
                };
                gate.settle_abandoned(taken, self.start)
            }
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
            gate.cancel(Taken {
                ticket: self.ticket,
                over: self.over,
            });
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
