//! Shadow mode end to end, in paused time: with
//! `breaker.mode = "shadow"` the composed stack rejects nothing, and counts
//! in `brownout_requests_total{outcome="would_reject", reason=…}` what it
//! would have rejected: an open breaker, a full limit, a full waiting room,
//! a maintenance window (and, as `would_wait`, what the room would have
//! held). Each scenario runs in enforce mode too, to show that the same
//! traffic is rejected there.

#![cfg(feature = "toml")]

mod support;

use std::time::{Duration, SystemTime};

use brownout::clock::Clock;
use brownout::{BrownoutLayer, Mode, Policy, Reason, Rejected};
use metrics_util::debugging::DebuggingRecorder;
use tokio::task::JoinHandle;
use tokio::time::{Instant, advance};
use tower::{BoxError, Layer, Service, ServiceExt};

use support::metrics::{Gauges, Seen};

/// A breaker that opens after 5 calls at >= 50% failures for 5 s; a fixed
/// limit of 2 shared alike by every class; no waiting room unless a test
/// adds one.
const BASE: &str = r#"
[breaker]
window = { kind = "count", size = 10 }
minimum_calls = 5
failure_rate = 0.5
open_for = "5s"
open_backoff = { jitter = 0.0 }

[limit]
algorithm = "fixed"
initial = 2
reserve = 0.0
"#;

fn policy(mode: Mode, sections: &str) -> Policy {
    let mode = match mode {
        Mode::Shadow => "shadow",
        Mode::Enforce => "enforce",
        other => panic!("not tested here: {other:?}"),
    };
    let base = BASE.replace("[limit]", &format!("mode = \"{mode}\"\n\n[limit]"));
    Policy::from_toml(&format!("{base}\n{sections}"))
        .unwrap_or_else(|err| panic!("the test policy loads: {err}"))
}

const NO_ROOM: &str = "[waiting_room]\ncapacity = 0\n";

/// A request: how long the back end takes, and whether it fails.
#[derive(Debug, Clone, Copy)]
struct Call {
    hold: Duration,
    fail: bool,
}

fn ok(hold_ms: u64) -> Call {
    Call {
        hold: Duration::from_millis(hold_ms),
        fail: false,
    }
}

fn backend()
-> impl Service<Call, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static {
    tower::service_fn(|call: Call| async move {
        tokio::time::sleep(call.hold).await;
        if call.fail {
            Err::<(), BoxError>("back end failed".into())
        } else {
            Ok(())
        }
    })
}

/// The requests counters of every route, by (outcome, reason), summed over
/// snapshots.
struct Counts(Seen);

impl Counts {
    fn new(recorder: &DebuggingRecorder) -> Self {
        Self(Seen::new(recorder.snapshotter(), Gauges::Summed))
    }

