//! The waiting room's metrics: `brownout_waiting{route,priority}`
//! follows the waiters of each class in and out, `brownout_wait_seconds`
//! records the exact wait of those let out with a permit, and
//! `brownout_requests_total` counts every way out of the room by reason.
//! Read through metrics-util's `DebuggingRecorder`, installed as this
//! thread's local recorder before the layer is built, in paused time.

mod support;

use std::time::Duration;

use brownout::deadline::deadline_fn;
use brownout::policy::Algorithm;
use brownout::priority::{Classes, Priority, priority_fn};
use brownout::{
    BackoffPolicy, BreakerPolicy, BreakerState, LimitPolicy, Reason, Rejected, WaitingRoomLayer,
    WaitingRoomPolicy, WindowPolicy,
};
use metrics_util::debugging::DebuggingRecorder;
use tokio::time::{Instant, advance};
use tower::{BoxError, Layer, Service, ServiceExt};

use support::metrics::{Gauges, Seen, counts};

const WAITING: &str = "brownout_waiting";
const WAIT_SECONDS: &str = "brownout_wait_seconds";
const ROUTE: &str = "slots";
const CLASSES: [&str; 3] = ["urgent", "normal", "bulk"];

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The waiting room's metrics of [`ROUTE`], fresh.
trait RoomSeen {
    /// The waiting gauge of each class, as `[urgent, normal, bulk]`.
    fn waiting(&mut self) -> [f64; 3];
    /// The waits recorded for each class.
    fn waits(&mut self) -> [Vec<f64>; 3];
}

impl RoomSeen for Seen {
    fn waiting(&mut self) -> [f64; 3] {
        CLASSES.map(|class| {
            self.gauge(WAITING, &[("route", ROUTE), ("priority", class)])
                .unwrap_or_else(|| panic!("brownout_waiting{{priority={class}}} is registered"))
        })
    }

    fn waits(&mut self) -> [Vec<f64>; 3] {
        CLASSES.map(|class| self.histogram(WAIT_SECONDS, &[("route", ROUTE), ("priority", class)]))
    }
}

// ---- a back end the tests steer --------------------------------------------

/// A request: its class (0 urgent, 1 normal, 2 bulk), how long the back
/// end takes with it, whether it fails, and its own deadline.
#[derive(Debug, Clone, Copy)]
struct Job {
    class: u8,
    hold: Duration,
    fail: bool,
    deadline: Option<Duration>,
}

fn job(class: u8, hold: Duration) -> Job {
    Job {
        class,
        hold,
        fail: false,
        deadline: None,
    }
}

fn backend() -> impl Service<Job, Response = (), Error = BoxError, Future: Send> + Clone + Send {
    tower::service_fn(|j: Job| async move {
        tokio::time::sleep(j.hold).await;
        if j.fail {
            Err::<(), BoxError>("back end failed".into())
        } else {
            Ok(())
        }
    })
}

fn by_class(j: &Job, classes: &Classes) -> Priority {
    classes.clamp(Priority::new(j.class))
}

/// One call at a time, for every class.
fn one_at_a_time() -> LimitPolicy {
    LimitPolicy {
        algorithm: Algorithm::Fixed,
        initial: 1,
        max: 1,
        reserve: 0.0,
        ..LimitPolicy::default()
    }
}

fn room(capacity: u32, max_wait: Duration) -> WaitingRoomPolicy {
    WaitingRoomPolicy {
        capacity,
        max_wait,
        ..WaitingRoomPolicy::default()
    }
}

fn reason(result: &Result<(), BoxError>) -> Option<Reason> {
    result
        .as_ref()
        .err()
        .and_then(|e| e.downcast_ref::<Rejected>())
        .map(Rejected::reason)
}

/// Lets every spawned task run until it blocks, without moving time.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// Seconds as the room records them: from whole nanoseconds.
fn secs(d: Duration) -> f64 {
    d.as_nanos() as f64 * 1e-9
}

