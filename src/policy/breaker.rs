//! The `[breaker]` section: when the circuit opens, for how long, and how it probes.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use super::PolicyError;
use super::check::{float, positive, rate, share_below_one};
use super::duration;
use crate::breaker::MAX_PROBES;

/// The `[breaker]` section of a [`Policy`](crate::Policy).
///
/// Every field is optional; the defaults are the ones shown here (and in
/// [`BreakerPolicy::default`]) and suit a back end that answers in well
/// under a second.
///
/// ```toml
/// [breaker]
/// window = { kind = "count", size = 100 }     # or { kind = "time", size = "30s" }
/// failure_rate = 0.5                          # act at >= this share of failures
/// slow_call_rate = 1.0                        # act at >= this share of slow calls
/// trip = "throttle"                           # throttle | open: what acting means
/// slow_call_duration = "5s"
/// minimum_calls = 20                          # no verdict before this many calls
/// open_for = "5s"                             # first open period
/// open_backoff = { multiplier = 2.0, max = "5m", jitter = 0.1 }
/// half_open_probes = 3                        # calls let through to test
/// probe_after = 0                             # probe early after this many turned away (0: never)
/// mode = "enforce"                            # enforce | shadow | forced_open | forced_closed
/// ```
///
/// [`validate`](Self::validate) checks every range below; the loaders call
/// it, so a policy read from a file is always valid. A policy built in code
/// can be checked with it, or passed to
/// [`CircuitBreakerLayer::try_new`](crate::CircuitBreakerLayer::try_new).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerPolicy {
    /// Which recent calls the failure and slow-call rates are computed over.
    pub window: WindowPolicy,
    /// The breaker acts (see [`trip`](Self::trip)) when at least this share
    /// of the window failed, in (0, 1].
    pub failure_rate: f64,
    /// The breaker acts when at least this share of the window was slow, in
    /// (0, 1]. `1.0` (the default) acts only when every call in the window
    /// was slow.
    pub slow_call_rate: f64,
    /// What the breaker does once a rate reaches its threshold: throttle
    /// (the default: reject a share of calls that grows with how far the
    /// rate is past its threshold, and open only when no call in the window
    /// went well) or open at once (the classic breaker).
    pub trip: Trip,
    /// A call that takes at least this long is slow; more than zero.
    #[serde(with = "duration")]
    pub slow_call_duration: Duration,
    /// No verdict before the window holds this many calls; at least 1, and
    /// for a count window at most its size (or the breaker could never open).
    pub minimum_calls: u32,
    /// How long the breaker stays open the first time it opens; more than zero.
    #[serde(with = "duration")]
    pub open_for: Duration,
    /// How the open period grows while the back end keeps failing its probes.
    pub open_backoff: BackoffPolicy,
    /// How many calls half-open lets through to test the back end, in
    /// 1..=[`MAX_PROBES`](crate::breaker::MAX_PROBES); all of them must pass
    /// the thresholds for the breaker to close (with `trip = "throttle"`,
    /// one that went well is enough once all are back: see [`Trip`]).
    pub half_open_probes: u32,
    /// Whether the breaker rejects, only reports, or is forced one way.
    pub mode: Mode,
    /// After this many calls turned away in one of its own open periods,
    /// the breaker probes at once rather than at the period's end (0, the
    /// default: only at its end). Busy traffic then finds a back end that
    /// came back within `probe_after` of its calls, however long the
    /// period, while sparse traffic is probed as often as the periods say;
    /// a dead back end gets `half_open_probes` failing calls per
    /// `probe_after` turned away. Periods set by hand or by the fleet end
    /// only at their end; with a `[fleet]` section it must be 0 (the
    /// fleet's probe lease paces a shared route's probes).
    pub probe_after: u32,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            window: WindowPolicy::default(),
            failure_rate: 0.5,
            slow_call_rate: 1.0,
            trip: Trip::Throttle,
            slow_call_duration: Duration::from_secs(5),
            minimum_calls: 20,
            open_for: Duration::from_secs(5),
            open_backoff: BackoffPolicy::default(),
            half_open_probes: 3,
            mode: Mode::Enforce,
            probe_after: 0,
        }
    }
}

