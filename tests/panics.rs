//! Panics in user code: a priority closure, a back end (in `call` or in
//! its future), a classifier closure and a fallback (its closure or its
//! future) that panic take nothing with them. After each panic, caught
//! with `tokio::spawn` and `JoinError::is_panic`, the stack holds no
//! in-flight slot, no probe slot and no waiter (its whole limit is
//! admitted again, exactly: one call more waits), and later requests are
//! served. Virtual time throughout.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use brownout::classify::{Outcome, classify_fn};
use brownout::fallback::fallback_fn;
use brownout::priority::{Classes, priority_fn};
use brownout::{BreakerState, BrownoutLayer, Policy, Reason, Rejected};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::{Layer, ServiceExt};

/// Where a request's user code panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The priority closure, in `Service::call`, before admission.
    Priority,
    /// The back end's `call`, with the permit taken.
    BackendCall,
    /// The back end's future, while it runs.
    BackendFuture,
    /// The classifier closure, given the back end's answer.
    Classifier,
    /// The fallback closure, given a rejection.
    Fallback,
    /// The fallback's future, when polled.
    FallbackFuture,
}

#[derive(Debug, Default)]
struct Req {
    panic_at: Option<Stage>,
    /// The back end answers once this fires (or its sender is dropped).
    hold: Option<oneshot::Receiver<()>>,
    /// The back end answers with a failure.
    fail: bool,
}

fn req(panic_at: Option<Stage>) -> Req {
    Req {
        panic_at,
        ..Req::default()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Resp {
    /// The back end answered; the classifier panics on it if asked, and
    /// calls it a failure if it says so.
    Served {
        panic_classifier: bool,
        failed: bool,
    },
    /// The fallback answered this rejection.
    Fallback(Reason),
}

const SERVED: Resp = Resp::Served {
    panic_classifier: false,
    failed: false,
};

const DELIBERATE: &str = "deliberate panic in user code";

/// Keeps the deliberate panics out of the test output (other panics, such
/// as failed assertions, are printed as usual).
fn quiet_deliberate_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied());
            let deliberate = message.is_some_and(|message| message.contains(DELIBERATE));
            if !deliberate {
                default(info);
            }
        }));
    });
}

fn boom(stage: Stage) -> ! {
    panic!("{DELIBERATE}: {stage:?}")
}

/// A limit of exactly two, a room of four with a wait of 1 s, and a
/// breaker that opens on 4 calls at >= 50% failures for exactly 5 s, then
/// sends one probe.
const POLICY: &str = r#"
    [breaker]
    window = { kind = "count", size = 4 }
    minimum_calls = 4
    failure_rate = 0.5
    open_for = "5s"
    open_backoff = { jitter = 0.0 }
    half_open_probes = 1
    [limit]
    algorithm = "fixed"
    initial = 2
    [waiting_room]
    capacity = 4
    max_wait = "1s"
"#;

const LIMIT: usize = 2;

/// The stack under test, with every piece of user code able to panic, and
/// a count of the held requests that reached the back end.
struct Stack {
    layer: BrownoutLayer,
    svc: Box<dyn Fn() -> Svc>,
    entered: Arc<AtomicUsize>,
}

type Svc = tower::util::BoxCloneService<Req, Resp, Infallible>;

fn stack() -> Stack {
    quiet_deliberate_panics();
    let policy = Policy::from_toml(POLICY).expect("the test policy loads");
    let layer = BrownoutLayer::from_policy(&policy);
    let entered = Arc::new(AtomicUsize::new(0));
    let backend = {
        let entered = entered.clone();
        tower::service_fn(move |req: Req| {
            if req.panic_at == Some(Stage::BackendCall) {
                boom(Stage::BackendCall);
            }
            let entered = entered.clone();
            async move {
                if let Some(hold) = req.hold {
                    entered.fetch_add(1, SeqCst);
                    let _ = hold.await;
                }
                if req.panic_at == Some(Stage::BackendFuture) {
                    boom(Stage::BackendFuture);
                }
                Ok::<_, Infallible>(Resp::Served {
                    panic_classifier: req.panic_at == Some(Stage::Classifier),
                    failed: req.fail,
                })
            }
        })
    };
    let full = layer
        .clone()
        .priority(priority_fn(|req: &Req, classes: &Classes| {
            if req.panic_at == Some(Stage::Priority) {
                boom(Stage::Priority);
            }
            classes.default_priority()
        }))
        .classify(classify_fn(
            |result: &Result<Resp, Infallible>| match result {
                Ok(Resp::Served {
                    panic_classifier: true,
                    ..
                }) => boom(Stage::Classifier),
                Ok(Resp::Served { failed: true, .. }) => Outcome::Failure,
                _ => Outcome::Success,
            },
        ))
        .fallback(fallback_fn(|rejected: Rejected, req: Option<Req>| {
            let panic_at = req.and_then(|req| req.panic_at);
            if panic_at == Some(Stage::Fallback) {
                boom(Stage::Fallback);
            }
            async move {
                if panic_at == Some(Stage::FallbackFuture) {
                    boom(Stage::FallbackFuture);
                }
                Resp::Fallback(rejected.reason())
            }
        }));
    let service = full.layer(backend);
    Stack {
        layer,
        svc: Box::new(move || tower::util::BoxCloneService::new(service.clone())),
        entered,
    }
}

