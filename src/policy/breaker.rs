//! The `[breaker]` section: when the circuit opens, for how long, and how it probes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The `[breaker]` section of a [`Policy`](crate::Policy).
///
/// Every field is optional; the defaults are the ones shown in the design
/// and suit a back end that answers in well under a second.
///
/// ```toml
/// [breaker]
/// window = { kind = "count", size = 100 }     # or { kind = "time", size = "30s" }
/// failure_rate = 0.5                          # open at >= this share of failures
/// slow_call_rate = 1.0                        # open at >= this share of slow calls
/// slow_call_duration = "5s"
/// minimum_calls = 20                          # no verdict before this many calls
/// open_for = "5s"                             # first open period
/// open_backoff = { multiplier = 2.0, max = "5m", jitter = 0.1 }
/// half_open_probes = 3                        # calls let through to test
/// mode = "enforce"                            # enforce | shadow | forced_open | forced_closed
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerPolicy {
    /// Which recent calls the failure and slow-call rates are computed over.
    pub window: WindowPolicy,
    /// The breaker opens when at least this share of the window failed, in (0, 1].
    pub failure_rate: f64,
    /// The breaker opens when at least this share of the window was slow, in (0, 1].
    pub slow_call_rate: f64,
    /// A call that takes at least this long is slow.
    #[serde(with = "humantime_serde")]
    pub slow_call_duration: Duration,
    /// No verdict before the window holds this many calls.
    pub minimum_calls: u32,
    /// How long the breaker stays open the first time it opens.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
    /// How the open period grows while the back end keeps failing its probes.
    pub open_backoff: BackoffPolicy,
    /// How many calls half-open lets through to test the back end; all of
    /// them must pass the thresholds for the breaker to close.
    pub half_open_probes: u32,
    /// Whether the breaker rejects, only reports, or is forced one way.
    pub mode: Mode,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            window: WindowPolicy::default(),
            failure_rate: 0.5,
            slow_call_rate: 1.0,
            slow_call_duration: Duration::from_secs(5),
            minimum_calls: 20,
            open_for: Duration::from_secs(5),
            open_backoff: BackoffPolicy::default(),
            half_open_probes: 3,
            mode: Mode::Enforce,
        }
    }
}

/// The window of recent calls a breaker judges the back end by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowPolicy {
    /// The last `size` calls, a true sliding window.
    Count {
        /// Number of outcomes kept.
        size: u32,
    },
    /// The calls of the last `size` of time, kept in `buckets` buckets so
    /// that memory does not grow with traffic.
    Time {
        /// Length of the window.
        #[serde(with = "humantime_serde")]
        size: Duration,
        /// Number of buckets the window is cut into; the window slides one
        /// bucket at a time.
        #[serde(default = "WindowPolicy::default_buckets")]
        buckets: u32,
    },
}

impl WindowPolicy {
    /// Buckets of a time window when the policy does not say.
    pub const DEFAULT_BUCKETS: u32 = 10;

    fn default_buckets() -> u32 {
        Self::DEFAULT_BUCKETS
    }
}

impl Default for WindowPolicy {
    fn default() -> Self {
        WindowPolicy::Count { size: 100 }
    }
}

/// How the open period grows while half-open probes keep failing.
///
/// The n-th consecutive open period lasts `open_for × multiplier^(n-1)`,
/// capped at `max`, then moved by a random `±jitter` share so that many
/// breakers do not probe in step. The growth resets once the breaker has
/// stayed closed for `reset_after` (default: `max`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackoffPolicy {
    /// Growth factor of each new open period, at least 1.
    pub multiplier: f64,
    /// Longest open period.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// Random spread of each open period, a share in [0, 1).
    pub jitter: f64,
    /// How long the breaker must stay closed before the open period falls
    /// back to `open_for`. Defaults to `max`.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub reset_after: Option<Duration>,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        Self {
            multiplier: 2.0,
            max: Duration::from_secs(300),
            jitter: 0.1,
            reset_after: None,
        }
    }
}

/// What the breaker does with its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Open, probe and close as the window says; reject while open.
    #[default]
    Enforce,
    /// Run the state machine, record and report, but never reject: what
    /// would have been rejected is counted as `would_reject`.
    Shadow,
    /// Reject every call, as during maintenance.
    ForcedOpen,
    /// Admit every call whatever the window says.
    ForcedClosed,
}
