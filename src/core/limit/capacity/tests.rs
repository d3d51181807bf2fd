//! The `capacity` learner, round by round.

use super::*;

fn idle_round(rtt: f64) -> WindowSample {
    WindowSample {
        samples: 40,
        rtt,
        duration: rtt,
        max_inflight: 10,
        ..WindowSample::default()
    }
}

#[test]
fn a_long_outage_forgets_a_slow_spells_baseline_and_a_short_one_keeps_it() {
    let mut capacity = Capacity::default();
    // Unloaded at 400 ms, then a slow spell teaches 1.6 s.
    capacity.update(100.0, &idle_round(0.4));
    assert_eq!(capacity.unloaded, 0.4);
    for _ in 0..40 {
        capacity.update(100.0, &idle_round(1.6));
    }
    assert!(capacity.unloaded > 1.5, "{}", capacity.unloaded);

    // A breaker that opened for seconds: the same back end.
    capacity.recovered(100.0, false);
    assert!(capacity.unloaded > 1.5, "{}", capacity.unloaded);
    // Back after an hour: as fast as it has ever been.
    capacity.recovered(100.0, true);
    assert_eq!(capacity.unloaded, 0.4);
    assert_eq!(capacity.floor, 0.4);
}

/// A round that presses on `limit`: `samples` calls of mean `rtt`
/// over `duration`, `failed` of them failed.
fn pressed(limit: f64, samples: u32, rtt: f64, duration: f64, failed: u32) -> WindowSample {
    WindowSample {
        samples,
        rtt,
        duration,
        dropped: failed,
        max_inflight: limit.ceil() as u32,
        blocked: 20,
        ..WindowSample::default()
    }
}

/// A learner holding `estimate` as the limit that served well, over a
/// back end whose unloaded latency it knows as `unloaded` seconds, a
/// queue already met.
fn cruising(estimate: f64, unloaded: f64) -> Capacity {
    Capacity {
        step: Step::Cruise,
        estimate,
        unloaded,
        floor: unloaded,
        met_queue: true,
        good: estimate,
        ..Capacity::default()
    }
}

/// A learner that knows a 400 ms back end and, demand pressing on a
/// limit of 100 at that latency, has stepped above it; and its limit.
fn stepping_up() -> (Capacity, f64) {
    let mut capacity = Capacity::default();
    capacity.update(100.0, &idle_round(0.4));
    let mut limit = 100.0;
    for _ in 0..10 {
        limit = capacity.update(limit, &pressed(limit, 100, 0.4, 0.4, 0));
        if limit > 100.0 {
            break;
        }
    }
    assert!(limit > 100.0, "a step up: {limit}");
    (capacity, limit)
}

#[test]
fn failures_of_a_step_up_that_went_back_do_not_start_a_test_below_it() {
    let (mut capacity, mut limit) = stepping_up();
    let above = limit;
    // It meets failures: back to the limit below it.
    limit = capacity.update(limit, &pressed(above, 100, 0.6, 0.6, 30));
    assert_eq!(limit, 100.0);
    // The calls admitted above it finish a round later, failing too:
    // they say nothing of the limit below, which served without them.
    limit = capacity.update(limit, &pressed(above, 100, 0.6, 0.6, 30));
    assert_eq!(limit, 100.0, "no test below the limit that served");
    for _ in 0..4 {
        limit = capacity.update(limit, &pressed(limit, 100, 0.4, 0.4, 0));
        assert!(limit >= 100.0, "{limit}");
    }
}

#[test]
fn failures_that_outlast_a_step_up_that_went_back_are_judged() {
    let (mut capacity, mut limit) = stepping_up();
    // The back end fails a third of the calls from the step on, at
    // the limit below it too: after the calls from above have
    // finished, a test below begins.
    let mut lowest = limit;
    for _ in 0..8 {
        limit = capacity.update(limit, &pressed(limit, 100, 0.6, 0.6, 30));
        lowest = lowest.min(limit);
    }
    assert!(lowest <= 50.0, "a test below: {lowest}");
}

#[test]
fn a_step_down_goes_below_the_calls_in_flight() {
    let mut capacity = Capacity::default();
    for _ in 0..5 {
        capacity.update(400.0, &idle_round(1.0));
    }
    // The less important classes use part of the limit, and rounds
    // are quiet enough that a quarter more latency is a queue.
    capacity.utilization = 0.6;
    capacity.spread = 0.2;
    // A queue inside the back end: 125 calls in flight on average
    // (100 a second at 1.25 s), far below the limit, none turned
    // away. A step down to a limit that lets as many through would
    // show nothing, and latency that did not fall there would be
    // read as a slower back end.
    let queued = WindowSample {
        samples: 100,
        rtt: 1.25,
        duration: 1.0,
        max_inflight: 140,
        ..WindowSample::default()
    };
    let mut limit = 400.0;
    for _ in 0..4 {
        limit = capacity.update(limit, &queued);
        if limit < 400.0 {
            break;
        }
    }
    let busy = 100.0 * 1.25 / capacity.utilization;
    assert!(limit <= busy * 0.75 + 1e-9, "{limit} against {busy}");
}

