//! The circuit breaker's metrics, read through metrics-util's
//! `DebuggingRecorder` installed as this thread's local recorder before the
//! layer is built, on tokio's current-thread runtime in paused time.

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use brownout::{
    BackoffPolicy, BreakerPolicy, CircuitBreaker, CircuitBreakerLayer, Mode, Trip, WindowPolicy,
};
use metrics_util::debugging::DebuggingRecorder;
use tokio::sync::oneshot;
use tokio::time::advance;
use tower::{BoxError, Layer, Service, ServiceExt};

use support::metrics::{Gauges, REQUESTS, Seen};

const STATE: &str = "brownout_breaker_state";
const TRANSITIONS: &str = "brownout_breaker_transitions_total";
const LATENCY: &str = "brownout_latency_seconds";
const ROUTE: &str = "slots";

/// The breaker's metrics of [`ROUTE`], fresh.
trait BreakerSeen {
    /// The breaker state gauge.
    fn state(&mut self) -> f64;
    fn transitions(&mut self, from: &str, to: &str) -> u64;
    fn requests_of(&mut self, outcome: &str, reason: &str) -> u64;
}

impl BreakerSeen for Seen {
    fn state(&mut self) -> f64 {
        self.gauge(STATE, &[("route", ROUTE)])
            .expect("brownout_breaker_state{route=\"slots\"} is registered")
    }

    fn transitions(&mut self, from: &str, to: &str) -> u64 {
        self.counter(TRANSITIONS, &[("route", ROUTE), ("from", from), ("to", to)])
    }

    fn requests_of(&mut self, outcome: &str, reason: &str) -> u64 {
        self.counter(
            REQUESTS,
            &[("route", ROUTE), ("outcome", outcome), ("reason", reason)],
        )
    }
}

// ---- a back end the tests steer ------------------------------------------

#[derive(Debug)]
enum Req {
    Ok,
    Fail,
    Sleep(Duration),
    Wait(oneshot::Receiver<bool>),
}

type BackendFuture = Pin<Box<dyn Future<Output = Result<(), io::Error>> + Send>>;

#[derive(Debug, Clone)]
struct Backend;

impl Service<Req> for Backend {
    type Response = ();
    type Error = io::Error;
    type Future = BackendFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> BackendFuture {
        Box::pin(async move {
            let ok = match req {
                Req::Ok => true,
                Req::Fail => false,
                Req::Sleep(d) => {
                    tokio::time::sleep(d).await;
                    true
                }
                Req::Wait(rx) => rx.await.unwrap_or(false),
            };
            if ok {
                Ok(())
            } else {
                Err(io::Error::other("back end failed"))
            }
        })
    }
}

type Svc = CircuitBreaker<Backend>;
type Fut = <Svc as Service<Req>>::Future;

/// Count window of 10, verdicts from 4 calls, 50% failures, open 10 s
/// (doubling, no jitter), 2 probes.
fn policy(mode: Mode) -> BreakerPolicy {
    BreakerPolicy {
        window: WindowPolicy::Count { size: 10 },
        failure_rate: 0.5,
        slow_call_rate: 1.0,
        trip: Trip::Open,
        slow_call_duration: Duration::from_secs(1),
        minimum_calls: 4,
        open_for: Duration::from_secs(10),
        open_backoff: BackoffPolicy {
            multiplier: 2.0,
            max: Duration::from_secs(80),
            jitter: 0.0,
            reset_after: None,
        },
        half_open_probes: 2,
        mode,
        probe_after: 0,
    }
}

fn layer(mode: Mode) -> CircuitBreakerLayer {
    CircuitBreakerLayer::new(policy(mode)).route(ROUTE)
}

async fn send(svc: &mut Svc, req: Req) -> Result<(), BoxError> {
    svc.ready().await.unwrap().call(req).await
}

/// Starts a call the test answers over the returned channel; it must be
/// admitted.
fn start(svc: &mut Svc) -> (oneshot::Sender<bool>, Fut) {
    let (tx, rx) = oneshot::channel();
    let mut fut = svc.call(Req::Wait(rx));
    let poll = Pin::new(&mut fut).poll(&mut Context::from_waker(Waker::noop()));
    assert!(poll.is_pending(), "expected an admitted call");
    (tx, fut)
}

fn answer((tx, mut fut): (oneshot::Sender<bool>, Fut), ok: bool) {
    tx.send(ok).unwrap();
    let poll = Pin::new(&mut fut).poll(&mut Context::from_waker(Waker::noop()));
    assert!(poll.is_ready());
}

/// Fails calls until the breaker opens.
async fn trip(svc: &mut Svc) {
    for _ in 0..10 {
        if svc.state() != brownout::BreakerState::Closed {
            break;
        }
        let err = send(svc, Req::Fail).await.unwrap_err();
        assert!(err.downcast_ref::<brownout::Rejected>().is_none());
    }
    assert_eq!(svc.state(), brownout::BreakerState::Open);
}

