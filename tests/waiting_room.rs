//! The waiting room in virtual time: order of release, deadlines to the
//! tick, places freed by dropped callers, displacement, and a paced drain
//! after an outage.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brownout::deadline::deadline_fn;
use brownout::policy::Algorithm;
use brownout::priority::{Classes, Priority, priority_fn};
use brownout::{
    BreakerPolicy, BreakerState, LimitPolicy, Reason, Rejected, WaitingRoomLayer,
    WaitingRoomPolicy, WindowPolicy,
};
use tower::{BoxError, Layer, Service, ServiceExt};

/// A request: its class (0 urgent, 1 normal, 2 bulk), an id, how long the
/// back end takes with it, and its own deadline if any.
#[derive(Debug, Clone, Copy)]
struct Call {
    class: u8,
    id: u32,
    hold: Duration,
    deadline: Option<Duration>,
}

fn call(class: u8, id: u32, hold: Duration) -> Call {
    Call {
        class,
        id,
        hold,
        deadline: None,
    }
}

/// What the back end saw.
#[derive(Debug, Default)]
struct Log {
    started: Mutex<Vec<u32>>,
    inflight: AtomicU32,
    peak: AtomicU32,
    down: AtomicBool,
}

fn backend(
    log: Arc<Log>,
) -> impl Service<Call, Response = u32, Error = BoxError, Future: Send> + Clone + Send {
    tower::service_fn(move |c: Call| {
        let log = log.clone();
        async move {
            log.started.lock().unwrap().push(c.id);
            let now = log.inflight.fetch_add(1, Ordering::SeqCst) + 1;
            log.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(c.hold).await;
            log.inflight.fetch_sub(1, Ordering::SeqCst);
            if log.down.load(Ordering::SeqCst) {
                Err::<u32, BoxError>("back end down".into())
            } else {
                Ok(c.id)
            }
        }
    })
}

