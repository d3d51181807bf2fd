//! A gate's maintenance windows, on its clock's time line.
//!
//! The admitted path pays one relaxed load and a compare: `now` against the
//! start of the next window (`u64::MAX` when there is none). Only from that
//! start on does a call look at the schedule itself (an `ArcSwap` load and
//! a binary search, no lock); the moment a window ends, the first call to
//! see it takes a mutex once to move `next_start` on and report the end, so
//! that exactly one caller runs the end-of-window steps.

use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::clock::{Clock, Nanos};
use crate::policy::MaintenanceWindow;
use crate::reject::{Reason, Rejected};

/// `next_start` when no window is ahead.
const NONE: Nanos = Nanos::MAX;

/// One window on the clock's time line: `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) start: Nanos,
    pub(crate) end: Nanos,
    message: Option<Arc<str>>,
}

impl Window {
    /// The answer to a call at `now`, inside the window: come back at its
    /// end, plus a [spread](retry_spread) so that the people told so do
    /// not all come back in the same second.
    pub(crate) fn rejection(&self, now: Nanos) -> Rejected {
        let remaining = self.end.saturating_sub(now);
        let rejected = Rejected::new(Reason::Maintenance).with_retry_after(Duration::from_nanos(
            remaining + retry_spread(remaining, now),
        ));
        match &self.message {
            Some(message) => rejected.with_message(message.clone()),
            None => rejected,
        }
    }
}

/// The least span a maintenance answer's retry hint is spread over.
const MIN_RETRY_SPREAD: Nanos = 30_000_000_000;
/// The most a maintenance answer's retry hint is spread past the end.
const MAX_RETRY_SPREAD: Nanos = 15 * 60 * 1_000_000_000;

/// How much later than the window's end a caller answered at `now` is told
/// to come back: up to a tenth of the time left, at least 30 s and at most
/// 15 minutes, chosen by the arrival instant.
///
/// Everyone told "come back at the end" would otherwise come back in the
/// same second and meet a back end just out of its upgrade, a waiting room
/// and a half-open breaker with a burst of the whole window's users. Spread
/// over a tenth of the wait, a herd that gathered over the window comes
/// back at about ten times the rate it gathered at; the 30 s floor spreads
/// those who came in the window's last minutes, who would otherwise all be
/// told "now". The spread is a function of the arrival instant, not of a
/// random source, so that a replay in virtual time gives the same answers.
pub(crate) fn retry_spread(remaining: Nanos, now: Nanos) -> Nanos {
    let most = (remaining / 10).clamp(MIN_RETRY_SPREAD, MAX_RETRY_SPREAD);
    // splitmix64's finaliser: neighbouring instants land far apart.
    let mut z = now.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    z % (most + 1)
}

/// Windows sorted by start, merged where they overlap or touch.
#[derive(Debug, Default, PartialEq, Eq)]
struct Schedule {
    windows: Box<[Window]>,
}

impl Schedule {
    /// The windows of a policy on `clock`'s time line; those over by `now`
    /// are left out.
    fn new(windows: &[MaintenanceWindow], clock: &Clock, now: Nanos) -> Self {
        let mut placed: Vec<Window> = windows
            .iter()
            .map(|window| Window {
                start: clock.at_wall(window.from()),
                end: clock.at_wall(window.until()),
                message: window.message().map(Arc::from),
            })
            .filter(|window| window.start < window.end && window.end > now)
            .collect();
        placed.sort_by_key(|window| window.start);
        let mut merged: Vec<Window> = Vec::with_capacity(placed.len());
        for window in placed {
            match merged.last_mut() {
                Some(last) if window.start <= last.end => {
                    last.end = last.end.max(window.end);
                    if last.message.is_none() {
                        last.message = window.message;
                    }
                }
                _ => merged.push(window),
            }
        }
        Self {
            windows: merged.into_boxed_slice(),
        }
    }

    /// The first window not over at `now` (it may not have started).
    fn current_or_next(&self, now: Nanos) -> Option<&Window> {
        let index = self.windows.partition_point(|window| window.end <= now);
        self.windows.get(index)
    }

    /// The window `now` is inside, if any.
    fn at(&self, now: Nanos) -> Option<&Window> {
        self.current_or_next(now)
            .filter(|window| window.start <= now)
    }

