//! The adaptive limit against a simulated back end, in virtual time:
//! convergence to the back end's true capacity, re-convergence after it
//! drops to 27%, goodput and latency under 2× overload, urgent traffic
//! under overload, and conservation.
#![cfg(feature = "sim")]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use brownout::policy::Algorithm;
use brownout::priority::{Classes, Priority, priority_fn};
use brownout::sim::{ServiceTime, SimBackend, SimHandle};
use brownout::{AdaptiveLimitLayer, LimitPolicy, Reason, Rejected};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// The back end: 200 calls at once, 100 ms each (log-normal, cv 0.2), so
/// 2,000 calls a second at best.
const CAPACITY: usize = 200;
const SERVICE: Duration = Duration::from_millis(100);

fn backend(seed: u64) -> (SimBackend, SimHandle) {
    let backend = SimBackend::builder()
        .capacity(CAPACITY)
        .service_time(ServiceTime::LogNormal {
            mean: SERVICE,
            cv: 0.2,
        })
        .seed(seed)
        .build()
        .unwrap();
    let handle = backend.handle();
    (backend, handle)
}

fn policy(algorithm: Algorithm) -> LimitPolicy {
    LimitPolicy {
        algorithm,
        initial: 20,
        min: 1,
        max: 1000,
        ..LimitPolicy::default()
    }
}

/// What one run saw.
#[derive(Debug, Default)]
struct Run {
    /// (seconds since start, limit) every 100 ms.
    limits: Vec<(f64, u32)>,
    /// Per request: class, outcome, latency; by arrival second.
    outcomes: Vec<Outcome>,
}

#[derive(Debug, Clone, Copy)]
struct Outcome {
    class: u8,
    at: f64,
    served: bool,
    reason: Option<Reason>,
    latency: Duration,
}

impl Run {
    /// The first time from which the limit stays within ±25% of `target`
    /// until `until` seconds, if it does.
    fn settled_at(&self, from: f64, until: f64, target: f64) -> Option<f64> {
        let window: Vec<_> = self
            .limits
            .iter()
            .filter(|(t, _)| *t >= from && *t < until)
            .collect();
        let mut settled = None;
        for (t, limit) in window {
            let inside = (f64::from(*limit) - target).abs() <= 0.25 * target;
            match (inside, settled) {
                (true, None) => settled = Some(*t),
                (false, _) => settled = None,
                _ => {}
            }
        }
        settled
    }

    fn limit_at(&self, t: f64) -> u32 {
        self.limits
            .iter()
            .rev()
            .find(|(at, _)| *at <= t)
            .map_or(0, |(_, l)| *l)
    }

    fn between(&self, from: f64, until: f64) -> impl Iterator<Item = &Outcome> {
        self.outcomes
            .iter()
            .filter(move |o| o.at >= from && o.at < until)
    }

    /// Served requests per second that arrived in [from, until).
    fn goodput(&self, from: f64, until: f64) -> f64 {
        self.between(from, until).filter(|o| o.served).count() as f64 / (until - from)
    }

    fn p99_latency(&self, from: f64, until: f64) -> Duration {
        let mut latencies: Vec<_> = self
            .between(from, until)
            .filter(|o| o.served)
            .map(|o| o.latency)
            .collect();
        latencies.sort();
        latencies[latencies.len() * 99 / 100]
    }

    fn served_share(&self, class: u8) -> f64 {
        let of_class: Vec<_> = self.outcomes.iter().filter(|o| o.class == class).collect();
        of_class.iter().filter(|o| o.served).count() as f64 / of_class.len() as f64
    }
}