impl Stack {
    fn send(&self, req: Req) -> JoinHandle<Resp> {
        let svc = (self.svc)();
        tokio::spawn(async move {
            svc.oneshot(req)
                .await
                .unwrap_or_else(|never| match never {})
        })
    }

    /// Sends a request that the back end holds until the returned sender
    /// fires (or is dropped).
    fn send_held(&self, panic_at: Option<Stage>) -> (oneshot::Sender<()>, JoinHandle<Resp>) {
        let (release, hold) = oneshot::channel();
        let handle = self.send(Req {
            panic_at,
            hold: Some(hold),
            fail: false,
        });
        (release, handle)
    }

    fn waiting(&self) -> usize {
        self.layer.waiting("default")
    }

    /// Sends `LIMIT + 1` calls that the back end holds: how many reach
    /// it at once, and how many wait meanwhile. Then lets them all finish,
    /// served.
    async fn admitted_at_once(&self) -> (usize, usize) {
        let before = self.entered.load(SeqCst);
        let held: Vec<_> = (0..=LIMIT).map(|_| self.send_held(None)).collect();
        settle().await;
        let seen = (self.entered.load(SeqCst) - before, self.waiting());
        for (release, handle) in held {
            release.send(()).unwrap();
            assert_eq!(handle.await.expect("no panic"), SERVED);
        }
        seen
    }

    /// Nothing is held: exactly `LIMIT` calls are admitted at once (a
    /// leaked slot would admit fewer, a slot counted twice more), the next
    /// one waits, nothing else waits, all are served, the breaker is
    /// closed, and the room is empty again.
    async fn assert_idle(&self) {
        assert_eq!(self.waiting(), 0, "the room is empty");
        assert_eq!(self.admitted_at_once().await, (LIMIT, 1));
        assert_eq!(self.waiting(), 0);
        assert_eq!(self.layer.state("default"), Some(BreakerState::Closed));
    }
}

/// Lets every spawned task run until it blocks, without moving time.
async fn settle() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

async fn assert_panicked(handle: JoinHandle<Resp>) {
    let err = handle.await.expect_err("the request's task panicked");
    assert!(err.is_panic(), "{err}");
}

/// The slots are held by `LIMIT` calls; the returned requests must wait
/// in the room.
async fn fill(stack: &Stack) -> Vec<(oneshot::Sender<()>, JoinHandle<Resp>)> {
    let held: Vec<_> = (0..LIMIT).map(|_| stack.send_held(None)).collect();
    settle().await;
    held
}

async fn release(held: Vec<(oneshot::Sender<()>, JoinHandle<Resp>)>) {
    for (release, handle) in held {
        release.send(()).unwrap();
        assert_eq!(handle.await.expect("no panic"), SERVED);
    }
}

