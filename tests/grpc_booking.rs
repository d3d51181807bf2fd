//! The gRPC booking example, built in-process from the example's own code
//! and policy file and called with its generated client straight on its
//! router (no sockets), in paused time: the methods work, each is a route
//! of brownout's own, ops' HTTP routes (`/admin/health`, `/admin/mode`,
//! `/metrics`) sit beside them outside brownout, and brownout's answers
//! carry the gRPC code the library gives their reason.

#![cfg(all(feature = "grpc", feature = "axum", feature = "sim"))]

#[path = "../examples/grpc_booking.rs"]
#[allow(dead_code)]
mod grpc_booking;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use brownout::{Policy, Reason};
use grpc_booking::proto::booking_client::BookingClient;
use grpc_booking::proto::{BookRequest, ListSlotsRequest, WatchSlotsRequest};
use grpc_booking::{brownout_reason, code_of};
use http::Uri;
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::time::Instant;
use tonic::Code;
use tower::ServiceExt;

const LIST_SLOTS: &str = "/booking.v1.Booking/ListSlots";
const BOOK: &str = "/booking.v1.Booking/Book";
const WATCH_SLOTS: &str = "/booking.v1.Booking/WatchSlots";

fn policy() -> Policy {
    Policy::from_path(grpc_booking::DEFAULT_POLICY).expect("examples/policies/booking.toml loads")
}

/// The generated client, calling the example's router in-process.
fn client(router: &Router) -> BookingClient<Router> {
    BookingClient::with_origin(router.clone(), Uri::from_static("http://booking.test"))
}

fn book(slot: &str) -> BookRequest {
    BookRequest {
        name: "Asha".into(),
        slot: slot.into(),
    }
}

/// An HTTP call to ops' routes: the status and the body as JSON (or text).
async fn http(router: &Router, method: &str, uri: &str, body: &str) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_owned()))
        .expect("a valid request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("a body")
        .to_bytes();
    (status, String::from_utf8(bytes.to_vec()).expect("UTF-8"))
}

