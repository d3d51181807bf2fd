//! The gate's side of the waiting room: seating a call, polling a waiter,
//! handing freed capacity to the waiters (the pump), the wait budget
//! (`max_wait`, CoDel, the request's own deadline) and the retry hints.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::clock::Nanos;
use crate::core::permit::Permit;
use crate::core::room::{Grant, Key, Queues, Room, Standing};
use crate::priority::Priority;
use crate::reject::{Reason, Rejected};

use super::{Asker, DEADLINE_HINT_FLOOR, FIRST_HINT, Gate, Taken};

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
    /// The request's own deadline, if it has one.
    deadline: Option<Nanos>,
    /// Its class, for the listener of a waiter turned away.
    priority: Priority,
}

impl Gate {
    /// Admits a call now, or seats it in the waiting room when it cannot be
    /// admitted yet but could be before its wait runs out. `deadline` is the
    /// request's own, if it has one.
    #[inline(always)]
    pub(crate) fn enter(
        self: &Arc<Self>,
        priority: Priority,
        deadline: Option<Nanos>,
    ) -> Result<Entry, Rejected> {
        let now = self.clock.now();
        if deadline.is_some_and(|deadline| deadline <= now) {
            return Err(self.past_deadline(priority, now));
        }
        if let Err(rejected) = self.throttle(now) {
            return Err(self.rejected(rejected, priority));
        }
        // A room reloaded to capacity 0 is no room: the call is admitted or
        // rejected now, as by a gate built without one.
        let room = match &self.room {
            Some(room) if self.room_capacity.load(Ordering::Relaxed) > 0 => room,
            _ => {
                return match self.acquire(priority, now, Asker::Arrival, deadline) {
                    Ok(taken) => Ok(Entry::Now(self.permit(taken, now))),
                    Err(rejected) => Err(self.rejected(rejected, priority)),
                };
            }
        };
        if room.waiting() == 0 {
            // The common case: nobody waits, so nobody is overtaken.
            match self.acquire(priority, now, Asker::Arrival, deadline) {
                Ok(taken) => return Ok(Entry::Now(self.permit(taken, now))),
                Err(rejected) if !waitable(&rejected) => {
                    return Err(self.rejected(rejected, priority));
                }
                Err(_) => {}
            }
        }
        self.seat(room, priority, now, deadline)
    }

    /// A request whose own deadline has already passed, answered at once.
    #[cold]
    fn past_deadline(&self, priority: Priority, now: Nanos) -> Rejected {
        self.rejected(self.with_hint(Reason::Deadline, now), priority)
    }

