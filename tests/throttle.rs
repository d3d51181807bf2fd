//! `trip = "throttle"` (the default) through the whole stack, in paused
//! time: a back end that fails most calls but still serves some keeps
//! being served, the share turned away is answered at once with `Open`
//! (never seated in the waiting room), every request is accounted for, and
//! shadow mode only counts what it would have turned away.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use brownout::policy::{Algorithm, WindowPolicy};
use brownout::{BreakerState, BrownoutLayer, Mode, Policy, Reason, Rejected};
use metrics_util::debugging::DebuggingRecorder;
use support::metrics::{Gauges, Seen};
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt};

/// A back end that fails three calls in four (the fourth succeeds), after
/// holding each call as long as it asks; counts the calls it gets.
fn three_in_four_fail(
    calls: Arc<AtomicU64>,
) -> impl Service<Duration, Response = (), Error = BoxError, Future: Send> + Clone + Send {
    tower::service_fn(move |hold: Duration| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(hold).await;
            if n % 4 == 0 {
                Ok(())
            } else {
                Err::<(), BoxError>("back end failed".into())
            }
        }
    })
}

const HOLD: Duration = Duration::from_millis(10);

fn policy() -> Policy {
    let mut policy = Policy::default();
    policy.breaker.window = WindowPolicy::Count { size: 100 };
    policy.breaker.minimum_calls = 10;
    policy.limit.algorithm = Algorithm::Fixed;
    policy.limit.initial = 100;
    policy.limit.max = 100;
    policy.waiting_room.capacity = 100;
    policy.waiting_room.max_wait = Duration::from_secs(30);
    policy
}

#[derive(Debug, Default)]
struct Tally {
    served: u64,
    failed: u64,
    open: u64,
}

async fn run(layer: &BrownoutLayer, calls: Arc<AtomicU64>, n: u64) -> Tally {
    let svc = layer.layer(three_in_four_fail(calls));
    let mut tally = Tally::default();
    for _ in 0..n {
        let start = Instant::now();
        match svc.clone().oneshot(HOLD).await {
            Ok(()) => tally.served += 1,
            Err(err) => match err.downcast_ref::<Rejected>() {
                Some(rejected) => {
                    assert_eq!(rejected.reason(), Reason::Open);
                    assert!(rejected.retry_after().is_some(), "a retry hint");
                    assert_eq!(
                        start.elapsed(),
                        Duration::ZERO,
                        "answered at once, not seated"
                    );
                    tally.open += 1;
                }
                None => tally.failed += 1,
            },
        }
        assert_eq!(layer.state("default"), Some(BreakerState::Closed));
    }
    tally
}

#[tokio::test(start_paused = true)]
async fn a_back_end_that_serves_a_quarter_keeps_serving_and_half_is_turned_away() {
    let layer = BrownoutLayer::from_policy(&policy());
    let calls = Arc::new(AtomicU64::new(0));
    let tally = run(&layer, calls.clone(), 4_000).await;
    // Every request ended once, and only the admitted ones reached the
    // back end.
    assert_eq!(tally.served + tally.failed + tally.open, 4_000);
    assert_eq!(calls.load(Ordering::SeqCst), tally.served + tally.failed);
    // With a quarter of calls succeeding, SRE's rule at K = 2 turns away
    // (1 - 2 × 0.25) = half of the calls, and the back end keeps serving
    // a quarter of what reaches it.
    let share = tally.open as f64 / 4_000.0;
    assert!((0.45..=0.52).contains(&share), "turned away {share}");
    let reached = (tally.served + tally.failed) as f64;
    assert!((tally.served as f64 / reached - 0.25).abs() < 0.01);
    let health = layer.snapshot();
    let throttled = health.routes[0].throttled;
    assert!((0.45..=0.52).contains(&throttled), "{throttled}");
}

#[tokio::test(start_paused = true)]
async fn the_classic_breaker_opens_on_the_same_back_end() {
    let mut policy = policy();
    policy.breaker.trip = brownout::Trip::Open;
    let layer = BrownoutLayer::from_policy(&policy);
    let svc = layer.layer(three_in_four_fail(Arc::new(AtomicU64::new(0))));
    for _ in 0..10 {
        let _ = svc.clone().oneshot(HOLD).await;
    }
    assert_eq!(layer.state("default"), Some(BreakerState::Open));
}

#[tokio::test(start_paused = true)]
async fn shadow_mode_throttles_nothing() {
    let mut policy = policy();
    policy.breaker.mode = Mode::Shadow;
    let layer = BrownoutLayer::from_policy(&policy);
    let calls = Arc::new(AtomicU64::new(0));
    let tally = run(&layer, calls.clone(), 1_000).await;
    assert_eq!(tally.open, 0);
    assert_eq!(calls.load(Ordering::SeqCst), 1_000);
    assert!(
        layer.snapshot().routes[0].throttled > 0.4,
        "the share is still learned"
    );
}

