//! Planned maintenance windows, in paused time with "now"
//! pinned to a chosen wall-clock time by `Clock::tokio_at`: the policy's
//! `[[maintenance]]` entries (RFC 3339 with offsets, validated, merged),
//! rejections with the window's message and a retry hint at its end (and,
//! over HTTP, a 503 with `Retry-After`), a waiting room that holds a request
//! only when the window ends within its wait, the breaker half-open and the
//! limit back at its minimum as the window ends, and live reload.

#![cfg(feature = "toml")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use brownout::clock::Clock;
use brownout::deadline::deadline_fn;
use brownout::policy::MaintenanceWindow;
use brownout::{BreakerState, BrownoutLayer, Policy, Reason, Rejected};
use tokio::time::{Instant, advance};
use tower::{BoxError, Layer, Service, ServiceExt};

const MESSAGE: &str = "Planned upgrade. Urgent files: use e-mail.";

/// The reference's maintenance window: a week from midnight on 2 December, India time.
const DESIGN_WINDOW: &str = r#"
[[maintenance]]
from = "2026-12-02T00:00:00+05:30"          # RFC 3339
until = "2026-12-09T00:00:00+05:30"
message = "Planned upgrade. Urgent files: use e-mail."
"#;

/// A breaker that needs 5 calls to judge and probes with 3; an AIMD limit
/// of 20 that can fall to 2, shared alike by every class; no waiting room
/// unless a test adds one.
const BASE: &str = r#"
[breaker]
window = { kind = "count", size = 10 }
minimum_calls = 5
open_for = "5s"
open_backoff = { jitter = 0.0 }
half_open_probes = 3

[limit]
algorithm = "aimd"
initial = 20
min = 2
max = 100
reserve = 0.0

[waiting_room]
capacity = 0
"#;

fn policy(sections: &str) -> Policy {
    Policy::from_toml(&format!("{BASE}\n{sections}"))
        .unwrap_or_else(|err| panic!("the test policy loads: {err}"))
}

