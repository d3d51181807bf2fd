//! What a resilience layer costs per request, against a bare service and
//! against other crates' breakers.
//!
//! `cargo bench --bench overhead` runs four groups:
//!
//! - `overhead`: one service, one request at a time (`ready().await` then
//!   `call(..).await`) on a current-thread runtime. Criterion's time per
//!   iteration is the time per request.
//! - `overhead_contended`: 64 tasks on a 2-worker multi-thread runtime, each
//!   with a clone of one service (so they share its state), each sending
//!   [`PER_TASK`] requests. One iteration is one such round; criterion reports
//!   the throughput in requests per second.
//!
//! - `waiting_room`: enqueue and release per waiter, behind a limit of one.
//! - `axum`: a request through an axum `Router`, with and without the
//!   HTTP stack.
//!
//! `brownout_budget_local` and `brownout_budget_redis` are the composed
//! stack behind a `BudgetLayer`, its counts in this process or in a
//! loopback Redis (feature `fleet`, `redis-server` on the PATH: one script
//! per request, so its time is a Redis round trip).
//!
//! `bare_boxed_reject` is the floor of a fast-fail: a service that answers
//! every request with a boxed `Rejected`, as an open breaker does.
//!
//! Every inner service answers at once, so what is measured is the layer's
//! own work: admission, the future's state machine and the outcome record.
//!
//! The sequential loop uses `iter_custom`: one `block_on` per sample that runs
//! all its requests and reads the clock around the loop only, so neither
//! entering the runtime nor reading `Instant::now()` is charged to a request.
//! With `BROWNOUT_BENCH_CPU=1` it reads the thread's CPU time instead of
//! wall time: steadier on a machine shared with other work.
//! `BROWNOUT_BENCH_PROFILE=NAME:N` runs no bench: it sends `N` requests
//! through one service of the sequential group, for callgrind (see
//! [`profile`]).
//! Requests and answers go through `black_box` so that nothing is folded
//! away.

use std::convert::Infallible;
use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use brownout::policy::Algorithm;
use brownout::{
    AdaptiveLimitLayer, BackoffPolicy, BreakerPolicy, BreakerState, BrownoutLayer,
    CircuitBreakerLayer, LimitPolicy, Mode, Policy, WaitingRoomLayer, WaitingRoomPolicy,
};
use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, measurement::WallTime,
};
use tokio::runtime::{Builder, Runtime};
use tower::{BoxError, Layer, Service, ServiceBuilder, ServiceExt};

/// Tasks of the contended group.
const TASKS: u64 = 64;
/// Requests each task sends per round of the contended group.
const PER_TASK: u64 = 1_000;

/// The service every layer wraps: answers its request at once.
fn bare()
-> impl Service<u64, Response = u64, Error = Infallible, Future: Send> + Clone + Send + 'static {
    tower::service_fn(|x: u64| async move { Ok::<_, Infallible>(x) })
}

/// The floor of any fast-fail under tower's `Error = BoxError` convention: a
/// service that answers every request with a boxed `Rejected` at once (one
/// allocation and one free per request, as brownout's open breaker).
fn bare_boxed_reject()
-> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send + 'static {
    tower::service_fn(|_: u64| async move {
        Err::<u64, BoxError>(brownout::Rejected::new(brownout::Reason::Open).into())
    })
}

/// tower's own overload protection, as the drill's baseline uses it.
fn tower_shed_limit()
-> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send + 'static {
    ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(1024)
        .service(bare())
}

/// tower-resilience's circuit breaker with its default configuration.
fn tower_resilience_breaker()
-> impl Service<u64, Response = u64, Error: Send, Future: Send> + Clone + Send + 'static {
    tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .build()
        .expect("the default tower-resilience config builds")
        .layer(bare())
}

/// failsafe's default breaker around the inner call, through its futures API
/// (failsafe has no tower layer, so this is the thinnest adapter).
#[derive(Clone)]
struct Failsafe<S, B> {
    inner: S,
    breaker: B,
}