impl BreakerPolicy {
    /// Checks every field's range, and the fields that depend on each other.
    ///
    /// The error names the first bad field by its path in the policy file
    /// and quotes its value:
    ///
    /// ```
    /// use brownout::BreakerPolicy;
    ///
    /// let policy = BreakerPolicy { failure_rate: 1.5, ..BreakerPolicy::default() };
    /// let err = policy.validate().unwrap_err();
    /// assert_eq!(err.to_string(), "breaker.failure_rate: 1.5 is not in (0, 1]");
    /// ```
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.validate_at("breaker")
    }

    /// [`validate`](Self::validate) for a section found at `at` in the file
    /// (`breaker`, or later a route's override).
    pub(crate) fn validate_at(&self, at: &str) -> Result<(), PolicyError> {
        let field = |name: &str| format!("{at}.{name}");

        self.window.validate_at(&field("window"))?;
        rate(&field("failure_rate"), self.failure_rate)?;
        rate(&field("slow_call_rate"), self.slow_call_rate)?;
        positive(&field("slow_call_duration"), self.slow_call_duration)?;

        if self.minimum_calls == 0 {
            return Err(PolicyError::invalid(
                field("minimum_calls"),
                0,
                "must be at least 1",
            ));
        }
        match self.window {
            WindowPolicy::Count { size } if self.minimum_calls > size => {
                return Err(PolicyError::invalid(
                    field("minimum_calls"),
                    self.minimum_calls,
                    format!(
                        "is more than {} = {size}, so the breaker could never open",
                        field("window.size")
                    ),
                ));
            }
            _ => {}
        }

        positive(&field("open_for"), self.open_for)?;
        self.open_backoff
            .validate_at(&field("open_backoff"), self.open_for, &field("open_for"))?;

        if !(1..=MAX_PROBES).contains(&self.half_open_probes) {
            return Err(PolicyError::invalid(
                field("half_open_probes"),
                self.half_open_probes,
                format!("is not in 1..={MAX_PROBES}"),
            ));
        }
        Ok(())
    }
}

/// The window of recent calls a breaker judges the back end by.
///
/// Written `{ kind = "count", size = 100 }` (the default) or
/// `{ kind = "time", size = "30s", buckets = 10 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "snake_case",
    deny_unknown_fields,
    try_from = "RawWindow"
)]
pub enum WindowPolicy {
    /// The last `size` calls, a true sliding window.
    Count {
        /// Number of outcomes kept, in 1..=[`MAX_COUNT_SIZE`](Self::MAX_COUNT_SIZE).
        /// Memory is one byte per outcome.
        size: u32,
    },
    /// The calls of the last `size` of time, kept in `buckets` buckets so
    /// that memory does not grow with traffic.
    Time {
        /// Length of the window; more than zero.
        #[serde(with = "duration")]
        size: Duration,
        /// Number of buckets the window is cut into (default
        /// [`DEFAULT_BUCKETS`](Self::DEFAULT_BUCKETS)), in
        /// 1..=[`MAX_BUCKETS`](Self::MAX_BUCKETS), each at least
        /// [`MIN_BUCKET`](Self::MIN_BUCKET) long; the window slides one
        /// bucket at a time.
        buckets: u32,
    },
}

impl WindowPolicy {
    /// Buckets of a time window when the policy does not say.
    pub const DEFAULT_BUCKETS: u32 = 10;
    /// Largest count window.
    pub const MAX_COUNT_SIZE: u32 = 1_000_000;
    /// Most buckets a time window may be cut into.
    pub const MAX_BUCKETS: u32 = 1000;
    /// Shortest bucket of a time window.
    pub const MIN_BUCKET: Duration = Duration::from_millis(1);

