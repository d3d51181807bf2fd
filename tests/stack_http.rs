//! The composed HTTP stack end to end, through axum, in virtual time: one
//! `BrownoutLayer::from_policy(&policy).http()` on a `Router`, requests sent
//! with `tower::ServiceExt::oneshot` (no sockets).
//!
//! What a client sees: 200s untouched; an open breaker's 503 with
//! `Retry-After` counting down to the next probe and an RFC 9457 problem
//! document; 4xx that never open it; shedding; a custom fallback that gets
//! the request back; urgent requests served before bulk ones; per-route
//! breakers (by axum's `MatchedPath` when the layer sits inside the router);
//! and a request's own deadline, kept to the millisecond.

#![cfg(feature = "http")]

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use brownout::fallback::fallback_fn;
use brownout::{BreakerState, BrownoutLayer, Mode, Policy, Rejected};
use http_body_util::BodyExt;
use tokio::sync::Notify;
use tokio::time::{Instant, advance};
use tower::{Service, ServiceBuilder, ServiceExt};

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A breaker that opens after 5 calls at >= 50% failures, for exactly 5 s
/// (no jitter); a fixed limit of 4; no waiting room. Tests add sections.
const BASE: &str = r#"
    [breaker]
    window = { kind = "count", size = 10 }
    minimum_calls = 5
    failure_rate = 0.5
    open_for = "5s"
    open_backoff = { jitter = 0.0 }
"#;

fn policy(sections: &str) -> Policy {
    Policy::from_toml(&format!("{BASE}\n{sections}")).expect("the test policy loads")
}

/// Checks at compile time that a service is what `Router::layer` and
/// `axum::serve` take: error `Infallible`, `Clone + Send + Sync`, a `Send`
/// future. No `HandleErrorLayer` anywhere.
fn infallible<S>(svc: S) -> S
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
{
    svc
}

fn get_req(uri: &str) -> Request {
    Request::builder().uri(uri).body(Body::empty()).unwrap()
}

