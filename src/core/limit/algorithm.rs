//! The learning algorithms, after Netflix's `concurrency-limits`, applied
//! once per window of samples, and the [`LimitAlgorithm`] trait through
//! which an application brings its own.
//!
//! Each takes the current limit and what the last window saw, and returns
//! the next limit (a float, so that small steps accumulate; the gate
//! publishes its integer part). They run on the thread that closes a
//! window, one at a time; nothing here is on the per-call path.

use crate::policy::{Algorithm, LimitPolicy};

use super::capacity::Capacity;
pub(crate) use super::pluggable::{CustomAlgorithm, LimitAlgorithm, WindowSample};

/// A learning algorithm's state.
#[derive(Debug)]
pub(crate) enum Learner {
    Fixed,
    Aimd,
    Vegas(Vegas, Probe),
    Gradient(Gradient, Probe),
    Capacity(Capacity),
    Custom(Box<dyn LimitAlgorithm>),
}

/// Relearning the unloaded latency by draining the queue now and then.
///
/// Under sustained load the limiter always keeps a small queue inside the
/// back end, so latency never shows the unloaded figure again, and small
/// errors in the baseline (noise, a biased first window) would stay
/// forever. Like BBR's ProbeRTT, every `EVERY` windows (and once early,
/// at window `FIRST`) the limit is halved for two windows: the first lets
/// the queue drain, the second measures latency without it. The measure
/// replaces the baseline (it may raise it by at most `MAX_RISE`, in case the
/// halved limit was still above a shrunken capacity), and the limit is put
/// back. It costs about one window of half throughput in a hundred.
#[derive(Debug, Clone, Default)]
pub(crate) struct Probe {
    windows: u32,
    state: ProbeState,
}

#[derive(Debug, Clone, Copy, Default)]
enum ProbeState {
    #[default]
    Off,
    Draining {
        restore: f64,
    },
    Measuring {
        restore: f64,
    },
}

impl Probe {
    const FIRST: u32 = 4;
    const EVERY: u32 = 100;
    const MAX_RISE: f64 = 1.1;

    /// The limit a probe under way (or starting now) sets, or `None` when
    /// the algorithm decides.
    fn step(
        &mut self,
        latency: &mut Latency,
        limit: f64,
        window: &WindowSample,
        app_limited: bool,
    ) -> Option<f64> {
        match self.state {
            ProbeState::Draining { restore } => {
                self.state = ProbeState::Measuring { restore };
                Some(limit)
            }
            ProbeState::Measuring { restore } => {
                self.state = ProbeState::Off;
                if !window.has_failures() {
                    latency.rebase(window.rtt, Self::MAX_RISE);
                }
                Some(restore)
            }
            ProbeState::Off => {
                self.windows += 1;
                let due = self.windows == Self::FIRST || self.windows % Self::EVERY == 0;
                if due && !app_limited && window.dropped == 0 {
                    self.state = ProbeState::Draining { restore: limit };
                    Some((limit * 0.5).max(1.0))
                } else {
                    None
                }
            }
        }
    }
}

impl Learner {
    /// The learner `policy` names; `custom` is the layer's own algorithm,
    /// if it was given one.
    pub(crate) fn new(policy: &LimitPolicy, custom: Option<&CustomAlgorithm>) -> Self {
        match policy.algorithm {
            Algorithm::Fixed => Learner::Fixed,
            Algorithm::Aimd => Learner::Aimd,
            Algorithm::Vegas => Learner::Vegas(Vegas::default(), Probe::default()),
            Algorithm::Gradient => Learner::Gradient(Gradient::default(), Probe::default()),
            Algorithm::Capacity => Learner::Capacity(Capacity::default()),
            Algorithm::Custom => match custom {
                Some(custom) => Learner::Custom(custom.build()),
                None => {
                    tracing::error!(
                        "brownout: limit.algorithm is \"custom\" but the layer was given no \
                         algorithm (AdaptiveLimitLayer::algorithm, \
                         BrownoutLayer::limit_algorithm); using \"capacity\""
                    );
                    Learner::Capacity(Capacity::default())
                }
            },
        }
    }

    /// Whether its windows close every round trip (`capacity`, custom
    /// algorithms) rather than after two and 64 samples.
    pub(crate) fn round_trip_windows(&self) -> bool {
        matches!(self, Learner::Capacity(_) | Learner::Custom(_))
    }

