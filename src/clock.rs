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
//!
//! # Wall-clock time
//!
//! Maintenance windows are written in wall-clock time (RFC 3339). A clock
//! maps wall time onto its own time line through one anchor, a pair of
//! readings taken together: the coarse clock pairs its origin with
//! `SystemTime::now()` when it starts; tokio's clock pairs the moment it is
//! built with `SystemTime::now()`, or with a wall time of the caller's
//! choosing ([`Clock::tokio_at`]), so that tests in paused time can say
//! "it is now 2026-12-05 12:00 in Delhi" and advance from there.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use brownout::clock::Clock;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let then = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_457_600);
//! let clock = Clock::tokio_at(then);
//! assert_eq!(clock.system_time(), then);
//! tokio::time::advance(Duration::from_secs(90)).await;
//! assert_eq!(clock.system_time(), then + Duration::from_secs(90));
//! # }
//! ```

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant as StdInstant, SystemTime};

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
    /// The wall-clock time at which this clock read `anchor.1`.
    anchor: (SystemTime, Nanos),
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
        let coarse = Coarse::global();
        Self {
            source: Source::Coarse(coarse),
            anchor: coarse.wall,
        }
    }

    /// `tokio::time::Instant::now()` on every read: exact, follows paused
    /// time, but costs a thread-local lookup and, with tokio's `test-util`
    /// feature, a mutex.
    ///
    /// Wall-clock time on it starts from `SystemTime::now()`, taken as it is
    /// built, and then follows tokio's time (paused or not); see
    /// [`tokio_at`](Self::tokio_at) to choose it.
    pub fn tokio() -> Self {
        Self::tokio_at(SystemTime::now())
    }

    /// Tokio's clock, as [`tokio`](Self::tokio), on which it is `now` in
    /// wall-clock time when the clock is built. In paused time, wall-clock
    /// time then moves only as the test advances tokio's time, so a
    /// maintenance window written for December 2026 can be tested on any
    /// day.
    pub fn tokio_at(now: SystemTime) -> Self {
        // Start one second in, so that "0" never means "now".
        let start = Duration::from_secs(1);
        Self {
            source: Source::Tokio {
                origin: tokio::time::Instant::now() - start,
            },
            anchor: (now, saturating_nanos(start)),
        }
    }

    /// Now, in wall-clock time as this clock sees it: the wall time of its
    /// anchor moved on by the time this clock has counted since.
    pub fn system_time(&self) -> SystemTime {
        self.wall_at(self.now())
    }

    /// The wall-clock time at which this clock reads `at`.
    pub(crate) fn wall_at(&self, at: Nanos) -> SystemTime {
        let (wall, reading) = self.anchor;
        let moved = |nanos: u64| Duration::from_nanos(nanos);
        let shifted = if at >= reading {
            wall.checked_add(moved(at - reading))
        } else {
            wall.checked_sub(moved(reading - at))
        };
        shifted.unwrap_or(wall)
    }

    /// The reading of this clock at wall-clock time `wall`: 0 for a time
    /// before the clock's origin, `u64::MAX` for one some 584 years ahead.
    pub(crate) fn at_wall(&self, wall: SystemTime) -> Nanos {
        let (anchor, reading) = self.anchor;
        match wall.duration_since(anchor) {
            Ok(after) => reading.saturating_add(saturating_nanos(after)),
            Err(before) => reading.saturating_sub(saturating_nanos(before.duration())),
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
    /// `SystemTime::now()` taken with `origin`, and the reading it goes with.
    wall: (SystemTime, Nanos),
}

impl Coarse {
    fn global() -> &'static Coarse {
        static COARSE: OnceLock<&'static Coarse> = OnceLock::new();
        COARSE.get_or_init(|| {
            let start = Duration::from_secs(1);
            let (wall, origin) = (SystemTime::now(), StdInstant::now() - start);
            let coarse: &'static Coarse = Box::leak(Box::new(Coarse {
                now: AtomicU64::new(saturating_nanos(origin.elapsed())),
                origin,
                wall: (wall, saturating_nanos(start)),
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

    #[tokio::test(start_paused = true)]
    async fn wall_time_maps_onto_the_time_line_both_ways() {
        let noon = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_457_600);
        let clock = Clock::tokio_at(noon);
        let t0 = clock.now();
        assert_eq!(clock.at_wall(noon), t0);
        assert_eq!(clock.wall_at(t0), noon);
        let later = noon + Duration::from_secs(3600);
        assert_eq!(clock.at_wall(later) - t0, 3_600_000_000_000);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(clock.system_time(), later);
        assert_eq!(clock.at_wall(later), clock.now());
        // Before the origin: 0; far ahead: saturated.
        assert_eq!(clock.at_wall(SystemTime::UNIX_EPOCH), 0);
        let far = noon + Duration::from_secs(600 * 365 * 86_400);
        assert_eq!(clock.at_wall(far), u64::MAX);
    }

    #[test]
    fn the_coarse_clock_maps_wall_time_both_ways() {
        let clock = Clock::coarse();
        let at = clock.now() + 5_000_000_000;
        assert_eq!(clock.at_wall(clock.wall_at(at)), at);
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
