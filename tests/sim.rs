//! The simulated back end: capacity and FIFO queueing, scheduled changes,
//! outages, slowness, cancellation and determinism, all in paused time.
#![cfg(feature = "sim")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use brownout::sim::{
    Abandoned, Change, Condition, ServiceTime, SimBackend, SimConfigError, SimError, SimResponse,
};
use tokio::task::JoinHandle;
use tokio::time::{Instant, advance, sleep, sleep_until};
use tower::{Service, ServiceExt};

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn backend(capacity: usize, service_time: ServiceTime, seed: u64) -> SimBackend {
    SimBackend::builder()
        .capacity(capacity)
        .service_time(service_time)
        .seed(seed)
        .build()
        .expect("valid settings")
}

fn constant(capacity: usize, service: Duration) -> SimBackend {
    backend(capacity, ServiceTime::Constant(service), 0)
}

/// Makes `n` calls now, in order, and lets tasks drive them.
fn spawn_calls(backend: &SimBackend, n: usize) -> Vec<JoinHandle<Result<SimResponse, SimError>>> {
    (0..n)
        .map(|_| tokio::spawn(backend.clone().call(())))
        .collect()
}

async fn join_all(
    calls: Vec<JoinHandle<Result<SimResponse, SimError>>>,
) -> Vec<Result<SimResponse, SimError>> {
    let mut out = Vec::with_capacity(calls.len());
    for c in calls {
        out.push(c.await.expect("call task"));
    }
    out
}

