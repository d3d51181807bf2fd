//! The adaptive limit's engine: the in-flight accounting and learning
//! windows ([`state`]) and the algorithms that move the limit
//! ([`algorithm`]).

pub(crate) mod algorithm;
mod capacity;
pub(crate) mod pluggable;
pub(crate) mod state;

pub(crate) use self::state::LimitCore;