/// A wall-clock time written as ops write it.
fn at(rfc3339: &str) -> SystemTime {
    SystemTime::from(rfc3339.parse::<jiff::Timestamp>().unwrap())
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn window_toml(from: &str, until: &str, message: Option<&str>) -> String {
    let message = message.map_or(String::new(), |m| format!("message = {m:?}\n"));
    format!("[[maintenance]]\nfrom = {from:?}\nuntil = {until:?}\n{message}")
}

/// A request: how long the back end takes, and the caller's own deadline.
#[derive(Debug, Clone, Copy, Default)]
struct Call {
    hold: Duration,
    deadline: Option<Duration>,
}

fn hold(hold: Duration) -> Call {
    Call {
        hold,
        deadline: None,
    }
}

/// A back end that counts calls in flight and their peak.
#[derive(Debug, Clone, Default)]
struct Backend {
    inflight: Arc<AtomicU32>,
    peak: Arc<AtomicU32>,
    calls: Arc<AtomicU32>,
}

impl Backend {
    fn service(
        &self,
    ) -> impl Service<Call, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static
    {
        let backend = self.clone();
        tower::service_fn(move |call: Call| {
            let backend = backend.clone();
            async move {
                backend.calls.fetch_add(1, Ordering::SeqCst);
                let now = backend.inflight.fetch_add(1, Ordering::SeqCst) + 1;
                backend.peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(call.hold).await;
                backend.inflight.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, BoxError>(())
            }
        })
    }

    fn peak(&self) -> u32 {
        self.peak.swap(0, Ordering::SeqCst)
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

/// The composed stack of these tests: rejections as errors, one route, and
/// each call's deadline read from the call.
type Stack = BrownoutLayer<
    brownout::fallback::RejectAsError,
    brownout::stack::SingleRoute,
    brownout::priority::DefaultPriority,
    brownout::deadline::DeadlineFn<fn(&Call) -> Option<Duration>>,
>;

/// The stack `policy` describes, at wall-clock time `now`, and a service
/// through it to `backend`.
fn stack(
    policy: &Policy,
    now: &str,
    backend: &Backend,
) -> (
    Stack,
    impl Service<Call, Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static,
) {
    let deadline: fn(&Call) -> Option<Duration> = |call| call.deadline;
    let layer = BrownoutLayer::from_policy(policy)
        .clock(Clock::tokio_at(at(now)))
        .deadline(deadline_fn(deadline));
    let svc = layer.layer(backend.service());
    (layer, svc)
}

fn rejection(result: Result<(), BoxError>) -> Rejected {
    let err = result.expect_err("brownout answered");
    err.downcast_ref::<Rejected>()
        .unwrap_or_else(|| panic!("a brownout rejection, not {err}"))
        .clone()
}

/// Sends `n` calls at once and waits for them all; the results in order.
async fn burst<S>(svc: &S, n: usize, call: Call) -> Vec<Result<(), BoxError>>
where
    S: Service<Call, Response = (), Error = BoxError> + Clone,
    S::Future: Send,
{
    futures_join_all((0..n).map(|_| svc.clone().oneshot(call))).await
}

/// `join_all` without the `futures` crate: polls every future on this task.
async fn futures_join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.map(|f| Some(Box::pin(f))).collect();
    let mut done: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (slot, out) in pending.iter_mut().zip(done.iter_mut()) {
            if let Some(fut) = slot {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => {
                        *out = Some(value);
                        *slot = None;
                    }
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    done.into_iter().map(Option::unwrap).collect()
}

// ------------------------------------------------------------- the policy

#[test]
fn windows_are_read_with_their_offsets_and_written_back_as_written() {
    let text = format!(
        "{DESIGN_WINDOW}\n{}",
        window_toml("2026-11-25T22:00:00Z", "2026-11-25T23:00:00.5Z", None)
    );
    let policy = Policy::from_toml(&text).unwrap();
    let [design, rehearsal] = policy.maintenance.as_slice() else {
        panic!("two windows: {:?}", policy.maintenance);
    };
    assert_eq!(design.from(), at("2026-12-01T18:30:00Z"));
    assert_eq!(design.until(), at("2026-12-08T18:30:00Z"));
    assert_eq!(design.message(), Some(MESSAGE));
    assert_eq!(
        rehearsal.until().duration_since(rehearsal.from()).unwrap(),
        Duration::from_millis(3_600_500)
    );
    assert_eq!(rehearsal.message(), None);

    // Written back, each time keeps its offset, and loads the same.
    let written = toml::to_string(&policy).unwrap();
    assert!(
        written.contains("from = \"2026-12-02T00:00:00+05:30\""),
        "{written}"
    );
    assert!(
        written.contains("until = \"2026-11-25T23:00:00.5Z\""),
        "{written}"
    );
    assert!(!written.contains("message = \"\""), "{written}");
    assert_eq!(Policy::from_toml(&written).unwrap(), policy);

    // No windows: nothing written.
    let plain = toml::to_string(&Policy::default()).unwrap();
    assert!(!plain.contains("maintenance"), "{plain}");
}

#[test]
fn an_unquoted_toml_datetime_is_read_too() {
    let policy = Policy::from_toml(
        "[[maintenance]]\nfrom = 2026-12-02T00:00:00+05:30\nuntil = 2026-12-09T00:00:00+05:30\n",
    )
    .unwrap();
    assert_eq!(policy.maintenance[0].from(), at("2026-12-01T18:30:00Z"));
}

#[test]
fn bad_windows_name_the_window_and_the_field() {
    let cases: &[(String, &str)] = &[
        (
            format!(
                "{DESIGN_WINDOW}\n{}",
                window_toml(
                    "2026-12-02T00:00:00+05:30",
                    "2026-12-01T00:00:00+05:30",
                    None
                )
            ),
            "maintenance[1].until: 2026-12-01T00:00:00+05:30 is not after maintenance[1].from (2026-12-02T00:00:00+05:30)",
        ),
        (
            // The same instant, written in two offsets: empty.
            window_toml("2026-12-02T00:00:00+05:30", "2026-12-01T18:30:00Z", None),
            "maintenance[0].until: 2026-12-01T18:30:00Z is not after maintenance[0].from (2026-12-02T00:00:00+05:30)",
        ),
        (
            window_toml("2026-12-02T00:00:00", "2026-12-09T00:00:00+05:30", None),
            "maintenance[0].from: invalid timestamp \"2026-12-02T00:00:00\": ",
        ),
        (
            window_toml(
                "2026-13-02T00:00:00+05:30",
                "2026-12-09T00:00:00+05:30",
                None,
            ),
            "maintenance[0].from: invalid timestamp \"2026-13-02T00:00:00+05:30\": ",
        ),
        (
            window_toml("2026-12-02T00:00:00+05:30", "next monday", None),
            "maintenance[0].until: invalid timestamp \"next monday\": ",
        ),
        (
            window_toml("2026-12-02T00:00:00+05:30", "", None),
            "maintenance[0].until: invalid timestamp \"\": it is empty; expected an RFC 3339 timestamp with an offset, such as \"2026-12-02T00:00:00+05:30\" (TOML line 3, column 9)",
        ),
        (
            "[[maintenance]]\nfrom = \"2026-12-02T00:00:00+05:30\"\nuntil = 20261209\n".to_owned(),
            "maintenance[0].until: invalid type: integer `20261209`, expected an RFC 3339 timestamp with an offset, such as \"2026-12-02T00:00:00+05:30\" (TOML line 3, column 9)",
        ),
        (
            "[[maintenance]]\nfrom = \"2026-12-02T00:00:00+05:30\"\n".to_owned(),
            "maintenance[0]: missing field `until` (TOML line 1, column 1)",
        ),
        (
            format!(
                "{}reason = \"upgrade\"\n",
                window_toml("2026-12-02T00:00:00Z", "2026-12-03T00:00:00Z", None)
            ),
            "maintenance[0].reason: unknown field `reason`, expected one of `from`, `until`, `message` (TOML line 4, column 1)",
        ),
        (
            "maintenance = { from = \"2026-12-02T00:00:00Z\" }\n".to_owned(),
            "maintenance: invalid type: map, expected a sequence (TOML line 1, column 15)",
        ),
    ];
    for (text, expected) in cases {
        let err = Policy::from_toml(text).expect_err(text).to_string();
        if expected.ends_with(": ") {
            // jiff says what is wrong; we say where, what and what we want.
            assert!(
                err.starts_with(expected),
                "{text}\n got: {err}\nwant: {expected}…"
            );
            assert!(
                err.contains("expected an RFC 3339 timestamp with an offset, such as \"2026-12-02T00:00:00+05:30\" (TOML line"),
                "{err}"
            );
        } else {
            assert_eq!(&err, expected, "{text}");
        }
    }
    // The field is there for tools.
    let err = Policy::from_toml(&cases[0].0).unwrap_err();
    assert_eq!(err.field(), Some("maintenance[1].until"));
}

#[test]
fn windows_can_be_built_in_code() {
    let window = MaintenanceWindow::parse("2026-12-02T00:00:00+05:30", "2026-12-09T00:00:00+05:30")
        .unwrap()
        .with_message(MESSAGE);
    let policy = Policy {
        maintenance: vec![window.clone()],
        ..Policy::default()
    };
    assert_eq!(policy, Policy::from_toml(DESIGN_WINDOW).unwrap());
    let err = MaintenanceWindow::parse("2026-12-02", "2026-12-09T00:00:00Z").unwrap_err();
    assert_eq!(err.field(), Some("from"));
    let utc = MaintenanceWindow::new(window.from(), window.until());
    assert_eq!(
        utc.to_string(),
        "2026-12-01T18:30:00Z until 2026-12-08T18:30:00Z"
    );
    let backwards = Policy {
        maintenance: vec![MaintenanceWindow::new(window.until(), window.from())],
        ..Policy::default()
    };
    assert_eq!(
        backwards.validate().unwrap_err().to_string(),
        "maintenance[0].until: 2026-12-01T18:30:00Z is not after maintenance[0].from (2026-12-08T18:30:00Z)"
    );
}

// --------------------------------------------------------------- the gate

#[tokio::test(start_paused = true)]
async fn inside_the_window_every_request_gets_the_message_and_the_time_to_its_end() {
    let backend = Backend::default();
    // One second before the window.
    let (_, svc) = stack(
        &policy(DESIGN_WINDOW),
        "2026-12-01T23:59:59+05:30",
        &backend,
    );
    svc.clone().oneshot(hold(Duration::ZERO)).await.unwrap();
    assert_eq!(backend.calls(), 1);

    advance(secs(1)).await;
    let rejected = rejection(svc.clone().oneshot(hold(Duration::ZERO)).await);
    assert_eq!(rejected.reason(), Reason::Maintenance);
    assert_eq!(rejected.message(), Some(MESSAGE));
    assert_hint(&rejected, secs(7 * 86_400));
    assert!(rejected.to_string().ends_with(MESSAGE), "{rejected}");

    // Three and a half days in: the hint counts down.
    advance(secs(3 * 86_400 + 12 * 3600)).await;
    let rejected = rejection(svc.clone().oneshot(hold(Duration::ZERO)).await);
    assert_hint(&rejected, secs(3 * 86_400 + 12 * 3600));
    assert_eq!(backend.calls(), 1, "nothing reached the back end");

    // The last nanosecond is inside; the end is not.
    advance(secs(3 * 86_400 + 12 * 3600) - Duration::from_nanos(1)).await;
    let rejected = rejection(svc.clone().oneshot(hold(Duration::ZERO)).await);
    assert_hint(&rejected, Duration::from_nanos(1));
    let secs_hint = rejected.retry_after_secs().unwrap();
    assert!((1..=31).contains(&secs_hint), "rounded up: {secs_hint}");
    advance(Duration::from_nanos(1)).await;
    svc.clone().oneshot(hold(Duration::ZERO)).await.unwrap();
    assert_eq!(backend.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn as_the_window_ends_the_breaker_probes_and_the_limit_ramps_up_from_its_minimum() {
    let backend = Backend::default();
    let (layer, svc) = stack(
        &policy(DESIGN_WINDOW),
        "2026-12-01T23:00:00+05:30",
        &backend,
    );
    // Before the window: the limit of 20 lets a burst of 10 through at once.
    let results = burst(&svc, 10, hold(Duration::from_millis(100))).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(backend.peak(), 10);
    assert_eq!(layer.limit("default"), Some(20));
    assert_eq!(layer.state("default"), Some(BreakerState::Closed));

    // The window passes (its end: 2026-12-09T00:00:00+05:30).
    advance(secs(3600 + 7 * 86_400)).await;
    // The same burst as it ends: the breaker is half-open and the limit is
    // back at its minimum of 2, so only two calls reach the back end.
    let results = burst(&svc, 10, hold(Duration::from_millis(100))).await;
    assert_eq!(backend.peak(), 2);
    let served = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(served, 2);
    for result in results.into_iter().filter(Result::is_err) {
        assert_eq!(rejection(result).reason(), Reason::Shed);
    }
    assert_eq!(layer.limit("default"), Some(2));
    assert_eq!(
        layer.state("default"),
        Some(BreakerState::HalfOpen),
        "two of three probes answered"
    );
    // The third probe closes it.
    svc.clone()
        .oneshot(hold(Duration::from_millis(5)))
        .await
        .unwrap();
    assert_eq!(layer.state("default"), Some(BreakerState::Closed));

    // Then the limit grows with the back end's successes, one call a
    // window of samples (AIMD), never jumping back to 20: bursts of as many
    // calls as the limit allows are all served.
    let mut limits = vec![layer.limit("default").unwrap()];
    for _ in 0..80 {
        let limit = *limits.last().unwrap() as usize;
        let results = burst(&svc, limit, hold(Duration::from_millis(5))).await;
        assert!(
            results.iter().all(Result::is_ok),
            "a burst within the limit"
        );
        limits.push(layer.limit("default").unwrap());
    }
    assert_eq!(limits[0], 2);
    assert!(
        limits.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] + 1),
        "one step at a time: {limits:?}"
    );
    let last = *limits.last().unwrap();
    assert!((4..20).contains(&last), "ramping, not flooding: {limits:?}");
}

#[tokio::test(start_paused = true)]
async fn a_breaker_open_before_the_window_is_half_open_after_it() {
    let backend = Backend::default();
    let failing = tower::service_fn(|_: Call| async { Err::<(), BoxError>("down".into()) });
    let layer = BrownoutLayer::from_policy(&policy(DESIGN_WINDOW))
        .clock(Clock::tokio_at(at("2026-12-01T23:59:00+05:30")));
    let mut down = layer.layer(failing);
    for _ in 0..5 {
        let _ = down.ready().await.unwrap().call(Call::default()).await;
    }
    assert_eq!(layer.state("default"), Some(BreakerState::Open));
    advance(secs(60 + 7 * 86_400)).await;
    // The open period (5 s) ended long ago, but what ends the window is
    // the half-open state with fresh probes, not the old verdict; reading
    // the state ends a window no call has seen end.
    assert_eq!(layer.state("default"), Some(BreakerState::HalfOpen));
    assert_eq!(layer.limit("default"), Some(2));
    let up = layer.layer(backend.service());
    for _ in 0..3 {
        up.clone().oneshot(Call::default()).await.unwrap();
    }
    assert_eq!(layer.state("default"), Some(BreakerState::Closed));
}

#[tokio::test(start_paused = true)]
async fn overlapping_and_touching_windows_act_as_one() {
    let windows = [
        window_toml(
            "2026-12-02T00:00:00+05:30",
            "2026-12-03T00:00:00+05:30",
            Some("first"),
        ),
        // Overlaps the first, written in UTC.
        window_toml(
            "2026-12-02T14:30:00Z",
            "2026-12-04T00:00:00+05:30",
            Some("second"),
        ),
        // Touches the second.
        window_toml(
            "2026-12-04T00:00:00+05:30",
            "2026-12-04T06:00:00+05:30",
            None,
        ),
        // Apart.
        window_toml(
            "2026-12-05T00:00:00+05:30",
            "2026-12-05T01:00:00+05:30",
            Some("apart"),
        ),
    ]
    .concat();
    let backend = Backend::default();
    let (_, svc) = stack(&policy(&windows), "2026-12-02T12:00:00+05:30", &backend);

    // The hint points at the end of all three: 1 day 18 hours away.
    let rejected = rejection(svc.clone().oneshot(Call::default()).await);
    assert_hint(&rejected, secs(42 * 3600));
    assert_eq!(rejected.message(), Some("first"));
    // Inside the second only: still one window, with the first's message.
    advance(secs(24 * 3600)).await;
    let rejected = rejection(svc.clone().oneshot(Call::default()).await);
    assert_hint(&rejected, secs(18 * 3600));
    assert_eq!(rejected.message(), Some("first"));

    // Between the merged window and the one apart: served.
    advance(secs(18 * 3600)).await;
    svc.clone().oneshot(Call::default()).await.unwrap();
    advance(secs(18 * 3600)).await;
    let rejected = rejection(svc.clone().oneshot(Call::default()).await);
    assert_hint(&rejected, secs(3600));
    assert_eq!(rejected.message(), Some("apart"));
    assert_eq!(backend.calls(), 1);
}

/// A window that starts 30 minutes from now and ends after `len`.
fn soon(len: &str) -> String {
    window_toml("2026-12-02T00:30:00+05:30", len, Some("upgrade"))
}

#[tokio::test(start_paused = true)]
async fn the_room_holds_a_request_only_when_the_window_ends_within_its_wait() {
    let room = "[waiting_room]\ncapacity = 10\nmax_wait = \"10s\"\n";
    let base = BASE.replace("[waiting_room]\ncapacity = 0\n", "");
    let policy = |window: &str| Policy::from_toml(&format!("{base}\n{room}\n{window}")).unwrap();
    let now = "2026-12-02T00:00:00+05:30";

    // Ends in an hour: longer than max_wait, answered at once.
    let backend = Backend::default();
    let (layer, svc) = stack(&policy(&soon("2026-12-02T01:30:00+05:30")), now, &backend);
    advance(secs(1800)).await;
    let started = Instant::now();
    let rejected = rejection(svc.clone().oneshot(Call::default()).await);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(rejected.reason(), Reason::Maintenance);
    assert_hint(&rejected, secs(3600));
    assert_eq!(rejected.message(), Some("upgrade"));
    assert_eq!(layer.waiting("default"), 0);

    // Ends in 4 s: within max_wait, so it waits and is served at the end,
    // as the first probe of the half-open breaker.
    let backend = Backend::default();
    let (layer, svc) = stack(&policy(&soon("2026-12-02T00:30:04+05:30")), now, &backend);
    advance(secs(1800)).await;
    let started = Instant::now();
    let waiting = tokio::spawn(svc.clone().oneshot(Call::default()));
    tokio::task::yield_now().await;
    assert_eq!(layer.waiting("default"), 1);
    waiting.await.unwrap().unwrap();
    assert_eq!(started.elapsed(), secs(4));
    assert_eq!(backend.calls(), 1);
    assert_eq!(layer.state("default"), Some(BreakerState::HalfOpen));

    // Ends in 4 s, but the caller's own deadline is 3 s: answered at once.
    let backend = Backend::default();
    let (_, svc) = stack(&policy(&soon("2026-12-02T00:30:04+05:30")), now, &backend);
    advance(secs(1800)).await;
    let started = Instant::now();
    let call = Call {
        hold: Duration::ZERO,
        deadline: Some(secs(3)),
    };
    let rejected = rejection(svc.clone().oneshot(call).await);
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert_eq!(rejected.reason(), Reason::Maintenance);
    assert_hint(&rejected, secs(4));
    assert_eq!(backend.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_window_starting_turns_away_the_waiters_it_outlasts_at_once() {
    let room = "[waiting_room]\ncapacity = 10\nmax_wait = \"10s\"\n";
    let base = BASE
        .replace("[waiting_room]\ncapacity = 0\n", "")
        .replace(
            "algorithm = \"aimd\"\ninitial = 20",
            "algorithm = \"fixed\"\ninitial = 1",
        )
        .replace("min = 2", "min = 1");
    let window = window_toml(
        "2026-12-02T00:00:02+05:30",
        "2026-12-02T01:00:00+05:30",
        Some("m"),
    );
    let policy = Policy::from_toml(&format!("{base}\n{room}\n{window}")).unwrap();
    let backend = Backend::default();
    let (layer, svc) = stack(&policy, "2026-12-02T00:00:00+05:30", &backend);
    // One long call holds the only slot; the next waits for it.
    let long = tokio::spawn(svc.clone().oneshot(hold(secs(60))));
    tokio::task::yield_now().await;
    let started = Instant::now();
    let waiter = tokio::spawn(svc.clone().oneshot(Call::default()));
    tokio::task::yield_now().await;
    assert_eq!(layer.waiting("default"), 1);
    // Its wait (10 s) ends inside the window, which starts in 2 s: it is
    // told so when the window starts, not when its wait runs out.
    let rejected = rejection(waiter.await.unwrap());
    assert_eq!(started.elapsed(), secs(2));
    assert_eq!(rejected.reason(), Reason::Maintenance);
    assert_hint(&rejected, secs(3598));
    assert_eq!(layer.waiting("default"), 0);
    long.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_reload_adds_and_removes_a_window_live() {
    let backend = Backend::default();
    let plain = policy("");
    let (layer, svc) = stack(&plain, "2026-12-02T10:00:00+05:30", &backend);
    svc.clone().oneshot(Call::default()).await.unwrap();
    let handle = layer.handle();

    // Ops declare maintenance from an hour ago to an hour from now.
    let window = window_toml(
        "2026-12-02T09:00:00+05:30",
        "2026-12-02T11:00:00+05:30",
        Some("emergency upgrade"),
    );
    handle.apply(policy(&window)).unwrap();
    let rejected = rejection(svc.clone().oneshot(Call::default()).await);
    assert_eq!(rejected.reason(), Reason::Maintenance);
    assert_eq!(rejected.message(), Some("emergency upgrade"));
    assert_hint(&rejected, secs(3600));

    // A bad window leaves the one in force.
    let backwards = window_toml(
        "2026-12-02T11:00:00+05:30",
        "2026-12-02T09:00:00+05:30",
        None,
    );
    let err = handle.apply(policy_unchecked(&backwards)).unwrap_err();
    assert_eq!(err.field(), Some("maintenance[0].until"));
    assert!(svc.clone().oneshot(Call::default()).await.is_err());

    // Done early: ops remove it. The window ends now, as if its time had
    // come: probes, and the limit from its minimum.
    advance(secs(600)).await;
    handle.apply(plain.clone()).unwrap();
    assert_eq!(layer.state("default"), Some(BreakerState::HalfOpen));
    assert_eq!(layer.limit("default"), Some(2));
    svc.clone().oneshot(Call::default()).await.unwrap();
    assert_eq!(backend.calls(), 2);

    // A window added for later starts on time.
    let later = window_toml(
        "2026-12-02T12:00:00+05:30",
        "2026-12-02T13:00:00+05:30",
        None,
    );
    handle.apply(policy(&later)).unwrap();
    svc.clone().oneshot(Call::default()).await.unwrap();
    advance(secs(110 * 60)).await; // 12:00
    let rejected = rejection(svc.clone().oneshot(Call::default()).await);
    assert_hint(&rejected, secs(3600));
    assert_eq!(rejected.message(), None);
}

/// A policy read without validation (to hand a bad one to `apply`).
fn policy_unchecked(sections: &str) -> Policy {
    toml::from_str(&format!("{BASE}\n{sections}")).unwrap()
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn over_http_the_answer_is_a_503_with_the_message_and_retry_after_the_end() {
    use http::{Request, Response, StatusCode, header};

    let calls = Arc::new(AtomicU32::new(0));
    let app = {
        let calls = calls.clone();
        tower::service_fn(move |_: Request<String>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, std::convert::Infallible>(Response::new(String::from("slots"))) }
        })
    };
    // The default waiting room (max_wait 10 s) cannot wait out the window.
    let policy = Policy::from_toml(DESIGN_WINDOW).unwrap();
    // 90.5 s before the end of the window.
    let layer = BrownoutLayer::from_policy(&policy)
        .clock(Clock::tokio_at(at("2026-12-08T23:58:29.5+05:30")))
        .http();
    let svc = layer.layer(app);
    let get = || Request::get("/slots").body(String::new()).unwrap();

    let response = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    // 90.5 s to the end, rounded up, spread by at most 30 s.
    let hint: u64 = response.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((91..=121).contains(&hint), "Retry-After: {hint}");
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let body: serde_json::Value = serde_json::from_str(response.body()).unwrap();
    assert_eq!(body["title"], "Service in planned maintenance");
    assert_eq!(body["detail"], MESSAGE);
    assert_eq!(body["reason"], "maintenance");
    assert_eq!(body["type"], "urn:brownout:maintenance");
    assert_eq!(body["retry_after"], hint);
    assert_eq!(calls.load(Ordering::SeqCst), 0);

    // At the end: served, as the first probe.
    advance(Duration::from_millis(90_500)).await;
    let response = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.body(), "slots");
    assert_eq!(layer.state("/slots"), Some(BreakerState::HalfOpen));
}

#[cfg(feature = "grpc")]
#[tokio::test(start_paused = true)]
async fn over_grpc_the_message_is_the_grpc_message() {
    use http::{Request, Response};

    let app = tower::service_fn(|_: Request<String>| async {
        Ok::<_, std::convert::Infallible>(Response::new(String::new()))
    });
    let policy = Policy::from_toml(DESIGN_WINDOW).unwrap();
    let layer = BrownoutLayer::from_policy(&policy)
        .clock(Clock::tokio_at(at("2026-12-08T23:00:00+05:30")))
        .grpc();
    let response = layer
        .layer(app)
        .oneshot(
            Request::post("/booking.Booking/Book")
                .body(String::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let headers = response.headers();
    assert_eq!(headers["grpc-status"], "14");
    assert_eq!(headers["grpc-message"], MESSAGE);
    // An hour to the end, spread by at most six minutes.
    let pushback: u64 = headers["grpc-retry-pushback-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3_600_000..=3_960_000).contains(&pushback), "{pushback} ms");
}

/// A maintenance answer's retry hint: the time to the window's end, spread
/// later by up to a tenth of it (at least 30 s, at most 15 minutes), so
/// that a herd told to come back does not come back in one second.
#[track_caller]
fn assert_hint(rejected: &Rejected, to_end: Duration) {
    let hint = rejected.retry_after().expect("a retry hint");
    let spread = (to_end / 10).clamp(Duration::from_secs(30), Duration::from_secs(15 * 60));
    let most = to_end + spread;
    assert!(
        (to_end..=most).contains(&hint),
        "retry hint {hint:?}, expected between {to_end:?} and {most:?}"
    );
}
