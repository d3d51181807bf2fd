//! Shadow mode (`breaker.mode = "shadow"`): the gate rejects nothing, and
//! counts what it would have rejected or held.

use std::sync::atomic::Ordering;

use crate::core::breaker::Ticket;
use crate::policy::Mode;
use crate::priority::Priority;
use crate::reject::Reason;

use super::{Gate, Taken};

impl Gate {
    /// Whether the gate only counts what it would reject (`mode = "shadow"`).
    #[inline]
    pub(in crate::core) fn shadow(&self) -> bool {
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
    pub(in crate::core) fn past_the_limit(&self, ticket: Ticket, priority: Priority) -> Taken {
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
    pub(in crate::core) fn would_reject(&self, reason: Reason) {
        self.metrics.would_reject(reason);
        tracing::debug!(
            route = %self.metrics.route(),
            %reason,
            "brownout: shadow mode would have rejected this request"
        );
    }
}