    /// The limit to start again from after an outage, given the current
    /// one: after a maintenance window (`maintenance`) or once the breaker
    /// closed again.
    /// (`long`: the outage lasted over a minute.)
    pub(crate) fn recovered(&mut self, limit: f64, min: f64, maintenance: bool, long: bool) -> f64 {
        match self {
            Learner::Capacity(c) => c.recovered(limit, long),
            Learner::Custom(custom) => custom.recovered(limit, maintenance),
            Learner::Fixed => limit,
            // The latency learners restart from the minimum after a
            // maintenance window (their baselines say nothing about the
            // back end that came back), and keep their limit otherwise.
            _ if maintenance => min,
            _ => limit,
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
            Learner::Vegas(v, probe) => probe
                .step(&mut v.latency, limit, window, app_limited)
                .unwrap_or_else(|| v.update(limit, window, app_limited)),
            Learner::Gradient(g, probe) => probe
                .step(&mut g.latency, limit, window, app_limited)
                .unwrap_or_else(|| g.update(limit, window, app_limited)),
            Learner::Capacity(c) => c.update(limit, window),
            Learner::Custom(custom) => custom.update(limit, window),
        }
    }
}

/// AIMD's multiplicative decrease.
const AIMD_BACKOFF: f64 = 0.9;

fn log10_floor1(limit: f64) -> f64 {
    limit.max(1.0).log10().max(1.0)
}

/// Latency as the algorithms see it: the short-term latency (window means,
/// smoothed over a few windows so that one noisy window does not move the
/// limit) and the back end's unloaded latency, its baseline.
///
/// A latency-based limiter needs to know what "no queue" looks like while
/// it keeps the back end busy, so the baseline must neither follow the
/// queue it allows (concurrency-limits' Gradient2 lets its long-term
/// average do so, and its limit creeps up under sustained load) nor chase
/// the fastest noisy windows down (a minimum ratchets below the truth, and
/// the limit then shrinks for a queue that is not there). The baseline
/// therefore moves only on evidence: it follows latency while the limiter
/// is not loading the back end (app-limited windows); a [`Probe`] measures
/// it with the queue drained; latency far above it for `RELEARN` windows in
/// a row (the back end itself became slower: a disk filling up) or clearly
/// below it for `FASTER` windows replaces it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Latency {
    short: Option<f64>,
    base: Option<f64>,
    high: u32,
    low: u32,
    /// Mean relative deviation of a window's mean from the short-term
    /// latency: how noisy the measure is.
    noise: f64,
}

impl Latency {
    /// Weight of a new window in the short-term latency.
    const SHORT: f64 = 0.3;
    /// Weight of the short-term latency in the baseline while the back end
    /// is not loaded.
    const IDLE: f64 = 0.1;
    /// "Far above": a latency shift no settled queue explains.
    const FAR: f64 = 1.5;
    const RELEARN: u32 = 20;
    /// "Clearly below": the back end got faster.
    const NEAR: f64 = 0.9;
    const FASTER: u32 = 10;

    /// Weight of a new window in the noise estimate.
    const NOISE: f64 = 0.1;

    /// Takes in a window's mean latency; returns (short-term, baseline).
    fn observe(&mut self, window: f64, app_limited: bool) -> (f64, f64) {
        let short = match self.short {
            None => window,
            Some(short) => {
                // A window far off the short-term latency is a shift (the
                // back end slowed down, a queue formed), not noise.
                let deviation = ((window - short) / short).abs();
                if deviation <= 3.0 * self.noise.max(0.01) {
                    self.noise += (deviation - self.noise) * Self::NOISE;
                }
                short + (window - short) * Self::SHORT
            }
        };
        self.short = Some(short);
        let Some(base) = self.base else {
            self.base = Some(short);
            return (short, short);
        };
        let base = if app_limited {
            // The limiter is not loading the back end: whatever latency
            // it shows is its unloaded latency.
            self.high = 0;
            self.low = 0;
            base + (short - base) * Self::IDLE
        } else if short > base * Self::FAR {
            self.low = 0;
            self.high += 1;
            if self.high >= Self::RELEARN {
                self.high = 0;
                short
            } else {
                base
            }
        } else if short < base * Self::NEAR {
            // Faster than the baseline for a while: the back end got faster.
            self.high = 0;
            self.low += 1;
            if self.low >= Self::FASTER {
                self.low = 0;
                short
            } else {
                base
            }
        } else {
            self.high = 0;
            self.low = 0;
            base
        };
        self.base = Some(base);
        (short, base)
    }

    #[cfg(test)]
    fn baseline(&self) -> Option<f64> {
        self.base
    }

    /// How noisy window means are, as a share of the latency.
    fn noise(&self) -> f64 {
        self.noise
    }

