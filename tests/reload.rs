//! Live policy reload of a running stack: state is kept, new
//! thresholds apply, bad policies leave the old one in force, a smaller
//! room turns its excess away by class, modes apply on the next request.

use std::time::Duration;

use brownout::policy::{Algorithm, WindowPolicy};
use brownout::priority::{Classes, Priority, priority_fn};
use brownout::{BreakerState, BrownoutLayer, Mode, Policy, Reason, Rejected, Trip};
use tower::{BoxError, Layer, Service, ServiceExt};

/// A request: its class and how the back end treats it.
#[derive(Debug, Clone, Copy)]
struct Call {
    class: u8,
    hold_ms: u64,
    fail: bool,
}

fn call(class: u8, hold_ms: u64, fail: bool) -> Call {
    Call {
        class,
        hold_ms,
        fail,
    }
}

fn backend() -> impl Service<Call, Response = (), Error = BoxError, Future: Send> + Clone + Send {
    tower::service_fn(|c: Call| async move {
        tokio::time::sleep(Duration::from_millis(c.hold_ms)).await;
        if c.fail {
            Err::<(), BoxError>("back end failed".into())
        } else {
            Ok(())
        }
    })
}

fn by_class(c: &Call, classes: &Classes) -> Priority {
    classes.clamp(Priority::new(c.class))
}

fn reason(result: &Result<(), BoxError>) -> Option<Reason> {
    result
        .as_ref()
        .err()?
        .downcast_ref::<Rejected>()
        .map(Rejected::reason)
}

fn base_policy() -> Policy {
    let mut policy = Policy::default();
    policy.breaker.window = WindowPolicy::Count { size: 10 };
    policy.breaker.minimum_calls = 4;
    policy.breaker.failure_rate = 0.9;
    // Opens at its threshold: these tests follow the classic breaker's
    // state through reloads.
    policy.breaker.trip = Trip::Open;
    policy.limit.algorithm = Algorithm::Fixed;
    policy.limit.initial = 10;
    policy
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_reload_keeps_the_window_and_applies_the_new_threshold() {
    // No waiting room: a rejected call is answered at once.
    let mut policy = base_policy();
    policy.waiting_room.capacity = 0;
    let layer = BrownoutLayer::from_policy(&policy).priority(priority_fn(by_class));
    let svc = layer.layer(backend());
    // Two failures and two successes: 50%, under the 90% threshold.
    for fail in [true, false, true, false] {
        let _ = svc.clone().oneshot(call(1, 1, fail)).await;
    }
    assert_eq!(layer.state("default"), Some(BreakerState::Closed));

    // Ops lower the threshold to 50%: the window keeps its four calls, so
    // the very next failure (3 of 5) opens the breaker.
    let mut stricter = policy.clone();
    stricter.breaker.failure_rate = 0.5;
    layer.handle().apply(stricter).unwrap();
    assert_eq!(
        layer.state("default"),
        Some(BreakerState::Closed),
        "the state was kept"
    );
    let _ = svc.clone().oneshot(call(1, 1, true)).await;
    assert_eq!(layer.state("default"), Some(BreakerState::Open));
    let rejected = svc.clone().oneshot(call(1, 1, false)).await;
    assert_eq!(reason(&rejected), Some(Reason::Open));
}

#[tokio::test(start_paused = true)]
async fn a_reload_keeps_the_learned_limit_within_the_new_bounds() {
    let mut policy = base_policy();
    policy.limit.algorithm = Algorithm::Aimd;
    policy.limit.initial = 2;
    let layer = BrownoutLayer::from_policy(&policy).priority(priority_fn(by_class));
    let mut svc = layer.layer(backend());
    // A window of sequential successes (one in flight is half the limit
    // of 2: not app-limited): AIMD grows the limit to 3.
    for _ in 0..70 {
        ServiceExt::<Call>::ready(&mut svc)
            .await
            .unwrap()
            .call(call(0, 5, false))
            .await
            .unwrap();
    }
    assert_eq!(layer.limit("default"), Some(3));

    // A new max of 50 keeps the learned 3; a new min of 5 brings it to 5.
    let mut roomier = policy.clone();
    roomier.limit.max = 50;
    layer.handle().apply(roomier).unwrap();
    assert_eq!(layer.limit("default"), Some(3));
    let mut higher = policy.clone();
    higher.limit.min = 5;
    higher.limit.initial = 5;
    layer.handle().apply(higher).unwrap();
    assert_eq!(layer.limit("default"), Some(5));
}

#[tokio::test(start_paused = true)]
async fn a_bad_policy_leaves_the_old_one_in_force_and_names_the_field() {
    let layer = BrownoutLayer::from_policy(&base_policy());
    let handle = layer.handle();
    let mut bad = base_policy();
    bad.limit.min = 20;
    let err = handle.apply(bad).unwrap_err();
    assert_eq!(err.to_string(), "limit.initial: 10 is below limit.min (20)");
    assert_eq!(*handle.current(), base_policy());

    // From a file: the error names the file and the field.
    let path = std::env::temp_dir().join(format!("brownout-reload-{}.toml", std::process::id()));
    std::fs::write(&path, "[breaker]\nfailure_rate = 1.5\n").unwrap();
    let err = handle.reload(&path).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("breaker.failure_rate: 1.5 is not in (0, 1]"),
        "{message}"
    );
    assert!(message.contains("brownout-reload-"), "{message}");
    std::fs::write(
        &path,
        "[breaker]\nwindow = { kind = \"count\", size = 10 }\nminimum_calls = 4\nfailure_rate = 0.25\n",
    )
    .unwrap();
    handle.reload(&path).unwrap();
    assert_eq!(handle.current().breaker.failure_rate, 0.25);
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test(start_paused = true)]
async fn changes_that_cannot_apply_live_are_refused() {
    let layer = BrownoutLayer::from_policy(&base_policy());
    let _svc = layer.layer(backend());
    let mut classes = base_policy();
    classes.priority.classes = vec!["vip".into(), "normal".into()];
    let err = layer.handle().apply(classes).unwrap_err().to_string();
    assert!(err.starts_with("priority: "), "{err}");
    let mut window = base_policy();
    window.breaker.window = WindowPolicy::Count { size: 50 };
    let err = layer.handle().apply(window).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "breaker.window: { kind = \"count\", size = 50 } cannot be applied while running"
        ),
        "{err}"
    );
    assert_eq!(*layer.handle().current(), base_policy());
}