/// Sanity: the check sees a held slot (one fewer admitted at once, one
/// more waiting), so it can tell a leak.
#[tokio::test(start_paused = true)]
async fn the_idle_check_sees_a_held_slot() {
    let stack = stack();
    stack.assert_idle().await;
    let (release, held) = stack.send_held(None);
    settle().await;
    assert_eq!(stack.admitted_at_once().await, (LIMIT - 1, 2));
    release.send(()).unwrap();
    assert_eq!(held.await.unwrap(), SERVED);
    stack.assert_idle().await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_priority_closure_takes_nothing() {
    let stack = stack();
    assert_panicked(stack.send(req(Some(Stage::Priority)))).await;
    stack.assert_idle().await;
    // Also while others wait.
    let held = fill(&stack).await;
    let waiter = stack.send(req(None));
    assert_panicked(stack.send(req(Some(Stage::Priority)))).await;
    assert_eq!(stack.waiting(), 1);
    release(held).await;
    assert_eq!(waiter.await.unwrap(), SERVED);
    stack.assert_idle().await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_back_end_gives_its_permit_back() {
    for stage in [Stage::BackendCall, Stage::BackendFuture] {
        let stack = stack();
        // Admitted at once.
        assert_panicked(stack.send(req(Some(stage)))).await;
        stack.assert_idle().await;
        // Admitted after a wait in the room.
        let held = fill(&stack).await;
        let waiter = stack.send(req(Some(stage)));
        settle().await;
        assert_eq!(stack.waiting(), 1);
        release(held).await;
        assert_panicked(waiter).await;
        stack.assert_idle().await;
        // Many times over: the breaker does not count a panic as a sample
        // (it is a cancellation), and nothing piles up.
        for _ in 0..20 {
            assert_panicked(stack.send(req(Some(stage)))).await;
        }
        stack.assert_idle().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_classifier_gives_its_permit_back() {
    let stack = stack();
    assert_panicked(stack.send(req(Some(Stage::Classifier)))).await;
    stack.assert_idle().await;
    let held = fill(&stack).await;
    let waiter = stack.send(req(Some(Stage::Classifier)));
    settle().await;
    assert_eq!(stack.waiting(), 1);
    release(held).await;
    assert_panicked(waiter).await;
    for _ in 0..20 {
        assert_panicked(stack.send(req(Some(Stage::Classifier)))).await;
    }
    stack.assert_idle().await;
}

#[tokio::test(start_paused = true)]
async fn a_panicking_fallback_leaves_nothing_behind() {
    for stage in [Stage::Fallback, Stage::FallbackFuture] {
        let stack = stack();
        let held = fill(&stack).await;
        // Rejected at once: the room is full (four wait already).
        let waiters: Vec<_> = (0..4).map(|_| stack.send(req(None))).collect();
        settle().await;
        assert_eq!(stack.waiting(), 4);
        assert_panicked(stack.send(req(Some(stage)))).await;
        assert_eq!(stack.waiting(), 4);
        // Rejected after a wait: the wait runs out while the slots are
        // held. The four others time out too, and get their answer.
        let late = {
            // Make room for it: one waiter gives up (dropped).
            waiters[3].abort();
            settle().await;
            assert_eq!(stack.waiting(), 3);
            stack.send(req(Some(stage)))
        };
        settle().await;
        assert_eq!(stack.waiting(), 4);
        tokio::time::sleep(Duration::from_millis(1_001)).await;
        assert_panicked(late).await;
        assert_eq!(stack.waiting(), 0);
        for waiter in waiters.into_iter().take(3) {
            assert_eq!(waiter.await.unwrap(), Resp::Fallback(Reason::QueueTimeout));
        }
        release(held).await;
        stack.assert_idle().await;
    }
}

/// A half-open breaker's only probe panics (in each place a call can):
/// its probe slot comes back, so the next call probes, and its success
/// closes the breaker.
#[tokio::test(start_paused = true)]
async fn a_panicking_probe_gives_its_probe_slot_back() {
    for stage in [Stage::BackendCall, Stage::BackendFuture, Stage::Classifier] {
        let stack = stack();
        open_breaker(&stack).await;
        assert_eq!(stack.layer.state("default"), Some(BreakerState::Open));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(stack.layer.state("default"), Some(BreakerState::HalfOpen));
        assert_panicked(stack.send(req(Some(stage)))).await;
        // The slot is free again: the next call is the probe, and closes it.
        assert_eq!(stack.send(req(None)).await.unwrap(), SERVED);
        assert_eq!(stack.layer.state("default"), Some(BreakerState::Closed));
        stack.assert_idle().await;
    }
}

/// Opens the breaker of `stack` with four failed calls.
async fn open_breaker(stack: &Stack) {
    for _ in 0..4 {
        let failing = Req {
            fail: true,
            ..Req::default()
        };
        assert_eq!(
            stack.send(failing).await.unwrap(),
            Resp::Served {
                panic_classifier: false,
                failed: true
            }
        );
    }
}

/// Every request has one outcome in `brownout_requests_total`, also when
/// user code panics as it leaves the waiting room: granted after a wait,
/// its back end's `call` panics (one `cancelled`); its wait runs out and
/// its fallback panics (one `rejected`, reason `queue_timeout`). Counted
/// through metrics-util's `DebuggingRecorder`, local to this thread.
#[tokio::test(start_paused = true)]
async fn a_panic_on_the_way_out_of_the_room_counts_the_request_once() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let stack = stack();

    let held = fill(&stack).await;
    let granted = stack.send(req(Some(Stage::BackendCall)));
    settle().await;
    assert_eq!(stack.waiting(), 1);
    release(held).await;
    assert_panicked(granted).await;

    let held = fill(&stack).await;
    let timed_out = stack.send(req(Some(Stage::Fallback)));
    settle().await;
    assert_eq!(stack.waiting(), 1);
    tokio::time::sleep(Duration::from_millis(1_001)).await;
    assert_panicked(timed_out).await;
    release(held).await;

    let mut outcomes = std::collections::BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        if key.name() != brownout::metrics::REQUESTS_TOTAL {
            continue;
        }
        let label = |name: &str| {
            key.labels()
                .find(|label| label.key() == name)
                .map(|label| label.value().to_owned())
                .unwrap_or_default()
        };
        if let DebugValue::Counter(n) = value {
            if n > 0 {
                outcomes.insert(format!("{}/{}", label("outcome"), label("reason")), n);
            }
        }
    }
    let expected: std::collections::BTreeMap<String, u64> = [
        ("served/none".to_owned(), 4),
        ("cancelled/none".to_owned(), 1),
        ("rejected/queue_timeout".to_owned(), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(outcomes, expected, "six requests, six outcomes");
}