// ---- the tests -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_waiting_gauge_rises_and_falls_with_the_waiters_of_each_class() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(recorder.snapshotter(), Gauges::Summed);
    let _local = metrics::set_default_local_recorder(&recorder);
    let layer = WaitingRoomLayer::new(room(10, Duration::from_secs(60)))
        .limit(one_at_a_time())
        .priority(priority_fn(by_class))
        .route(ROUTE);
    let svc = layer.layer(backend());

    assert_eq!(seen.waiting(), [0.0; 3], "registered at zero");
    let mut tasks = vec![tokio::spawn(svc.clone().oneshot(job(1, ms(1000))))];
    settle().await;
    assert_eq!(seen.waiting(), [0.0; 3], "an admitted call never waits");

    // Six arrive behind it, one at a time, in mixed classes.
    let arrivals = [0u8, 1, 2, 1, 0, 1];
    let mut expected = [0.0; 3];
    for class in arrivals {
        tasks.push(tokio::spawn(svc.clone().oneshot(job(class, ms(1000)))));
        settle().await;
        expected[usize::from(class)] += 1.0;
        assert_eq!(seen.waiting(), expected);
    }
    assert_eq!(expected, [2.0, 3.0, 1.0]);
    assert_eq!(layer.waiting(), 6);

    // Each second a call ends and the most important waiter goes in.
    let mut order = arrivals.to_vec();
    order.sort(); // stable: by class, then arrival
    for class in order {
        advance(ms(1000)).await;
        settle().await;
        expected[usize::from(class)] -= 1.0;
        assert_eq!(seen.waiting(), expected);
    }
    assert_eq!(seen.waiting(), [0.0; 3]);
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(seen.waiting(), [0.0; 3]);
    assert_eq!(seen.requests(ROUTE), counts(&[("served", "none", 7)]));
}