// ---- the tests ------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_state_gauge_follows_every_state() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(recorder.snapshotter(), Gauges::Last);
    let _local = metrics::set_default_local_recorder(&recorder);
    let layer = layer(Mode::Enforce);
    let mut svc = layer.layer(Backend);

    assert_eq!(seen.state(), 0.0, "closed");
    trip(&mut svc).await;
    assert_eq!(seen.state(), 2.0, "open");
    send(&mut svc, Req::Ok).await.unwrap_err();
    assert_eq!(seen.state(), 2.0, "still open");

    advance(Duration::from_secs(10)).await;
    let probe = start(&mut svc);
    assert_eq!(seen.state(), 1.0, "half-open");
    answer(probe, true);
    assert_eq!(seen.state(), 1.0, "half-open until both probes pass");
    send(&mut svc, Req::Ok).await.unwrap();
    assert_eq!(seen.state(), 0.0, "closed again");

    layer.set_mode(Mode::ForcedOpen);
    assert_eq!(seen.state(), 3.0, "forced open");
    layer.set_mode(Mode::Enforce);
    assert_eq!(seen.state(), 0.0, "closed after forced open");
    svc.set_mode(Mode::ForcedClosed);
    assert_eq!(
        seen.state(),
        0.0,
        "forced closed: every call goes through, as closed"
    );
    svc.set_mode(Mode::Enforce);
    assert_eq!(seen.state(), 0.0, "closed after forced closed");

    // Back to open through a failing probe.
    trip(&mut svc).await;
    assert_eq!(seen.state(), 2.0, "open");
    advance(Duration::from_secs(20)).await;
    send(&mut svc, Req::Fail).await.unwrap_err();
    assert_eq!(seen.state(), 2.0, "reopened");
}

#[tokio::test(start_paused = true)]
async fn a_breaker_built_forced_reports_forced() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(recorder.snapshotter(), Gauges::Last);
    let _local = metrics::set_default_local_recorder(&recorder);
    let layer = layer(Mode::ForcedOpen);
    let _svc = layer.layer(Backend);
    assert_eq!(seen.state(), 3.0);
    layer.set_mode(Mode::Enforce);
    assert_eq!(seen.state(), 0.0);
}

#[tokio::test(start_paused = true)]
async fn transitions_are_counted_by_from_and_to() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(recorder.snapshotter(), Gauges::Last);
    let _local = metrics::set_default_local_recorder(&recorder);
    let layer = layer(Mode::Enforce);
    let mut svc = layer.layer(Backend);

    trip(&mut svc).await;
    assert_eq!(seen.transitions("closed", "open"), 1);
    // Rejections are no transitions.
    send(&mut svc, Req::Ok).await.unwrap_err();
    assert_eq!(seen.transitions("closed", "open"), 1);

    advance(Duration::from_secs(10)).await;
    send(&mut svc, Req::Fail).await.unwrap_err(); // the probe fails
    assert_eq!(seen.transitions("open", "half_open"), 1);
    assert_eq!(seen.transitions("half_open", "open"), 1);

    advance(Duration::from_secs(20)).await;
    send(&mut svc, Req::Ok).await.unwrap();
    send(&mut svc, Req::Ok).await.unwrap();
    assert_eq!(seen.transitions("open", "half_open"), 2);
    assert_eq!(seen.transitions("half_open", "closed"), 1);

    layer.set_mode(Mode::ForcedOpen);
    assert_eq!(seen.transitions("closed", "forced_open"), 1);
    layer.set_mode(Mode::ForcedClosed);
    assert_eq!(seen.transitions("forced_open", "forced_closed"), 1);
    layer.set_mode(Mode::Enforce);
    assert_eq!(seen.transitions("forced_closed", "closed"), 1);

    // Nothing else was counted.
    seen.refresh();
    let total: u64 = seen
        .counters
        .iter()
        .filter(|((name, _), _)| name == TRANSITIONS)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(total, 8);
}

#[tokio::test(start_paused = true)]
async fn requests_are_counted_by_outcome_and_reason() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(recorder.snapshotter(), Gauges::Last);
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut svc = layer(Mode::Enforce).layer(Backend);

    // Served: the back end answered, whether Ok or Err.
    send(&mut svc, Req::Ok).await.unwrap();
    send(&mut svc, Req::Sleep(Duration::from_secs(2)))
        .await
        .unwrap();
    assert_eq!(seen.requests_of("served", "none"), 2);
    // Cancelled: admitted, then dropped before its answer.
    drop(start(&mut svc));
    assert_eq!(seen.requests_of("cancelled", "none"), 1);
    assert_eq!(seen.requests_of("served", "none"), 2);

    trip(&mut svc).await; // ok, slow ok, fail, fail: 2/4
    assert_eq!(seen.requests_of("served", "none"), 4);
    for _ in 0..3 {
        send(&mut svc, Req::Ok).await.unwrap_err();
    }
    assert_eq!(seen.requests_of("rejected", "open"), 3);

    // A dropped probe is cancelled too.
    advance(Duration::from_secs(10)).await;
    drop(start(&mut svc));
    assert_eq!(seen.requests_of("cancelled", "none"), 2);

    let all = seen.requests(ROUTE);
    let expected: BTreeMap<_, _> = [
        (("served".to_owned(), "none".to_owned()), 4),
        (("cancelled".to_owned(), "none".to_owned()), 2),
        (("rejected".to_owned(), "open".to_owned()), 3),
    ]
    .into();
    assert_eq!(all, expected);

    // Latency of served calls, by outcome, in seconds of virtual time.
    let mut latency =
        |outcome: &str| seen.histogram(LATENCY, &[("route", ROUTE), ("outcome", outcome)]);
    assert_eq!(latency("success"), vec![0.0, 2.0]);
    assert_eq!(latency("failure"), vec![0.0; 2]);
}

#[tokio::test(start_paused = true)]
async fn shadow_mode_counts_would_reject_and_serves() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(recorder.snapshotter(), Gauges::Last);
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut svc = layer(Mode::Shadow).layer(Backend);

    trip(&mut svc).await;
    assert_eq!(seen.requests_of("would_reject", "open"), 0);
    for _ in 0..3 {
        send(&mut svc, Req::Ok).await.unwrap();
    }
    assert_eq!(seen.requests_of("would_reject", "open"), 3);
    assert_eq!(seen.requests_of("served", "none"), 7);
    assert_eq!(seen.requests_of("rejected", "open"), 0);
    assert_eq!(seen.state(), 2.0, "the state machine runs in shadow mode");
}
