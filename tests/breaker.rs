//! The circuit breaker against its specification (the crate docs, the
//! breaker module and docs/architecture.md), in paused tokio time.
//!
//! Every test builds its layer after tokio's time is paused, so the breaker
//! reads virtual time and every duration below is exact.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use brownout::{
    BackoffPolicy, BreakerPolicy, BreakerState, CircuitBreaker, CircuitBreakerLayer, Mode, Reason,
    Rejected, Trip, WindowPolicy,
};
use tokio::sync::oneshot;
use tokio::time::advance;
use tower::{BoxError, Layer, Service, ServiceExt};

// ---- a back end the tests steer ------------------------------------------

/// What the back end does with a call.
#[derive(Debug)]
enum Req {
    /// Answers `Ok` at once.
    Ok,
    /// Answers `Err` at once.
    Fail,
    /// Answers after this much virtual time; `true` = `Ok`.
    Sleep(Duration, bool),
    /// Answers when the test says so over the channel (`true` = `Ok`).
    Wait(oneshot::Receiver<bool>),
    /// Never answers.
    Never,
}

type BackendFuture = Pin<Box<dyn Future<Output = Result<&'static str, io::Error>> + Send>>;

/// A back end that counts the calls that reach it.
#[derive(Debug, Clone, Default)]
struct Backend {
    calls: Arc<AtomicUsize>,
}

impl Service<Req> for Backend {
    type Response = &'static str;
    type Error = io::Error;
    type Future = BackendFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> BackendFuture {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let ok = match req {
                Req::Ok => true,
                Req::Fail => false,
                Req::Sleep(d, ok) => {
                    tokio::time::sleep(d).await;
                    ok
                }
                Req::Wait(rx) => rx.await.unwrap_or(false),
                Req::Never => std::future::pending().await,
            };
            if ok {
                Ok("served")
            } else {
                Err(io::Error::other("back end failed"))
            }
        })
    }
}

type Svc = CircuitBreaker<Backend>;
type Fut = <Svc as Service<Req>>::Future;

/// A policy whose numbers are easy to follow: a count window of 10,
/// verdicts from 4 calls, open at 50% failures (the classic breaker, whose
/// open / probe / close machine these tests follow; slow calls alone never
/// trip), open 10 s doubling up to 80 s, no jitter, 2 probes.
fn policy() -> BreakerPolicy {
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
        mode: Mode::Enforce,
        probe_after: 0,
    }
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// Polls once with a waker that does nothing.
fn poll_once(fut: &mut Fut) -> Poll<Result<&'static str, BoxError>> {
    Pin::new(fut).poll(&mut Context::from_waker(Waker::noop()))
}

struct Harness {
    layer: CircuitBreakerLayer,
    svc: Svc,
    backend: Backend,
}

impl Harness {
    fn new(policy: BreakerPolicy) -> Self {
        let layer = CircuitBreakerLayer::new(policy);
        let backend = Backend::default();
        let svc = layer.layer(backend.clone());
        Self {
            layer,
            svc,
            backend,
        }
    }

    /// Calls that reached the back end so far.
    fn reached(&self) -> usize {
        self.backend.calls.load(Ordering::SeqCst)
    }

    fn state(&self) -> BreakerState {
        self.svc.state()
    }

