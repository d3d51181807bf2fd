//! Heap allocations per request, counted by a global allocator.
//!
//! The design's hot-path contract: an admitted call through a closed
//! breaker allocates nothing, and the fast-fail of an open breaker allocates
//! only the box of its `BoxError`.
//!
//! The count is per thread (a const thread-local `Cell`, which itself never
//! allocates), so the test harness's other threads and brownout's coarse
//! clock thread do not disturb it. Every service is driven by hand on the
//! test's own thread: `poll_ready` and `call`, then one poll of the response
//! future with a no-op waker (every inner future here is ready at once), so
//! no runtime allocates or wakes anything in between.

mod support;

use std::fmt;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use brownout::{
    BackoffPolicy, BreakerPolicy, BreakerState, CircuitBreakerLayer, Mode, Reason, Rejected,
    WindowPolicy,
};
use tower::{BoxError, Layer, Service};

use support::alloc::{Counting, allocations_in};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Warm-up calls before counting (first-use initialisation is not per call).
const WARM_UP: u64 = 1_000;
/// Calls counted.
const CALLS: u64 = 1_000;

/// One request as tower drives it: `poll_ready`, `call`, then the response
/// future polled once; every service here answers at once.
fn call_now<S: Service<u64>>(svc: &mut S, req: u64) -> Result<S::Response, S::Error> {
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(_)) => panic!("poll_ready failed"),
        Poll::Pending => panic!("poll_ready is pending"),
    }
    let mut response = pin!(svc.call(black_box(req)));
    match response.as_mut().poll(&mut cx) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("the response future is pending"),
    }
}

/// The back end's error: a zero-sized type, so turning it into a `BoxError`
/// does not allocate either (a `Box` of a zero-sized value never does).
#[derive(Debug)]
struct Down;

impl fmt::Display for Down {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("back end down")
    }
}

impl std::error::Error for Down {}

/// A back end that answers its request, and fails the requests `fails`
/// picks. Its future never allocates.
fn back_end(
    fails: fn(u64) -> bool,
) -> impl Service<u64, Response = u64, Error = Down> + Clone + Send + 'static {
    tower::service_fn(move |x: u64| async move { if fails(x) { Err(Down) } else { Ok(x) } })
}

fn never(_: u64) -> bool {
    false
}

fn always(_: u64) -> bool {
    true
}

/// One call in four fails: 25%, under the default 50% failure rate, so the
/// breaker stays closed while its failure branch (window totals, the trip
/// check) runs.
fn one_in_four(x: u64) -> bool {
    x % 4 == 0
}

#[test]
fn the_counter_sees_a_box_and_an_arc() {
    // Without this the other tests could pass with a counter that counts
    // nothing.
    assert_eq!(allocations_in(|| drop(black_box(Box::new(7_u64)))), 1);
    assert_eq!(allocations_in(|| drop(black_box(Arc::new(7_u64)))), 1);
    assert_eq!(allocations_in(|| drop(black_box(Box::new(())))), 0);
}

#[test]
fn admitted_calls_through_a_closed_breaker_do_not_allocate() {
    let policies = [
        (
            "default (count window, slow-call detection on)",
            BreakerPolicy::default(),
        ),
        (
            "time window",
            BreakerPolicy {
                window: WindowPolicy::Time {
                    size: Duration::from_secs(30),
                    buckets: 10,
                },
                ..BreakerPolicy::default()
            },
        ),
        (
            "shadow mode",
            BreakerPolicy {
                mode: Mode::Shadow,
                ..BreakerPolicy::default()
            },
        ),
        (
            "forced closed",
            BreakerPolicy {
                mode: Mode::ForcedClosed,
                ..BreakerPolicy::default()
            },
        ),
    ];
    for (name, policy) in policies {
        for (back_end_name, fails) in [
            ("healthy", never as fn(u64) -> bool),
            ("25% failing", one_in_four),
        ] {
            // Building the layer starts the coarse clock's thread (once per
            // process): outside the counted section.
            let layer = CircuitBreakerLayer::new(policy.clone());
            count_admitted(name, back_end_name, fails, layer.layer(back_end(fails)));
            let state = layer.state();
            assert!(
                matches!(state, BreakerState::Closed | BreakerState::ForcedClosed),
                "{name}, {back_end_name}: every call must have been admitted, the breaker is {state:?}"
            );
        }
    }
}

