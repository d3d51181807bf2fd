//! `brownout::retry::RetryPolicy` against the real answers of brownout's
//! stacks, in virtual time: it waits what `Retry-After`,
//! `grpc-retry-pushback-ms` and `Rejected::retry_after` say, retries only
//! idempotent requests unless told, and stops when its budget is spent.

#![cfg(feature = "grpc")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use brownout::retry::RetryPolicy;
use brownout::{BrownoutLayer, Policy, Rejected};
use http::{Method, Request, Response, StatusCode};
use tokio::time::Instant;
use tower::retry::RetryLayer;
use tower::{BoxError, Layer, ServiceBuilder, ServiceExt};

/// A breaker that opens after 5 calls at >= 50% failures, for exactly 5 s;
/// no waiting room.
const POLICY: &str = r#"
    [breaker]
    window = { kind = "count", size = 10 }
    minimum_calls = 5
    failure_rate = 0.5
    open_for = "5s"
    open_backoff = { jitter = 0.0 }
    [waiting_room]
    capacity = 0
"#;

/// A back end that fails (500, or `grpc-status: 14`) while `down` is set,
/// and counts its calls.
#[derive(Clone, Default)]
struct Backend {
    down: Arc<AtomicBool>,
    calls: Arc<AtomicU32>,
}

impl Backend {
    fn service(
        &self,
    ) -> impl tower::Service<
        Request<String>,
        Response = Response<String>,
        Error = std::convert::Infallible,
        Future: Send,
    > + Clone
    + Send
    + use<> {
        let (down, calls) = (self.down.clone(), self.calls.clone());
        tower::service_fn(move |req: Request<String>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let down = down.load(Ordering::SeqCst);
            async move {
                let grpc = req.uri().path().starts_with("/booking.");
                let mut response = Response::new(String::new());
                match (down, grpc) {
                    (true, false) => *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR,
                    (true, true) => {
                        response
                            .headers_mut()
                            .insert("grpc-status", "14".parse().unwrap());
                    }
                    (false, true) => {
                        response
                            .headers_mut()
                            .insert("grpc-status", "0".parse().unwrap());
                    }
                    (false, false) => {}
                }
                Ok(response)
            }
        })
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

fn request(method: Method, path: &str, headers: &[(&str, &str)]) -> Request<String> {
    let mut req = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(String::new()).unwrap()
}

/// Opens the breaker of `path` through `svc` (5 failures), then brings the
/// back end up: the next call the breaker lets through succeeds.
async fn open_the_breaker<S>(backend: &Backend, svc: &S, path: &str)
where
    S: tower::Service<Request<String>> + Clone,
    S::Error: std::fmt::Debug,
{
    backend.down.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        let _ = svc
            .clone()
            .oneshot(request(Method::GET, path, &[]))
            .await
            .unwrap();
    }
    backend.down.store(false, Ordering::SeqCst);
}

fn no_jitter() -> RetryPolicy {
    RetryPolicy::new().jitter(0.0)
}

#[tokio::test(start_paused = true)]
async fn http_a_get_waits_the_retry_after_of_an_open_breaker_then_is_served() {
    let backend = Backend::default();
    let stack = BrownoutLayer::from_policy(&Policy::from_toml(POLICY).unwrap())
        .http()
        .layer(backend.service());
    open_the_breaker(&backend, &stack, "/slots").await;
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(no_jitter()))
        .service(stack);

    let start = Instant::now();
    let response = client
        .oneshot(request(Method::GET, "/slots", &[]))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(5),
        "waited exactly Retry-After: 5"
    );
    assert_eq!(backend.calls(), 6, "the retry was the breaker's probe");
}

