//! `trip = "throttle"`: the share a closed breaker turns away, the draw
//! that turns it away, and when it opens instead.

use proptest::prelude::*;

use super::thresholds::{Thresholds, Verdict};
use super::{BreakerCore, BreakerState};
use crate::clock::Nanos;
use crate::policy::{BreakerPolicy, Trip, WindowPolicy};

const ONE: f64 = 4_294_967_295.0;

fn policy(failure_rate: f64, slow_call_rate: f64) -> BreakerPolicy {
    BreakerPolicy {
        window: WindowPolicy::Count { size: 100 },
        failure_rate,
        slow_call_rate,
        minimum_calls: 10,
        ..BreakerPolicy::default()
    }
}

/// Admits a call at `now` and ends it: failed or not.
fn call(b: &BreakerCore, failed: bool, now: Nanos) -> Option<super::Transition> {
    let ticket = b.admit(now).verdict.expect("admitted");
    b.complete(ticket, failed, 0, now)
}

/// How many of `n` new calls the breaker throttles.
fn throttled_of(b: &BreakerCore, n: u32) -> u32 {
    (0..n).map(|_| u32::from(b.throttles())).sum()
}

/// The share SRE's adaptive throttling rejects, written from its formula
/// independently of `Thresholds::verdict`: `K = 1 / (1 - threshold)`.
fn expected_share(calls: u64, bad: u64, threshold: f64) -> f64 {
    if threshold >= 1.0 || (bad as f64) < threshold * calls as f64 {
        return 0.0;
    }
    let k = 1.0 / (1.0 - threshold);
    let good = (calls - bad) as f64;
    ((calls as f64 - k * good) / (calls as f64 + 1.0)).max(0.0)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// The verdict is SRE's share for the worse of the two rules, and
    /// opens exactly when a rule past its threshold saw no call go well.
    #[test]
    fn the_verdict_is_the_share_of_the_worse_rule(
        calls in 1u64..10_000,
        failed_share in 0.0..=1.0f64,
        slow_share in 0.0..=1.0f64,
        failure_rate in 0.01..=1.0f64,
        slow_call_rate in 0.01..=1.0f64,
    ) {
        let failures = (calls as f64 * failed_share) as u64;
        let slow = (calls as f64 * slow_share) as u64;
        let limits = Thresholds::new(&policy(failure_rate, slow_call_rate));
        let verdict = limits.verdict(calls, failures, slow);
        let past = |bad: u64, t: f64| bad > 0 && bad as f64 >= t * calls as f64;
        let opens = (past(failures, failure_rate) && failures == calls)
            || (past(slow, slow_call_rate) && slow == calls);
        if opens {
            prop_assert_eq!(verdict, Verdict::Open);
        } else {
            let want = expected_share(calls, failures, failure_rate)
                .max(expected_share(calls, slow, slow_call_rate));
            let Verdict::Throttle(got) = verdict else {
                return Err(TestCaseError::fail(format!("opened: {verdict:?}, want {want}")));
            };
            prop_assert!((f64::from(got) / ONE - want).abs() < 1e-6, "{} vs {}", f64::from(got) / ONE, want);
            prop_assert!(f64::from(got) / ONE < 1.0);
        }
    }

    /// The classic breaker opens at either threshold, and never throttles.
    #[test]
    fn trip_open_opens_at_the_threshold(
        calls in 1u64..10_000,
        failed_share in 0.0..=1.0f64,
        failure_rate in 0.01..=1.0f64,
    ) {
        let failures = (calls as f64 * failed_share) as u64;
        let limits = Thresholds::new(&BreakerPolicy { trip: Trip::Open, ..policy(failure_rate, 1.0) });
        let verdict = limits.verdict(calls, failures, 0);
        let trips = failures > 0 && failures as f64 / calls as f64 >= failure_rate;
        prop_assert_eq!(verdict, if trips { Verdict::Open } else { Verdict::Throttle(0) });
    }

    /// Of `n` calls drawn at a share `p`, `n·p` are turned away, give or
    /// take one: the draw has no randomness to be unlucky with.
    #[test]
    fn the_draw_turns_away_exactly_the_share(failures in 51u64..=90, n in 1u32..5_000) {
        let b = BreakerCore::new(&policy(0.5, 1.0), 1);
        // The failures spread evenly (no run long enough to open).
        for i in 0..100u64 {
            call(&b, (i * failures) / 100 != ((i + 1) * failures) / 100, 1);
        }
        prop_assert_eq!(b.state(1), BreakerState::Closed);
        let p = b.throttled_share();
        prop_assert!((p - expected_share(100, failures, 0.5)).abs() < 1e-6);
        let turned = f64::from(throttled_of(&b, n));
        prop_assert!((turned - f64::from(n) * p).abs() <= 1.0, "{} of {} at {}", turned, n, p);
    }
}

#[test]
fn a_back_end_that_serves_half_its_calls_is_never_throttled_nor_opened() {
    let b = BreakerCore::new(&policy(0.5, 1.0), 1);
    for i in 0..10_000 {
        assert_eq!(call(&b, i % 2 == 0, 1), None);
    }
    assert_eq!(b.state(1), BreakerState::Closed);
    assert_eq!(throttled_of(&b, 1_000), 0);
}

