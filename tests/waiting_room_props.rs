//! The waiting room under random traffic, in paused tokio time: random
//! arrivals of every class, deadlines, clients that give up, and outages
//! of the simulated back end, in front of a breaker and a fixed or
//! gradient limit. Every request has exactly one outcome, no waiter
//! outlives its wait, the back end never sees more calls than the limit,
//! and nothing leaks. Then adaptive LIFO's order, and a room woken when
//! its breaker opens.
#![cfg(feature = "sim")]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use brownout::deadline::deadline_fn;
use brownout::policy::{Algorithm, Order};
use brownout::priority::{Classes, Priority, priority_fn};
use brownout::sim::{Condition, ServiceTime, SimBackend, SimError, SimHandle, SimResponse};
use brownout::{
    BackoffPolicy, BreakerPolicy, LimitPolicy, Reason, Rejected, WaitingRoomLayer,
    WaitingRoomPolicy, WindowPolicy,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt};

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn reason_of(err: &BoxError) -> Option<Reason> {
    err.downcast_ref::<Rejected>().map(Rejected::reason)
}

/// Lets every spawned task run until it blocks, without moving time.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

// ---- the random scenario ---------------------------------------------------

/// A request of the proptest: its number, class (0 urgent, 1 normal,
/// 2 bulk) and own deadline.
#[derive(Debug, Clone, Copy)]
struct Call {
    id: u32,
    class: u8,
    deadline: Option<Duration>,
}

/// How a client gives up: never (it still stops after [`PATIENCE`], which
/// only a hanging back end reaches), by a timeout around the call, or by
/// its task being aborted.
#[derive(Debug, Clone, Copy)]
enum Cancel {
    Never,
    Timeout(u64),
    Abort(u64),
}

/// Longest any client waits for an answer: only calls to a hanging back
/// end last this long.
const PATIENCE: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
struct Arrival {
    at: u64,
    class: u8,
    deadline: Option<u64>,
    cancel: Cancel,
}

#[derive(Debug, Clone, Copy)]
enum Outage {
    Fast,
    Hang,
    Slow(f64),
}

#[derive(Debug, Clone)]
struct Scenario {
    capacity: u32,
    max_wait: u64,
    /// `adaptive_lifo` with (codel_interval, codel_target), else
    /// `priority_fifo`.
    lifo: Option<(u64, u64)>,
    gradient: bool,
    limit: u32,
    reserve: f64,
    window: u32,
    minimum_calls: u32,
    open_for: u64,
    probes: u32,
    slow_call: u64,
    sim_capacity: usize,
    service: u64,
    exponential: bool,
    seed: u64,
    outages: Vec<(u64, u64, Outage)>,
    arrivals: Vec<Arrival>,
}

fn cancel() -> impl Strategy<Value = Cancel> {
    prop_oneof![
        3 => Just(Cancel::Never),
        1 => (0..4_000u64).prop_map(Cancel::Timeout),
        1 => (0..4_000u64).prop_map(Cancel::Abort),
    ]
}

fn arrival() -> impl Strategy<Value = Arrival> {
    (
        0..6_000u64,
        0..3u8,
        prop::option::weighted(0.3, 0..3_000u64),
        cancel(),
    )
        .prop_map(|(at, class, deadline, cancel)| Arrival {
            at,
            class,
            deadline,
            cancel,
        })
}

fn outage() -> impl Strategy<Value = (u64, u64, Outage)> {
    let kind = prop_oneof![
        Just(Outage::Fast),
        Just(Outage::Hang),
        (2.0..20.0f64).prop_map(Outage::Slow),
    ];
    (0..6_000u64, 1..3_000u64, kind)
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let room = (
        1..40u32,
        10..3_000u64,
        prop::option::of((20..300u64, 1..50u64)),
    );
    let limit = (
        any::<bool>(),
        1..8u32,
        prop_oneof![Just(0.0), Just(0.2), Just(0.5)],
    );
    let breaker = (2..20u32, 1..6u32, 50..2_000u64, 1..4u32, 50..5_000u64);
    let backend = (1..10usize, 1..200u64, any::<bool>(), any::<u64>());
    let traffic = (
        prop::collection::vec(outage(), 0..4),
        prop::collection::vec(arrival(), 1..150),
    );
    (room, limit, breaker, backend, traffic).prop_map(
        |(
            (capacity, max_wait, lifo),
            (gradient, limit, reserve),
            (window, minimum_calls, open_for, probes, slow_call),
            (sim_capacity, service, exponential, seed),
            (outages, mut arrivals),
        )| {
            arrivals.sort_by_key(|a| a.at);
            Scenario {
                capacity,
                max_wait,
                // codel_target fits in max_wait, as validation requires.
                lifo: lifo.map(|(interval, target)| (interval, target.min(max_wait))),
                gradient,
                limit,
                reserve,
                window,
                minimum_calls,
                open_for,
                probes,
                slow_call,
                sim_capacity,
                service,
                exponential,
                seed,
                outages,
                arrivals,
            }
        },
    )
}

