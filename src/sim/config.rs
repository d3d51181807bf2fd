//! What a simulated back end is told: its service-time distribution, its
//! condition, the changes a scenario makes, and the errors for bad settings.

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Exp, Gamma, LogNormal, Pareto};

/// How long the back end takes to serve one call once the call has a slot,
/// before the [`Condition::Slow`] factor is applied.
///
/// Service times are whole milliseconds, the resolution of tokio's timer:
/// each draw (and each constant) is rounded to the nearest millisecond, and a
/// positive one to at least 1 ms. Then what a call reports is what the clock
/// shows, to the nanosecond, in paused time.
///
/// Each call draws its base service time when it is made, in call order,
/// from a [`SmallRng`] seeded with the back end's seed: the `i`-th call of a
/// back end always gets the `i`-th draw, whatever the back end's condition.
/// [`ServiceTime::draws`] gives the same sequence, so a test can compute the
/// exact latencies it expects.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum ServiceTime {
    /// Every call takes exactly this long: the easiest to reason about in
    /// tests.
    Constant(Duration),
    /// Exponentially distributed with this mean (coefficient of variation 1):
    /// the memoryless textbook server.
    Exponential {
        /// Mean service time.
        mean: Duration,
    },
    /// Log-normally distributed with this mean and coefficient of variation
    /// (standard deviation / mean): the long right tail of real back ends.
    /// `cv = 0` is a constant.
    LogNormal {
        /// Mean service time.
        mean: Duration,
        /// Coefficient of variation, a finite number `>= 0`.
        cv: f64,
    },
    /// Gamma-distributed with this mean and coefficient of variation
    /// (shape `1 / cv²`, scale `mean × cv²`): `cv = 1` is exponential,
    /// above 1 more small values and a longer tail. `cv = 0` is a constant.
    Gamma {
        /// Mean service time.
        mean: Duration,
        /// Coefficient of variation, a finite number `>= 0`.
        cv: f64,
    },
    /// Pareto-distributed (a power-law tail) with this mean and tail index
    /// `alpha`: the smallest service time is `mean × (alpha − 1) / alpha`,
    /// and the chance of a call taking more than `x` times that falls as
    /// `x^−alpha`. `alpha` at or below 2 has an infinite variance: a few
    /// calls take very long indeed.
    Pareto {
        /// Mean service time.
        mean: Duration,
        /// Tail index, a finite number `> 1` (a mean exists only then).
        alpha: f64,
    },
}

impl Default for ServiceTime {
    /// A constant 10 ms.
    fn default() -> Self {
        ServiceTime::Constant(Duration::from_millis(10))
    }
}

impl ServiceTime {
    /// The distribution's mean.
    pub const fn mean(&self) -> Duration {
        match *self {
            ServiceTime::Constant(d) => d,
            ServiceTime::Exponential { mean }
            | ServiceTime::LogNormal { mean, .. }
            | ServiceTime::Gamma { mean, .. }
            | ServiceTime::Pareto { mean, .. } => mean,
        }
    }

    /// The first `n` base service times a back end built with this
    /// distribution and `seed` gives its calls, in call order (rounded to
    /// whole milliseconds).
    ///
    /// ```
    /// use std::time::Duration;
    /// use brownout::sim::ServiceTime;
    ///
    /// let st = ServiceTime::LogNormal { mean: Duration::from_millis(50), cv: 0.5 };
    /// assert_eq!(st.draws(7, 3)?, st.draws(7, 3)?);
    /// assert_ne!(st.draws(7, 3)?, st.draws(8, 3)?);
    /// # Ok::<(), brownout::sim::SimConfigError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`SimConfigError::Invalid`] if the distribution's parameters are
    /// invalid (a coefficient of variation that is negative or not finite,
    /// a Pareto `alpha` that is not a finite number `> 1`).
    pub fn draws(&self, seed: u64, n: usize) -> Result<Vec<Duration>, SimConfigError> {
        let mut sampler = Sampler::new(*self, seed)?;
        Ok((0..n).map(|_| sampler.sample()).collect())
    }

