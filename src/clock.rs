//! Time for the hot path: a coarse clock that costs one atomic load, and
//! tokio's clock when tokio's time is paused (tests, the drill).
//!
//! Reading `Instant::now()` costs 20–40 ns, and twice per call (start and
//! end) is more than brownout's whole per-request budget. Production reads a
//! process-wide timestamp that one background thread refreshes every
//! millisecond: a call's measured duration is then exact to within a
//! millisecond, and its error averages out over many calls because calls
//! start at random points between two ticks. Slow-call thresholds are
//! counted in seconds, so a millisecond is plenty.
//!
//! Under `tokio::time::pause()` (and `#[tokio::test(start_paused = true)]`)
//! the coarse clock would keep following real time while the test
//! advances virtual time, so a clock built while tokio's time is paused reads
//! `tokio::time::Instant` instead. [`Clock::detect`] picks between the two;
//! layers call it when they are built.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant as StdInstant};

/// Nanoseconds on a [`Clock`]'s own time line (not wall-clock time).
pub(crate) type Nanos = u64;

/// Interval at which the coarse clock's thread refreshes its timestamp.
pub const COARSE_RESOLUTION: Duration = Duration::from_millis(1);

/// A monotonic clock, cheap enough to read twice on every request.
///
/// Cloning is free. Every clone reads the same time line.
#[derive(Debug, Clone)]
pub struct Clock {
    source: Source,
}

#[derive(Debug, Clone)]
enum Source {
    /// The process-wide coarse timestamp.
    Coarse(&'static Coarse),
    /// tokio's (possibly paused) clock, measured from `origin`.
    Tokio { origin: tokio::time::Instant },
}

impl Clock {
    /// Tokio's clock when it is paused in the current runtime, the coarse
    /// clock otherwise. Build layers after `tokio::time::pause()` so that
    /// they follow virtual time.
    pub fn detect() -> Self {
        if tokio_time_is_paused() {
            Self::tokio()
        } else {
            Self::coarse()
        }
    }

    /// The coarse clock: one atomic load per read, refreshed every
    /// [`COARSE_RESOLUTION`] by a single background thread for the whole
    /// process, started on first use.
    pub fn coarse() -> Self {
        Self {
            source: Source::Coarse(Coarse::global()),
        }
    }

    /// `tokio::time::Instant::now()` on every read: exact, follows paused
    /// time, but costs a thread-local lookup and, with tokio's `test-util`
    /// feature, a mutex.
    pub fn tokio() -> Self {
        Self {
            // Start one second in, so that "0" never means "now".
            source: Source::Tokio {
                origin: tokio::time::Instant::now() - Duration::from_secs(1),
            },
        }
    }

    /// The tokio instant at which this clock will read `at`, for timers.
    pub(crate) fn instant(&self, at: Nanos) -> tokio::time::Instant {
        match &self.source {
            Source::Coarse(coarse) => {
                tokio::time::Instant::from_std(coarse.origin + Duration::from_nanos(at))
            }
            Source::Tokio { origin } => *origin + Duration::from_nanos(at),
        }
    }

    /// How late a reading may lag behind a timer set for it: one tick of
    /// the coarse clock, nothing for tokio's. Timers add it so that, when
    /// they fire, the clock reads at least their time.
    pub(crate) fn slack(&self) -> Duration {
        match &self.source {
            Source::Coarse(_) => COARSE_RESOLUTION,
            Source::Tokio { .. } => Duration::ZERO,
        }
    }

    /// Now, in nanoseconds on this clock's time line.
    #[inline]
    pub(crate) fn now(&self) -> Nanos {
        match &self.source {
            Source::Coarse(coarse) => coarse.now.load(Ordering::Relaxed),
            Source::Tokio { origin } => saturating_nanos(origin.elapsed()),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::detect()
    }
}

/// Converts a duration to nanoseconds, saturating at about 584 years.
pub(crate) fn saturating_nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Whether the current tokio runtime's clock is paused.
///
/// tokio has no public query, so this asks the clock itself: a paused clock
/// stands still while real time moves on, and a running one follows real
/// time. Outside a runtime the answer is no.
fn tokio_time_is_paused() -> bool {
    if tokio::runtime::Handle::try_current().is_err() {
        return false;
    }
    let before = tokio::time::Instant::now();
    let real = StdInstant::now();
    // Wait until real time has visibly moved; on a running clock tokio's
    // time then has moved too (it is real time), on a paused one it has not.
    while StdInstant::now() == real {
        std::hint::spin_loop();
    }
    tokio::time::Instant::now() == before
}

/// The process-wide coarse timestamp and the thread that keeps it fresh.
#[derive(Debug)]
struct Coarse {
    now: AtomicU64,
    /// The instant the readings count from.
    origin: StdInstant,
}

impl Coarse {
    fn global() -> &'static Coarse {
        static COARSE: OnceLock<&'static Coarse> = OnceLock::new();
        COARSE.get_or_init(|| {
            let origin = StdInstant::now() - Duration::from_secs(1);
            let coarse: &'static Coarse = Box::leak(Box::new(Coarse {
                now: AtomicU64::new(saturating_nanos(origin.elapsed())),
                origin,
            }));
            let spawned = std::thread::Builder::new()
                .name("brownout-clock".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(COARSE_RESOLUTION);
                        coarse
                            .now
                            .store(saturating_nanos(origin.elapsed()), Ordering::Relaxed);
                    }
                });
            if let Err(err) = spawned {
                // Without the thread the clock would stand still: say so
                // loudly rather than time every call as zero.
                tracing::error!(%err, "brownout: cannot start the coarse clock thread");
            }
            coarse
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paused_runtime_gets_the_tokio_clock() {
        let clock = Clock::detect();
        assert!(matches!(clock.source, Source::Tokio { .. }));
        let t0 = clock.now();
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now() - t0, 1_500_000_000);
    }

    #[tokio::test]
    async fn running_runtime_gets_the_coarse_clock() {
        assert!(matches!(Clock::detect().source, Source::Coarse(_)));
    }

    #[test]
    fn outside_a_runtime_the_clock_is_coarse_and_moves() {
        let clock = Clock::detect();
        assert!(matches!(clock.source, Source::Coarse(_)));
        let t0 = clock.now();
        // Real time, on purpose: this checks the real clock thread moves.
        // The wait is bounded and only ends early.
        let deadline = StdInstant::now() + Duration::from_secs(5);
        while clock.now() == t0 && StdInstant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(clock.now() > t0);
    }
}
