//! Answers operators see: a waiting room reloaded to capacity 0 sheds as a
//! fresh one does, and a stack that never overflows exports no `overflow`
//! series. Read through metrics-util's `DebuggingRecorder`, installed as
//! this thread's local recorder before the layer is built, in paused time.

mod support;

use std::time::Duration;

use brownout::policy::Algorithm;
use brownout::{BrownoutLayer, Policy, Reason, Rejected};
use metrics_util::debugging::DebuggingRecorder;
use tower::{BoxError, Layer, Service, ServiceExt};

use support::metrics::{Gauges, Seen};

const SHED_TOTAL: &str = "brownout_shed_total";

fn backend() -> impl Service<u64, Response = (), Error = BoxError, Future: Send> + Clone + Send {
    tower::service_fn(|hold_ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(hold_ms)).await;
        Ok::<(), BoxError>(())
    })
}

/// One call at a time, a room of `capacity`.
fn one_at_a_time(capacity: u32) -> Policy {
    let mut policy = Policy::default();
    policy.limit.algorithm = Algorithm::Fixed;
    policy.limit.initial = 1;
    policy.limit.min = 1;
    policy.waiting_room.capacity = capacity;
    policy
}

fn rejection(result: &Result<(), BoxError>) -> Option<&Rejected> {
    result.as_ref().err()?.downcast_ref::<Rejected>()
}

/// With the only slot held, what a second call is answered.
async fn second_call_while_busy<S>(svc: &S) -> Result<(), BoxError>
where
    S: Service<u64, Response = (), Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let first = tokio::spawn(svc.clone().oneshot(10_000));
    tokio::task::yield_now().await;
    let second = svc.clone().oneshot(1).await;
    first.abort();
    second
}

#[tokio::test(start_paused = true)]
async fn a_room_reloaded_to_capacity_zero_sheds_like_a_fresh_one() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(recorder.snapshotter(), Gauges::Last);
    let _local = metrics::set_default_local_recorder(&recorder);

    // A fresh start with capacity 0: shed, with a retry hint, counted.
    let fresh = BrownoutLayer::from_policy(&one_at_a_time(0));
    let fresh_answer = second_call_while_busy(&fresh.layer(backend())).await;
    let fresh_rejection = rejection(&fresh_answer).expect("rejected");
    assert_eq!(fresh_rejection.reason(), Reason::Shed);
    assert!(fresh_rejection.retry_after().is_some());
    let fresh_shed = seen.counter(SHED_TOTAL, &[("route", "default"), ("priority", "normal")]);
    assert_eq!(fresh_shed, 1);

    // A room of 500 reloaded to 0: the same answer.
    let layer = BrownoutLayer::from_policy(&one_at_a_time(500)).max_routes(4);
    let svc = layer.layer(backend());
    svc.clone().oneshot(1).await.unwrap();
    layer.handle().apply(one_at_a_time(0)).unwrap();
    let answer = second_call_while_busy(&svc).await;
    let rejected = rejection(&answer).expect("rejected");
    assert_eq!(
        rejected.reason(),
        Reason::Shed,
        "a room of capacity 0 is no room"
    );
    assert!(
        rejected.retry_after().is_some(),
        "a shed carries a retry hint"
    );
    // Both layers label their route `default`: one more shed counted.
    let shed = seen.counter(SHED_TOTAL, &[("route", "default"), ("priority", "normal")]);
    assert_eq!(shed, 2, "counted in {SHED_TOTAL}");

    // And back to 500: the call waits for the slot again.
    layer.handle().apply(one_at_a_time(500)).unwrap();
    let first = tokio::spawn(svc.clone().oneshot(100));
    tokio::task::yield_now().await;
    svc.clone().oneshot(1).await.unwrap();
    first.await.unwrap().unwrap();
}

/// `/one` for calls of 1 ms, `/two` for the others.
fn by_hold(hold: &u64) -> Option<&str> {
    Some(if *hold == 1 { "/one" } else { "/two" })
}

