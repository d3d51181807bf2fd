//! Tower layers that keep a service useful while the system behind it is
//! down, flapping, slow or running at reduced capacity.
//!
//! See the [`breaker`] module for the circuit breaker.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod admission;
pub mod breaker;
pub mod classify;
pub mod clock;
pub mod metrics;
pub mod policy;
mod reject;
#[cfg(feature = "sim")]
#[cfg_attr(docsrs, doc(cfg(feature = "sim")))]
pub mod sim;

pub use crate::breaker::{BreakerState, CircuitBreaker, CircuitBreakerLayer};
pub use crate::policy::{BackoffPolicy, BreakerPolicy, Mode, Policy, PolicyError, WindowPolicy};
pub use crate::reject::{Reason, Rejected};