#[test]
fn throughput_that_holds_at_a_lower_limit_is_a_queue_even_if_latency_is_slow_to_fall() {
    let mut capacity = Capacity::default();
    for _ in 0..5 {
        capacity.update(200.0, &idle_round(0.4));
    }
    capacity.spread = 0.2;
    // Demand presses on a limit of 200 at twice the unloaded latency:
    // 250 calls a second, 200 in flight.
    let mut limit = 200.0;
    for _ in 0..4 {
        limit = capacity.update(limit, &pressed(limit, 200, 0.8, 0.8, 0));
        if limit < 200.0 {
            break;
        }
    }
    assert!(limit <= 150.0, "a step down: {limit}");
    // At the lower limit the back end delivers as many calls a second,
    // while latency falls only a little in the rounds it takes for the
    // calls admitted above to drain: the calls kept out were a queue,
    // not a slower back end.
    for _ in 0..3 {
        limit = capacity.update(limit, &pressed(limit, 200, 0.75, 0.8, 0));
    }
    assert!(capacity.unloaded < 0.5, "{}", capacity.unloaded);
    assert!(capacity.floor < 0.5, "{}", capacity.floor);
}

#[test]
fn a_step_down_that_answers_more_than_the_limit_above_goes_back() {
    let mut capacity = Capacity::default();
    // A healthy back end at 200 ms, demand below the limit of 100.
    for _ in 0..5 {
        capacity.update(100.0, &idle_round(0.2));
    }
    // A round that spans a lull: few calls answered, slow ones, and
    // some that found the limit full.
    let mut limit = 100.0;
    let mut lowest = limit;
    for _ in 0..3 {
        limit = capacity.update(limit, &pressed(limit, 20, 0.6, 2.0, 0));
        lowest = f64::min(lowest, limit);
    }
    assert!(lowest < 50.0, "a step down to test for a queue: {lowest}");
    // The back end is fast again and the lower limit answers several
    // times the calls a second: the higher limit held nothing back.
    for _ in 0..3 {
        limit = capacity.update(limit, &pressed(limit, limit as u32, 0.2, 0.2, 0));
    }
    assert!(limit >= 100.0, "back to the limit above: {limit}");
}

/// Rounds of 30 calls at 2 s pressing on the limit, with failures in
/// `pattern` whatever the limit (a tail of service times past a
/// timeout); the limits.
fn failing_rounds(pattern: &[u32]) -> Vec<f64> {
    let mut capacity = Capacity::default();
    capacity.update(60.0, &idle_round(2.0));
    let mut limit = 60.0;
    (0..60)
        .map(|round| {
            let failed = pattern[round % pattern.len()];
            limit = capacity.update(limit, &pressed(limit, 30, 2.0, 2.0, failed));
            limit
        })
        .collect()
}

#[test]
fn a_failure_share_within_a_rounds_chance_of_a_tenth_is_no_overload() {
    // 4 of 30 is over a tenth, but not by a round's chance.
    let limits = failing_rounds(&[4, 1, 1]);
    let lowest = limits.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(lowest >= 60.0, "{limits:?}");
}

#[test]
fn failures_that_do_not_fall_with_the_load_by_more_than_chance_leave_the_limit() {
    // 5 of 30 is overload by a round's chance; the step down sees 1 of
    // 30, a fall within the chance of two rounds of 30, and goes back.
    let limits = failing_rounds(&[5, 1, 1]);
    let last = limits[limits.len() - 1];
    assert!(last >= 60.0, "{limits:?}");
}

#[test]
fn small_rounds_are_judged_with_their_own_noise() {
    let mut capacity = Capacity::default();
    // Rounds of 64 calls whose means wander by 5% learn a spread of
    // about 0.3 a call...
    let mut limit = 100.0;
    for i in 0..80 {
        let rtt = if i % 2 == 0 { 0.2 } else { 0.21 };
        limit = capacity.update(
            limit,
            &WindowSample {
                max_inflight: 40,
                ..pressed(100.0, 64, rtt, rtt, 0)
            },
        );
    }
    let at_64 = capacity.tolerance();
    // ...and a round of 16 calls from the same back end is twice as
    // noisy: its tolerance is twice as wide.
    capacity.update(
        limit,
        &WindowSample {
            max_inflight: 8,
            ..pressed(100.0, 16, 0.2, 0.2, 0)
        },
    );
    let at_16 = capacity.tolerance();
    assert!(at_16 > at_64 * 1.8, "{at_64} at 64 calls, {at_16} at 16");
}

