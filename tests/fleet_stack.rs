//! The fleet breaker inside the composed stack (feature `fleet`): four
//! replicas, each a `BrownoutLayer` built from one policy with `[fleet]`
//! over its own service, in front of one failing back end, sharing a real
//! `redis-server`. One replica's breaker opening opens all four within one
//! `open_for`; the fleet sends at most `half_open_probes` probes per open
//! period; a recovered back end closes all four; with Redis killed each
//! replica decides alone, and they share again once it is back. Needs
//! `redis-server` on the PATH (`.ci/run` installs it).
//!
//! Real time (Redis's deadlines cannot follow a paused clock): every wait
//! is a bounded poll, and the figures are printed.
#![cfg(all(feature = "fleet", feature = "toml"))]

#[path = "support/redis.rs"]
mod redis_server;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use brownout::{BreakerState, BrownoutLayer, Policy, Reason, Rejected};
use redis_server::RedisServer;
use tower::{BoxError, Layer, Service, ServiceExt};

const OPEN_FOR: Duration = Duration::from_secs(1);
const PROBES: usize = 3;

/// The back end every replica calls: up or down, and when each call
/// reached it.
#[derive(Clone)]
struct BackEnd {
    down: Arc<AtomicBool>,
    calls: Arc<Mutex<Vec<Instant>>>,
}

impl BackEnd {
    /// A back end that is up, or `down`.
    fn new(down: bool) -> Self {
        Self {
            down: Arc::new(AtomicBool::new(down)),
            calls: Arc::default(),
        }
    }

    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

impl Service<u32> for BackEnd {
    type Response = ();
    type Error = BoxError;
    type Future = std::future::Ready<Result<(), BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: u32) -> Self::Future {
        self.calls.lock().unwrap().push(Instant::now());
        if self.down.load(Ordering::Acquire) {
            std::future::ready(Err("back end down".into()))
        } else {
            std::future::ready(Ok(()))
        }
    }
}

fn policy(url: &str) -> Policy {
    policy_with(url, "")
}

/// The test's policy, with `fleet` added to its `[fleet]` section.
fn policy_with(url: &str, fleet: &str) -> Policy {
    Policy::from_toml(&format!(
        r#"
        [breaker]
        window = {{ kind = "count", size = 10 }}
        minimum_calls = 5
        failure_rate = 0.5
        open_for = "1s"
        open_backoff = {{ multiplier = 1.0, jitter = 0.0 }}
        half_open_probes = {PROBES}

        [waiting_room]
        capacity = 0   # an open breaker answers at once, not at its next probe

        [fleet]
        url = {url:?}
        shared_timeout = "200ms"
        {fleet}
        "#
    ))
    .expect("the test's policy")
}

struct Replica {
    layer: BrownoutLayer,
    back_end: BackEnd,
}

impl Replica {
    fn state(&self) -> Option<BreakerState> {
        self.layer.state("default")
    }

    /// One request through this replica: its [`answer`].
    async fn send(&self) -> Result<(), Reason> {
        answer(self.layer.layer(self.back_end.clone()).oneshot(0)).await
    }
}

/// A request's answer: served, or why not. A request that does not end
/// within five seconds fails the test: nothing may wait on Redis.
async fn answer(call: impl Future<Output = Result<(), BoxError>>) -> Result<(), Reason> {
    match tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("a request never hangs")
    {
        Ok(()) => Ok(()),
        Err(err) => Err(err
            .downcast_ref::<Rejected>()
            .map_or(Reason::Shed, Rejected::reason)),
    }
}

fn replicas(policy: &Policy, back_end: &BackEnd) -> Vec<Replica> {
    (0..4)
        .map(|_| {
            let layer = BrownoutLayer::try_from_policy(policy).expect("the stack builds");
            Replica {
                layer,
                back_end: back_end.clone(),
            }
        })
        .collect()
}

/// One request through each replica, served: each stack has seen the
/// route.
async fn see_route(fleet: &[Replica]) {
    for replica in fleet {
        assert_eq!(replica.send().await, Ok(()), "the route is seen");
    }
}