/// Lets spawned tasks run without moving virtual time.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// Reference FIFO multi-server queue, every call arriving at once: each call
/// starts when the earliest slot frees. Returns (queue delay, service).
fn fifo_model(draws: &[Duration], capacity: usize) -> Vec<(Duration, Duration)> {
    let mut free_at = vec![Duration::ZERO; capacity];
    draws
        .iter()
        .map(|&d| {
            let (i, &start) = free_at
                .iter()
                .enumerate()
                .min_by_key(|&(_, t)| *t)
                .expect("capacity > 0");
            free_at[i] = start + d;
            (start, d)
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn twice_the_capacity_queues_half_and_doubles_their_latency() {
    let c = 4;
    let b = constant(c, ms(100));
    let answers = join_all(spawn_calls(&b, 2 * c)).await;
    let latencies: Vec<_> = answers.iter().map(|a| a.unwrap().latency()).collect();
    let delays: Vec<_> = answers.iter().map(|a| a.unwrap().queue_delay).collect();
    assert_eq!(latencies, [[ms(100); 4], [ms(200); 4]].concat());
    assert_eq!(delays, [[ms(0); 4], [ms(100); 4]].concat());

    let s = b.handle().stats();
    assert_eq!(s.peak_in_service, c, "never more than C in service");
    assert_eq!(s.peak_concurrent, 2 * c, "the other C queued");
    assert_eq!((s.started, s.served, s.in_service, s.queued), (8, 8, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn seeded_service_times_queue_exactly_as_a_fifo_multi_server() {
    let (c, n, seed) = (3, 12, 42);
    let st = ServiceTime::LogNormal {
        mean: ms(50),
        cv: 0.8,
    };
    let b = backend(c, st, seed);
    let answers = join_all(spawn_calls(&b, n)).await;
    let draws = st.draws(seed, n).unwrap();
    let expected = fifo_model(&draws, c);
    let got: Vec<_> = answers
        .iter()
        .map(|a| {
            let r = a.unwrap();
            (r.queue_delay, r.service_time)
        })
        .collect();
    assert_eq!(got, expected);
    // The draws really vary, so the comparison says something.
    assert!(draws.windows(2).any(|w| w[0] != w[1]));

    let s = b.handle().stats();
    assert_eq!(s.peak_in_service, c);
    assert_eq!(s.peak_concurrent, n);

    // Queued calls wait: the later half's mean latency is well above the
    // first C calls' (which never queued).
    let mean = |xs: &[Result<SimResponse, SimError>]| {
        xs.iter().map(|a| a.unwrap().latency()).sum::<Duration>() / xs.len() as u32
    };
    assert!(
        answers[..c]
            .iter()
            .all(|a| a.unwrap().queue_delay.is_zero())
    );
    assert!(mean(&answers[n / 2..]) > mean(&answers[..c]) * 3 / 2);
}

#[tokio::test(start_paused = true)]
async fn the_queue_is_fifo_in_call_order_not_poll_order() {
    let b = constant(1, ms(10));
    let mut svc = b.clone();
    let futures: Vec<_> = (0..5).map(|_| svc.call(())).collect();
    let order = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    // Spawned (and so first polled) in reverse order.
    let tasks: Vec<_> = futures
        .into_iter()
        .rev()
        .map(|f| {
            let order = Arc::clone(&order);
            tokio::spawn(async move {
                let r = f.await.unwrap();
                order.lock().unwrap().push((r.seq, start.elapsed()));
                r
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    let expected: Vec<_> = (0..5u64).map(|i| (i, ms(10) * (i as u32 + 1))).collect();
    assert_eq!(order, expected);
}

#[tokio::test(start_paused = true)]
async fn capacity_drops_to_27_percent_at_the_scheduled_time() {
    let b = constant(100, ms(100));
    let sim = b.handle();
    sim.at(Duration::from_secs(20), Change::CapacityFraction(0.27))
        .unwrap();
    assert_eq!(sim.pending_changes(), 1);

    // A closed loop of 200 clients, twice the capacity, starting at 50 ms so
    // that calls end at 0.15 s, 0.25 s, ...: never at a checkpoint below.
    let served_by = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..200 {
        let b = b.clone();
        let served_by = Arc::clone(&served_by);
        tokio::spawn(async move {
            sleep(ms(50)).await;
            loop {
                if b.clone().oneshot(()).await.is_ok() {
                    served_by.lock().unwrap().push(Instant::now());
                }
            }
        });
    }
    let at = |t: u64| sim.origin() + ms(t);

    sleep_until(at(19_900)).await;
    let s = sim.stats();
    assert_eq!((s.capacity, s.in_service, s.queued), (100, 100, 100));

    sleep_until(at(20_020)).await;
    assert_eq!(sim.capacity(), 27);
    assert_eq!(sim.pending_changes(), 0);
    // Calls in service at the drop are not revoked.
    assert_eq!(sim.stats().in_service, 100);

    sleep_until(at(20_100)).await;
    assert_eq!(sim.stats().in_service, 27);
    sim.reset_peaks();
    sleep_until(at(30_000)).await;
    let s = sim.stats();
    assert_eq!(s.peak_in_service, 27);
    assert_eq!(s.in_service, 27);
    assert_eq!(s.in_service + s.queued, 200);

    // Throughput follows: 1,000 calls/s before, 270 after.
    let served = served_by.lock().unwrap().clone();
    let count = |from: u64, to: u64| {
        let (from, to) = (sim.origin() + ms(from), sim.origin() + ms(to));
        served.iter().filter(|&&t| t > from && t <= to).count()
    };
    assert_eq!(count(10_000, 19_000), 9_000);
    assert_eq!(count(21_000, 30_000), 2_430);
}

#[tokio::test(start_paused = true)]
async fn zero_capacity_queues_until_a_scheduled_raise() {
    let b = constant(0, ms(100));
    let sim = b.handle();
    sim.at(Duration::from_secs(5), Change::Capacity(1)).unwrap();
    let call = tokio::spawn(b.clone().oneshot(()));
    settle().await;
    assert_eq!(sim.stats().queued, 1);
    // Only the schedule's own task can wake the call: nobody else acts.
    let r = call.await.unwrap().unwrap();
    assert_eq!(r.queue_delay, Duration::from_secs(5));
    assert_eq!(r.latency(), ms(5_100));
}

#[tokio::test(start_paused = true)]
async fn capacity_fraction_rounds_and_keeps_at_least_one() {
    let b = constant(2200, ms(1));
    let sim = b.handle();
    for (f, c) in [(0.27, 594), (0.0001, 1), (0.0, 0), (1.0, 2200), (1.5, 3300)] {
        sim.set_capacity_fraction(f).unwrap();
        assert_eq!(sim.capacity(), c, "fraction {f}");
    }
    sim.set_capacity(7);
    assert_eq!(sim.capacity(), 7);
    assert_eq!(sim.base_capacity(), 2200);
}

#[tokio::test(start_paused = true)]
async fn down_fast_answers_an_error_quickly() {
    let b = constant(1, ms(100));
    let sim = b.handle();
    // One call in service and two queued when the back end goes down.
    let before = spawn_calls(&b, 3);
    settle().await;
    assert_eq!((sim.stats().in_service, sim.stats().queued), (1, 2));
    sim.set_condition(Condition::DownFast).unwrap();

    let t0 = Instant::now();
    let err = b.clone().oneshot(()).await.unwrap_err();
    assert_eq!(err, SimError::Down);
    assert_eq!(t0.elapsed(), ms(1));
    assert!(err.to_string().contains("down"), "{err}");

    let before = join_all(before).await;
    assert!(before[0].is_ok(), "the call in service finishes");
    assert_eq!(before[1..], [Err(SimError::Down), Err(SimError::Down)]);
    let s = sim.stats();
    assert_eq!((s.started, s.served, s.failed, s.open()), (4, 1, 3, 0));

    sim.set_condition(Condition::Up).unwrap();
    assert!(b.clone().oneshot(()).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn down_hang_never_answers_until_dropped() {
    let b = constant(2, ms(100));
    let sim = b.handle();
    sim.set_condition(Condition::DownHang).unwrap();
    let t0 = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(3600), b.clone().oneshot(())).await;
    assert!(answer.is_err(), "no answer within an hour");
    assert_eq!(t0.elapsed(), Duration::from_secs(3600));
    let s = sim.stats();
    assert_eq!((s.started, s.cancelled, s.hanging, s.open()), (1, 1, 0, 0));

    // Hanging calls pile up as hanging, never in service.
    let calls = spawn_calls(&b, 5);
    sleep(Duration::from_secs(60)).await;
    let s = sim.stats();
    assert_eq!((s.hanging, s.in_service, s.queued), (5, 0, 0));
    for c in &calls {
        assert!(!c.is_finished());
        c.abort();
    }
    settle().await;
    let s = sim.stats();
    assert_eq!((s.hanging, s.cancelled, s.open()), (0, 6, 0));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_frees_its_queue_place_and_its_slot() {
    let b = constant(1, Duration::from_secs(10));
    let sim = b.handle();
    let mut svc = b.clone();
    let a = svc.call(()); // in service at once
    let q = svc.call(()); // queued
    let c = svc.call(()); // queued behind q
    let s = sim.stats();
    assert_eq!((s.in_service, s.queued), (1, 2));

    drop(q);
    let s = sim.stats();
    assert_eq!((s.in_service, s.queued, s.cancelled), (1, 1, 1));

    advance(Duration::from_secs(1)).await;
    drop(a); // never even polled: its slot goes to c now
    let s = sim.stats();
    assert_eq!((s.in_service, s.queued, s.cancelled), (1, 0, 2));

    let r = c.await.unwrap();
    assert_eq!(r.queue_delay, Duration::from_secs(1));
    assert_eq!(r.seq, 2);
    let s = sim.stats();
    assert_eq!((s.started, s.served, s.cancelled, s.open()), (3, 1, 2, 0));
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_call_in_service_frees_its_slot() {
    let b = constant(1, Duration::from_secs(10));
    let sim = b.handle();
    let first = tokio::time::timeout(Duration::from_secs(2), b.clone().oneshot(()));
    let second = tokio::spawn(b.clone().oneshot(()));
    assert!(first.await.is_err());
    let r = second.await.unwrap().unwrap();
    assert_eq!(r.queue_delay, Duration::from_secs(2));
    assert_eq!(sim.stats().cancelled, 1);
}

#[tokio::test(start_paused = true)]
async fn flapping_alternates_each_half_period() {
    let b = constant(10, ms(10));
    let sim = b.handle();
    sim.at(
        Duration::from_secs(100),
        Condition::Flapping {
            period: Duration::from_secs(10),
        },
    )
    .unwrap();
    sleep_until(sim.origin() + Duration::from_secs(100)).await;
    let start = Instant::now();
    let mut seen = Vec::new();
    for k in 0..20 {
        sleep_until(start + Duration::from_secs(k)).await;
        seen.push(b.clone().oneshot(()).await.is_ok());
    }
    // The call at second k of the cycle: up in [0, 5), down in [5, 10).
    let expected: Vec<_> = (0..20).map(|k| k % 10 < 5).collect();
    assert_eq!(seen, expected);
    assert_eq!(
        sim.condition(),
        Condition::Flapping {
            period: Duration::from_secs(10)
        }
    );
}

#[tokio::test(start_paused = true)]
async fn slow_multiplies_service_times() {
    let st = ServiceTime::Exponential { mean: ms(40) };
    let b = backend(3, st, 9);
    let sim = b.handle();
    let draws = st.draws(9, 6).unwrap();

    let up = b.clone().oneshot(()).await.unwrap();
    assert_eq!(up.service_time, draws[0]);

    sim.set_condition(Condition::Slow { factor: 5.0 }).unwrap();
    for (i, &draw) in draws.iter().enumerate().skip(1).take(3) {
        let r = b.clone().oneshot(()).await.unwrap();
        assert_eq!(r.seq, i as u64);
        assert_eq!(r.service_time, draw * 5);
    }

    // A call already in service keeps the pace it started with.
    let c = constant(1, ms(100));
    let running = tokio::spawn(c.clone().oneshot(()));
    settle().await;
    c.handle()
        .set_condition(Condition::Slow { factor: 3.0 })
        .unwrap();
    let queued_after = c.clone().oneshot(()).await.unwrap();
    assert_eq!(running.await.unwrap().unwrap().service_time, ms(100));
    assert_eq!(queued_after.service_time, ms(300));
    assert_eq!(queued_after.latency(), ms(400));
}

/// Latencies of a closed loop of 8 clients, 200 calls, on a back end with
/// capacity 3 and log-normal service times.
async fn closed_loop_run(seed: u64) -> Vec<(u64, Duration)> {
    let b = backend(
        3,
        ServiceTime::LogNormal {
            mean: ms(30),
            cv: 1.0,
        },
        seed,
    );
    let log = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (b, log) = (b.clone(), Arc::clone(&log));
            tokio::spawn(async move {
                for _ in 0..25 {
                    let r = b.clone().oneshot(()).await.unwrap();
                    log.lock().unwrap().push((r.seq, r.latency()));
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    log.lock().unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn same_seed_same_latencies_other_seed_differs() {
    let a = closed_loop_run(11).await;
    let b = closed_loop_run(11).await;
    let c = closed_loop_run(12).await;
    assert_eq!(a.len(), 200);
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[tokio::test(start_paused = true)]
async fn schedule_applies_in_order_and_past_times_at_once() {
    let b = constant(10, ms(10));
    let sim = b.handle();
    sleep(Duration::from_secs(3)).await;
    sim.schedule([
        (Duration::from_secs(1), Change::Capacity(4)), // past: now
        (Duration::from_secs(5), Change::Capacity(5)),
        (Duration::from_secs(5), Change::Capacity(6)), // same time: later wins
        (
            Duration::from_secs(8),
            Change::Condition(Condition::DownFast),
        ),
    ])
    .unwrap();
    assert_eq!(sim.capacity(), 4);
    assert_eq!(sim.pending_changes(), 3);
    sleep_until(sim.origin() + Duration::from_secs(6)).await;
    assert_eq!(sim.capacity(), 6);
    sleep_until(sim.origin() + Duration::from_secs(8)).await;
    assert_eq!(sim.condition(), Condition::DownFast);
    assert_eq!(b.clone().oneshot(()).await, Err(SimError::Down));
    assert_eq!(sim.pending_changes(), 0);
}

#[test]
fn bad_settings_get_errors_naming_field_and_value() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let sim = constant(10, ms(10)).handle();
        let cases: Vec<(Result<(), SimConfigError>, &str, &str)> = vec![
            (
                sim.set_condition(Condition::Slow { factor: f64::NAN }),
                "condition.factor",
                "NaN",
            ),
            (
                sim.set_condition(Condition::Slow { factor: -2.0 }),
                "condition.factor",
                "-2",
            ),
            (
                sim.set_condition(Condition::Flapping {
                    period: Duration::ZERO,
                }),
                "condition.period",
                "0ns",
            ),
            (sim.set_capacity_fraction(-0.5), "capacity_fraction", "-0.5"),
            (
                sim.at(
                    Duration::from_secs(1),
                    Change::CapacityFraction(f64::INFINITY),
                ),
                "capacity_fraction",
                "inf",
            ),
            (sim.at(Duration::MAX, Change::Capacity(1)), "at", ""),
        ];
        for (result, field, value) in cases {
            let err = result.unwrap_err();
            let text = err.to_string();
            assert!(text.contains(field) && text.contains(value), "{text}");
        }
        // Nothing changed.
        assert_eq!(sim.condition(), Condition::Up);
        assert_eq!(sim.capacity(), 10);
        assert_eq!(sim.pending_changes(), 0);
    });

    let err = SimBackend::builder()
        .service_time(ServiceTime::LogNormal {
            mean: ms(10),
            cv: -1.0,
        })
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("service_time.cv"), "{err}");
    assert!(err.to_string().contains("-1"), "{err}");
    let err = SimBackend::builder()
        .condition(Condition::Slow { factor: 0.0 })
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("condition.factor"), "{err}");
}

#[test]
fn scheduling_outside_a_runtime_is_an_error_not_a_panic() {
    let b = constant(1, ms(1));
    let sim = b.handle();
    assert_eq!(
        sim.at(Duration::from_secs(1), Change::Capacity(2)),
        Err(SimConfigError::NoRuntime)
    );
    assert_eq!(sim.pending_changes(), 0);
    // A time already reached needs no runtime.
    sim.at(Duration::ZERO, Change::Capacity(3)).unwrap();
    assert_eq!(sim.capacity(), 3);
}

#[tokio::test(start_paused = true)]
async fn extreme_service_times_and_factors_do_not_panic() {
    let b = constant(1, Duration::MAX);
    let sim = b.handle();
    sim.set_condition(Condition::Slow { factor: 1e300 })
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(1), b.clone().oneshot(())).await;
    assert!(answer.is_err());
    assert_eq!(sim.stats().in_service, 0);
    assert_eq!(sim.stats().cancelled, 1);
}

#[test]
fn back_end_and_future_fit_tower_stacks() {
    fn service<S: Service<(), Error = SimError> + Clone + Send + Sync + 'static>(_: &S)
    where
        S::Future: Send + 'static,
    {
    }
    fn boxable<E: Into<tower::BoxError>>() {}
    service(&constant(1, ms(1)));
    boxable::<SimError>();
}

/// Mean and coefficient of variation of `draws`, in seconds.
fn mean_cv(draws: &[Duration]) -> (f64, f64) {
    let n = draws.len() as f64;
    let secs: Vec<f64> = draws.iter().map(Duration::as_secs_f64).collect();
    let mean = secs.iter().sum::<f64>() / n;
    let var = secs.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt() / mean)
}

#[test]
fn gamma_service_times_have_the_asked_mean_and_cv() {
    for cv in [0.5, 1.0, 2.0] {
        let st = ServiceTime::Gamma { mean: ms(400), cv };
        assert_eq!(st.mean(), ms(400));
        let draws = st.draws(5, 50_000).unwrap();
        assert_eq!(draws, st.draws(5, 50_000).unwrap(), "seeded");
        assert_ne!(
            draws[..100],
            st.draws(6, 100).unwrap()[..],
            "the seed matters"
        );
        let (mean, got_cv) = mean_cv(&draws);
        assert!((mean - 0.4).abs() < 0.4 * 0.03, "cv {cv}: mean {mean}");
        assert!((got_cv - cv).abs() < cv * 0.08, "cv {cv}: cv {got_cv}");
        // Whole milliseconds, never zero.
        assert!(draws.iter().all(|d| d.subsec_nanos() % 1_000_000 == 0));
        assert!(draws.iter().all(|d| *d >= ms(1)));
    }
    // cv 0 is a constant.
    let st = ServiceTime::Gamma {
        mean: ms(400),
        cv: 0.0,
    };
    assert_eq!(st.draws(1, 3).unwrap(), [ms(400); 3]);
}

#[test]
fn pareto_service_times_have_a_power_law_tail() {
    let alpha = 1.5;
    let st = ServiceTime::Pareto {
        mean: ms(300),
        alpha,
    };
    assert_eq!(st.mean(), ms(300));
    let draws = st.draws(9, 200_000).unwrap();
    assert_eq!(draws[..1000], st.draws(9, 1000).unwrap()[..], "seeded");
    // The smallest service time is mean × (alpha − 1) / alpha = 100 ms.
    let least = draws.iter().min().unwrap();
    assert_eq!(*least, ms(100));
    // P(X > x × 100 ms) = x^−alpha: 10^−1.5 ≈ 3.16% above 1 s, 0.1% above 10 s.
    let share =
        |at: Duration| draws.iter().filter(|d| **d > at).count() as f64 / draws.len() as f64;
    let above_1s = share(Duration::from_secs(1));
    assert!((above_1s - 0.0316).abs() < 0.0316 * 0.1, "{above_1s}");
    let above_10s = share(Duration::from_secs(10));
    assert!((above_10s - 0.001).abs() < 0.001 * 0.3, "{above_10s}");

    // With a lighter tail the sample mean settles on the mean.
    let st = ServiceTime::Pareto {
        mean: ms(300),
        alpha: 3.0,
    };
    let (mean, _) = mean_cv(&st.draws(9, 100_000).unwrap());
    assert!((mean - 0.3).abs() < 0.3 * 0.03, "{mean}");
}

#[test]
fn bad_gamma_and_pareto_settings_name_the_field() {
    let cases = [
        (
            ServiceTime::Gamma {
                mean: ms(10),
                cv: -1.0,
            },
            "service_time.cv",
            "-1",
        ),
        (
            ServiceTime::Gamma {
                mean: ms(10),
                cv: f64::INFINITY,
            },
            "service_time.cv",
            "inf",
        ),
        (
            ServiceTime::Pareto {
                mean: ms(10),
                alpha: 1.0,
            },
            "service_time.alpha",
            "1",
        ),
        (
            ServiceTime::Pareto {
                mean: ms(10),
                alpha: f64::NAN,
            },
            "service_time.alpha",
            "NaN",
        ),
    ];
    for (st, field, value) in cases {
        let err = SimBackend::builder().service_time(st).build().unwrap_err();
        let text = err.to_string();
        assert!(text.contains(field) && text.contains(value), "{text}");
        assert!(st.draws(1, 1).is_err());
    }
}

fn keep_working(capacity: usize, service: Duration) -> SimBackend {
    SimBackend::builder()
        .capacity(capacity)
        .service_time(ServiceTime::Constant(service))
        .abandoned(Abandoned::KeepWorking)
        .build()
        .expect("valid settings")
}

#[tokio::test(start_paused = true)]
async fn keep_working_holds_an_abandoned_call_s_slot_until_its_service_ends() {
    let b = keep_working(1, Duration::from_secs(10));
    let sim = b.handle();
    let first = tokio::time::timeout(Duration::from_secs(2), b.clone().oneshot(()));
    let second = tokio::spawn(b.clone().oneshot(()));
    assert!(first.await.is_err());
    // The caller left at 2 s; the back end still works on its call.
    let s = sim.stats();
    assert_eq!(
        (s.in_service, s.queued, s.cancelled, s.abandoned_working),
        (1, 1, 1, 1)
    );
    // Nothing else touches the back end: its own timer frees the slot at 10 s.
    let r = second.await.unwrap().unwrap();
    assert_eq!(r.queue_delay, Duration::from_secs(10));
    assert_eq!(r.latency(), Duration::from_secs(20));
    let s = sim.stats();
    assert_eq!(
        (
            s.started,
            s.served,
            s.cancelled,
            s.open(),
            s.in_service,
            s.abandoned_working
        ),
        (2, 1, 1, 0, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn keep_working_serves_an_abandoned_queued_call_in_its_turn() {
    let b = keep_working(1, Duration::from_secs(10));
    let sim = b.handle();
    let mut svc = b.clone();
    let a = tokio::spawn(svc.call(())); // in service 0..10 s
    let q = svc.call(()); // queued, abandoned at 1 s: served 10..20 s for nobody
    let c = tokio::spawn(svc.call(())); // queued behind q: 20..30 s
    settle().await;
    advance(Duration::from_secs(1)).await;
    drop(q);
    let s = sim.stats();
    assert_eq!(
        (s.in_service, s.queued, s.cancelled, s.abandoned_working),
        (1, 2, 1, 1)
    );
    assert_eq!(a.await.unwrap().unwrap().latency(), Duration::from_secs(10));
    settle().await;
    let s = sim.stats();
    assert_eq!((s.in_service, s.queued, s.abandoned_working), (1, 1, 1));
    let r = c.await.unwrap().unwrap();
    assert_eq!(r.queue_delay, Duration::from_secs(20));
    let s = sim.stats();
    assert_eq!(
        (
            s.started,
            s.served,
            s.cancelled,
            s.open(),
            s.abandoned_working
        ),
        (3, 2, 1, 0, 0)
    );
    assert_eq!(s.peak_in_service, 1, "never above the capacity");
}

#[tokio::test(start_paused = true)]
async fn keep_working_drops_abandoned_queued_calls_when_the_back_end_goes_down() {
    let b = keep_working(1, Duration::from_secs(10));
    let sim = b.handle();
    let mut svc = b.clone();
    let a = svc.call(()); // in service
    let q = svc.call(()); // queued
    drop(q);
    assert_eq!(sim.stats().abandoned_working, 1);
    sim.set_condition(Condition::DownFast).unwrap();
    // The queue empties; the call in service finishes as it started.
    let s = sim.stats();
    assert_eq!((s.queued, s.in_service, s.abandoned_working), (0, 1, 0));
    assert!(a.await.is_ok());
    assert_eq!(sim.stats().open(), 0);
}

#[tokio::test(start_paused = true)]
async fn by_default_an_abandoned_call_frees_its_slot_at_once() {
    let b = SimBackend::builder()
        .capacity(1)
        .service_time(ServiceTime::Constant(Duration::from_secs(10)))
        .abandoned(Abandoned::Free)
        .build()
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(2), b.clone().oneshot(()));
    let second = tokio::spawn(b.clone().oneshot(()));
    assert!(first.await.is_err());
    assert_eq!(b.handle().stats().abandoned_working, 0);
    let r = second.await.unwrap().unwrap();
    assert_eq!(r.queue_delay, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_scheduled_service_time_change_applies_to_later_calls() {
    let b = constant(4, ms(100));
    let sim = b.handle();
    sim.at(
        Duration::from_secs(1),
        ServiceTime::Pareto {
            mean: ms(300),
            alpha: 2.0,
        },
    )
    .unwrap();
    let before = b.clone().oneshot(()).await.unwrap();
    assert_eq!(before.service_time, ms(100));
    sleep_until(sim.origin() + Duration::from_secs(1)).await;
    // Pareto with mean 300 ms and alpha 2: never below 150 ms.
    for _ in 0..20 {
        let after = b.clone().oneshot(()).await.unwrap();
        assert!(after.service_time >= ms(150), "{after:?}");
    }
    let err = sim
        .apply(ServiceTime::Pareto {
            mean: ms(300),
            alpha: 0.5,
        })
        .unwrap_err();
    assert!(err.to_string().contains("service_time.alpha"), "{err}");
}