/// Sends rejected calls and checks each is the breaker's `Open` rejection.
fn reject_all<S>(svc: &mut S, range: std::ops::Range<u64>)
where
    S: Service<u64, Error = BoxError>,
{
    for i in range {
        let Err(err) = call_now(svc, i) else {
            panic!("call {i} was admitted by an open breaker");
        };
        let rejected = err
            .downcast_ref::<Rejected>()
            .expect("an open breaker answers with `Rejected`");
        assert_eq!(rejected.reason(), Reason::Open);
    }
}

/// The one allocation of a fast-fail: the breaker's response future answers
/// `Err(BoxError)`, and `BoxError` is `Box<dyn Error + Send + Sync>`, so the
/// `Rejected` (a reason and an optional retry hint, not zero-sized) is moved
/// into a new box. Nothing else on the rejection path allocates: no metric
/// key, no message string, no `Arc`.
const ALLOCATIONS_PER_REJECTION: u64 = 1;

#[test]
fn forced_open_fast_fail_allocates_only_the_boxed_rejection() {
    let layer = CircuitBreakerLayer::new(BreakerPolicy {
        mode: Mode::ForcedOpen,
        ..BreakerPolicy::default()
    });
    assert_eq!(layer.state(), BreakerState::ForcedOpen);
    let mut svc = layer.layer(back_end(never));
    reject_all(&mut svc, 0..WARM_UP);
    let allocations = allocations_in(|| reject_all(&mut svc, WARM_UP..WARM_UP + CALLS));
    assert_eq!(
        allocations,
        ALLOCATIONS_PER_REJECTION * CALLS,
        "{allocations} allocations in {CALLS} rejections: expected exactly the box of each `BoxError`"
    );
}

#[test]
fn tripped_open_fast_fail_allocates_only_the_boxed_rejection() {
    let hour = Duration::from_secs(3600);
    let policy = BreakerPolicy {
        open_for: hour,
        open_backoff: BackoffPolicy {
            max: hour,
            ..BackoffPolicy::default()
        },
        ..BreakerPolicy::default()
    };
    let minimum_calls = u64::from(policy.minimum_calls);
    let layer = CircuitBreakerLayer::new(policy);
    // Real failures open the breaker (the layer's services share it) ...
    let mut failing = layer.layer(back_end(always));
    for i in 0..minimum_calls {
        let err = call_now(&mut failing, i).expect_err("the back end is down");
        assert!(err.downcast_ref::<Down>().is_some(), "{err}");
    }
    assert_eq!(layer.state(), BreakerState::Open);
    // ... and an hour-long open period covers the test, whatever the clock.
    let mut svc = layer.layer(back_end(never));
    reject_all(&mut svc, 0..WARM_UP);
    let allocations = allocations_in(|| reject_all(&mut svc, WARM_UP..WARM_UP + CALLS));
    assert_eq!(
        allocations,
        ALLOCATIONS_PER_REJECTION * CALLS,
        "{allocations} allocations in {CALLS} rejections: expected exactly the box of each `BoxError`"
    );
    let Err(err) = call_now(&mut svc, 0) else {
        panic!("admitted")
    };
    let retry_after = err
        .downcast_ref::<Rejected>()
        .and_then(Rejected::retry_after);
    assert!(
        retry_after.is_some_and(|d| d > Duration::ZERO && d <= hour),
        "a tripped breaker knows when it probes: {retry_after:?}"
    );
}

