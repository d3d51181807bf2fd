//! The circuit breaker against a small reference model written from the
//! specification (plain structs, no atomics), driven by the same random
//! sequence of operations: advance virtual time, start a call, complete a
//! call with success or failure (calls take the virtual time that passed
//! since they started, so slow calls happen), drop a call.
//!
//! After every step the admission decision, the reason and retry hint of
//! every rejection, and `state()` must agree.
//!
//! The model's specification:
//! - closed: every outcome goes into the window (the last `size` calls, or
//!   fixed buckets of `size / buckets`, the current one and the
//!   `buckets - 1` before it); after each outcome, trip when the window
//!   holds `>= minimum_calls` calls and failures/calls `>= failure_rate` or
//!   slow/calls `>= slow_call_rate`. A call is slow when it took
//!   `>= slow_call_duration` from admission to its answer;
//! - open: reject with `Open` and retry-after = time left; once the period
//!   is over `state()` reads half-open and the next call is the first probe;
//! - a dropped call that had run for `slow_call_duration` is a slow
//!   success (its latency is censored: at least that long); one dropped
//!   sooner is no sample;
//! - half-open: at most P probes out (a probe dropped sooner gives its slot
//!   back);
//!   after each probe's answer reopen when failed/P or slow/P reaches its
//!   rate, close when P answers are in (closing empties the window);
//! - the n-th consecutive open period is `open_for × 2^(n-1)` capped at
//!   `max`; a trip within `reset_after` of the last close continues the
//!   growth, a later one starts again at `open_for`;
//! - an answer to a call admitted before the breaker last changed state is
//!   no sample (the window and the probes belong to the new state).

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use brownout::{
    BackoffPolicy, BreakerPolicy, BreakerState, CircuitBreaker, CircuitBreakerLayer, Mode, Reason,
    Rejected, Trip, WindowPolicy,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use tokio::sync::oneshot;
use tower::{BoxError, Layer, Service};

// ---- the configuration -----------------------------------------------------

/// A rate as a fraction, so the model compares in integers.
#[derive(Debug, Clone, Copy)]
struct Rate {
    num: u64,
    den: u64,
}

impl Rate {
    fn as_f64(self) -> f64 {
        self.num as f64 / self.den as f64
    }

    /// `part / whole >= self`.
    fn reached(self, part: u64, whole: u64) -> bool {
        whole > 0 && part * self.den >= self.num * whole
    }
}

#[derive(Debug, Clone, Copy)]
enum WindowCfg {
    Count {
        size: usize,
    },
    /// Bucket widths divide one second, so buckets line up with the
    /// layer's construction time whatever offset the clock starts at.
    Time {
        width_ms: u64,
        buckets: u64,
    },
}

#[derive(Debug, Clone)]
struct Cfg {
    window: WindowCfg,
    failure_rate: Rate,
    slow_call_rate: Rate,
    slow_ms: u64,
    minimum_calls: u64,
    open_for_ms: u64,
    max_ms: u64,
    reset_after_ms: Option<u64>,
    probes: u64,
}

impl Cfg {
    fn policy(&self) -> BreakerPolicy {
        BreakerPolicy {
            window: match self.window {
                WindowCfg::Count { size } => WindowPolicy::Count { size: size as u32 },
                WindowCfg::Time { width_ms, buckets } => WindowPolicy::Time {
                    size: Duration::from_millis(width_ms * buckets),
                    buckets: buckets as u32,
                },
            },
            failure_rate: self.failure_rate.as_f64(),
            slow_call_rate: self.slow_call_rate.as_f64(),
            // The model is of the classic breaker, which opens at its
            // thresholds (`Trip::Throttle` has its own tests in
            // src/core/breaker/throttle_tests.rs).
            trip: Trip::Open,
            slow_call_duration: Duration::from_millis(self.slow_ms),
            minimum_calls: self.minimum_calls as u32,
            open_for: Duration::from_millis(self.open_for_ms),
            open_backoff: BackoffPolicy {
                multiplier: 2.0,
                max: Duration::from_millis(self.max_ms),
                jitter: 0.0,
                reset_after: self.reset_after_ms.map(Duration::from_millis),
            },
            half_open_probes: self.probes as u32,
            mode: Mode::Enforce,
            probe_after: 0,
        }
    }
}

// ---- the model -------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MState {
    Closed,
    Open {
        until: u64,
    },
    HalfOpen {
        /// Probes admitted and not dropped (answered ones included).
        out: u64,
        answered: u64,
        failed: u64,
        slow: u64,
    },
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Closed,
    Probe,
}

