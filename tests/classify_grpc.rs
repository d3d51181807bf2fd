#![cfg(feature = "grpc")]
//! `GrpcErrorsAsFailures`: the verdict comes from `grpc-status`, in the
//! headers (trailers-only responses) or in the trailers after the body.

mod support;

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use brownout::classify::{GrpcBody, GrpcCode, GrpcErrorsAsFailures};
use brownout::{
    BackoffPolicy, BreakerPolicy, BreakerState, CircuitBreakerLayer, Reason, Rejected, Trip,
    WindowPolicy,
};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::Sleep;
use tower::{BoxError, Layer, Service, ServiceExt, service_fn};

use support::alloc::{Counting, allocations_in, now};

// ---- a scripted response body ---------------------------------------------

#[derive(Debug, Clone)]
enum Step {
    Data(&'static str),
    /// Trailers with this `grpc-status`.
    Status(&'static str),
    /// Trailers without `grpc-status`.
    TrailersWithoutStatus,
    /// The stream breaks.
    Error,
    /// Nothing for this long.
    Pause(Duration),
}

/// A body that plays its steps in order, then ends.
#[derive(Debug)]
struct Script {
    steps: VecDeque<Step>,
    pause: Option<Pin<Box<Sleep>>>,
    /// Whether `is_end_stream` says so once the steps are played (as
    /// hyper's bodies do), or stays `false` until the `None` frame.
    reports_end: bool,
    hint: SizeHint,
}

impl Script {
    fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Self {
            steps: steps.into_iter().collect(),
            pause: None,
            reports_end: true,
            hint: SizeHint::default(),
        }
    }

    fn silent_end(mut self) -> Self {
        self.reports_end = false;
        self
    }
}

impl Body for Script {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(pause) = this.pause.as_mut() {
                ready!(pause.as_mut().poll(cx));
                this.pause = None;
            }
            let frame = match this.steps.pop_front() {
                None => return Poll::Ready(None),
                Some(Step::Pause(d)) => {
                    this.pause = Some(Box::pin(tokio::time::sleep(d)));
                    continue;
                }
                Some(Step::Data(s)) => Frame::data(Bytes::from_static(s.as_bytes())),
                Some(Step::Status(code)) => {
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static(code));
                    trailers.insert("grpc-message", HeaderValue::from_static("scripted"));
                    Frame::trailers(trailers)
                }
                Some(Step::TrailersWithoutStatus) => {
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-message", HeaderValue::from_static("no status"));
                    Frame::trailers(trailers)
                }
                Some(Step::Error) => {
                    return Poll::Ready(Some(Err(io::Error::other("stream broke"))));
                }
            };
            return Poll::Ready(Some(Ok(frame)));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.reports_end && self.steps.is_empty() && self.pause.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

// ---- the back end -----------------------------------------------------------

/// What the back end does with one call: wait, then answer.
struct Call {
    delay: Duration,
    answer: Result<Response<Script>, io::Error>,
}

/// A 200 whose body is one message followed by trailers with `status`.
fn streamed(status: &'static str) -> Call {
    answer(Response::new(Script::new([
        Step::Data("message"),
        Step::Status(status),
    ])))
}

/// A trailers-only response: `grpc-status` in the headers, no body.
fn trailers_only(status: &'static str) -> Call {
    let mut response = Response::new(Script::new([]));
    response
        .headers_mut()
        .insert("grpc-status", HeaderValue::from_static(status));
    answer(response)
}

fn answer(response: Response<Script>) -> Call {
    Call {
        delay: Duration::ZERO,
        answer: Ok(response),
    }
}

type Layered = CircuitBreakerLayer<GrpcErrorsAsFailures>;
type Reply = Response<GrpcBody<Script>>;

fn policy(minimum_calls: u32) -> BreakerPolicy {
    BreakerPolicy {
        window: WindowPolicy::Count { size: 10 },
        minimum_calls,
        // Opens at the threshold: what these tests read is the verdict.
        trip: Trip::Open,
        open_for: Duration::from_secs(10),
        open_backoff: BackoffPolicy {
            jitter: 0.0,
            ..BackoffPolicy::default()
        },
        ..BreakerPolicy::default()
    }
}

fn layer(minimum_calls: u32) -> Layered {
    CircuitBreakerLayer::new(policy(minimum_calls)).classify(GrpcErrorsAsFailures::new())
}

fn service(layer: &Layered) -> impl Service<Call, Response = Reply, Error = BoxError> + Clone {
    layer.layer(service_fn(|call: Call| async move {
        tokio::time::sleep(call.delay).await;
        call.answer
    }))
}

async fn call<S>(svc: &mut S, call: Call) -> Result<Reply, BoxError>
where
    S: Service<Call, Response = Reply, Error = BoxError>,
{
    svc.ready().await?.call(call).await
}

/// Reads a body to its end.
async fn drain(response: Reply) -> Result<(), io::Error> {
    response.into_body().collect().await.map(drop)
}

fn assert_open(result: Result<Reply, BoxError>) {
    let err = result.expect_err("the breaker should have rejected the call");
    let rejected = err
        .downcast_ref::<Rejected>()
        .unwrap_or_else(|| panic!("expected a rejection, got {err}"));
    assert_eq!(rejected.reason(), Reason::Open);
}

/// Runs `calls` (each read to its end) through a fresh breaker that needs
/// `calls.len()` calls for a verdict, and returns its state after them.
async fn state_after(classifier: GrpcErrorsAsFailures, calls: Vec<Call>) -> BreakerState {
    let layer = CircuitBreakerLayer::new(policy(calls.len() as u32)).classify(classifier);
    let mut svc = service(&layer);
    for c in calls {
        if let Ok(response) = call(&mut svc, c).await {
            let _ = drain(response).await;
        }
    }
    layer.state()
}

// ---- the tests --------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn unavailable_in_trailers_trips_once_the_bodies_are_read() {
    let layer = layer(3);
    let mut svc = service(&layer);
    let mut responses = Vec::new();
    for _ in 0..3 {
        let response = call(&mut svc, streamed("14")).await.unwrap();
        assert_eq!(response.status(), 200);
        responses.push(response);
    }
    // Headers said 200 and no status: nothing is known yet.
    assert_eq!(layer.state(), BreakerState::Closed);
    let last = responses.pop().unwrap();
    for response in responses {
        drain(response).await.unwrap();
    }
    assert_eq!(layer.state(), BreakerState::Closed, "2 calls, minimum is 3");
    drain(last).await.unwrap();
    assert_eq!(layer.state(), BreakerState::Open);
    assert_open(call(&mut svc, streamed("0")).await);
}

