//! Manual control of a running breaker, in paused time: `reset`,
//! `open_until` (a duration or a wall-clock time) and `half_open_now` on
//! the stack's handle, per route, and on keyed breakers per key; each
//! changes what the next requests get, hands a forced mode back to
//! `enforce`, and is reported as a transition (metrics, listener).

#![cfg(feature = "toml")]

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use brownout::breaker::Until;
use brownout::clock::Clock;
use brownout::listen::{Cause, Event};
use brownout::{
    BreakerPolicy, BreakerState, BrownoutLayer, CircuitBreakerLayer, Mode, Policy, Reason, Rejected,
};
use metrics_util::debugging::DebuggingRecorder;
use tokio::time::{Instant, advance};
use tower::{BoxError, Layer, Service, ServiceExt};

use support::metrics::{Gauges, Seen};

const TRANSITIONS: &str = "brownout_breaker_transitions_total";

/// A breaker that judges 5 calls of a window of 10, opens for a minute and
/// probes with 2; a roomy limit; a waiting room that holds a call 30 s (a
/// call waits for a breaker that probes within that, and is turned away at
/// once by one that opens for longer). The classic breaker, which opens at
/// its threshold: these tests act on its states.
const POLICY: &str = r#"
[breaker]
window = { kind = "count", size = 10 }
minimum_calls = 5
trip = "open"
open_for = "60s"
open_backoff = { jitter = 0.0 }
half_open_probes = 2

[limit]
algorithm = "fixed"
initial = 100
max = 100

[waiting_room]
capacity = 10
max_wait = "30s"
"#;

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_457_600)
}

type Transitions = Arc<Mutex<Vec<(String, BreakerState, BreakerState, Cause)>>>;

/// The stack of [`POLICY`] on a clock at [`t0`], a service through it to a
/// back end that fails when asked, and what its listener heard.
fn stack() -> (
    BrownoutLayer,
    impl Service<bool, Response = (), Error = BoxError, Future: Send> + Clone + Send,
    Transitions,
) {
    let heard = Transitions::default();
    let log = heard.clone();
    let policy = Policy::from_toml(POLICY).unwrap();
    let layer = BrownoutLayer::from_policy(&policy)
        .clock(Clock::tokio_at(t0()))
        .listener(move |event: Event<'_>| {
            if let Event::Breaker(t) = event {
                log.lock()
                    .unwrap()
                    .push((t.route.to_owned(), t.from, t.to, t.cause));
            }
        });
    let svc = layer.layer(tower::service_fn(|fail: bool| async move {
        if fail {
            Err::<(), BoxError>("back end down".into())
        } else {
            Ok(())
        }
    }));
    (layer, svc, heard)
}

fn rejected(result: Result<(), BoxError>) -> Rejected {
    let err = result.expect_err("turned away");
    err.downcast_ref::<Rejected>()
        .unwrap_or_else(|| panic!("a rejection, not {err}"))
        .clone()
}

fn take(heard: &Transitions) -> Vec<(BreakerState, BreakerState, Cause)> {
    std::mem::take(&mut *heard.lock().unwrap())
        .into_iter()
        .filter(|(route, ..)| route == "default")
        .map(|(_, from, to, cause)| (from, to, cause))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_reset_closes_the_breaker_and_clears_its_counts() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(recorder.snapshotter(), Gauges::Last);
    let _local = metrics::set_default_local_recorder(&recorder);
    let (layer, svc, heard) = stack();
    let handle = layer.handle();
    assert!(!handle.reset("default"), "a route not yet seen");
    for _ in 0..5 {
        let _ = svc.clone().oneshot(true).await;
    }
    assert_eq!(layer.state("default"), Some(BreakerState::Open));
    assert_eq!(
        rejected(svc.clone().oneshot(false).await).reason(),
        Reason::Open
    );
    take(&heard);

    assert!(handle.reset("default"));
    assert_eq!(layer.state("default"), Some(BreakerState::Closed));
    svc.clone().oneshot(false).await.expect("admitted at once");
    assert_eq!(
        take(&heard),
        vec![(BreakerState::Open, BreakerState::Closed, Cause::Manual)]
    );
    let labels = [("route", "default"), ("from", "open"), ("to", "closed")];
    assert_eq!(seen.counter(TRANSITIONS, &labels), 1);

    // With the success above, three failures, a reset, four more: the
    // window judges only the last four, so the breaker stays closed (it
    // would have opened at the fifth call without the reset); a fifth
    // opens it.
    for _ in 0..3 {
        let _ = svc.clone().oneshot(true).await;
    }
    assert!(handle.reset("default"));
    assert_eq!(
        take(&heard),
        vec![(BreakerState::Closed, BreakerState::Closed, Cause::Manual)],
        "a reset of a closed breaker is reported too: it cleared the counts"
    );
    for _ in 0..4 {
        let _ = svc.clone().oneshot(true).await;
    }
    assert_eq!(layer.state("default"), Some(BreakerState::Closed));
    let _ = svc.clone().oneshot(true).await;
    assert_eq!(layer.state("default"), Some(BreakerState::Open));
}