#[derive(Debug, Clone, Copy)]
struct Call {
    kind: Kind,
    /// The state change count when it was admitted.
    epoch: u64,
    start: u64,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Count window: unused; time window: the bucket number.
    bucket: u64,
    failed: bool,
    slow: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Admitted,
    Rejected {
        reason: Reason,
        retry_after: Option<Duration>,
    },
}

#[derive(Debug)]
struct Model {
    cfg: Cfg,
    /// Milliseconds since the layer was built.
    now: u64,
    state: MState,
    epoch: u64,
    window: VecDeque<Sample>,
    /// Consecutive open periods so far, minus one.
    level: u32,
    closed_at: Option<u64>,
}

impl Model {
    fn new(cfg: Cfg) -> Self {
        Self {
            cfg,
            now: 0,
            state: MState::Closed,
            epoch: 0,
            window: VecDeque::new(),
            level: 0,
            closed_at: None,
        }
    }

    fn state(&self) -> BreakerState {
        match self.state {
            MState::Closed => BreakerState::Closed,
            MState::Open { until } if self.now < until => BreakerState::Open,
            MState::Open { .. } | MState::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    fn move_to(&mut self, state: MState) {
        self.state = state;
        self.epoch += 1;
    }

    /// Admits or rejects a call; returns the call when admitted.
    fn start(&mut self) -> (Decision, Option<Call>) {
        let kind = match self.state {
            MState::Closed => Kind::Closed,
            MState::Open { until } if self.now < until => {
                let retry_after = Some(Duration::from_millis(until - self.now));
                return (
                    Decision::Rejected {
                        reason: Reason::Open,
                        retry_after,
                    },
                    None,
                );
            }
            MState::Open { .. } => {
                self.move_to(MState::HalfOpen {
                    out: 1,
                    answered: 0,
                    failed: 0,
                    slow: 0,
                });
                Kind::Probe
            }
            MState::HalfOpen { ref mut out, .. } => {
                if *out >= self.cfg.probes {
                    // The retry hint is not specified here, only that
                    // there is one; see `matches`.
                    return (
                        Decision::Rejected {
                            reason: Reason::Open,
                            retry_after: None,
                        },
                        None,
                    );
                }
                *out += 1;
                Kind::Probe
            }
        };
        let call = Call {
            kind,
            epoch: self.epoch,
            start: self.now,
        };
        (Decision::Admitted, Some(call))
    }

    fn complete(&mut self, call: Call, ok: bool) {
        if call.epoch != self.epoch {
            return; // admitted under an earlier state
        }
        let failed = !ok;
        let slow = self.now - call.start >= self.cfg.slow_ms;
        match (call.kind, &mut self.state) {
            (Kind::Closed, MState::Closed) => {
                self.record(failed, slow);
                let (calls, failures, slows) = self.totals();
                if calls >= self.cfg.minimum_calls
                    && (self.cfg.failure_rate.reached(failures, calls)
                        || self.cfg.slow_call_rate.reached(slows, calls))
                {
                    let continues = self
                        .closed_at
                        .is_some_and(|at| self.now - at < self.reset_after());
                    self.level = if continues { self.level + 1 } else { 0 };
                    self.open();
                }
            }
            (
                Kind::Probe,
                MState::HalfOpen {
                    answered,
                    failed: failed_probes,
                    slow: slow_probes,
                    ..
                },
            ) => {
                *answered += 1;
                *failed_probes += u64::from(failed);
                *slow_probes += u64::from(slow);
                let (answered, failed_probes, slow_probes) =
                    (*answered, *failed_probes, *slow_probes);
                let p = self.cfg.probes;
                if self.cfg.failure_rate.reached(failed_probes, p)
                    || self.cfg.slow_call_rate.reached(slow_probes, p)
                {
                    self.level += 1;
                    self.open();
                } else if answered >= p {
                    self.window.clear();
                    self.closed_at = Some(self.now);
                    self.move_to(MState::Closed);
                }
            }
            _ => unreachable!("an epoch belongs to one state"),
        }
    }

    fn drop_call(&mut self, call: Call) {
        if call.epoch != self.epoch {
            return;
        }
        if self.now - call.start >= self.cfg.slow_ms {
            // Its caller gave up after `slow_call_duration`: a slow call
            // (it took at least that long), never a failure.
            self.complete(call, true);
            return;
        }
        if let (Kind::Probe, MState::HalfOpen { out, .. }) = (call.kind, &mut self.state) {
            *out -= 1;
        }
    }

    fn reset_after(&self) -> u64 {
        self.cfg.reset_after_ms.unwrap_or(self.cfg.max_ms)
    }

    fn open(&mut self) {
        let grown = if self.level >= 40 {
            u64::MAX
        } else {
            self.cfg.open_for_ms.saturating_mul(1 << self.level)
        };
        let period = grown.min(self.cfg.max_ms);
        self.move_to(MState::Open {
            until: self.now + period,
        });
    }

    fn bucket(&self) -> u64 {
        match self.cfg.window {
            WindowCfg::Count { .. } => 0,
            WindowCfg::Time { width_ms, .. } => self.now / width_ms,
        }
    }

    fn record(&mut self, failed: bool, slow: bool) {
        let bucket = self.bucket();
        self.window.push_back(Sample {
            bucket,
            failed,
            slow,
        });
        if let WindowCfg::Count { size } = self.cfg.window {
            while self.window.len() > size {
                self.window.pop_front();
            }
        }
    }

    fn totals(&self) -> (u64, u64, u64) {
        let current = self.bucket();
        let in_window = |s: &&Sample| match self.cfg.window {
            WindowCfg::Count { .. } => true,
            WindowCfg::Time { buckets, .. } => current - s.bucket < buckets,
        };
        let samples = self.window.iter().filter(in_window);
        samples.fold((0, 0, 0), |(c, f, s), x| {
            (c + 1, f + u64::from(x.failed), s + u64::from(x.slow))
        })
    }
}

/// Whether the real decision matches the model's. The retry hint of a
/// half-open breaker with every probe out is not specified: any positive
/// hint is accepted there.
fn matches(real: &Decision, model: &Decision, model_state: BreakerState) -> bool {
    match (real, model) {
        (
            Decision::Rejected {
                reason,
                retry_after,
            },
            Decision::Rejected {
                reason: expected,
                retry_after: None,
            },
        ) if model_state == BreakerState::HalfOpen => {
            reason == expected && retry_after.is_some_and(|d| d > Duration::ZERO)
        }
        _ => real == model,
    }
}

// ---- the real breaker ------------------------------------------------------

type BackendFuture = Pin<Box<dyn Future<Output = Result<(), io::Error>> + Send>>;

/// A back end that answers each call when the test says so.
#[derive(Debug, Clone)]
struct Backend;

impl Service<oneshot::Receiver<bool>> for Backend {
    type Response = ();
    type Error = io::Error;
    type Future = BackendFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, answer: oneshot::Receiver<bool>) -> BackendFuture {
        Box::pin(async move {
            match answer.await {
                Ok(true) => Ok(()),
                _ => Err(io::Error::other("back end failed")),
            }
        })
    }
}

type Svc = CircuitBreaker<Backend>;
type Fut = <Svc as Service<oneshot::Receiver<bool>>>::Future;

fn poll_once(fut: &mut Fut) -> Poll<Result<(), BoxError>> {
    Pin::new(fut).poll(&mut Context::from_waker(Waker::noop()))
}

struct InFlight {
    answer: oneshot::Sender<bool>,
    fut: Fut,
    model: Call,
}

// ---- the operations --------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// Advance virtual time by this many quarter seconds.
    Advance(u64),
    Start,
    /// Answer the in-flight call picked by the index (modulo their number).
    Complete(usize, bool),
    Drop(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u64..=12).prop_map(Op::Advance),
        4 => Just(Op::Start),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(i, ok)| Op::Complete(i, ok)),
        1 => any::<usize>().prop_map(Op::Drop),
    ]
}