    fn validate_at(&self, at: &str) -> Result<(), PolicyError> {
        match *self {
            WindowPolicy::Count { size } => {
                if !(1..=Self::MAX_COUNT_SIZE).contains(&size) {
                    return Err(PolicyError::invalid(
                        format!("{at}.size"),
                        size,
                        format!("is not in 1..={}", Self::MAX_COUNT_SIZE),
                    ));
                }
            }
            WindowPolicy::Time { size, buckets } => {
                positive(&format!("{at}.size"), size)?;
                if !(1..=Self::MAX_BUCKETS).contains(&buckets) {
                    return Err(PolicyError::invalid(
                        format!("{at}.buckets"),
                        buckets,
                        format!("is not in 1..={}", Self::MAX_BUCKETS),
                    ));
                }
                if size / buckets < Self::MIN_BUCKET {
                    return Err(PolicyError::invalid(
                        format!("{at}.buckets"),
                        buckets,
                        format!(
                            "cuts {at}.size = {} into buckets shorter than {}",
                            duration::display(size),
                            duration::display(Self::MIN_BUCKET)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Default for WindowPolicy {
    fn default() -> Self {
        WindowPolicy::Count { size: 100 }
    }
}

/// A window as written, before its `kind` says what `size` means: read
/// field by field so that an error inside it names the field (`size`,
/// `kind`), which a tagged enum cannot do.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    kind: WindowKind,
    size: WindowSize,
    #[serde(default)]
    buckets: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum WindowKind {
    Count,
    Time,
}

/// A window's `size`: a number of calls or a duration.
enum WindowSize {
    Calls(u64),
    Length(Duration, String),
}

impl<'de> Deserialize<'de> for WindowSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = WindowSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    r#"a number of calls (kind = "count") or a duration such as "30s" (kind = "time")"#,
                )
            }

            fn visit_u64<E: de::Error>(self, calls: u64) -> Result<WindowSize, E> {
                Ok(WindowSize::Calls(calls))
            }

            fn visit_i64<E: de::Error>(self, calls: i64) -> Result<WindowSize, E> {
                u64::try_from(calls)
                    .map(WindowSize::Calls)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(calls), &self))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<WindowSize, E> {
                duration::parse(text)
                    .map(|length| WindowSize::Length(length, text.to_owned()))
                    .map_err(E::custom)
            }
        }

        d.deserialize_any(SizeVisitor)
    }
}

impl TryFrom<RawWindow> for WindowPolicy {
    type Error = String;

    fn try_from(raw: RawWindow) -> Result<Self, String> {
        match (raw.kind, raw.size) {
            (WindowKind::Count, _) if raw.buckets.is_some() => {
                Err(r#"`buckets` only applies to kind = "time""#.to_owned())
            }
            (WindowKind::Count, WindowSize::Calls(calls)) => match u32::try_from(calls) {
                Ok(size) => Ok(WindowPolicy::Count { size }),
                Err(_) => Err(format!(
                    "size = {calls} is not in 1..={}",
                    WindowPolicy::MAX_COUNT_SIZE
                )),
            },
            (WindowKind::Count, WindowSize::Length(_, text)) => Err(format!(
                r#"size = {text:?} is a duration, but kind = "count" counts calls: write a number of calls, or kind = "time""#
            )),
            (WindowKind::Time, WindowSize::Length(size, _)) => Ok(WindowPolicy::Time {
                size,
                buckets: raw.buckets.unwrap_or(WindowPolicy::DEFAULT_BUCKETS),
            }),
            (WindowKind::Time, WindowSize::Calls(calls)) => Err(format!(
                r#"size = {calls} needs a unit for kind = "time", e.g. "{calls}s""#
            )),
        }
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
    /// Growth factor of each new open period, finite and at least 1
    /// (1 keeps every open period at `open_for`).
    pub multiplier: f64,
    /// Longest open period; at least the breaker's `open_for`.
    #[serde(with = "duration")]
    pub max: Duration,
    /// Random spread of each open period, a share in [0, 1).
    pub jitter: f64,
    /// How long the breaker must stay closed before the open period falls
    /// back to `open_for`; more than zero. Defaults to `max`.
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
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

impl BackoffPolicy {
    fn validate_at(
        &self,
        at: &str,
        open_for: Duration,
        open_for_field: &str,
    ) -> Result<(), PolicyError> {
        if !(self.multiplier.is_finite() && self.multiplier >= 1.0) {
            return Err(PolicyError::invalid(
                format!("{at}.multiplier"),
                float(self.multiplier),
                "is not a finite number >= 1.0",
            ));
        }
        if self.max < open_for {
            return Err(PolicyError::invalid(
                format!("{at}.max"),
                duration::display(self.max),
                format!(
                    "is shorter than {open_for_field} = {}",
                    duration::display(open_for)
                ),
            ));
        }
        share_below_one(&format!("{at}.jitter"), self.jitter)?;
        if let Some(reset_after) = self.reset_after {
            positive(&format!("{at}.reset_after"), reset_after)?;
        }
        Ok(())
    }
}

/// What a closed breaker does once its window's failure rate (or slow-call
/// rate) reaches its threshold.
///
/// A classic breaker opens: every call is rejected until the probes pass.
/// That is right for a back end that is down, and wrong for one that still
/// serves most calls: a back end timing out half of its calls because it
/// became slow would lose the half it serves too. `throttle` follows Google
/// SRE's client-side adaptive throttling instead, with the threshold `t` as
/// its knob: of the next calls it rejects the share
///
/// ```text
/// p = max(0, (calls - good / (1 - t)) / (calls + 1))
/// ```
///
/// where `good` is the window's calls that did not fail (for the failure
/// rule) or were not slow (for the slow-call rule), the larger of the two.
/// At the threshold `p` is 0, past it `p` grows in proportion, and `p`
/// reaches 1 (the breaker opens, and probes as a classic one does) when no
/// call in the window went well. With `failure_rate = 0.5` this is SRE's
/// `K = 2`: nothing is rejected while at least half the calls succeed. A
/// threshold of 1 behaves the same in both modes.
///
/// Two more rules keep it symmetrical. It also opens on a run of failures
/// in a row (twice `minimum_calls`, and rarer than once in 2^20 calls at
/// the window's own failure share: a back end that goes down at once,
/// not one that fails a steady share and so makes runs of its own). And
/// its half-open probes reopen it only while none of them went well: a
/// back end that served a probe closes again and gets the throttle's
/// share, while a dead one reopens on as few probes as the classic
/// breaker.
///
/// Rejected calls are answered at once with [`Reason::Open`](crate::Reason::Open);
/// waiters already in the room are not throttled again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Trip {
    /// Reject a share of calls that grows past the threshold; open only
    /// when no call in the window went well.
    #[default]
    Throttle,
    /// Open at the threshold (the classic circuit breaker).
    Open,
}

/// What the breaker does with its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
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