impl Scenario {
    fn room(&self) -> WaitingRoomPolicy {
        let mut policy = WaitingRoomPolicy {
            capacity: self.capacity,
            max_wait: ms(self.max_wait),
            ..WaitingRoomPolicy::default()
        };
        if let Some((interval, target)) = self.lifo {
            policy.order = Order::AdaptiveLifo;
            policy.codel_interval = ms(interval);
            policy.codel_target = ms(target);
        }
        policy.validate().expect("a valid room");
        policy
    }

    fn limit(&self) -> LimitPolicy {
        let policy = if self.gradient {
            LimitPolicy {
                algorithm: Algorithm::Gradient,
                initial: self.limit,
                min: 1,
                max: self.limit * 3,
                reserve: self.reserve,
            }
        } else {
            LimitPolicy {
                algorithm: Algorithm::Fixed,
                initial: self.limit,
                min: 1,
                max: self.limit,
                reserve: self.reserve,
            }
        };
        policy.validate().expect("a valid limit");
        policy
    }

    fn breaker(&self) -> BreakerPolicy {
        let policy = BreakerPolicy {
            window: WindowPolicy::Count { size: self.window },
            failure_rate: 0.5,
            slow_call_rate: 0.8,
            slow_call_duration: ms(self.slow_call),
            minimum_calls: self.minimum_calls.min(self.window),
            open_for: ms(self.open_for),
            open_backoff: BackoffPolicy {
                multiplier: 2.0,
                max: ms(self.open_for * 4),
                jitter: 0.0,
                reset_after: None,
            },
            half_open_probes: self.probes,
            ..BreakerPolicy::default()
        };
        policy.validate().expect("a valid breaker");
        policy
    }

    fn backend(&self) -> SimBackend {
        let service = if self.exponential {
            ServiceTime::Exponential {
                mean: ms(self.service),
            }
        } else {
            ServiceTime::Constant(ms(self.service))
        };
        SimBackend::builder()
            .capacity(self.sim_capacity)
            .service_time(service)
            .seed(self.seed)
            .build()
            .expect("a valid back end")
    }

    fn schedule(&self, sim: &SimHandle) {
        let mut outages = self.outages.clone();
        outages.sort_by_key(|o| o.0);
        for (start, len, kind) in outages {
            let down = match kind {
                Outage::Fast => Condition::DownFast,
                Outage::Hang => Condition::DownHang,
                Outage::Slow(factor) => Condition::Slow { factor },
            };
            sim.at(ms(start), down).expect("a valid change");
            sim.at(ms(start + len), Condition::Up)
                .expect("a valid change");
        }
    }
}

// ---- a back end that counts what reaches it --------------------------------

/// One call as the back end saw it start.
#[derive(Debug, Clone, Copy)]
struct Start {
    id: u32,
    at: Instant,
    /// Calls in flight at the back end, this one included.
    inflight: u32,
    /// The limit and the layer's own in-flight count at that moment.
    limit: u32,
    layer_inflight: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Ok,
    Err,
    Dropped,
}

#[derive(Debug, Default)]
struct Meter {
    inflight: AtomicU32,
    starts: Mutex<Vec<Start>>,
    ends: Mutex<Vec<(u32, End)>>,
}

type View = Arc<dyn Fn() -> (u32, u32) + Send + Sync>;

#[derive(Clone)]
struct Metered {
    sim: SimBackend,
    meter: Arc<Meter>,
    /// The layer's limit and in-flight count, read at each call.
    view: View,
}

