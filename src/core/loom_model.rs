//! Thin public handles on the admission core, for `tests/loom.rs` only:
//! this module exists only in a `--cfg brownout_loom` build, and is no part
//! of the API.
#![allow(missing_docs, missing_debug_implementations)]
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::BreakerState;
use crate::clock::Clock;
use crate::core::breaker::{BreakerCore, Ticket as CoreTicket};
use crate::core::gate::{self, GateConfig};
use crate::core::limit::LimitCore;
use crate::core::permit::Permit;
use crate::policy::{BreakerPolicy, LimitPolicy, WaitingRoomPolicy};
use crate::priority::Priority;
use crate::reject::Rejected;

/// A limiter's in-flight accounting (`LimitCore`), one class.
pub struct Limit(LimitCore);

impl Limit {
    pub fn new(policy: &LimitPolicy) -> Self {
        Self(LimitCore::new(policy, 1, 0))
    }

    /// Takes an in-flight slot; `false` if shed.
    pub fn acquire(&self) -> bool {
        self.0.acquire(Priority::HIGHEST).is_ok()
    }

    /// Gives a slot back without a sample (a cancelled call).
    pub fn release(&self) {
        self.0.release();
    }

    /// Gives a slot back with a sample; the new limit if a window closed.
    pub fn complete(&self, rtt: u64, dropped: bool, now: u64) -> Option<u32> {
        self.0
            .complete(rtt, dropped, now)
            .map(|change| change.limit)
    }

    pub fn inflight(&self) -> u32 {
        self.0.inflight()
    }

    pub fn limit(&self) -> u32 {
        self.0.limit()
    }
}

/// A breaker's state word and transitions (`BreakerCore`).
pub struct Breaker(BreakerCore);

/// What an admitted call holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(CoreTicket);

impl Breaker {
    pub fn new(policy: &BreakerPolicy) -> Self {
        Self(BreakerCore::new(policy, 1))
    }

    /// Admits a call at `now`: its ticket, or `None` if rejected.
    pub fn admit(&self, now: u64) -> Option<Ticket> {
        self.0.admit(now).verdict.ok().map(Ticket)
    }

    /// Records a call's outcome; the transition it caused, if any.
    pub fn complete(
        &self,
        ticket: Ticket,
        failed: bool,
        now: u64,
    ) -> Option<(BreakerState, BreakerState)> {
        self.0
            .complete(ticket.0, failed, 0, now)
            .map(|transition| (transition.from, transition.to))
    }

    /// A call ended without an outcome.
    pub fn cancel(&self, ticket: Ticket) {
        self.0.cancel(ticket.0);
    }

    pub fn state(&self, now: u64) -> BreakerState {
        self.0.state(now)
    }
}

/// A gate (limit, waiting room, optional breaker), as the layers use it.
pub struct Gate(Arc<gate::Gate>);

/// A call waiting in the room.
pub struct Waiter(gate::Waiter);

/// How a call entered the gate.
pub enum Entry {
    Now(Permit),
    Wait(Waiter),
}

impl Gate {
    /// A gate on `clock` (build it in paused tokio time, so that it
    /// stands still and every execution sees the same time).
    pub fn new(
        limit: LimitPolicy,
        room: WaitingRoomPolicy,
        breaker: Option<BreakerPolicy>,
        clock: Clock,
    ) -> Self {
        let mut config = GateConfig::default().limit(limit).room(room);
        if let Some(breaker) = breaker {
            config = config.breaker(breaker);
        }
        Self(config.clock(clock).seed(1).gate().clone())
    }

    pub fn admit(&self) -> Result<Permit, Rejected> {
        self.0.admit(Priority::HIGHEST)
    }

    pub fn enter(&self) -> Result<Entry, Rejected> {
        self.0
            .enter(Priority::HIGHEST, None)
            .map(|entry| match entry {
                gate::Entry::Now(permit) => Entry::Now(permit),
                gate::Entry::Wait(waiter) => Entry::Wait(Waiter(waiter)),
            })
    }

    pub fn poll_waiter(
        &self,
        waiter: &Waiter,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Permit, Rejected>> {
        self.0.poll_waiter(&waiter.0, cx)
    }

    /// The waiter's future was dropped.
    pub fn leave(&self, waiter: &Waiter) {
        self.0.leave(&waiter.0);
    }

    pub fn inflight(&self) -> u32 {
        self.0.limiter().map_or(0, LimitCore::inflight)
    }

    pub fn waiting(&self) -> usize {
        self.0.waiting()
    }
}
