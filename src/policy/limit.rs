//! The `[limit]` section: how many calls may be in flight to the back end,
//! learned from its latency and failures.

use serde::{Deserialize, Serialize};

/// The `[limit]` section of a [`Policy`](crate::Policy).
///
/// ```toml
/// [limit]
/// algorithm = "gradient"   # fixed | aimd | vegas | gradient
/// initial = 20             # in-flight calls allowed at start
/// min = 1                  # never fewer
/// max = 1000               # never more
/// ```
///
/// The limit starts at `initial` and follows the back end: it shrinks when
/// latency rises above the back end's unloaded latency or calls fail, and
/// grows while the back end keeps up. `fixed` keeps `initial`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitPolicy {
    /// How the limit is learned.
    pub algorithm: Algorithm,
    /// The limit at start (and for `fixed`, always).
    pub initial: u32,
    /// The smallest the limit may become, at least 1.
    pub min: u32,
    /// The largest the limit may become.
    pub max: u32,
    /// Share of the limit kept for the more important priority classes:
    /// the least important class may use `1 - reserve` of the limit, the
    /// classes between it and the most important one proportionally more,
    /// and the most important one all of it. In [0, 1).
    pub reserve: f64,
}

impl Default for LimitPolicy {
    fn default() -> Self {
        Self {
            algorithm: Algorithm::Gradient,
            initial: 20,
            min: 1,
            max: 1000,
            reserve: 0.2,
        }
    }
}

/// How an adaptive limit learns the back end's capacity.
///
/// The learning algorithms follow Netflix's `concurrency-limits`, applied
/// once per window of samples rather than per call, so that the admitted
/// path stays lock-free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// The limit stays at `initial`.
    Fixed,
    /// Additive increase, multiplicative decrease: +1 per window while the
    /// back end keeps up, ×0.9 on failures.
    Aimd,
    /// TCP Vegas: estimates the calls queued inside the back end from the
    /// ratio of its unloaded latency to its current latency, and keeps that
    /// queue between two small bounds.
    Vegas,
    /// Gradient2: compares short-term latency with long-term latency; the
    /// limit shrinks by their ratio when latency rises and grows by a small
    /// queue allowance (√limit) otherwise, smoothed.
    #[default]
    Gradient,
}

impl Algorithm {
    /// The name as written in a policy.
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::Fixed => "fixed",
            Algorithm::Aimd => "aimd",
            Algorithm::Vegas => "vegas",
            Algorithm::Gradient => "gradient",
        }
    }
}