/// Ends a call at the back end exactly once: with its answer, or dropped.
struct Ending {
    meter: Arc<Meter>,
    id: u32,
    end: End,
}

impl Drop for Ending {
    fn drop(&mut self) {
        self.meter.inflight.fetch_sub(1, Ordering::SeqCst);
        self.meter.ends.lock().unwrap().push((self.id, self.end));
    }
}

type SimFuture = Pin<Box<dyn Future<Output = Result<SimResponse, SimError>> + Send>>;

impl Service<Call> for Metered {
    type Response = SimResponse;
    type Error = SimError;
    type Future = SimFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), SimError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> SimFuture {
        let (limit, layer_inflight) = (self.view)();
        let inflight = self.meter.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        self.meter.starts.lock().unwrap().push(Start {
            id: call.id,
            at: Instant::now(),
            inflight,
            limit,
            layer_inflight,
        });
        let ending = Ending {
            meter: self.meter.clone(),
            id: call.id,
            end: End::Dropped,
        };
        let answer = self.sim.call(call);
        Box::pin(async move {
            // Moved whole, so that it ends with this future.
            let mut ending = ending;
            let result = answer.await;
            ending.end = if result.is_ok() { End::Ok } else { End::Err };
            result
        })
    }
}

// ---- one run ---------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Served,
    Failed,
    Rejected(Reason),
    Cancelled,
}

#[derive(Debug, Clone, Copy)]
struct Done {
    arrival: usize,
    outcome: Outcome,
    /// From the call to the answer (`None` for an aborted task).
    took: Option<Duration>,
}

/// What a run produced, for the assertions and the figures.
#[derive(Debug, Default)]
struct Figures {
    cases: u64,
    requests: u64,
    outcomes: BTreeMap<String, u64>,
    fixed_cases: u64,
    fixed_at_limit: u64,
    fixed_peak_over_limit: Vec<(u32, u32)>,
    gradient_cases: u64,
    gradient_peak_max: u32,
    gradient_limit_max: u32,
    /// Gradient cases whose limit moved during the run.
    gradient_moved: u64,
    /// Most places allocated beyond a room's capacity.
    places_over_capacity: usize,
    /// Waits before reaching the back end, by class: (count, sum, max).
    waits: [(u64, Duration, Duration); 3],
}

