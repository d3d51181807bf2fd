//! The limiter's shared state: an in-flight count checked against a
//! learned limit with one compare-exchange, and a window of samples that
//! the learning algorithm reads once per window.
//!
//! The in-flight count and the current window's sample count and latency
//! sum share one atomic word, so that admitting a call is one
//! compare-exchange and completing it (giving the slot back and recording
//! its sample) is one addition, on one cache line of its own.
//!
//! ```text
//!  63..44  calls in flight (20 bits: up to 1,048,575, above the largest limit)
//!  43..28  samples in the current window (16 bits; a window closes at 2^14)
//!  27..0   their latencies, summed, in units of 64 µs (a window closes at 2^27)
//! ```

use std::sync::atomic::Ordering::*;
use std::time::Duration;

use crate::clock::Nanos;
use crate::core::sync::{AtomicU32, AtomicU64, Mutex};
use crate::policy::{Algorithm, LimitPolicy};
use crate::priority::{MAX_CLASSES, Priority};
use crate::reject::{Reason, Rejected};

use super::algorithm::{CustomAlgorithm, Learner, WindowSample};

/// Shortest window of samples; windows otherwise last one of their mean
/// RTTs (a round trip: the limit moves once per round trip, as peers'
/// limiters do), so that their mean is not biased towards the calls that
/// happened to finish first.
const MIN_WINDOW: Nanos = 10_000_000;
/// Most samples a window waits for before the limit may move: a window
/// needs `min(MIN_SAMPLES, limit / 2)` (at least one), so that a small
/// limit still learns every round trip.
const MIN_SAMPLES: u64 = 64;
const INFLIGHT_SHIFT: u32 = 44;
const ONE_INFLIGHT: u64 = 1 << INFLIGHT_SHIFT;
const SAMPLES_SHIFT: u32 = 28;
const ONE_SAMPLE: u64 = 1 << SAMPLES_SHIFT;
const SAMPLES_MASK: u64 = 0xffff;
const RTT_MASK: u64 = ONE_SAMPLE - 1;
/// Nanoseconds per unit of the latency sum.
pub(super) const RTT_UNIT: Nanos = 64_000;
/// One sample's latency is capped at this many units (67 s), so that the
/// sum can take 2^7 of them past the point where its window must close.
const MAX_SAMPLE_UNITS: u64 = 1 << 20;
/// A window closes once it holds this many samples or this many units,
/// whatever its length, so that neither field overflows.
const FULL_SAMPLES: u64 = 1 << 14;
const FULL_UNITS: u64 = 1 << 27;

/// The packed word, on a cache line of its own: written by every call,
/// it must not share a line with the limit and shares that every call
/// reads.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Hot(AtomicU64);

#[inline]
const fn inflight_of(word: u64) -> u32 {
    (word >> INFLIGHT_SHIFT) as u32
}

#[inline]
const fn samples_of(word: u64) -> u64 {
    (word >> SAMPLES_SHIFT) & SAMPLES_MASK
}

/// An outage longer than this may have been a restart, a redeploy or a
/// resize: the back end that comes back is learned afresh (see
/// `Capacity::recovered`).
const LONG_OUTAGE: Nanos = 60_000_000_000;

/// A change of the published limit, for metrics and tracing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LimitChange {
    pub(crate) limit: u32,
    pub(crate) inflight: u32,
}

#[derive(Debug)]
struct Learning {
    learner: Learner,
    algorithm: Algorithm,
    /// The layer's own algorithm, for `algorithm = "custom"`.
    custom: Option<CustomAlgorithm>,
    /// The limit as the algorithm holds it (fractional steps accumulate).
    limit: f64,
    /// When the last window in which most calls were served closed: an
    /// outage is measured from there (windows of calls that failed, the
    /// breaker's probes timing out, close all through it, and the window
    /// of the probes that find the back end again is mostly failures).
    served_at: Nanos,
}

/// One route's limiter.
#[derive(Debug)]
pub(crate) struct LimitCore {
    /// Calls in flight and the current window's samples; see the module
    /// docs.
    hot: Hot,
    /// The published, integer limit.
    limit: AtomicU32,
    /// Share of the limit each class may fill, in 1/65536ths.
    keep: [AtomicU32; MAX_CLASSES],
    /// How many classes share the limit (fixed when built).
    classes: usize,
    min: AtomicU32,
    max: AtomicU32,
    // The rest of the current window: overload signals, peak in-flight,
    // start.
    dropped: AtomicU32,
    /// Calls abandoned at their caller's deadline in the current window:
    /// their latency is a lower bound, and they delivered nothing.
    censored: AtomicU32,
    max_inflight: AtomicU32,
    /// Calls refused a slot in the current window (demand pressed on the
    /// limit).
    blocked: AtomicU32,
    /// Whether windows close every round trip with samples scaled to the
    /// limit (`capacity`), or after two round trips and `MIN_SAMPLES`
    /// (the latency learners, whose smoothing is tuned for those).
    round_trip_windows: AtomicU32,
    window_start: AtomicU64,
    /// Smoothed mean RTT in nanoseconds: the retry hint of a shed call.
    rtt: AtomicU64,
    learning: Mutex<Learning>,
}

