//! The `[waiting_room]` section: how many requests may wait for the back
//! end, for how long, and in which order they leave.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::PolicyError;
use super::check::{header_name, positive};
use super::duration;

/// The `[waiting_room]` section of a [`Policy`](crate::Policy).
///
/// Every field is optional; the defaults are the ones shown here (and in
/// [`WaitingRoomPolicy::default`]).
///
/// ```toml
/// [waiting_room]
/// capacity = 1000          # 0 = never wait
/// max_wait = "10s"
/// order = "priority_fifo"  # priority_fifo | adaptive_lifo
/// codel_interval = "100ms" # adaptive_lifo: a queue this old is a standing queue
/// codel_target = "5ms"     # adaptive_lifo: ... and then waits are cut to this
/// # deadline_header = "x-request-timeout"  # no default: only grpc-timeout is read
/// ```
///
/// A request that cannot be admitted at once (breaker open, probes busy,
/// limit full) waits here, unless the room is full or it could not be
/// served before its wait runs out. It leaves with a permit, most
/// important class first, as soon as one frees up, or with a rejection
/// (`queue_timeout`, `deadline`, `queue_full`) when its time is up.
///
/// [`validate`](Self::validate) checks that `capacity` is at most
/// [`MAX_CAPACITY`](Self::MAX_CAPACITY), that the durations are more than
/// zero (`max_wait` only while the room is on), that `codel_target` fits in
/// `max_wait` (for `adaptive_lifo`), and that `deadline_header` is an HTTP
/// header name; the loaders call it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WaitingRoomPolicy {
    /// Most requests waiting at once, at most
    /// [`MAX_CAPACITY`](Self::MAX_CAPACITY); 0 turns the room off.
    pub capacity: u32,
    /// Longest a request waits; more than zero unless `capacity` is 0.
    #[serde(with = "duration")]
    pub max_wait: Duration,
    /// Which waiter leaves first when a permit frees up.
    pub order: Order,
    /// `adaptive_lifo` only: how long the room must stay non-empty before
    /// it counts as a standing queue; more than zero.
    #[serde(with = "duration")]
    pub codel_interval: Duration,
    /// `adaptive_lifo` only: the longest wait while a standing queue
    /// persists; more than zero, and for `adaptive_lifo` at most `max_wait`.
    #[serde(with = "duration")]
    pub codel_target: Duration,
    /// The HTTP request header that carries the client's remaining time
    /// (milliseconds, or a duration such as `"2s"`); gRPC requests use
    /// `grpc-timeout` whatever this says. A request waits no longer than
    /// its own deadline. A header name (letters, digits and
    /// ``!#$%&'*+-.^_`|~``, any case); unset by default.
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

impl WaitingRoomPolicy {
    /// Largest `capacity` a policy may set.
    pub const MAX_CAPACITY: u32 = 1_000_000;

    /// Checks every field's range, and the fields that depend on each other.
    ///
    /// The error names the first bad field by its path in the policy file,
    /// quotes its value and says why:
    ///
    /// ```
    /// use std::time::Duration;
    /// use brownout::WaitingRoomPolicy;
    ///
    /// let policy = WaitingRoomPolicy { max_wait: Duration::ZERO, ..WaitingRoomPolicy::default() };
    /// let err = policy.validate().unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "waiting_room.max_wait: 0s must be more than zero while waiting_room.capacity is 1000 \
    ///      (capacity = 0 turns the room off)",
    /// );
    /// ```
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.validate_at("waiting_room")
    }

    /// [`validate`](Self::validate) for a section found at `at` in the file
    /// (`waiting_room`, or later a route's override).
    pub(crate) fn validate_at(&self, at: &str) -> Result<(), PolicyError> {
        let field = |name: &str| format!("{at}.{name}");

        if self.capacity > Self::MAX_CAPACITY {
            return Err(PolicyError::invalid(
                field("capacity"),
                self.capacity,
                format!("is not in 0..={}", Self::MAX_CAPACITY),
            ));
        }
        let open = self.capacity > 0;
        if open && self.max_wait.is_zero() {
            return Err(PolicyError::invalid(
                field("max_wait"),
                duration::display(self.max_wait),
                format!(
                    "must be more than zero while {} is {} (capacity = 0 turns the room off)",
                    field("capacity"),
                    self.capacity
                ),
            ));
        }
        positive(&field("codel_interval"), self.codel_interval)?;
        positive(&field("codel_target"), self.codel_target)?;
        if open && self.order == Order::AdaptiveLifo && self.codel_target > self.max_wait {
            return Err(PolicyError::invalid(
                field("codel_target"),
                duration::display(self.codel_target),
                format!(
                    "is longer than {} ({})",
                    field("max_wait"),
                    duration::display(self.max_wait)
                ),
            ));
        }
        if let Some(header) = &self.deadline_header {
            header_name(&field("deadline_header"), header)?;
        }
        Ok(())
    }
}

/// The order in which waiters leave the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Order {
    /// Most important class first, then first come, first served.
    #[default]
    PriorityFifo,
    /// Most important class first; within a class first come, first served
    /// while the room empties regularly, and newest first, with waits cut
    /// to `codel_target`, while a standing queue persists (CoDel with
    /// adaptive LIFO, as Facebook describes it): under sustained overload
    /// the requests served are the ones whose callers are still there. A
    /// caller seated with nobody of its class or a more important one
    /// waiting is not in the standing queue (it has the next slot) and
    /// keeps its whole wait.
    AdaptiveLifo,
}