    pub(crate) fn validate(&self) -> Result<(), SimConfigError> {
        match *self {
            ServiceTime::LogNormal { cv, .. } | ServiceTime::Gamma { cv, .. }
                if !(cv.is_finite() && cv >= 0.0) =>
            {
                Err(SimConfigError::invalid(
                    "service_time.cv",
                    cv,
                    "a coefficient of variation must be a finite number >= 0",
                ))
            }
            ServiceTime::Pareto { alpha, .. } if !(alpha.is_finite() && alpha > 1.0) => {
                Err(SimConfigError::invalid(
                    "service_time.alpha",
                    alpha,
                    "a Pareto tail index must be a finite number > 1 (the mean is infinite at 1 and below)",
                ))
            }
            _ => Ok(()),
        }
    }
}

/// The seeded source of base service times.
#[derive(Debug)]
pub(crate) struct Sampler {
    rng: SmallRng,
    dist: Dist,
}

#[derive(Debug)]
enum Dist {
    Constant(Duration),
    Exp(Exp<f64>),
    LogNormal(LogNormal<f64>),
    Gamma(Gamma<f64>),
    Pareto(Pareto<f64>),
}

impl Sampler {
    pub(crate) fn new(service_time: ServiceTime, seed: u64) -> Result<Self, SimConfigError> {
        Ok(Self {
            rng: SmallRng::seed_from_u64(seed),
            dist: Dist::new(service_time)?,
        })
    }

    /// Draws from `service_time` from now on, with the same generator.
    pub(crate) fn set(&mut self, service_time: ServiceTime) -> Result<(), SimConfigError> {
        self.dist = Dist::new(service_time)?;
        Ok(())
    }
}

impl Dist {
    fn new(service_time: ServiceTime) -> Result<Self, SimConfigError> {
        service_time.validate()?;
        let dist = match service_time {
            ServiceTime::Constant(d) => Dist::Constant(d),
            ServiceTime::Exponential { mean }
            | ServiceTime::LogNormal { mean, .. }
            | ServiceTime::Gamma { mean, .. }
            | ServiceTime::Pareto { mean, .. }
                if mean.is_zero() =>
            {
                Dist::Constant(Duration::ZERO)
            }
            ServiceTime::Gamma { mean, cv: 0.0 } => Dist::Constant(mean),
            ServiceTime::Exponential { mean } => {
                let exp = Exp::new(1.0 / mean.as_secs_f64()).map_err(|_| {
                    SimConfigError::invalid(
                        "service_time.mean",
                        format_args!("{mean:?}"),
                        "an exponential mean must be > 0",
                    )
                })?;
                Dist::Exp(exp)
            }
            ServiceTime::LogNormal { mean, cv } => {
                let ln = LogNormal::from_mean_cv(mean.as_secs_f64(), cv).map_err(|_| {
                    SimConfigError::invalid(
                        "service_time",
                        format_args!("mean {mean:?}, cv {cv}"),
                        "a log-normal needs a mean > 0 and a finite cv >= 0",
                    )
                })?;
                Dist::LogNormal(ln)
            }
            ServiceTime::Gamma { mean, cv } => {
                let shape = 1.0 / (cv * cv);
                let scale = mean.as_secs_f64() * cv * cv;
                let gamma = Gamma::new(shape, scale).map_err(|_| {
                    SimConfigError::invalid(
                        "service_time",
                        format_args!("mean {mean:?}, cv {cv}"),
                        "a gamma needs a mean > 0 and a finite cv >= 0 (not too small)",
                    )
                })?;
                Dist::Gamma(gamma)
            }
            ServiceTime::Pareto { mean, alpha } => {
                let scale = mean.as_secs_f64() * (alpha - 1.0) / alpha;
                let pareto = Pareto::new(scale, alpha).map_err(|_| {
                    SimConfigError::invalid(
                        "service_time",
                        format_args!("mean {mean:?}, alpha {alpha}"),
                        "a Pareto needs a mean > 0 and a finite alpha > 1",
                    )
                })?;
                Dist::Pareto(pareto)
            }
        };
        Ok(dist)
    }
}