#[test]
fn rounds_of_calls_too_fast_to_measure_keep_the_limit() {
    // An in-process service that answers in a microsecond, called from
    // two threads: rounds of 16,384 calls whose latencies round to
    // nothing but for one to four descheduled ones, so that the mean is
    // a few units of the latency sum over all of them.
    let unit = super::super::state::RTT_UNIT as f64 / 1e9;
    let mut capacity = Capacity::default();
    let mut limit = 1000.0;
    for round in 0..200 {
        let stray = f64::from(1 + round % 4);
        let window = WindowSample {
            samples: 16_384,
            rtt: stray * unit / 16_384.0,
            duration: 0.003,
            max_inflight: 2,
            ..WindowSample::default()
        };
        limit = capacity.update(limit, &window);
        assert!(limit >= 1000.0, "round {round}: {limit}");
    }
}

/// A back end of 100 slots at 2 s whose timeout is near its latency:
/// past its slots, calls queue and a fifth of them time out; within
/// them, a few in a hundred do (the tail). `rounds` rounds pressing on
/// the limit from 100; the limits.
fn timeout_near_latency(rounds: usize) -> Vec<f64> {
    let mut capacity = Capacity::default();
    capacity.update(100.0, &idle_round(2.0));
    let mut limit: f64 = 100.0;
    (0..rounds)
        .map(|_| {
            let busy = limit.min(130.0);
            let rtt = 2.0 * (busy / 100.0).max(1.0);
            let samples = (busy.min(100.0) * rtt / 2.0) as u32;
            let failed = if busy > 105.0 {
                samples / 5
            } else {
                samples / 50
            };
            let round = WindowSample {
                max_inflight: busy.ceil() as u32,
                ..pressed(limit, samples, rtt, rtt, failed)
            };
            limit = capacity.update(limit, &round);
            limit
        })
        .collect()
}

#[test]
fn failures_a_step_up_brought_send_the_limit_back_where_it_was_not_below() {
    let limits = timeout_near_latency(150);
    let lowest = limits[20..].iter().copied().fold(f64::INFINITY, f64::min);
    assert!(lowest >= 90.0, "a test at half the limit: {limits:?}");
}

#[test]
fn steps_up_that_meet_failures_come_less_and_less_often() {
    let limits = timeout_near_latency(150);
    let over = limits[20..].iter().filter(|&&limit| limit > 105.0).count();
    assert!(
        over * 5 < limits.len() - 20,
        "{over} rounds past the slots: {limits:?}"
    );
}

#[test]
fn an_unload_test_that_went_too_far_is_read_with_the_rate_above_it() {
    // Cruising at 134 over a back end of 100 slots at 1.2 s, which
    // slows to 2 s: the calls it had started time out for a round
    // (30 of 115), and the test at a lower limit sees them stop.
    let mut capacity = cruising(134.0, 1.2);
    let mut limit = capacity.update(134.0, &pressed(134.0, 115, 2.33, 2.19, 30));
    assert!(limit < 67.0, "a test at a lower limit: {limit}");
    for _ in 0..3 {
        let busy = limit.min(100.0);
        limit = capacity.update(
            limit,
            &pressed(limit, (busy / 2.0 * 1.9) as u32, 2.0, 1.9, 1),
        );
    }
    // The lower limit delivers only what it lets through; at the limit
    // above, the back end delivered 39 calls a second, at 2 s: 78.
    assert!(limit >= 70.0, "{limit}");
}

#[test]
fn rounds_whose_callers_leave_bring_the_limit_to_what_succeeding_calls_use() {
    let mut capacity = Capacity::default();
    capacity.update(100.0, &idle_round(0.4));
    // Half the calls abandoned at a 1 s deadline, nobody refused a
    // slot: calls in flight are set by the callers' patience.
    let leaving = WindowSample {
        samples: 40,
        rtt: 0.45,
        duration: 0.5,
        max_inflight: 80,
        censored: 20,
        ..WindowSample::default()
    };
    let mut limit = 100.0;
    let mut limits = Vec::new();
    for _ in 0..10 {
        // Callers leave before the limit fills: four fifths of it.
        let round = WindowSample {
            max_inflight: (limit * 0.8) as u32,
            ..leaving
        };
        limit = capacity.update(limit, &round);
        limits.push(limit);
    }
    // 20 of 40 calls in 0.5 s succeed: 40 a second at 0.45 s is 18 in
    // flight that help. Not grown to twice the 80 in flight; down by
    // at most half a round, to 18 and no lower.
    assert_eq!(limits[..3], [50.0, 25.0, 18.0], "{limits:?}");
    assert!(limits.iter().all(|&l| l >= 18.0), "{limits:?}");
    assert_eq!(capacity.unloaded, 0.4, "no baseline from abandoned calls");
}