    /// The start of the first window not over at `now`.
    fn next_start(&self, now: Nanos) -> Nanos {
        self.current_or_next(now)
            .map_or(NONE, |window| window.start)
    }
}

/// What a call at `now` finds.
#[derive(Debug)]
pub(crate) enum Check {
    /// No window now.
    Clear,
    /// A window has just ended (or was removed while in force): this caller
    /// is the one to run the end-of-window steps. No window now.
    Ended,
    /// Inside a window: the answer.
    Inside(Rejected),
}

/// A gate's maintenance windows.
#[derive(Debug)]
pub(crate) struct Maintenance {
    /// Start of the first window not yet seen to be over; `NONE` if none.
    next_start: AtomicU64,
    schedule: ArcSwap<Schedule>,
    /// Taken only to move `next_start` on or replace the schedule.
    moving: Mutex<()>,
}

impl Maintenance {
    pub(crate) fn new(windows: &[MaintenanceWindow], clock: &Clock, now: Nanos) -> Self {
        let schedule = Schedule::new(windows, clock, now);
        Self {
            next_start: AtomicU64::new(schedule.next_start(now)),
            schedule: ArcSwap::from_pointee(schedule),
            moving: Mutex::new(()),
        }
    }

    /// Whether a window may be in force at `now`: the hot path's only cost.
    #[inline(always)]
    pub(crate) fn near(&self, now: Nanos) -> bool {
        now >= self.next_start.load(Relaxed)
    }

    /// Where a call at `now` stands; call it only when [`near`](Self::near).
    #[cold]
    pub(crate) fn check(&self, now: Nanos) -> Check {
        if let Some(window) = self.schedule.load().at(now) {
            return Check::Inside(window.rejection(now));
        }
        let _moving = self.moving.lock().unwrap_or_else(|e| e.into_inner());
        let schedule = self.schedule.load();
        if let Some(window) = schedule.at(now) {
            // Replaced meanwhile by a schedule with a window now.
            return Check::Inside(window.rejection(now));
        }
        let seen = self.next_start.load(Relaxed);
        self.next_start.store(schedule.next_start(now), Relaxed);
        // `seen` is a window's start: if it has come and we are outside
        // every window, that window is over, and we are the first to say so.
        if seen <= now {
            Check::Ended
        } else {
            Check::Clear
        }
    }

    /// The end of the window in force at `now` and the answer it gives, if
    /// a window is in force, without moving anything on.
    pub(crate) fn inside(&self, now: Nanos) -> Option<(Nanos, Rejected)> {
        if !self.near(now) {
            return None;
        }
        let schedule = self.schedule.load();
        let window = schedule.at(now)?;
        Some((window.end, window.rejection(now)))
    }

    /// When a call must look again: the end of the window in force, or
    /// the start of the next one.
    pub(crate) fn boundary(&self, now: Nanos) -> Option<Nanos> {
        if self.next_start.load(Relaxed) == NONE {
            return None;
        }
        let schedule = self.schedule.load();
        let window = schedule.current_or_next(now)?;
        Some(if window.start <= now {
            window.end
        } else {
            window.start
        })
    }

