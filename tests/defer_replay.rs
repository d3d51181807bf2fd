//! Draining a backlog at the back end's capacity, in virtual time: a
//! simulated back end of capacity 10 and 100 ms per call (100 calls a
//! second), a fixed limit of 10 in front of it, and a backlog deferred
//! while the breaker was forced open. Once it is back, the replayer must
//! use the capacity (at least 95% of it), keep the back end within its
//! limit, and serve every class before the next; with live traffic, it
//! keeps to its share and live requests still get theirs.
#![cfg(all(feature = "defer", feature = "sim", feature = "toml"))]

#[path = "support/tempdir.rs"]
mod tempdir;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use brownout::defer::{Deferred, Load, MIN_BACKOFF};
use brownout::fallback::RejectAsError;
use brownout::priority::Priority;
use brownout::sim::{ServiceTime, SimBackend};
use brownout::{BrownoutLayer, Mode, Policy};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{BoxError, Layer, ServiceExt};

use tempdir::TempDir;

const BACKLOG: usize = 600;
const CAPACITY: usize = 10;
const SERVICE: Duration = Duration::from_millis(100);

#[tokio::test(start_paused = true)]
async fn a_backlog_drains_at_capacity_within_the_limit_most_important_first() {
    // Every class may use the whole limit: the backlog drains at capacity.
    let ideal = SERVICE * (BACKLOG / CAPACITY) as u32;
    drain(0.0, ideal).await;
}

#[tokio::test(start_paused = true)]
async fn with_the_limits_reserve_each_class_drains_at_what_it_may_use() {
    // The default reserve keeps 20% of the limit for more important
    // classes: urgent may use 10 slots, normal 9, bulk 8, a third each.
    let third = (BACKLOG / 3) as f64 * SERVICE.as_secs_f64();
    let ideal = Duration::from_secs_f64(third / 10.0 + third / 9.0 + third / 8.0);
    drain(0.2, ideal).await;
}

async fn drain(reserve: f64, ideal: Duration) {
    let dir = TempDir::new("defer-drain");
    let policy = Policy::from_toml(&format!(
        r#"
        [breaker]
        mode = "forced_open"

        [routes."/applications".limit]
        algorithm = "fixed"
        initial = {CAPACITY}
        min = 1
        max = {CAPACITY}
        reserve = {reserve:?}

        [routes."/applications".defer]
        path = {:?}
        max_pending = 1000000
        "#,
        dir.path().join("store").display().to_string()
    ))
    .unwrap();
    let deferral = brownout::defer::Deferral::open(&policy).await.unwrap();
    let route = deferral.route("/applications").unwrap();
    let store = route.store().clone();

    // The backlog, straight into the store: a third per class, mixed.
    for i in 0..BACKLOG {
        let request = Deferred {
            priority: (i % 3) as u8,
            method: "POST".into(),
            uri: "/applications".into(),
            headers: vec![],
            body: Bytes::from(format!("{i}")),
            arrived: store.now(),
            idempotency_key: None,
        };
        store.append(request).await.unwrap();
    }

    let sim = SimBackend::builder()
        .capacity(CAPACITY)
        .service_time(ServiceTime::Constant(SERVICE))
        .seed(1)
        .build()
        .unwrap();
    let handle = sim.handle();
    let order: Arc<Mutex<Vec<(u8, usize)>>> = Arc::default();
    let backend = {
        let order = order.clone();
        tower::service_fn(move |req: Request<Full<Bytes>>| {
            let sim = sim.clone();
            let order = order.clone();
            async move {
                let rank = req.extensions().get::<Priority>().unwrap().rank();
                let body = req.into_body().collect_bytes().await;
                let n: usize = String::from_utf8(body.to_vec()).unwrap().parse().unwrap();
                order.lock().unwrap().push((rank, n));
                sim.oneshot(()).await.map_err(BoxError::from)?;
                Ok::<_, BoxError>(Response::new(Full::<Bytes>::from("ok")))
            }
        })
    };
    let layer = BrownoutLayer::from_policy(&policy).http();
    let replay = layer.clone().fallback(RejectAsError).layer(backend);
    let replayer = deferral.replay(route, replay, Load::of(&layer, "/applications"));

    // Back: the breaker follows the policy.
    let mut up = policy.clone();
    up.breaker.mode = Mode::Enforce;
    layer.handle().apply(up).unwrap();
    let start = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if store.pending().await.unwrap().iter().sum::<u64>() == 0 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(600), "not drained");
    }
    let elapsed = start.elapsed();
    replayer.stop().await;

    let stats = handle.stats();
    assert_eq!(stats.served as usize, BACKLOG);
    assert!(stats.peak_in_service <= CAPACITY, "{stats:?}");
    assert!(
        stats.peak_concurrent <= CAPACITY,
        "never past the limit: {stats:?}"
    );
    let share = ideal.as_secs_f64() / elapsed.as_secs_f64();
    println!(
        "reserve {reserve}: drained {BACKLOG} in {elapsed:?} (ideal {ideal:?}): {:.1}% of what the limit allows",
        share * 100.0
    );
    // `elapsed` is sampled every 100 ms: allow that.
    assert!(
        elapsed <= ideal.mul_f64(1.0 / 0.95) + Duration::from_millis(100),
        "{elapsed:?} for {ideal:?} at capacity"
    );
    let order = order.lock().unwrap().clone();
    assert!(
        order.windows(2).all(|w| w[0].0 <= w[1].0),
        "every class before the next"
    );
    for class in 0..3u8 {
        let within: Vec<usize> = order
            .iter()
            .filter(|(r, _)| *r == class)
            .map(|(_, n)| *n)
            .collect();
        assert!(
            within.windows(2).all(|w| w[0] < w[1]),
            "oldest first in {class}"
        );
    }
}