impl Sampler {
    pub(crate) fn sample(&mut self) -> Duration {
        let secs = match &self.dist {
            Dist::Constant(d) => return quantize(*d),
            Dist::Exp(exp) => exp.sample(&mut self.rng),
            Dist::LogNormal(ln) => ln.sample(&mut self.rng),
            Dist::Gamma(gamma) => gamma.sample(&mut self.rng),
            Dist::Pareto(pareto) => pareto.sample(&mut self.rng),
        };
        // A positive draw below a nanosecond (a gamma with a large cv has
        // many) is still a positive service time: at least 1 ms.
        let d = quantize(secs_to_duration(secs));
        if d.is_zero() && secs > 0.0 {
            super::TIMER_RESOLUTION
        } else {
            d
        }
    }
}

/// `base × factor` in whole milliseconds, exact for a factor of 1,
/// saturating, never panicking.
pub(crate) fn scale(base: Duration, factor: f64) -> Duration {
    if factor == 1.0 {
        return base;
    }
    // `as u64` saturates (and maps NaN to 0): no panic on any factor.
    quantize(Duration::from_nanos(
        (base.as_nanos() as f64 * factor).round() as u64,
    ))
}

/// Seconds to a duration, saturating instead of panicking.
fn secs_to_duration(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs).unwrap_or(if secs > 0.0 {
        Duration::MAX
    } else {
        Duration::ZERO
    })
}

/// Rounds to the nearest [`TIMER_RESOLUTION`](super::TIMER_RESOLUTION)
/// (whole milliseconds), and a positive time to at least one.
pub(crate) fn quantize(d: Duration) -> Duration {
    if d.is_zero() {
        return d;
    }
    let ms = ((d.as_nanos() + 500_000) / 1_000_000).max(1);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// What a simulated back end does with a call whose caller went away (its
/// response future was dropped: the client timed out or hung up).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Abandoned {
    /// The back end notices at once, like a server that watches its
    /// connections: the call leaves the queue, or gives its slot to the
    /// next queued call.
    #[default]
    Free,
    /// The back end keeps working on it, like most servers, which never
    /// learn that nobody waits for the answer: a call in service keeps its
    /// slot until its service time ends, and a queued call stays queued,
    /// then takes a slot for its whole service time when its turn comes
    /// (unless the back end is down by then). The caller's side is the
    /// same: the call counts as cancelled when its future is dropped;
    /// [`SimStats::abandoned_working`](super::SimStats::abandoned_working)
    /// counts the calls still being worked on.
    ///
    /// Releasing a slot later takes a tokio runtime (the back end's
    /// schedule task does it); a future dropped outside any runtime frees
    /// what it held at once.
    KeepWorking,
}

/// The state of the simulated back end: how it answers calls.
///
/// A condition applies to calls when they arrive and when they reach the
/// front of the queue; a call already in service finishes as it started.
/// While the back end is down (fast or hanging, including the down half of
/// [`Flapping`](Condition::Flapping)), nobody waits in its queue: calls
/// that were queued answer an error (or hang) as soon as the back end
/// notices, which is at the change itself or at the next arrival or
/// completion.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum Condition {
    /// Healthy: calls are served in their drawn service time.
    #[default]
    Up,
    /// Slow: every service time is multiplied by `factor`.
    Slow {
        /// Multiplier of the drawn service time, a finite number `> 0`
        /// (`5.0` is five times slower).
        factor: f64,
    },
    /// Down, answering [`SimError::Down`](super::SimError::Down) after the
    /// back end's down latency (1 ms unless the builder says otherwise):
    /// connection refused.
    DownFast,
    /// Down and hanging: calls never answer; the response future stays
    /// pending until the caller drops it (its own timeout).
    DownHang,
    /// Up for the first half of each `period`, then [`DownFast`](Self::DownFast)
    /// for the second half, measured on tokio time from the moment the
    /// condition was set (or scheduled).
    Flapping {
        /// The full up-then-down cycle, `> 0`.
        period: Duration,
    },
}

