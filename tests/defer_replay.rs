//! Draining a backlog at the back end's capacity, in virtual time: a
//! simulated back end of capacity 10 and 100 ms per call (100 calls a
//! second), a fixed limit of 10 in front of it, and a backlog deferred
//! while the breaker was forced open. Once it is back, the replayer must
//! use the capacity (at least 95% of it), keep the back end within its
//! limit, and serve every class before the next. While the back end is
//! still down it probes with one replay at a time; with live traffic,
//! replays yield to it, within their share, and live requests still get
//! theirs.
#![cfg(all(feature = "defer", feature = "sim", feature = "toml"))]

#[path = "support/tempdir.rs"]
mod tempdir;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use brownout::defer::{DeferStore, Deferred, Load, MIN_BACKOFF};
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

/// `n` requests deferred straight into `store`, numbered in their bodies,
/// of `classes` classes in turn (mixed).
async fn defer_backlog(store: &Arc<dyn DeferStore>, n: usize, classes: usize) {
    for i in 0..n {
        let request = Deferred {
            priority: (i % classes) as u8,
            method: "POST".into(),
            uri: "/applications".into(),
            headers: vec![],
            body: Bytes::from(format!("{i}")),
            arrived: store.now(),
            idempotency_key: None,
        };
        store.append(request).await.unwrap();
    }
}

/// `sim` as an HTTP back end that records each replay's class and number
/// in `order` as it arrives.
fn recording(
    sim: SimBackend,
    order: Arc<Mutex<Vec<(u8, usize)>>>,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = BoxError,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
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
}

/// `order` (class, number) holds each of `n` requests exactly once, most
/// important class first and oldest first within a class.
fn assert_each_once_in_order(order: &[(u8, usize)], n: usize) {
    let mut seen: Vec<usize> = order.iter().map(|&(_, n)| n).collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..n).collect::<Vec<_>>(),
        "each sent once, none lost"
    );
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "most important class first, oldest first: {order:?}"
    );
}

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
    defer_backlog(&store, BACKLOG, 3).await;

    let sim = SimBackend::builder()
        .capacity(CAPACITY)
        .service_time(ServiceTime::Constant(SERVICE))
        .seed(1)
        .build()
        .unwrap();
    let handle = sim.handle();
    let order: Arc<Mutex<Vec<(u8, usize)>>> = Arc::default();
    let backend = recording(sim, order.clone());
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
    defer_backlog(&store, N, 3).await;

    let sim = SimBackend::builder()
        .capacity(CAPACITY)
        .service_time(ServiceTime::Constant(SERVICE))
        .seed(1)
        .build()
        .unwrap();
    let handle = sim.handle();
    let order: Arc<Mutex<Vec<(u8, usize)>>> = Arc::default();
    let backend = recording(sim, order.clone());
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
    // The replayer sees the breaker closed and probes at once, not at the
    // end of its pause (up to MAX_BACKOFF by now).
    let mut up = policy.clone();
    up.breaker.mode = Mode::Enforce;
    layer.handle().apply(up).unwrap();
    tokio::time::sleep(MIN_BACKOFF * 2).await;
    assert!(
        !order.lock().unwrap().is_empty(),
        "a replay reached the back end within {:?} of the breaker closing",
        MIN_BACKOFF * 2
    );
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
    assert_each_once_in_order(&order, N);
}

