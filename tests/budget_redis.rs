//! The budget shared through a real `redis-server` (feature `fleet`):
//! several replicas (each its own `Budget`) never admit more than the
//! declared capacity together and keep the urgent reserve; Redis killed
//! mid-test leaves each replica deciding alone from its share, and Redis
//! back is rejoined; a bad URL is an error at build, an unreachable server
//! a fallback at run time. Needs `redis-server` on the PATH (`.ci/run`
//! installs it); without it these tests fail, saying so.
//!
//! These tests talk to a real server, so they run in real time: a paused
//! clock would fire every Redis deadline at once. They assert counts, never
//! speed; the waits are bounded by generous deadlines.
#![cfg(feature = "fleet")]

#[path = "support/budget.rs"]
mod budget_support;
#[path = "support/redis.rs"]
mod redis_server;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use brownout::budget::{Budget, BudgetError};
use brownout::policy::{BudgetPolicy, BudgetStore};
use brownout::priority::Priority;
use brownout::{PriorityPolicy, Reason};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use redis_server::RedisServer;

const URGENT: Priority = Priority::new(0);
const NORMAL: Priority = Priority::new(1);

fn policy(url: &str, prefix: &str, capacity: u64) -> BudgetPolicy {
    BudgetPolicy {
        capacity,
        per: Duration::from_secs(3600),
        shares: [("urgent".to_owned(), 0.3)].into(),
        store: BudgetStore::Redis,
        url: url.to_owned(),
        key_prefix: prefix.to_owned(),
        // Generous: a loaded test machine must not fall back by accident.
        shared_timeout: Duration::from_secs(2),
        replicas: 4,
        ..BudgetPolicy::default()
    }
}

fn replicas(policy: &BudgetPolicy, n: usize) -> Vec<Budget> {
    (0..n)
        .map(|_| Budget::new(policy, &PriorityPolicy::default()).expect("a budget"))
        .collect()
}