impl LimitCore {
    /// A limiter for `classes` priority classes.
    #[cfg(any(test, brownout_loom))]
    pub(crate) fn new(policy: &LimitPolicy, classes: usize, now: Nanos) -> Self {
        Self::with_custom(policy, classes, now, None)
    }

    /// A limiter whose policy may name the layer's own algorithm, `custom`.
    pub(crate) fn with_custom(
        policy: &LimitPolicy,
        classes: usize,
        now: Nanos,
        custom: Option<CustomAlgorithm>,
    ) -> Self {
        let min = policy.min.max(1);
        let max = policy.max.max(min);
        let initial = policy.initial.clamp(min, max);
        let learner = Learner::new(policy, custom.as_ref());
        Self {
            hot: Hot::default(),
            limit: AtomicU32::new(initial),
            keep: shares(policy.reserve, classes).map(AtomicU32::new),
            classes,
            min: AtomicU32::new(min),
            max: AtomicU32::new(max),
            dropped: AtomicU32::new(0),
            censored: AtomicU32::new(0),
            max_inflight: AtomicU32::new(0),
            blocked: AtomicU32::new(0),
            round_trip_windows: AtomicU32::new(u32::from(learner.round_trip_windows())),
            window_start: AtomicU64::new(now),
            rtt: AtomicU64::new(0),
            learning: Mutex::new(Learning {
                learner,
                algorithm: policy.algorithm,
                custom,
                limit: f64::from(initial),
                served_at: now,
            }),
        }
    }

    pub(crate) fn limit(&self) -> u32 {
        self.limit.load(Relaxed)
    }

    pub(crate) fn inflight(&self) -> u32 {
        inflight_of(self.hot.0.load(Relaxed))
    }

    /// How many calls of class `priority` may be in flight under the
    /// current limit: all of it for the most important class, less for
    /// each class below, never less than one.
    #[inline]
    pub(crate) fn cap(&self, priority: Priority) -> u32 {
        let keep = self.keep[usize::from(priority.rank()).min(MAX_CLASSES - 1)].load(Relaxed);
        // Rounded to the nearest call.
        ((u64::from(self.limit.load(Relaxed)) * u64::from(keep) + (1 << 15)) >> 16).max(1) as u32
    }

    /// Takes an in-flight slot for a call of class `priority`, or sheds it.
    #[inline]
    pub(crate) fn acquire(&self, priority: Priority) -> Result<(), Rejected> {
        let cap = self.cap(priority);
        let mut word = self.hot.0.load(Relaxed);
        loop {
            if inflight_of(word) >= cap {
                return Err(self.shed());
            }
            match self
                .hot
                .0
                .compare_exchange_weak(word, word + ONE_INFLIGHT, Acquire, Relaxed)
            {
                Ok(_) => break,
                Err(seen) => word = seen,
            }
        }
        let inflight = inflight_of(word) + 1;
        if inflight > self.max_inflight.load(Relaxed) {
            self.max_inflight.fetch_max(inflight, Relaxed);
        }
        Ok(())
    }

    #[cold]
    fn shed(&self) -> Rejected {
        self.blocked.fetch_add(1, Relaxed);
        // The in-flight calls turn over about once per mean RTT: a slot is
        // likely free by then.
        let rtt = self.rtt.load(Relaxed).max(1_000_000);
        Rejected::new(Reason::Shed).with_retry_after(Duration::from_nanos(rtt))
    }

    /// Gives back a slot whose call ended without an outcome.
    #[inline]
    pub(crate) fn release(&self) {
        // AcqRel, as `complete`'s addition: a release that reads a
        // seating's `touch` must see that waiter (see `Gate::after_seating`).
        self.hot.0.fetch_sub(ONE_INFLIGHT, AcqRel);
    }

    /// A read-modify-write of the in-flight word that changes nothing: a
    /// waiter has just been seated (see `Gate::after_seating`).
    pub(crate) fn touch(&self) {
        self.hot.0.fetch_add(0, AcqRel);
    }

