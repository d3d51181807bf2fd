//! Deferral from the policy alone: a `[routes."…".defer]` section in the
//! policy text, `BrownoutLayer::try_from_policy(&policy)?.http()` on an
//! axum router, a back end that dies: the breaker opens, POSTs are answered
//! `202` with a ticket, the status endpoint says pending, and once the back
//! end is back the stack's own replayers (`layer.replay(router)`) send each
//! deferred request once, through the same router; the counters add up.
#![cfg(all(feature = "defer", feature = "toml", feature = "axum"))]

#[path = "support/tempdir.rs"]
mod tempdir;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use brownout::{BrownoutLayer, Policy};
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::ServiceExt;

use tempdir::TempDir;

type Labels = Vec<(String, String)>;

/// Counters summed over snapshots (a snapshot takes what was counted).
fn counters() -> &'static Mutex<HashMap<(String, Labels), u64>> {
    static SEEN: OnceLock<Mutex<HashMap<(String, Labels), u64>>> = OnceLock::new();
    SEEN.get_or_init(Default::default)
}

fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this test binary");
        snapshotter
    })
}

/// The counter `name` with (at least) `labels`, summed.
fn counter(name: &str, labels: &[(&str, &str)]) -> u64 {
    let mut seen = counters().lock().unwrap();
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        if let DebugValue::Counter(n) = value {
            let key = key.key();
            let mut l: Labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            l.sort();
            *seen.entry((key.name().to_owned(), l)).or_default() += n;
        }
    }
    seen.iter()
        .filter(|((n, l), _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, n)| *n)
        .sum()
}

/// What the back end received, in order.
#[derive(Debug, Clone, PartialEq)]
struct Received {
    body: String,
    key: Option<String>,
}

struct App {
    router: Router,
    layer: brownout::stack::HttpBrownoutLayer,
    up: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<Received>>>,
    _dir: TempDir,
}

fn app(route: &str) -> App {
    let dir = TempDir::new("defer-stack");
    let text = format!(
        r#"
        [breaker]
        window = {{ kind = "count", size = 10 }}
        minimum_calls = 4
        failure_rate = 0.5
        trip = "open"
        open_for = "5s"
        open_backoff = {{ multiplier = 1.0, max = "5s", jitter = 0.0 }}
        half_open_probes = 1

        [waiting_room]
        capacity = 0                    # no wait for the breaker's next probe

        [limit]
        algorithm = "fixed"
        initial = 4
        min = 1
        max = 4

        [routes."{route}".defer]
        path = {path:?}
        "#,
        path = dir.path().join("store").display().to_string(),
    );
    let policy = Policy::from_toml(&text).expect("the test policy loads");
    let layer = BrownoutLayer::try_from_policy(&policy)
        .expect("the stack builds")
        .http();
    let deferral = layer.deferral().expect("a deferring route").clone();
    let up = Arc::new(AtomicBool::new(true));
    let received = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let up = up.clone();
        let received = received.clone();
        move |req: Request<Body>| {
            let up = up.clone();
            let received = received.clone();
            async move {
                if !up.load(Ordering::SeqCst) {
                    return (StatusCode::INTERNAL_SERVER_ERROR, "down".to_owned());
                }
                let key = req
                    .headers()
                    .get("idempotency-key")
                    .map(|v| v.to_str().unwrap().to_owned());
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let body = String::from_utf8(body.to_vec()).unwrap();
                received.lock().unwrap().push(Received {
                    body: body.clone(),
                    key,
                });
                (StatusCode::CREATED, format!("booked {body}"))
            }
        }
    };
    let router = Router::new()
        .route(route, post(handler))
        .route_layer(layer.clone())
        .layer(deferral.status_layer());
    App {
        router,
        layer,
        up,
        received,
        _dir: dir,
    }
}

impl App {
    async fn send(&self, req: Request<Body>) -> (StatusCode, http::HeaderMap, serde_json::Value) {
        let response = self.router.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (status, headers, json)
    }
}