fn run(s: &Scenario, figures: &mut Figures) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let meter = Arc::new(Meter::default());

    let (origin, done, sim, layer_waiting, layer_inflight, places, limit_at_end) =
        rt.block_on(async {
            let origin = Instant::now();
            let layer = WaitingRoomLayer::new(s.room())
                .breaker(s.breaker())
                .limit(s.limit())
                .route("props")
                .seed(s.seed)
                .priority(priority_fn(|c: &Call, classes: &Classes| {
                    classes.clamp(Priority::new(c.class))
                }))
                .deadline(deadline_fn(|c: &Call| c.deadline));
            let backend = s.backend();
            let sim = backend.handle();
            s.schedule(&sim);
            let seen = layer.clone();
            let view: View = Arc::new(move || (seen.limit_now(), seen.inflight()));
            let svc = layer.layer(Metered {
                sim: backend,
                meter: meter.clone(),
                view,
            });

            let mut tasks = Vec::new();
            for (i, a) in s.arrivals.iter().enumerate() {
                tokio::time::sleep_until(origin + ms(a.at)).await;
                let call = Call {
                    id: i as u32,
                    class: a.class,
                    deadline: a.deadline.map(ms),
                };
                let patience = match a.cancel {
                    Cancel::Timeout(after) => ms(after),
                    Cancel::Never | Cancel::Abort(_) => PATIENCE,
                };
                let svc = svc.clone();
                let gate = layer.clone();
                let task = tokio::spawn(async move {
                    let t0 = Instant::now();
                    let outcome = match tokio::time::timeout(patience, svc.oneshot(call)).await {
                        Ok(Ok(_)) => Outcome::Served,
                        Ok(Err(err)) => match reason_of(&err) {
                            Some(reason) => Outcome::Rejected(reason),
                            None => Outcome::Failed,
                        },
                        Err(_) => Outcome::Cancelled,
                    };
                    if let Outcome::Rejected(Reason::QueueTimeout) = outcome {
                        // A waiter runs out of time only if nobody could be
                        // let out: the room hands out a free permit before
                        // it turns anyone away. (A `Deadline` may also end a
                        // call already at the back end, which frees its
                        // slot as it ends: not checked here.)
                        let idle = gate.state() == brownout::BreakerState::Closed
                            && gate.inflight() == 0
                            && !t0.elapsed().is_zero();
                        assert!(
                            !idle,
                            "request {i} ran out of time with the breaker closed and nothing in flight"
                        );
                    }
                    (t0, outcome, t0.elapsed())
                });
                if let Cancel::Abort(after) = a.cancel {
                    let abort = task.abort_handle();
                    tokio::spawn(async move {
                        tokio::time::sleep(ms(after)).await;
                        abort.abort();
                    });
                }
                tasks.push((i, task));
            }
            let mut done = Vec::new();
            for (i, task) in tasks {
                let d = match task.await {
                    Ok((t0, outcome, took)) => {
                        assert_eq!(t0, origin + ms(s.arrivals[i].at), "called on arrival");
                        Done {
                            arrival: i,
                            outcome,
                            took: Some(took),
                        }
                    }
                    Err(err) if err.is_cancelled() => Done {
                        arrival: i,
                        outcome: Outcome::Cancelled,
                        took: None,
                    },
                    Err(err) => panic!("request {i} panicked: {err}"),
                };
                done.push(d);
            }
            settle().await;
            (
                origin,
                done,
                sim.stats(),
                layer.waiting(),
                layer.inflight(),
                layer.places_allocated(),
                layer.limit_now(),
            )
        });
    drop(rt);

    let n = s.arrivals.len();
    // Exactly one outcome per request.
    assert_eq!(done.len(), n);
    let mut tally: BTreeMap<Outcome, u64> = BTreeMap::new();
    for d in &done {
        *tally.entry(d.outcome).or_default() += 1;
    }
    let count = |o: Outcome| tally.get(&o).copied().unwrap_or(0);
    let served = count(Outcome::Served);
    let failed = count(Outcome::Failed);
    let cancelled = count(Outcome::Cancelled);
    let mut rejected: BTreeMap<Reason, u64> = BTreeMap::new();
    for (o, k) in &tally {
        if let Outcome::Rejected(r) = o {
            rejected.insert(*r, *k);
        }
    }
    let rejected_total: u64 = rejected.values().sum();
    assert_eq!(
        n as u64,
        served + failed + rejected_total + cancelled,
        "conservation: {tally:?}"
    );
    for reason in [Reason::Shed, Reason::Maintenance] {
        assert!(
            !rejected.contains_key(&reason),
            "a room never answers {reason:?}: {tally:?}"
        );
    }

    // What the back end saw agrees with what the clients saw.
    let starts = meter.starts.lock().unwrap().clone();
    let ends: HashMap<u32, End> = {
        let ends = meter.ends.lock().unwrap();
        let map: HashMap<u32, End> = ends.iter().copied().collect();
        assert_eq!(map.len(), ends.len(), "a call ended twice");
        map
    };
    let started: HashMap<u32, Start> = starts.iter().map(|st| (st.id, *st)).collect();
    assert_eq!(
        started.len(),
        starts.len(),
        "a request reached the back end twice"
    );
    assert_eq!(ends.len(), starts.len(), "a call never ended");
    for d in &done {
        let id = d.arrival as u32;
        let end = ends.get(&id).copied();
        match d.outcome {
            Outcome::Served => assert_eq!(end, Some(End::Ok), "request {id}"),
            Outcome::Failed => assert_eq!(end, Some(End::Err), "request {id}"),
            // A deadline bounds the call too: a request can reach the back
            // end and be abandoned there (the back end sees it dropped).
            Outcome::Rejected(Reason::Deadline) => assert!(
                matches!(end, None | Some(End::Dropped)),
                "request {id} rejected with Deadline but ended {end:?}"
            ),
            Outcome::Rejected(r) => {
                assert_eq!(
                    end, None,
                    "request {id} rejected with {r:?} reached the back end"
                )
            }
            Outcome::Cancelled => assert!(
                matches!(end, None | Some(End::Dropped)),
                "request {id} cancelled but ended {end:?}"
            ),
        }
    }
    assert_eq!(sim.started, starts.len() as u64);
    assert_eq!((sim.served, sim.failed), (served, failed));
    assert_eq!(sim.open(), 0, "calls still open at the back end: {sim:?}");

    // No waiter outlives its wait, and the wait ends exactly when it should.
    let max_wait = ms(s.max_wait);
    for d in &done {
        let a = &s.arrivals[d.arrival];
        let deadline = a.deadline.map(ms);
        let budget = deadline.map_or(max_wait, |dl| dl.min(max_wait));
        if let Some(st) = started.get(&(d.arrival as u32)) {
            let waited = st.at.duration_since(origin + ms(a.at));
            assert!(
                waited <= budget,
                "request {} reached the back end after {waited:?}, budget {budget:?}",
                d.arrival
            );
        }
        let (Outcome::Rejected(reason), Some(took)) = (d.outcome, d.took) else {
            continue;
        };
        // A deadline also bounds the call: a request that reached the back
        // end is abandoned at its deadline, whatever the room's max_wait.
        let reached = started.contains_key(&(d.arrival as u32));
        let budget = match (reason, deadline) {
            (Reason::Deadline, Some(deadline)) if reached => deadline,
            _ => budget,
        };
        assert!(
            took <= budget,
            "request {} rejected with {reason:?} after {took:?}, budget {budget:?}",
            d.arrival
        );
        match reason {
            Reason::QueueTimeout => {
                let cut = s.lifo.map(|(_, target)| ms(target));
                assert!(
                    took == max_wait || Some(took) == cut,
                    "request {} timed out after {took:?}, max_wait {max_wait:?}, codel {cut:?}",
                    d.arrival
                );
                assert!(deadline.is_none_or(|dl| took <= dl));
            }
            // At its deadline; or earlier, without reaching the back end,
            // when less of it was left than the back end's typical latency.
            Reason::Deadline => assert!(
                Some(took) == deadline || (!reached && deadline.is_some_and(|dl| took < dl)),
                "request {} left at its deadline {deadline:?}, after {took:?}",
                d.arrival
            ),
            _ => {}
        }
    }

    // The back end never had more calls than the limit allowed.
    let peak = starts.iter().map(|st| st.inflight).max().unwrap_or(0);
    for st in &starts {
        assert!(
            st.inflight <= st.layer_inflight,
            "the back end has {} calls, the layer {} permits",
            st.inflight,
            st.layer_inflight
        );
    }
    if s.gradient {
        let max_limit = starts
            .iter()
            .map(|st| st.limit)
            .chain([s.limit, limit_at_end])
            .max()
            .unwrap();
        assert!(
            peak <= max_limit,
            "peak {peak} above the largest limit {max_limit}"
        );
        figures.gradient_cases += 1;
        figures.gradient_peak_max = figures.gradient_peak_max.max(peak);
        figures.gradient_limit_max = figures.gradient_limit_max.max(max_limit);
        if starts.iter().any(|st| st.limit != s.limit) || limit_at_end != s.limit {
            figures.gradient_moved += 1;
        }
    } else {
        for st in &starts {
            assert_eq!(st.limit, s.limit, "a fixed limit never moves");
            assert!(
                st.inflight <= s.limit,
                "{} in flight above the limit {}",
                st.inflight,
                s.limit
            );
        }
        figures.fixed_cases += 1;
        if peak == s.limit {
            figures.fixed_at_limit += 1;
        }
        figures.fixed_peak_over_limit.push((peak, s.limit));
    }

    // Nothing leaked.
    assert_eq!(layer_waiting, 0, "waiters left in the room");
    assert_eq!(layer_inflight, 0, "permits never given back");
    assert_eq!(meter.inflight.load(Ordering::SeqCst), 0);
    // A place is held from the arrival until its waiter reads its answer.
    // Every woken task runs before time moves, so answers are read within
    // their instant: the places in use never exceed the room's capacity
    // plus the arrivals of one instant.
    let mut per_instant: BTreeMap<u64, usize> = BTreeMap::new();
    for a in &s.arrivals {
        *per_instant.entry(a.at).or_default() += 1;
    }
    let burst = per_instant.values().copied().max().unwrap_or(0);
    assert!(
        places <= s.capacity as usize + burst,
        "{places} places allocated for a room of {} and bursts of {burst}",
        s.capacity
    );
    figures.places_over_capacity = figures
        .places_over_capacity
        .max(places.saturating_sub(s.capacity as usize));

    // The layer's own books agree with the clients'.
    let mut requests: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut waiting: BTreeMap<String, f64> = BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let label = |name: &str| {
            key.labels()
                .find(|l| l.key() == name)
                .map(|l| l.value().to_owned())
                .unwrap_or_default()
        };
        match (key.name(), value) {
            ("brownout_requests_total", DebugValue::Counter(c)) if c > 0 => {
                requests.insert((label("outcome"), label("reason")), c);
            }
            // Deltas since the gauge was registered: their sum is its value.
            ("brownout_waiting", DebugValue::Gauge(v)) => {
                waiting.insert(label("priority"), v.into_inner());
            }
            _ => {}
        }
    }
    let mut expected: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut put = |outcome: &str, reason: &str, k: u64| {
        if k > 0 {
            expected.insert((outcome.to_owned(), reason.to_owned()), k);
        }
    };
    put("served", "none", served + failed);
    put("cancelled", "none", cancelled);
    for (r, k) in &rejected {
        put("rejected", r.as_str(), *k);
    }
    assert_eq!(requests, expected, "brownout_requests_total");
    for (class, v) in &waiting {
        assert_eq!(
            *v, 0.0,
            "brownout_waiting{{priority={class}}} after the run"
        );
    }

    figures.cases += 1;
    figures.requests += n as u64;
    for (o, k) in &tally {
        let name = match o {
            Outcome::Rejected(r) => format!("rejected:{}", r.as_str()),
            other => format!("{other:?}").to_lowercase(),
        };
        *figures.outcomes.entry(name).or_default() += k;
    }
    for st in &starts {
        let a = &s.arrivals[st.id as usize];
        let waited = st.at.duration_since(origin + ms(a.at));
        let w = &mut figures.waits[usize::from(a.class)];
        w.0 += 1;
        w.1 += waited;
        w.2 = w.2.max(waited);
    }
}