#[test]
fn one_lucky_small_round_at_a_tenth_of_the_limit_is_no_fall() {
    // Four in five calls fail at 100 (a back end ten times slower behind
    // a timeout); the test at a tenth sees 8 of 10, then 2 of 7.
    let mut capacity = cruising(100.0, 0.4);
    let mut limit = capacity.update(100.0, &pressed(100.0, 100, 2.9, 2.9, 80));
    assert!(limit <= 50.0, "a test below: {limit}");
    limit = capacity.update(limit, &pressed(limit, 10, 2.9, 2.9, 8));
    limit = capacity.update(limit, &pressed(limit, 7, 2.9, 2.9, 2));
    // 2 of 7 alone would read as a fall; 10 of 17 is none.
    assert_eq!(limit, 100.0);
}

/// A back end of 100 slots, eight times slower behind a timeout near its
/// latency: half of its calls fail whatever the load, and calls past its
/// slots queue and push more of them past the timeout. Demand presses on
/// `limit`; a round of 2.7 s, its counts off by a few percent (a fixed
/// sequence).
fn slow_behind_a_timeout(limit: f64, round: usize) -> WindowSample {
    let wobble = 1.0 + 0.04 * ((round * 7 % 5) as f64 - 2.0) / 2.0;
    let busy = limit.floor();
    let served_share = 0.5 * (100.0 / busy).min(1.0).powi(2);
    let samples = (busy * wobble).round() as u32;
    let failed = (f64::from(samples) * (1.0 - served_share)).round() as u32;
    pressed(limit, samples, 2.7, 2.7, failed)
}

#[test]
fn failures_that_do_not_depend_on_the_load_leave_a_climb_on_what_is_served() {
    let mut capacity = Capacity::default();
    capacity.update(60.0, &idle_round(0.4));
    let mut limit = 60.0;
    let limits: Vec<f64> = (0..400)
        .map(|round| {
            limit = capacity.update(limit, &slow_behind_a_timeout(limit, round));
            limit
        })
        .collect();
    // The unload tests found the failures the same at a lower limit; the
    // climb found that more in flight served more, up to the slots, and
    // that past them it served less.
    let late = &limits[200..];
    let near = late
        .iter()
        .filter(|&&l| (90.0..=110.0).contains(&l))
        .count();
    assert!(near * 10 >= late.len() * 8, "{limits:?}");
    let past = late.iter().filter(|&&l| l > 120.0).count();
    assert!(past * 10 <= late.len(), "{limits:?}");
}

#[test]
fn a_test_below_the_limits_minimum_is_judged_at_the_minimum() {
    // A test aimed at 7.9 runs at 10 where the limit's minimum is 10: its
    // rounds, 10 calls in flight, ran entirely at the limit in force.
    let mut capacity = cruising(79.0, 0.4);
    let to = capacity.update(79.0, &pressed(79.0, 70, 2.7, 2.7, 35));
    assert!(to < 10.0, "a test at a tenth: {to}");
    let limit = 10.0; // the minimum
    capacity.update(limit, &pressed(limit, 10, 2.7, 2.7, 5));
    let judged = capacity.update(limit, &pressed(limit, 10, 2.7, 2.7, 5));
    assert_eq!(judged, 79.0, "judged after two rounds at the minimum");
}

#[test]
fn a_limit_shown_to_overload_is_not_gone_back_to() {
    // Cruising at 400, a fifth of the calls fail; at the lower limit none
    // do, but latency still holds the queue the higher limit built: read
    // by Little's law it would put the limit back at 390.
    let mut capacity = cruising(400.0, 0.8);
    let mut limit = capacity.update(400.0, &pressed(400.0, 350, 2.6, 2.0, 50));
    assert!(limit <= 200.0, "a test below: {limit}");
    for _ in 0..2 {
        limit = capacity.update(limit, &pressed(limit, 200, 2.6, 2.0, 0));
    }
    assert!(limit <= 320.0, "{limit}");
    assert!(limit >= 200.0, "{limit}");
}

#[test]
fn a_queue_that_grows_a_little_each_round_is_not_learned_as_the_back_end() {
    // Demand below the limit, latency 1.5% longer each round: a queue
    // forming inside the back end at its slots' edge. Learned at a fifth
    // a round with no bound, the baseline would trail it by under the
    // tolerance for good, and the limit would keep doubling on the calls
    // in flight.
    let mut capacity = Capacity::default();
    for _ in 0..30 {
        capacity.update(100.0, &idle_round(0.4));
    }
    let mut rtt: f64 = 0.4;
    let seen = (0..80).any(|_| {
        rtt *= 1.015;
        capacity.update(100.0, &idle_round(rtt));
        capacity.queued(rtt)
    });
    assert!(seen, "unloaded {} against {rtt}", capacity.unloaded);
}