/// Offers `rate` requests a second for `seconds`, open-loop, with evenly
/// spread arrivals; `class_of(i)` gives request i's class. Samples the
/// limit every 100 ms.
async fn drive<S>(
    svc: S,
    limit: impl Fn() -> u32,
    phases: &[(f64, f64)],
    class_of: impl Fn(u64) -> u8,
) -> Run
where
    S: Service<u8, Response = brownout::sim::SimResponse, Error = tower::BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let start = Instant::now();
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let mut limits = Vec::new();
    let mut tasks = Vec::new();
    let mut next_sample = 0.0;
    let mut t = 0.0;
    let mut i: u64 = 0;
    for &(rate, seconds) in phases {
        let end = t + seconds;
        let gap = 1.0 / rate;
        while t < end {
            tokio::time::sleep_until(start + Duration::from_secs_f64(t)).await;
            while next_sample <= t {
                limits.push((next_sample, limit()));
                next_sample += 0.1;
            }
            let class = class_of(i);
            let svc = svc.clone();
            let outcomes = outcomes.clone();
            let at = t;
            tasks.push(tokio::spawn(async move {
                let began = Instant::now();
                let result = svc.oneshot(class).await;
                let reason = result.as_ref().err().map(|e| {
                    e.downcast_ref::<Rejected>()
                        .expect("only rejections")
                        .reason()
                });
                outcomes.lock().unwrap().push(Outcome {
                    class,
                    at,
                    served: result.is_ok(),
                    reason,
                    latency: began.elapsed(),
                });
            }));
            i += 1;
            t += gap;
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    Run { limits, outcomes }
}

fn by_class(class: &u8, classes: &Classes) -> Priority {
    classes.clamp(Priority::new(*class))
}

/// Full capacity is 2,000 calls a second; 2× overload is 4,000.
const THROUGHPUT: f64 = 2_000.0;
const OVERLOAD: f64 = 2.0 * THROUGHPUT;

async fn converges(algorithm: Algorithm) {
    let (backend, sim) = backend(7);
    sim.at(
        Duration::from_secs(20),
        brownout::sim::Change::CapacityFraction(0.27),
    )
    .unwrap();
    let layer = AdaptiveLimitLayer::new(policy(algorithm)).priority(priority_fn(by_class));
    let svc = layer.clone().layer(backend);
    // Every request in the most important class, whose share is the whole
    // limit: what the limit admits is what reaches the back end.
    let run = drive(svc, || layer.limit(), &[(OVERLOAD, 40.0)], |_| 0).await;

    let c = CAPACITY as f64;
    let settled = run.settled_at(0.0, 20.0, c);
    println!(
        "{algorithm:?}: C={c}: settled at {settled:?} s; limit at 10 s = {}, at 19.9 s = {}",
        run.limit_at(10.0),
        run.limit_at(19.9)
    );
    let settled =
        settled.unwrap_or_else(|| panic!("{algorithm:?} never settled near {c}: {:?}", run.limits));
    assert!(
        settled <= 10.0,
        "{algorithm:?} took {settled} s to settle near {c}"
    );

    let reduced = (CAPACITY * 27 / 100) as f64;
    let resettled = run.settled_at(20.0, 40.0, reduced);
    if std::env::var_os("BROWNOUT_TRACE").is_some() {
        for (t, l) in &run.limits {
            print!("{t:.1}:{l} ");
        }
        println!();
    }
    println!(
        "{algorithm:?}: C={reduced}: settled at {resettled:?} s; limit at 30 s = {}, at 39.9 s = {}",
        run.limit_at(30.0),
        run.limit_at(39.9)
    );
    let resettled = resettled.unwrap_or_else(|| {
        panic!(
            "{algorithm:?} never settled near {reduced}: {:?}",
            run.limits
        )
    });
    assert!(
        resettled - 20.0 <= 10.0,
        "{algorithm:?} took {} s to settle near {reduced}",
        resettled - 20.0
    );

    // Under 2× overload the back end is kept busy but not queued.
    let goodput = run.goodput(10.0, 20.0);
    let p99 = run.p99_latency(10.0, 20.0);
    println!("{algorithm:?}: goodput {goodput:.0}/s of {THROUGHPUT}/s, p99 {p99:?}");
    assert!(
        goodput >= 0.9 * THROUGHPUT,
        "{algorithm:?} goodput {goodput}/s"
    );
    assert!(p99 <= 2 * SERVICE, "{algorithm:?} p99 {p99:?}");

    // Conservation: every request served or shed, nothing else.
    assert!(
        run.outcomes
            .iter()
            .all(|o| o.served || o.reason == Some(Reason::Shed))
    );
    assert_eq!(run.outcomes.len(), (OVERLOAD * 40.0).round() as usize);
}

#[tokio::test(start_paused = true)]
async fn gradient_settles_near_capacity_and_again_after_it_drops_to_27_percent() {
    converges(Algorithm::Gradient).await;
}

#[tokio::test(start_paused = true)]
async fn vegas_settles_near_capacity_and_again_after_it_drops_to_27_percent() {
    converges(Algorithm::Vegas).await;
}

async fn urgent_survives(algorithm: Algorithm) {
    let (backend, _sim) = backend(11);
    let layer = AdaptiveLimitLayer::new(policy(algorithm)).priority(priority_fn(by_class));
    let svc = layer.clone().layer(backend);
    // One request in ten is urgent (class 0), the rest bulk (class 2).
    let run = drive(
        svc,
        || layer.limit(),
        &[(OVERLOAD, 20.0)],
        |i| if i % 10 == 0 { 0 } else { 2 },
    )
    .await;
    // Judge after the first 5 s of learning.
    let after: Vec<_> = run
        .outcomes
        .iter()
        .filter(|o| o.at >= 5.0)
        .copied()
        .collect();
    let settled = Run {
        limits: vec![],
        outcomes: after,
    };
    let urgent = settled.served_share(0);
    let bulk = settled.served_share(2);
    println!(
        "{algorithm:?}: urgent served {:.4}, bulk served {:.4}",
        urgent, bulk
    );
    assert!(
        urgent >= 0.99,
        "{algorithm:?}: urgent served share {urgent}"
    );
    assert!(bulk < 0.6, "{algorithm:?}: bulk was not shed: {bulk}");
    assert!(urgent >= bulk);
}

#[tokio::test(start_paused = true)]
async fn gradient_serves_urgent_requests_under_overload_while_bulk_is_shed() {
    urgent_survives(Algorithm::Gradient).await;
}

#[tokio::test(start_paused = true)]
async fn vegas_serves_urgent_requests_under_overload_while_bulk_is_shed() {
    urgent_survives(Algorithm::Vegas).await;
}

#[tokio::test(start_paused = true)]
async fn a_shed_request_is_answered_at_once_with_a_retry_hint() {
    let (backend, _sim) = backend(3);
    let layer = AdaptiveLimitLayer::new(LimitPolicy {
        algorithm: Algorithm::Fixed,
        initial: 2,
        ..LimitPolicy::default()
    });
    let mut svc = layer.layer(backend);
    let a = ServiceExt::<u8>::ready(&mut svc).await.unwrap().call(0u8);
    let b = ServiceExt::<u8>::ready(&mut svc).await.unwrap().call(0u8);
    let started = Instant::now();
    let err = ServiceExt::<u8>::ready(&mut svc)
        .await
        .unwrap()
        .call(0u8)
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::ZERO, "shedding never waits");
    let rejected = err.downcast_ref::<Rejected>().unwrap();
    assert_eq!(rejected.reason(), Reason::Shed);
    assert!(rejected.retry_after().is_some());
    a.await.unwrap();
    b.await.unwrap();
    // The slots came back.
    assert_eq!(svc.inflight(), 0);
}