#[test]
fn three_failures_in_four_turn_away_half_the_calls() {
    let b = BreakerCore::new(&policy(0.5, 1.0), 1);
    for i in 0..1_000 {
        assert_eq!(call(&b, i % 4 != 0, 1), None, "call {i}");
    }
    // (100 - 2 × 25) / 101 of the next calls, give or take the one the
    // draw has under way.
    assert!((499..=500).contains(&throttled_of(&b, 1_010)));
    // The classic breaker would have opened at the tenth call.
    let classic = BreakerCore::new(
        &BreakerPolicy {
            trip: Trip::Open,
            ..policy(0.5, 1.0)
        },
        1,
    );
    let opened = (0..10).find_map(|i| call(&classic, i % 4 != 0, 1));
    assert_eq!(opened.map(|t| t.to), Some(BreakerState::Open));
}

#[test]
fn a_window_with_no_call_gone_well_opens() {
    let b = BreakerCore::new(&policy(0.5, 1.0), 1);
    let opened = (0..10).find_map(|_| call(&b, true, 1));
    assert_eq!(opened.map(|t| t.to), Some(BreakerState::Open));
}

#[test]
fn twice_minimum_calls_failures_in_a_row_open_whatever_the_window_holds() {
    // A time window full of successes from before the back end went down:
    // its rate stays under the threshold for a while, the run does not.
    let b = BreakerCore::new(
        &BreakerPolicy {
            window: WindowPolicy::Time {
                size: std::time::Duration::from_secs(10),
                buckets: 10,
            },
            ..policy(0.5, 1.0)
        },
        1,
    );
    for _ in 0..1_000 {
        call(&b, false, 1);
    }
    let run = (1..=20).find(|_| call(&b, true, 2).is_some());
    assert_eq!(run, Some(20), "opened at twice minimum_calls in a row");
    assert_eq!(b.state(2), BreakerState::Open);
}

#[test]
fn a_success_breaks_the_run() {
    let b = BreakerCore::new(&policy(0.99, 1.0), 1);
    for _ in 0..1_000 {
        call(&b, false, 1);
    }
    for round in 0..50 {
        for _ in 0..19 {
            assert_eq!(call(&b, true, 1), None, "round {round}");
        }
        assert_eq!(call(&b, false, 1), None);
    }
    assert_eq!(b.state(1), BreakerState::Closed);
}

#[test]
fn closing_after_an_open_period_forgets_the_share() {
    let b = BreakerCore::new(&policy(0.5, 1.0), 1);
    for i in 0..100 {
        call(&b, i % 10 != 0, 1);
    }
    assert!(b.throttled_share() > 0.5);
    // By hand, as the probes would: open, then half-open, then probes pass.
    b.manual(super::Manual::HalfOpenNow, 2);
    for _ in 0..3 {
        call(&b, false, 3);
    }
    assert_eq!(b.state(3), BreakerState::Closed);
    assert_eq!(b.throttled_share(), 0.0);
    assert_eq!(throttled_of(&b, 100), 0);
}

#[test]
fn a_reload_to_trip_open_stops_throttling_at_once() {
    let b = BreakerCore::new(&policy(0.5, 1.0), 1);
    for i in 0..100 {
        call(&b, i % 4 != 0, 1);
    }
    assert!(b.throttled_share() > 0.4);
    b.reconfigure(&BreakerPolicy {
        trip: Trip::Open,
        ..policy(0.5, 1.0)
    });
    assert_eq!(throttled_of(&b, 100), 0);
}

#[test]
fn a_back_end_failing_a_steady_five_in_six_does_not_open_on_its_own_runs() {
    // Forty failures in a row come once in 1,700 calls at five in six:
    // busy traffic meets such a run every minute. The throttle answers
    // the share; a run only as long as the share makes often is no news.
    let b = BreakerCore::new(&policy(0.5, 1.0), 1);
    for i in 0..600 {
        call(&b, i % 6 != 0, 1);
    }
    for _ in 0..60 {
        assert_eq!(call(&b, true, 1), None);
    }
    assert_eq!(b.state(1), BreakerState::Closed);
    // (The old rule, twice `minimum_calls` in a row, opened at the 20th.)
    // Once the window holds no call that went well, it opens.
    let opened = (0..100).find_map(|_| call(&b, true, 1));
    assert_eq!(opened.map(|t| t.to), Some(BreakerState::Open));
}

/// A breaker half-open by hand whose probes end `outcomes` (true: failed).
fn probes(trip: Trip, outcomes: &[bool]) -> BreakerState {
    let b = BreakerCore::new(
        &BreakerPolicy {
            trip,
            half_open_probes: 3,
            ..policy(0.5, 1.0)
        },
        1,
    );
    b.manual(super::Manual::HalfOpenNow, 2);
    for &failed in outcomes {
        call(&b, failed, 3);
    }
    b.state(3)
}

#[test]
fn throttling_probes_reopen_only_while_none_went_well() {
    // A dead back end reopens on as few probes as the classic breaker...
    assert_eq!(probes(Trip::Throttle, &[true, true]), BreakerState::Open);
    // ...but one that served a probe closes, and gets the throttle's
    // share, as a closed window opens only when no call in it went well.
    assert_eq!(
        probes(Trip::Throttle, &[false, true, true]),
        BreakerState::Closed
    );
    assert_eq!(
        probes(Trip::Throttle, &[true, false, true]),
        BreakerState::Closed
    );
    // The classic breaker reopens once the set is past its threshold.
    assert_eq!(probes(Trip::Open, &[false, true, true]), BreakerState::Open);
    assert_eq!(
        probes(Trip::Open, &[false, false, false]),
        BreakerState::Closed
    );
}
