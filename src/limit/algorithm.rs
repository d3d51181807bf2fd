//! The learning algorithms, after Netflix's `concurrency-limits`, applied
//! once per window of samples.
//!
//! Each takes the current limit and what the last window saw, and returns
//! the next limit (a float, so that small steps accumulate; the gate
//! publishes its integer part). They run on the thread that closes a
//! window, one at a time; nothing here is on the per-call path.

use crate::policy::{Algorithm, LimitPolicy};

/// What one window of completed calls says about the back end.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct WindowSample {
    /// Calls completed in the window (cancelled calls are not samples).
    pub(crate) samples: u32,
    /// Their mean round-trip time, in seconds.
    pub(crate) rtt: f64,
    /// Calls that signalled overload (classified as failures).
    pub(crate) dropped: u32,
    /// Most calls in flight at once during the window.
    pub(crate) max_inflight: u32,
}

/// A learning algorithm's state.
#[derive(Debug, Clone)]
pub(crate) enum Learner {
    Fixed,
    Aimd,
    Vegas(Vegas),
    Gradient(Gradient),
}

impl Learner {
    pub(crate) fn new(policy: &LimitPolicy) -> Self {
        match policy.algorithm {
            Algorithm::Fixed => Learner::Fixed,
            Algorithm::Aimd => Learner::Aimd,
            Algorithm::Vegas => Learner::Vegas(Vegas::default()),
            Algorithm::Gradient => Learner::Gradient(Gradient::default()),
        }
    }

    /// The next limit after `window`, before clamping to `[min, max]`.
    pub(crate) fn update(&mut self, limit: f64, window: &WindowSample) -> f64 {
        // The back end was not asked for more than half the limit: latency
        // says nothing about the limit, and growing it would let a burst
        // through later (concurrency-limits' "app-limited" rule).
        let app_limited = f64::from(window.max_inflight) * 2.0 < limit;
        match self {
            Learner::Fixed => limit,
            Learner::Aimd => {
                if window.dropped > 0 {
                    limit * AIMD_BACKOFF
                } else if app_limited {
                    limit
                } else {
                    limit + 1.0
                }
            }
            Learner::Vegas(v) => v.update(limit, window, app_limited),
            Learner::Gradient(g) => g.update(limit, window, app_limited),
        }
    }

    /// The back end's unloaded latency as learned, in seconds, if known.
    pub(crate) fn baseline_rtt(&self) -> Option<f64> {
        match self {
            Learner::Vegas(v) => v.rtt_noload,
            Learner::Gradient(g) => g.long_rtt,
            Learner::Fixed | Learner::Aimd => None,
        }
    }
}

/// AIMD's multiplicative decrease.
const AIMD_BACKOFF: f64 = 0.9;

fn log10_floor1(limit: f64) -> f64 {
    limit.max(1.0).log10().max(1.0)
}

/// TCP Vegas, as in concurrency-limits' `VegasLimit`.
///
/// The unloaded latency is the lowest window mean seen since the last
/// probe. Every `PROBE_EVERY` windows it is forgotten and relearned, so a
/// back end whose unloaded latency rose (a slower disk) is not mistaken
/// for a queue forever.
#[derive(Debug, Clone, Default)]
pub(crate) struct Vegas {
    rtt_noload: Option<f64>,
    windows: u32,
}

impl Vegas {
    const PROBE_EVERY: u32 = 600;

    fn update(&mut self, limit: f64, window: &WindowSample, app_limited: bool) -> f64 {
        self.windows += 1;
        if self.windows % Self::PROBE_EVERY == 0 {
            self.rtt_noload = None;
        }
        let noload = match self.rtt_noload {
            Some(noload) if noload <= window.rtt => noload,
            _ => {
                self.rtt_noload = Some(window.rtt);
                window.rtt
            }
        };
        let step = log10_floor1(limit);
        if window.dropped > 0 {
            return limit - step;
        }
        if app_limited || window.rtt <= 0.0 {
            return limit;
        }
        let queue = (limit * (1.0 - noload / window.rtt)).ceil();
        let (alpha, beta) = (3.0 * step, 6.0 * step);
        if queue <= step {
            limit + beta
        } else if queue < alpha {
            limit + step
        } else if queue > beta {
            // concurrency-limits takes `step` off per sample; one window
            // holds many samples, so take half the excess queue at once
            // (at least `step`), which lands inside [alpha, beta] in a few
            // windows instead of dozens.
            limit - step.max((queue - beta) / 2.0)
        } else {
            limit
        }
    }
}

