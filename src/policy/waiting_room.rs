//! The `[waiting_room]` section: how many requests may wait for the back
//! end, for how long, and in which order they leave.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The `[waiting_room]` section of a [`Policy`](crate::Policy).
///
/// ```toml
/// [waiting_room]
/// capacity = 1000          # 0 = never wait
/// max_wait = "10s"
/// order = "priority_fifo"  # priority_fifo | adaptive_lifo
/// ```
///
/// A request that cannot be admitted at once (breaker open, probes busy,
/// limit full) waits here, unless the room is full or it could not be
/// served before its wait runs out. It leaves with a permit, most
/// important class first, as soon as one frees up, or with a rejection
/// (`queue_timeout`, `deadline`, `queue_full`) when its time is up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WaitingRoomPolicy {
    /// Most requests waiting at once; 0 turns the room off.
    pub capacity: u32,
    /// Longest a request waits.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// Which waiter leaves first when a permit frees up.
    pub order: Order,
    /// `adaptive_lifo` only: how long the room must stay non-empty before
    /// it counts as a standing queue.
    #[serde(with = "humantime_serde")]
    pub codel_interval: Duration,
    /// `adaptive_lifo` only: the longest wait while a standing queue
    /// persists.
    #[serde(with = "humantime_serde")]
    pub codel_target: Duration,
    /// The HTTP request header that carries the client's remaining time
    /// (milliseconds, or a duration such as `"2s"`); gRPC requests use
    /// `grpc-timeout` whatever this says. A request waits no longer than
    /// its own deadline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_header: Option<String>,
}

impl Default for WaitingRoomPolicy {
    fn default() -> Self {
        Self {
            capacity: 1000,
            max_wait: Duration::from_secs(10),
            order: Order::PriorityFifo,
            codel_interval: Duration::from_millis(100),
            codel_target: Duration::from_millis(5),
            deadline_header: None,
        }
    }
}

/// The order in which waiters leave the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// Most important class first, then first come, first served.
    #[default]
    PriorityFifo,
    /// Most important class first; within a class first come, first served
    /// while the room empties regularly, and newest first, with waits cut
    /// to `codel_target`, while a standing queue persists (CoDel with
    /// adaptive LIFO, as Facebook describes it): under sustained overload
    /// the requests served are the ones whose callers are still there.
    AdaptiveLifo,
}