    /// Gives back the slot of a call abandoned because its *caller's*
    /// deadline ran out, `elapsed` after it was admitted: not evidence that
    /// the back end failed, but a latency of at least `elapsed` (a
    /// censored sample). One abandoned sooner than the mean latency tells
    /// nothing new and only gives its slot back; a longer one counts as a
    /// sample at that latency that delivered nothing. It never signals
    /// overload.
    pub(crate) fn complete_censored(&self, elapsed: Nanos, now: Nanos) -> Option<LimitChange> {
        if elapsed < self.rtt.load(Relaxed) || elapsed == 0 {
            self.release();
            return None;
        }
        self.censored.fetch_add(1, Relaxed);
        self.complete(elapsed, false, now)
    }

    /// Gives back a slot and records its call as a sample: `rtt` long,
    /// `dropped` if it signalled overload. Returns the new limit when this
    /// sample closed a window.
    #[inline]
    pub(crate) fn complete(&self, rtt: Nanos, dropped: bool, now: Nanos) -> Option<LimitChange> {
        // Rounded to the nearest unit.
        let units = ((rtt + RTT_UNIT / 2) / RTT_UNIT).min(MAX_SAMPLE_UNITS);
        // One addition: a slot back (the call holds one, so the in-flight
        // field cannot borrow), a sample and its latency in.
        let delta = (ONE_SAMPLE + units).wrapping_sub(ONE_INFLIGHT);
        let word = self.hot.0.fetch_add(delta, AcqRel).wrapping_add(delta);
        if dropped {
            self.dropped.fetch_add(1, Relaxed);
        }
        let samples = samples_of(word);
        let sum = word & RTT_MASK;
        let full = samples >= FULL_SAMPLES || sum >= FULL_UNITS;
        let start = self.window_start.load(Relaxed);
        let elapsed = now.saturating_sub(start);
        if !full && elapsed < MIN_WINDOW {
            // No window closes before `MIN_WINDOW`, whatever its samples
            // and mean RTT: most completions stop here, before the
            // division below.
            return None;
        }
        let fast = self.round_trip_windows.load(Relaxed) != 0;
        let needed = if fast {
            (u64::from(self.limit.load(Relaxed)) / 2).clamp(1, MIN_SAMPLES)
        } else {
            MIN_SAMPLES
        };
        if samples < needed {
            return None;
        }
        // One mean RTT of this window's own samples (less a sixteenth: the
        // sum is rounded to its units, and a window of one call lasts
        // exactly its latency).
        let rtt = sum.saturating_mul(RTT_UNIT) / samples;
        let length = if fast { rtt - rtt / 16 } else { 2 * rtt };
        if !full && elapsed < length.max(MIN_WINDOW) {
            return None;
        }
        // Whoever moves the window start closes the window; the others go.
        if self
            .window_start
            .compare_exchange(start, now, AcqRel, Relaxed)
            .is_err()
        {
            return None;
        }
        self.close_window(elapsed, now)
    }

    #[cold]
    fn close_window(&self, elapsed: Nanos, now: Nanos) -> Option<LimitChange> {
        // Take the window's samples, leaving the in-flight count.
        let mut word = self.hot.0.load(Relaxed);
        loop {
            let kept = word & !(ONE_INFLIGHT - 1);
            match self
                .hot
                .0
                .compare_exchange_weak(word, kept, AcqRel, Relaxed)
            {
                Ok(_) => break,
                Err(seen) => word = seen,
            }
        }
        let dropped = self.dropped.swap(0, Relaxed);
        let censored = self.censored.swap(0, Relaxed);
        let blocked = self.blocked.swap(0, Relaxed);
        let max_inflight = self.max_inflight.swap(self.inflight(), Relaxed);
        let samples = samples_of(word) as u32;
        if samples == 0 {
            return None;
        }
        let mean_rtt_nanos = ((word & RTT_MASK) * RTT_UNIT) as f64 / f64::from(samples);
        let mean_rtt_micros = mean_rtt_nanos / 1_000.0;
        let mean_rtt = mean_rtt_micros * 1e-6;
        let window = WindowSample {
            samples,
            rtt: mean_rtt,
            dropped,
            max_inflight,
            duration: elapsed as f64 * 1e-9,
            blocked,
            censored,
        };
        let mut learning = match self.learning.try_lock() {
            Ok(guard) => guard,
            // Another window is being closed this instant: this one's
            // samples are dropped rather than waited for.
            Err(_) => return None,
        };
        // Served, if most of its calls were: the breaker's probes that
        // pass, in a window of calls that hung until they timed out, are
        // the outage's end, not service during it.
        let served = samples.saturating_sub(dropped.saturating_add(censored));
        if served > 0 && served >= samples - served {
            learning.served_at = now;
        }
        let previous_rtt = self.rtt.load(Relaxed) as f64;
        let rtt_nanos = mean_rtt_micros * 1_000.0;
        let smoothed = if previous_rtt == 0.0 {
            rtt_nanos
        } else {
            previous_rtt * 0.8 + rtt_nanos * 0.2
        };
        self.rtt.store(smoothed as Nanos, Relaxed);
        let current = learning.limit;
        let next = learning.learner.update(current, &window).clamp(
            f64::from(self.min.load(Relaxed)),
            f64::from(self.max.load(Relaxed)),
        );
        learning.limit = next;
        let published = next as u32;
        let before = self.limit.swap(published, Relaxed);
        (before != published).then_some(LimitChange {
            limit: published,
            inflight: self.inflight(),
        })
    }

