//! The booking and payment examples, built in-process from the examples'
//! own code and policy files and called with `oneshot` (no sockets), in
//! paused time: the booking service answers when its back end is up, down,
//! hanging and at reduced capacity; the payment service never charges twice
//! and never answers a fake success.

#![cfg(all(feature = "axum", feature = "defer"))]
// Both examples include `examples/shared/{backend,server}.rs`, as each example does on its own.
#![allow(clippy::duplicate_mod)]

#[path = "../examples/booking.rs"]
#[allow(dead_code)]
mod booking;

#[path = "../examples/payment.rs"]
#[allow(dead_code)]
mod payment;

#[path = "support/tempdir.rs"]
mod tempdir;

use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::Response;
use brownout::sim::Condition;
use brownout::{BreakerState, Policy};
use http_body_util::BodyExt;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Value, json};
use tokio::time::Instant;
use tower::ServiceExt;

// ---- helpers ----------------------------------------------------------------

async fn send(app: &Router, req: Request<Body>) -> Response {
    app.clone()
        .oneshot(req)
        .await
        .unwrap_or_else(|e| match e {})
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn post_json(uri: &str, headers: &[(&str, &str)], body: &Value) -> Request<Body> {
    let mut req = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(Body::from(body.to_string())).unwrap()
}

/// `POST /admin/backend` with a raw body, as `curl -d` sends it.
fn admin(body: &str) -> Request<Body> {
    Request::post("/admin/backend")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

/// The status, headers and JSON body of a response.
async fn read(response: Response) -> (StatusCode, header::HeaderMap, Value) {
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, headers, body)
}

/// Checks a brownout answer: 503, a problem document, and a `Retry-After`
/// that agrees with the body. Returns the reason and the retry hint.
fn brownout_answer(status: StatusCode, headers: &header::HeaderMap, body: &Value) -> (String, u64) {
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    let retry_after: u64 = headers
        .get(header::RETRY_AFTER)
        .unwrap_or_else(|| panic!("a brownout answer says when to retry: {body}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(body["retry_after"], retry_after, "{body}");
    assert!(body["type"].as_str().unwrap().starts_with("urn:brownout:"));
    (body["reason"].as_str().unwrap().to_owned(), retry_after)
}

fn booking_policy() -> Policy {
    Policy::from_path(booking::DEFAULT_POLICY).expect("examples/policies/booking.toml loads")
}

fn payment_policy() -> Policy {
    Policy::from_path(payment::DEFAULT_POLICY).expect("examples/policies/payment.toml loads")
}

/// The booking service with the example's policy; build it in paused time.
fn booking_app() -> booking::App {
    booking::app(booking::Config::new(booking_policy())).expect("the booking service builds")
}

fn payment_app() -> payment::App {
    payment::app(payment::Config::new(payment_policy())).expect("the payment service builds")
}

// ---- booking ------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn booking_serves_slots_and_bookings_while_the_back_end_is_up() {
    let app = booking_app();
    let router = &app.router;

    let (status, _, slots) = read(send(router, get("/slots")).await).await;
    assert_eq!(status, StatusCode::OK, "{slots}");
    let free = slots["free"].as_u64().unwrap();
    assert_eq!(free, 96, "three days of quarter hours from 09:00 to 16:45");
    let slot = slots["slots"][1].as_str().unwrap().to_owned();
    assert_eq!(slot, "2026-12-02T09:15");

    let new = json!({"name": "Asha Rao", "slot": slot});
    let urgent = [("x-priority", "urgent")];
    let (status, headers, booked) =
        read(send(router, post_json("/bookings", &urgent, &new)).await).await;
    assert_eq!(status, StatusCode::CREATED, "{booked}");
    let id = booked["id"].as_u64().unwrap();
    assert_eq!(headers[header::LOCATION], format!("/bookings/{id}"));
    assert_eq!(booked["class"], "urgent");
    assert_eq!(booked["slot"], slot);

    let (status, _, fetched) = read(send(router, get(&format!("/bookings/{id}"))).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched, booked);

    let (_, _, slots) = read(send(router, get("/slots")).await).await;
    assert_eq!(slots["free"].as_u64().unwrap(), free - 1);
    assert!(!slots["slots"].as_array().unwrap().contains(&json!(slot)));

    // The caller's mistakes are 4xx, answered without calling the back end.
    let calls = app.backend.stats().started;
    let (status, _, body) = read(send(router, post_json("/bookings", &[], &new)).await).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let bad_slot = json!({"name": "Asha Rao", "slot": "2026-12-02T08:00"});
    let (status, _, body) = read(send(router, post_json("/bookings", &[], &bad_slot)).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["detail"].as_str().unwrap().starts_with("slot:"),
        "{body}"
    );
    let (status, _, body) =
        read(send(router, post_json("/bookings", &[], &json!({"slot": slot}))).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["detail"].as_str().unwrap().contains("name"), "{body}");
    assert_eq!(
        app.backend.stats().started,
        calls,
        "4xx never reached the back end"
    );

    let (status, _, _) = read(send(router, get("/bookings/999")).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for route in booking::ROUTES {
        assert_eq!(
            app.stack.state(route),
            Some(BreakerState::Closed),
            "{route}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn booking_answers_fast_with_retry_after_while_the_back_end_is_down_and_recovers() {
    let app = booking_app();
    let router = &app.router;
    let policy = booking_policy();
    let (status, _, _) = read(send(router, get("/bookings/1")).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _, backend) = read(send(router, admin(r#"{"state":"down"}"#)).await).await;
    assert_eq!(status, StatusCode::OK, "{backend}");
    assert_eq!(backend["state"], "down");
    assert_eq!(app.backend.condition(), Condition::DownFast);

    // The back end refuses each call (502, counted as a failure) until the
    // breaker has seen `minimum_calls` of them; then brownout answers.
    let started = Instant::now();
    let mut refused = 0;
    let mut first_hint = None;
    for _ in 0..60 {
        let (status, headers, body) = read(send(router, get("/slots")).await).await;
        match status {
            StatusCode::BAD_GATEWAY => {
                assert!(first_hint.is_none(), "a 502 after the breaker opened");
                assert_eq!(body["type"], "urn:booking:backend-refused");
                refused += 1;
            }
            _ => {
                let (reason, retry_after) = brownout_answer(status, &headers, &body);
                assert_eq!(reason, "open");
                first_hint.get_or_insert(retry_after);
            }
        }
    }
    assert_eq!(refused, policy.breaker.minimum_calls);
    let retry_after = first_hint.expect("the breaker opened");
    let open_for =
        policy.breaker.open_for.as_secs_f64() * (1.0 + policy.breaker.open_backoff.jitter);
    assert!(
        retry_after >= 1 && retry_after as f64 <= open_for.ceil(),
        "{retry_after}"
    );
    assert_eq!(app.stack.state("/slots"), Some(BreakerState::Open));
    assert_eq!(
        app.backend.stats().started,
        u64::from(policy.breaker.minimum_calls) + 1,
        "the open breaker spared the dead back end (one call was the /bookings/1 above)"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "60 answers took {:?} of virtual time",
        started.elapsed()
    );

    // Each route has its own breaker: /bookings/{id} has seen one failure.
    let (status, _, _) = read(send(router, get("/bookings/1")).await).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        app.stack.state("/bookings/{id}"),
        Some(BreakerState::Closed)
    );
    let (_, _, brownout) = read(send(router, get("/admin/brownout")).await).await;
    assert_eq!(brownout["routes"]["/slots"]["breaker"], "open");
    assert_eq!(brownout["routes"]["/bookings/{id}"]["breaker"], "closed");

    // Back up: after Retry-After, the probes find it and the breaker closes.
    let (status, _, _) = read(send(router, admin(r#"{"state":"up"}"#)).await).await;
    assert_eq!(status, StatusCode::OK);
    tokio::time::advance(Duration::from_secs(retry_after)).await;
    for _ in 0..5 {
        let (status, _, body) = read(send(router, get("/slots")).await).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    assert_eq!(app.stack.state("/slots"), Some(BreakerState::Closed));
}

/// New bookings while the central server is down: accepted (202, a
/// ticket) once the breaker is open, kept in the store, and booked when it
/// is back, each once, with its class; the status endpoint follows them.
#[tokio::test(start_paused = true)]
async fn booking_defers_new_bookings_while_the_back_end_is_down_and_books_them_when_it_is_back() {
    let dir = tempdir::TempDir::new("booking-defer");
    let mut config = booking::Config::new(booking_policy());
    config.defer_dir = Some(dir.path().join("deferred"));
    let app = booking::app(config).expect("the booking service builds");
    assert_eq!(app.replayers.len(), 1);
    let router = &app.router;
    let policy = booking_policy();
    let (_, _, slots) = read(send(router, get("/slots")).await).await;
    let free = slots["slots"].as_array().unwrap().clone();
    read(send(router, admin(r#"{"state":"down"}"#)).await).await;

    // Refused (502) until the breaker has seen minimum_calls failures;
    // then accepted for later.
    let mut refused = 0;
    let mut deferred = Vec::new();
    for (i, slot) in free.iter().take(26).enumerate() {
        let class = if i == 25 { "urgent" } else { "normal" };
        let new = json!({"name": format!("applicant {i}"), "slot": slot});
        let req = post_json("/bookings", &[("x-priority", class)], &new);
        let (status, headers, body) = read(send(router, req).await).await;
        match status {
            StatusCode::BAD_GATEWAY => refused += 1,
            StatusCode::ACCEPTED => {
                assert_eq!(body["status"], "pending", "{body}");
                let location = headers[header::LOCATION].to_str().unwrap().to_owned();
                deferred.push((slot.as_str().unwrap().to_owned(), class, location));
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(refused, policy.breaker.minimum_calls);
    assert_eq!(deferred.len(), 26 - refused as usize);
    for (_, _, location) in &deferred {
        let (status, _, body) = read(send(router, get(location)).await).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["status"], "pending", "{body}");
    }
    let started = app.backend.stats().started;

    // Back: the replayer books them through the same route.
    read(send(router, admin(r#"{"state":"up"}"#)).await).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let mut ids = Vec::new();
    for (slot, class, location) in &deferred {
        let (_, _, body) = read(send(router, get(location)).await).await;
        assert_eq!(body["status"], "served", "{body}");
        assert_eq!(body["answer"]["status"], 201, "{body}");
        let booking: Value =
            serde_json::from_str(body["answer"]["body"].as_str().unwrap()).unwrap();
        assert_eq!(booking["slot"], slot.as_str());
        assert_eq!(
            booking["class"], *class,
            "the class travels with the booking"
        );
        ids.push(booking["id"].as_u64().unwrap());
    }
    // (Replays run several at a time, so booking ids follow the back end's
    // answers, not the order they were sent in: tests/defer_http.rs checks
    // that order.)
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), deferred.len(), "one booking each");
    // Each once: the back end booked exactly these (and the probes were
    // among them).
    assert_eq!(
        app.backend.stats().started - started,
        deferred.len() as u64,
        "one call per deferred booking"
    );
    let (_, _, slots) = read(send(router, get("/slots")).await).await;
    assert_eq!(
        slots["free"].as_u64().unwrap(),
        free.len() as u64 - deferred.len() as u64
    );
}

#[tokio::test(start_paused = true)]
async fn booking_answers_504_when_the_back_end_hangs_and_frees_the_slot() {
    let app = booking_app();
    let router = &app.router;
    let (status, _, _) = read(send(router, admin(r#"{"state":"hang"}"#)).await).await;
    assert_eq!(status, StatusCode::OK);

    let started = Instant::now();
    let new = json!({"name": "Ravi Kumar", "slot": "2026-12-03T10:00"});
    let (status, _, body) = read(send(router, post_json("/bookings", &[], &new)).await).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    let waited = started.elapsed();
    assert!(
        waited >= backend_timeout() && waited < backend_timeout() + Duration::from_millis(50),
        "{waited:?}"
    );
    assert_eq!(
        app.backend.stats().cancelled,
        1,
        "the abandoned call was dropped"
    );

    // The slot was not kept by the failed booking.
    read(send(router, admin(r#"{"state":"up"}"#)).await).await;
    let (status, _, body) = read(send(router, post_json("/bookings", &[], &new)).await).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

fn backend_timeout() -> Duration {
    Duration::from_secs(3)
}

#[tokio::test(start_paused = true)]
async fn booking_at_27_percent_capacity_answers_everyone_and_serves_urgent_first() {
    let app = booking_app();
    let router = &app.router;
    let (status, _, backend) = read(send(router, admin(r#"{"capacity":0.27}"#)).await).await;
    assert_eq!(status, StatusCode::OK, "{backend}");
    assert_eq!(backend["capacity"], 27);

    // Light load is served as usual.
    for _ in 0..5 {
        let (status, _, _) = read(send(router, get("/slots")).await).await;
        assert_eq!(status, StatusCode::OK);
    }

    // A burst of 600 at once: 150 urgent, 450 normal.
    let start = Instant::now();
    let mut calls = Vec::new();
    for i in 0..600 {
        let urgent = i % 4 == 0;
        let mut req = Request::get("/slots");
        if urgent {
            req = req.header("x-priority", "urgent");
        }
        let req = req.body(Body::empty()).unwrap();
        let router = router.clone();
        calls.push(tokio::spawn(async move {
            let response = router.oneshot(req).await.unwrap_or_else(|e| match e {});
            let took = start.elapsed();
            let (status, headers, body) = read(response).await;
            (urgent, status, headers, body, took)
        }));
    }
    let (mut served, mut sent) = ([0u32; 2], [0u32; 2]);
    let mut slowest_rejection = Duration::ZERO;
    for call in calls {
        let (urgent, status, headers, body, took) = call.await.unwrap();
        sent[usize::from(urgent)] += 1;
        if status == StatusCode::OK {
            served[usize::from(urgent)] += 1;
            continue;
        }
        // Anything else is brownout's answer: never a 502 or a 504.
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        let reason = body["reason"].as_str().unwrap();
        assert!(
            ["shed", "queue_full", "queue_timeout"].contains(&reason),
            "{body}"
        );
        slowest_rejection = slowest_rejection.max(took);
    }
    let share = |class: usize| f64::from(served[class]) / f64::from(sent[class]);
    let stats = app.backend.stats();
    eprintln!(
        "served urgent {}/{}, normal {}/{}; slowest rejection {slowest_rejection:?}; back end peak in service {}, peak calls {}",
        served[1], sent[1], served[0], sent[0], stats.peak_in_service, stats.peak_concurrent
    );
    assert!(served[0] + served[1] > 0, "the back end kept serving");
    assert!(
        share(1) > share(0),
        "urgent requests are served first: {} vs {}",
        share(1),
        share(0)
    );
    let max_wait = booking_policy().waiting_room.max_wait;
    assert!(
        slowest_rejection <= max_wait + Duration::from_millis(50),
        "nobody waits longer than max_wait for a 503: {slowest_rejection:?}"
    );
    assert!(
        stats.peak_concurrent < 600,
        "brownout held the burst back from the back end: {} calls at once",
        stats.peak_concurrent
    );
    assert_eq!(
        stats.failed + stats.cancelled,
        0,
        "no call failed or was abandoned"
    );
}

#[tokio::test(start_paused = true)]
async fn booking_admin_refuses_bad_changes_naming_the_field_and_changes_nothing() {
    let app = booking_app();
    let router = &app.router;
    let cases = [
        (r#"{"state":"dwon"}"#, "state"),
        (r#"{"state":"slow"}"#, "factor"),
        (r#"{"state":"slow","factor":0}"#, "factor"),
        (r#"{"state":"slow","factor":"fast"}"#, "factor"),
        (r#"{"factor":5}"#, "factor"),
        (r#"{"state":"flapping"}"#, "period"),
        (r#"{"state":"flapping","period":"soon"}"#, "period"),
        (r#"{"state":"flapping","period":"0s"}"#, "period"),
        (r#"{"capacity":-1}"#, "capacity"),
        (r#"{"state":"down","capacity":-0.5}"#, "capacity"),
        (r#"{"capcity":0.5}"#, "capcity"),
        (r#"{}"#, "state"),
        ("state=down", "body"),
    ];
    for (body, field) in cases {
        let (status, _, answer) = read(send(router, admin(body)).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["field"], field, "{body}: {answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.starts_with(&format!("{field}: ")), "{body}: {error}");
        assert_eq!(
            app.backend.condition(),
            Condition::Up,
            "{body} changed nothing"
        );
        assert_eq!(app.backend.capacity(), 100, "{body} changed nothing");
    }

    // Good ones apply, and GET shows them.
    let changes = [
        (
            r#"{"state":"slow","factor":5}"#,
            Condition::Slow { factor: 5.0 },
            100,
        ),
        (
            r#"{"state":"flapping","period":"20s"}"#,
            Condition::Flapping {
                period: Duration::from_secs(20),
            },
            100,
        ),
        (r#"{"state":"up","capacity":0.5}"#, Condition::Up, 50),
    ];
    for (body, condition, capacity) in changes {
        let (status, _, answer) = read(send(router, admin(body)).await).await;
        assert_eq!(status, StatusCode::OK, "{body}: {answer}");
        assert_eq!(app.backend.condition(), condition, "{body}");
        assert_eq!(app.backend.capacity(), capacity, "{body}");
        let (_, _, shown) = read(send(router, get("/admin/backend")).await).await;
        assert_eq!(shown["capacity"], capacity);
        assert_eq!(shown["state"], answer["state"]);
    }
}

#[tokio::test(start_paused = true)]
async fn booking_reloads_its_policy_file_live_and_keeps_the_old_one_on_error() {
    let dir = std::env::temp_dir().join(format!("brownout-examples-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("booking.toml");
    let original = std::fs::read_to_string(booking::DEFAULT_POLICY).unwrap();
    std::fs::write(&path, &original).unwrap();

    let mut config = booking::Config::new(Policy::from_path(&path).unwrap());
    config.policy_path = Some(path.clone());
    let app = booking::app(config).unwrap();
    let router = &app.router;
    let (status, _, _) = read(send(router, get("/slots")).await).await;
    assert_eq!(status, StatusCode::OK);

    // Ops force the breakers open (a maintenance stop), without a restart.
    assert!(original.contains("mode = \"enforce\""));
    std::fs::write(
        &path,
        original.replace("mode = \"enforce\"", "mode = \"forced_open\""),
    )
    .unwrap();
    let (status, _, answer) = read(
        send(
            router,
            Request::post("/admin/policy").body(Body::empty()).unwrap(),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, _, body) = read(send(router, get("/slots")).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(app.stack.state("/slots"), Some(BreakerState::ForcedOpen));

    // A bad file is refused with its field; the policy in force stays.
    std::fs::write(
        &path,
        original.replace("failure_rate = 0.5", "failure_rate = 1.5"),
    )
    .unwrap();
    let (status, _, answer) = read(
        send(
            router,
            Request::post("/admin/policy").body(Body::empty()).unwrap(),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let detail = answer["detail"].as_str().unwrap();
    assert!(
        detail.contains("breaker.failure_rate") && detail.contains("1.5"),
        "{detail}"
    );
    assert_eq!(app.stack.state("/slots"), Some(BreakerState::ForcedOpen));

    // Back to normal.
    std::fs::write(&path, &original).unwrap();
    let (status, _, _) = read(
        send(
            router,
            Request::post("/admin/policy").body(Body::empty()).unwrap(),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = read(send(router, get("/slots")).await).await;
    assert_eq!(status, StatusCode::OK);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One Prometheus recorder for this test binary, installed before any
/// service that reads it is built.
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            booking::server::prometheus()
                .install_recorder()
                .expect("no other recorder in this test binary")
        })
        .clone()
}

#[tokio::test(start_paused = true)]
async fn booking_exposes_brownout_metrics_for_prometheus() {
    let metrics = prometheus();
    let mut config = booking::Config::new(booking_policy());
    config.metrics = Some(metrics);
    let app = booking::app(config).unwrap();
    let router = &app.router;
    let (status, _, _) = read(send(router, get("/slots")).await).await;
    assert_eq!(status, StatusCode::OK);

    let response = send(router, get("/metrics")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for series in [
        r#"brownout_requests_total{route="/slots",outcome="served",reason="none"}"#,
        r#"brownout_breaker_state{route="/slots"}"#,
        r#"brownout_limit{route="/slots"}"#,
        // Latency as a Prometheus histogram, not a summary.
        "# TYPE brownout_latency_seconds histogram",
        r#"brownout_latency_seconds_bucket{route="/slots",outcome="success",le="0.25"}"#,
        "# TYPE brownout_wait_seconds histogram",
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
    assert!(!text.contains("summary"), "no metric is a summary:\n{text}");
}

#[tokio::test(start_paused = true)]
async fn booking_serves_a_health_snapshot_and_takes_a_route_out_by_hand() {
    let app = booking_app();
    let router = &app.router;
    let (status, _, _) = read(send(router, get("/slots")).await).await;
    assert_eq!(status, StatusCode::OK);

    let (status, _, health) = read(send(router, get("/admin/health")).await).await;
    assert_eq!(status, StatusCode::OK);
    let routes = health["routes"].as_array().unwrap();
    let slots = routes.iter().find(|r| r["route"] == "/slots").unwrap();
    assert_eq!(slots["state"], "closed");
    assert_eq!(slots["mode"], "enforce");
    assert_eq!(slots["inflight"], 0);
    assert_eq!(slots["waiting"], 0);
    assert!(slots["limit"].as_u64().unwrap() > 0);
    assert_eq!(routes.last().unwrap()["route"], "overflow");

    // Taken out of service by hand: its callers get brownout's answer.
    let out = json!({"route": "/slots", "mode": "forced_open"});
    let (status, _, health) = read(send(router, post_json("/admin/mode", &[], &out)).await).await;
    assert_eq!(status, StatusCode::OK);
    let slots = health["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "/slots")
        .unwrap()
        .clone();
    assert_eq!(slots["state"], "forced_open");
    let (status, _, _) = read(send(router, get("/slots")).await).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.stack.state("/slots"), Some(BreakerState::ForcedOpen));

    // And back.
    let back = json!({"route": "/slots", "mode": "enforce"});
    let (status, _, _) = read(send(router, post_json("/admin/mode", &[], &back)).await).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = read(send(router, get("/slots")).await).await;
    assert_eq!(status, StatusCode::OK);

    // A route not seen yet, or a mode that does not exist: said so.
    let unseen = json!({"route": "/nowhere", "mode": "forced_open"});
    let (status, _, _) = read(send(router, post_json("/admin/mode", &[], &unseen)).await).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let bad = json!({"route": "/slots", "mode": "off"});
    let (status, _, _) = read(send(router, post_json("/admin/mode", &[], &bad)).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

// ---- payment ------------------------------------------------------------------

fn payment(amount: u64) -> Value {
    json!({"amount": amount, "currency": "INR", "reference": "PSK/2026/0001"})
}

fn pay(key: Option<&str>, amount: u64) -> Request<Body> {
    let headers: Vec<(&str, &str)> = key
        .map(|k| (payment::IDEMPOTENCY_KEY, k))
        .into_iter()
        .collect();
    post_json("/payments", &headers, &payment(amount))
}

/// The response to `req` and when it came.
async fn timed(router: Router, req: Request<Body>) -> (Response, Instant) {
    let response = router.oneshot(req).await.unwrap_or_else(|e| match e {});
    (response, Instant::now())
}

/// Checks that an answer is not a success the service did not earn.
fn not_charged(status: StatusCode, headers: &header::HeaderMap, body: &Value) {
    assert!(!status.is_success(), "{status}: {body}");
    if status == StatusCode::SERVICE_UNAVAILABLE {
        brownout_answer(status, headers, body);
        assert_eq!(headers["payment-charged"], "false");
    } else {
        assert!(
            body["detail"].as_str().unwrap().starts_with("not charged"),
            "{body}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn payment_retry_with_the_same_key_returns_the_first_outcome_and_charges_once() {
    let app = payment_app();
    let router = &app.router;

    let (status, headers, first) = read(send(router, pay(Some("fee-asha-1"), 150_000)).await).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert!(headers.get(payment::REPLAYED).is_none());
    for _ in 0..3 {
        let (status, headers, again) =
            read(send(router, pay(Some("fee-asha-1"), 150_000)).await).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(headers[payment::REPLAYED], "true");
        assert_eq!(
            headers[header::LOCATION],
            format!("/payments/{}", first["id"])
        );
        assert_eq!(again, first);
    }
    assert_eq!(app.ledger.charges().len(), 1);
    assert_eq!(
        app.backend.stats().started,
        1,
        "replays never reach the processor"
    );

    // The same key for another payment is refused.
    let (status, _, body) = read(send(router, pay(Some("fee-asha-1"), 350_000)).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // A decline is an outcome too: replayed, not retried.
    let over = payment::CARD_LIMIT + 1;
    let (status, _, declined) = read(send(router, pay(Some("big"), over)).await).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{declined}");
    let (status, headers, again) = read(send(router, pay(Some("big"), over)).await).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(headers[payment::REPLAYED], "true");
    assert_eq!(again, declined);
    assert_eq!(app.backend.stats().started, 2);

    // Without a key every request is a payment of its own.
    for _ in 0..2 {
        let (status, _, _) = read(send(router, pay(None, 150_000)).await).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let charges = app.ledger.charges();
    assert_eq!(charges.len(), 3);
    assert_eq!(
        charges
            .iter()
            .filter(|c| c.key.as_deref() == Some("fee-asha-1"))
            .count(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn payment_retry_while_the_first_attempt_runs_is_a_conflict_and_a_dropped_one_frees_its_key()
{
    let app = payment_app();
    let router = &app.router;
    // Ten times slower: about 1.5 s a call.
    read(send(router, admin(r#"{"state":"slow","factor":10}"#)).await).await;

    let first = tokio::spawn(router.clone().oneshot(pay(Some("k"), 150_000)));
    tokio::time::sleep(Duration::from_millis(1)).await;
    let (status, headers, body) = read(send(router, pay(Some("k"), 150_000)).await).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(headers[header::RETRY_AFTER], "1");
    let (status, _, charged) = read(first.await.unwrap().unwrap()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, headers, again) = read(send(router, pay(Some("k"), 150_000)).await).await;
    assert_eq!((status, &again), (StatusCode::CREATED, &charged));
    assert_eq!(headers[payment::REPLAYED], "true");

    // The client goes away mid-payment: nothing is charged, the key is free.
    let gone = tokio::spawn(router.clone().oneshot(pay(Some("gone"), 150_000)));
    tokio::time::sleep(Duration::from_millis(100)).await;
    gone.abort();
    let _ = gone.await;
    assert_eq!(app.ledger.charges().len(), 1);
    let (status, headers, body) = read(send(router, pay(Some("gone"), 150_000)).await).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(headers.get(payment::REPLAYED).is_none());
    assert_eq!(app.ledger.charges().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn payment_without_a_key_never_waits_and_with_one_may_wait() {
    let app = payment_app();
    let router = &app.router;
    let initial = payment_policy().limit.initial as usize;
    read(send(router, admin(r#"{"state":"hang"}"#)).await).await;

    // More keyless payments at once than the limit admits: the excess is
    // answered at once, at the same virtual instant, and nobody waits.
    let burst = initial + 5;
    let start = Instant::now();
    let keyless: Vec<_> = (0..burst)
        .map(|_| tokio::spawn(timed(router.clone(), pay(None, 150_000))))
        .collect();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(app.stack.waiting(payment::KEYLESS), 0);
    let admitted = app.backend.stats().hanging;
    assert!(
        admitted >= 1 && admitted <= initial,
        "{admitted} keyless calls admitted"
    );
    let mut answered_at_once = 0;
    for call in &keyless {
        if call.is_finished() {
            answered_at_once += 1;
        }
    }
    assert_eq!(
        answered_at_once,
        burst - admitted,
        "everyone not admitted was answered"
    );

    // With a key, the excess waits in the room instead.
    let keyed: Vec<_> = (0..burst)
        .map(|i| tokio::spawn(router.clone().oneshot(pay(Some(&format!("w{i}")), 150_000))))
        .collect();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let admitted_keyed = app.backend.stats().hanging - admitted;
    assert!(admitted_keyed >= 1 && admitted_keyed <= initial);
    assert_eq!(app.stack.waiting(payment::KEYED), burst - admitted_keyed);
    assert!(keyed.iter().all(|call| !call.is_finished()), "they wait");

    // Nothing hangs for ever, and nothing pretends success.
    for call in keyless {
        let (response, answered) = call.await.unwrap();
        let answered = answered - start;
        let (status, headers, body) = read(response).await;
        not_charged(status, &headers, &body);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(body["reason"], "shed", "{body}");
            assert_eq!(answered, Duration::ZERO, "shed at once");
        }
    }
    for call in keyed {
        let (status, headers, body) = read(call.await.unwrap().unwrap()).await;
        not_charged(status, &headers, &body);
    }
    assert!(app.ledger.charges().is_empty());
}

#[tokio::test(start_paused = true)]
async fn payment_in_degraded_mode_answers_503_with_retry_after_never_a_fake_success() {
    let app = payment_app();
    let router = &app.router;
    let policy = payment_policy();
    let (status, _, first) = read(send(router, pay(Some("before"), 150_000)).await).await;
    assert_eq!(status, StatusCode::CREATED);

    read(send(router, admin(r#"{"state":"down"}"#)).await).await;
    let mut refused = 0;
    let mut retry_after = None;
    for i in 0..30 {
        let key = format!("k{i}");
        let (status, headers, body) = read(send(router, pay(Some(&key), 150_000)).await).await;
        not_charged(status, &headers, &body);
        match status {
            StatusCode::BAD_GATEWAY => refused += 1,
            _ => {
                let (reason, after) = brownout_answer(status, &headers, &body);
                assert_eq!(reason, "open");
                retry_after.get_or_insert(after);
            }
        }
    }
    assert_eq!(
        refused,
        policy.breaker.minimum_calls - 1,
        "one success, then failures up to minimum_calls"
    );
    let retry_after = retry_after.expect("the breaker opened");
    assert_eq!(
        app.ledger.charges().len(),
        1,
        "only the payment made before the outage"
    );

    // The payment made before the outage still answers its first outcome,
    // without the processor.
    let calls = app.backend.stats().started;
    let (status, headers, again) = read(send(router, pay(Some("before"), 150_000)).await).await;
    assert_eq!((status, &again), (StatusCode::CREATED, &first));
    assert_eq!(headers[payment::REPLAYED], "true");
    // A refused one kept nothing: its retry is tried again (and rejected now).
    let (status, headers, body) = read(send(router, pay(Some("k0"), 150_000)).await).await;
    not_charged(status, &headers, &body);
    assert!(headers.get(payment::REPLAYED).is_none());
    assert_eq!(app.backend.stats().started, calls);

    // Back up: after Retry-After, the retry of k0 is charged, once.
    read(send(router, admin(r#"{"state":"up"}"#)).await).await;
    tokio::time::advance(Duration::from_secs(retry_after)).await;
    let (status, _, body) = read(send(router, pay(Some("k0"), 150_000)).await).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, headers, _) = read(send(router, pay(Some("k0"), 150_000)).await).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers[payment::REPLAYED], "true");
    let charges = app.ledger.charges();
    assert_eq!(charges.len(), 2);
    assert_eq!(charges[1].key.as_deref(), Some("k0"));
}

#[tokio::test(start_paused = true)]
async fn payment_policy_keeps_keyless_payments_out_of_the_waiting_room() {
    let policy = payment_policy();
    assert_eq!(policy.route(payment::KEYLESS).waiting_room.capacity, 0);
    assert!(policy.route(payment::KEYED).waiting_room.capacity > 0);
}

#[tokio::test(start_paused = true)]
async fn payment_serves_the_same_health_snapshot() {
    let app = payment_app();
    let (status, _, health) = read(send(&app.router, get("/admin/health")).await).await;
    assert_eq!(status, StatusCode::OK);
    let routes = health["routes"].as_array().unwrap();
    assert_eq!(routes.last().unwrap()["route"], "overflow");
    let bad = Request::post("/admin/mode")
        .body(Body::from("{\"route\": 1}"))
        .unwrap();
    let (status, _, body) = read(send(&app.router, bad).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test(start_paused = true)]
async fn payment_takes_a_route_out_by_hand_until_a_time_and_back() {
    let app = payment_app();
    let router = &app.router;
    let (status, _, _) = read(send(router, pay(None, 150_000)).await).await;
    assert_eq!(status, StatusCode::CREATED);
    let route = payment::KEYLESS;
    let health_of = |health: &Value| {
        health["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == route)
            .unwrap()
            .clone()
    };

    let out = json!({"route": route, "action": "open_until", "for": "10m"});
    let (status, _, health) =
        read(send(router, post_json("/admin/breaker", &[], &out)).await).await;
    assert_eq!(status, StatusCode::OK, "{health}");
    let keyless = health_of(&health);
    assert_eq!(keyless["state"], "open");
    assert_eq!(keyless["next_probe_in_ms"], 600_000);
    assert!(keyless["next_probe_at"].as_str().unwrap().ends_with('Z'));
    let (status, headers, body) = read(send(router, pay(None, 150_000)).await).await;
    not_charged(status, &headers, &body);
    let (reason, after) = brownout_answer(status, &headers, &body);
    assert_eq!((reason.as_str(), after), ("open", 600));

    let probe = json!({"route": route, "action": "half_open_now"});
    let (status, _, health) =
        read(send(router, post_json("/admin/breaker", &[], &probe)).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health_of(&health)["state"], "half_open");
    let reset = json!({"route": route, "action": "reset"});
    let (status, _, health) =
        read(send(router, post_json("/admin/breaker", &[], &reset)).await).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health_of(&health)["state"], "closed");
    let (status, _, _) = read(send(router, pay(None, 150_000)).await).await;
    assert_eq!(status, StatusCode::CREATED);

    // Said so: a route not seen, a bad duration, both or neither time.
    for (body, expected) in [
        (
            json!({"route": "/nowhere", "action": "reset"}),
            StatusCode::NOT_FOUND,
        ),
        (
            json!({"route": route, "action": "open_until", "for": "soon"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"route": route, "action": "open_until"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"route": route, "action": "close"}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, _, answer) =
            read(send(router, post_json("/admin/breaker", &[], &body)).await).await;
        assert_eq!(status, expected, "{body}: {answer}");
    }
}