impl Condition {
    /// `Ok` if the condition's parameters are usable, or an error naming the
    /// field and value.
    ///
    /// # Errors
    ///
    /// [`SimConfigError::Invalid`] for a slow factor that is not a finite
    /// number `> 0`, or a zero flapping period.
    pub fn validate(&self) -> Result<(), SimConfigError> {
        match *self {
            Condition::Slow { factor } if !(factor.is_finite() && factor > 0.0) => {
                Err(SimConfigError::invalid(
                    "condition.factor",
                    factor,
                    "a slow factor must be a finite number > 0",
                ))
            }
            Condition::Flapping { period } if period.is_zero() => Err(SimConfigError::invalid(
                "condition.period",
                format_args!("{period:?}"),
                "a flapping period must be > 0",
            )),
            _ => Ok(()),
        }
    }

    /// Whether the condition is one of the down ones (not counting the down
    /// half of flapping).
    pub const fn is_down(&self) -> bool {
        matches!(self, Condition::DownFast | Condition::DownHang)
    }
}

/// One change to the back end, applied now
/// ([`SimHandle::apply`](super::SimHandle::apply)) or at a virtual time
/// ([`SimHandle::at`](super::SimHandle::at)).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Change {
    /// Switch to this condition.
    Condition(Condition),
    /// Serve at most this many calls at once (0: every call queues).
    Capacity(usize),
    /// Serve at most this share of the base capacity at once, rounded to the
    /// nearest whole call and at least 1 when the share is `> 0`. The share
    /// is a finite number `>= 0`; above 1 grows the capacity.
    CapacityFraction(f64),
    /// Draw base service times from this distribution for calls made from
    /// now on (the same seeded generator goes on; calls already made keep
    /// their draw).
    ServiceTime(ServiceTime),
}

impl From<ServiceTime> for Change {
    fn from(service_time: ServiceTime) -> Self {
        Change::ServiceTime(service_time)
    }
}

impl From<Condition> for Change {
    fn from(condition: Condition) -> Self {
        Change::Condition(condition)
    }
}

impl Change {
    /// `Ok` if the change is usable, or an error naming the field and value.
    ///
    /// # Errors
    ///
    /// [`SimConfigError::Invalid`] for a bad condition (see
    /// [`Condition::validate`]), a capacity fraction that is not a finite
    /// number `>= 0`, or a service time distribution with unusable
    /// parameters (see [`ServiceTime::draws`]).
    pub fn validate(&self) -> Result<(), SimConfigError> {
        match *self {
            Change::Condition(c) => c.validate(),
            Change::Capacity(_) => Ok(()),
            Change::CapacityFraction(f) if !(f.is_finite() && f >= 0.0) => {
                Err(SimConfigError::invalid(
                    "capacity_fraction",
                    f,
                    "a capacity fraction must be a finite number >= 0",
                ))
            }
            Change::CapacityFraction(_) => Ok(()),
            Change::ServiceTime(st) => Dist::new(st).map(|_| ()),
        }
    }
}

/// The capacity for a share of the base capacity: rounded, at least 1 when
/// the share is positive.
pub(crate) fn fraction_of(base: usize, fraction: f64) -> usize {
    if fraction <= 0.0 {
        return 0;
    }
    // `as` saturates: a huge fraction gives usize::MAX, never a panic.
    let c = (base as f64 * fraction).round() as usize;
    c.max(1)
}

/// A simulated back end's setting was unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SimConfigError {
    /// A field had a value the simulation cannot use.
    #[error("invalid simulated back end setting `{field}` = {value}: {expected}")]
    Invalid {
        /// The field, e.g. `condition.factor`.
        field: &'static str,
        /// The value given, as text.
        value: String,
        /// What the field accepts.
        expected: &'static str,
    },
    /// [`SimHandle::at`](super::SimHandle::at) was called for a future time
    /// outside a tokio runtime, so nothing could wake up to apply it.
    #[error("scheduling a simulated back end change needs a tokio runtime: call `at` inside one")]
    NoRuntime,
}

impl SimConfigError {
    pub(crate) fn invalid(
        field: &'static str,
        value: impl std::fmt::Display,
        expected: &'static str,
    ) -> Self {
        SimConfigError::Invalid {
            field,
            value: value.to_string(),
            expected,
        }
    }
}