#[tokio::test(start_paused = true)]
async fn cancelled_calls_give_their_slot_back_and_are_not_samples() {
    let (backend, sim) = backend(5);
    let layer = AdaptiveLimitLayer::new(LimitPolicy {
        algorithm: Algorithm::Aimd,
        initial: 10,
        ..LimitPolicy::default()
    });
    let mut svc = layer.layer(backend);
    let dropped = AtomicU64::new(0);
    for _ in 0..1000 {
        let call = ServiceExt::<u8>::ready(&mut svc).await.unwrap().call(0u8);
        drop(call);
        dropped.fetch_add(1, Ordering::Relaxed);
    }
    assert_eq!(svc.inflight(), 0);
    assert_eq!(svc.limit(), 10, "no sample, no change");
    assert_eq!(sim.stats().cancelled, 1000);
}

/// `capacity` probes a quarter above and below its estimate on purpose, so
/// it is judged by its mean limit: within ±25% of the capacity from 5 s on,
/// and of the cut capacity from 10 s after the cut, with the back end kept
/// busy and its latency low.
#[tokio::test(start_paused = true)]
async fn capacity_settles_near_capacity_and_again_after_it_drops_to_27_percent() {
    let (backend, sim) = backend(7);
    sim.at(
        Duration::from_secs(20),
        brownout::sim::Change::CapacityFraction(0.27),
    )
    .unwrap();
    let layer =
        AdaptiveLimitLayer::new(policy(Algorithm::Capacity)).priority(priority_fn(by_class));
    let svc = layer.clone().layer(backend);
    let run = drive(svc, || layer.limit(), &[(OVERLOAD, 40.0)], |_| 0).await;
    let mean = |from: f64, until: f64| {
        let window: Vec<_> = run
            .limits
            .iter()
            .filter(|(t, _)| *t >= from && *t < until)
            .map(|(_, l)| f64::from(*l))
            .collect();
        window.iter().sum::<f64>() / window.len() as f64
    };
    let c = CAPACITY as f64;
    let before = mean(5.0, 20.0);
    println!("capacity: mean limit {before:.0} for C={c}");
    assert!(
        (before - c).abs() <= 0.25 * c,
        "mean limit {before} for {c}"
    );
    let reduced = c * 0.27;
    let after = mean(30.0, 40.0);
    println!("capacity: mean limit {after:.0} for C={reduced}");
    assert!(
        (after - reduced).abs() <= 0.25 * reduced,
        "mean limit {after} for {reduced}"
    );
    let goodput = run.goodput(10.0, 20.0);
    assert!(goodput >= 0.9 * THROUGHPUT, "goodput {goodput}/s");
    let p99 = run.p99_latency(30.0, 40.0);
    assert!(p99 <= 2 * SERVICE, "p99 {p99:?} after the cut");
    assert!(
        run.outcomes
            .iter()
            .all(|o| o.served || o.reason == Some(Reason::Shed))
    );
}