impl<S, B> Service<u64> for Failsafe<S, B>
where
    S: Service<u64, Response = u64, Error = Infallible>,
    B: failsafe::futures::CircuitBreaker,
{
    type Response = u64;
    type Error = failsafe::Error<Infallible>;
    type Future = failsafe::futures::ResponseFuture<
        S::Future,
        B::FailurePolicy,
        B::Instrument,
        failsafe::Any,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(failsafe::Error::Inner)
    }

    fn call(&mut self, req: u64) -> Self::Future {
        self.breaker.call(self.inner.call(req))
    }
}

fn failsafe_breaker()
-> impl Service<u64, Response = u64, Error: Send, Future: Send> + Clone + Send + 'static {
    Failsafe {
        inner: bare(),
        breaker: failsafe::Config::new().build(),
    }
}

/// brownout's breaker with the default policy (closed; slow-call detection
/// on, as by default).
fn brownout_breaker_closed()
-> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send + 'static {
    let layer = CircuitBreakerLayer::new(BreakerPolicy::default());
    assert_eq!(layer.state(), BreakerState::Closed);
    layer.layer(bare())
}

/// brownout's breaker forced open by its policy's mode.
fn brownout_breaker_open()
-> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send + 'static {
    let layer = CircuitBreakerLayer::new(BreakerPolicy {
        mode: Mode::ForcedOpen,
        ..BreakerPolicy::default()
    });
    assert_eq!(layer.state(), BreakerState::ForcedOpen);
    layer.layer(bare())
}

/// brownout's breaker opened by real failures, for an hour: the fast-fail
/// reads the open period and computes the `Retry-After` hint.
fn brownout_breaker_open_tripped()
-> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send + 'static {
    let hour = Duration::from_secs(3600);
    let policy = BreakerPolicy {
        open_for: hour,
        open_backoff: BackoffPolicy {
            max: hour,
            ..BackoffPolicy::default()
        },
        ..BreakerPolicy::default()
    };
    let minimum_calls = policy.minimum_calls;
    let layer = CircuitBreakerLayer::new(policy);
    // The same layer, hence the same breaker, in front of a failing back end.
    let mut failing = layer.layer(tower::service_fn(|_: u64| async {
        Err::<u64, _>(std::io::Error::other("back end down"))
    }));
    let rt = Builder::new_current_thread().build().expect("a runtime");
    rt.block_on(async {
        for i in 0..u64::from(minimum_calls) {
            let ready = failing.ready().await.expect("the breaker is ready");
            assert!(ready.call(i).await.is_err());
        }
    });
    assert_eq!(layer.state(), BreakerState::Open, "the failures trip it");
    layer.layer(bare())
}

/// A limit high enough never to shed in the bench: what is measured is the
/// admission itself (one compare-exchange in, one sample out).
fn roomy_limit() -> LimitPolicy {
    LimitPolicy {
        initial: 1000,
        max: 1000,
        ..LimitPolicy::default()
    }
}

/// brownout's adaptive limit alone (gradient).
fn brownout_limit()
-> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send + 'static {
    AdaptiveLimitLayer::new(roomy_limit()).layer(bare())
}

/// brownout's breaker in front of its limit, as two layers.
fn brownout_breaker_limit()
-> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send + 'static {
    ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(BreakerPolicy::default()))
        .layer(AdaptiveLimitLayer::new(roomy_limit()))
        .service(bare())
}

/// The waiting room with its breaker and limit, empty: one gate, and one
/// atomic load more than the breaker and the limit.
fn brownout_waiting_room_empty()
-> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send + 'static {
    WaitingRoomLayer::new(WaitingRoomPolicy::default())
        .breaker(BreakerPolicy::default())
        .limit(roomy_limit())
        .layer(bare())
}

/// The composed stack from a policy: route lookup, breaker, limit, empty
/// room, metrics handles (no recorder), rejections as errors.
fn brownout_stack()
-> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send + 'static {
    let policy = Policy {
        limit: roomy_limit(),
        ..Policy::default()
    };
    BrownoutLayer::from_policy(&policy).layer(bare())
}