    async fn send(&mut self, req: Req) -> Result<&'static str, BoxError> {
        self.svc.ready().await.expect("poll_ready").call(req).await
    }

    /// A call the back end answers with `Ok`; it must be served.
    async fn ok(&mut self) {
        let before = self.reached();
        let result = self.send(Req::Ok).await;
        assert_eq!(result.ok(), Some("served"), "expected a served call");
        assert_eq!(self.reached(), before + 1);
    }

    /// A call the back end fails; the back end's own error must come back.
    async fn fail(&mut self) {
        self.expect_inner_error(Req::Fail).await;
    }

    async fn expect_inner_error(&mut self, req: Req) {
        let before = self.reached();
        let err = self
            .send(req)
            .await
            .expect_err("expected the back end's error");
        assert!(
            err.downcast_ref::<Rejected>().is_none(),
            "expected the back end's error, got a rejection: {err}"
        );
        assert!(err.downcast_ref::<io::Error>().is_some(), "{err}");
        assert_eq!(self.reached(), before + 1);
    }

    /// A call that must be rejected without reaching the back end.
    async fn rejected(&mut self) -> Rejected {
        let before = self.reached();
        let err = self.send(Req::Ok).await.expect_err("expected a rejection");
        assert_eq!(
            self.reached(),
            before,
            "a rejected call reached the back end"
        );
        err.downcast_ref::<Rejected>()
            .unwrap_or_else(|| panic!("expected brownout::Rejected, got {err}"))
            .clone()
    }

    /// A call that must be rejected as open, with this retry hint.
    async fn rejected_open(&mut self, retry_after: Duration) {
        let rejected = self.rejected().await;
        assert_eq!(rejected.reason(), Reason::Open);
        assert_eq!(rejected.retry_after(), Some(retry_after));
    }

    /// Starts a call and leaves it in flight; it must have been admitted.
    fn start(&mut self, req: Req) -> Fut {
        let before = self.reached();
        let mut fut = self.svc.call(req);
        assert!(
            poll_once(&mut fut).is_pending(),
            "expected an admitted call"
        );
        assert_eq!(self.reached(), before + 1);
        fut
    }

    /// Starts a call the test answers later over the returned channel.
    fn start_waiting(&mut self) -> (oneshot::Sender<bool>, Fut) {
        let (tx, rx) = oneshot::channel();
        (tx, self.start(Req::Wait(rx)))
    }

    /// Fails calls until the breaker opens (a setup step; the tests of the
    /// trip itself count their calls).
    async fn trip(&mut self) {
        for _ in 0..10 {
            if self.state() != BreakerState::Closed {
                break;
            }
            self.fail().await;
        }
        assert_eq!(self.state(), BreakerState::Open);
    }
}

/// Answers a call started with [`Harness::start_waiting`] and returns its
/// result.
fn answer((tx, mut fut): (oneshot::Sender<bool>, Fut), ok: bool) -> Result<&'static str, BoxError> {
    tx.send(ok).expect("the call is still waiting");
    match poll_once(&mut fut) {
        Poll::Ready(result) => result,
        Poll::Pending => panic!("an answered call must complete"),
    }
}

// ---- closed → open --------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn opens_when_the_failure_rate_is_reached() {
    let mut h = Harness::new(policy());
    h.ok().await;
    h.ok().await;
    h.ok().await;
    h.fail().await; // 1/4
    h.fail().await; // 2/5
    assert_eq!(h.state(), BreakerState::Closed);
    h.fail().await; // 3/6 = 50%: trips
    assert_eq!(h.state(), BreakerState::Open);
    h.rejected_open(secs(10)).await;
}

#[tokio::test(start_paused = true)]
async fn opens_when_the_slow_call_rate_is_reached() {
    let mut h = Harness::new(BreakerPolicy {
        failure_rate: 1.0,
        slow_call_rate: 0.5,
        ..policy()
    });
    // Just under the threshold is not slow.
    h.send(Req::Sleep(ms(999), true)).await.unwrap();
    h.send(Req::Sleep(ms(999), true)).await.unwrap();
    h.ok().await;
    // Exactly the threshold is slow: 1/4, then 2/5.
    h.send(Req::Sleep(secs(1), true)).await.unwrap();
    h.send(Req::Sleep(secs(1), true)).await.unwrap();
    assert_eq!(h.state(), BreakerState::Closed);
    // 3/6 slow: trips, although every call succeeded.
    h.send(Req::Sleep(secs(3), true)).await.unwrap();
    assert_eq!(h.state(), BreakerState::Open);
    // The trip happened when the slow call ended: the full period is left.
    h.rejected_open(secs(10)).await;
}