    /// Takes the bounds, reserve and algorithm of `policy`, keeping the
    /// learned limit (brought into the new bounds; `initial` only matters at
    /// start) and the calls in flight: a lower limit never revokes a permit
    /// already granted.
    pub(crate) fn reconfigure(&self, policy: &LimitPolicy) -> Option<LimitChange> {
        let min = policy.min.max(1);
        let max = policy.max.max(min);
        self.min.store(min, Relaxed);
        self.max.store(max, Relaxed);
        for (share, keep) in self.keep.iter().zip(shares(policy.reserve, self.classes)) {
            share.store(keep, Relaxed);
        }
        let mut learning = self.learning.lock().unwrap_or_else(|e| e.into_inner());
        if learning.algorithm != policy.algorithm {
            learning.learner = Learner::new(policy, learning.custom.as_ref());
            learning.algorithm = policy.algorithm;
            self.round_trip_windows
                .store(u32::from(learning.learner.round_trip_windows()), Relaxed);
        }
        learning.limit = learning.limit.clamp(f64::from(min), f64::from(max));
        let published = learning.limit as u32;
        let before = self.limit.swap(published, Relaxed);
        (before != published).then_some(LimitChange {
            limit: published,
            inflight: self.inflight(),
        })
    }

    /// The smoothed mean response time (zero before the first window).
    pub(crate) fn mean_rtt(&self) -> Duration {
        Duration::from_nanos(self.rtt.load(Relaxed))
    }

    /// The back end is back after an outage (a maintenance window ended,
    /// the breaker closed again): the learner says where the limit starts
    /// again: `maintenance` says which. `capacity` puts back the last limit
    /// that served well (the breaker's probes have just shown the back end
    /// answers); `fixed` keeps its limit; the latency learners restart from
    /// `min` after a maintenance window.
    ///
    /// `now` tells how long the outage was, counted from the last window
    /// that had a call served in it (windows keep closing through an
    /// outage whose calls fail or time out: the breaker's probes).
    pub(crate) fn recovered(&self, maintenance: bool, now: Nanos) -> Option<LimitChange> {
        let mut learning = self.learning.lock().unwrap_or_else(|e| e.into_inner());
        let long = now.saturating_sub(learning.served_at) > LONG_OUTAGE;
        let min = f64::from(self.min.load(Relaxed));
        let max = f64::from(self.max.load(Relaxed));
        let current = learning.limit;
        let next = learning
            .learner
            .recovered(current, min, maintenance, long)
            .clamp(min, max);
        learning.limit = next;
        // The window under way straddles the outage: start a new one.
        self.blocked.store(0, Relaxed);
        self.dropped.store(0, Relaxed);
        self.censored.store(0, Relaxed);
        let published = next as u32;
        let before = self.limit.swap(published, Relaxed);
        (before != published).then_some(LimitChange {
            limit: published,
            inflight: self.inflight(),
        })
    }
}

/// Each class's share of the limit in 1/65536ths: the most important class
/// gets all of it, the least important `1 - reserve`, the ones between in
/// proportion.
fn shares(reserve: f64, classes: usize) -> [u32; MAX_CLASSES] {
    let reserve = if reserve.is_finite() {
        reserve.clamp(0.0, 0.99)
    } else {
        0.0
    };
    let lowest = classes.clamp(1, MAX_CLASSES) - 1;
    let mut keep = [0u32; MAX_CLASSES];
    for (rank, share) in keep.iter_mut().enumerate() {
        let position = if lowest == 0 {
            0.0
        } else {
            rank.min(lowest) as f64 / lowest as f64
        };
        *share = ((1.0 - reserve * position) * 65536.0).round() as u32;
    }
    keep
}

#[cfg(test)]
mod tests;