/// A budget no bench exhausts (2^31 admissions a second, 30% kept for
/// urgent requests; these are of the default class).
fn roomy_budget(store: brownout::policy::BudgetStore, url: &str) -> brownout::policy::BudgetPolicy {
    brownout::policy::BudgetPolicy {
        capacity: brownout::policy::BudgetPolicy::MAX_CAPACITY,
        per: Duration::from_secs(1),
        shares: [("urgent".to_owned(), 0.3)].into(),
        store,
        url: url.to_owned(),
        key_prefix: "bench:budget".to_owned(),
        shared_timeout: Duration::from_millis(50),
        ..brownout::policy::BudgetPolicy::default()
    }
}

/// The composed stack behind a local budget (`BudgetLayer`, lock-free
/// pools in this process).
fn brownout_budget_local()
-> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send + 'static {
    let budget = brownout::budget::Budget::new(
        &roomy_budget(brownout::policy::BudgetStore::Local, ""),
        &Default::default(),
    )
    .expect("a budget");
    ServiceBuilder::new()
        .layer(brownout::budget::BudgetLayer::new(budget))
        .service(brownout_stack())
}

/// The composed stack behind a budget shared through a loopback Redis
/// (one script per admission); `None` without `redis-server` on the PATH.
#[cfg(feature = "fleet")]
fn brownout_budget_redis(
    url: &str,
) -> impl Service<u64, Response = u64, Error = BoxError, Future: Send> + Clone + Send + 'static {
    let budget = brownout::budget::Budget::new(
        &roomy_budget(brownout::policy::BudgetStore::Redis, url),
        &Default::default(),
    )
    .expect("a budget");
    ServiceBuilder::new()
        .layer(brownout::budget::BudgetLayer::new(budget))
        .service(brownout_stack())
}

/// A redis-server on a free loopback port for the Redis budget's bench,
/// killed when dropped.
#[cfg(feature = "fleet")]
struct BenchRedis(std::process::Child, u16);

#[cfg(feature = "fleet")]
impl BenchRedis {
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .ok()?
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Self(child, port))
    }
}

#[cfg(feature = "fleet")]
impl Drop for BenchRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `n` requests one after the other, as a tower user does.
async fn drive<S>(svc: &mut S, first: u64, n: u64)
where
    S: Service<u64>,
{
    for i in first..first + n {
        // `ready` forwards `poll_ready`; none of these services ever errs there.
        let ready = match svc.ready().await {
            Ok(ready) => ready,
            Err(_) => panic!("poll_ready failed"),
        };
        let answer = ready.call(black_box(i)).await;
        black_box(answer.is_ok());
        drop(black_box(answer));
    }
}

/// The CPU time of the calling thread so far.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill in.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Whether the sequential group counts the thread's CPU time rather than
/// wall time (`BROWNOUT_BENCH_CPU=1`): on a machine shared with other work,
/// wall time also counts the time the thread waited for a core, which
/// swings from run to run.
fn cpu_time() -> bool {
    std::env::var_os("BROWNOUT_BENCH_CPU").is_some_and(|v| v == "1")
}

fn sequential<S>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, rt: &Runtime, mut svc: S)
where
    S: Service<u64>,
{
    let cpu = cpu_time();
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                if cpu {
                    let start = thread_cpu_time();
                    drive(&mut svc, 0, iters).await;
                    return thread_cpu_time().saturating_sub(start);
                }
                let start = Instant::now();
                drive(&mut svc, 0, iters).await;
                start.elapsed()
            })
        });
    });
}

/// The CPU time of the whole process so far (the contended group's two
/// workers, with `BROWNOUT_BENCH_CPU=1`).
fn process_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill in.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// With `BROWNOUT_BENCH_CPU=1` a contended round is timed in the CPU time
/// of the whole process (both workers, cache-line transfers included),
/// about twice the wall time of a round on two idle cores.
fn contended<S>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, rt: &Runtime, svc: S)
where
    S: Service<u64, Future: Send> + Clone + Send + 'static,
{
    let cpu = cpu_time();
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let (wall, cpu_start) = (Instant::now(), process_cpu_time());
            for _ in 0..iters {
                rt.block_on(round(&svc));
            }
            if cpu {
                process_cpu_time().saturating_sub(cpu_start)
            } else {
                wall.elapsed()
            }
        });
    });
}