fn rate() -> impl Strategy<Value = Rate> {
    prop::sample::select(vec![
        Rate { num: 1, den: 4 },
        Rate { num: 1, den: 3 },
        Rate { num: 1, den: 2 },
        Rate { num: 3, den: 5 },
        Rate { num: 3, den: 4 },
        Rate { num: 1, den: 1 },
    ])
}

fn cfg(window: impl Strategy<Value = WindowCfg>) -> impl Strategy<Value = Cfg> {
    (
        window,
        rate(),
        rate(),
        prop::sample::select(vec![500u64, 1_000, 1_500]),
        1u64..=6,
        prop::sample::select(vec![1_000u64, 1_500, 2_000]),
        prop::sample::select(vec![3_000u64, 5_000, 9_000]),
        prop::sample::select(vec![None, Some(2_000u64), Some(6_000)]),
        1u64..=3,
    )
        .prop_map(
            |(
                window,
                failure_rate,
                slow_call_rate,
                slow_ms,
                minimum_calls,
                open_for_ms,
                max_ms,
                reset_after_ms,
                probes,
            )| Cfg {
                window,
                failure_rate,
                slow_call_rate,
                slow_ms,
                minimum_calls,
                open_for_ms,
                max_ms,
                reset_after_ms,
                probes,
            },
        )
}