#[tokio::test(start_paused = true)]
async fn ok_in_trailers_does_not_trip() {
    let layer = layer(3);
    let mut svc = service(&layer);
    for _ in 0..30 {
        let response = call(&mut svc, streamed("0")).await.unwrap();
        drain(response).await.unwrap();
    }
    assert_eq!(layer.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn which_codes_are_failures() {
    let classifier = GrpcErrorsAsFailures::new();
    for code in GrpcCode::ALL {
        let failure = matches!(
            code,
            GrpcCode::Unavailable
                | GrpcCode::DeadlineExceeded
                | GrpcCode::ResourceExhausted
                | GrpcCode::Internal
                | GrpcCode::Unknown
        );
        assert_eq!(classifier.is_failure(code), failure, "{code}");
        let status = HeaderValue::from(code.as_i32())
            .to_str()
            .unwrap()
            .to_owned();
        let status: &'static str = Box::leak(status.into_boxed_str());
        let want = if failure {
            BreakerState::Open
        } else {
            BreakerState::Closed
        };
        let calls = (0..3).map(|_| streamed(status)).collect();
        assert_eq!(
            state_after(classifier, calls).await,
            want,
            "{code} in trailers"
        );
        let calls = (0..3).map(|_| trailers_only(status)).collect();
        assert_eq!(
            state_after(classifier, calls).await,
            want,
            "{code} in headers"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn not_found_is_not_a_failure_unless_asked() {
    let calls = || (0..3).map(|_| streamed("5")).collect();
    let default = GrpcErrorsAsFailures::new();
    assert_eq!(state_after(default, calls()).await, BreakerState::Closed);
    let strict = default.with_failure(GrpcCode::NotFound);
    assert!(strict.is_failure(GrpcCode::NotFound));
    assert_eq!(state_after(strict, calls()).await, BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn with_success_removes_a_failure_code() {
    let calls = || (0..3).map(|_| streamed("14")).collect();
    let lenient = GrpcErrorsAsFailures::new().with_success(GrpcCode::Unavailable);
    assert!(!lenient.is_failure(GrpcCode::Unavailable));
    assert!(lenient.is_failure(GrpcCode::Internal));
    assert_eq!(state_after(lenient, calls()).await, BreakerState::Closed);
    assert_eq!(
        state_after(GrpcErrorsAsFailures::new(), calls()).await,
        BreakerState::Open
    );
}

#[tokio::test(start_paused = true)]
async fn trailers_only_responses_are_classified_without_reading_the_body() {
    // Failure codes in the headers: the breaker opens while every body is
    // still held unread.
    let layer = layer(3);
    let mut svc = service(&layer);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(call(&mut svc, trailers_only("14")).await.unwrap());
    }
    assert_eq!(layer.state(), BreakerState::Open);
    assert_open(call(&mut svc, trailers_only("0")).await);

    // An empty 200 without a status (hyper would never poll its body) is
    // settled at once too.
    let fresh = CircuitBreakerLayer::new(policy(3)).classify(GrpcErrorsAsFailures::new());
    let mut fresh_svc = service(&fresh);
    let mut empty = Vec::new();
    for _ in 0..3 {
        empty.push(call_svc(&mut fresh_svc, answer(Response::new(Script::new([])))).await);
    }
    assert_eq!(fresh.state(), BreakerState::Open);
    drop(empty);

    // OK in the headers settles the half-open probe at once: the breaker
    // closes while the probe's body is still held unread.
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(layer.state(), BreakerState::HalfOpen);
    let mut probes = Vec::new();
    for _ in 0..3 {
        probes.push(call(&mut svc, trailers_only("0")).await.unwrap());
    }
    assert_eq!(layer.state(), BreakerState::Closed);
    drop((held, probes));
}

#[tokio::test(start_paused = true)]
async fn a_body_that_says_it_ended_after_data_has_failed() {
    // hyper stops polling once `is_end_stream` is true and drops the body:
    // the missing trailers must be noticed on the data frame.
    let layer = layer(3);
    let mut svc = service(&layer);
    for _ in 0..3 {
        let call = answer(Response::new(Script::new([Step::Data("m")])));
        let mut response = call_svc(&mut svc, call).await;
        let frame = response.body_mut().frame().await.unwrap().unwrap();
        assert!(frame.is_data());
        assert!(response.body().is_end_stream());
        drop(response);
    }
    assert_eq!(layer.state(), BreakerState::Open);
}

async fn call_svc<S>(svc: &mut S, c: Call) -> Reply
where
    S: Service<Call, Response = Reply, Error = BoxError>,
{
    call(svc, c).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn dropped_bodies_are_not_failures() {
    let layer = layer(3);
    let mut svc = service(&layer);
    for i in 0..50 {
        let mut response = call(&mut svc, streamed("14")).await.unwrap();
        if i % 2 == 0 {
            // Read the message, then walk away before the trailers.
            let frame = response.body_mut().frame().await.unwrap().unwrap();
            assert!(frame.is_data());
        }
        drop(response);
    }
    assert_eq!(layer.state(), BreakerState::Closed);
    // The same calls read to their end do count.
    for _ in 0..3 {
        drain(call(&mut svc, streamed("14")).await.unwrap())
            .await
            .unwrap();
    }
    assert_eq!(layer.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_body_gives_its_probe_slot_back() {
    let layer = CircuitBreakerLayer::new(BreakerPolicy {
        half_open_probes: 1,
        ..policy(2)
    })
    .classify(GrpcErrorsAsFailures::new());
    let mut svc = service(&layer);
    for _ in 0..2 {
        call(&mut svc, trailers_only("14")).await.unwrap();
    }
    assert_eq!(layer.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(layer.state(), BreakerState::HalfOpen);

    // The probe's body holds the only probe slot until it ends.
    let probe = call(&mut svc, streamed("0")).await.unwrap();
    assert_open(call(&mut svc, streamed("0")).await);
    assert_eq!(svc_state(&layer), BreakerState::HalfOpen);

    // Dropped before its trailers: the slot comes back, nothing counted.
    drop(probe);
    assert_eq!(layer.state(), BreakerState::HalfOpen);
    let probe = call(&mut svc, streamed("0"))
        .await
        .expect("admitted as a probe, not rejected");
    drain(probe).await.unwrap();
    assert_eq!(layer.state(), BreakerState::Closed);
}

fn svc_state(layer: &Layered) -> BreakerState {
    // A service built from the layer sees the same breaker.
    layer
        .layer(service_fn(|_: ()| async { Ok::<_, io::Error>(()) }))
        .state()
}

type MakeCall = fn() -> Call;

#[tokio::test(start_paused = true)]
async fn protocol_errors_are_failures() {
    let c = GrpcErrorsAsFailures::new();
    let cases: Vec<(&str, MakeCall)> = vec![
        ("trailers without grpc-status", || {
            answer(Response::new(Script::new([
                Step::Data("m"),
                Step::TrailersWithoutStatus,
            ])))
        }),
        ("grpc-status not a number", || streamed("fourteen")),
        ("grpc-status with a sign", || streamed("+0")),
        ("grpc-status overflowing", || streamed("99999999999")),
        ("grpc-status 2^32, which would wrap to OK", || {
            streamed("4294967296")
        }),
        ("grpc-status beyond the known codes (UNKNOWN)", || {
            streamed("17")
        }),
        ("empty grpc-status in the headers", || trailers_only("")),
        ("end of stream right after data", || {
            answer(Response::new(Script::new([Step::Data("m")])))
        }),
        ("end of stream seen only at the None frame", || {
            answer(Response::new(Script::new([Step::Data("m")]).silent_end()))
        }),
        ("an empty 200 with no status", || {
            answer(Response::new(Script::new([])))
        }),
        ("the body breaks", || {
            answer(Response::new(Script::new([Step::Data("m"), Step::Error])))
        }),
        ("the service fails", || Call {
            delay: Duration::ZERO,
            answer: Err(io::Error::other("connection reset")),
        }),
        ("HTTP 503 from a proxy", || answer(http_status(503))),
        ("HTTP 502 from a proxy", || answer(http_status(502))),
        ("HTTP 500 from a proxy (UNKNOWN)", || {
            answer(http_status(500))
        }),
    ];
    for (what, make) in cases {
        let calls = (0..3).map(|_| make()).collect();
        assert_eq!(state_after(c, calls).await, BreakerState::Open, "{what}");
    }
    // The codes a proxy's HTTP status maps to follow the configured set.
    let calls = (0..3).map(|_| answer(http_status(404))).collect();
    assert_eq!(
        state_after(c, calls).await,
        BreakerState::Closed,
        "404 is UNIMPLEMENTED"
    );
    let calls = (0..3).map(|_| streamed("17")).collect();
    let lenient = c.with_success(GrpcCode::Unknown);
    assert_eq!(
        state_after(lenient, calls).await,
        BreakerState::Closed,
        "17 is UNKNOWN"
    );
}

fn http_status(status: u16) -> Response<Script> {
    let mut response = Response::new(Script::new([Step::Data("<html>bad gateway</html>")]));
    *response.status_mut() = status.try_into().unwrap();
    response
}

#[tokio::test(start_paused = true)]
async fn grpc_status_in_headers_wins_over_http_status() {
    let calls = (0..3)
        .map(|_| {
            let Call { answer, delay } = trailers_only("0");
            let mut response = answer.unwrap();
            *response.status_mut() = 503.try_into().unwrap();
            Call {
                delay,
                answer: Ok(response),
            }
        })
        .collect();
    assert_eq!(
        state_after(GrpcErrorsAsFailures::new(), calls).await,
        BreakerState::Closed
    );
}

#[tokio::test(start_paused = true)]
async fn a_long_body_does_not_make_a_call_slow() {
    // Slow: 1s to the headers. Half the window slow opens the breaker;
    // failures alone never could.
    let layer = CircuitBreakerLayer::new(BreakerPolicy {
        slow_call_duration: Duration::from_secs(1),
        slow_call_rate: 0.5,
        failure_rate: 1.0,
        ..policy(3)
    })
    .classify(GrpcErrorsAsFailures::new());
    let mut svc = service(&layer);
    let long_stream = || {
        answer(Response::new(Script::new([
            Step::Data("first"),
            Step::Pause(Duration::from_secs(60)),
            Step::Data("second"),
            Step::Status("0"),
        ])))
    };
    for _ in 0..10 {
        let response = call(&mut svc, long_stream()).await.unwrap();
        let started = tokio::time::Instant::now();
        drain(response).await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_secs(60),
            "the body took its time"
        );
    }
    assert_eq!(layer.state(), BreakerState::Closed);

    // Late headers do make it slow.
    for _ in 0..3 {
        let mut late = long_stream();
        late.delay = Duration::from_secs(2);
        drain(call(&mut svc, late).await.unwrap()).await.unwrap();
    }
    // 3 slow of the last 10 calls: under half.
    assert_eq!(layer.state(), BreakerState::Closed);
    for _ in 0..2 {
        let mut late = long_stream();
        late.delay = Duration::from_secs(2);
        drain(call(&mut svc, late).await.unwrap()).await.unwrap();
    }
    assert_eq!(layer.state(), BreakerState::Open, "5 slow of the last 10");
}

#[tokio::test(start_paused = true)]
async fn the_body_forwards_size_hint_and_end_of_stream() {
    let layer = layer(3);
    let mut svc = service(&layer);
    let mut script = Script::new([Step::Data("hello"), Step::Status("0")]);
    script.hint = SizeHint::with_exact(5);
    let mut response = call(&mut svc, answer(Response::new(script))).await.unwrap();
    assert_eq!(response.body().size_hint().exact(), Some(5));
    assert!(!response.body().is_end_stream());
    let data = response.body_mut().frame().await.unwrap().unwrap();
    assert_eq!(data.into_data().unwrap(), "hello");
    let trailers = response.body_mut().frame().await.unwrap().unwrap();
    assert_eq!(trailers.trailers_ref().unwrap()["grpc-status"], "0");
    assert!(response.body().is_end_stream());
    assert!(response.body_mut().frame().await.is_none());
    // Polling past the end is harmless.
    assert!(response.body_mut().frame().await.is_none());
}

#[test]
fn codes_round_trip() {
    for (n, code) in GrpcCode::ALL.into_iter().enumerate() {
        assert_eq!(code.as_i32(), n as i32);
        assert_eq!(GrpcCode::from_i32(n as i32), Some(code));
        assert_eq!(i32::from(code), n as i32);
    }
    assert_eq!(GrpcCode::from_i32(-1), None);
    assert_eq!(GrpcCode::from_i32(17), None);
    assert_eq!(GrpcCode::from_i32(i32::MAX), None);
    assert_eq!(GrpcCode::DeadlineExceeded.to_string(), "DEADLINE_EXCEEDED");
    let debug = format!("{:?}", GrpcErrorsAsFailures::new());
    assert!(
        debug.contains("Unavailable") && !debug.contains("NotFound"),
        "{debug}"
    );
}

#[test]
fn grpc_body_is_send_and_sync_when_its_body_is() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<GrpcBody<http_body_util::Full<Bytes>>>();
}

// ---- allocations per call -------------------------------------------------

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A body of frames built beforehand, so that playing it allocates nothing.
struct Frames(VecDeque<Frame<Bytes>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }
}

#[test]
fn classifying_and_reading_allocates_nothing() {
    assert_eq!(
        allocations_in(|| drop(std::hint::black_box(Box::new(7_u64)))),
        1
    );

    const CALLS: usize = 1_000;
    // Built before the count: a gRPC response's headers and trailers are
    // the back end's allocations, not the classifier's.
    let response = |i: usize| {
        let status = if i % 4 == 0 { "14" } else { "0" };
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static(status));
        if i % 3 == 0 {
            let mut response = Response::new(Frames(VecDeque::new()));
            *response.headers_mut() = trailers;
            response
        } else {
            let mut frames = VecDeque::with_capacity(2);
            frames.push_back(Frame::data(Bytes::from_static(b"message")));
            frames.push_back(Frame::trailers(trailers));
            Response::new(Frames(frames))
        }
    };
    let warm_up: Vec<_> = (0..CALLS).map(response).collect();
    let counted: Vec<_> = (0..CALLS).map(response).collect();

    let layer =
        CircuitBreakerLayer::new(BreakerPolicy::default()).classify(GrpcErrorsAsFailures::new());
    let mut svc = layer.layer(service_fn(|response: Response<Frames>| {
        std::future::ready(Ok::<_, io::Error>(response))
    }));
    let mut run = |responses: Vec<Response<Frames>>| {
        for response in responses {
            now(std::future::poll_fn(|cx| svc.poll_ready(cx))).unwrap();
            let mut response = now(svc.call(response)).unwrap();
            while let Some(frame) = now(response.body_mut().frame()) {
                frame.unwrap();
            }
        }
    };
    run(warm_up);
    let allocations = allocations_in(|| run(counted));
    assert_eq!(allocations, 0, "allocations in {CALLS} calls");
    assert_eq!(layer.state(), BreakerState::Closed, "a quarter failed");
}