#[tokio::test(start_paused = true)]
async fn a_slow_failure_is_also_a_slow_call() {
    // Failures alone never trip here (100% needed); slow calls at 50%.
    let mut h = Harness::new(BreakerPolicy {
        failure_rate: 1.0,
        slow_call_rate: 0.5,
        ..policy()
    });
    h.ok().await;
    h.ok().await;
    h.expect_inner_error(Req::Sleep(secs(2), false)).await;
    assert_eq!(h.state(), BreakerState::Closed);
    h.expect_inner_error(Req::Sleep(secs(2), false)).await; // 2/4 slow
    assert_eq!(h.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn no_verdict_before_minimum_calls() {
    let mut h = Harness::new(BreakerPolicy {
        minimum_calls: 5,
        ..policy()
    });
    for _ in 0..4 {
        h.fail().await;
    }
    assert_eq!(h.state(), BreakerState::Closed, "4 calls < minimum_calls 5");
    h.fail().await;
    assert_eq!(h.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn the_call_that_reaches_minimum_calls_can_trip_even_if_it_succeeded() {
    // 3 failures, then a success: the window holds 4 calls, 75% failed.
    let mut h = Harness::new(policy());
    h.fail().await;
    h.fail().await;
    h.fail().await;
    assert_eq!(h.state(), BreakerState::Closed);
    h.ok().await;
    assert_eq!(h.state(), BreakerState::Open);
    h.rejected_open(secs(10)).await;
}

#[tokio::test(start_paused = true)]
async fn the_count_window_slides_over_the_last_n_calls() {
    let window = |failure_rate| BreakerPolicy {
        window: WindowPolicy::Count { size: 4 },
        minimum_calls: 4,
        failure_rate,
        ..policy()
    };

    // Old failures fall out: with them the last call would make 4 of 8
    // failures in a window of 4 calls.
    let mut h = Harness::new(window(0.75));
    h.fail().await;
    h.fail().await;
    h.ok().await;
    h.ok().await; // 2/4
    h.ok().await;
    h.ok().await; // both failures have left
    h.fail().await;
    h.fail().await; // ok ok fail fail: 2/4
    assert_eq!(h.state(), BreakerState::Closed);
    h.fail().await; // ok fail fail fail: 3/4
    assert_eq!(h.state(), BreakerState::Open);

    // It slides one call at a time (not a tumbling window that starts
    // afresh every 4 calls).
    let mut h = Harness::new(window(0.5));
    for _ in 0..4 {
        h.ok().await;
    }
    h.fail().await; // ok ok ok fail
    assert_eq!(h.state(), BreakerState::Closed);
    h.fail().await; // ok ok fail fail
    assert_eq!(h.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn the_time_window_forgets_buckets_older_than_its_size() {
    // 10 s in 10 buckets of 1 s. A call is remembered for at least
    // size - one bucket and at most size, whatever the bucket alignment.
    let window = BreakerPolicy {
        window: WindowPolicy::Time {
            size: secs(10),
            buckets: 10,
        },
        minimum_calls: 3,
        ..policy()
    };

    // Remembered for size - one bucket: 2 old + 1 new failure trip.
    let mut h = Harness::new(window.clone());
    h.fail().await;
    h.fail().await;
    advance(secs(9)).await;
    h.fail().await;
    assert_eq!(h.state(), BreakerState::Open);

    // Forgotten after size: the new failure is alone, below minimum_calls.
    let mut h = Harness::new(window.clone());
    h.fail().await;
    h.fail().await;
    advance(secs(10)).await;
    h.fail().await;
    h.fail().await;
    assert_eq!(h.state(), BreakerState::Closed);
    h.fail().await;
    assert_eq!(h.state(), BreakerState::Open);

    // Successes are forgotten too: 3 old successes would dilute 2 new
    // failures to 2/6; once forgotten, 2 failures of 3 calls trip.
    let mut h = Harness::new(window);
    h.ok().await;
    h.ok().await;
    h.ok().await;
    advance(secs(10)).await;
    h.fail().await;
    h.ok().await;
    assert_eq!(h.state(), BreakerState::Closed, "1/2 < minimum_calls");
    h.fail().await; // 2/3
    assert_eq!(h.state(), BreakerState::Open);
}

// ---- open ------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn retry_after_is_the_time_left_until_the_next_probe() {
    let mut h = Harness::new(policy());
    h.trip().await;
    h.rejected_open(secs(10)).await;
    advance(secs(3)).await;
    h.rejected_open(secs(7)).await;
    advance(ms(6_999)).await;
    h.rejected_open(ms(1)).await;
    advance(Duration::from_nanos(999_999)).await;
    h.rejected_open(Duration::from_nanos(1)).await;
    assert_eq!(h.state(), BreakerState::Open);
    advance(Duration::from_nanos(1)).await;
    // The period is over: the next call is a probe and reaches the back end.
    h.ok().await;
    assert_eq!(h.state(), BreakerState::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_becomes_half_open_after_open_for() {
    let mut h = Harness::new(policy());
    h.trip().await;
    let reached = h.reached();
    advance(ms(9_999)).await;
    assert_eq!(h.state(), BreakerState::Open);
    h.rejected().await;
    advance(ms(1)).await;
    // After open_for the breaker reads half-open: the next call probes.
    assert_eq!(h.state(), BreakerState::HalfOpen);
    let probe = h.start_waiting();
    assert_eq!(h.reached(), reached + 1);
    assert_eq!(h.state(), BreakerState::HalfOpen);
    drop(probe);
}

#[tokio::test(start_paused = true)]
async fn poll_ready_stays_ready_while_open() {
    let mut h = Harness::new(policy());
    h.trip().await;
    for _ in 0..3 {
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(h.svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
        // The rejection comes from the response future.
        let mut fut = h.svc.call(Req::Ok);
        match poll_once(&mut fut) {
            Poll::Ready(Err(err)) => {
                assert_eq!(
                    err.downcast_ref::<Rejected>().unwrap().reason(),
                    Reason::Open
                )
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }
    assert_eq!(h.reached(), 4);
}

// ---- half-open -------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn half_open_admits_exactly_the_probes() {
    let mut h = Harness::new(BreakerPolicy {
        half_open_probes: 3,
        ..policy()
    });
    h.trip().await;
    advance(secs(10)).await;
    let probes: Vec<_> = (0..3).map(|_| h.start_waiting()).collect();
    for _ in 0..3 {
        let rejected = h.rejected().await;
        assert_eq!(rejected.reason(), Reason::Open);
        assert!(rejected.retry_after().is_some_and(|d| d > Duration::ZERO));
    }
    assert_eq!(h.state(), BreakerState::HalfOpen);
    // A probe that passed does not free a slot: the verdict needs all 3.
    let mut probes = probes.into_iter();
    answer(probes.next().unwrap(), true).unwrap();
    answer(probes.next().unwrap(), true).unwrap();
    assert_eq!(h.state(), BreakerState::HalfOpen);
    h.rejected().await;
    answer(probes.next().unwrap(), true).unwrap();
    assert_eq!(h.state(), BreakerState::Closed);
    h.ok().await;
}

#[tokio::test(start_paused = true)]
async fn passing_probes_close_the_breaker_with_a_clean_window() {
    let mut h = Harness::new(policy());
    h.ok().await;
    h.ok().await;
    h.fail().await;
    h.fail().await; // 2/4: trips
    assert_eq!(h.state(), BreakerState::Open);
    advance(secs(10)).await;
    h.ok().await;
    assert_eq!(h.state(), BreakerState::HalfOpen);
    h.ok().await;
    assert_eq!(h.state(), BreakerState::Closed);
    // With the old window (ok ok fail fail) one failure would make 3/5.
    h.fail().await;
    h.fail().await;
    h.fail().await;
    assert_eq!(h.state(), BreakerState::Closed, "3 calls < minimum_calls");
    h.fail().await;
    assert_eq!(h.state(), BreakerState::Open);
    // A trip soon after the recovery continues the growth: 10 s × 2.
    h.rejected_open(secs(20)).await;
}

#[tokio::test(start_paused = true)]
async fn a_failing_probe_reopens_at_once_with_a_doubled_period_up_to_max() {
    let mut h = Harness::new(BreakerPolicy {
        open_backoff: BackoffPolicy {
            max: secs(35),
            ..policy().open_backoff
        },
        ..policy()
    });
    h.trip().await;
    h.rejected_open(secs(10)).await;
    advance(secs(10)).await;

    // 2 probes, failure_rate 50%: one failed probe settles it, while the
    // other is still out.
    let slow_probe = h.start_waiting();
    h.fail().await;
    assert_eq!(h.state(), BreakerState::Open);
    h.rejected_open(secs(20)).await;
    // The late probe's success changes nothing.
    answer(slow_probe, true).unwrap();
    assert_eq!(h.state(), BreakerState::Open);
    h.rejected_open(secs(20)).await;

    // 40 s capped at 35 s, and 35 s again.
    let mut current = secs(20);
    for expected in [secs(35), secs(35)] {
        advance(current).await;
        h.fail().await; // the first probe fails
        h.rejected_open(expected).await;
        current = expected;
    }
}

#[tokio::test(start_paused = true)]
async fn slow_probes_reopen_the_breaker() {
    let mut h = Harness::new(BreakerPolicy {
        slow_call_rate: 0.5,
        ..policy()
    });
    h.trip().await;
    advance(secs(10)).await;
    h.send(Req::Sleep(ms(999), true)).await.unwrap();
    assert_eq!(h.state(), BreakerState::HalfOpen);
    // 1 slow probe of 2 = 50%: reopens, timed from the slow probe's end.
    h.send(Req::Sleep(ms(1_500), true)).await.unwrap();
    assert_eq!(h.state(), BreakerState::Open);
    h.rejected_open(secs(20)).await;
}

#[tokio::test(start_paused = true)]
async fn the_growth_continues_after_a_short_recovery_and_resets_after_reset_after() {
    // reset_after defaults to max (80 s).
    let mut h = Harness::new(policy());
    h.trip().await; // 10 s
    advance(secs(10)).await;
    h.fail().await; // probe fails: 20 s
    h.rejected_open(secs(20)).await;
    advance(secs(20)).await;
    h.ok().await;
    h.ok().await;
    assert_eq!(h.state(), BreakerState::Closed);

    // Trips again 79.999 s after closing: the growth continues.
    advance(ms(79_999)).await;
    h.trip().await;
    h.rejected_open(secs(40)).await;
    advance(secs(40)).await;
    h.ok().await;
    h.ok().await;
    assert_eq!(h.state(), BreakerState::Closed);

    // Closed for exactly reset_after: starts again at open_for.
    advance(secs(80)).await;
    h.trip().await;
    h.rejected_open(secs(10)).await;
}

#[tokio::test(start_paused = true)]
async fn an_explicit_reset_after_is_honoured() {
    let mut h = Harness::new(BreakerPolicy {
        open_backoff: BackoffPolicy {
            reset_after: Some(secs(30)),
            ..policy().open_backoff
        },
        ..policy()
    });
    h.trip().await;
    advance(secs(10)).await;
    h.ok().await;
    h.ok().await;
    advance(secs(30)).await;
    h.trip().await;
    h.rejected_open(secs(10)).await;
    advance(secs(10)).await;
    h.ok().await;
    h.ok().await;
    advance(ms(29_999)).await;
    h.trip().await;
    h.rejected_open(secs(20)).await;
}

#[tokio::test(start_paused = true)]
async fn jitter_keeps_each_period_within_its_share() {
    let mut seen = Vec::new();
    for seed in 0..16 {
        let mut p = policy();
        p.open_backoff = BackoffPolicy {
            jitter: 0.1,
            max: secs(1_000),
            ..p.open_backoff
        };
        let layer = CircuitBreakerLayer::new(p).seed(seed);
        let backend = Backend::default();
        let mut h = Harness {
            svc: layer.layer(backend.clone()),
            layer,
            backend,
        };
        h.trip().await;
        for base in [10.0, 20.0, 40.0] {
            let period = h.rejected().await.retry_after().unwrap();
            let share = period.as_secs_f64() / base - 1.0;
            assert!(
                share.abs() <= 0.1 + 1e-9,
                "{period:?} is not within 10% of {base} s"
            );
            seen.push(share);
            // The breaker really stays open for that long.
            advance(period - Duration::from_nanos(1)).await;
            h.rejected().await;
            advance(Duration::from_nanos(1)).await;
            h.fail().await; // the probe fails: the next period
        }
    }
    // The jitter moves periods (16 × 3 draws are not all equal).
    let spread = seen.iter().cloned().fold(f64::MIN, f64::max)
        - seen.iter().cloned().fold(f64::MAX, f64::min);
    assert!(spread > 0.05, "periods barely move: {seen:?}");
}

// ---- cancellation ----------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_dropped_probe_gives_its_slot_back() {
    let mut h = Harness::new(policy());
    h.trip().await;
    advance(secs(10)).await;
    let never = h.start(Req::Never);
    let waiting = h.start_waiting();
    h.rejected().await;
    drop(never);
    // The dropped probe's slot goes to the next call.
    let next = h.start_waiting();
    h.rejected().await;
    // It was not a completed probe either: two answers are still needed.
    answer(waiting, true).unwrap();
    assert_eq!(h.state(), BreakerState::HalfOpen);
    answer(next, true).unwrap();
    assert_eq!(h.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_probe_dropped_after_its_back_end_answered_is_no_sample() {
    // The first probe reaches the back end, which would fail it, but its
    // future is dropped before it is polled again: no verdict.
    let mut h = Harness::new(policy());
    h.trip().await;
    advance(secs(10)).await;
    let (tx, fut) = h.start_waiting();
    tx.send(false).unwrap();
    drop(fut);
    assert_eq!(h.state(), BreakerState::HalfOpen);
    h.ok().await;
    h.ok().await;
    assert_eq!(h.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn dropped_closed_calls_are_censored_never_failures() {
    let mut h = Harness::new(policy());
    for _ in 0..3 {
        h.ok().await;
    }
    // Dropped before `slow_call_duration`: no sample at all (as failures,
    // the next failure would make 6 of 9).
    let early: Vec<_> = (0..5).map(|_| h.start(Req::Never)).collect();
    advance(Duration::from_millis(500)).await;
    drop(early);
    h.fail().await;
    assert_eq!(h.state(), BreakerState::Closed, "1 failure of 4 calls");
    // Dropped after it: slow calls ("took at least 5 s"), never failures:
    // 1 failure and 5 slow calls of 9 trip neither rate.
    let late: Vec<_> = (0..5).map(|_| h.start(Req::Never)).collect();
    advance(secs(5)).await;
    drop(late);
    assert_eq!(
        h.state(),
        BreakerState::Closed,
        "as failures, 6 of 9 would trip"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hanging_back_end_opens_the_breaker_though_every_caller_gives_up() {
    let mut h = Harness::new(BreakerPolicy {
        slow_call_rate: 0.5,
        ..policy()
    });
    for n in 0..4 {
        assert_eq!(h.state(), BreakerState::Closed, "call {n}");
        let call = h.start(Req::Never);
        // Each caller gives up after 2 s, past `slow_call_duration` (1 s).
        advance(secs(2)).await;
        drop(call);
    }
    assert_eq!(h.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn an_answer_from_before_the_last_state_change_is_no_sample() {
    let mut h = Harness::new(policy());
    let stale = h.start_waiting();
    h.trip().await;
    advance(secs(10)).await;
    h.ok().await;
    h.ok().await;
    assert_eq!(h.state(), BreakerState::Closed);
    // Admitted before the breaker opened, answered after it closed: the
    // clean window must not get it.
    answer(stale, false).unwrap_err();
    h.fail().await;
    h.fail().await;
    h.fail().await;
    assert_eq!(h.state(), BreakerState::Closed, "3 calls < minimum_calls");
    h.fail().await;
    assert_eq!(h.state(), BreakerState::Open);
}

// ---- modes -----------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn shadow_mode_runs_the_state_machine_but_never_rejects() {
    let mut h = Harness::new(BreakerPolicy {
        mode: Mode::Shadow,
        ..policy()
    });
    for _ in 0..4 {
        h.fail().await;
    }
    assert_eq!(h.state(), BreakerState::Open);
    // What enforce would reject goes through.
    h.ok().await;
    h.fail().await;
    assert_eq!(h.state(), BreakerState::Open);
    advance(secs(10)).await;
    // Probes as usual; calls beyond the probes still go through.
    let a = h.start_waiting();
    let b = h.start_waiting();
    h.ok().await;
    assert_eq!(h.state(), BreakerState::HalfOpen);
    answer(a, true).unwrap();
    answer(b, true).unwrap();
    assert_eq!(h.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn forced_open_rejects_everything() {
    let mut h = Harness::new(BreakerPolicy {
        mode: Mode::ForcedOpen,
        ..policy()
    });
    assert_eq!(h.state(), BreakerState::ForcedOpen);
    for _ in 0..3 {
        assert_eq!(h.rejected().await.reason(), Reason::Open);
        advance(secs(100)).await;
    }
    assert_eq!(h.reached(), 0);
}

#[tokio::test(start_paused = true)]
async fn forced_closed_admits_everything() {
    let mut h = Harness::new(BreakerPolicy {
        mode: Mode::ForcedClosed,
        ..policy()
    });
    assert_eq!(h.state(), BreakerState::ForcedClosed);
    for _ in 0..20 {
        h.fail().await;
    }
    assert_eq!(h.state(), BreakerState::ForcedClosed);
}

#[tokio::test(start_paused = true)]
async fn set_mode_takes_effect_at_run_time_and_keeps_the_state() {
    let mut h = Harness::new(policy());
    // Forced open on a closed breaker.
    h.svc.set_mode(Mode::ForcedOpen);
    assert_eq!(h.layer.mode(), Mode::ForcedOpen);
    assert_eq!(h.rejected().await.reason(), Reason::Open);
    h.layer.set_mode(Mode::Enforce);
    assert_eq!(h.state(), BreakerState::Closed);
    h.ok().await;

    h.trip().await;
    h.rejected_open(secs(10)).await;
    // Forced closed lets everything through...
    h.layer.set_mode(Mode::ForcedClosed);
    assert_eq!(h.state(), BreakerState::ForcedClosed);
    h.ok().await;
    advance(secs(4)).await;
    // ...and enforce finds the open period where it was.
    h.layer.set_mode(Mode::Enforce);
    assert_eq!(h.state(), BreakerState::Open);
    h.rejected_open(secs(6)).await;
    // Shadow at run time: admitted, still open underneath.
    h.svc.set_mode(Mode::Shadow);
    h.ok().await;
    assert_eq!(h.state(), BreakerState::Open);
    h.svc.set_mode(Mode::Enforce);
    h.rejected_open(secs(6)).await;
}

// ---- sharing ---------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn clones_and_services_of_one_layer_share_one_state() {
    let mut h = Harness::new(policy());
    let mut clone = h.svc.clone();
    let other_backend = Backend::default();
    let mut other = h.layer.layer(other_backend.clone());
    h.fail().await;
    h.fail().await;
    // Failures through the clone and the other service count in the same
    // window.
    clone
        .ready()
        .await
        .unwrap()
        .call(Req::Fail)
        .await
        .unwrap_err();
    other
        .ready()
        .await
        .unwrap()
        .call(Req::Fail)
        .await
        .unwrap_err();
    for svc in [&mut h.svc, &mut clone, &mut other] {
        assert_eq!(svc.state(), BreakerState::Open);
        let err = svc.ready().await.unwrap().call(Req::Ok).await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<Rejected>().unwrap().reason(),
            Reason::Open
        );
    }
    assert_eq!(h.layer.state(), BreakerState::Open);
    assert_eq!(other_backend.calls.load(Ordering::SeqCst), 1);

    // A separate layer is a separate breaker.
    let mut separate = CircuitBreakerLayer::new(policy()).layer(Backend::default());
    separate.ready().await.unwrap().call(Req::Ok).await.unwrap();
    assert_eq!(separate.state(), BreakerState::Closed);
}
