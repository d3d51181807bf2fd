//! State-change listeners, in paused time: each breaker transition, limit
//! change, request turned away and maintenance window start and end reaches
//! the listener exactly once, with what it is about; manual actions and
//! policy reloads are reported with their cause; the rejection path
//! allocates nothing more with a listener than without.

#![cfg(feature = "toml")]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use brownout::clock::Clock;
use brownout::listen::{
    BreakerTransition, Cause, Event, LimitChanged, Listener, MaintenanceEnded, MaintenanceStarted,
    Shed,
};
use brownout::priority::{Classes, Priority, priority_fn};
use brownout::{
    BreakerPolicy, BreakerState, BrownoutLayer, CircuitBreakerLayer, Mode, Policy, Reason, Rejected,
};
use tower::{BoxError, Layer, Service, ServiceExt};

use support::alloc::{Counting, allocations_in};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// One request: its class (by rank), how long the back end takes, and
/// whether it fails.
#[derive(Debug, Clone, Copy, Default)]
struct Call {
    rank: u8,
    hold: Duration,
    fail: bool,
}

fn ok() -> Call {
    Call::default()
}

fn failing() -> Call {
    Call {
        fail: true,
        ..Call::default()
    }
}

fn held(hold: Duration) -> Call {
    Call {
        hold,
        ..Call::default()
    }
}

/// A back end that takes `hold` and fails when told.
fn back_end() -> impl Service<Call, Response = (), Error = BoxError, Future: Send> + Clone + Send {
    tower::service_fn(|call: Call| async move {
        tokio::time::sleep(call.hold).await;
        if call.fail {
            Err::<(), BoxError>("back end down".into())
        } else {
            Ok(())
        }
    })
}

/// An event, owned.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Breaker {
        route: String,
        from: BreakerState,
        to: BreakerState,
        cause: Cause,
        open_for: Option<Duration>,
        next_probe_at: Option<SystemTime>,
    },
    Limit {
        route: String,
        from: u32,
        to: u32,
    },
    Shed {
        route: String,
        reason: Reason,
        priority: String,
    },
    MaintenanceStarted {
        route: String,
        until: SystemTime,
        message: Option<String>,
    },
    MaintenanceEnded {
        route: String,
    },
}

/// Records every event it is told, through the trait's methods.
#[derive(Debug, Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl Recorder {
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    fn push(&self, seen: Seen) {
        self.0.lock().unwrap().push(seen);
    }
}

impl Listener for Recorder {
    fn on_breaker(&self, e: &BreakerTransition<'_>) {
        self.push(Seen::Breaker {
            route: e.route.to_owned(),
            from: e.from,
            to: e.to,
            cause: e.cause,
            open_for: e.open_for,
            next_probe_at: e.next_probe_at,
        });
    }

    fn on_limit(&self, e: &LimitChanged<'_>) {
        self.push(Seen::Limit {
            route: e.route.to_owned(),
            from: e.from,
            to: e.to,
        });
    }

    fn on_shed(&self, e: &Shed<'_>) {
        self.push(Seen::Shed {
            route: e.route.to_owned(),
            reason: e.reason,
            priority: e.priority.to_owned(),
        });
    }

    fn on_maintenance_start(&self, e: &MaintenanceStarted<'_>) {
        self.push(Seen::MaintenanceStarted {
            route: e.route.to_owned(),
            until: e.until,
            message: e.message.map(str::to_owned),
        });
    }

    fn on_maintenance_end(&self, e: &MaintenanceEnded<'_>) {
        self.push(Seen::MaintenanceEnded {
            route: e.route.to_owned(),
        });
    }
}

fn policy(toml: &str) -> Policy {
    Policy::from_toml(toml).unwrap_or_else(|err| panic!("the test policy loads: {err}"))
}

/// A breaker that judges 5 calls of a window of 10 and probes with 2; a
/// roomy fixed limit; no waiting room.
const BREAKER: &str = r#"
[breaker]
window = { kind = "count", size = 10 }
minimum_calls = 5
open_for = "5s"
open_backoff = { jitter = 0.0 }
half_open_probes = 2

[limit]
algorithm = "fixed"
initial = 100
max = 100

[waiting_room]
capacity = 0
"#;

