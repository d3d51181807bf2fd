//! The `[limit]` section: how many calls may be in flight to the back end,
//! learned from its latency and failures.

use serde::{Deserialize, Serialize};

use super::PolicyError;
use super::check::share_below_one;

/// The `[limit]` section of a [`Policy`](crate::Policy).
///
/// Every field is optional; the defaults are the ones shown here (and in
/// [`LimitPolicy::default`]).
///
/// ```toml
/// [limit]
/// algorithm = "capacity"   # capacity | fixed | aimd | vegas | gradient | custom
/// initial = 20             # in-flight calls allowed at start
/// min = 1                  # never fewer
/// max = 1000               # never more
/// reserve = 0.2            # share of the limit kept for the more important classes
/// ```
///
/// The limit starts at `initial` and follows the back end: it shrinks when
/// latency rises above the back end's unloaded latency or calls fail, and
/// grows while the back end keeps up. `fixed` keeps `initial`.
///
/// [`validate`](Self::validate) checks that `1 <= min <= initial <= max <=`
/// [`MAX_LIMIT`](Self::MAX_LIMIT) and that `reserve` is in [0, 1); the
/// loaders call it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitPolicy {
    /// How the limit is learned.
    pub algorithm: Algorithm,
    /// The limit at start (and for `fixed`, always), in `min..=max`.
    pub initial: u32,
    /// The smallest the limit may become, at least 1.
    pub min: u32,
    /// The largest the limit may become, at most
    /// [`MAX_LIMIT`](Self::MAX_LIMIT).
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
            algorithm: Algorithm::Capacity,
            initial: 20,
            min: 1,
            max: 1000,
            reserve: 0.2,
        }
    }
}

impl LimitPolicy {
    /// Largest `max` a policy may set.
    pub const MAX_LIMIT: u32 = 1_000_000;

    /// Checks every field's range and that `min <= initial <= max`.
    ///
    /// The error names the first bad field by its path in the policy file,
    /// quotes its value and says why:
    ///
    /// ```
    /// use brownout::LimitPolicy;
    ///
    /// let policy = LimitPolicy { initial: 5, min: 10, ..LimitPolicy::default() };
    /// let err = policy.validate().unwrap_err();
    /// assert_eq!(err.to_string(), "limit.initial: 5 is below limit.min (10)");
    /// ```
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.validate_at("limit")
    }

    /// [`validate`](Self::validate) for a section found at `at` in the file
    /// (`limit`, or later a route's override).
    pub(crate) fn validate_at(&self, at: &str) -> Result<(), PolicyError> {
        let field = |name: &str| format!("{at}.{name}");

        if self.min == 0 {
            return Err(PolicyError::invalid(
                field("min"),
                self.min,
                "must be at least 1",
            ));
        }
        if !(1..=Self::MAX_LIMIT).contains(&self.max) {
            return Err(PolicyError::invalid(
                field("max"),
                self.max,
                format!("is not in 1..={}", Self::MAX_LIMIT),
            ));
        }
        if self.min > self.max {
            return Err(PolicyError::invalid(
                field("min"),
                self.min,
                format!("is above {} ({})", field("max"), self.max),
            ));
        }
        if self.initial < self.min {
            return Err(PolicyError::invalid(
                field("initial"),
                self.initial,
                format!("is below {} ({})", field("min"), self.min),
            ));
        }
        if self.initial > self.max {
            return Err(PolicyError::invalid(
                field("initial"),
                self.initial,
                format!("is above {} ({})", field("max"), self.max),
            ));
        }
        share_below_one(&field("reserve"), self.reserve)
    }
}

/// How an adaptive limit learns the back end's capacity.
///
/// The learning algorithms follow Netflix's `concurrency-limits`, applied
/// once per window of samples rather than per call, so that the admitted
/// path stays lock-free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
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
    Gradient,
    /// Learns the back end's capacity from its throughput: the best rate
    /// of completions times the unloaded latency (Little's law, as TCP BBR
    /// does), probing up and down around it. A back end that is merely
    /// slower keeps its limit; one cut to a quarter of its capacity gets a
    /// quarter of the limit within a few round trips.
    #[default]
    Capacity,
    /// The application's own [`LimitAlgorithm`](crate::limit::LimitAlgorithm),
    /// given to the layer
    /// ([`AdaptiveLimitLayer::algorithm`](crate::AdaptiveLimitLayer::algorithm),
    /// [`BrownoutLayer::limit_algorithm`](crate::BrownoutLayer::limit_algorithm)):
    /// ops' file says when it is used, code says what it is. A layer given
    /// none logs an error and uses `capacity`.
    Custom,
}

impl Algorithm {
    /// The name as written in a policy.
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::Fixed => "fixed",
            Algorithm::Aimd => "aimd",
            Algorithm::Vegas => "vegas",
            Algorithm::Gradient => "gradient",
            Algorithm::Capacity => "capacity",
            Algorithm::Custom => "custom",
        }
    }
}