/// The same without brownout in front: a back end that answers `503`
/// while it is down sees one replay per pause once the first was turned
/// away, not a budget's worth (10 here) each time; once it answers, the
/// backlog drains, each request sent once, in order.
#[tokio::test(start_paused = true)]
async fn a_back_end_still_down_sees_one_replay_at_a_time() {
    const N: usize = 30;
    let dir = TempDir::new("defer-probe-503");
    let policy = Policy::from_toml(&format!(
        r#"
        [routes."/applications".defer]
        path = {:?}
        "#,
        dir.path().join("store").display().to_string()
    ))
    .unwrap();
    let deferral = brownout::defer::Deferral::open(&policy).await.unwrap();
    let route = deferral.route("/applications").unwrap();
    let store = route.store().clone();
    defer_backlog(&store, N, 3).await;
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    // Every call, by the virtual instant it came, and what was served.
    let calls: Arc<Mutex<Vec<tokio::time::Instant>>> = Arc::default();
    let order: Arc<Mutex<Vec<(u8, usize)>>> = Arc::default();
    let backend = {
        let (down, calls, order) = (down.clone(), calls.clone(), order.clone());
        tower::service_fn(move |req: Request<Full<Bytes>>| {
            let (down, calls, order) = (down.clone(), calls.clone(), order.clone());
            async move {
                calls.lock().unwrap().push(tokio::time::Instant::now());
                if down.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut answer = Response::new(Full::<Bytes>::from("down"));
                    *answer.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                    return Ok::<_, BoxError>(answer);
                }
                let rank = req.extensions().get::<Priority>().unwrap().rank();
                let body = req.into_body().collect_bytes().await;
                let n: usize = String::from_utf8(body.to_vec()).unwrap().parse().unwrap();
                order.lock().unwrap().push((rank, n));
                tokio::time::sleep(SERVICE).await;
                Ok(Response::new(Full::<Bytes>::from("ok")))
            }
        })
    };
    // A limit of 10, nothing else in flight: a budget of 10.
    let load = || {
        Some(Load {
            limit: 10,
            lowest: 10,
            inflight: 0,
            waiting: 0,
            breaker: None,
        })
    };
    let replayer = deferral.replay(route, backend, load);

    tokio::time::sleep(Duration::from_secs(60)).await;
    let during = calls.lock().unwrap().clone();
    let first = during[0];
    let mut per_instant = std::collections::BTreeMap::new();
    for at in during.iter().filter(|&&at| at > first) {
        *per_instant.entry(*at).or_insert(0usize) += 1;
    }
    println!(
        "{} calls to a back end down for 60 s: {} at first, then {} pauses with at most {} each",
        during.len(),
        during.iter().filter(|&&at| at == first).count(),
        per_instant.len(),
        per_instant.values().max().unwrap_or(&0),
    );
    assert!(
        per_instant.values().all(|&n| n == 1),
        "after the first was turned away, one replay at a time: {per_instant:?}"
    );
    assert_eq!(
        store.pending().await.unwrap().iter().sum::<u64>(),
        N as u64,
        "every replay turned away was put back"
    );

    down.store(false, std::sync::atomic::Ordering::Relaxed);
    let start = tokio::time::Instant::now();
    while store.pending().await.unwrap().iter().sum::<u64>() > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(start.elapsed() < Duration::from_secs(60), "not drained");
    }
    replayer.stop().await;
    let order = order.lock().unwrap().clone();
    assert_each_once_in_order(&order, N);
}

