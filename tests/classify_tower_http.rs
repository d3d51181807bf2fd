#![cfg(feature = "tower-http")]
//! tower-http's classifiers through `classify::TowerHttp`: a status range
//! settled from the headers, gRPC's status settled from the trailers when
//! the body ends, and a body dropped before its end cancelled.

use std::io;
use std::time::Duration;

use brownout::classify::TowerHttp;
use brownout::{BreakerPolicy, BreakerState, CircuitBreakerLayer, Trip, WindowPolicy};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt, service_fn};
use tower_http::classify::{GrpcErrorsAsFailures, StatusInRangeAsFailures};

fn policy() -> BreakerPolicy {
    BreakerPolicy {
        window: WindowPolicy::Count { size: 10 },
        minimum_calls: 3,
        failure_rate: 0.5,
        // Opens at the threshold: what these tests read is the verdict.
        trip: Trip::Open,
        open_for: Duration::from_secs(30),
        ..BreakerPolicy::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_status_range_settles_from_the_headers() {
    let layer = CircuitBreakerLayer::new(policy())
        .classify(TowerHttp(StatusInRangeAsFailures::new(400..=599)));
    let svc = layer.layer(service_fn(|status: u16| async move {
        Ok::<_, io::Error>(
            Response::builder()
                .status(status)
                .body(String::new())
                .unwrap(),
        )
    }));
    for _ in 0..3 {
        let response = svc.clone().oneshot(200).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(layer.state(), BreakerState::Closed);
    // 404s: failures for this classifier (brownout's own ignores them).
    for _ in 0..3 {
        let response = svc.clone().oneshot(404).await.unwrap();
        assert_eq!(response.status(), 404);
    }
    assert_eq!(layer.state(), BreakerState::Open);
}

/// A gRPC answer whose status comes in the trailers.
fn grpc_answer(
    status: &'static str,
) -> Response<impl http_body::Body<Data = Bytes, Error = io::Error>> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    let body = Full::new(Bytes::from_static(b"reply"))
        .map_err(|never| match never {})
        .with_trailers(async move { Some(Ok::<_, io::Error>(trailers)) });
    Response::new(body)
}

#[tokio::test(start_paused = true)]
async fn grpc_status_settles_when_the_trailers_arrive() {
    let layer = CircuitBreakerLayer::new(policy()).classify(TowerHttp(GrpcErrorsAsFailures::new()));
    let svc = layer.layer(service_fn(|status: &'static str| async move {
        Ok::<_, io::Error>(grpc_answer(status))
    }));
    // Bodies dropped before their end: cancelled, no sample.
    for _ in 0..5 {
        let response = svc.clone().oneshot("14").await.unwrap();
        drop(response);
    }
    assert_eq!(layer.state(), BreakerState::Closed);
    // Read to the end: `UNAVAILABLE` in the trailers, three failures.
    for n in 0..3 {
        assert_eq!(layer.state(), BreakerState::Closed, "call {n}");
        let response = svc.clone().oneshot("14").await.unwrap();
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "14");
    }
    assert_eq!(layer.state(), BreakerState::Open);
}
