//! The breaker's thresholds, in the units the hot path compares against.

use std::sync::atomic::Ordering::*;

use crate::clock::{Nanos, saturating_nanos};
use crate::core::sync::{AtomicBool, AtomicU32, AtomicU64};
use crate::policy::{BreakerPolicy, Trip};

use super::MAX_PROBES;

/// Thresholds in the units the hot path compares against, in atomics so
/// that a policy reload can change them under running traffic without a
/// lock (each is read with one relaxed load).
#[derive(Debug)]
pub(super) struct Thresholds {
    pub(super) failure_rate: AtomicF64,
    pub(super) slow_call_rate: AtomicF64,
    /// `trip = "throttle"`.
    pub(super) throttles: AtomicBool,
    pub(super) slow_call: AtomicU64,
    pub(super) minimum_calls: AtomicU64,
    pub(super) open_for: AtomicU64,
    pub(super) multiplier: AtomicF64,
    pub(super) max_open: AtomicU64,
    pub(super) jitter: AtomicF64,
    pub(super) reset_after: AtomicU64,
    pub(super) probes: AtomicU32,
    /// `probe_after` (0: never early).
    pub(super) probe_after: AtomicU32,
}

impl Thresholds {
    pub(super) fn new(policy: &BreakerPolicy) -> Self {
        let thresholds = Self {
            failure_rate: AtomicF64::default(),
            slow_call_rate: AtomicF64::default(),
            throttles: AtomicBool::new(true),
            slow_call: AtomicU64::new(0),
            minimum_calls: AtomicU64::new(0),
            open_for: AtomicU64::new(0),
            multiplier: AtomicF64::default(),
            max_open: AtomicU64::new(0),
            jitter: AtomicF64::default(),
            reset_after: AtomicU64::new(0),
            probes: AtomicU32::new(1),
            probe_after: AtomicU32::new(0),
        };
        thresholds.store(policy);
        thresholds
    }

    /// Takes the thresholds of `policy`, brought into range.
    pub(super) fn store(&self, policy: &BreakerPolicy) {
        let backoff = &policy.open_backoff;
        self.failure_rate.store(policy.failure_rate);
        self.slow_call_rate.store(policy.slow_call_rate);
        self.throttles
            .store(matches!(policy.trip, Trip::Throttle), Relaxed);
        self.slow_call
            .store(saturating_nanos(policy.slow_call_duration), Relaxed);
        self.minimum_calls
            .store(u64::from(policy.minimum_calls.max(1)), Relaxed);
        self.open_for
            .store(saturating_nanos(policy.open_for), Relaxed);
        self.multiplier.store(backoff.multiplier.max(1.0));
        self.max_open.store(saturating_nanos(backoff.max), Relaxed);
        self.jitter.store(backoff.jitter.clamp(0.0, 0.999));
        let reset_after = backoff.reset_after.unwrap_or(backoff.max);
        self.reset_after
            .store(saturating_nanos(reset_after), Relaxed);
        self.probes
            .store(policy.half_open_probes.clamp(1, MAX_PROBES), Relaxed);
        self.probe_after.store(policy.probe_after, Relaxed);
    }

    #[inline]
    pub(super) fn slow_call(&self) -> Nanos {
        self.slow_call.load(Relaxed)
    }

    #[inline]
    pub(super) fn minimum_calls(&self) -> u64 {
        self.minimum_calls.load(Relaxed)
    }

    #[inline]
    pub(super) fn open_for(&self) -> Nanos {
        self.open_for.load(Relaxed)
    }

    /// `trip = "throttle"`.
    #[inline]
    pub(super) fn throttles(&self) -> bool {
        self.throttles.load(Relaxed)
    }

    #[inline]
    pub(super) fn probes(&self) -> u32 {
        self.probes.load(Relaxed)
    }

    /// Whether a set of calls is bad enough to open (or reopen) the breaker.
    #[inline]
    pub(super) fn trips(&self, calls: u64, failures: u64, slow: u64) -> bool {
        // A count of 0 is a rate of exactly 0: no division for it (a
        // window of successes is judged after every call).
        let rate = |count: u64| match count {
            0 => 0.0,
            count => count as f64 / calls as f64,
        };
        calls > 0
            && (rate(failures) >= self.failure_rate.load()
                || rate(slow) >= self.slow_call_rate.load())
    }
}

impl Thresholds {
    /// Whether a half-open breaker's probes, `probes` of them planned,
    /// `completed` of them back, `failures` failed and `slow` slow, reopen
    /// it: once the planned set is past a threshold whatever the probes
    /// still out do. Throttling, only while no probe back went well by
    /// that rule: as a closed window opens only when no call in it went
    /// well, a back end that served a probe closes again and gets the
    /// throttle's share (a dead one still reopens on as few probes as
    /// the classic breaker).
    #[inline]
    pub(super) fn probes_reopen(
        &self,
        probes: u64,
        completed: u64,
        failures: u64,
        slow: u64,
    ) -> bool {
        if !self.throttles() {
            return self.trips(probes, failures, slow);
        }
        let rate = |count: u64| count as f64 / probes as f64;
        (failures == completed && rate(failures) >= self.failure_rate.load())
            || (slow == completed && rate(slow) >= self.slow_call_rate.load())
    }
}

/// What a closed breaker's window says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Reject this share of new calls, in units of 2^-32 (0: none).
    Throttle(u32),
    /// Open.
    Open,
}

impl Thresholds {
    /// What a closed breaker does about a window of `calls`, `failures` of
    /// them failed and `slow` of them slow (`trip`; see [`Trip`] for the
    /// share throttled).
    #[inline]
    pub(super) fn verdict(&self, calls: u64, failures: u64, slow: u64) -> Verdict {
        if failures == 0 && slow == 0 {
            return Verdict::Throttle(0);
        }
        if !self.throttles() {
            return match self.trips(calls, failures, slow) {
                true => Verdict::Open,
                false => Verdict::Throttle(0),
            };
        }
        let rules = [
            (failures, self.failure_rate.load()),
            (slow, self.slow_call_rate.load()),
        ];
        let mut share: f64 = 0.0;
        for (bad, threshold) in rules {
            if bad == 0 || (bad as f64) < threshold * calls as f64 {
                continue; // the rule is not past its threshold
            }
            if bad >= calls {
                return Verdict::Open; // no call went well
            }
            // At a threshold of 1 only an all-bad window acts (above).
            if threshold < 1.0 {
                let good = (calls - bad) as f64;
                let rejected = (calls as f64 - good / (1.0 - threshold)) / (calls as f64 + 1.0);
                share = share.max(rejected);
            }
        }
        // Saturating float-to-int conversion; a share that rounds to 1
        // still lets one call in 2^32 through, as a throttle must.
        Verdict::Throttle((share.clamp(0.0, 1.0) * 4_294_967_295.0) as u32)
    }
}

/// An `f64` in an `AtomicU64`, read and written relaxed.
#[derive(Debug, Default)]
pub(super) struct AtomicF64(AtomicU64);

impl AtomicF64 {
    #[inline]
    pub(super) fn load(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }

    pub(super) fn store(&self, value: f64) {
        self.0.store(value.to_bits(), Relaxed);
    }
}
