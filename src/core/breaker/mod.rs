//! The circuit breaker's engine: its state word and transitions
//! ([`state`]) and the window of recent outcomes it judges by ([`window`]).

mod state;
mod window;

pub(crate) use self::state::{BreakerCore, Ticket, Transition};
pub use self::state::{BreakerState, MAX_PROBES};