/// Offers `n` requests per replica, one urgent in three, all replicas at
/// once; returns (admitted, urgent admitted, rejected).
async fn offer(budgets: &[Budget], n: usize) -> (u64, u64, u64) {
    let admitted = Arc::new(AtomicU64::new(0));
    let urgent = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = budgets
        .iter()
        .cloned()
        .map(|budget| {
            let (admitted, urgent, rejected) = (admitted.clone(), urgent.clone(), rejected.clone());
            tokio::spawn(async move {
                for i in 0..n {
                    let class = if i % 3 == 0 { URGENT } else { NORMAL };
                    let answer =
                        tokio::time::timeout(Duration::from_secs(10), budget.try_admit(class))
                            .await
                            .expect("an admission never hangs");
                    match answer {
                        Ok(()) => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                            if class == URGENT {
                                urgent.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(err) => {
                            assert_eq!(err.reason(), Reason::Budget);
                            assert!(err.retry_after().is_some());
                            rejected.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("no panic");
    }
    (
        admitted.load(Ordering::Relaxed),
        urgent.load(Ordering::Relaxed),
        rejected.load(Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_admit_exactly_the_capacity_and_keep_the_urgent_reserve() {
    let server = RedisServer::start();
    let budgets = replicas(&policy(&server.url(), "exact", 200), 4);
    // 4 × 150 = 600 requests, 200 of them urgent, for 200 units.
    let (admitted, urgent, rejected) = offer(&budgets, 150).await;
    assert_eq!(admitted + rejected, 600, "every request answered once");
    assert_eq!(admitted, 200, "the fleet admits exactly the capacity");
    assert!(urgent >= 60, "urgent got {urgent} of its 60 reserved units");
    // Nothing more, from any replica, in any class.
    for budget in &budgets {
        assert!(budget.try_admit(URGENT).await.is_err());
        assert!(budget.try_admit(NORMAL).await.is_err());
    }
    // Normal demand alone cannot take urgent's reserve.
    let budgets = replicas(&policy(&server.url(), "reserve", 100), 4);
    let mut normal = 0;
    for budget in &budgets {
        while budget.try_admit(NORMAL).await.is_ok() {
            normal += 1;
        }
    }
    assert_eq!(normal, 70);
    let mut urgent = 0;
    for budget in budgets.iter().rev() {
        while budget.try_admit(URGENT).await.is_ok() {
            urgent += 1;
        }
    }
    assert_eq!(urgent, 30);
}

/// A redis-server on a chosen port, without persistence: killed and
/// started again on the same port, it comes back empty.
struct Restartable {
    port: u16,
    child: Option<Child>,
}

impl Restartable {
    fn start(port: u16) -> Self {
        let mut server = Self { port, child: None };
        server.up();
        server
    }

    fn up(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH (.ci/run installs it)");
        self.child = Some(child);
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server listens"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Restartable {
    fn drop(&mut self) {
        self.kill();
    }
}

fn errors(
    snapshot: Vec<(
        metrics_util::CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )>,
) -> u64 {
    snapshot
        .into_iter()
        .filter(|(key, ..)| key.key().name() == brownout::metrics::SHARED_STATE_ERRORS_TOTAL)
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_falls_back_to_a_share_and_rejoins() {
    // A free port, then a server of our own on it.
    let port = {
        let probe = RedisServer::start();
        probe.port()
    };
    let mut server = Restartable::start(port);
    let url = format!("redis://127.0.0.1:{port}/");
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let mut policy = policy(&url, "killed", 400);
    policy.shared_timeout = Duration::from_millis(500);
    let budgets = metrics::with_local_recorder(&recorder, || replicas(&policy, 4));

    // 100 through Redis: 25 per replica.
    let (admitted, ..) = offer(&budgets, 25).await;
    assert_eq!(admitted, 100);
    assert_eq!(errors(snapshotter.snapshot().into_vec()), 0);

    server.kill();
    // Each replica now decides alone: its quarter of the 300 units left
    // (pools of 280/4 and 120/4, less its share of what the fleet used).
    let started = Instant::now();
    let (admitted, _, rejected) = offer(&budgets, 200).await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "nothing waits on a dead Redis"
    );
    assert_eq!(admitted + rejected, 800);
    // Each replica's quarter (100) less a quarter of the fleet's use as it
    // last saw it (25 of 100 when fresh, less when older): 300 with
    // fresh counts, a little more with stale ones, never the whole 400.
    assert!(
        (280..=320).contains(&admitted),
        "the fleet admitted {admitted} of 800 while Redis was down: each replica its share"
    );
    let seen = errors(snapshotter.snapshot().into_vec());
    assert!(seen >= 4, "each replica counted its failed call: {seen}");

    // Redis back (empty): the replicas rejoin once their retry comes, and
    // the units they admitted alone are counted there.
    server.up();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for budget in &budgets {
            let _ = budget.try_admit(URGENT).await;
        }
        let client = redis::Client::open(url.as_str()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let members: u64 = redis::cmd("ZCARD")
            .arg("killed:replicas")
            .query_async(&mut conn)
            .await
            .unwrap();
        if members == 4 {
            break;
        }
        assert!(Instant::now() < deadline, "the replicas rejoin Redis");
    }
    // Back on Redis, what they admitted alone counts: at most the
    // capacity overall, so at most 400 - (admitted alone) more.
    let (more, ..) = offer(&budgets, 200).await;
    eprintln!(
        "Redis down: {admitted} admitted alone, {seen} errors counted; rejoined: {more} more"
    );
    assert!(
        more + admitted <= 400,
        "after rejoining, {more} more on top of {admitted} admitted alone"
    );
}

#[tokio::test]
async fn a_bad_url_is_an_error_at_build_and_an_unreachable_server_a_fallback() {
    let err = Budget::new(
        &policy("redis://127.0.0.1:notaport/", "bad", 10),
        &PriorityPolicy::default(),
    )
    .unwrap_err();
    assert!(matches!(err, BudgetError::Url { .. }));
    assert!(
        err.to_string()
            .starts_with("budget.url: \"redis://127.0.0.1:notaport/\""),
        "{err}"
    );

    // Nothing listens on this port.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut policy = policy(&format!("redis://127.0.0.1:{port}/"), "unreachable", 40);
    policy.shared_timeout = Duration::from_millis(200);
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let budget = metrics::with_local_recorder(&recorder, || {
        Budget::new(&policy, &PriorityPolicy::default()).expect("built without connecting")
    });
    // Alone, a replica of four takes a quarter: 7 unreserved, 3 urgent.
    let mut normal = 0;
    while budget.try_admit(NORMAL).await.is_ok() {
        normal += 1;
        assert!(normal <= 40);
    }
    assert_eq!(normal, 7);
    let mut urgent = 0;
    while budget.try_admit(URGENT).await.is_ok() {
        urgent += 1;
        assert!(urgent <= 40);
    }
    assert_eq!(urgent, 3);
    assert_eq!(
        errors(snapshotter.snapshot().into_vec()),
        1,
        "one failed call, then local"
    );
}

/// The budget as ops write it, in the composed stack: four replicas, each
/// `BrownoutLayer::from_policy(&policy).http()` over the same `[budget]`
/// with `store = "redis"`, admit the capacity between them and answer the
/// rest `429`, the urgent reserve kept.
#[cfg(all(feature = "toml", feature = "http"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_stacks_from_one_policy_share_the_budget_through_redis() {
    use brownout::{BrownoutLayer, Policy};
    use http::{Request, Response, StatusCode};
    use tower::{Layer, ServiceExt};

    let server = RedisServer::start();
    let policy = Policy::from_toml(&format!(
        r#"
        [budget]
        capacity = 40
        per = "1h"
        shares = {{ urgent = 0.25 }}   # 10 units only urgent requests take
        store = "redis"
        url = {url:?}
        key_prefix = "brownout:stack-budget:{pid}"
        shared_timeout = "500ms"
        replicas = 4
        "#,
        url = server.url(),
        pid = std::process::id(),
    ))
    .unwrap();
    let stacks: Vec<_> = (0..4)
        .map(|_| {
            let layer = BrownoutLayer::try_from_policy(&policy).unwrap().http();
            layer.layer(tower::service_fn(|_: Request<String>| async {
                Ok::<_, std::convert::Infallible>(Response::new(String::from("booked")))
            }))
        })
        .collect();
    let send = |i: usize, class: &'static str| {
        let svc = stacks[i % 4].clone();
        async move {
            let req = Request::get("/bookings")
                .header("x-priority", class)
                .body(String::new())
                .unwrap();
            svc.oneshot(req).await.unwrap().status()
        }
    };
    let mut normal = [0u64; 2];
    for i in 0..60 {
        match send(i, "normal").await {
            StatusCode::OK => normal[0] += 1,
            StatusCode::TOO_MANY_REQUESTS => normal[1] += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        normal,
        [30, 30],
        "normal requests take the 30 unreserved units"
    );
    let mut urgent = [0u64; 2];
    for i in 0..20 {
        match send(i, "urgent").await {
            StatusCode::OK => urgent[0] += 1,
            StatusCode::TOO_MANY_REQUESTS => urgent[1] += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(urgent, [10, 10], "urgent requests take their reserve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unit_the_inner_stack_turns_away_goes_back_to_redis() {
    use brownout::Rejected;
    use tower::{Service, ServiceExt};

    let server = RedisServer::start();
    let budget = Budget::new(
        &policy(&server.url(), "refunds", 2),
        &PriorityPolicy::default(),
    )
    .expect("a budget");
    // Rank 2 is turned away further in (a shed): its unit was not used.
    let mut svc = budget_support::sheds_rank_two(&budget);
    let err = svc.ready().await.unwrap().call(2).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<Rejected>().unwrap().reason(),
        Reason::Shed
    );
    // Two units: the one given back and the other. (Kept by Redis, the
    // second of these would be over budget.)
    for _ in 0..2 {
        assert_eq!(svc.ready().await.unwrap().call(1).await.unwrap(), "served");
    }
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<Rejected>().unwrap().reason(),
        Reason::Budget
    );
}