/// 128 cases from a fixed seed, so runs are reproducible; `PROPTEST_CASES`
/// and `PROPTEST_RNG_SEED` explore further.
fn config() -> Config {
    let base = Config::default();
    Config {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            base.cases
        } else {
            128
        },
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            base.rng_seed
        } else {
            RngSeed::Fixed(0x5eed_4004)
        },
        failure_persistence: None,
        ..base
    }
}

#[test]
fn random_traffic_keeps_every_request_accounted_for() {
    let mut runner = TestRunner::new(config());
    let figures = Mutex::new(Figures::default());
    let result = runner.run(&scenario(), |s| {
        run(&s, &mut figures.lock().unwrap_or_else(|e| e.into_inner()));
        Ok(())
    });
    if let Err(err) = result {
        panic!("{err}");
    }
    let f = figures.into_inner().unwrap();
    eprintln!("cases {}, requests {}", f.cases, f.requests);
    eprintln!("outcomes {:?}", f.outcomes);
    eprintln!(
        "places allocated beyond capacity: at most {}",
        f.places_over_capacity
    );
    eprintln!(
        "fixed limit: {} cases, peak in-flight reached the limit in {}, \
         never above it (peak, limit) e.g. {:?}",
        f.fixed_cases,
        f.fixed_at_limit,
        &f.fixed_peak_over_limit[..f.fixed_peak_over_limit.len().min(12)]
    );
    eprintln!(
        "gradient: {} cases ({} with a moving limit), largest peak {} vs largest limit {}",
        f.gradient_cases, f.gradient_moved, f.gradient_peak_max, f.gradient_limit_max
    );
    for (class, (n, sum, max)) in f.waits.iter().enumerate() {
        let mean = if *n > 0 {
            *sum / *n as u32
        } else {
            Duration::ZERO
        };
        eprintln!("class {class}: {n} calls, wait mean {mean:?}, max {max:?}");
    }
    assert_eq!(f.cases, u64::from(config().cases));
}

