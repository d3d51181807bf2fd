//! The circuit breaker's engine: its state word and transitions
//! ([`state`]), its thresholds ([`thresholds`]), the window of recent
//! outcomes it judges by ([`window`]), and the actions of a hand on it
//! ([`control`]).

mod control;
#[cfg(test)]
mod probe_tests;
mod state;
mod thresholds;
#[cfg(test)]
mod throttle_tests;
mod ticket;
mod window;
mod word;

pub(crate) use self::control::Manual;
pub use self::control::Until;
pub(crate) use self::state::{BreakerCore, Transition};
pub(crate) use self::ticket::Ticket;
pub use self::word::MAX_PROBES;

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through; outcomes fill the window.
    Closed,
    /// Calls are rejected until the open period ends.
    Open,
    /// A few probe calls test the back end.
    HalfOpen,
    /// `mode = "forced_open"`: every call is rejected.
    ForcedOpen,
    /// `mode = "forced_closed"`: every call goes through.
    ForcedClosed,
}

impl BreakerState {
    /// The value of the `brownout_breaker_state` gauge: 0 closed,
    /// 1 half-open, 2 open, 3 forced.
    pub const fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
            BreakerState::ForcedOpen => 3.0,
            // Forced closed lets every call through, as closed does: 3
            // keeps meaning "every call is rejected" for alerts.
            BreakerState::ForcedClosed => 0.0,
        }
    }

    /// The state as a label value: `closed`, `open`, `half_open`,
    /// `forced_open`, `forced_closed`.
    pub const fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
            BreakerState::ForcedOpen => "forced_open",
            BreakerState::ForcedClosed => "forced_closed",
        }
    }
}
