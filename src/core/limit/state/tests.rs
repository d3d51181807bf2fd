//! The limiter's admission, windows and recovery.

use super::*;

fn core(initial: u32, reserve: f64) -> LimitCore {
    let policy = LimitPolicy {
        initial,
        reserve,
        algorithm: crate::policy::Algorithm::Fixed,
        ..LimitPolicy::default()
    };
    LimitCore::new(&policy, 3, 0)
}

#[test]
fn lower_classes_get_a_smaller_share_of_the_limit() {
    let core = core(100, 0.2);
    assert_eq!(core.cap(Priority::new(0)), 100);
    assert_eq!(core.cap(Priority::new(1)), 90);
    assert_eq!(core.cap(Priority::new(2)), 80);
    // Past the last class: treated as the last.
    assert_eq!(core.cap(Priority::new(9)), 80);
    // A tiny limit still admits one call of every class.
    assert_eq!(self::core(1, 0.5).cap(Priority::new(2)), 1);
}

#[test]
fn acquire_sheds_at_the_class_cap_and_release_frees() {
    let core = core(10, 0.2);
    let bulk = Priority::new(2);
    for _ in 0..8 {
        core.acquire(bulk).unwrap();
    }
    let shed = core.acquire(bulk).unwrap_err();
    assert_eq!(shed.reason(), Reason::Shed);
    assert!(shed.retry_after().is_some());
    // The urgent class still has room.
    core.acquire(Priority::new(0)).unwrap();
    core.acquire(Priority::new(0)).unwrap();
    assert!(core.acquire(Priority::new(0)).is_err());
    core.release();
    core.acquire(Priority::new(0)).unwrap();
    assert_eq!(core.inflight(), 10);
}

/// A one-class limiter of `initial` learning with `capacity`.
fn capacity_core(initial: u32) -> LimitCore {
    let policy = LimitPolicy {
        initial,
        algorithm: crate::policy::Algorithm::Capacity,
        ..LimitPolicy::default()
    };
    LimitCore::new(&policy, 1, 0)
}

#[test]
fn an_outage_counts_from_the_last_window_that_served_not_the_last_window() {
    let core = capacity_core(64);
    let ms = 1_000_000;
    // A round of calls served at 400 ms (a limit of 64 closes a window
    // at 32).
    for _ in 0..32 {
        core.acquire(Priority::new(0)).unwrap();
    }
    for _ in 0..32 {
        core.complete(400 * ms, false, 400 * ms);
    }
    let served = core.learning.lock().unwrap().served_at;
    assert_eq!(served, 400 * ms);
    // Ten minutes down: every 30 s a limit's worth of calls times out,
    // and their windows close all through it.
    let mut now = 400 * ms;
    for _ in 0..20 {
        now += 30_000 * ms;
        while core.acquire(Priority::new(0)).is_ok() {}
        while core.inflight() > 0 {
            core.complete(3_000 * ms, true, now);
        }
    }
    assert!(now - core.window_start.load(Relaxed) < LONG_OUTAGE);
    assert_eq!(core.learning.lock().unwrap().served_at, served);
    // The outage is over ten minutes long, not thirty seconds: the
    // learner is told so.
    assert!(now.saturating_sub(served) > LONG_OUTAGE);
}

#[test]
fn a_window_closes_after_one_round_trip_and_enough_samples() {
    let core = capacity_core(64);
    let ms = 1_000_000;
    for _ in 0..64 {
        core.acquire(Priority::new(0)).unwrap();
    }
    // A limit of 64 needs 32 samples: 31 are not enough, whatever the
    // time.
    for i in 0..31 {
        assert_eq!(core.complete(5 * ms, false, 20 * ms + i), None);
    }
    // The 32nd closes the window (10 ms, more than one mean RTT, have
    // passed): demand is below the limit, which keeps its headroom.
    assert_eq!(core.complete(5 * ms, false, 21 * ms), None);
    assert_eq!(core.inflight(), 32);
    assert_eq!(
        core.hot.0.load(Relaxed) & !(ONE_INFLIGHT - 1),
        core.hot.0.load(Relaxed),
        "window taken"
    );
}

#[test]
fn a_limit_of_one_reaches_thirty_within_a_few_seconds_of_100_ms_calls() {
    let policy = LimitPolicy {
        initial: 1,
        algorithm: crate::policy::Algorithm::Capacity,
        ..LimitPolicy::default()
    };
    let core = LimitCore::new(&policy, 1, 0);
    let ms = 1_000_000;
    let mut now = 0;
    let mut round_trips = 0;
    // Demand always presses on the limit; the back end serves 100 ms
    // calls at any concurrency (it has headroom).
    while core.limit() < 30 {
        let admitted = core.limit();
        for _ in 0..admitted {
            core.acquire(Priority::new(0)).unwrap();
        }
        assert!(core.acquire(Priority::new(0)).is_err(), "demand presses");
        now += 100 * ms;
        for _ in 0..admitted {
            core.complete(100 * ms, false, now);
        }
        round_trips += 1;
        assert!(round_trips <= 20, "limit {} after 2 s", core.limit());
    }
}

#[test]
fn a_back_end_faster_than_the_latency_resolution_still_grows_the_limit() {
    let policy = LimitPolicy {
        initial: 4,
        algorithm: crate::policy::Algorithm::Capacity,
        ..LimitPolicy::default()
    };
    let core = LimitCore::new(&policy, 1, 0);
    let us = 1_000;
    let mut now = 0;
    // 10 µs calls (0 units of the latency sum), demand always pressing:
    // windows of 10 ms.
    for _ in 0..400 {
        let admitted = core.limit();
        for _ in 0..admitted {
            core.acquire(Priority::new(0)).unwrap();
        }
        let _ = core.acquire(Priority::new(0));
        now += 10_000 * us;
        for _ in 0..admitted {
            core.complete(10 * us, false, now);
        }
        if core.limit() >= 64 {
            return;
        }
    }
    panic!("the limit stayed at {}", core.limit());
}
