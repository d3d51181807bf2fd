//! Deferral over HTTP, in virtual time, with the embedded store: the
//! composed stack with `DeferFallback`, the status endpoint, and the
//! replayer draining the store through the same stack when the back end is
//! back.
#![cfg(all(feature = "defer", feature = "toml"))]

#[path = "support/tempdir.rs"]
mod tempdir;

use std::convert::Infallible;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use brownout::defer::{Deferral, ReplayHandle};
use brownout::fallback::{ProblemJson, RejectAsError};
use brownout::{BrownoutLayer, Mode, Policy};
use http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::util::BoxCloneService;
use tower::{Layer, ServiceBuilder, ServiceExt};

use tempdir::TempDir;

/// What the back end saw: path, body, idempotency key, priority header.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    body: String,
    key: Option<String>,
}

type Svc = BoxCloneService<Request<Body>, Response<Body>, Infallible>;

struct App {
    svc: Svc,
    policy: Policy,
    layer: brownout::stack::HttpBrownoutLayer,
    deferral: Deferral,
    seen: Arc<Mutex<Vec<Seen>>>,
    _dir: TempDir,
}

fn policy_text(dir: &TempDir, route: &str, extra: &str) -> String {
    format!(
        r#"
        [breaker]
        mode = "forced_open"

        [routes."{route}".limit]
        algorithm = "fixed"
        initial = 2
        min = 1
        max = 2

        [routes."{route}".defer]
        path = {path:?}
        max_pending = 8
        max_body = "1KiB"
        max_answer = 16
        keep_headers = ["content-type"]
        {extra}
        "#,
        path = dir.path().join("store").display().to_string(),
    )
}

async fn app(extra: &str) -> App {
    app_at("/applications", extra).await
}

async fn app_at(route: &str, extra: &str) -> App {
    let dir = TempDir::new("defer-http");
    let policy =
        Policy::from_toml(&policy_text(&dir, route, extra)).expect("the test policy loads");
    let deferral = Deferral::open(&policy).await.expect("the store opens");
    let layer = BrownoutLayer::from_policy(&policy).http();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let backend = backend(seen.clone());
    let svc = ServiceBuilder::new()
        .layer(deferral.status_layer())
        .layer(layer.clone().fallback(deferral.fallback(ProblemJson)))
        .service(backend);
    App {
        svc: BoxCloneService::new(svc),
        policy,
        layer,
        deferral,
        seen,
        _dir: dir,
    }
}

fn backend(
    seen: Arc<Mutex<Vec<Seen>>>,
) -> impl tower::Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |req: Request<Body>| {
        let seen = seen.clone();
        async move {
            let key = req
                .headers()
                .get("idempotency-key")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let body = String::from_utf8(body.to_vec()).unwrap();
            seen.lock().unwrap().push(Seen {
                body: body.clone(),
                key,
            });
            let mut response = Response::new(Body::from(format!("created {body}, a long answer")));
            *response.status_mut() = StatusCode::CREATED;
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
            Ok::<_, Infallible>(response)
        }
    })
}

impl App {
    async fn send(&self, req: Request<Body>) -> (StatusCode, http::HeaderMap, serde_json::Value) {
        let response = self.svc.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (status, headers, json)
    }

    async fn status(&self, location: &str) -> (StatusCode, serde_json::Value) {
        let (status, _, json) = self.send(get(location)).await;
        (status, json)
    }

    /// The back end is back: the breaker follows the policy again.
    fn recover(&self) {
        let mut policy = self.policy.clone();
        policy.breaker.mode = Mode::Enforce;
        self.layer.handle().apply(policy).unwrap();
    }

    fn replay(&self) -> ReplayHandle {
        self.replay_at("/applications")
    }

    fn replay_at(&self, key: &'static str) -> ReplayHandle {
        let route = self.deferral.route(key).unwrap();
        let replay = self
            .layer
            .clone()
            .fallback(RejectAsError)
            .layer(backend(self.seen.clone()));
        self.deferral
            .replay(route, replay, brownout::defer::Load::of(&self.layer, key))
    }
}