/// `GET /admin/health`: each route's name and breaker state.
async fn health(router: &Router) -> Vec<(String, String)> {
    let (status, body) = http(router, "GET", "/admin/health", "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let health: Value = serde_json::from_str(&body).expect("JSON");
    health["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| {
            let field = |name: &str| r[name].as_str().expect("a string").to_owned();
            (field("route"), field("state"))
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_generated_client_lists_books_and_watches_each_method_its_own_route() {
    let app = grpc_booking::app(&policy(), None).expect("the service builds");
    let mut client = client(&app.router);

    let slots = client
        .list_slots(ListSlotsRequest {})
        .await
        .expect("served")
        .into_inner()
        .slots;
    assert_eq!(slots.len(), 3 * 32, "three days of quarter hours");
    let reply = client
        .book(book("2026-12-02T09:00"))
        .await
        .expect("booked")
        .into_inner();
    assert_eq!((reply.id, reply.slot.as_str()), (1, "2026-12-02T09:00"));
    let status = client
        .book(book("2026-12-02T09:00"))
        .await
        .expect_err("taken");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    let status = client.book(book("tomorrow")).await.expect_err("no slot");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("slot: "), "{status:?}");

    // A stream: three lists of the day, a second apart, then its end.
    let start = Instant::now();
    let mut lists = client
        .watch_slots(WatchSlotsRequest {
            day: "2026-12-02".into(),
            updates: 3,
        })
        .await
        .expect("the stream starts")
        .into_inner();
    let mut seen = Vec::new();
    while let Some(list) = lists.message().await.expect("no error") {
        seen.push((list.slots.len(), start.elapsed()));
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(
        seen.iter().all(|(n, _)| *n == 31),
        "one slot booked: {seen:?}"
    );
    assert!(
        seen[2].1 >= Duration::from_secs(2),
        "a second apart: {seen:?}"
    );
    let status = client
        .watch_slots(WatchSlotsRequest {
            day: String::new(),
            updates: 11,
        })
        .await
        .expect_err("too many updates");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), "updates: 11 is more than 10");

    // Each method a route of brownout's, named by its path; ops' routes
    // are not routes of brownout's.
    let routes = health(&app.router).await;
    for route in [LIST_SLOTS, BOOK, WATCH_SLOTS] {
        assert!(
            routes.contains(&(route.to_owned(), "closed".to_owned())),
            "{route} in {routes:?}"
        );
    }
    assert!(
        routes.iter().all(|(route, _)| !route.starts_with("/admin")),
        "{routes:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_route_forced_open_is_answered_by_brownout_with_the_code_of_its_reason() {
    let app = grpc_booking::app(&policy(), None).expect("the service builds");
    let mut client = client(&app.router);
    client
        .book(book("2026-12-03T10:00"))
        .await
        .expect("served while enforcing");
    let calls = app.office.sim().stats().started;

    let (status, body) = http(
        &app.router,
        "POST",
        "/admin/mode",
        r#"{"route": "/booking.v1.Booking/Book", "mode": "forced_open"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let status = client
        .book(book("2026-12-03T10:15"))
        .await
        .expect_err("brownout answers");
    assert_eq!(brownout_reason(&status), Some(Reason::Open), "{status:?}");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(
        app.office.sim().stats().started,
        calls,
        "the back end was not called"
    );
    // The other methods are other routes, still served.
    client
        .list_slots(ListSlotsRequest {})
        .await
        .expect("another route");

    // A status that is not brownout's is not read as one.
    let status = client
        .book(book("2026-12-03T10:00"))
        .await
        .expect_err("brownout answers first");
    assert_eq!(brownout_reason(&status), Some(Reason::Open));
    let not_ours = tonic::Status::unavailable("request rejected (open) by someone else");
    assert_eq!(brownout_reason(&not_ours), None);
    let wrong_code = tonic::Status::internal("request rejected (open): …");
    assert_eq!(brownout_reason(&wrong_code), None);

    let (status, body) = http(
        &app.router,
        "POST",
        "/admin/mode",
        r#"{"route": "/nowhere", "mode": "forced_open"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[test]
fn each_reason_has_the_grpc_code_the_library_gives_it() {
    assert_eq!(code_of(Reason::Open), Code::Unavailable);
    assert_eq!(code_of(Reason::Maintenance), Code::Unavailable);
    assert_eq!(code_of(Reason::QueueFull), Code::Unavailable);
    assert_eq!(code_of(Reason::QueueTimeout), Code::Unavailable);
    assert_eq!(code_of(Reason::Shed), Code::ResourceExhausted);
    assert_eq!(code_of(Reason::Budget), Code::ResourceExhausted);
    assert_eq!(code_of(Reason::Deadline), Code::DeadlineExceeded);
}

#[tokio::test(start_paused = true)]
async fn metrics_are_served_for_prometheus_beside_the_grpc_methods() {
    let recorder = grpc_booking::server::prometheus().build_recorder();
    let handle = recorder.handle();
    let _local = metrics::set_default_local_recorder(&recorder);
    let app = grpc_booking::app(&policy(), Some(handle)).expect("the service builds");
    client(&app.router)
        .list_slots(ListSlotsRequest {})
        .await
        .expect("served");

    let (status, text) = http(&app.router, "GET", "/metrics", "").await;
    assert_eq!(status, StatusCode::OK);
    let served = text
        .lines()
        .find(|line| {
            line.starts_with("brownout_requests_total{")
                && line.contains(r#"route="/booking.v1.Booking/ListSlots""#)
                && line.contains(r#"outcome="served""#)
        })
        .unwrap_or_else(|| panic!("no served ListSlots in:\n{text}"));
    assert!(served.ends_with(" 1"), "{served}");
    // Histograms, not summaries: the example's buckets are set.
    assert!(
        text.contains("brownout_latency_seconds_bucket{"),
        "no latency histogram in:\n{text}"
    );
}