#[tokio::test(start_paused = true)]
async fn every_way_out_of_the_room_counts_the_waiter_out_and_its_reason_in() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(recorder.snapshotter(), Gauges::Summed);
    let _local = metrics::set_default_local_recorder(&recorder);
    let layer = WaitingRoomLayer::new(room(3, ms(2000)))
        .breaker(BreakerPolicy {
            window: WindowPolicy::Count { size: 1 },
            minimum_calls: 1,
            open_for: Duration::from_secs(10),
            open_backoff: BackoffPolicy {
                jitter: 0.0,
                ..BackoffPolicy::default()
            },
            ..BreakerPolicy::default()
        })
        .limit(one_at_a_time())
        .priority(priority_fn(by_class))
        .deadline(deadline_fn(|j: &Job| j.deadline))
        .route(ROUTE);
    let mut svc = layer.layer(backend());
    let origin = Instant::now();

    // An urgent call holds the only slot for 2.5 s.
    let blocker = tokio::spawn(svc.clone().oneshot(job(0, ms(2500))));
    settle().await;
    // Two bulk waiters, and a normal one with 300 ms to live, fill the room.
    let bulk_old = tokio::spawn(svc.clone().oneshot(job(2, ms(10))));
    settle().await;
    let bulk_new = tokio::spawn(svc.clone().oneshot(job(2, ms(10))));
    settle().await;
    let hurried = tokio::spawn(svc.clone().oneshot(Job {
        deadline: Some(ms(300)),
        ..job(1, ms(10))
    }));
    settle().await;
    assert_eq!(seen.waiting(), [0.0, 1.0, 2.0]);

    // An urgent waiter takes the newest bulk waiter's place: queue_full.
    svc.ready().await.unwrap();
    let urgent = svc.call(job(0, ms(10)));
    settle().await;
    assert!(bulk_new.is_finished());
    assert_eq!(reason(&bulk_new.await.unwrap()), Some(Reason::QueueFull));
    assert_eq!(seen.waiting(), [1.0, 1.0, 1.0], "the displaced one is out");
    // Another bulk request finds the room full, with nobody below it.
    let turned_away = svc.clone().oneshot(job(2, ms(10))).await;
    assert_eq!(reason(&turned_away), Some(Reason::QueueFull));
    assert_eq!(seen.waiting(), [1.0, 1.0, 1.0], "it never came in");
    // A request whose deadline has passed never comes in either.
    let late = svc
        .clone()
        .oneshot(Job {
            deadline: Some(Duration::ZERO),
            ..job(1, ms(10))
        })
        .await;
    assert_eq!(reason(&late), Some(Reason::Deadline));
    assert_eq!(seen.waiting(), [1.0, 1.0, 1.0]);
    assert_eq!(
        seen.requests(ROUTE),
        counts(&[("rejected", "queue_full", 2), ("rejected", "deadline", 1)])
    );

    // The urgent caller goes away: cancelled.
    drop(urgent);
    assert_eq!(seen.waiting(), [0.0, 1.0, 1.0]);
    assert_eq!(
        seen.requests(ROUTE)[&("cancelled".into(), "none".into())],
        1
    );

    // The hurried one leaves at its deadline, the old bulk one at max_wait.
    advance(ms(300)).await;
    settle().await;
    assert_eq!(reason(&hurried.await.unwrap()), Some(Reason::Deadline));
    assert_eq!(seen.waiting(), [0.0, 0.0, 1.0]);
    advance(ms(1700)).await;
    settle().await;
    assert_eq!(reason(&bulk_old.await.unwrap()), Some(Reason::QueueTimeout));
    assert_eq!(seen.waiting(), [0.0; 3]);
    advance(ms(500)).await;
    blocker.await.unwrap().unwrap();
    assert_eq!(origin.elapsed(), ms(2500));

    // A failing call opens the breaker for 10 s under a waiter whose wait
    // ends in 2 s: it is told `open` at once.
    let failing = tokio::spawn(svc.clone().oneshot(Job {
        fail: true,
        ..job(1, ms(500))
    }));
    settle().await;
    let doomed = tokio::spawn(svc.clone().oneshot(job(1, ms(10))));
    settle().await;
    assert_eq!(seen.waiting(), [0.0, 1.0, 0.0]);
    advance(ms(500)).await;
    settle().await;
    assert!(failing.await.unwrap().is_err());
    assert_eq!(layer.state(), BreakerState::Open);
    assert!(doomed.is_finished());
    assert_eq!(reason(&doomed.await.unwrap()), Some(Reason::Open));
    assert_eq!(seen.waiting(), [0.0; 3]);

    assert_eq!(
        seen.requests(ROUTE),
        counts(&[
            ("served", "none", 2),
            ("cancelled", "none", 1),
            ("rejected", "queue_full", 2),
            ("rejected", "deadline", 2),
            ("rejected", "queue_timeout", 1),
            ("rejected", "open", 1),
        ])
    );
    // Nobody left the room with a permit, so no wait was recorded.
    assert_eq!(seen.waits(), [Vec::<f64>::new(), vec![], vec![]]);
    assert_eq!(layer.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn wait_seconds_records_the_exact_wait_of_each_waiter_let_out() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(recorder.snapshotter(), Gauges::Summed);
    let _local = metrics::set_default_local_recorder(&recorder);
    let layer = WaitingRoomLayer::new(room(10, Duration::from_secs(60)))
        .limit(one_at_a_time())
        .priority(priority_fn(by_class))
        .route(ROUTE);
    let svc = layer.layer(backend());
    let origin = Instant::now();

    // (arrival, class, hold): the slot is busy until 1.5 s, then the urgent
    // waiter holds it for 0.7 s, the normal one for 0.3 s.
    let plan = [
        (0, 1, 1500),
        (0, 0, 700),
        (250, 1, 300),
        (1000, 2, 10),
        (2600, 1, 10),
    ];
    let mut tasks = Vec::new();
    for (at, class, hold) in plan {
        tokio::time::sleep_until(origin + ms(at)).await;
        tasks.push(tokio::spawn(svc.clone().oneshot(job(class, ms(hold)))));
        settle().await;
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }

    // Let out at 1.5 s, 2.2 s and 2.5 s; the first and last callers never
    // waited, so nothing is recorded for them.
    assert_eq!(
        seen.waits(),
        [
            vec![secs(ms(1500))],
            vec![secs(ms(2200 - 250))],
            vec![secs(ms(2500 - 1000))],
        ]
    );
    assert_eq!(seen.requests(ROUTE), counts(&[("served", "none", 5)]));
    assert_eq!(seen.waiting(), [0.0; 3]);
}
