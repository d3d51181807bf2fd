#![cfg(feature = "axum")]
//! What counts as evidence about the back end, through the HTTP stack
//! (`BrownoutLayer::from_policy(..).http()` on axum), in paused time.
//!
//! A caller's own deadline is never evidence that the back end failed: a
//! call abandoned at it is a censored latency (a slow call only if it had
//! already run for `slow_call_duration`). A request the back end never saw
//! (a `405` from axum's method router inside `route_layer`) is no evidence
//! either way. A request with less time left than the back end's typical
//! latency is answered at once rather than seated or let out of the room.
//! Every rejection carries a retry hint, `queue_full` included.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use brownout::{BreakerState, BrownoutLayer, Policy};
use metrics_util::debugging::DebuggingRecorder;
use tokio::time::{Instant, advance};
use tower::ServiceExt;

use support::metrics::{Gauges, REQUESTS, Seen};

const ROUTE: &str = "/slots";
const LATENCY: &str = "brownout_latency_seconds";

fn policy(text: &str) -> Policy {
    Policy::from_toml(text).expect("the test policy loads")
}

/// A breaker that opens after 5 calls at >= 50% failures (or all of them
/// slow, 1 s or more), for 5 s, with 3 probes; deadlines from
/// `x-request-timeout`.
const BREAKER: &str = r#"
    [breaker]
    window = { kind = "count", size = 10 }
    minimum_calls = 5
    failure_rate = 0.5
    slow_call_rate = 1.0
    slow_call_duration = "1s"
    open_for = "5s"
    open_backoff = { jitter = 0.0 }
    half_open_probes = 3
"#;

fn request(method: Method, headers: &[(&str, &str)]) -> Request {
    let mut builder = Request::builder().method(method).uri(ROUTE);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::empty()).unwrap()
}

async fn send(app: &Router, req: Request) -> Response {
    app.clone()
        .oneshot(req)
        .await
        .unwrap_or_else(|e| match e {})
}

/// The `reason` of a brownout answer (a 503 problem document).
async fn reason(response: Response) -> String {
    use http_body_util::BodyExt;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&bytes).expect("a problem document");
    json["reason"].as_str().expect("a reason").to_owned()
}

/// A `GET /slots` handler that takes `took` and answers `status`,
/// counting its calls.
fn handler(
    calls: Arc<AtomicU32>,
    took: Option<Duration>,
    status: StatusCode,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>> + Clone {
    move || {
        calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            match took {
                Some(took) => tokio::time::sleep(took).await,
                // A back end that hangs.
                None => std::future::pending().await,
            }
            (status, "slots").into_response()
        })
    }
}

/// Lets spawned requests run up to their next timer.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn tiny_deadlines_never_open_the_breaker_and_others_are_served() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(recorder.snapshotter(), Gauges::Last);
    let _local = metrics::set_default_local_recorder(&recorder);
    let layer = BrownoutLayer::from_policy(&policy(&format!(
        "{BREAKER}\n[waiting_room]\ndeadline_header = \"x-request-timeout\"\n"
    )))
    .http();
    let calls = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .route(
            ROUTE,
            get(handler(
                calls.clone(),
                Some(Duration::from_millis(50)),
                StatusCode::OK,
            )),
        )
        .layer(layer.clone());

    // 400 requests whose callers give the back end 1 ms (a healthy one
    // takes 50 ms): half over `x-request-timeout`, half over `grpc-timeout`.
    let mut tasks = Vec::new();
    for n in 0..400 {
        let header = if n % 2 == 0 {
            ("x-request-timeout", "1")
        } else {
            ("grpc-timeout", "1m")
        };
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            send(&app, request(Method::GET, &[header])).await
        }));
    }
    settle().await;
    advance(Duration::from_millis(2)).await;
    for task in tasks {
        let response = task.await.unwrap();
        assert_eq!(reason(response).await, "deadline");
    }
    assert!(
        calls.load(Ordering::SeqCst) > 0,
        "some reached the back end"
    );
    assert_eq!(layer.state(ROUTE), Some(BreakerState::Closed));
    let labels = |outcome: &'static str, reason: &'static str| {
        [("route", ROUTE), ("outcome", outcome), ("reason", reason)]
    };
    assert_eq!(seen.counter(REQUESTS, &labels("rejected", "deadline")), 400);
    assert!(
        seen.histogram(LATENCY, &[("route", ROUTE), ("outcome", "failure")])
            .is_empty(),
        "no abandoned call counted as a failure"
    );

    // Other callers are served.
    for _ in 0..20 {
        let app = app.clone();
        let response = tokio::spawn(async move { send(&app, request(Method::GET, &[])).await });
        settle().await;
        advance(Duration::from_millis(50)).await;
        assert_eq!(response.await.unwrap().status(), StatusCode::OK);
    }
    assert_eq!(layer.state(ROUTE), Some(BreakerState::Closed));
    assert_eq!(seen.counter(REQUESTS, &labels("served", "none")), 20);
}