#[tokio::test(start_paused = true)]
async fn the_overflow_route_has_no_series_until_a_route_overflows() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let overflow_series = || {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| {
                key.key()
                    .labels()
                    .any(|label| label.key() == "route" && label.value() == "overflow")
            })
            .count()
    };
    let layer = BrownoutLayer::from_policy(&Policy::default())
        .max_routes(1)
        .route_by(brownout::stack::route_fn(by_hold));
    let svc = layer.layer(backend());
    svc.clone().oneshot(1).await.unwrap();
    assert_eq!(overflow_series(), 0, "no overflow yet");
    // A reload reconfigures the overflow gate too: still no series.
    layer.handle().apply(Policy::default()).unwrap();
    assert_eq!(overflow_series(), 0, "no overflow after a reload");

    // The second route overflows: its series appear, with the gauges the
    // gate set before.
    let mut seen = Seen::new(recorder.snapshotter(), Gauges::Last);
    svc.clone().oneshot(2).await.unwrap();
    assert_eq!(
        seen.counter(
            "brownout_requests_total",
            &[
                ("route", "overflow"),
                ("outcome", "served"),
                ("reason", "none")
            ]
        ),
        1
    );
    let limit = seen.gauge("brownout_limit", &[("route", "overflow")]);
    assert_eq!(
        limit,
        Some(f64::from(layer.limit("overflow").unwrap())),
        "the limit set before the first use is exported"
    );
    assert_eq!(
        seen.gauge("brownout_breaker_state", &[("route", "overflow")]),
        Some(0.0)
    );
}

/// A request to `/slots` with `headers`, trusted or not.
fn slots_request(headers: &[(&str, &str)], trusted: bool) -> http::Request<String> {
    let mut req = http::Request::builder().uri("/slots");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let mut req = req.body(String::new()).unwrap();
    if trusted {
        req.extensions_mut().insert(brownout::stack::Trusted);
    }
    req
}

#[tokio::test(start_paused = true)]
async fn only_trusted_callers_say_their_class_and_deadline() {
    use brownout::stack::TrustedCaller;

    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(recorder.snapshotter(), Gauges::Last);
    let _local = metrics::set_default_local_recorder(&recorder);
    let slow = tower::service_fn(|_: http::Request<String>| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
    });
    let layer = BrownoutLayer::from_policy(&one_at_a_time(0))
        .http()
        .trust_headers_if(TrustedCaller);
    let svc = layer.layer(slow);

    // A 10 ms deadline on a 1 s call: believed from a trusted caller only.
    let short = [("grpc-timeout", "10m")];
    let untrusted = svc.clone().oneshot(slots_request(&short, false)).await;
    assert_eq!(untrusted.unwrap().status(), http::StatusCode::OK);
    let trusted = svc.clone().oneshot(slots_request(&short, true)).await;
    assert_eq!(
        trusted.unwrap().status(),
        http::StatusCode::SERVICE_UNAVAILABLE,
        "abandoned at its deadline"
    );

    // `x-priority: urgent` while the only slot is held: an untrusted call
    // is shed as `normal`, a trusted one as `urgent`.
    let busy = tokio::spawn(svc.clone().oneshot(slots_request(&[], false)));
    tokio::task::yield_now().await;
    let urgent = [("x-priority", "urgent")];
    for trusted in [false, true] {
        let answer = svc.clone().oneshot(slots_request(&urgent, trusted)).await;
        assert_eq!(
            answer.unwrap().status(),
            http::StatusCode::SERVICE_UNAVAILABLE
        );
    }
    busy.abort();
    let shed = |seen: &mut Seen, class| {
        seen.counter(SHED_TOTAL, &[("route", "/slots"), ("priority", class)])
    };
    assert_eq!(shed(&mut seen, "normal"), 1);
    assert_eq!(shed(&mut seen, "urgent"), 1);
}