    /// A probe measured `rtt` with the limit halved: it becomes the
    /// baseline and the short-term latency. If halving the limit did not
    /// lower the latency (within a tenth), no queue of ours was in it: the
    /// back end itself is this slow now, and the baseline takes it whole.
    /// Otherwise it rises by at most `max_rise`, in case the halved limit
    /// was still above a shrunken capacity and some queue remained.
    fn rebase(&mut self, rtt: f64, max_rise: f64) {
        if rtt <= 0.0 {
            return;
        }
        let intrinsic = self.short.is_some_and(|before| rtt >= 0.9 * before);
        let base = match self.base {
            Some(_) if intrinsic => rtt,
            Some(base) => rtt.min(base * max_rise),
            None => rtt,
        };
        self.base = Some(base);
        self.short = Some(rtt);
        self.high = 0;
    }
}

/// TCP Vegas, as in concurrency-limits' `VegasLimit`: the queue inside the
/// back end is `limit × (1 − unloaded latency / latency)`; grow by `beta`
/// while it is below `log10(limit)`, by `log10(limit)` while below
/// `alpha`, shrink while above `beta` (alpha = 3·log10(limit), beta =
/// 6·log10(limit)).
#[derive(Debug, Clone, Default)]
pub(crate) struct Vegas {
    latency: Latency,
}

impl Vegas {
    fn update(&mut self, limit: f64, window: &WindowSample, app_limited: bool) -> f64 {
        let step = log10_floor1(limit);
        if window.has_failures() {
            return limit - step;
        }
        if window.rtt <= 0.0 {
            return limit;
        }
        let (rtt, noload) = self.latency.observe(window.rtt, app_limited);
        if window.dropped > 0 {
            return limit - step;
        }
        if app_limited {
            return limit;
        }
        // Vegas counts queued calls from exact round-trip times; window
        // means carry noise, which at a limit of a few hundred reads as a
        // queue of several calls. Count only the queue beyond the noise.
        let noise = 1.5 * self.latency.noise() * limit;
        let queue = (limit * (1.0 - noload / rtt) - noise).max(0.0).ceil();
        let (alpha, beta) = (3.0 * step, 6.0 * step);
        if queue <= step {
            limit + beta
        } else if queue < alpha {
            limit + step
        } else if queue > beta {
            // concurrency-limits takes `step` off per sample; one window
            // holds many samples, so take the excess queue off at once (at
            // least `step`), which lands inside [alpha, beta] in a few
            // windows instead of dozens.
            limit - step.max(queue - beta)
        } else {
            limit
        }
    }
}

/// Gradient2, as in concurrency-limits' `Gradient2Limit`: the limit is
/// scaled by the ratio of the long-term (here: unloaded, see [`Latency`])
/// latency to the short-term latency, clamped to [0.5, 1], plus a small
/// queue allowance, and smoothed. While latency stays near the baseline the
/// back end has headroom and the limit grows, by up to `GROWTH` per window
/// (the original grows per call), less as latency nears the end of the
/// headroom, so that it approaches the back end's capacity without
/// overshooting it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Gradient {
    latency: Latency,
}

impl Gradient {
    /// Calls allowed to queue inside the back end (Gradient2's default).
    const QUEUE: f64 = 4.0;
    /// Latency within this share above the baseline counts as no queue.
    const HEADROOM: f64 = 0.1;
    /// Growth per window while the back end has headroom.
    const GROWTH: f64 = 0.15;
    /// Weight of the new limit against the old one.
    const SMOOTHING: f64 = 0.5;

    fn update(&mut self, limit: f64, window: &WindowSample, app_limited: bool) -> f64 {
        if window.has_failures() {
            // Failures are the back end saying "too much": back off at once.
            return limit * 0.9;
        }
        if window.rtt <= 0.0 {
            return limit;
        }
        let (short, long) = self.latency.observe(window.rtt, app_limited);
        if window.dropped > 0 {
            // Failures are the back end saying "too much": back off at once.
            return limit * 0.9;
        }
        if app_limited {
            return limit;
        }
        let ratio = short / long;
        let next = if ratio <= 1.0 + Self::HEADROOM {
            let room = ((1.0 + Self::HEADROOM - ratio) / Self::HEADROOM).clamp(0.0, 1.0);
            limit * (1.0 + Self::GROWTH * room) + Self::QUEUE
        } else {
            let gradient = (long / short).clamp(0.5, 1.0);
            limit * gradient + Self::QUEUE
        };
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
            duration: 0.1,
            blocked: 0,
            censored: 0,
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
        let mut vegas = Vegas::default();
        // First window sets the unloaded latency: no queue, grow by beta.
        assert_eq!(
            vegas.update(100.0, &window(0.1, 100), false),
            100.0 + 6.0 * 2.0
        );
        // Latency doubles and stays: the short-term latency follows, the
        // queue estimate grows past beta, the limit shrinks.
        let mut limit = 100.0;
        for _ in 0..5 {
            limit = vegas.update(100.0, &window(0.2, 100), false);
        }
        assert!(limit < 100.0 - 2.0, "{limit}");
        // None of that moved the baseline: the back end was loaded.
        assert_eq!(vegas.latency.baseline(), Some(0.1));
        // App-limited: the limit stays.
        assert_eq!(vegas.update(100.0, &window(0.1, 10), true), 100.0);
    }