#[tokio::test(start_paused = true)]
async fn capacity_serves_urgent_requests_under_overload_while_bulk_is_shed() {
    urgent_survives(Algorithm::Capacity).await;
}

/// A back end four times slower with the same slots can still use as many
/// calls at once: the limit holds within ±20% of its capacity, where a
/// latency learner would read the slowdown as a queue and collapse.
#[tokio::test(start_paused = true)]
async fn capacity_holds_the_limit_through_a_4x_slowdown() {
    let (backend, sim) = backend(13);
    sim.at(
        Duration::from_secs(15),
        brownout::sim::Condition::Slow { factor: 4.0 },
    )
    .unwrap();
    let layer =
        AdaptiveLimitLayer::new(policy(Algorithm::Capacity)).priority(priority_fn(by_class));
    let svc = layer.clone().layer(backend);
    let run = drive(svc, || layer.limit(), &[(OVERLOAD, 45.0)], |_| 0).await;
    let c = CAPACITY as f64;
    // The limit probes a fifth above and below its estimate by design: its
    // mean holds within ±20% of the capacity, and it never collapses.
    let after: Vec<f64> = run
        .limits
        .iter()
        .filter(|(t, _)| *t >= 25.0)
        .map(|(_, l)| f64::from(*l))
        .collect();
    let mean = after.iter().sum::<f64>() / after.len() as f64;
    let lowest = after.iter().copied().fold(f64::INFINITY, f64::min);
    println!("capacity through x4: mean limit {mean:.0}, lowest {lowest}");
    assert!((mean - c).abs() <= 0.2 * c, "mean limit {mean} for {c}");
    assert!(lowest >= 0.5 * c, "the limit fell to {lowest}");
    // And the slowed back end is kept busy: at least 90% of what it serves.
    let goodput = run.goodput(25.0, 45.0);
    assert!(
        goodput >= 0.9 * THROUGHPUT / 4.0,
        "goodput {goodput}/s of {}/s",
        THROUGHPUT / 4.0
    );
}

/// At 60% of its capacity a healthy back end gets every request after the
/// first 10 s: the limit stays ahead of demand.
#[tokio::test(start_paused = true)]
async fn capacity_sheds_nothing_at_60_percent_load() {
    let (backend, _sim) = backend(17);
    let layer =
        AdaptiveLimitLayer::new(policy(Algorithm::Capacity)).priority(priority_fn(by_class));
    let svc = layer.clone().layer(backend);
    let run = drive(
        svc,
        || layer.limit(),
        &[(0.6 * THROUGHPUT, 30.0)],
        |i| (i % 3) as u8,
    )
    .await;
    let shed = run.between(10.0, 30.0).filter(|o| !o.served).count();
    assert_eq!(shed, 0, "limit now {}", run.limit_at(29.9));
    // Conservation: every request arrived and has an outcome.
    assert!(
        run.outcomes.len().abs_diff(36_000) <= 1,
        "{}",
        run.outcomes.len()
    );
}

/// An application's own algorithm: what it counts of the windows it sees.
#[derive(Debug)]
struct Counting {
    windows: Arc<AtomicU64>,
    samples: Arc<AtomicU64>,
}

impl brownout::limit::LimitAlgorithm for Counting {
    fn update(&mut self, limit: f64, window: &brownout::limit::WindowSample) -> f64 {
        self.windows.fetch_add(1, Ordering::Relaxed);
        self.samples
            .fetch_add(u64::from(window.samples), Ordering::Relaxed);
        assert!(window.rtt > 0.05 && window.rtt < 0.5, "{window:?}");
        assert!(window.throughput() > 0.0, "{window:?}");
        // Whatever it asks for is clamped to [min, max].
        limit + 1_000.0
    }
}