    /// [`enter`](Self::enter) for a call that was not admitted at once, or
    /// arrived while others wait: admits it if it would overtake nobody,
    /// else seats it in the room (or says why not).
    #[inline(never)]
    fn seat(
        self: &Arc<Self>,
        room: &Room,
        priority: Priority,
        now: Nanos,
        deadline: Option<Nanos>,
    ) -> Result<Entry, Rejected> {
        let seated = room.with(|queues| {
            // Callers of the same or a more important class already wait:
            // queue behind them rather than take a slot before them (but
            // shadow mode seats nobody).
            if !queues.has_waiters_at_or_above(priority) || self.shadow() {
                match self.acquire(priority, now, Asker::Arrival, deadline) {
                    Ok(taken) => return Ok(Entry::Now(self.permit(taken, now))),
                    Err(rejected) if !waitable(&rejected) => return Err(rejected),
                    Err(_) => {}
                }
            }
            if deadline.is_some_and(|deadline| self.too_short(deadline, now)) {
                // Not worth a seat: by the time a slot frees, too little of
                // its deadline would be left for the back end to answer.
                return Err(self.with_hint(Reason::Deadline, now));
            }
            let (until, timeout) = self.wait_budget(room, queues, priority, now, deadline);
            if let Some((reopen_at, rejected)) = self.reopens_at(now) {
                if reopen_at > until {
                    // The maintenance window or the open breaker lasts past
                    // this wait: say so now rather than at its end.
                    return Err(rejected);
                }
            }
            // A full room turns away a less important waiter for this one:
            // count it out of the room.
            let full = |rejected: Rejected| self.hinted(rejected, now);
            if let Some(displaced) = queues.make_room(priority).map_err(full)? {
                self.metrics.waiting(displaced, -1.0);
            }
            let key = queues.push(priority, now, until).map_err(full)?;
            self.metrics.waiting(priority, 1.0);
            // A slot may have freed between the failed attempt and the
            // seat: hand it out now, or it would wait for the next release.
            self.pump(room, queues, now);
            Ok(Entry::Wait(Waiter {
                key,
                until,
                timeout,
                deadline,
                priority,
            }))
        });
        if let Ok(Entry::Wait(_)) = &seated {
            self.after_seating();
        }
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
                let taken = Taken::within(grant.ticket);
                if waiter
                    .deadline
                    .is_some_and(|deadline| self.too_short(deadline, now))
                {
                    // Too little of its deadline is left for the back end
                    // to answer: the slot (or probe) goes to the next
                    // waiter, and this one is told now.
                    self.give_back(taken);
                    let rejected = self.with_hint(Reason::Deadline, now);
                    self.metrics.rejected(rejected.reason());
                    self.tell_shed(rejected.reason(), waiter.priority);
                    return Poll::Ready(Err(rejected));
                }
                Poll::Ready(Ok(self.permit(taken, now)))
            }
            Standing::Rejected(rejected) => {
                let rejected = self.hinted(rejected, now);
                self.metrics.rejected(rejected.reason());
                self.tell_shed(rejected.reason(), waiter.priority);
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

    /// Hands freed capacity to waiters, most important first, until the
    /// gate says no; turns away waiters the breaker will not let through
    /// before their wait runs out. Called with the room's lock held.
    pub(in crate::core) fn pump(&self, room: &Room, queues: &mut Queues, now: Nanos) {
        loop {
            let newest_first = room.newest_first(queues, now);
            let Some((priority, since)) = queues.next_out(newest_first) else {
                return;
            };
            match self.acquire(priority, now, Asker::Room, None) {
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

    /// When a waiter of class `priority` seated now must leave, and what
    /// it is told then.
    pub(in crate::core) fn wait_budget(
        &self,
        room: &Room,
        queues: &Queues,
        priority: Priority,
        now: Nanos,
        deadline: Option<Nanos>,
    ) -> (Nanos, Reason) {
        let settings = queues.settings();
        let mut max_wait = settings.max_wait;
        if room.newest_first(queues, now) && queues.has_waiters_at_or_above(priority) {
            // A standing queue of this class or a more important one:
            // cut waits short (CoDel). A waiter with nobody ahead of it
            // (the first urgent caller behind a queue of bulk ones) is not
            // in that queue: it has the next slot the limit lets go, and
            // waits only for that (a step down of the limit drains for a
            // few completions, longer than the cut), so it keeps its wait.
            max_wait = max_wait.min(settings.codel_target);
        }
        let room_until = now.saturating_add(max_wait);
        match deadline {
            Some(deadline) if deadline < room_until => (deadline, Reason::Deadline),
            _ => (room_until, Reason::QueueTimeout),
        }
    }

    /// When an open breaker will let its next probe through, if it is open.
    pub(in crate::core) fn next_probe_at(&self, now: Nanos) -> Option<Nanos> {
        self.breaker.as_ref()?.next_probe_at(now)
    }

    /// When the gate opens again if something other than the limit keeps
    /// it shut at `now`, and the answer until then: the end of the
    /// maintenance window in force (unless in shadow mode), else the open
    /// breaker's next probe.
    pub(in crate::core) fn reopens_at(&self, now: Nanos) -> Option<(Nanos, Rejected)> {
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
    /// the room takes to drain at the limit's mean response time
    /// ([`FIRST_HINT`] while the limit has no latency sample, or without a
    /// limit). A `Deadline` rejection's hint is never shorter than
    /// [`DEADLINE_HINT_FLOOR`].
    pub(in crate::core) fn with_hint(&self, reason: Reason, now: Nanos) -> Rejected {
        let hint = match self.reopens_at(now) {
            Some((reopen_at, _)) => Duration::from_nanos(reopen_at.saturating_sub(now)),
            None => match (&self.limit, self.typical_latency()) {
                (Some(limit), Some(rtt)) => {
                    let waiting = self.room.as_ref().map_or(0, Room::waiting) as u64;
                    let turns = 1 + waiting / u64::from(limit.limit().max(1));
                    Duration::from_nanos(rtt.max(1_000_000).saturating_mul(turns))
                }
                _ => FIRST_HINT,
            },
        };
        let hint = match reason {
            Reason::Deadline => hint.max(DEADLINE_HINT_FLOOR),
            _ => hint,
        };
        Rejected::new(reason).with_retry_after(hint)
    }

    /// `rejected`, with the gate's retry hint if it has none (a room that
    /// is full, or turned its waiter away to make room).
    fn hinted(&self, rejected: Rejected, now: Nanos) -> Rejected {
        match rejected.retry_after() {
            Some(_) => rejected,
            None => self.with_hint(rejected.reason(), now),
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