/// Whether `replica`'s breaker is open and answers `Open` without calling
/// the back end (a closed breaker that throttles answers some calls `Open`
/// too).
async fn answers_open(replica: &Replica, back_end: &BackEnd) -> bool {
    let before = back_end.calls();
    replica.send().await == Err(Reason::Open)
        && back_end.calls() == before
        && replica.state() == Some(BreakerState::Open)
}

/// Sends to `replica` until its own breaker opens (at most 100 requests).
async fn trip(replica: &Replica) {
    for _ in 0..100 {
        if replica.state() == Some(BreakerState::Open) {
            return;
        }
        let _ = replica.send().await;
    }
    panic!("the breaker did not open: {:?}", replica.state());
}

/// Polls every 10 ms until `done`, failing the test after `limit`; the time
/// it took.
async fn within(limit: Duration, what: &str, mut done: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if done().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_stacks_open_together_probe_once_per_period_close_together_and_outlive_redis() {
    let mut server = RedisServer::start();
    let back_end = BackEnd::new(false);
    let fleet = replicas(&policy(&server.url()), &back_end);
    see_route(&fleet).await;

    // Replica 0's breaker opens: every replica answers `Open` within one
    // open_for, without calling the back end.
    back_end.down.store(true, Ordering::Release);
    trip(&fleet[0]).await;
    let opened = within(OPEN_FOR, "the fleet opens", async || {
        let before = back_end.calls();
        let mut all = true;
        for replica in &fleet {
            // Open, not merely throttling: a closed breaker that throttles
            // also answers some calls `Open` without calling the back end.
            all &= replica.send().await == Err(Reason::Open)
                && replica.state() == Some(BreakerState::Open);
        }
        all && back_end.calls() == before
    })
    .await;
    eprintln!("all 4 replicas answer Open {opened:?} after replica 0's breaker opened");

    // Three open periods with the back end down, each replica sending 3
    // requests at once every 10 ms: in any one open period the back end
    // sees at most half_open_probes probes from the whole fleet.
    let start = back_end.calls();
    let until = Instant::now() + 3 * OPEN_FOR;
    while Instant::now() < until {
        let mut sends = tokio::task::JoinSet::new();
        for replica in &fleet {
            for _ in 0..PROBES {
                sends.spawn(replica.layer.layer(back_end.clone()).oneshot(0));
            }
        }
        sends.join_all().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let probes: Vec<Instant> = back_end.calls.lock().unwrap()[start..].to_vec();
    let most_in_a_period = probes
        .iter()
        .map(|&at| {
            probes
                .iter()
                .filter(|&&other| other >= at && other < at + OPEN_FOR * 9 / 10)
                .count()
        })
        .max()
        .unwrap_or(0);
    eprintln!(
        "{} probes reached the back end in 3 open periods across 4 replicas, at most {most_in_a_period} in one period",
        probes.len()
    );
    assert!(!probes.is_empty(), "the fleet probes");
    assert!(
        most_in_a_period <= PROBES,
        "{most_in_a_period} probes in one open period: the fleet sends at most {PROBES}"
    );

    // Back up: the lease holder's probe succeeds, and every replica closes.
    back_end.down.store(false, Ordering::Release);
    let closed = within(3 * OPEN_FOR, "the fleet closes", async || {
        let mut served = 0;
        for replica in &fleet {
            if replica.send().await.is_ok() {
                served += 1;
            }
        }
        served == fleet.len()
            && fleet
                .iter()
                .all(|r| r.state() == Some(BreakerState::Closed))
    })
    .await;
    eprintln!("all 4 replicas closed {closed:?} after the back end came back");

    // Redis killed while the fleet holds every replica open: no request
    // waits on it, and each replica probes and closes alone.
    back_end.down.store(true, Ordering::Release);
    trip(&fleet[1]).await;
    let states = || fleet.iter().map(Replica::state).collect::<Vec<_>>();
    let started = Instant::now();
    while states().iter().any(|s| *s != Some(BreakerState::Open)) {
        assert!(
            started.elapsed() < OPEN_FOR,
            "the fleet opens again: not within {OPEN_FOR:?}: {:?}",
            states()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.stop();
    back_end.down.store(false, Ordering::Release);
    let alone = within(3 * OPEN_FOR, "each replica closes alone", async || {
        let mut served = 0;
        for replica in &fleet {
            if replica.send().await.is_ok() {
                served += 1;
            }
        }
        served == fleet.len()
    })
    .await;
    eprintln!(
        "with Redis killed, all 4 replicas closed alone {alone:?} after the back end came back"
    );

    // Still without Redis: replica 1's breaker opening holds no other
    // replica open.
    back_end.down.store(true, Ordering::Release);
    trip(&fleet[1]).await;
    let calls = back_end.calls();
    // Long enough for several of the fleet's ticks (100 ms at most) to have
    // spread a verdict, were Redis up.
    tokio::time::sleep(OPEN_FOR / 2).await;
    assert_eq!(
        fleet[2].send().await,
        Err(Reason::Shed),
        "the back end's own error"
    );
    assert_eq!(
        back_end.calls(),
        calls + 1,
        "replica 2 calls the back end: alone"
    );

    // Redis back on the same port: the replicas share again. Replica 3's
    // breaker opens, and replica 2 follows it.
    server.restart();
    back_end.down.store(false, Ordering::Release);
    for replica in &fleet {
        let _ = within(5 * OPEN_FOR, "each replica serves again", async || {
            replica.send().await.is_ok() && replica.state() == Some(BreakerState::Closed)
        })
        .await;
    }
    back_end.down.store(true, Ordering::Release);
    trip(&fleet[3]).await;
    let rejoined = within(OPEN_FOR, "replica 2 follows replica 3 again", async || {
        answers_open(&fleet[2], &back_end).await
    })
    .await;
    eprintln!("after Redis restarted, replica 2 followed replica 3's verdict in {rejoined:?}");
}

#[test]
fn a_bad_fleet_url_is_an_error_naming_fleet_url() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let _inside = runtime.enter();
    // Not a Redis scheme (the section's validation), and a Redis scheme
    // the client cannot parse (the client's).
    for url in ["http://127.0.0.1:6379", "redis://127.0.0.1:notaport/"] {
        let mut policy = policy("redis://127.0.0.1:1/");
        if let Some(fleet) = policy.fleet.as_mut() {
            fleet.url = url.to_owned();
        }
        let err = BrownoutLayer::try_from_policy(&policy)
            .expect_err("a bad url")
            .to_string();
        assert!(err.starts_with(&format!("fleet.url: {url:?}")), "{err}");
    }
}

/// Without a runtime the background task cannot run: the strict build says
/// so, naming `fleet`; the lenient one serves, each breaker deciding alone.
#[test]
fn outside_a_runtime_the_strict_build_names_fleet_and_the_lenient_one_serves_alone() {
    let policy = policy("redis://127.0.0.1:1/");
    let err = BrownoutLayer::try_from_policy(&policy)
        .expect_err("no runtime")
        .to_string();
    assert!(err.starts_with("fleet: "), "{err}");
    assert!(err.contains("tokio runtime"), "{err}");

    let layer = BrownoutLayer::from_policy(&policy);
    let back_end = BackEnd::new(true);
    let replica = Replica { layer, back_end };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(trip(&replica));
    assert_eq!(
        runtime.block_on(replica.send()),
        Err(Reason::Open),
        "its own breaker decides"
    );
}

/// With `quorum = 2`, one replica's verdict leaves the others to their own
/// breakers; a second one opens them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_of_two_waits_for_a_second_verdict() {
    let server = RedisServer::start();
    let back_end = BackEnd::new(false);
    let fleet = replicas(&policy_with(&server.url(), "quorum = 2"), &back_end);
    see_route(&fleet).await;
    back_end.down.store(true, Ordering::Release);
    trip(&fleet[0]).await;
    // Long enough for several ticks (100 ms at most) to have spread the
    // verdict, were one enough.
    tokio::time::sleep(OPEN_FOR / 2).await;
    let calls = back_end.calls();
    assert_eq!(
        fleet[3].send().await,
        Err(Reason::Shed),
        "the back end's own error"
    );
    assert_eq!(
        back_end.calls(),
        calls + 1,
        "one verdict of two: replica 3 still calls"
    );
    trip(&fleet[1]).await;
    let opened = within(OPEN_FOR, "the quorum opens replica 3", async || {
        answers_open(&fleet[3], &back_end).await
    })
    .await;
    eprintln!("a quorum of 2 opened replica 3 {opened:?} after the second verdict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_on_one_redis_keep_apart_by_their_key_prefix() {
    let server = RedisServer::start();
    let back_end = BackEnd::new(false);
    // Two replicas of service A and one of service B, every one with the
    // one route `default`, on the same Redis.
    let a = replicas(
        &policy_with(&server.url(), "key_prefix = \"svc-a\""),
        &back_end,
    );
    let b = replicas(
        &policy_with(&server.url(), "key_prefix = \"svc-b\""),
        &back_end,
    );
    see_route(&a).await;
    see_route(&b).await;
    back_end.down.store(true, Ordering::Release);
    trip(&a[0]).await;
    let opened = within(
        OPEN_FOR,
        "A's other replica follows A's verdict",
        async || answers_open(&a[1], &back_end).await,
    )
    .await;
    eprintln!("service A's replica 1 opened {opened:?} after replica 0's verdict");
    // Long enough for several ticks (100 ms at most) to have spread the
    // verdict to B too, were the prefixes not kept apart.
    tokio::time::sleep(OPEN_FOR / 2).await;
    let calls = back_end.calls();
    assert_eq!(
        b[0].send().await,
        Err(Reason::Shed),
        "the back end's own error"
    );
    assert_eq!(
        back_end.calls(),
        calls + 1,
        "service B still calls its back end"
    );
    assert_eq!(b[0].state(), Some(BreakerState::Closed));
}

#[test]
fn an_empty_key_prefix_is_an_error_naming_fleet_key_prefix() {
    let err = Policy::from_toml("[fleet]\nkey_prefix = \"\"\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "fleet.key_prefix: \"\" is empty: the fleet's Redis keys need a prefix (the default is \"brownout:fleet\")"
    );
}

/// Request 0 is for `/a`, any other for `/b`.
fn route_of(req: &u32) -> Option<&str> {
    Some(if *req == 0 { "/a" } else { "/b" })
}

/// A route first seen after the stack started is shared as soon as the
/// stack sees it, and a verdict on one route leaves the others alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_first_seen_later_is_shared_on_its_own() {
    let server = RedisServer::start();
    let back_end = BackEnd::new(false);
    type ByRequest = brownout::stack::RouteFn<fn(&u32) -> Option<&str>>;
    let by_request: ByRequest = brownout::stack::route_fn(route_of);
    let layers: Vec<BrownoutLayer<brownout::fallback::RejectAsError, ByRequest>> = (0..2)
        .map(|_| {
            BrownoutLayer::try_from_policy(&policy(&server.url()))
                .expect("the stack builds")
                .route_by(by_request)
        })
        .collect();
    let send = async |layer: &BrownoutLayer<brownout::fallback::RejectAsError, ByRequest>,
                      req: u32| {
        answer(layer.layer(back_end.clone()).oneshot(req)).await
    };
    for layer in &layers {
        assert_eq!(send(layer, 0).await, Ok(()), "/a is seen");
    }
    // The stacks' tasks run a while with /a alone.
    tokio::time::sleep(OPEN_FOR / 2).await;

    back_end.down.store(true, Ordering::Release);
    for _ in 0..100 {
        if layers[0].state("/b") == Some(BreakerState::Open) {
            break;
        }
        let _ = send(&layers[0], 1).await;
    }
    assert_eq!(layers[0].state("/b"), Some(BreakerState::Open));
    // Replica 1 first sees /b now: its first request reaches the back end,
    // and the fleet's verdict holds the next ones.
    assert_eq!(layers[1].state("/b"), None, "replica 1 has not seen /b");
    let followed = within(OPEN_FOR, "replica 1 follows on /b", async || {
        let before = back_end.calls();
        send(&layers[1], 1).await == Err(Reason::Open) && back_end.calls() == before
    })
    .await;
    eprintln!("replica 1 followed on /b, first seen then, in {followed:?}");
    assert_eq!(
        layers[1].state("/a"),
        Some(BreakerState::Closed),
        "a verdict on /b leaves /a alone"
    );
}
