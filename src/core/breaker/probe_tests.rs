//! `probe_after`: an open period the breaker's own verdict set ends early
//! once that many calls were turned away; one set by hand never does.

use super::{BreakerCore, BreakerState, Manual};
use crate::policy::{BreakerPolicy, Trip, WindowPolicy};

const SECOND: u64 = 1_000_000_000;

fn breaker(probe_after: u32) -> BreakerCore {
    BreakerCore::new(
        &BreakerPolicy {
            window: WindowPolicy::Count { size: 10 },
            minimum_calls: 5,
            trip: Trip::Open,
            open_for: std::time::Duration::from_secs(60),
            half_open_probes: 2,
            probe_after,
            ..BreakerPolicy::default()
        },
        7,
    )
}

fn fail_until_open(b: &BreakerCore, now: u64) {
    while b.state(now) == BreakerState::Closed {
        let ticket = b.admit(now).verdict.expect("closed admits");
        b.complete(ticket, true, 0, now);
    }
    assert_eq!(b.state(now), BreakerState::Open);
}

/// Calls turned away before one is let through, at most `limit`.
fn turned_away_before_a_probe(b: &BreakerCore, now: u64, limit: u32) -> Option<u32> {
    for n in 0..limit {
        let admission = b.admit(now);
        if let Ok(ticket) = admission.verdict {
            assert!(ticket.is_probe());
            assert!(admission.half_opened, "the first probe half-opens");
            return Some(n);
        }
    }
    None
}

#[test]
fn the_probe_goes_after_probe_after_calls_turned_away() {
    let b = breaker(50);
    fail_until_open(&b, SECOND);
    assert_eq!(turned_away_before_a_probe(&b, 2 * SECOND, 1_000), Some(50));
    assert_eq!(b.state(2 * SECOND), BreakerState::HalfOpen);
    // The probes fail: open again, armed again.
    for _ in 0..2 {
        if let Ok(ticket) = b.admit(2 * SECOND).verdict {
            b.complete(ticket, true, 0, 2 * SECOND);
        }
    }
    // (The second admission above was the first call turned away.)
    assert_eq!(b.state(2 * SECOND), BreakerState::Open);
    assert_eq!(turned_away_before_a_probe(&b, 3 * SECOND, 1_000), Some(49));
}

#[test]
fn without_probe_after_the_period_runs_to_its_end() {
    let b = breaker(0);
    fail_until_open(&b, SECOND);
    assert_eq!(turned_away_before_a_probe(&b, 2 * SECOND, 10_000), None);
    assert_eq!(turned_away_before_a_probe(&b, 62 * SECOND, 1), Some(0));
}

#[test]
fn a_period_set_by_hand_runs_to_its_end() {
    let b = breaker(10);
    fail_until_open(&b, SECOND);
    b.manual(Manual::OpenUntil(600 * SECOND), 2 * SECOND);
    assert_eq!(turned_away_before_a_probe(&b, 3 * SECOND, 10_000), None);
    assert_eq!(turned_away_before_a_probe(&b, 600 * SECOND, 1), Some(0));
}