/// The admitted path of every other layer: the adaptive limit, the empty
/// waiting room in front of a breaker and a limit, and the composed stack
/// (route lookup, breaker, limit, empty room, a maintenance window ahead),
/// with healthy and partly failing back ends.
#[test]
fn admitted_calls_through_the_limit_the_room_and_the_stack_do_not_allocate() {
    use brownout::policy::MaintenanceWindow;
    use brownout::{AdaptiveLimitLayer, BrownoutLayer, LimitPolicy, Policy, WaitingRoomLayer};

    let roomy = LimitPolicy {
        initial: 1000,
        max: 1000,
        ..LimitPolicy::default()
    };
    let mut stack_policy = Policy {
        limit: roomy.clone(),
        ..Policy::default()
    };
    // A window far ahead: the admitted path checks it and goes on.
    let ahead = std::time::SystemTime::now() + Duration::from_secs(86_400 * 365);
    stack_policy.maintenance = vec![MaintenanceWindow::new(
        ahead,
        ahead + Duration::from_secs(3600),
    )];

    for (back_end_name, fails) in [
        ("healthy", never as fn(u64) -> bool),
        ("25% failing", one_in_four),
    ] {
        let limit = AdaptiveLimitLayer::new(roomy.clone()).layer(back_end(fails));
        let room = WaitingRoomLayer::new(Default::default())
            .breaker(BreakerPolicy::default())
            .limit(roomy.clone())
            .layer(back_end(fails));
        let stack = BrownoutLayer::from_policy(&stack_policy).layer(back_end(fails));
        count_admitted("adaptive limit", back_end_name, fails, limit);
        count_admitted("empty waiting room", back_end_name, fails, room);
        count_admitted("composed stack", back_end_name, fails, stack);
    }
}

/// Sends `WARM_UP` calls, then counts the allocations of `CALLS` more, each
/// admitted (answered by the back end, or failed by it when `fails` says).
fn count_admitted<S>(name: &str, back_end_name: &str, fails: fn(u64) -> bool, mut svc: S)
where
    S: Service<u64, Response = u64, Error = tower::BoxError>,
{
    let mut run = |range: std::ops::Range<u64>| {
        for i in range {
            match call_now(&mut svc, i) {
                Ok(answer) => assert_eq!(answer, i),
                Err(err) => {
                    assert!(fails(i), "{name}, {back_end_name}: call {i} failed: {err}");
                    assert!(err.downcast_ref::<Down>().is_some(), "{name}: {err}");
                }
            }
        }
    };
    run(0..WARM_UP);
    let allocations = allocations_in(|| run(WARM_UP..WARM_UP + CALLS));
    assert_eq!(
        allocations, 0,
        "{name}, {back_end_name} back end: {allocations} allocations in {CALLS} admitted calls"
    );
}

/// The composed stack sharing its breakers with a fleet (feature `fleet`,
/// a policy with `[fleet]`): the admitted path is the same, and Redis is
/// only read and written by the stack's background task, on the runtime's
/// own threads. Redis here is a port nobody listens on: the task fails in
/// the background, which the admitted path must not feel either.
#[cfg(all(feature = "fleet", feature = "toml"))]
#[test]
fn admitted_calls_through_a_stack_that_shares_its_breakers_do_not_allocate() {
    use brownout::{BrownoutLayer, Policy};

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let _inside = runtime.enter();
    let policy = Policy::from_toml(
        "[limit]\ninitial = 1000\nmax = 1000\n\n[fleet]\nurl = \"redis://127.0.0.1:1/\"\nshared_timeout = \"5ms\"\n",
    )
    .expect("the policy");
    for (back_end_name, fails) in [
        ("healthy", never as fn(u64) -> bool),
        ("25% failing", one_in_four),
    ] {
        let stack = BrownoutLayer::try_from_policy(&policy)
            .expect("the stack builds inside a runtime")
            .layer(back_end(fails));
        count_admitted("fleet-sharing stack", back_end_name, fails, stack);
    }
}