#[tokio::test(start_paused = true)]
async fn a_smaller_room_turns_away_its_excess_least_important_and_newest_first() {
    let mut policy = base_policy();
    policy.limit.initial = 1;
    policy.limit.reserve = 0.0;
    let layer = BrownoutLayer::from_policy(&policy).priority(priority_fn(by_class));
    let svc = layer.layer(backend());
    let blocker = tokio::spawn(svc.clone().oneshot(call(0, 1_000, false)));
    settle().await;
    // Waiters: urgent, bulk(old), normal, bulk(new), normal.
    let mut waiters = Vec::new();
    for class in [0, 2, 1, 2, 1] {
        waiters.push((
            class,
            tokio::spawn(svc.clone().oneshot(call(class, 1, false))),
        ));
        settle().await;
    }
    assert_eq!(layer.waiting("default"), 5);

    let mut smaller = policy.clone();
    smaller.waiting_room.capacity = 2;
    layer.handle().apply(smaller).unwrap();
    settle().await;
    assert_eq!(layer.waiting("default"), 2);
    // The two bulk waiters and the newer normal one were turned away.
    let mut turned_away = Vec::new();
    for (i, (class, task)) in waiters.iter().enumerate() {
        if task.is_finished() {
            turned_away.push((i, *class));
        }
    }
    assert_eq!(turned_away, vec![(1, 2), (3, 2), (4, 1)]);
    for (i, (_, task)) in waiters.into_iter().enumerate() {
        let result = task.await.unwrap();
        if [1, 3, 4].contains(&i) {
            assert_eq!(reason(&result), Some(Reason::QueueFull));
        } else {
            assert!(result.is_ok(), "waiter {i} should be served");
        }
    }
    blocker.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_mode_change_applies_on_the_next_request() {
    let layer = BrownoutLayer::from_policy(&base_policy());
    let svc = layer.layer(backend());
    svc.clone().oneshot(call(1, 1, false)).await.unwrap();
    let mut forced = base_policy();
    forced.breaker.mode = Mode::ForcedOpen;
    layer.handle().apply(forced).unwrap();
    let result = svc.clone().oneshot(call(1, 1, false)).await;
    assert_eq!(reason(&result), Some(Reason::Open));
    layer.handle().apply(base_policy()).unwrap();
    svc.clone().oneshot(call(1, 1, false)).await.unwrap();
}