#[tokio::test(start_paused = true)]
async fn http_a_post_is_retried_only_with_an_idempotency_key() {
    let backend = Backend::default();
    let stack = BrownoutLayer::from_policy(&Policy::from_toml(POLICY).unwrap())
        .http()
        .layer(backend.service());
    open_the_breaker(&backend, &stack, "/bookings").await;
    let client = |policy: RetryPolicy| {
        ServiceBuilder::new()
            .layer(RetryLayer::new(policy))
            .service(stack.clone())
    };

    let start = Instant::now();
    let response = client(no_jitter())
        .oneshot(request(Method::POST, "/bookings", &[]))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(start.elapsed(), Duration::ZERO, "not retried");

    let response = client(no_jitter())
        .oneshot(request(
            Method::POST,
            "/bookings",
            &[("idempotency-key", "k1")],
        ))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn http_no_retry_past_max_wait_or_without_budget() {
    let backend = Backend::default();
    let stack = BrownoutLayer::from_policy(&Policy::from_toml(POLICY).unwrap())
        .http()
        .layer(backend.service());
    open_the_breaker(&backend, &stack, "/slots").await;
    let client = |policy: RetryPolicy| {
        ServiceBuilder::new()
            .layer(RetryLayer::new(policy))
            .service(stack.clone())
    };
    let start = Instant::now();

    // Retry-After: 5 is more than the 2 s the caller will wait.
    let impatient = no_jitter().max_wait(Duration::from_secs(2));
    let response = client(impatient)
        .oneshot(request(Method::GET, "/slots", &[]))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);

    // A budget with no reserve and no share of requests: no retry at all.
    let broke = no_jitter().budget(Duration::from_secs(1), 0, 0.0);
    let response = client(broke)
        .oneshot(request(Method::GET, "/slots", &[]))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(backend.calls(), 5, "nothing reached the back end");
}

#[tokio::test(start_paused = true)]
async fn a_shared_budget_caps_retries_across_requests() {
    let backend = Backend::default();
    let stack = BrownoutLayer::from_policy(&Policy::from_toml(POLICY).unwrap())
        .http()
        .layer(backend.service());
    open_the_breaker(&backend, &stack, "/slots").await;
    // 2 retries in reserve (1 a second for 2 s), nothing earned.
    let policy =
        no_jitter()
            .max_wait(Duration::from_secs(60))
            .budget(Duration::from_secs(2), 1, 0.0);
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .service(stack);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..5 {
        set.spawn(client.clone().oneshot(request(Method::GET, "/slots", &[])));
    }
    let answers = set.join_all().await;
    let served = answers
        .iter()
        .filter(|r| r.as_ref().unwrap().status() == StatusCode::OK)
        .count();
    assert!(
        served <= 2,
        "at most the budget's 2 retries were made: {served} served"
    );
    assert!(served >= 1, "the budget allowed a retry");
}

#[tokio::test(start_paused = true)]
async fn grpc_unavailable_with_pushback_is_retried_after_the_pushback() {
    let backend = Backend::default();
    let stack = BrownoutLayer::from_policy(&Policy::from_toml(POLICY).unwrap())
        .grpc()
        .layer(backend.service());
    open_the_breaker(&backend, &stack, "/booking.Booking/Book").await;
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(no_jitter()))
        .service(stack);
    let start = Instant::now();
    let response = client
        .oneshot(request(
            Method::POST,
            "/booking.Booking/Book",
            &[("idempotency-key", "b1")],
        ))
        .await
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], "0");
    assert_eq!(start.elapsed(), Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn grpc_a_negative_pushback_means_do_not_retry() {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let svc = tower::service_fn(move |_: Request<String>| {
        counted.fetch_add(1, Ordering::SeqCst);
        async {
            let mut response = Response::new(String::new());
            response
                .headers_mut()
                .insert("grpc-status", "14".parse().unwrap());
            response
                .headers_mut()
                .insert("grpc-retry-pushback-ms", "-1".parse().unwrap());
            Ok::<_, BoxError>(response)
        }
    });
    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(no_jitter()))
        .service(svc);
    client
        .oneshot(request(Method::GET, "/booking.Booking/List", &[]))
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_rejected_error_is_retried_after_its_retry_after() {
    let backend = Backend::default();
    let inner = backend.service();
    let inner = tower::service_fn(move |req: Request<String>| {
        let call = inner.clone().oneshot(req);
        async move {
            let response = call.await.unwrap();
            if response.status().is_server_error() {
                Err::<Response<String>, BoxError>("back end failed".into())
            } else {
                Ok(response)
            }
        }
    });
    // The generic stack: rejections are the service's errors.
    let stack = BrownoutLayer::from_policy(&Policy::from_toml(POLICY).unwrap()).layer(inner);
    backend.down.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        let _ = stack.clone().oneshot(request(Method::GET, "/x", &[])).await;
    }
    backend.down.store(false, Ordering::SeqCst);
    let rejected = stack
        .clone()
        .oneshot(request(Method::GET, "/x", &[]))
        .await
        .unwrap_err();
    let after = rejected.downcast_ref::<Rejected>().unwrap().retry_after();
    assert_eq!(after, Some(Duration::from_secs(5)));

    let client = ServiceBuilder::new()
        .layer(RetryLayer::new(no_jitter()))
        .service(stack);
    let start = Instant::now();
    client
        .oneshot(request(Method::GET, "/x", &[]))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(5));
}