#[tokio::test(start_paused = true)]
async fn options_to_a_get_route_leave_a_half_open_breaker_as_it_is() {
    let layer = BrownoutLayer::from_policy(&policy(&format!(
        "{BREAKER}\n[waiting_room]\ncapacity = 0\n"
    )))
    .http();
    let calls = Arc::new(AtomicU32::new(0));
    // A dead back end, behind a method router: `route_layer` puts the
    // stack outside it, so the router's own `405` goes through the stack.
    let app = Router::new()
        .route(
            ROUTE,
            get(handler(
                calls.clone(),
                Some(Duration::ZERO),
                StatusCode::INTERNAL_SERVER_ERROR,
            )),
        )
        .route_layer(layer.clone());
    for _ in 0..5 {
        let response = send(&app, request(Method::GET, &[])).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(layer.state(ROUTE), Some(BreakerState::Open));
    advance(Duration::from_secs(5)).await;
    assert_eq!(layer.state(ROUTE), Some(BreakerState::HalfOpen));

    // Any number of OPTIONS: the router answers 405 without calling the
    // back end; no probe is used up, none closes the breaker.
    for n in 0..50 {
        let response = send(&app, request(Method::OPTIONS, &[])).await;
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "OPTIONS {n}"
        );
        assert_eq!(
            layer.state(ROUTE),
            Some(BreakerState::HalfOpen),
            "OPTIONS {n}"
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "no OPTIONS reached the back end"
    );

    // Real probes find the back end still dead: two failures of three
    // probes reopen it.
    for _ in 0..2 {
        let response = send(&app, request(Method::GET, &[])).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(layer.state(ROUTE), Some(BreakerState::Open));
}

#[tokio::test(start_paused = true)]
async fn a_hanging_back_end_opens_the_breaker_though_every_caller_gives_up() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(recorder.snapshotter(), Gauges::Last);
    let _local = metrics::set_default_local_recorder(&recorder);
    let layer = BrownoutLayer::from_policy(&policy(&format!(
        "{BREAKER}\n[waiting_room]\ndeadline_header = \"x-request-timeout\"\n"
    )))
    .http();
    let calls = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .route(ROUTE, get(handler(calls.clone(), None, StatusCode::OK)))
        .layer(layer.clone());

    // Callers give up after 2 s, past `slow_call_duration` (1 s): each
    // abandoned call "took at least 2 s", a slow call, never a failure.
    for n in 0..5 {
        if n > 0 {
            assert_eq!(layer.state(ROUTE), Some(BreakerState::Closed), "call {n}");
        }
        let app = app.clone();
        let task = tokio::spawn(async move {
            send(&app, request(Method::GET, &[("x-request-timeout", "2000")])).await
        });
        settle().await;
        advance(Duration::from_secs(2)).await;
        assert_eq!(reason(task.await.unwrap()).await, "deadline");
    }
    assert_eq!(layer.state(ROUTE), Some(BreakerState::Open));
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    assert!(
        seen.histogram(LATENCY, &[("route", ROUTE), ("outcome", "failure")])
            .is_empty(),
        "slow, not failed"
    );
}

/// A limit of 1 in front of a back end that takes 100 ms, learned over a
/// few hundred calls.
async fn warmed_up(capacity: u32) -> (Router, Arc<AtomicU32>) {
    let layer = BrownoutLayer::from_policy(&policy(&format!(
        r#"
        [limit]
        algorithm = "fixed"
        initial = 1
        min = 1
        [waiting_room]
        capacity = {capacity}
        max_wait = "10s"
        deadline_header = "x-request-timeout"
        "#
    )));
    let calls = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .route(
            ROUTE,
            get(handler(
                calls.clone(),
                Some(Duration::from_millis(100)),
                StatusCode::OK,
            )),
        )
        .layer(layer.http());
    for _ in 0..300 {
        let app = app.clone();
        let task = tokio::spawn(async move { send(&app, request(Method::GET, &[])).await });
        settle().await;
        advance(Duration::from_millis(100)).await;
        assert_eq!(task.await.unwrap().status(), StatusCode::OK);
    }
    (app, calls)
}

#[tokio::test(start_paused = true)]
async fn a_request_with_less_time_than_the_back_end_needs_is_answered_at_once() {
    let (app, calls) = warmed_up(10).await;
    let before = calls.load(Ordering::SeqCst);
    // One call holds the only slot.
    let busy = {
        let app = app.clone();
        tokio::spawn(async move { send(&app, request(Method::GET, &[])).await })
    };
    settle().await;
    assert_eq!(calls.load(Ordering::SeqCst), before + 1);

    // 50 ms left, the back end takes 100: no seat, an answer now.
    let start = Instant::now();
    let response = send(&app, request(Method::GET, &[("x-request-timeout", "50")])).await;
    assert_eq!(start.elapsed(), Duration::ZERO, "answered at once");
    let retry_after: u64 = response.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "no tiny hint");
    assert_eq!(reason(response).await, "deadline");

    // 500 ms left: it waits for the slot and is served.
    let patient = {
        let app = app.clone();
        tokio::spawn(async move {
            send(&app, request(Method::GET, &[("x-request-timeout", "500")])).await
        })
    };
    settle().await;
    advance(Duration::from_millis(100)).await;
    assert_eq!(busy.await.unwrap().status(), StatusCode::OK);
    settle().await;
    advance(Duration::from_millis(100)).await;
    assert_eq!(patient.await.unwrap().status(), StatusCode::OK);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before + 2,
        "the hurried one never reached it"
    );
}

