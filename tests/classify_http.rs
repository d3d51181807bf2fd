#![cfg(feature = "http")]
//! `ServerErrorsAsFailures`: 5xx and inner errors open the breaker; a 4xx
//! is not evidence either way.

mod support;

use std::io;
use std::time::Duration;

use brownout::classify::ServerErrorsAsFailures;
use brownout::{
    BreakerPolicy, BreakerState, CircuitBreakerLayer, Reason, Rejected, Trip, WindowPolicy,
};
use http::Response;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

use support::alloc::{Counting, allocations_in, now};

/// What the back end answers: a status, or an error of its own.
type Answer = Result<u16, &'static str>;

fn layer(minimum_calls: u32) -> CircuitBreakerLayer<ServerErrorsAsFailures> {
    CircuitBreakerLayer::new(BreakerPolicy {
        window: WindowPolicy::Count { size: 10 },
        minimum_calls,
        // Opens at the threshold: what these tests read is the verdict.
        trip: Trip::Open,
        open_for: Duration::from_secs(30),
        ..BreakerPolicy::default()
    })
    .classify(ServerErrorsAsFailures)
}

fn service(
    layer: &CircuitBreakerLayer<ServerErrorsAsFailures>,
) -> impl Service<Answer, Response = Response<()>, Error = BoxError> + Clone {
    layer.layer(service_fn(|answer: Answer| async move {
        match answer {
            Ok(status) => Ok(Response::builder().status(status).body(()).unwrap()),
            Err(msg) => Err(io::Error::other(msg)),
        }
    }))
}

async fn call<S>(svc: &mut S, answer: Answer) -> Result<Response<()>, BoxError>
where
    S: Service<Answer, Response = Response<()>, Error = BoxError>,
{
    svc.ready().await?.call(answer).await
}

fn assert_open(result: Result<Response<()>, BoxError>) {
    let err = result.expect_err("the breaker should have rejected the call");
    let rejected = err
        .downcast_ref::<Rejected>()
        .unwrap_or_else(|| panic!("expected a rejection, got {err}"));
    assert_eq!(rejected.reason(), Reason::Open);
}

#[tokio::test(start_paused = true)]
async fn client_errors_never_open_the_breaker() {
    let layer = layer(5);
    let mut svc = service(&layer);
    for round in 0..20 {
        for status in [400, 401, 403, 404, 409, 422, 429, 499] {
            let response = call(&mut svc, Ok(status)).await.unwrap_or_else(|err| {
                panic!("round {round}: {status} was rejected: {err}");
            });
            assert_eq!(
                response.status().as_u16(),
                status,
                "passed through untouched"
            );
        }
    }
    assert_eq!(layer.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn server_errors_open_the_breaker() {
    for status in [500, 502, 503, 504, 599, 600, 999] {
        let layer = layer(5);
        let mut svc = service(&layer);
        for _ in 0..5 {
            let response = call(&mut svc, Ok(status)).await.unwrap();
            assert_eq!(
                response.status().as_u16(),
                status,
                "the 5xx itself passes through"
            );
        }
        assert_eq!(layer.state(), BreakerState::Open, "status {status}");
        assert_open(call(&mut svc, Ok(200)).await);
    }
}

#[tokio::test(start_paused = true)]
async fn inner_errors_open_the_breaker() {
    let layer = layer(3);
    let mut svc = service(&layer);
    for _ in 0..3 {
        let err = call(&mut svc, Err("connection refused")).await.unwrap_err();
        assert!(
            err.downcast_ref::<Rejected>().is_none(),
            "the back end's own error"
        );
        assert_eq!(err.to_string(), "connection refused");
    }
    assert_open(call(&mut svc, Ok(200)).await);
}

#[tokio::test(start_paused = true)]
async fn client_errors_are_not_evidence() {
    // failure_rate 0.5 over the last 10 calls, judged from 10 calls. A 4xx
    // says nothing about the back end: it neither counts towards the 10
    // nor dilutes the server errors.
    let layer = layer(10);
    let mut svc = service(&layer);
    for _ in 0..25 {
        for status in [404, 400, 405, 401, 429] {
            call(&mut svc, Ok(status)).await.unwrap();
        }
    }
    assert_eq!(layer.state(), BreakerState::Closed);
    // 9 calls of evidence, 4 of them server errors: still below 10 calls.
    for status in [503, 200, 500, 200, 502, 200, 504, 200, 200] {
        call(&mut svc, Ok(status)).await.unwrap();
    }
    assert_eq!(layer.state(), BreakerState::Closed);
    // Client errors in between push nothing out of the window...
    for _ in 0..10 {
        call(&mut svc, Ok(404)).await.unwrap();
    }
    assert_eq!(layer.state(), BreakerState::Closed);
    // ...so a fifth 5xx makes 5 of 10.
    call(&mut svc, Ok(500)).await.unwrap();
    assert_eq!(layer.state(), BreakerState::Open);
    assert_open(call(&mut svc, Ok(200)).await);
}

#[tokio::test(start_paused = true)]
async fn clones_share_one_breaker() {
    let layer = layer(4);
    let svc = service(&layer);
    for _ in 0..4 {
        let mut clone = svc.clone();
        call(&mut clone, Ok(503)).await.unwrap();
    }
    assert_open(call(&mut svc.clone(), Ok(200)).await);
}

// ---- allocations per call -------------------------------------------------

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn classifying_allocates_nothing() {
    assert_eq!(
        allocations_in(|| drop(std::hint::black_box(Box::new(7_u64)))),
        1
    );

    const CALLS: u16 = 1_000;
    let status = |i: u16| match i % 4 {
        0 => 503,
        1 => 404,
        _ => 200,
    };
    let layer = layer(20);
    let mut svc = layer.layer(service_fn(|status: u16| {
        let mut response = Response::new(());
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        std::future::ready(Ok::<_, io::Error>(response))
    }));
    let mut run = |range: std::ops::Range<u16>| {
        for i in range {
            now(std::future::poll_fn(|cx| svc.poll_ready(cx))).unwrap();
            let response = now(svc.call(status(i))).unwrap();
            assert_eq!(response.status().as_u16(), status(i));
        }
    };
    run(0..CALLS);
    let allocations = allocations_in(|| run(CALLS..2 * CALLS));
    assert_eq!(allocations, 0, "allocations in {CALLS} calls");
    assert_eq!(layer.state(), BreakerState::Closed, "a quarter failed");
}