// ---- a back end steered by hand --------------------------------------------

/// A request of the hand-written tests: its number, class, how long the
/// back end takes with it, and whether it fails.
#[derive(Debug, Clone, Copy)]
struct Job {
    id: u32,
    class: u8,
    hold: Duration,
    fail: bool,
}

fn job(id: u32, class: u8, hold: Duration) -> Job {
    Job {
        id,
        class,
        hold,
        fail: false,
    }
}

/// The calls the back end started: (job, virtual time from `origin`).
type Started = Arc<Mutex<Vec<(u32, Duration)>>>;

fn steered(
    origin: Instant,
    started: Started,
) -> impl Service<Job, Response = u32, Error = BoxError, Future: Send> + Clone + Send {
    tower::service_fn(move |j: Job| {
        started.lock().unwrap().push((j.id, origin.elapsed()));
        async move {
            tokio::time::sleep(j.hold).await;
            if j.fail {
                Err::<u32, BoxError>("back end failed".into())
            } else {
                Ok(j.id)
            }
        }
    })
}

fn by_class(j: &Job, classes: &Classes) -> Priority {
    classes.clamp(Priority::new(j.class))
}

fn fixed(limit: u32) -> LimitPolicy {
    LimitPolicy {
        algorithm: Algorithm::Fixed,
        initial: limit,
        max: limit,
        reserve: 0.0,
        ..LimitPolicy::default()
    }
}