/// One round of the contended group: every task sends its requests through
/// its own clone of `svc`.
async fn round<S>(svc: &S)
where
    S: Service<u64, Future: Send> + Clone + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let mut svc = svc.clone();
        tasks.spawn(async move { drive(&mut svc, t * PER_TASK, PER_TASK).await });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("a bench task panicked");
    }
}

fn overhead(c: &mut Criterion) {
    let rt = Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("overhead");
    group.throughput(Throughput::Elements(1));
    sequential(&mut group, "bare", &rt, bare());
    sequential(&mut group, "bare_boxed_reject", &rt, bare_boxed_reject());
    sequential(&mut group, "tower_shed_limit", &rt, tower_shed_limit());
    sequential(
        &mut group,
        "tower_resilience_breaker",
        &rt,
        tower_resilience_breaker(),
    );
    sequential(&mut group, "failsafe_breaker", &rt, failsafe_breaker());
    sequential(
        &mut group,
        "brownout_breaker_closed",
        &rt,
        brownout_breaker_closed(),
    );
    sequential(
        &mut group,
        "brownout_breaker_open",
        &rt,
        brownout_breaker_open(),
    );
    sequential(
        &mut group,
        "brownout_breaker_open_tripped",
        &rt,
        brownout_breaker_open_tripped(),
    );
    sequential(&mut group, "brownout_limit", &rt, brownout_limit());
    sequential(
        &mut group,
        "brownout_breaker_limit",
        &rt,
        brownout_breaker_limit(),
    );
    sequential(
        &mut group,
        "brownout_waiting_room_empty",
        &rt,
        brownout_waiting_room_empty(),
    );
    sequential(&mut group, "brownout_stack", &rt, brownout_stack());
    sequential(
        &mut group,
        "brownout_budget_local",
        &rt,
        brownout_budget_local(),
    );
    #[cfg(feature = "fleet")]
    match BenchRedis::start() {
        Some(redis) => {
            let url = format!("redis://127.0.0.1:{}/", redis.1);
            sequential(
                &mut group,
                "brownout_budget_redis",
                &rt,
                brownout_budget_redis(&url),
            );
        }
        None => eprintln!("brownout_budget_redis: skipped, no redis-server on the PATH"),
    }
    group.finish();
}

fn overhead_contended(c: &mut Criterion) {
    let rt = Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("overhead_contended");
    group.throughput(Throughput::Elements(TASKS * PER_TASK));
    // A round takes milliseconds: flat sampling with fewer samples keeps the
    // group within its measurement time.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(20);
    contended(&mut group, "bare", &rt, bare());
    contended(&mut group, "bare_boxed_reject", &rt, bare_boxed_reject());
    contended(&mut group, "tower_shed_limit", &rt, tower_shed_limit());
    contended(
        &mut group,
        "tower_resilience_breaker",
        &rt,
        tower_resilience_breaker(),
    );
    contended(&mut group, "failsafe_breaker", &rt, failsafe_breaker());
    contended(
        &mut group,
        "brownout_breaker_closed",
        &rt,
        brownout_breaker_closed(),
    );
    contended(
        &mut group,
        "brownout_breaker_open",
        &rt,
        brownout_breaker_open(),
    );
    contended(
        &mut group,
        "brownout_breaker_open_tripped",
        &rt,
        brownout_breaker_open_tripped(),
    );
    contended(&mut group, "brownout_limit", &rt, brownout_limit());
    contended(
        &mut group,
        "brownout_breaker_limit",
        &rt,
        brownout_breaker_limit(),
    );
    contended(
        &mut group,
        "brownout_waiting_room_empty",
        &rt,
        brownout_waiting_room_empty(),
    );
    contended(&mut group, "brownout_stack", &rt, brownout_stack());
    group.finish();
}