fn one_at_a_time() -> LimitPolicy {
    LimitPolicy {
        algorithm: Algorithm::Fixed,
        initial: 1,
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

fn by_class(c: &Call, classes: &Classes) -> Priority {
    classes.clamp(Priority::new(c.class))
}

fn reason(result: &Result<u32, BoxError>) -> Option<Reason> {
    result
        .as_ref()
        .err()
        .and_then(|e| e.downcast_ref::<Rejected>())
        .map(Rejected::reason)
}

/// Lets every spawned task run until it blocks, without moving time.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn waiters_leave_most_important_class_first_then_in_arrival_order() {
    let log = Arc::new(Log::default());
    let layer = WaitingRoomLayer::new(room(100, Duration::from_secs(60)))
        .limit(one_at_a_time())
        .priority(priority_fn(by_class));
    let svc = layer.layer(backend(log.clone()));

    let ms = Duration::from_millis;
    let mut tasks = vec![tokio::spawn(svc.clone().oneshot(call(1, 0, ms(1000))))];
    settle().await;
    for (class, id) in [(2, 1), (1, 2), (0, 3), (1, 4), (2, 5), (0, 6)] {
        tasks.push(tokio::spawn(svc.clone().oneshot(call(class, id, ms(10)))));
        settle().await;
    }
    assert_eq!(layer.waiting(), 6);
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(*log.started.lock().unwrap(), vec![0, 3, 6, 2, 4, 1, 5]);
    assert_eq!(log.peak.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn max_wait_is_honoured_to_the_tick() {
    let log = Arc::new(Log::default());
    let layer = WaitingRoomLayer::new(room(10, Duration::from_secs(10))).limit(one_at_a_time());
    let svc = layer.layer(backend(log.clone()));
    let _blocker = tokio::spawn(svc.clone().oneshot(call(1, 0, Duration::from_secs(3600))));
    settle().await;
    let waiter = tokio::spawn(svc.clone().oneshot(call(1, 1, Duration::ZERO)));
    settle().await;
    assert_eq!(layer.waiting(), 1);

    tokio::time::advance(Duration::from_secs(10) - Duration::from_nanos(1)).await;
    settle().await;
    assert!(!waiter.is_finished(), "left before max_wait");
    tokio::time::advance(Duration::from_nanos(1)).await;
    settle().await;
    assert!(waiter.is_finished(), "still waiting at max_wait");
    let result = waiter.await.unwrap();
    assert_eq!(reason(&result), Some(Reason::QueueTimeout));
    let hint = result
        .unwrap_err()
        .downcast::<Rejected>()
        .unwrap()
        .retry_after();
    assert!(hint.is_some(), "a timed-out waiter gets a retry hint");
    assert_eq!(layer.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_leaves_at_its_own_deadline_when_that_comes_first() {
    let log = Arc::new(Log::default());
    let layer = WaitingRoomLayer::new(room(10, Duration::from_secs(10)))
        .limit(one_at_a_time())
        .deadline(deadline_fn(|c: &Call| c.deadline));
    let svc = layer.layer(backend(log.clone()));
    let _blocker = tokio::spawn(svc.clone().oneshot(call(1, 0, Duration::from_secs(3600))));
    settle().await;
    let mut hurried = call(1, 1, Duration::ZERO);
    hurried.deadline = Some(Duration::from_secs(3));
    let waiter = tokio::spawn(svc.clone().oneshot(hurried));
    settle().await;
    tokio::time::advance(Duration::from_millis(2999)).await;
    settle().await;
    assert!(!waiter.is_finished());
    tokio::time::advance(Duration::from_millis(1)).await;
    settle().await;
    assert_eq!(reason(&waiter.await.unwrap()), Some(Reason::Deadline));

    // A request whose deadline has already passed is answered at once.
    let mut late = call(1, 2, Duration::ZERO);
    late.deadline = Some(Duration::ZERO);
    let result = svc.clone().oneshot(late).await;
    assert_eq!(reason(&result), Some(Reason::Deadline));
}

#[tokio::test(start_paused = true)]
async fn dropping_a_thousand_waiters_frees_a_thousand_places() {
    let log = Arc::new(Log::default());
    let layer = WaitingRoomLayer::new(room(1000, Duration::from_secs(60))).limit(one_at_a_time());
    let mut svc = layer.layer(backend(log.clone()));
    let _blocker = tokio::spawn(svc.clone().oneshot(call(1, 0, Duration::from_secs(3600))));
    settle().await;

    let mut waiters = Vec::new();
    for id in 1..=1000 {
        svc.ready().await.unwrap();
        waiters.push(svc.call(call(1, id, Duration::ZERO)));
    }
    assert_eq!(layer.waiting(), 1000);
    svc.ready().await.unwrap();
    let full = svc.call(call(1, 1001, Duration::ZERO)).await;
    assert_eq!(reason(&full), Some(Reason::QueueFull));

    drop(waiters);
    assert_eq!(layer.waiting(), 0);
    let mut again = Vec::new();
    for id in 2000..3000 {
        svc.ready().await.unwrap();
        again.push(svc.call(call(1, id, Duration::ZERO)));
    }
    assert_eq!(layer.waiting(), 1000, "every place was freed and reused");
    assert_eq!(
        layer.places_allocated(),
        1000,
        "memory stays at the room's capacity"
    );
}

#[tokio::test(start_paused = true)]
async fn an_urgent_request_at_a_full_room_displaces_the_newest_least_important_waiter() {
    let log = Arc::new(Log::default());
    let layer = WaitingRoomLayer::new(room(2, Duration::from_secs(60)))
        .limit(one_at_a_time())
        .priority(priority_fn(by_class));
    let svc = layer.layer(backend(log.clone()));
    let _blocker = tokio::spawn(svc.clone().oneshot(call(0, 0, Duration::from_secs(3600))));
    settle().await;
    let bulk_old = tokio::spawn(svc.clone().oneshot(call(2, 1, Duration::ZERO)));
    settle().await;
    let bulk_new = tokio::spawn(svc.clone().oneshot(call(2, 2, Duration::ZERO)));
    settle().await;
    // Another bulk request finds the room full: nobody below it.
    let turned_away = svc.clone().oneshot(call(2, 3, Duration::ZERO)).await;
    assert_eq!(reason(&turned_away), Some(Reason::QueueFull));
    // An urgent one takes the newest bulk waiter's place.
    let _urgent = tokio::spawn(svc.clone().oneshot(call(0, 4, Duration::ZERO)));
    settle().await;
    assert!(bulk_new.is_finished());
    assert_eq!(reason(&bulk_new.await.unwrap()), Some(Reason::QueueFull));
    assert!(!bulk_old.is_finished());
    assert_eq!(layer.waiting(), 2);
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_waiters_drain_after_an_outage_without_a_herd() {
    const WAITERS: u32 = 10_000;
    const LIMIT: u32 = 20;
    let log = Arc::new(Log::default());
    let layer = WaitingRoomLayer::new(room(WAITERS, Duration::from_secs(600)))
        .breaker(BreakerPolicy {
            window: WindowPolicy::Count { size: 10 },
            minimum_calls: 5,
            open_for: Duration::from_secs(5),
            open_backoff: brownout::BackoffPolicy {
                jitter: 0.0,
                ..Default::default()
            },
            ..BreakerPolicy::default()
        })
        .limit(LimitPolicy {
            algorithm: Algorithm::Fixed,
            initial: LIMIT,
            ..LimitPolicy::default()
        });
    let svc = layer.layer(backend(log.clone()));
    let ms = Duration::from_millis;

    // The back end goes down; five failures open the breaker.
    log.down.store(true, Ordering::SeqCst);
    for id in 0..5 {
        let result = svc.clone().oneshot(call(1, id, ms(10))).await;
        assert_eq!(reason(&result), None, "the back end's own error");
    }
    assert_eq!(layer.state(), BreakerState::Open);

    // Ten thousand callers arrive while it is open: all of them wait.
    let mut tasks = Vec::new();
    for id in 0..WAITERS {
        tasks.push(tokio::spawn(svc.clone().oneshot(call(1, 100 + id, ms(50)))));
    }
    // The scheduler polls a batch of tasks per yield: yield until all of
    // them have arrived (bounded, without moving time).
    for _ in 0..WAITERS {
        if layer.waiting() == WAITERS as usize {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(layer.waiting(), WAITERS as usize);
    assert_eq!(log.inflight.load(Ordering::SeqCst), 0);

    // The back end returns before the next probe.
    log.down.store(false, Ordering::SeqCst);
    let started_before = log.started.lock().unwrap().len();
    let mut served = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => served += 1,
            Err(err) => panic!("a waiter was not served: {err}"),
        }
    }
    assert_eq!(served, WAITERS);
    assert_eq!(
        log.started.lock().unwrap().len() - started_before,
        WAITERS as usize
    );
    let peak = log.peak.load(Ordering::SeqCst);
    assert!(
        peak <= LIMIT,
        "peak in-flight {peak} above the limit {LIMIT}"
    );
    // The waiters are of the middle class, which may use 90% of the limit
    // (the default reserve keeps the rest for urgent calls).
    assert_eq!(
        peak,
        LIMIT * 9 / 10,
        "the drain used the middle class's share"
    );
    assert_eq!(layer.state(), BreakerState::Closed);
}