#[tokio::test(start_paused = true)]
async fn queue_full_carries_a_retry_after() {
    let (app, _calls) = warmed_up(1).await;
    let mut held = Vec::new();
    // One in the slot, one in the room's only place.
    for _ in 0..2 {
        let app = app.clone();
        held.push(tokio::spawn(async move {
            send(&app, request(Method::GET, &[])).await
        }));
        settle().await;
    }
    let response = send(&app, request(Method::GET, &[])).await;
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|value| value.to_str().unwrap().to_owned());
    assert_eq!(reason(response).await, "queue_full");
    assert_eq!(
        retry_after.as_deref(),
        Some("1"),
        "two turns of 100 ms, in whole seconds"
    );
    advance(Duration::from_millis(200)).await;
    for task in held {
        assert_eq!(task.await.unwrap().status(), StatusCode::OK);
    }
}

#[tokio::test(start_paused = true)]
async fn a_hanging_back_end_opens_the_breaker_though_its_callers_hang_up() {
    let layer = BrownoutLayer::from_policy(&policy(BREAKER)).http();
    let calls = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .route(ROUTE, get(handler(calls.clone(), None, StatusCode::OK)))
        .layer(layer.clone());

    // No deadline brownout knows of: each caller hangs up after 2 s (its
    // future is dropped), past `slow_call_duration` (1 s).
    for _ in 0..5 {
        let hung_up = tokio::time::timeout(
            Duration::from_secs(2),
            send(&app, request(Method::GET, &[])),
        )
        .await;
        assert!(hung_up.is_err(), "the back end hangs");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    assert_eq!(layer.state(ROUTE), Some(BreakerState::Open));
}

#[tokio::test(start_paused = true)]
async fn callers_hanging_up_early_leave_no_trace() {
    let layer = BrownoutLayer::from_policy(&policy(BREAKER)).http();
    let calls = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .route(ROUTE, get(handler(calls.clone(), None, StatusCode::OK)))
        .layer(layer.clone());

    // Callers that hang up after 500 ms, before `slow_call_duration`: the
    // calls "took at least 500 ms", which says nothing against the back end.
    for _ in 0..50 {
        let hung_up = tokio::time::timeout(
            Duration::from_millis(500),
            send(&app, request(Method::GET, &[])),
        )
        .await;
        assert!(hung_up.is_err());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 50);
    assert_eq!(layer.state(ROUTE), Some(BreakerState::Closed));
}

#[tokio::test(start_paused = true)]
async fn ignored_calls_give_back_their_slot() {
    use brownout::classify::{Outcome, classify_fn};
    use brownout::policy::Algorithm;
    use brownout::{AdaptiveLimitLayer, LimitPolicy};
    use tower::Layer;

    // One slot; every answer is "not evidence". Had an ignored call kept
    // its slot, the second call would be shed.
    let layer = AdaptiveLimitLayer::new(LimitPolicy {
        algorithm: Algorithm::Fixed,
        initial: 1,
        min: 1,
        max: 1,
        ..LimitPolicy::default()
    })
    .classify(classify_fn(|_: &Result<u32, std::io::Error>| {
        Outcome::Ignored
    }));
    let svc = layer.layer(tower::service_fn(|n: u32| async move {
        Ok::<_, std::io::Error>(n)
    }));
    for n in 0..100 {
        assert_eq!(svc.clone().oneshot(n).await.unwrap(), n);
    }
    assert_eq!(svc.inflight(), 0);
}