fn count_window() -> impl Strategy<Value = WindowCfg> {
    (1usize..=6).prop_map(|size| WindowCfg::Count { size })
}

fn time_window() -> impl Strategy<Value = WindowCfg> {
    (prop::sample::select(vec![250u64, 500, 1_000]), 1u64..=5)
        .prop_map(|(width_ms, buckets)| WindowCfg::Time { width_ms, buckets })
}

/// Runs `ops` against a fresh breaker and the model, in paused time.
fn check(cfg: Cfg, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let mut model = Model::new(cfg.clone());
        let mut svc: Svc = CircuitBreakerLayer::new(cfg.policy()).layer(Backend);
        let mut in_flight: Vec<InFlight> = Vec::new();
        prop_assert_eq!(svc.state(), model.state());
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Advance(quarters) => {
                    let d = quarters * 250;
                    tokio::time::advance(Duration::from_millis(d)).await;
                    model.now += d;
                }
                Op::Start => {
                    let (tx, rx) = oneshot::channel();
                    let mut fut = svc.call(rx);
                    let real = match poll_once(&mut fut) {
                        Poll::Pending => Decision::Admitted,
                        Poll::Ready(Ok(())) => {
                            return Err(TestCaseError::fail("a call answered by itself"));
                        }
                        Poll::Ready(Err(err)) => match err.downcast_ref::<Rejected>() {
                            Some(r) => Decision::Rejected {
                                reason: r.reason(),
                                retry_after: r.retry_after(),
                            },
                            None => return Err(TestCaseError::fail(format!("{err}"))),
                        },
                    };
                    let state_before = model.state();
                    let (expected, call) = model.start();
                    prop_assert!(
                        matches(&real, &expected, state_before),
                        "step {}: decision {:?}, model {:?} (model {:?})",
                        step,
                        real,
                        expected,
                        model
                    );
                    if let Some(call) = call {
                        in_flight.push(InFlight {
                            answer: tx,
                            fut,
                            model: call,
                        });
                    }
                }
                Op::Complete(i, ok) if !in_flight.is_empty() => {
                    let InFlight {
                        answer,
                        mut fut,
                        model: call,
                    } = in_flight.remove(i % in_flight.len());
                    answer.send(ok).expect("the call is waiting");
                    match poll_once(&mut fut) {
                        Poll::Ready(Ok(())) => prop_assert!(ok),
                        Poll::Ready(Err(err)) => {
                            prop_assert!(!ok);
                            prop_assert!(err.downcast_ref::<Rejected>().is_none());
                        }
                        Poll::Pending => return Err(TestCaseError::fail("an answer is pending")),
                    }
                    model.complete(call, ok);
                }
                Op::Drop(i) if !in_flight.is_empty() => {
                    let dropped = in_flight.remove(i % in_flight.len());
                    model.drop_call(dropped.model);
                    drop(dropped);
                }
                Op::Complete(..) | Op::Drop(_) => {}
            }
            prop_assert_eq!(
                svc.state(),
                model.state(),
                "step {}: state (model {:?})",
                step,
                model
            );
        }
        Ok(())
    })
}

/// 256 cases from a fixed seed, so runs are reproducible; `PROPTEST_CASES`
/// and `PROPTEST_RNG_SEED` explore further.
fn config() -> Config {
    let base = Config::default();
    Config {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            base.cases
        } else {
            256
        },
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            base.rng_seed
        } else {
            RngSeed::Fixed(0x0b0e_5eed)
        },
        failure_persistence: None,
        ..base
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn count_window_breaker_follows_the_model(
        cfg in cfg(count_window()),
        ops in prop::collection::vec(op(), 1..200),
    ) {
        check(cfg, ops)?;
    }

    #[test]
    fn time_window_breaker_follows_the_model(
        cfg in cfg(time_window()),
        ops in prop::collection::vec(op(), 1..200),
    ) {
        check(cfg, ops)?;
    }
}