fn post(path: &str, body: &str) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-secret", "not kept")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn with(mut req: Request<Body>, name: &str, value: &str) -> Request<Body> {
    req.headers_mut().append(
        http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
        value.parse().unwrap(),
    );
    req
}

/// Defers `req` and returns its Location.
async fn defer(app: &App, req: Request<Body>) -> String {
    let (status, headers, json) = app.send(req).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{json}");
    let location = headers[header::LOCATION].to_str().unwrap().to_owned();
    assert_eq!(json["location"], location.as_str());
    assert_eq!(json["status"], "pending");
    assert_eq!(json["reason"], "open");
    assert_eq!(
        location,
        format!("/deferred/{}", json["ticket"].as_str().unwrap())
    );
    location
}

#[tokio::test(start_paused = true)]
async fn a_rejected_post_is_accepted_with_a_ticket_and_its_status_is_pending() {
    let app = app("").await;
    let location = defer(&app, post("/applications", r#"{"name":"Ada"}"#)).await;
    let (status, json) = app.status(&location).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["status"], "pending", "{json}");
    assert!(json["arrived"].as_str().unwrap().ends_with('Z'));
    assert!(
        app.seen.lock().unwrap().is_empty(),
        "nothing reached the back end"
    );
}

#[tokio::test(start_paused = true)]
async fn what_is_not_deferred_gets_the_ordinary_fallback() {
    let app = app("").await;
    // GET is not replay-safe unless listed.
    let (status, headers, json) = app.send(get("/applications")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    assert_eq!(json["reason"], "open");
    // A route without a defer section.
    let (status, ..) = app.send(post("/payments", "{}")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // A body over max_body, by Content-Length ...
    let big = "x".repeat(1025);
    let req = with(post("/applications", &big), "content-length", "1025");
    let (status, ..) = app.send(req).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // ... and read (no Content-Length).
    let (status, ..) = app.send(post("/applications", &big)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // At max_body exactly: deferred.
    defer(&app, post("/applications", &"x".repeat(1024))).await;
    let route = app.deferral.route("/applications").unwrap();
    assert_eq!(route.store().pending().await.unwrap(), vec![0, 1, 0]);
}

#[tokio::test(start_paused = true)]
async fn a_full_store_answers_with_the_ordinary_fallback() {
    let app = app("").await;
    for i in 0..8 {
        defer(&app, post("/applications", &format!("{i}"))).await;
    }
    let (status, headers, json) = app.send(post("/applications", "9")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
    assert_eq!(json["reason"], "open");
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
}

#[tokio::test(start_paused = true)]
async fn idempotency_key_same_ticket_conflict_and_malformed() {
    let app = app("").await;
    let first = defer(
        &app,
        with(post("/applications", "a"), "idempotency-key", "\"k-1\""),
    )
    .await;
    let (status, _, json) = app
        .send(with(
            post("/applications", "a"),
            "idempotency-key",
            "\"k-1\"",
        ))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(json["location"], first.as_str(), "same key, same ticket");
    assert_eq!(json["repeat"], true);
    // The same key for another request.
    let (status, headers, json) = app
        .send(with(
            post("/applications", "b"),
            "idempotency-key",
            "\"k-1\"",
        ))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{json}");
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    assert!(json["detail"].as_str().unwrap().contains("Idempotency-Key"));
    // Malformed keys: 400 naming the header.
    for bad in ["\"open", "\"a\"b\"", "a b", "", "\"\""] {
        let (status, _, json) = app
            .send(with(post("/applications", "c"), "idempotency-key", bad))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}: {json}");
        let detail = json["detail"].as_str().unwrap();
        assert!(
            detail.starts_with("the Idempotency-Key header "),
            "{detail}"
        );
    }
    let twice = with(
        with(post("/applications", "c"), "idempotency-key", "x"),
        "idempotency-key",
        "y",
    );
    let (status, _, json) = app.send(twice).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        json["detail"],
        "the Idempotency-Key header is sent more than once"
    );
    let long = "k".repeat(256);
    let (status, ..) = app
        .send(with(post("/applications", "c"), "idempotency-key", &long))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // A bare token is accepted as clients send it.
    defer(
        &app,
        with(
            post("/applications", "d"),
            "idempotency-key",
            "8e03978e-40d5-43e8-bc93-6894a57f9324",
        ),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn a_missing_key_is_refused_when_the_policy_requires_one() {
    let app = app("require_idempotency_key = true").await;
    let (status, _, json) = app.send(post("/applications", "a")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json["title"], "Missing Idempotency-Key header");
    defer(
        &app,
        with(post("/applications", "a"), "idempotency-key", "k"),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn unknown_and_malformed_tickets_are_404_and_other_methods_405() {
    let app = app("").await;
    for path in [
        "/deferred/0123456789abcdef0123456789abcdef",
        "/deferred/not-a-ticket",
        "/deferred/",
    ] {
        let (status, json) = app.status(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(json["type"], "urn:brownout:unknown-ticket");
    }
    let location = defer(&app, post("/applications", "a")).await;
    let (status, headers, _) = app.send(post(&location, "")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers[header::ALLOW], "GET, HEAD");
}

#[tokio::test(start_paused = true)]
async fn replay_drains_most_important_first_oldest_first_once_the_back_end_is_back() {
    let app = app("").await;
    let mut locations = Vec::new();
    for (i, class) in ["bulk", "normal", "urgent", "bulk", "urgent", "normal"]
        .into_iter()
        .enumerate()
    {
        let req = with(
            post("/applications", &format!("{class}-{i}")),
            "x-priority",
            class,
        );
        let req = if i == 1 {
            with(req, "idempotency-key", "client-key")
        } else {
            req
        };
        locations.push(defer(&app, req).await);
        tokio::time::advance(Duration::from_secs(60)).await;
    }
    let replayer = app.replay();
    // Still down: replays are rejected by the breaker and put back.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(app.seen.lock().unwrap().is_empty());
    for location in &locations {
        assert_eq!(app.status(location).await.1["status"], "pending");
    }
    app.recover();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let seen = app.seen.lock().unwrap().clone();
    let order: Vec<&str> = seen.iter().map(|s| s.body.as_str()).collect();
    assert_eq!(
        order,
        [
            "urgent-2", "urgent-4", "normal-1", "normal-5", "bulk-0", "bulk-3"
        ]
    );
    // The client's key is carried; otherwise the ticket is the key.
    assert_eq!(seen[2].key.as_deref(), Some("client-key"));
    let ticket0 = locations[2].rsplit('/').next().unwrap();
    assert_eq!(seen[0].key.as_deref(), Some(ticket0));
    for (i, location) in locations.iter().enumerate() {
        let (status, json) = app.status(location).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json["status"], "served", "{json}");
        assert_eq!(json["answer"]["status"], 201);
        assert_eq!(json["answer"]["content_type"], "text/plain");
        let body = json["answer"]["body"].as_str().unwrap();
        assert_eq!(body.len(), 16, "cut at max_answer: {body:?}");
        assert!(body.starts_with("created "), "{i}: {body}");
    }
    replayer.stop().await;
    let route = app.deferral.route("/applications").unwrap();
    assert_eq!(route.store().pending().await.unwrap(), vec![0, 0, 0]);
}

#[tokio::test(start_paused = true)]
async fn a_request_not_replayed_within_max_age_is_expired_and_said_so() {
    let app = app("max_age = \"1h\"").await;
    let old = defer(&app, post("/applications", "old")).await;
    tokio::time::advance(Duration::from_secs(1800)).await;
    let young = defer(&app, post("/applications", "young")).await;
    let replayer = app.replay();
    tokio::time::sleep(Duration::from_secs(1800) - brownout::defer::UPKEEP * 2).await;
    assert_eq!(
        app.status(&old).await.1["status"],
        "pending",
        "before max_age"
    );
    tokio::time::sleep(brownout::defer::UPKEEP * 3).await;
    let (_, json) = app.status(&old).await;
    assert_eq!(json["status"], "expired", "{json}");
    assert_eq!(app.status(&young).await.1["status"], "pending");
    app.recover();
    tokio::time::sleep(brownout::defer::MAX_BACKOFF + Duration::from_secs(1)).await;
    assert_eq!(app.status(&young).await.1["status"], "served");
    let seen = app.seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        1,
        "the expired request was never sent: {seen:?}"
    );
    replayer.stop().await;
}

// ------------------------------------------------------------------ metrics

/// A metric seen: name, labels, value.
type Metric = (String, Vec<(String, String)>, f64);

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

fn metric(snapshot: &[Metric], name: &str, labels: &[(&str, &str)]) -> f64 {
    snapshot
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, _, v)| *v)
        .sum()
}

fn take() -> Vec<Metric> {
    snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            let value = match value {
                DebugValue::Counter(n) => n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(h) => h.len() as f64,
            };
            (key.name().to_owned(), labels, value)
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn metrics_count_deferred_pending_replayed_expired_and_age() {
    snapshotter();
    brownout::defer::describe();
    let app = app_at("/metrics-applications", "max_age = \"1h\"").await;
    let route = [("route", "/metrics-applications")];
    defer(
        &app,
        with(post("/metrics-applications", "u"), "x-priority", "urgent"),
    )
    .await;
    defer(&app, post("/metrics-applications", "n")).await;
    tokio::time::advance(Duration::from_secs(30 * 60)).await;
    defer(&app, post("/metrics-applications", "later")).await;
    let replayer = app.replay_at("/metrics-applications");
    tokio::time::sleep(brownout::defer::UPKEEP + Duration::from_millis(500)).await;
    let seen = take();
    assert_eq!(
        metric(
            &seen,
            brownout::defer::DEFERRED_TOTAL,
            &[("route", "/metrics-applications"), ("reason", "open")]
        ),
        3.0
    );
    assert_eq!(
        metric(
            &seen,
            brownout::defer::DEFERRED_PENDING,
            &[("route", "/metrics-applications"), ("priority", "normal")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &seen,
            brownout::defer::DEFERRED_PENDING,
            &[("route", "/metrics-applications"), ("priority", "urgent")]
        ),
        1.0
    );
    let age = metric(&seen, brownout::defer::DEFERRED_AGE_SECONDS, &route);
    assert!((1800.0..1810.0).contains(&age), "{age}");
    // Two expire at max_age; the third is replayed.
    tokio::time::sleep(Duration::from_secs(30 * 60)).await;
    app.recover();
    tokio::time::sleep(brownout::defer::MAX_BACKOFF + Duration::from_secs(1)).await;
    let seen = take();
    assert_eq!(
        metric(&seen, brownout::defer::DEFERRED_EXPIRED_TOTAL, &route),
        2.0
    );
    assert_eq!(
        metric(
            &seen,
            brownout::defer::REPLAYED_TOTAL,
            &[("route", "/metrics-applications"), ("outcome", "served")]
        ),
        1.0
    );
    assert_eq!(
        metric(&seen, brownout::defer::DEFERRED_AGE_SECONDS, &route),
        0.0
    );
    replayer.stop().await;
}

#[tokio::test]
async fn two_routes_on_one_embedded_store_is_an_error_naming_both() {
    let dir = TempDir::new("defer-shared-path");
    let path = dir.path().join("store").display().to_string();
    let policy = Policy::from_toml(&format!(
        "[routes.\"/a\".defer]\npath = {path:?}\n[routes.\"/b\".defer]\npath = {path:?}\n"
    ))
    .unwrap();
    let err = Deferral::open(&policy).await.unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "deferral store {path}: cannot open: routes.\"/a\".defer.path and routes.\"/b\".defer.path \
             are the same directory: an embedded store serves one route; give each its own"
        )
    );
}