/// Live bulk callers while a backlog of urgent and normal requests
/// drains: bulk may use 14 of a limit of 20 (`reserve = 0.3`), and live
/// bulk (80 a second at random, 100 ms each, log-normal) keeps some 8
/// calls in flight. Replays take only what live traffic leaves of those
/// 14, so live bulk finds a slot (before, replays kept half the limit, 10,
/// and the 18 in flight shut bulk out while they lasted: 89.9% of it
/// served, 100% now), and never more than half the limit, not even when
/// they start before any live call is in flight. The backlog still
/// drains, in order, none lost.
#[tokio::test(start_paused = true)]
async fn live_bulk_traffic_is_served_while_a_backlog_drains() {
    const LIMIT: usize = 20;
    const N: usize = 600;
    const LIVE_RATE: f64 = 80.0;
    const LIVE_FOR: Duration = Duration::from_secs(20);
    let dir = TempDir::new("defer-live");
    let policy = Policy::from_toml(&format!(
        r#"
        [waiting_room]
        capacity = 100
        max_wait = "300ms"
        order = "priority_fifo"

        [routes."/applications".limit]
        algorithm = "fixed"
        initial = {LIMIT}
        min = 1
        max = {LIMIT}
        reserve = 0.3

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
    defer_backlog(&store, N, 2).await;

    let sim = SimBackend::builder()
        .capacity(LIMIT)
        .service_time(ServiceTime::LogNormal {
            mean: SERVICE,
            cv: 0.3,
        })
        .seed(1)
        .build()
        .unwrap();
    let handle = sim.handle();
    let order: Arc<Mutex<Vec<(u8, usize)>>> = Arc::default();
    // Replays at the back end now, and the most at once.
    let replaying: Arc<Mutex<(usize, usize)>> = Arc::default();
    let backend = {
        let order = order.clone();
        let replaying = replaying.clone();
        tower::service_fn(move |req: Request<Full<Bytes>>| {
            let sim = sim.clone();
            let order = order.clone();
            let replaying = replaying.clone();
            async move {
                let rank = req.extensions().get::<Priority>().unwrap().rank();
                let body = req.into_body().collect_bytes().await;
                let replay = String::from_utf8(body.to_vec()).unwrap().parse::<usize>();
                if let Ok(n) = replay {
                    order.lock().unwrap().push((rank, n));
                    let mut r = replaying.lock().unwrap();
                    r.0 += 1;
                    r.1 = r.1.max(r.0);
                }
                let served = sim.oneshot(()).await;
                if replay.is_ok() {
                    replaying.lock().unwrap().0 -= 1;
                }
                served.map_err(BoxError::from)?;
                Ok::<_, BoxError>(Response::new(Full::<Bytes>::from("ok")))
            }
        })
    };
    let layer = BrownoutLayer::from_policy(&policy).http();
    let stack = layer.clone().fallback(RejectAsError).layer(backend);
    // The route has carried traffic before (its limit is known).
    let mut before = Request::post("/applications")
        .body(Full::from("before"))
        .unwrap();
    before.extensions_mut().insert(Priority::new(2));
    tokio::task::LocalSet::new()
        .run_until(stack.clone().oneshot(before))
        .await
        .unwrap();
    let replayer = deferral.replay(route, stack.clone(), Load::of(&layer, "/applications"));

    // Live callers come a moment after the replayer starts, as they do
    // when a back end is back: none is in flight at its first look.
    tokio::time::sleep(Duration::from_millis(1)).await;
    // Live bulk callers, 80 a second for 20 s, at exponential intervals
    // from a fixed seed (on a `LocalSet`: the stack's future is not `Send`
    // for every lifetime, as `spawn` wants).
    let start = tokio::time::Instant::now();
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let offered = tokio::task::LocalSet::new()
        .run_until(async {
            let mut live = tokio::task::JoinSet::new();
            let mut offered = 0usize;
            let mut seed = 0x2545_f491_4f6c_dd1d_u64;
            while start.elapsed() < LIVE_FOR {
                let mut request = Request::post("/applications")
                    .body(Full::from("live"))
                    .unwrap();
                request.extensions_mut().insert(Priority::new(2));
                let call = stack.clone().oneshot(request);
                let served = served.clone();
                live.spawn_local(async move {
                    if call.await.is_ok() {
                        served.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                });
                offered += 1;
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let uniform = (seed >> 11) as f64 / (1u64 << 53) as f64;
                let gap = -(1.0 - uniform).ln() / LIVE_RATE;
                tokio::time::sleep(Duration::from_secs_f64(gap)).await;
            }
            while live.join_next().await.is_some() {}
            offered
        })
        .await;
    let served = served.load(std::sync::atomic::Ordering::Relaxed);
    let drained = store.pending().await.unwrap().iter().sum::<u64>() == 0;
    replayer.stop().await;

    let order = order.lock().unwrap().clone();
    println!(
        "live bulk served {served} of {offered} ({:.1}%) while {} of {N} replays were served; {:?}",
        served as f64 * 100.0 / offered as f64,
        order.len(),
        handle.stats()
    );
    assert!(drained, "the backlog drained while live traffic left room");
    assert_each_once_in_order(&order, N);
    assert!(
        handle.stats().peak_concurrent <= LIMIT,
        "never past the limit"
    );
    assert!(
        served * 100 >= offered * 99,
        "live bulk served {served} of {offered}"
    );
    // Live callers were about from the start: replays never held more than
    // replay_share (0.5) of the limit, not even before the first live call
    // was in flight.
    let peak = replaying.lock().unwrap().1;
    assert!(peak <= LIMIT / 2, "{peak} replays in flight at once");
}

#[test]
fn replay_budget_yields_to_live_traffic_within_the_share() {
    // A limit of 10; the least important class may use 7 of it.
    let load = |inflight, waiting| Load {
        limit: 10,
        lowest: 7,
        inflight,
        waiting,
        breaker: None,
    };
    // No live traffic: the whole limit.
    assert_eq!(load(0, 0).replay_budget(0.5, 0), 10);
    assert_eq!(load(10, 0).replay_budget(0.5, 10), 10);
    // One live call: what it leaves of the least important class's 7,
    // and no more than half the limit.
    assert_eq!(load(1, 0).replay_budget(0.5, 0), 5);
    assert_eq!(load(1, 0).replay_budget(0.9, 0), 6);
    // Live takes 4 of the 7: 3 left, whatever the share.
    assert_eq!(load(7, 0).replay_budget(0.5, 3), 3);
    assert_eq!(load(4, 0).replay_budget(0.9, 0), 3);
    // Live takes the least important class's whole share: one replay, so
    // that the backlog still drains.
    assert_eq!(load(9, 0).replay_budget(0.5, 2), 1);
    assert_eq!(load(10, 0).replay_budget(0.5, 0), 1);
    // Callers wait: none added, however much looks free.
    assert_eq!(load(5, 2).replay_budget(0.5, 1), 1);
    assert_eq!(load(6, 3).replay_budget(0.5, 4), 4);
    assert_eq!(load(9, 3).replay_budget(0.5, 4), 2);
    // Replays waiting alone count as callers waiting too.
    assert_eq!(load(0, 1).replay_budget(0.5, 1), 1);
    // While live traffic is known to be under way although none is seen
    // in flight now (replays sent, not yet admitted): its budget, not
    // the whole limit.
    assert_eq!(load(3, 0).replay_budget(0.5, 5), 10);
    assert_eq!(load(3, 0).yielding_budget(0.5, 5), 5);
    assert_eq!(load(3, 0).yielding_budget(0.2, 5), 2);
    // A limit of 1: always one.
    let one = Load {
        limit: 1,
        lowest: 1,
        inflight: 1,
        waiting: 1,
        breaker: None,
    };
    assert_eq!(one.replay_budget(0.5, 0), 1);
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