/// While the breaker stays open the replayer probes with one replay at a
/// time: after the first replay is turned away, no two replays reach the
/// stack at the same instant (before, every pause sent a whole budget into
/// the open breaker, each put back). Once a probe is served the backlog
/// drains at the full limit again, every request sent to the back end
/// once, most important class first, oldest first.
#[tokio::test(start_paused = true)]
async fn an_open_breaker_sees_one_replay_at_a_time_and_none_is_lost() {
    const OUTAGE: Duration = Duration::from_secs(120);
    const N: usize = 60;
    let dir = TempDir::new("defer-probe");
    let policy = Policy::from_toml(&format!(
        r#"
        [breaker]
        mode = "forced_open"

        [routes."/applications".limit]
        algorithm = "fixed"
        initial = {CAPACITY}
        min = 1
        max = {CAPACITY}
        reserve = 0.0

        [routes."/applications".defer]
        path = {:?}
        "#,
        dir.path().join("store").display().to_string()
    ))
    .unwrap();
    let deferral = brownout::defer::Deferral::open(&policy).await.unwrap();
    let route = deferral.route("/applications").unwrap();
    let store = route.store().clone();
    for i in 0..N {
        let request = Deferred {
            priority: (i % 3) as u8,
            method: "POST".into(),
            uri: "/applications".into(),
            headers: vec![],
            body: Bytes::from(format!("{i}")),
            arrived: store.now(),
            idempotency_key: None,
        };
        store.append(request).await.unwrap();
    }

    let sim = SimBackend::builder()
        .capacity(CAPACITY)
        .service_time(ServiceTime::Constant(SERVICE))
        .seed(1)
        .build()
        .unwrap();
    let handle = sim.handle();
    let order: Arc<Mutex<Vec<(u8, usize)>>> = Arc::default();
    let backend = {
        let order = order.clone();
        tower::service_fn(move |req: Request<Full<Bytes>>| {
            let sim = sim.clone();
            let order = order.clone();
            async move {
                let rank = req.extensions().get::<Priority>().unwrap().rank();
                let body = req.into_body().collect_bytes().await;
                let n: usize = String::from_utf8(body.to_vec()).unwrap().parse().unwrap();
                order.lock().unwrap().push((rank, n));
                sim.oneshot(()).await.map_err(BoxError::from)?;
                Ok::<_, BoxError>(Response::new(Full::<Bytes>::from("ok")))
            }
        })
    };
    let layer = BrownoutLayer::from_policy(&policy).http();
    let stack = layer.clone().fallback(RejectAsError).layer(backend);
    // Every replay that reaches the stack, by the virtual instant it came.
    let attempts: Arc<Mutex<Vec<tokio::time::Instant>>> = Arc::default();
    let replay = {
        let attempts = attempts.clone();
        tower::service_fn(move |req: Request<Full<Bytes>>| {
            attempts.lock().unwrap().push(tokio::time::Instant::now());
            stack.clone().oneshot(req)
        })
    };
    let replayer = deferral.replay(route, replay, Load::of(&layer, "/applications"));

    let start = tokio::time::Instant::now();
    tokio::time::sleep(OUTAGE).await;
    let during: Vec<tokio::time::Instant> = attempts.lock().unwrap().clone();
    assert!(order.lock().unwrap().is_empty(), "the back end was down");
    assert_eq!(
        store.pending().await.unwrap().iter().sum::<u64>(),
        N as u64,
        "every replay turned away was put back"
    );
    let first = during[0];
    let mut per_instant = std::collections::BTreeMap::new();
    for at in during.iter().filter(|&&at| at > first) {
        *per_instant.entry(*at).or_insert(0usize) += 1;
    }
    let burst = during.iter().filter(|&&at| at == first).count();
    println!(
        "{} replays sent into the open breaker in {OUTAGE:?}: {burst} at first, then {} pauses with at most {} each",
        during.len(),
        per_instant.len(),
        per_instant.values().max().unwrap_or(&0),
    );
    assert!(
        per_instant.values().all(|&n| n == 1),
        "after the first was turned away, one replay at a time: {per_instant:?}"
    );
    assert!(
        per_instant.len() as u32 <= OUTAGE.as_millis() as u32 / MIN_BACKOFF.as_millis() as u32,
        "at most one probe per pause"
    );

    // Back: the next probe is served, and the rest drains at the limit.
    let mut up = policy.clone();
    up.breaker.mode = Mode::Enforce;
    layer.handle().apply(up).unwrap();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if store.pending().await.unwrap().iter().sum::<u64>() == 0 {
            break;
        }
        assert!(start.elapsed() < OUTAGE * 2, "not drained");
    }
    replayer.stop().await;
    let stats = handle.stats();
    assert_eq!(stats.served as usize, N, "{stats:?}");
    assert_eq!(
        stats.peak_concurrent, CAPACITY,
        "the whole budget once a probe was served: {stats:?}"
    );
    let order = order.lock().unwrap().clone();
    let mut seen: Vec<usize> = order.iter().map(|&(_, n)| n).collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..N).collect::<Vec<_>>(),
        "each sent once, none lost"
    );
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "most important class first, oldest first: {order:?}"
    );
}