fn post_to(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_policy_alone_defers_what_an_open_breaker_rejects_and_replays_it_once() {
    snapshotter();
    let route = "/applications";
    let app = app(route);
    let requests = |outcome: &'static str| {
        counter(
            "brownout_requests_total",
            &[("route", route), ("outcome", outcome)],
        )
    };

    // Healthy: served, nothing deferred.
    let (status, _, _) = app.send(post_to(route, "first")).await;
    assert_eq!(status, StatusCode::CREATED);

    // The back end dies: its 500s open the breaker.
    app.up.store(false, Ordering::SeqCst);
    let mut failed = 0;
    let mut tickets = Vec::new();
    for i in 0..8 {
        let (status, headers, json) = app.send(post_to(route, &format!("late-{i}"))).await;
        match status {
            StatusCode::INTERNAL_SERVER_ERROR => failed += 1,
            StatusCode::ACCEPTED => {
                assert_eq!(json["status"], "pending", "{json}");
                assert_eq!(json["reason"], "open", "{json}");
                let location = headers[header::LOCATION].to_str().unwrap().to_owned();
                assert_eq!(
                    location,
                    format!("/deferred/{}", json["ticket"].as_str().unwrap())
                );
                tickets.push((format!("late-{i}"), location));
            }
            other => panic!("unexpected {other}: {json}"),
        }
    }
    // A success and three failures: over the failure rate at minimum_calls.
    assert_eq!(failed, 3, "the breaker opens at minimum_calls");
    assert_eq!(failed + tickets.len(), 8);
    assert!(!tickets.is_empty(), "nothing deferred");
    for (_, location) in &tickets {
        let (status, _, json) = app.send(get(location)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json["status"], "pending", "{json}");
    }
    // An unknown ticket is a 404 from the status endpoint.
    let (status, _, _) = app.send(get("/deferred/not-a-ticket")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    assert_eq!(
        counter(
            brownout::defer::DEFERRED_TOTAL,
            &[("route", route), ("reason", "open")]
        ),
        tickets.len() as u64
    );
    // Conservation: every request to the route ended once.
    assert_eq!(requests("served"), 1 + failed as u64);
    assert_eq!(
        counter(
            "brownout_requests_total",
            &[
                ("route", route),
                ("outcome", "rejected"),
                ("reason", "open")
            ]
        ),
        tickets.len() as u64
    );
    assert_eq!(requests("cancelled"), 0);

    // Back: the stack's replayers send each deferred request once, in
    // order, through the same router (and so the same breaker and limit).
    app.up.store(true, Ordering::SeqCst);
    let replayers = app.layer.replay::<Body, _, _>(app.router.clone());
    assert_eq!(replayers.len(), 1);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let received = app.received.lock().unwrap().clone();
    let bodies: Vec<&str> = received.iter().map(|r| r.body.as_str()).collect();
    let mut expected = vec!["first"];
    expected.extend(tickets.iter().map(|(body, _)| body.as_str()));
    assert_eq!(bodies, expected, "each once, oldest first");
    for ((_, location), seen) in tickets.iter().zip(&received[1..]) {
        let ticket = location.rsplit('/').next().unwrap();
        assert_eq!(seen.key.as_deref(), Some(ticket), "the ticket is the key");
        let (_, _, json) = app.send(get(location)).await;
        assert_eq!(json["status"], "served", "{json}");
        assert_eq!(json["answer"]["status"], 201, "{json}");
    }
    assert_eq!(
        counter(
            brownout::defer::REPLAYED_TOTAL,
            &[("route", route), ("outcome", "served")]
        ),
        tickets.len() as u64
    );
    // The replays went through the stack: served there too, none deferred
    // again.
    assert_eq!(requests("served"), 1 + (failed + tickets.len()) as u64);
    assert_eq!(
        counter(brownout::defer::DEFERRED_TOTAL, &[("route", route)]),
        tickets.len() as u64
    );
    for replayer in replayers {
        replayer.stop().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_replay_the_stack_still_rejects_is_not_deferred_again_and_waits() {
    snapshotter();
    let route = "/renewals";
    let app = app(route);
    app.up.store(false, Ordering::SeqCst);
    let mut deferred = 0;
    for i in 0..8 {
        let (status, _, _) = app.send(post_to(route, &format!("r-{i}"))).await;
        deferred += u64::from(status == StatusCode::ACCEPTED);
    }
    assert!(deferred > 0);
    // Ops hold the breaker open: the replays get its 503 and go back to
    // the store; none is deferred twice.
    let mut held = (*app.layer.policy()).clone();
    held.breaker.mode = brownout::Mode::ForcedOpen;
    app.layer.handle().apply(held).unwrap();
    app.up.store(true, Ordering::SeqCst);
    let replayers = app.layer.replay::<Body, _, _>(app.router.clone());
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(app.received.lock().unwrap().is_empty());
    assert_eq!(
        counter(brownout::defer::DEFERRED_TOTAL, &[("route", route)]),
        deferred
    );
    let store = app.layer.deferral().unwrap().route(route).unwrap().store();
    assert_eq!(store.pending().await.unwrap().iter().sum::<u64>(), deferred);
    // Released: all of them, once.
    let mut open = (*app.layer.policy()).clone();
    open.breaker.mode = brownout::Mode::Enforce;
    app.layer.handle().apply(open).unwrap();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(app.received.lock().unwrap().len() as u64, deferred);
    assert_eq!(store.pending().await.unwrap().iter().sum::<u64>(), 0);
    for replayer in replayers {
        replayer.stop().await;
    }
}

#[test]
fn a_store_that_cannot_be_opened_is_an_error_naming_its_path() {
    let dir = TempDir::new("defer-stack-bad");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let policy = Policy::from_toml(&format!(
        "[routes.\"/applications\".defer]\npath = {:?}\n",
        file.display().to_string()
    ))
    .unwrap();
    let err = BrownoutLayer::try_from_policy(&policy)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert!(err.contains("is not a directory"), "{err}");
    // The lenient build goes on without that route's deferral.
    let layer = BrownoutLayer::from_policy(&policy);
    assert!(layer.deferral().unwrap().route("/applications").is_none());
}