#[tokio::test(start_paused = true)]
async fn open_until_rejects_with_its_time_then_probes() {
    let (layer, svc, heard) = stack();
    let handle = layer.handle();
    svc.clone().oneshot(false).await.unwrap();

    // For a duration.
    assert!(handle.open_until("default", Duration::from_secs(60)));
    assert_eq!(layer.state("default"), Some(BreakerState::Open));
    advance(Duration::from_secs(15)).await;
    let r = rejected(svc.clone().oneshot(false).await);
    assert_eq!(
        (r.reason(), r.retry_after()),
        (Reason::Open, Some(Duration::from_secs(45)))
    );
    advance(Duration::from_secs(45)).await;
    assert_eq!(layer.state("default"), Some(BreakerState::HalfOpen));
    svc.clone().oneshot(false).await.unwrap();
    svc.clone().oneshot(false).await.unwrap();
    assert_eq!(layer.state("default"), Some(BreakerState::Closed));
    assert_eq!(
        take(&heard),
        vec![
            (BreakerState::Closed, BreakerState::Open, Cause::Manual),
            (BreakerState::Open, BreakerState::HalfOpen, Cause::Verdict),
            (BreakerState::HalfOpen, BreakerState::Closed, Cause::Verdict),
        ]
    );

    // Until a wall-clock time: an hour after the clock's start.
    let at = t0() + Duration::from_secs(3600);
    assert!(handle.open_until("default", Until::At(at)));
    let r = rejected(svc.clone().oneshot(false).await);
    assert_eq!(r.retry_after(), Some(Duration::from_secs(3600 - 60)));
    // A second open moves the next probe, and is reported.
    assert!(handle.open_until("default", Duration::from_secs(40)));
    let r = rejected(svc.clone().oneshot(false).await);
    assert_eq!(r.retry_after(), Some(Duration::from_secs(40)));
    assert_eq!(
        take(&heard),
        vec![
            (BreakerState::Closed, BreakerState::Open, Cause::Manual),
            (BreakerState::Open, BreakerState::Open, Cause::Manual),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_now_lets_the_probes_through_and_their_verdict_decides() {
    let (layer, svc, heard) = stack();
    let handle = layer.handle();
    svc.clone().oneshot(false).await.unwrap();
    handle.open_until("default", Duration::from_secs(3600));
    assert_eq!(
        rejected(svc.clone().oneshot(false).await).reason(),
        Reason::Open
    );
    take(&heard);

    assert!(handle.half_open_now("default"));
    assert_eq!(layer.state("default"), Some(BreakerState::HalfOpen));
    // The first probe fails: the breaker reopens, for its own period.
    let err = svc.clone().oneshot(true).await.unwrap_err();
    assert!(
        err.downcast_ref::<Rejected>().is_none(),
        "the probe reached the back end"
    );
    assert_eq!(layer.state("default"), Some(BreakerState::Open));
    assert_eq!(
        take(&heard),
        vec![
            (BreakerState::Open, BreakerState::HalfOpen, Cause::Manual),
            (BreakerState::HalfOpen, BreakerState::Open, Cause::Verdict),
        ]
    );
    // Half-open again by hand; two good probes close it.
    handle.half_open_now("default");
    svc.clone().oneshot(false).await.unwrap();
    svc.clone().oneshot(false).await.unwrap();
    assert_eq!(layer.state("default"), Some(BreakerState::Closed));
}

#[tokio::test(start_paused = true)]
async fn a_hand_on_a_forced_breaker_hands_it_back_to_enforce() {
    let (layer, svc, heard) = stack();
    let handle = layer.handle();
    svc.clone().oneshot(false).await.unwrap();
    handle.set_route_mode("default", Mode::ForcedOpen);
    assert_eq!(
        rejected(svc.clone().oneshot(false).await).reason(),
        Reason::Open
    );
    assert!(handle.reset("default"));
    assert_eq!(layer.snapshot().routes[0].mode, Mode::Enforce);
    svc.clone().oneshot(false).await.unwrap();
    assert_eq!(
        take(&heard),
        vec![
            (
                BreakerState::Closed,
                BreakerState::ForcedOpen,
                Cause::Manual
            ),
            (
                BreakerState::ForcedOpen,
                BreakerState::Closed,
                Cause::Manual
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn waiters_held_by_an_open_breaker_go_out_when_it_is_reset() {
    let (layer, svc, _heard) = stack();
    let handle = layer.handle();
    svc.clone().oneshot(false).await.unwrap();
    // Open for 20 s: within the room's 30 s, so calls wait for the probe.
    handle.open_until("default", Duration::from_secs(20));
    let start = Instant::now();
    let waiter = tokio::spawn(svc.clone().oneshot(false));
    advance(Duration::from_secs(1)).await;
    assert_eq!(layer.waiting("default"), 1);
    handle.reset("default");
    waiter.await.unwrap().expect("let out and served");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "served at the reset, not at the probe: {:?}",
        start.elapsed()
    );
    assert_eq!(layer.waiting("default"), 0);
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_are_controlled_per_key() {
    let layer =
        CircuitBreakerLayer::new(BreakerPolicy::default()).per_key(8, |key: &&'static str| *key);
    let svc = layer.layer(tower::service_fn(|_: &'static str| async {
        Ok::<_, BoxError>(())
    }));
    svc.clone().oneshot("a").await.unwrap();
    svc.clone().oneshot("b").await.unwrap();
    assert!(!layer.reset(&"never seen"));

    assert!(layer.open_until(&"a", Duration::from_secs(30)));
    let r = rejected(svc.clone().oneshot("a").await);
    assert_eq!(r.retry_after(), Some(Duration::from_secs(30)));
    svc.clone()
        .oneshot("b")
        .await
        .expect("another key is untouched");

    assert!(layer.half_open_now(&"a"));
    assert_eq!(layer.state(&"a"), Some(BreakerState::HalfOpen));
    assert!(layer.set_mode(&"b", Mode::ForcedOpen));
    assert_eq!(layer.state(&"b"), Some(BreakerState::ForcedOpen));
    assert!(svc.clone().oneshot("b").await.is_err());
    assert!(layer.reset(&"a"));
    assert!(layer.reset(&"b"));
    assert_eq!(layer.state(&"a"), Some(BreakerState::Closed));
    assert_eq!(layer.state(&"b"), Some(BreakerState::Closed));
    svc.clone().oneshot("b").await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_standalone_breaker_is_controlled_on_its_layer() {
    let layer = CircuitBreakerLayer::new(BreakerPolicy::default());
    let svc = layer.layer(tower::service_fn(|_: ()| async { Ok::<_, BoxError>(()) }));
    layer.open_until(Duration::from_secs(5));
    assert_eq!(
        rejected(svc.clone().oneshot(()).await).reason(),
        Reason::Open
    );
    layer.half_open_now();
    assert_eq!(layer.state(), BreakerState::HalfOpen);
    layer.reset();
    assert_eq!(layer.state(), BreakerState::Closed);
    svc.oneshot(()).await.unwrap();
}

// ---- the snapshot ---------------------------------------------------------

/// A fixed limit of 1 and a room of 10 that holds a call 30 s; the
/// breaker opens for a minute after 5 failures (longer than a wait: calls
/// are turned away at once), at its threshold (the classic breaker).
const TIGHT: &str = r#"
[breaker]
minimum_calls = 5
trip = "open"
open_for = "60s"
open_backoff = { jitter = 0.0 }

[limit]
algorithm = "fixed"
initial = 1
min = 1
max = 1
reserve = 0.0

[waiting_room]
capacity = 10
max_wait = "30s"
"#;

/// A request: its class by rank, how long the back end takes, whether it
/// fails.
type Req = (u8, Duration, bool);

#[allow(clippy::type_complexity)]
fn tight() -> (
    BrownoutLayer<
        brownout::fallback::RejectAsError,
        brownout::stack::SingleRoute,
        brownout::priority::PriorityFn<
            fn(&Req, &brownout::priority::Classes) -> brownout::Priority,
        >,
    >,
    impl Service<Req, Response = (), Error = BoxError, Future: Send> + Clone + Send,
) {
    let class: fn(&Req, &brownout::priority::Classes) -> brownout::Priority =
        |req, _| brownout::Priority::new(req.0);
    let layer = BrownoutLayer::from_policy(&Policy::from_toml(TIGHT).unwrap())
        .clock(Clock::tokio_at(t0()))
        .priority(brownout::priority::priority_fn(class));
    let svc = layer.layer(tower::service_fn(|(_, hold, fail): Req| async move {
        tokio::time::sleep(hold).await;
        if fail {
            Err::<(), BoxError>("back end down".into())
        } else {
            Ok(())
        }
    }));
    (layer, svc)
}

#[tokio::test(start_paused = true)]
async fn the_snapshot_shows_waiters_by_class_and_the_next_probe() {
    let (layer, svc) = tight();
    let minute = Duration::from_secs(60);
    // One call holds the only slot; two `bulk` and one `urgent` wait.
    let holder = tokio::spawn(svc.clone().oneshot((1, minute, false)));
    tokio::task::yield_now().await;
    let waiters: Vec<_> = [2, 2, 0]
        .into_iter()
        .map(|rank| tokio::spawn(svc.clone().oneshot((rank, Duration::ZERO, false))))
        .collect();
    advance(Duration::from_secs(1)).await;
    let snapshot = layer.handle().snapshot();
    let route = &snapshot.routes[0];
    assert_eq!(route.route, "default");
    assert_eq!(route.waiting, 3);
    assert_eq!(
        route.waiting_by_class,
        vec![
            ("urgent".to_owned(), 1),
            ("normal".to_owned(), 0),
            ("bulk".to_owned(), 2)
        ]
    );
    assert_eq!((route.next_probe_at, route.next_probe_in_ms), (None, None));
    let json = serde_json::to_string(&snapshot).unwrap();
    assert!(
        json.contains(r#""waiting_by_class":{"urgent":1,"normal":0,"bulk":2}"#),
        "{json}"
    );
    assert!(json.contains(r#""next_probe_at":null"#), "{json}");
    holder.abort();
    for waiter in waiters {
        waiter.await.unwrap().expect("served once the slot is free");
    }

    // Five failures open the breaker for a minute.
    for _ in 0..5 {
        let _ = svc.clone().oneshot((1, Duration::ZERO, true)).await;
    }
    assert_eq!(layer.state("default"), Some(BreakerState::Open));
    advance(Duration::from_millis(15_250)).await;
    let snapshot = layer.snapshot();
    let route = &snapshot.routes[0];
    assert_eq!(route.state, "open");
    assert_eq!(route.next_probe_in_ms, Some(44_750));
    // The breaker opened a second after the clock's start, for a minute.
    assert_eq!(route.next_probe_at, Some(t0() + Duration::from_secs(61)));
    let json = serde_json::to_value(&snapshot).unwrap();
    assert_eq!(json["routes"][0]["next_probe_in_ms"], 44_750);
    assert_eq!(
        json["routes"][0]["next_probe_at"],
        "2026-12-05T08:01:01.000Z"
    );
    // Half-open by hand: no next probe to wait for.
    layer.handle().half_open_now("default");
    assert_eq!(layer.snapshot().routes[0].next_probe_at, None);
}