    /// Puts `windows` in force at `now`; `None` if they are the ones in
    /// force already. [`Check::Ended`] when a window in force (or due) at
    /// `now` is gone from the new schedule.
    pub(crate) fn replace(
        &self,
        windows: &[MaintenanceWindow],
        clock: &Clock,
        now: Nanos,
    ) -> Option<Check> {
        let schedule = Schedule::new(windows, clock, now);
        let _moving = self.moving.lock().unwrap_or_else(|e| e.into_inner());
        let seen = self.next_start.load(Relaxed);
        let old = self.schedule.load();
        let old_ahead = &old.windows[old.windows.partition_point(|w| w.end <= now)..];
        if *old_ahead == *schedule.windows {
            return None;
        }
        let inside = schedule.at(now).map(|window| window.rejection(now));
        self.next_start.store(schedule.next_start(now), Relaxed);
        self.schedule.store(Arc::new(schedule));
        Some(match inside {
            Some(rejected) => Check::Inside(rejected),
            None if seen <= now => Check::Ended,
            None => Check::Clear,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    const S: Nanos = 1_000_000_000;

    /// A clock on which wall time `UNIX_EPOCH + t` reads `t` seconds.
    fn clock() -> Clock {
        Clock::tokio_at(SystemTime::UNIX_EPOCH + Duration::from_secs(1))
    }

    fn window(from: u64, until: u64, message: Option<&str>) -> MaintenanceWindow {
        let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let window = MaintenanceWindow::new(at(from), at(until));
        match message {
            Some(message) => window.with_message(message),
            None => window,
        }
    }

    fn spans(schedule: &Schedule) -> Vec<(u64, u64, Option<&str>)> {
        schedule
            .windows
            .iter()
            .map(|w| (w.start / S, w.end / S, w.message.as_deref()))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn overlapping_and_touching_windows_merge_keeping_the_first_message() {
        let clock = clock();
        let windows = [
            window(50, 60, Some("later")),
            window(10, 20, None),
            window(15, 30, Some("second")),
            window(30, 40, Some("touching")),
            window(45, 46, Some("")),
            window(2, 3, Some("over")),
        ];
        let schedule = Schedule::new(&windows, &clock, 5 * S);
        assert_eq!(
            spans(&schedule),
            [
                (10, 40, Some("second")),
                (45, 46, None),
                (50, 60, Some("later"))
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_is_reported_over_once() {
        let clock = clock();
        let maintenance = Maintenance::new(&[window(10, 20, Some("m"))], &clock, S);
        assert!(!maintenance.near(9 * S));
        assert!(maintenance.near(10 * S));
        match maintenance.check(15 * S) {
            Check::Inside(rejected) => {
                let hint = rejected.retry_after().unwrap();
                assert!(
                    (Duration::from_secs(5)..=Duration::from_secs(35)).contains(&hint),
                    "{hint:?}: the 5 s to the end, spread by at most 30 s"
                );
                assert_eq!(rejected.message(), Some("m"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(maintenance.check(20 * S), Check::Ended));
        assert!(!maintenance.near(20 * S));
        assert!(matches!(maintenance.check(21 * S), Check::Clear));
        assert_eq!(maintenance.boundary(21 * S), None);
    }

    #[tokio::test(start_paused = true)]
    async fn replacing_the_window_in_force_ends_it() {
        let clock = clock();
        let maintenance = Maintenance::new(&[window(10, 20, None)], &clock, S);
        // The same windows, and some already over: nothing changes.
        let again = [window(10, 20, None), window(2, 3, None)];
        assert!(maintenance.replace(&again, &clock, 12 * S).is_none());
        assert_eq!(maintenance.inside(12 * S).map(|(end, _)| end), Some(20 * S));
        assert!(matches!(
            maintenance.replace(&[], &clock, 12 * S),
            Some(Check::Ended)
        ));
        assert!(maintenance.inside(12 * S).is_none());
        assert!(matches!(
            maintenance.replace(&[window(12, 30, None)], &clock, 12 * S),
            Some(Check::Inside(_))
        ));
        assert_eq!(maintenance.boundary(12 * S), Some(30 * S));
    }

    #[test]
    fn a_herd_told_to_come_back_at_the_end_comes_back_spread_out() {
        let end = 7_200 * S;
        let mut returns = std::collections::HashMap::<Nanos, u32>::new();
        // One arrival every 100 ms over the window's last five minutes.
        let arrivals = (0..3_000).map(|i| end - 300 * S + i * S / 10);
        for now in arrivals {
            let remaining = end - now;
            let spread = retry_spread(remaining, now);
            assert!(
                spread <= (remaining / 10).max(30 * S),
                "{spread} of {remaining}"
            );
            *returns.entry((now + remaining + spread) / S).or_default() += 1;
        }
        // Told exactly the end, all 3,000 would come back in one second.
        let busiest = returns.values().max().copied().unwrap();
        assert!(busiest <= 200, "{busiest} of 3,000 in the busiest second");
        assert!(returns.keys().all(|&second| second >= end / S));
        // A long window's spread is capped.
        assert!(retry_spread(7 * 86_400 * S, 12_345) <= 15 * 60 * S);
        assert!(
            retry_spread(9, 12_345) <= 30 * S,
            "a short wait: 30 s at most"
        );
    }
}