    fn get(&mut self, outcome: &str, reason: &str) -> u64 {
        let all = self.0.requests_where(|_| true);
        all.get(&(outcome.to_owned(), reason.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Rejections of any reason.
    fn rejected(&mut self) -> u64 {
        let all = self.0.requests_where(|_| true);
        all.iter()
            .filter(|((outcome, _), _)| outcome == "rejected")
            .map(|(_, n)| n)
            .sum()
    }
}

type Stack = BrownoutLayer;

fn stack(
    policy: &Policy,
) -> (
    Stack,
    impl Service<Call, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static,
) {
    let layer = BrownoutLayer::from_policy(policy);
    let svc = layer.layer(backend());
    (layer, svc)
}

fn spawn<S>(svc: &S, call: Call) -> JoinHandle<Result<(), BoxError>>
where
    S: Service<Call, Response = (), Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    tokio::spawn(svc.clone().oneshot(call))
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn reason(result: &Result<(), BoxError>) -> Option<Reason> {
    result
        .as_ref()
        .err()?
        .downcast_ref::<Rejected>()
        .map(Rejected::reason)
}

async fn results(handles: Vec<JoinHandle<Result<(), BoxError>>>) -> Vec<Option<Reason>> {
    let mut out = Vec::new();
    for handle in handles {
        out.push(reason(&handle.await.unwrap()));
    }
    out
}

// ------------------------------------------------------------ the limit

#[tokio::test(start_paused = true)]
async fn a_full_limit_sheds_in_enforce_mode() {
    let recorder = DebuggingRecorder::new();
    let mut counts = Counts::new(&recorder);
    let _local = metrics::set_default_local_recorder(&recorder);
    let (_, svc) = stack(&policy(Mode::Enforce, NO_ROOM));
    let handles: Vec<_> = (0..5).map(|_| spawn(&svc, ok(1000))).collect();
    let reasons = results(handles).await;
    assert_eq!(reasons.iter().filter(|r| r.is_none()).count(), 2);
    assert_eq!(
        reasons.iter().filter(|r| **r == Some(Reason::Shed)).count(),
        3
    );
    assert_eq!(counts.get("rejected", "shed"), 3);
    assert_eq!(counts.get("would_reject", "shed"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_full_limit_only_counts_in_shadow_mode_and_keeps_the_calls_in_flight() {
    let recorder = DebuggingRecorder::new();
    let mut counts = Counts::new(&recorder);
    let _local = metrics::set_default_local_recorder(&recorder);
    let (layer, svc) = stack(&policy(Mode::Shadow, NO_ROOM));
    let started = Instant::now();
    let handles: Vec<_> = (0..5).map(|_| spawn(&svc, ok(1000))).collect();
    settle().await;
    // All five are at the back end: two within the limit, three past it.
    assert_eq!(layer.inflight("default"), Some(5));
    assert_eq!(layer.limit("default"), Some(2), "the limit itself stays");
    let reasons = results(handles).await;
    assert_eq!(reasons, vec![None; 5]);
    assert_eq!(started.elapsed(), Duration::from_secs(1), "all at once");
    assert_eq!(layer.inflight("default"), Some(0), "every slot given back");
    assert_eq!(counts.get("would_reject", "shed"), 3);
    assert_eq!(counts.get("served", "none"), 5);
    assert_eq!(counts.rejected(), 0);

    // Calls past the limit that are dropped give their place back too.
    let handles: Vec<_> = (0..4).map(|_| spawn(&svc, ok(1000))).collect();
    settle().await;
    assert_eq!(layer.inflight("default"), Some(4));
    handles[2].abort();
    handles[3].abort();
    settle().await;
    assert_eq!(layer.inflight("default"), Some(2));
    for handle in handles.into_iter().take(2) {
        handle.await.unwrap().unwrap();
    }
    assert_eq!(layer.inflight("default"), Some(0));
    assert_eq!(counts.get("would_reject", "shed"), 5);
    assert_eq!(counts.get("cancelled", "none"), 2);
    assert_eq!(counts.rejected(), 0);
}

// ------------------------------------------------------ the waiting room

const SMALL_ROOM: &str = "[waiting_room]\ncapacity = 2\nmax_wait = \"10s\"\n";

#[tokio::test(start_paused = true)]
async fn a_full_room_turns_away_in_enforce_mode() {
    let recorder = DebuggingRecorder::new();
    let mut counts = Counts::new(&recorder);
    let _local = metrics::set_default_local_recorder(&recorder);
    let (layer, svc) = stack(&policy(Mode::Enforce, SMALL_ROOM));
    let started = Instant::now();
    let handles: Vec<_> = (0..6).map(|_| spawn(&svc, ok(1000))).collect();
    settle().await;
    assert_eq!(layer.waiting("default"), 2);
    let reasons = results(handles).await;
    assert_eq!(reasons.iter().filter(|r| r.is_none()).count(), 4);
    assert_eq!(
        reasons
            .iter()
            .filter(|r| **r == Some(Reason::QueueFull))
            .count(),
        2
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(2),
        "two waited a turn"
    );
    assert_eq!(counts.get("rejected", "queue_full"), 2);
}

#[tokio::test(start_paused = true)]
async fn a_full_room_only_counts_in_shadow_mode() {
    let recorder = DebuggingRecorder::new();
    let mut counts = Counts::new(&recorder);
    let _local = metrics::set_default_local_recorder(&recorder);
    let (layer, svc) = stack(&policy(Mode::Shadow, SMALL_ROOM));
    let started = Instant::now();
    let handles: Vec<_> = (0..6).map(|_| spawn(&svc, ok(1000))).collect();
    settle().await;
    assert_eq!(layer.waiting("default"), 0, "shadow mode seats nobody");
    assert_eq!(layer.inflight("default"), Some(6));
    let reasons = results(handles).await;
    assert_eq!(reasons, vec![None; 6]);
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_eq!(layer.inflight("default"), Some(0));
    // Two within the limit; the room would have held two and turned two
    // away.
    assert_eq!(counts.get("would_wait", "none"), 2);
    assert_eq!(counts.get("would_reject", "queue_full"), 2);
    assert_eq!(counts.get("served", "none"), 6);
    assert_eq!(counts.rejected(), 0);
}

// ------------------------------------------------------------ the breaker

async fn trip<S>(svc: &S)
where
    S: Service<Call, Response = (), Error = BoxError> + Clone,
{
    for _ in 0..5 {
        let failing = Call {
            hold: Duration::ZERO,
            fail: true,
        };
        let _ = svc.clone().oneshot(failing).await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_rejects_in_enforce_mode_and_only_counts_in_shadow_mode() {
    for mode in [Mode::Enforce, Mode::Shadow] {
        let recorder = DebuggingRecorder::new();
        let mut counts = Counts::new(&recorder);
        let _local = metrics::set_default_local_recorder(&recorder);
        let (layer, svc) = stack(&policy(mode, NO_ROOM));
        trip(&svc).await;
        assert_eq!(
            layer.state("default"),
            Some(brownout::BreakerState::Open),
            "{mode:?}: the state machine runs in both modes"
        );
        let mut reasons = Vec::new();
        for _ in 0..3 {
            reasons.push(reason(&svc.clone().oneshot(ok(0)).await));
        }
        match mode {
            Mode::Enforce => {
                assert_eq!(reasons, vec![Some(Reason::Open); 3]);
                assert_eq!(counts.get("rejected", "open"), 3);
            }
            _ => {
                assert_eq!(reasons, vec![None; 3]);
                assert_eq!(counts.get("would_reject", "open"), 3);
                assert_eq!(counts.get("served", "none"), 8);
                assert_eq!(counts.rejected(), 0);
            }
        }
    }
}

// ---------------------------------------------------- maintenance windows

#[tokio::test(start_paused = true)]
async fn a_maintenance_window_only_counts_in_shadow_mode() {
    let window = r#"
[[maintenance]]
from = "2026-12-02T00:00:00+05:30"
until = "2026-12-09T00:00:00+05:30"
message = "Planned upgrade."
"#;
    let now = SystemTime::from(
        "2026-12-05T12:00:00+05:30"
            .parse::<jiff::Timestamp>()
            .unwrap(),
    );
    for mode in [Mode::Enforce, Mode::Shadow] {
        let recorder = DebuggingRecorder::new();
        let mut counts = Counts::new(&recorder);
        let _local = metrics::set_default_local_recorder(&recorder);
        let layer = BrownoutLayer::from_policy(&policy(mode, &format!("{NO_ROOM}{window}")))
            .clock(Clock::tokio_at(now));
        let svc = layer.layer(backend());
        let mut reasons = Vec::new();
        for _ in 0..4 {
            reasons.push(reason(&svc.clone().oneshot(ok(0)).await));
        }
        match mode {
            Mode::Enforce => {
                assert_eq!(reasons, vec![Some(Reason::Maintenance); 4]);
                assert_eq!(counts.get("rejected", "maintenance"), 4);
            }
            _ => {
                assert_eq!(reasons, vec![None; 4]);
                assert_eq!(counts.get("would_reject", "maintenance"), 4);
                assert_eq!(counts.get("served", "none"), 4);
                assert_eq!(counts.rejected(), 0);
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn everything_at_once_in_shadow_mode_rejects_nothing() {
    let recorder = DebuggingRecorder::new();
    let mut counts = Counts::new(&recorder);
    let _local = metrics::set_default_local_recorder(&recorder);
    let (layer, svc) = stack(&policy(Mode::Shadow, SMALL_ROOM));
    // The breaker opens, and a burst finds the limit and the room full.
    trip(&svc).await;
    let handles: Vec<_> = (0..8).map(|_| spawn(&svc, ok(500))).collect();
    settle().await;
    assert_eq!(layer.inflight("default"), Some(8));
    assert_eq!(results(handles).await, vec![None; 8]);
    assert_eq!(counts.get("would_reject", "open"), 8);
    assert_eq!(counts.get("would_wait", "none"), 2);
    assert_eq!(counts.get("would_reject", "queue_full"), 4);
    assert_eq!(counts.rejected(), 0);

    // Ops switch to enforce: of the same burst, two wait for the breaker's
    // probes and six are turned away.
    let mut enforce = (*layer.policy()).clone();
    enforce.breaker.mode = Mode::Enforce;
    layer.handle().apply(enforce).unwrap();
    advance(Duration::from_millis(1)).await;
    let handles: Vec<_> = (0..8).map(|_| spawn(&svc, ok(500))).collect();
    let reasons = results(handles).await;
    assert_eq!(
        reasons.iter().filter(|r| r.is_none()).count(),
        2,
        "{reasons:?}"
    );
    assert_eq!(counts.get("rejected", "queue_full"), 6);
    assert_eq!(layer.inflight("default"), Some(0));
}