#[tokio::test(start_paused = true)]
async fn waiters_for_the_limit_get_the_probe_when_the_breaker_opens_under_them() {
    let origin = Instant::now();
    let started = Started::default();
    let layer = WaitingRoomLayer::new(WaitingRoomPolicy {
        capacity: 10,
        max_wait: Duration::from_secs(10),
        ..WaitingRoomPolicy::default()
    })
    .breaker(BreakerPolicy {
        window: WindowPolicy::Count { size: 2 },
        minimum_calls: 1,
        open_for: Duration::from_secs(1),
        open_backoff: BackoffPolicy {
            jitter: 0.0,
            ..BackoffPolicy::default()
        },
        half_open_probes: 1,
        ..BreakerPolicy::default()
    })
    .limit(fixed(1));
    let svc = layer.layer(steered(origin, started.clone()));

    // One call runs and fails after 100 ms; another waits for its slot.
    let mut failing = job(0, 1, ms(100));
    failing.fail = true;
    let first = tokio::spawn(svc.clone().oneshot(failing));
    settle().await;
    let waiter = tokio::spawn(svc.clone().oneshot(job(1, 1, ms(10))));
    settle().await;
    assert_eq!(layer.waiting(), 1);

    // The failure opens the breaker until t = 1.1 s, inside the waiter's
    // 10 s: it stays, and is the probe at 1.1 s.
    assert!(first.await.unwrap().is_err());
    assert_eq!(layer.state(), brownout::BreakerState::Open);
    assert_eq!(layer.waiting(), 1, "its wait outlasts the open period");
    assert_eq!(waiter.await.unwrap().unwrap(), 1);
    assert_eq!(
        *started.lock().unwrap(),
        vec![(0, ms(0)), (1, ms(1100))],
        "the waiter goes as the probe when the breaker lets one through"
    );
}

fn lifo_room() -> WaitingRoomPolicy {
    WaitingRoomPolicy {
        capacity: 100,
        max_wait: Duration::from_secs(10),
        order: Order::AdaptiveLifo,
        codel_interval: ms(100),
        codel_target: ms(5),
        ..WaitingRoomPolicy::default()
    }
}

/// One call at a time, 10 ms each: a normal call runs from t = 0 and 19
/// wait behind it; two urgent ones arrive at 95 and 96 ms, and one more
/// of class `late_class` at 153 ms. Returns the starts and the late one's
/// answer and wait.
async fn standing_queue(
    order: Order,
    late_class: u8,
) -> (Vec<(u32, Duration)>, Option<Reason>, Duration) {
    let origin = Instant::now();
    let started = Started::default();
    let layer = WaitingRoomLayer::new(WaitingRoomPolicy {
        order,
        ..lifo_room()
    })
    .limit(fixed(1))
    .priority(priority_fn(by_class));
    let svc = layer.layer(steered(origin, started.clone()));

    let mut tasks = Vec::new();
    for id in 0..20 {
        tasks.push(tokio::spawn(svc.clone().oneshot(job(id, 1, ms(10)))));
        settle().await;
    }
    assert_eq!(layer.waiting(), 19);
    for (id, at) in [(50, 95), (51, 96)] {
        tokio::time::sleep_until(origin + ms(at)).await;
        tasks.push(tokio::spawn(svc.clone().oneshot(job(id, 0, ms(10)))));
    }
    tokio::time::sleep_until(origin + ms(153)).await;
    let late = tokio::spawn(async move {
        let t0 = Instant::now();
        let result = svc.oneshot(job(100, late_class, ms(10))).await;
        (result.err().as_ref().and_then(reason_of), t0.elapsed())
    });
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let (reason, waited) = late.await.unwrap();
    assert_eq!(layer.waiting(), 0);
    assert_eq!(layer.inflight(), 0);
    let started = started.lock().unwrap().clone();
    (started, reason, waited)
}