/// Gradient2, as in concurrency-limits' `Gradient2Limit`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Gradient {
    /// Exponential average of the window means: the long-term latency.
    long_rtt: Option<f64>,
}

impl Gradient {
    /// How much higher than the long-term latency the short-term latency
    /// may be before the limit shrinks.
    const TOLERANCE: f64 = 1.0;
    /// Weight of a new window in the long-term average.
    const LONG_WEIGHT: f64 = 0.02;
    /// Weight of the new limit against the old one.
    const SMOOTHING: f64 = 0.5;

    fn update(&mut self, limit: f64, window: &WindowSample, app_limited: bool) -> f64 {
        let short = window.rtt;
        if short <= 0.0 {
            return limit;
        }
        let long = match self.long_rtt {
            None => short,
            Some(long) => {
                let mut long = long * (1.0 - Self::LONG_WEIGHT) + short * Self::LONG_WEIGHT;
                // Latency fell well below the long-term average (the back
                // end recovered): let the average follow quickly.
                if long / short > 2.0 {
                    long *= 0.95;
                }
                long
            }
        };
        self.long_rtt = Some(long);
        if window.dropped > 0 {
            // Failures are the back end saying "too much": back off at once.
            return limit * 0.9;
        }
        if app_limited {
            return limit;
        }
        let gradient = (Self::TOLERANCE * long / short).clamp(0.5, 1.0);
        let queue = limit.sqrt();
        let next = limit * gradient + queue;
        limit * (1.0 - Self::SMOOTHING) + next * Self::SMOOTHING
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(rtt: f64, max_inflight: u32) -> WindowSample {
        WindowSample {
            samples: 50,
            rtt,
            dropped: 0,
            max_inflight,
        }
    }

    #[test]
    fn aimd_adds_one_and_backs_off_on_drops() {
        let mut aimd = Learner::Aimd;
        assert_eq!(aimd.update(10.0, &window(0.1, 10)), 11.0);
        assert_eq!(aimd.update(10.0, &window(0.1, 2)), 10.0, "app-limited");
        let dropped = WindowSample {
            dropped: 1,
            ..window(0.1, 10)
        };
        assert!((aimd.update(10.0, &dropped) - 9.0).abs() < 1e-9);
    }

    #[test]
    fn vegas_grows_without_queue_and_shrinks_with_one() {
        let mut vegas = Learner::Vegas(Vegas::default());
        // First window sets the unloaded latency: no queue, grow by beta.
        assert_eq!(vegas.update(100.0, &window(0.1, 100)), 100.0 + 6.0 * 2.0);
        // Latency doubled at limit 100: 50 queued, beta is 12: take off
        // half the excess.
        assert_eq!(
            vegas.update(100.0, &window(0.2, 100)),
            100.0 - (50.0 - 12.0) / 2.0
        );
        // Slightly above beta: the minimum step.
        assert_eq!(vegas.update(100.0, &window(0.1149, 100)), 98.0);
        // 100 * (1 - 0.1/0.107) = 6.5 → 7 queued: between alpha and beta.
        assert_eq!(vegas.update(100.0, &window(0.107, 100)), 100.0);
    }

    #[test]
    fn gradient_shrinks_when_latency_rises_and_grows_when_it_holds() {
        let mut gradient = Learner::Gradient(Gradient::default());
        let grown = gradient.update(100.0, &window(0.1, 100));
        assert!(
            grown > 100.0,
            "steady latency: grows by the queue allowance, got {grown}"
        );
        let shrunk = gradient.update(100.0, &window(0.3, 100));
        assert!(shrunk < 100.0, "tripled latency: shrinks, got {shrunk}");
        assert_eq!(Learner::Fixed.update(7.0, &window(9.0, 7)), 7.0);
    }
}