#[tokio::test(start_paused = true)]
async fn a_custom_algorithm_sees_every_completed_call_and_sets_the_limit() {
    let (backend, _sim) = backend(9);
    let windows = Arc::new(AtomicU64::new(0));
    let samples = Arc::new(AtomicU64::new(0));
    let made = Arc::new(AtomicU64::new(0));
    let layer = AdaptiveLimitLayer::new(LimitPolicy {
        algorithm: Algorithm::Custom,
        initial: 4,
        max: 40,
        ..LimitPolicy::default()
    })
    .algorithm({
        let (windows, samples, made) = (windows.clone(), samples.clone(), made.clone());
        move || {
            made.fetch_add(1, Ordering::Relaxed);
            Counting {
                windows: windows.clone(),
                samples: samples.clone(),
            }
        }
    });
    let svc = layer.layer(backend);
    assert_eq!(made.load(Ordering::Relaxed), 1, "one instance per route");
    assert_eq!(svc.limit(), 4);
    // Four at a time, one after another, for 2 s of 100 ms calls.
    let mut served = 0;
    for _ in 0..20 {
        let calls: Vec<_> = (0..4)
            .map(|_| tokio::spawn(svc.clone().oneshot(0u8)))
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
            served += 1;
        }
    }
    assert!(
        windows.load(Ordering::Relaxed) >= 2,
        "a window per round trip"
    );
    let seen = samples.load(Ordering::Relaxed);
    assert!(
        seen <= served && seen + 20 >= served,
        "{seen} samples of {served} calls (the window under way, at most half the limit, is not closed)"
    );
    assert_eq!(svc.limit(), 40, "its answer, clamped to max");
}

/// The limits a layer goes through under batches of 64 calls at once.
async fn limits_under_batches(algorithm: Algorithm) -> Vec<u32> {
    let layer = AdaptiveLimitLayer::new(LimitPolicy {
        algorithm,
        initial: 4,
        ..LimitPolicy::default()
    });
    let (backend, _sim) = backend(10);
    let svc = layer.layer(backend);
    let mut limits = Vec::new();
    for _ in 0..40 {
        let calls: Vec<_> = (0..64)
            .map(|_| tokio::spawn(svc.clone().oneshot(0u8)))
            .collect();
        for call in calls {
            let _ = call.await.unwrap();
        }
        limits.push(svc.limit());
    }
    limits
}

#[tokio::test(start_paused = true)]
async fn a_policy_naming_custom_without_an_algorithm_uses_capacity() {
    let capacity = limits_under_batches(Algorithm::Capacity).await;
    assert!(capacity.iter().any(|&limit| limit != 4), "{capacity:?}");
    assert_eq!(limits_under_batches(Algorithm::Custom).await, capacity);
}

#[tokio::test(start_paused = true)]
async fn the_stack_keeps_its_custom_algorithm_across_reloads() {
    let made = Arc::new(AtomicU64::new(0));
    let mut policy = brownout::Policy::default();
    policy.limit.algorithm = Algorithm::Custom;
    policy.limit.initial = 3;
    let layer = brownout::BrownoutLayer::from_policy(&policy).limit_algorithm({
        let made = made.clone();
        move || {
            made.fetch_add(1, Ordering::Relaxed);
            Counting {
                windows: Arc::default(),
                samples: Arc::default(),
            }
        }
    });
    let (backend, _sim) = backend(11);
    let svc = layer.layer(backend);
    svc.clone().oneshot(0u8).await.unwrap();
    // One per gate: the route's, and the overflow gate's.
    let gates = made.load(Ordering::Relaxed);
    assert_eq!(gates, 2);
    assert_eq!(
        layer.limit("default"),
        Some(1000),
        "its answer, clamped to max"
    );

    // Ops switch to `capacity`, then back: a fresh instance of the custom one.
    let mut capacity = policy.clone();
    capacity.limit.algorithm = Algorithm::Capacity;
    layer.handle().apply(capacity).unwrap();
    assert_eq!(made.load(Ordering::Relaxed), gates, "capacity: none made");
    layer.handle().apply(policy).unwrap();
    assert_eq!(made.load(Ordering::Relaxed), 2 * gates);
}