#[tokio::test(start_paused = true)]
async fn adaptive_lifo_lets_the_newest_out_first_once_a_queue_stands_and_cuts_new_waits() {
    let (started, reason, waited) = standing_queue(Order::AdaptiveLifo, 1).await;
    // The room has not been empty since t = 0. Until 100 ms (the CoDel
    // interval) it is first come, first served; from then on the newest
    // of the most important class leaves first.
    let mut expected: Vec<(u32, Duration)> =
        (0..10).map(|id| (id, ms(10 * u64::from(id)))).collect();
    expected.push((51, ms(100)));
    expected.push((50, ms(110)));
    for (k, id) in (10..20).rev().enumerate() {
        expected.push((id, ms(120 + 10 * k as u64)));
    }
    assert_eq!(started, expected);
    // Seated into a standing queue, the late one may wait 5 ms (the CoDel
    // target), not 10 s: it leaves at 158 ms, before the next slot frees.
    assert_eq!(reason, Some(Reason::QueueTimeout));
    assert_eq!(waited, ms(5));
}

#[tokio::test(start_paused = true)]
async fn adaptive_lifo_does_not_cut_the_wait_of_a_caller_with_nobody_of_its_class_ahead() {
    // The same standing queue of normal callers, but the late one is
    // urgent and no urgent caller waits: it is not in the queue that
    // stands, it has the next slot, and it keeps its wait to take it.
    let (started, reason, waited) = standing_queue(Order::AdaptiveLifo, 0).await;
    assert_eq!(reason, None, "served");
    assert_eq!(
        waited,
        ms(7 + 10),
        "waited 7 ms for the next slot, then served in 10 ms"
    );
    assert_eq!(started[16], (100, ms(160)), "{started:?}");
}

#[tokio::test(start_paused = true)]
async fn priority_fifo_serves_the_same_standing_queue_in_arrival_order() {
    let (started, reason, waited) = standing_queue(Order::PriorityFifo, 1).await;
    let mut expected: Vec<(u32, Duration)> =
        (0..10).map(|id| (id, ms(10 * u64::from(id)))).collect();
    expected.push((50, ms(100)));
    expected.push((51, ms(110)));
    for (k, id) in (10..20).enumerate() {
        expected.push((id, ms(120 + 10 * k as u64)));
    }
    expected.push((100, ms(220)));
    assert_eq!(started, expected);
    assert_eq!(reason, None, "served");
    assert_eq!(waited, ms(67 + 10), "waited 67 ms, then served in 10 ms");
}

#[tokio::test(start_paused = true)]
async fn adaptive_lifo_stays_first_come_first_served_while_the_room_empties_regularly() {
    let origin = Instant::now();
    let started = Started::default();
    let layer = WaitingRoomLayer::new(lifo_room())
        .limit(fixed(1))
        .priority(priority_fn(by_class));
    let svc = layer.layer(steered(origin, started.clone()));

    // Ten bursts of five, 50 ms apart, 9 ms a call: the room fills at each
    // burst and is empty again 36 ms later, for 500 ms in all, five times
    // the CoDel interval.
    let mut tasks = Vec::new();
    let mut expected = Vec::new();
    for burst in 0..10u32 {
        let at = 50 * u64::from(burst);
        tokio::time::sleep_until(origin + ms(at)).await;
        for k in 0..5u32 {
            let id = burst * 10 + k;
            tasks.push(tokio::spawn(svc.clone().oneshot(job(id, 1, ms(9)))));
            settle().await;
            expected.push((id, ms(at + 9 * u64::from(k))));
        }
        assert_eq!(layer.waiting(), 4);
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(*started.lock().unwrap(), expected);
}