#[test]
fn replay_budget_keeps_to_the_share_under_live_traffic() {
    let load = |limit, inflight| Load {
        limit,
        inflight,
        waiting: 0,
    };
    // No live traffic: the whole limit.
    assert_eq!(load(10, 0).replay_budget(0.5, 0), 10);
    assert_eq!(load(10, 10).replay_budget(0.5, 10), 10);
    // Live traffic takes 8: replays keep their half.
    assert_eq!(load(10, 12).replay_budget(0.5, 4), 5);
    // Live takes 1: replays get the 9 left but 1, room for live to double.
    assert_eq!(load(10, 1).replay_budget(0.5, 0), 8);
    // Live takes 3: that would leave replays 4, less than their half.
    assert_eq!(load(10, 3).replay_budget(0.5, 0), 5);
    // Always at least one.
    assert_eq!(load(1, 1).replay_budget(0.5, 0), 1);
    // Callers wait for a slot: replays keep their half, no more, however
    // much of the limit looked free when they were sent.
    let waited = |limit, inflight, waiting| Load {
        limit,
        inflight,
        waiting,
    };
    assert_eq!(waited(10, 10, 3).replay_budget(0.5, 9), 5);
    assert_eq!(waited(10, 10, 3).replay_budget(0.5, 2), 5);
    assert_eq!(waited(1, 1, 1).replay_budget(0.5, 1), 1);
}

trait CollectBytes {
    async fn collect_bytes(self) -> Bytes;
}

impl CollectBytes for Full<Bytes> {
    async fn collect_bytes(self) -> Bytes {
        use http_body_util::BodyExt;
        self.collect().await.unwrap().to_bytes()
    }
}
