//! Ops' policy file: the serde types, their defaults, loading and validation.

mod breaker;

pub use breaker::{BackoffPolicy, BreakerPolicy, Mode, WindowPolicy};

use serde::{Deserialize, Serialize};

/// The whole policy, as ops write it in TOML, YAML or JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// The `[breaker]` section.
    pub breaker: BreakerPolicy,
}

/// A policy that could not be loaded or does not validate.
// Placeholder while the loader lands; replaced by the full error type.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A field holds a value outside its range.
    #[error("{field}: {value} {problem}")]
    Invalid {
        /// Dotted path of the field, e.g. `breaker.failure_rate`.
        field: String,
        /// The offending value as written.
        value: String,
        /// What is wrong with it.
        problem: String,
    },
}

impl BreakerPolicy {
    /// Checks every field's range.
    pub fn validate(&self) -> Result<(), PolicyError> {
        Ok(())
    }
}