/// The stack of `policy` on a clock at `now`, telling `listener`, with
/// each call's class read from the call, and a service through it.
#[allow(clippy::type_complexity)]
fn stack<L: Listener>(
    policy: &Policy,
    now: SystemTime,
    listener: L,
) -> (
    BrownoutLayer<
        brownout::fallback::RejectAsError,
        brownout::stack::SingleRoute,
        brownout::priority::PriorityFn<fn(&Call, &Classes) -> Priority>,
    >,
    impl Service<Call, Response = (), Error = BoxError, Future: Send> + Clone + Send + use<L>,
) {
    let class: fn(&Call, &Classes) -> Priority = |call, _| Priority::new(call.rank);
    let layer = BrownoutLayer::from_policy(policy)
        .clock(Clock::tokio_at(now))
        .priority(priority_fn(class))
        .listener(listener);
    let svc = layer.layer(back_end());
    (layer, svc)
}

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_457_600)
}

fn reason(result: Result<(), BoxError>) -> Reason {
    let err = result.expect_err("turned away");
    err.downcast_ref::<Rejected>()
        .unwrap_or_else(|| panic!("a rejection, not {err}"))
        .reason()
}

fn breaker_events(seen: &[Seen]) -> Vec<(BreakerState, BreakerState, Cause)> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Breaker {
                from, to, cause, ..
            } => Some((*from, *to, *cause)),
            _ => None,
        })
        .collect()
}