/// An axum request through a `Router`, with and without the HTTP stack
/// (`route_layer(BrownoutLayer::from_policy(..).http())`), to show the
/// stack's cost beside axum's own.
fn axum(c: &mut Criterion) {
    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use http::Request;

    let rt = Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("axum");
    group.throughput(Throughput::Elements(1));
    let policy = Policy {
        limit: roomy_limit(),
        ..Policy::default()
    };
    let plain: Router = Router::new().route("/slots", get(|| async { "slots" }));
    let protected: Router = rt.block_on(async {
        Router::new()
            .route("/slots", get(|| async { "slots" }))
            .route_layer(BrownoutLayer::from_policy(&policy).http())
    });
    for (name, router) in [("router", plain), ("router_brownout", protected)] {
        // `with_state` turns handlers into routes once, as `axum::serve`
        // does; without it every request would build its route (and apply
        // the layers) again.
        let mut svc = router.with_state(()).into_service::<Body>();
        group.bench_function(name, |b| {
            b.iter_custom(|n| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..n {
                        let request = Request::get("/slots")
                            .body(Body::empty())
                            .expect("a request");
                        let ready = ServiceExt::<Request<Body>>::ready(&mut svc)
                            .await
                            .expect("always ready");
                        black_box(ready.call(black_box(request)).await.expect("infallible"));
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

/// Waiters per round of the waiting-room group.
const WAITERS: u64 = 1000;

/// Enqueue and release: behind a limit of one, `WAITERS` calls take a place
/// in the room, then each finished call hands its permit to the next.
/// Reported per waiter.
fn waiting_room(c: &mut Criterion) {
    let rt = Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut group = c.benchmark_group("waiting_room");
    group.throughput(Throughput::Elements(WAITERS));
    let one_at_a_time = LimitPolicy {
        algorithm: Algorithm::Fixed,
        initial: 1,
        ..LimitPolicy::default()
    };
    let room = WaitingRoomPolicy {
        capacity: WAITERS as u32,
        ..WaitingRoomPolicy::default()
    };
    let layer = rt.block_on(async { WaitingRoomLayer::new(room).limit(one_at_a_time) });
    let mut svc = layer.layer(bare());
    group.bench_function("enqueue_release", |b| {
        b.iter_custom(|rounds| {
            rt.block_on(async {
                let start = Instant::now();
                let mut calls = Vec::with_capacity(WAITERS as usize);
                for _ in 0..rounds {
                    calls.clear();
                    for i in 0..WAITERS {
                        let ready = svc.ready().await.expect("always ready");
                        calls.push(ready.call(black_box(i)));
                    }
                    for call in calls.drain(..) {
                        black_box(call.await.expect("served"));
                    }
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .without_plots();
    targets = overhead, overhead_contended, waiting_room, axum
}

/// `BROWNOUT_BENCH_PROFILE=NAME:N`: sends exactly `N` requests, one at a
/// time, through the sequential group's service `NAME`, and exits, for an
/// instruction count under `valgrind --tool=callgrind`. Two runs with
/// different `N` give the cost of one request, setup excluded:
/// `(Ir(N2) - Ir(N1)) / (N2 - N1)`. Instruction counts do not move with
/// whatever else the machine runs, as wall and CPU time do.
fn profile(spec: &str) {
    let (name, n) = spec
        .split_once(':')
        .and_then(|(name, n)| Some((name, n.parse::<u64>().ok()?)))
        .expect("BROWNOUT_BENCH_PROFILE=NAME:N");
    let rt = Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    macro_rules! run {
        ($svc:expr) => {{
            let mut svc = $svc;
            rt.block_on(drive(&mut svc, 0, n))
        }};
    }
    match name {
        "bare" => run!(bare()),
        "bare_boxed_reject" => run!(bare_boxed_reject()),
        "tower_shed_limit" => run!(tower_shed_limit()),
        "brownout_breaker_closed" => run!(brownout_breaker_closed()),
        "brownout_breaker_open" => run!(brownout_breaker_open()),
        "brownout_breaker_open_tripped" => run!(brownout_breaker_open_tripped()),
        "brownout_limit" => run!(brownout_limit()),
        "brownout_breaker_limit" => run!(brownout_breaker_limit()),
        "brownout_waiting_room_empty" => run!(brownout_waiting_room_empty()),
        "brownout_stack" => run!(brownout_stack()),
        "brownout_budget_local" => run!(brownout_budget_local()),
        _ => panic!("no sequential bench named {name:?}"),
    }
}

fn main() {
    if let Some(spec) = std::env::var_os("BROWNOUT_BENCH_PROFILE") {
        profile(spec.to_str().expect("BROWNOUT_BENCH_PROFILE is UTF-8"));
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
