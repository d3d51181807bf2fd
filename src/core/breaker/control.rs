//! A breaker acted on by hand: reset (closed, counts cleared), opened
//! until a time, half-open now. Each is a transition like the breaker's
//! own, in a new generation (calls admitted before no longer count), and
//! hands a breaker in a forced mode back to `enforce`: the state set by
//! hand is the one enforced.

use std::time::{Duration, SystemTime};

use crate::clock::{Clock, Nanos, saturating_nanos};
use crate::policy::Mode;

use super::BreakerState;
use super::state::{BreakerCore, Transition};

/// Until when a breaker opened by hand stays open: a wall-clock time, or a
/// duration from now. Its next probe is then; if that time has passed, the
/// breaker is half-open at once.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use brownout::breaker::Until;
///
/// assert_eq!(Until::from(Duration::from_secs(60)), Until::For(Duration::from_secs(60)));
/// let noon = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_472_000);
/// assert_eq!(Until::from(noon), Until::At(noon));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Until this wall-clock time (as the layer's clock reads it).
    At(SystemTime),
    /// For this long from now.
    For(Duration),
}

impl From<SystemTime> for Until {
    fn from(at: SystemTime) -> Self {
        Until::At(at)
    }
}

impl From<Duration> for Until {
    fn from(d: Duration) -> Self {
        Until::For(d)
    }
}

impl Until {
    /// The time on `clock`'s time line.
    pub(crate) fn on(self, clock: &Clock) -> Nanos {
        match self {
            Until::At(at) => clock.at_wall(at),
            Until::For(d) => clock.now().saturating_add(saturating_nanos(d)),
        }
    }
}

/// What a hand does to a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Manual {
    /// Closed, its window emptied and its backoff forgotten.
    Reset,
    /// Open until this time on the clock's time line.
    OpenUntil(Nanos),
    /// Half-open: the next calls are probes.
    HalfOpenNow,
}

impl Manual {
    /// The action as a word, for logs.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Manual::Reset => "reset",
            Manual::OpenUntil(_) => "open_until",
            Manual::HalfOpenNow => "half_open_now",
        }
    }
}

impl BreakerCore {
    /// Does `action` at `now`; returns the transition, from the state
    /// callers saw (a forced mode included) to the one they see now. It is
    /// returned even when the state is the same (a reset of a closed
    /// breaker clears its counts; a second open moves the next probe).
    pub(crate) fn manual(&self, action: Manual, now: Nanos) -> Transition {
        match action {
            Manual::Reset => self.by_hand(BreakerState::Closed, 0, true, now),
            Manual::OpenUntil(until) => self.by_hand(BreakerState::Open, until, false, now),
            Manual::HalfOpenNow => self.by_hand(BreakerState::HalfOpen, 0, false, now),
        }
    }

    fn by_hand(&self, to: BreakerState, until: Nanos, clear: bool, now: Nanos) -> Transition {
        let forced = match self.mode() {
            Mode::ForcedOpen => Some(BreakerState::ForcedOpen),
            Mode::ForcedClosed => Some(BreakerState::ForcedClosed),
            Mode::Enforce | Mode::Shadow => None,
        };
        let before = self.put(to, until, clear, now);
        if forced.is_some() {
            self.set_mode(Mode::Enforce);
        }
        let after = self.state(now);
        Transition {
            from: forced.unwrap_or(before),
            to: after,
            open_for: (after == BreakerState::Open)
                .then(|| Duration::from_nanos(until.saturating_sub(now))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{BreakerPolicy, WindowPolicy};

    fn breaker() -> BreakerCore {
        BreakerCore::new(
            &BreakerPolicy {
                window: WindowPolicy::Count { size: 10 },
                minimum_calls: 5,
                ..BreakerPolicy::default()
            },
            7,
        )
    }

    fn fail(b: &BreakerCore, now: Nanos) -> Option<Transition> {
        let ticket = b.admit(now).verdict.expect("admitted");
        b.complete(ticket, true, 0, now)
    }

    #[test]
    fn a_reset_clears_the_counts() {
        let b = breaker();
        for _ in 0..4 {
            assert_eq!(fail(&b, 10), None);
        }
        let t = b.manual(Manual::Reset, 10);
        assert_eq!((t.from, t.to), (BreakerState::Closed, BreakerState::Closed));
        for _ in 0..4 {
            assert_eq!(fail(&b, 10), None, "four failures since the reset");
        }
        assert_eq!(fail(&b, 10).map(|t| t.to), Some(BreakerState::Open));
    }

    #[test]
    fn open_until_sets_the_next_probe_and_half_open_now_lets_it_through() {
        let b = breaker();
        let t = b.manual(Manual::OpenUntil(1_000), 10);
        assert_eq!((t.from, t.to), (BreakerState::Closed, BreakerState::Open));
        assert_eq!(t.open_for, Some(Duration::from_nanos(990)));
        assert_eq!(b.next_probe_at(10), Some(1_000));
        assert!(b.admit(500).verdict.is_err());
        let t = b.manual(Manual::HalfOpenNow, 600);
        assert_eq!((t.from, t.to), (BreakerState::Open, BreakerState::HalfOpen));
        assert!(b.admit(600).verdict.expect("a probe").is_probe());
    }

    #[test]
    fn a_hand_on_a_forced_breaker_hands_it_back_to_enforce() {
        let b = breaker();
        b.set_mode(Mode::ForcedOpen);
        let t = b.manual(Manual::Reset, 10);
        assert_eq!(
            (t.from, t.to),
            (BreakerState::ForcedOpen, BreakerState::Closed)
        );
        assert_eq!(b.mode(), Mode::Enforce);
        // An open period already over reads as half-open at once.
        let t = b.manual(Manual::OpenUntil(5), 10);
        assert_eq!(
            (t.from, t.to),
            (BreakerState::Closed, BreakerState::HalfOpen)
        );
        assert_eq!(t.open_for, None);
    }

    #[test]
    fn an_outcome_admitted_before_the_hand_is_ignored() {
        let b = breaker();
        let tickets: Vec<_> = (0..5).map(|_| b.admit(10).verdict.unwrap()).collect();
        b.manual(Manual::Reset, 10);
        for ticket in tickets {
            assert_eq!(b.complete(ticket, true, 0, 10), None);
        }
        assert_eq!(b.state(10), BreakerState::Closed);
    }
}