    #[test]
    fn latency_baseline_falls_rises_only_when_idle_and_relearns_lasting_shifts() {
        let mut l = Latency::default();
        assert_eq!(l.observe(0.1, false), (0.1, 0.1));
        // Loaded and slower: a queue, not a new baseline.
        let (short, base) = l.observe(0.12, false);
        assert!((short - 0.106).abs() < 1e-12 && base == 0.1);
        // Slower while idle: the baseline follows, slowly.
        let (_, base) = l.observe(0.2, true);
        assert!(base > 0.1 && base < 0.11);
        // One fast window is noise; ten in a row are a faster back end.
        let (_, same) = l.observe(0.05, false);
        assert_eq!(same, base);
        let mut lower = base;
        for _ in 0..3 * Latency::FASTER {
            lower = l.observe(0.05, false).1;
        }
        assert!(lower < 0.09, "{lower}");
        // Three times slower for a long while under load: relearn.
        let mut l = Latency::default();
        l.observe(0.1, false);
        let mut relearned = 0;
        for i in 0..100 {
            let (_, base) = l.observe(0.3, false);
            if base > 0.2 {
                relearned = i;
                break;
            }
        }
        assert!(
            relearned >= Latency::RELEARN as usize - 1,
            "relearned after {relearned} windows"
        );
    }

    #[test]
    fn a_probe_halves_the_limit_for_two_windows_then_rebases_and_restores() {
        let mut learner = Learner::Gradient(Gradient::default(), Probe::default());
        let mut limit = 100.0;
        let mut limits = Vec::new();
        for _ in 0..Probe::FIRST + 2 {
            // Loaded, latency 20% above what the first window showed.
            limit = learner.update(limit, &window(0.1, limit as u32));
            limits.push(limit);
        }
        let probe = Probe::FIRST as usize - 1;
        assert_eq!(limits[probe], limits[probe - 1] * 0.5, "{limits:?}");
        assert_eq!(limits[probe + 1], limits[probe], "draining: {limits:?}");
        assert_eq!(limits[probe + 2], limits[probe - 1], "restored: {limits:?}");
    }

    #[test]
    fn windows_with_failures_back_off_and_teach_no_latency() {
        let mut gradient = Gradient::default();
        gradient.update(100.0, &window(0.1, 100), false);
        // A down back end refusing in 1 ms: 30 of 50 calls failed.
        let refused = WindowSample {
            dropped: 30,
            ..window(0.001, 100)
        };
        assert_eq!(gradient.update(100.0, &refused, false), 90.0);
        assert_eq!(
            gradient.latency.baseline(),
            Some(0.1),
            "the 1 ms refusals taught nothing"
        );
        let mut vegas = Vegas::default();
        vegas.update(100.0, &window(0.1, 100), false);
        assert_eq!(vegas.update(100.0, &refused, false), 98.0);
        assert_eq!(vegas.latency.baseline(), Some(0.1));
    }

    #[test]
    fn a_probe_that_finds_the_back_end_itself_slower_takes_the_new_latency_whole() {
        let mut latency = Latency::default();
        latency.observe(0.1, false);
        // Four times slower: the short-term latency follows (not long
        // enough for a relearn)...
        for _ in 0..10 {
            latency.observe(0.4, false);
        }
        // ...and halving the limit did not bring it down: intrinsic.
        latency.rebase(0.39, Probe::MAX_RISE);
        assert_eq!(latency.baseline(), Some(0.39));
        // Whereas a probe that did bring latency down rises by a tenth at most.
        let mut queued = Latency::default();
        queued.observe(0.1, false);
        for _ in 0..10 {
            queued.observe(0.4, false);
        }
        queued.rebase(0.2, Probe::MAX_RISE);
        assert!((queued.baseline().unwrap() - 0.11).abs() < 1e-12);
    }

    #[test]
    fn gradient_shrinks_when_latency_rises_and_grows_when_it_holds() {
        let mut gradient = Learner::Gradient(Gradient::default(), Probe::default());
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