fn sheds(seen: &[Seen]) -> Vec<(Reason, String)> {
    seen.iter()
        .filter_map(|s| match s {
            Seen::Shed {
                reason, priority, ..
            } => Some((*reason, priority.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn each_breaker_transition_is_told_once_with_the_next_probe_time() {
    let recorder = Recorder::default();
    let (layer, svc) = stack(&policy(BREAKER), t0(), recorder.clone());
    for _ in 0..5 {
        let result = svc.clone().oneshot(failing()).await;
        assert!(result.unwrap_err().downcast_ref::<Rejected>().is_none());
    }
    assert_eq!(layer.state("default"), Some(BreakerState::Open));
    let seen = recorder.take();
    assert_eq!(
        seen,
        vec![Seen::Breaker {
            route: "default".into(),
            from: BreakerState::Closed,
            to: BreakerState::Open,
            cause: Cause::Verdict,
            open_for: Some(Duration::from_secs(5)),
            next_probe_at: Some(t0() + Duration::from_secs(5)),
        }],
        "one transition, with when the breaker probes"
    );

    // Open: three calls turned away, each told once.
    for _ in 0..3 {
        assert_eq!(reason(svc.clone().oneshot(ok()).await), Reason::Open);
    }
    assert_eq!(
        recorder.take(),
        vec![
            Seen::Shed {
                route: "default".into(),
                reason: Reason::Open,
                priority: "urgent".into(),
            };
            3
        ]
    );

    // The open period ends: the next call probes, the probes close it.
    tokio::time::advance(Duration::from_secs(5)).await;
    for _ in 0..2 {
        svc.clone().oneshot(ok()).await.unwrap();
    }
    assert_eq!(layer.state("default"), Some(BreakerState::Closed));
    assert_eq!(
        breaker_events(&recorder.take()),
        vec![
            (BreakerState::Open, BreakerState::HalfOpen, Cause::Verdict),
            (BreakerState::HalfOpen, BreakerState::Closed, Cause::Verdict),
        ]
    );
    // Calls through a closed breaker tell nothing.
    for _ in 0..20 {
        svc.clone().oneshot(ok()).await.unwrap();
    }
    assert_eq!(recorder.take(), vec![]);
}

#[tokio::test(start_paused = true)]
async fn forced_modes_by_hand_and_by_reload_are_told_with_their_cause() {
    let recorder = Recorder::default();
    let p = policy(BREAKER);
    let (layer, svc) = stack(&p, t0(), recorder.clone());
    svc.clone().oneshot(ok()).await.unwrap();
    let handle = layer.handle();
    assert!(handle.set_route_mode("default", Mode::ForcedOpen));
    assert_eq!(reason(svc.clone().oneshot(ok()).await), Reason::Open);
    let mut closed = p.clone();
    closed.breaker.mode = Mode::ForcedClosed;
    handle.apply(closed.clone()).unwrap();
    // The same policy again changes nothing, and tells nothing.
    handle.apply(closed).unwrap();
    svc.clone().oneshot(ok()).await.unwrap();
    let seen = recorder.take();
    let of = |route: &str| -> Vec<Seen> {
        seen.iter()
            .filter(|s| matches!(s, Seen::Breaker { route: r, .. } if r == route))
            .cloned()
            .collect()
    };
    assert_eq!(
        breaker_events(&of("default")),
        vec![
            (
                BreakerState::Closed,
                BreakerState::ForcedOpen,
                Cause::Manual
            ),
            (
                BreakerState::ForcedOpen,
                BreakerState::ForcedClosed,
                Cause::Policy
            ),
        ]
    );
    // The overflow gate follows the policy too.
    assert_eq!(
        breaker_events(&of("overflow")),
        vec![(
            BreakerState::Closed,
            BreakerState::ForcedClosed,
            Cause::Policy
        )]
    );
    assert_eq!(sheds(&seen), vec![(Reason::Open, "urgent".into())]);
}

/// A fixed limit of 1 and a room of 2 that holds a call for 1 s at most.
const TIGHT: &str = r#"
[limit]
algorithm = "fixed"
initial = 1
min = 1
max = 1
reserve = 0.0

[waiting_room]
capacity = 2
max_wait = "1s"
"#;

#[tokio::test(start_paused = true)]
async fn every_request_turned_away_is_told_with_its_reason_and_class() {
    let recorder = Recorder::default();
    let mut p = policy(TIGHT);
    let (_layer, svc) = stack(&p, t0(), recorder.clone());
    // One call holds the only slot for a minute.
    let holder = tokio::spawn(svc.clone().oneshot(held(Duration::from_secs(60))));
    tokio::task::yield_now().await;
    // A `bulk` call waits its second and is turned away.
    let bulk = Call { rank: 2, ..ok() };
    assert_eq!(
        reason(svc.clone().oneshot(bulk).await),
        Reason::QueueTimeout
    );
    assert_eq!(
        sheds(&recorder.take()),
        vec![(Reason::QueueTimeout, "bulk".to_owned())]
    );
    holder.abort();
    let _ = holder.await;

    // Without a room, a `normal` call past the limit is shed at once.
    p.waiting_room.capacity = 0;
    let recorder = Recorder::default();
    let (_layer, svc) = stack(&p, t0(), recorder.clone());
    let holder = tokio::spawn(svc.clone().oneshot(held(Duration::from_secs(60))));
    tokio::task::yield_now().await;
    let normal = Call { rank: 1, ..ok() };
    assert_eq!(reason(svc.clone().oneshot(normal).await), Reason::Shed);
    assert_eq!(reason(svc.clone().oneshot(normal).await), Reason::Shed);
    assert_eq!(
        sheds(&recorder.take()),
        vec![(Reason::Shed, "normal".to_owned()); 2]
    );
    holder.abort();
}

#[tokio::test(start_paused = true)]
async fn limit_changes_are_told_per_window_as_a_chain_not_per_call() {
    let recorder = Recorder::default();
    let p = policy(
        r#"
[breaker]
failure_rate = 1.0
[limit]
algorithm = "aimd"
initial = 20
min = 2
max = 100
[waiting_room]
capacity = 0
"#,
    );
    let (layer, svc) = stack(&p, t0(), recorder.clone());
    let mut calls = 0;
    for _ in 0..6 {
        // Twenty calls at once, half of them failing: each window's
        // failures take the limit down.
        let batch: Vec<_> = (0..20)
            .map(|i| {
                let call = Call {
                    hold: Duration::from_millis(50),
                    fail: i % 2 == 0,
                    ..ok()
                };
                tokio::spawn(svc.clone().oneshot(call))
            })
            .collect();
        for call in batch {
            let _ = call.await.unwrap();
            calls += 1;
        }
    }
    let changes: Vec<(u32, u32)> = recorder
        .take()
        .into_iter()
        .filter_map(|s| match s {
            Seen::Limit { route, from, to } => {
                assert_eq!(route, "default");
                Some((from, to))
            }
            _ => None,
        })
        .collect();
    assert!(!changes.is_empty(), "the limit moved");
    assert!(
        changes.len() * 4 < calls,
        "{} changes told for {calls} calls: per window, not per call",
        changes.len()
    );
    let mut last = 20;
    for (from, to) in &changes {
        assert_eq!(
            *from, last,
            "each change starts where the last ended: {changes:?}"
        );
        assert_ne!(
            from, to,
            "a change that changes nothing is not told: {changes:?}"
        );
        last = *to;
    }
    assert_eq!(Some(last), layer.limit("default"));
    assert!(last < 20, "failures took the limit down: {changes:?}");

    // A reload that lowers the ceiling moves it once more.
    let mut lower = p.clone();
    lower.limit.max = 3;
    lower.limit.initial = 3;
    layer.handle().apply(lower).unwrap();
    let seen = recorder.take();
    assert!(
        seen.contains(&Seen::Limit {
            route: "default".into(),
            from: last,
            to: 3
        }),
        "{seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_maintenance_window_is_told_once_as_it_starts_and_once_as_it_ends() {
    let recorder = Recorder::default();
    let start = t0() + Duration::from_secs(3600);
    let end = start + Duration::from_secs(3600);
    let mut p = policy(BREAKER);
    p.maintenance =
        vec![brownout::policy::MaintenanceWindow::new(start, end).with_message("Back at noon.")];
    let (layer, svc) = stack(&p, t0(), recorder.clone());
    svc.clone().oneshot(ok()).await.unwrap();
    tokio::time::advance(Duration::from_secs(3601)).await;
    for _ in 0..3 {
        assert_eq!(reason(svc.clone().oneshot(ok()).await), Reason::Maintenance);
    }
    let seen = recorder.take();
    let started: Vec<_> = seen
        .iter()
        .filter(|s| matches!(s, Seen::MaintenanceStarted { .. }))
        .collect();
    assert_eq!(
        started,
        vec![&Seen::MaintenanceStarted {
            route: "default".into(),
            until: end,
            message: Some("Back at noon.".into()),
        }]
    );
    assert_eq!(
        sheds(&seen),
        vec![(Reason::Maintenance, "urgent".into()); 3]
    );

    tokio::time::advance(Duration::from_secs(3600)).await;
    svc.clone().oneshot(ok()).await.unwrap();
    let seen = recorder.take();
    assert_eq!(
        breaker_events(&seen),
        vec![(
            BreakerState::Closed,
            BreakerState::HalfOpen,
            Cause::Maintenance
        )]
    );
    assert_eq!(
        seen.iter()
            .filter(|s| matches!(s, Seen::MaintenanceEnded { .. }))
            .count(),
        1
    );
    assert_eq!(layer.state("default"), Some(BreakerState::HalfOpen));
    svc.clone().oneshot(ok()).await.unwrap();
    assert!(
        !recorder
            .take()
            .iter()
            .any(|s| matches!(s, Seen::MaintenanceEnded { .. }))
    );
}

#[tokio::test(start_paused = true)]
async fn a_closure_listener_on_a_keyed_breaker_hears_each_key() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let layer = CircuitBreakerLayer::new(BreakerPolicy {
        minimum_calls: 2,
        window: brownout::WindowPolicy::Count { size: 2 },
        ..BreakerPolicy::default()
    })
    .listener(move |event: Event<'_>| {
        if let Event::Breaker(t) = event {
            log.lock().unwrap().push((event.route().to_owned(), t.to));
        }
    })
    .per_key(8, |call: &(&'static str, bool)| call.0);
    let svc = layer.layer(tower::service_fn(|call: (&'static str, bool)| async move {
        if call.1 {
            Err::<(), BoxError>("down".into())
        } else {
            Ok(())
        }
    }));
    for _ in 0..2 {
        let _ = svc.clone().oneshot(("a", true)).await;
        let _ = svc.clone().oneshot(("b", false)).await;
    }
    assert_eq!(
        *seen.lock().unwrap(),
        vec![("a".to_owned(), BreakerState::Open)]
    );
}

/// Counts the events it is told, allocating nothing.
#[derive(Debug, Clone, Default)]
struct Counts(Arc<AtomicU64>);

impl Listener for Counts {
    fn on_shed(&self, _: &Shed<'_>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn the_rejection_path_allocates_nothing_more_with_a_listener() {
    const CALLS: u64 = 500;
    let forced = BreakerPolicy {
        mode: Mode::ForcedOpen,
        ..BreakerPolicy::default()
    };
    let count = |listener: Option<Counts>| {
        let layer = CircuitBreakerLayer::new(forced.clone());
        let layer = match listener {
            Some(listener) => layer.listener(listener),
            None => layer,
        };
        let mut svc = layer.layer(tower::service_fn(|_: u64| async { Ok::<_, BoxError>(()) }));
        let mut run = || {
            for i in 0..CALLS {
                let call = svc.call(i);
                assert!(support::alloc::now(call).is_err());
            }
        };
        run();
        allocations_in(run)
    };
    let counts = Counts::default();
    let with = count(Some(counts.clone()));
    let without = count(None);
    assert_eq!(
        counts.0.load(Ordering::Relaxed),
        2 * CALLS,
        "every rejection was told"
    );
    assert_eq!(
        with, without,
        "{with} allocations with a listener, {without} without, in {CALLS} rejections"
    );
    assert_eq!(without, CALLS, "the boxed rejection of each call, no more");
}