fn req_with(uri: &str, headers: &[(&str, &str)]) -> Request {
    let mut builder = Request::builder().uri(uri);
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

async fn body_text(response: Response) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// A brownout answer, checked to be a well-formed 503 problem document;
/// returns the body's JSON and the `Retry-After` header, if any.
async fn problem(response: Response) -> (serde_json::Value, Option<u64>) {
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let headers = response.headers().clone();
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    let retry_after = headers.get(header::RETRY_AFTER).map(|value| {
        value
            .to_str()
            .unwrap()
            .parse::<u64>()
            .expect("Retry-After is whole seconds")
    });
    let text = body_text(response).await;
    let json: serde_json::Value = serde_json::from_str(&text).expect("the body is JSON");
    for field in ["type", "title", "detail", "reason"] {
        assert!(json[field].is_string(), "`{field}` in {json}");
    }
    assert_eq!(json["status"], 503, "{json}");
    assert_eq!(
        json["retry_after"].as_u64(),
        retry_after,
        "the body's retry hint is the header's"
    );
    (json, retry_after)
}

/// A handler that answers with the status in `x-status` (200 by default),
/// a header and body of its own, and counts its calls.
fn echo(calls: Arc<AtomicU32>) -> impl Fn(HeaderMap) -> std::future::Ready<Response> + Clone {
    move |headers: HeaderMap| {
        calls.fetch_add(1, Ordering::SeqCst);
        let status = headers
            .get("x-status")
            .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
            .map_or(StatusCode::OK, |s| StatusCode::from_u16(s).unwrap());
        std::future::ready(
            (
                status,
                [("x-handler", "slots"), ("etag", "\"v7\"")],
                "slots: 09:00, 09:15",
            )
                .into_response(),
        )
    }
}

#[tokio::test(start_paused = true)]
async fn the_stack_goes_into_router_layer_and_passes_200s_untouched() {
    let layer = BrownoutLayer::from_policy(&policy("")).http();
    let calls = Arc::new(AtomicU32::new(0));
    let app: Router = Router::new()
        .route("/slots", get(echo(calls.clone())))
        .layer(layer.clone());
    // The router, layered, is still an `Infallible` service.
    let app = infallible(app);

    for _ in 0..3 {
        let response = send(&app, get_req("/slots")).await;
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers["x-handler"], "slots");
        assert_eq!(headers["etag"], "\"v7\"");
        assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");
        assert!(headers.get(header::RETRY_AFTER).is_none());
        assert!(headers.get(header::CACHE_CONTROL).is_none());
        assert_eq!(body_text(response).await, "slots: 09:00, 09:15");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(layer.state("/slots"), Some(BreakerState::Closed));

    // The same layer also composes with ServiceBuilder around the router,
    // and with `route_layer`: all three keep the error type `Infallible`.
    let outside = infallible(
        ServiceBuilder::new()
            .layer(layer.clone())
            .service(Router::new().route("/slots", get(echo(calls.clone())))),
    );
    let inside = infallible(
        Router::new()
            .route("/slots", get(echo(calls.clone())))
            .route_layer(layer.clone()),
    );
    let response = outside.oneshot(get_req("/slots")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let response = send(&inside, get_req("/slots")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_answers_503_with_retry_after_counting_down_to_the_probe() {
    let open_for = Duration::from_secs(5);
    let layer = BrownoutLayer::from_policy(&policy("[waiting_room]\ncapacity = 0")).http();
    assert_eq!(layer.policy().breaker.open_for, open_for);
    let calls = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .route("/slots", get(echo(calls.clone())))
        .layer(layer.clone());

    // Five 500s: each reaches the client as the handler sent it.
    for _ in 0..5 {
        let response = send(&app, req_with("/slots", &[("x-status", "500")])).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.headers()["x-handler"], "slots");
    }
    let opened = Instant::now();
    assert_eq!(layer.state("/slots"), Some(BreakerState::Open));
    assert_eq!(calls.load(Ordering::SeqCst), 5);

    // While open: 503 with the time to the next probe, rounded up to whole
    // seconds, at several points of the open period.
    let mut seen = Vec::new();
    for step in [ms(0), ms(1500), ms(2700), ms(799)] {
        advance(step).await;
        let left = (opened + open_for) - Instant::now();
        let expected = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        let response = send(&app, get_req("/slots")).await;
        assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
        let (json, retry_after) = problem(response).await;
        assert_eq!(json["reason"], "open");
        assert_eq!(json["type"], "urn:brownout:open");
        assert_eq!(
            retry_after,
            Some(expected),
            "at {:?} into the open period",
            opened.elapsed()
        );
        seen.push(expected);
    }
    assert_eq!(
        seen,
        [5, 4, 1, 1],
        "5 s, 3.5 s, 0.8 s and 1 ms before the probe"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "no rejected call reached the handler"
    );

    // At the probe time, a probe goes through; its success closes the
    // breaker (with 3 probes, after 3 successes).
    advance(ms(1)).await;
    for _ in 0..3 {
        let response = send(&app, get_req("/slots")).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(layer.state("/slots"), Some(BreakerState::Closed));
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_with_a_short_waiting_room_rejects_at_once_rather_than_hold() {
    // The room's 1 s would end before the 5 s open period: no point waiting.
    let layer =
        BrownoutLayer::from_policy(&policy("[waiting_room]\ncapacity = 10\nmax_wait = \"1s\""))
            .http();
    let app = Router::new()
        .route("/slots", get(echo(Arc::default())))
        .layer(layer.clone());
    for _ in 0..5 {
        send(&app, req_with("/slots", &[("x-status", "503")])).await;
    }
    advance(ms(250)).await;
    let asked = Instant::now();
    let (json, retry_after) = problem(send(&app, get_req("/slots")).await).await;
    assert_eq!(asked.elapsed(), Duration::ZERO, "answered without waiting");
    assert_eq!(json["reason"], "open");
    assert_eq!(retry_after, Some(5), "4.75 s to the probe, rounded up");
    assert_eq!(layer.waiting("/slots"), 0);
}

#[tokio::test(start_paused = true)]
async fn requests_held_through_a_short_outage_are_served_at_the_probe() {
    // The room's 10 s outlast the 5 s open period: wait rather than fail.
    let layer =
        BrownoutLayer::from_policy(&policy("[waiting_room]\ncapacity = 10\nmax_wait = \"10s\""))
            .http();
    let calls = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .route("/slots", get(echo(calls.clone())))
        .layer(layer.clone());
    for _ in 0..5 {
        send(&app, req_with("/slots", &[("x-status", "500")])).await;
    }
    let opened = Instant::now();
    assert_eq!(layer.state("/slots"), Some(BreakerState::Open));

    advance(ms(1000)).await;
    let held: Vec<_> = (0..6)
        .map(|_| tokio::spawn(app.clone().oneshot(get_req("/slots"))))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(layer.waiting("/slots"), 6);
    for task in held {
        let response = task.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body_text(response).await, "slots: 09:00, 09:15");
    }
    assert_eq!(
        opened.elapsed(),
        Duration::from_secs(5),
        "served at the probe"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 5 + 6);
    assert_eq!(layer.state("/slots"), Some(BreakerState::Closed));
    assert_eq!(layer.waiting("/slots"), 0);
}

#[tokio::test(start_paused = true)]
async fn client_errors_never_open_the_breaker() {
    let layer = BrownoutLayer::from_policy(&policy("[waiting_room]\ncapacity = 0")).http();
    let calls = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .route("/slots", get(echo(calls.clone())))
        .layer(layer.clone());
    for status in ["404", "400", "401", "409", "429", "499"]
        .iter()
        .cycle()
        .take(30)
    {
        let response = send(&app, req_with("/slots", &[("x-status", status)])).await;
        assert_eq!(response.status().as_str(), *status);
        assert_eq!(response.headers()["x-handler"], "slots");
    }
    // A path the router does not know: axum's own 404, through the layer.
    for _ in 0..10 {
        let response = send(&app, get_req("/nowhere")).await;
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(layer.state("/slots"), Some(BreakerState::Closed));
    let response = send(&app, get_req("/slots")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 31);
}

#[tokio::test(start_paused = true)]
async fn unmatched_paths_get_routes_of_their_own_under_layer_but_not_route_layer() {
    // `Router::layer` also wraps axum's fallback, where no MatchedPath is
    // set: each unknown path is a route, until `max_routes`.
    let layer = BrownoutLayer::from_policy(&policy("")).max_routes(2).http();
    let app = Router::new()
        .route("/slots", get(echo(Arc::default())))
        .layer(layer.clone());
    for path in ["/slots", "/wp-admin", "/.env", "/cgi-bin/x"] {
        let response = send(&app, get_req(path)).await;
        let expected = if path == "/slots" { 200 } else { 404 };
        assert_eq!(response.status(), expected, "{path}");
    }
    assert_eq!(layer.state("/slots"), Some(BreakerState::Closed));
    assert_eq!(layer.state("/wp-admin"), Some(BreakerState::Closed));
    // Past two routes, new paths share the overflow gate.
    assert_eq!(layer.state("/.env"), None);
    assert_eq!(layer.state("/cgi-bin/x"), None);

    // `route_layer` leaves unmatched requests to axum alone.
    let layer = BrownoutLayer::from_policy(&policy("")).http();
    let app = Router::new()
        .route("/slots", get(echo(Arc::default())))
        .route_layer(layer.clone());
    let response = send(&app, get_req("/wp-admin")).await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(layer.state("/wp-admin"), None);
}

type BoxedResponse = std::pin::Pin<Box<dyn Future<Output = Response> + Send>>;

/// A handler that holds its call until `release` is notified, after
/// saying it started on `started`.
#[derive(Clone, Default)]
struct Holder {
    started: Arc<Notify>,
    release: Arc<Notify>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Holder {
    fn handler(&self) -> impl Fn(HeaderMap) -> BoxedResponse + Clone + Send + Sync + 'static {
        let this = self.clone();
        move |headers: HeaderMap| {
            let this = this.clone();
            Box::pin(async move {
                let id = headers
                    .get("x-id")
                    .map_or("?", |v| v.to_str().unwrap())
                    .to_owned();
                this.log.lock().unwrap().push(id.clone());
                this.started.notify_one();
                if headers.contains_key("x-hold") {
                    this.release.notified().await;
                } else {
                    tokio::time::sleep(ms(100)).await;
                }
                (StatusCode::OK, [("x-served", id)]).into_response()
            })
        }
    }

    fn started_ids(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

const ONE_AT_A_TIME: &str = r#"
    [limit]
    algorithm = "fixed"
    initial = 1
    min = 1
    max = 1
"#;

#[tokio::test(start_paused = true)]
async fn a_request_over_the_limit_with_no_waiting_room_is_shed() {
    let layer = BrownoutLayer::from_policy(&policy(&format!(
        "{ONE_AT_A_TIME}\n[waiting_room]\ncapacity = 0"
    )))
    .http();
    let holder = Holder::default();
    let app = Router::new()
        .route("/slots", get(holder.handler()))
        .layer(layer.clone());

    let held = tokio::spawn(
        app.clone()
            .oneshot(req_with("/slots", &[("x-id", "holder"), ("x-hold", "1")])),
    );
    holder.started.notified().await;

    let (json, retry_after) =
        problem(send(&app, req_with("/slots", &[("x-id", "late")])).await).await;
    assert_eq!(json["reason"], "shed");
    assert_eq!(json["type"], "urn:brownout:shed");
    assert!(retry_after.is_some_and(|s| s >= 1), "{retry_after:?}");
    assert_eq!(holder.started_ids(), ["holder"]);
    assert_eq!(
        layer.state("/slots"),
        Some(BreakerState::Closed),
        "shedding is not a failure"
    );

    // The slot comes back when the held call ends.
    holder.release.notify_one();
    let response = held.await.unwrap().unwrap();
    assert_eq!(response.headers()["x-served"], "holder");
    let response = send(&app, req_with("/slots", &[("x-id", "next")])).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-served"], "next");
}

#[tokio::test(start_paused = true)]
async fn a_custom_fallback_answers_and_gets_the_request_back() {
    let mut forced_open = policy("");
    forced_open.breaker.mode = Mode::ForcedOpen;
    let layer = BrownoutLayer::from_policy(&forced_open)
        .http()
        .fallback(fallback_fn(
            |rejected: Rejected, req: Option<Request>| async move {
                let booking = req
                    .as_ref()
                    .and_then(|req| req.headers().get("x-booking"))
                    .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned());
                let path = req
                    .as_ref()
                    .map_or("none".to_owned(), |req| req.uri().path().to_owned());
                (
                    StatusCode::OK,
                    [("x-fallback", rejected.reason().as_str().to_owned())],
                    format!("cached slots for booking {booking} at {path}"),
                )
                    .into_response()
            },
        ));
    let calls = Arc::new(AtomicU32::new(0));
    let app = infallible(
        Router::new()
            .route("/slots", get(echo(calls.clone())))
            .layer(layer),
    );
    let response = send(&app, req_with("/slots", &[("x-booking", "B-4711")])).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-fallback"], "open");
    assert!(response.headers().get(header::RETRY_AFTER).is_none());
    assert_eq!(
        body_text(response).await,
        "cached slots for booking B-4711 at /slots"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_fallback_gets_the_request_back_after_a_wait_runs_out() {
    let layer = BrownoutLayer::from_policy(&policy(&format!(
        "{ONE_AT_A_TIME}\n[waiting_room]\ncapacity = 4\nmax_wait = \"750ms\""
    )))
    .http()
    .fallback(fallback_fn(
        |rejected: Rejected, req: Option<Request>| async move {
            let id = req
                .and_then(|req| req.headers().get("x-id").cloned())
                .map_or("none".to_owned(), |v| v.to_str().unwrap().to_owned());
            (StatusCode::ACCEPTED, format!("{} {id}", rejected.reason())).into_response()
        },
    ));
    let holder = Holder::default();
    let app = Router::new()
        .route("/slots", get(holder.handler()))
        .layer(layer.clone());
    let held = tokio::spawn(
        app.clone()
            .oneshot(req_with("/slots", &[("x-id", "holder"), ("x-hold", "1")])),
    );
    holder.started.notified().await;

    let asked = Instant::now();
    let response = send(&app, req_with("/slots", &[("x-id", "w1")])).await;
    assert_eq!(asked.elapsed(), ms(750));
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(body_text(response).await, "queue_timeout w1");
    assert_eq!(layer.waiting("/slots"), 0);
    holder.release.notify_one();
    held.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn urgent_requests_are_served_before_bulk_ones_that_waited_longer() {
    let layer = BrownoutLayer::from_policy(&policy(&format!(
        "{ONE_AT_A_TIME}\n[waiting_room]\ncapacity = 10\nmax_wait = \"10s\""
    )))
    .http();
    let holder = Holder::default();
    let app = Router::new()
        .route("/slots", get(holder.handler()))
        .layer(layer.clone());
    let held = tokio::spawn(
        app.clone()
            .oneshot(req_with("/slots", &[("x-id", "holder"), ("x-hold", "1")])),
    );
    holder.started.notified().await;

    // Bulk callers arrive first, then an urgent one; a class the policy
    // does not know counts as the default (normal).
    let mut waiting = Vec::new();
    for (id, class) in [
        ("bulk-1", "bulk"),
        ("bulk-2", "BULK"),
        ("normal-1", "nonsense"),
        ("urgent-1", "urgent"),
    ] {
        let req = req_with("/slots", &[("x-id", id), ("x-priority", class)]);
        waiting.push(tokio::spawn(app.clone().oneshot(req)));
        advance(ms(10)).await;
    }
    assert_eq!(layer.waiting("/slots"), 4);
    assert_eq!(holder.started_ids(), ["holder"]);

    holder.release.notify_one();
    held.await.unwrap().unwrap();
    for task in waiting {
        let response = task.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(
        holder.started_ids(),
        ["holder", "urgent-1", "normal-1", "bulk-1", "bulk-2"]
    );
    assert_eq!(layer.waiting("/slots"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failing_route_does_not_open_the_breaker_of_another() {
    let layer = BrownoutLayer::from_policy(&policy("[waiting_room]\ncapacity = 0")).http();
    let slots = Arc::new(AtomicU32::new(0));
    let app = Router::new()
        .route("/payments", get(|| async { StatusCode::BAD_GATEWAY }))
        .route("/slots", get(echo(slots.clone())))
        .layer(layer.clone());

    for i in 0..12 {
        let payment = send(&app, get_req("/payments")).await;
        if i < 5 {
            assert_eq!(payment.status(), StatusCode::BAD_GATEWAY);
        } else {
            let (json, _) = problem(payment).await;
            assert_eq!(json["reason"], "open");
        }
        let slot = send(&app, get_req("/slots")).await;
        assert_eq!(slot.status(), StatusCode::OK, "request {i}");
    }
    assert_eq!(layer.state("/payments"), Some(BreakerState::Open));
    assert_eq!(layer.state("/slots"), Some(BreakerState::Closed));
    assert_eq!(slots.load(Ordering::SeqCst), 12);
}

/// `/bookings/{id}`, failing every call.
fn bookings() -> Router {
    Router::new().route(
        "/bookings/{id}",
        get(
            |axum::extract::Path(id): axum::extract::Path<u32>| async move {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("booking {id} failed"),
                )
            },
        ),
    )
}

/// Sends 3 failing requests to `/bookings/1`, then 2 to `/bookings/2`,
/// then one to `/bookings/3`, and returns the statuses.
async fn five_failures_then_one<S>(app: S) -> Vec<u16>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone,
{
    let mut statuses = Vec::new();
    for id in [1, 1, 1, 2, 2, 3] {
        let response = app
            .clone()
            .oneshot(get_req(&format!("/bookings/{id}")))
            .await
            .unwrap_or_else(|e| match e {});
        statuses.push(response.status().as_u16());
    }
    statuses
}

#[cfg(feature = "axum")]
#[tokio::test(start_paused = true)]
async fn inside_the_router_requests_share_the_route_of_their_matched_path() {
    for inside in ["layer", "route_layer"] {
        let layer = BrownoutLayer::from_policy(&policy("[waiting_room]\ncapacity = 0")).http();
        let app = bookings();
        let app = match inside {
            "layer" => app.layer(layer.clone()),
            _ => app.route_layer(layer.clone()),
        };
        let statuses = five_failures_then_one(app).await;
        assert_eq!(statuses, [500, 500, 500, 500, 500, 503], "with {inside}");
        assert_eq!(layer.state("/bookings/{id}"), Some(BreakerState::Open));
        for path in ["/bookings/1", "/bookings/2", "/bookings/3"] {
            assert_eq!(layer.state(path), None, "{path} with {inside}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn outside_the_router_each_path_is_its_own_route() {
    let layer = BrownoutLayer::from_policy(&policy("[waiting_room]\ncapacity = 0")).http();
    // Around the router, before it matched: no MatchedPath yet.
    let app = ServiceBuilder::new()
        .layer(layer.clone())
        .service(bookings());
    let statuses = five_failures_then_one(app).await;
    assert_eq!(statuses, [500; 6]);
    assert_eq!(layer.state("/bookings/{id}"), None);
    for path in ["/bookings/1", "/bookings/2", "/bookings/3"] {
        assert_eq!(layer.state(path), Some(BreakerState::Closed), "{path}");
    }
}

#[cfg(not(feature = "axum"))]
#[tokio::test(start_paused = true)]
async fn without_the_axum_feature_the_route_is_the_uri_path_even_inside_the_router() {
    let layer = BrownoutLayer::from_policy(&policy("[waiting_room]\ncapacity = 0")).http();
    let app = bookings().layer(layer.clone());
    let statuses = five_failures_then_one(app).await;
    assert_eq!(statuses, [500; 6]);
    assert_eq!(layer.state("/bookings/{id}"), None);
    assert_eq!(layer.state("/bookings/1"), Some(BreakerState::Closed));
}

const DEADLINES: &str = r#"
    [waiting_room]
    capacity = 10
    max_wait = "5s"
    deadline_header = "x-deadline-ms"
"#;

#[tokio::test(start_paused = true)]
async fn a_request_waits_no_longer_than_its_own_deadline() {
    let layer =
        BrownoutLayer::from_policy(&policy(&format!("{ONE_AT_A_TIME}\n{DEADLINES}"))).http();
    let holder = Holder::default();
    let app = Router::new()
        .route("/slots", get(holder.handler()))
        .layer(layer.clone());
    let held = tokio::spawn(
        app.clone()
            .oneshot(req_with("/slots", &[("x-id", "holder"), ("x-hold", "1")])),
    );
    holder.started.notified().await;

    for (value, waited, reason) in [
        ("200", ms(200), "deadline"),
        (" 1250 ", ms(1250), "deadline"),
        ("1s 500ms", ms(1500), "deadline"),
        ("9000", ms(5000), "queue_timeout"), // the room's max_wait comes first
        ("soon", ms(5000), "queue_timeout"), // malformed: ignored
        ("-5", ms(5000), "queue_timeout"),
        ("2.5s", ms(2500), "deadline"), // humantime reads fractions
        ("2,5s", ms(5000), "queue_timeout"),
        ("", ms(5000), "queue_timeout"),
    ] {
        let asked = Instant::now();
        let response = send(&app, req_with("/slots", &[("x-deadline-ms", value)])).await;
        assert_eq!(asked.elapsed(), waited, "x-deadline-ms: {value:?}");
        let (json, _) = problem(response).await;
        assert_eq!(json["reason"], reason, "x-deadline-ms: {value:?}");
        assert_eq!(layer.waiting("/slots"), 0);
    }
    // A deadline already spent is answered at once.
    let asked = Instant::now();
    let (json, _) = problem(send(&app, req_with("/slots", &[("x-deadline-ms", "0")])).await).await;
    assert_eq!(json["reason"], "deadline");
    assert_eq!(asked.elapsed(), Duration::ZERO);

    // With a slot free before its deadline, a request with one is served.
    let waiter = tokio::spawn(app.clone().oneshot(req_with(
        "/slots",
        &[("x-id", "patient"), ("x-deadline-ms", "300")],
    )));
    advance(ms(250)).await;
    holder.release.notify_one();
    held.await.unwrap().unwrap();
    let response = waiter.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-served"], "patient");
}