#[tokio::test(start_paused = true)]
async fn a_throttled_arrival_is_answered_at_once_while_the_others_wait() {
    let mut policy = policy();
    policy.limit.initial = 1;
    policy.limit.max = 1;
    let layer = BrownoutLayer::from_policy(&policy);
    let calls = Arc::new(AtomicU64::new(0));
    run(&layer, calls.clone(), 200).await;
    assert!(layer.snapshot().routes[0].throttled > 0.4);
    let svc = layer.layer(three_in_four_fail(calls));
    // One call holds the only slot for a minute (the first the throttle
    // lets through); forty more arrive.
    let holder = loop {
        let holder = tokio::spawn(svc.clone().oneshot(Duration::from_secs(60)));
        tokio::task::yield_now().await;
        if !holder.is_finished() {
            break holder;
        }
    };
    assert_eq!(layer.snapshot().routes[0].inflight, 1);
    let arrivals: Vec<_> = (0..40)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let result = svc.oneshot(HOLD).await;
                (start.elapsed(), result)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1)).await;
    // The throttled share is answered now; the rest wait in the room.
    let waiting = layer.waiting("default");
    assert!((15..=25).contains(&waiting), "{waiting} waiting of 40");
    holder.abort();
    let mut at_once = 0;
    for arrival in arrivals {
        let (waited, result) = arrival.await.unwrap();
        match result {
            Err(err)
                if err.downcast_ref::<Rejected>().map(Rejected::reason) == Some(Reason::Open) =>
            {
                assert_eq!(waited, Duration::ZERO, "a throttled call never waits");
                at_once += 1;
            }
            // Served or failed by the back end, after waiting its turn.
            _ => assert!(waited > Duration::ZERO),
        }
    }
    assert_eq!(at_once + waiting, 40);
}

#[tokio::test(start_paused = true)]
async fn the_gauge_shows_the_share_and_goes_back_to_zero() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(recorder.snapshotter(), Gauges::Last);
    let _local = metrics::set_default_local_recorder(&recorder);
    let layer = BrownoutLayer::from_policy(&policy());
    let healthy = Arc::new(AtomicBool::new(false));
    let svc = layer.layer(tower::service_fn({
        let healthy = healthy.clone();
        let calls = Arc::new(AtomicU64::new(0));
        move |()| {
            let ok =
                healthy.load(Ordering::SeqCst) || calls.fetch_add(1, Ordering::SeqCst) % 4 == 0;
            async move {
                match ok {
                    true => Ok(()),
                    false => Err::<(), BoxError>("back end failed".into()),
                }
            }
        }
    }));
    let gauge =
        |seen: &mut Seen| seen.gauge(brownout::metrics::BREAKER_THROTTLE, &[("route", "default")]);
    for _ in 0..200 {
        let _ = svc.clone().oneshot(()).await;
    }
    let share = gauge(&mut seen).expect("the gauge was set");
    assert!((0.45..=0.52).contains(&share), "{share}");
    assert_eq!(share, layer.snapshot().routes[0].throttled);
    // The back end recovers: successes push the failures out of the window.
    healthy.store(true, Ordering::SeqCst);
    for _ in 0..200 {
        let _ = svc.clone().oneshot(()).await;
    }
    assert_eq!(gauge(&mut seen), Some(0.0));
    assert_eq!(layer.snapshot().routes[0].throttled, 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_maintenance_window_answers_with_its_own_reason_while_throttling() {
    use brownout::clock::Clock;
    use brownout::policy::MaintenanceWindow;
    use std::time::SystemTime;

    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
    let start = t0 + Duration::from_secs(60);
    let mut policy = policy();
    policy.maintenance = vec![
        MaintenanceWindow::new(start, start + Duration::from_secs(3600)).with_message("Upgrade."),
    ];
    let layer = BrownoutLayer::from_policy(&policy).clock(Clock::tokio_at(t0));
    run(&layer, Arc::new(AtomicU64::new(0)), 200).await;
    assert!(layer.snapshot().routes[0].throttled > 0.4, "throttling");
    tokio::time::advance(Duration::from_secs(61)).await;
    let svc = layer.layer(three_in_four_fail(Arc::new(AtomicU64::new(0))));
    for _ in 0..100 {
        let err = svc.clone().oneshot(HOLD).await.unwrap_err();
        let rejected = err.downcast_ref::<Rejected>().expect("brownout's answer");
        assert_eq!(rejected.reason(), Reason::Maintenance);
        assert_eq!(rejected.message(), Some("Upgrade."));
    }
}
