//! Breaker verdicts shared by four replicas through a real `redis-server`
//! (feature `fleet`): one replica's open reaches the others well within
//! one `open_for`; the fleet sends `half_open_probes` probes per open
//! period, not one set per replica; a successful probe closes the fleet;
//! Redis gone leaves each replica to its own breaker. Needs `redis-server`
//! on the PATH (`.ci/run` installs it).
//!
//! Real time (a paused clock would fire every Redis deadline at once):
//! the test asserts counts and orders, with generous deadlines.
#![cfg(feature = "fleet")]

#[path = "support/redis.rs"]
mod redis_server;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use brownout::fleet::{FleetBreakerLayer, Share};
use brownout::{BreakerPolicy, Reason, Rejected};
use redis_server::RedisServer;
use tower::{BoxError, Layer, Service, ServiceExt};

/// The back end as every replica's stack sees it: down (an error), or up.
/// Replica 0's stack also answers `Open` once, as its breaker opening.
#[derive(Clone)]
struct BackEnd {
    down: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    open_once: Arc<AtomicBool>,
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
        if self.open_once.swap(false, Ordering::AcqRel) {
            return std::future::ready(Err(Rejected::new(Reason::Open)
                .with_retry_after(Duration::from_secs(1))
                .into()));
        }
        self.calls.fetch_add(1, Ordering::AcqRel);
        if self.down.load(Ordering::Acquire) {
            std::future::ready(Err("back end down".into()))
        } else {
            std::future::ready(Ok(()))
        }
    }
}

async fn send(svc: &mut impl Service<u32, Response = (), Error = BoxError>) -> Result<(), Reason> {
    let svc = svc.ready().await.map_err(|_| Reason::Open)?;
    match svc.call(0).await {
        Ok(()) => Ok(()),
        Err(err) => Err(err
            .downcast_ref::<Rejected>()
            .map_or(Reason::Shed, Rejected::reason)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_opens_together_probes_once_per_period_and_closes_together() {
    let server = RedisServer::start();
    let breaker = BreakerPolicy {
        open_for: Duration::from_secs(1),
        half_open_probes: 3,
        ..BreakerPolicy::default()
    };
    let down = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let mut replicas = Vec::new();
    for i in 0..4 {
        let layer = FleetBreakerLayer::new(
            &server.url(),
            "/slots",
            &breaker,
            Share::Follow,
            Duration::from_millis(500),
        )
        .unwrap();
        replicas.push(layer.layer(BackEnd {
            down: down.clone(),
            calls: calls.clone(),
            open_once: Arc::new(AtomicBool::new(false)),
        }));
        let _ = i;
    }
    for svc in &mut replicas {
        assert_eq!(send(svc).await, Ok(()));
    }

    // Replica 0's breaker opens.
    down.store(true, Ordering::Release);
    replicas[0].inner_open_once();
    assert_eq!(send(&mut replicas[0]).await, Err(Reason::Open));
    let opened = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let before = calls.load(Ordering::Acquire);
        let mut all = true;
        for svc in replicas.iter_mut().skip(1) {
            all &= send(svc).await == Err(Reason::Open);
        }
        if all && calls.load(Ordering::Acquire) == before {
            break;
        }
        assert!(
            opened.elapsed() < Duration::from_secs(1),
            "the fleet follows within one open_for"
        );
    }
    eprintln!(
        "fleet open on every replica {:?} after the first verdict",
        opened.elapsed()
    );

    // Two open periods with the back end still down: every replica sends
    // a request every 10 ms; the back end sees at most 3 probes a period.
    let start = calls.load(Ordering::Acquire);
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        for svc in &mut replicas {
            let _ = send(svc).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let probes = calls.load(Ordering::Acquire) - start;
    eprintln!("{probes} probes reached the back end in 2.5 open periods across 4 replicas");
    assert!(probes >= 1, "the fleet probes");
    assert!(
        probes <= 3 * 3,
        "{probes} probes: at most 3 per open period for the fleet"
    );

    // Back up: the next probe succeeds and closes the fleet.
    down.store(false, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut served = 0;
        for svc in &mut replicas {
            if send(svc).await.is_ok() {
                served += 1;
            }
        }
        if served == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fleet closes after a good probe"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Redis gone: each replica on its own; nothing hangs, nothing rejected
    // by a stale verdict.
    drop(server);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for svc in &mut replicas {
        let answer = tokio::time::timeout(Duration::from_secs(5), send(svc)).await;
        assert_eq!(answer.expect("no hang"), Ok(()));
    }
}

trait OpenOnce {
    fn inner_open_once(&mut self);
}

impl OpenOnce for brownout::fleet::FleetBreaker<BackEnd> {
    fn inner_open_once(&mut self) {
        self.get_ref().open_once.store(true, Ordering::Release);
    }
}

#[tokio::test]
async fn a_bad_url_is_an_error_at_build() {
    let err = FleetBreakerLayer::new(
        "redis://127.0.0.1:notaport/",
        "/slots",
        &BreakerPolicy::default(),
        Share::Follow,
        Duration::from_millis(5),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("fleet url \"redis://127.0.0.1:notaport/\""),
        "{err}"
    );
}

/// The quorum as ops write it: `[fleet]` with `quorum = 2`.
#[cfg(feature = "toml")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_waits_for_enough_replicas() {
    let server = RedisServer::start();
    let policy = brownout::Policy::from_toml(&format!(
        r#"
        [breaker]
        open_for = "2s"

        [fleet]
        url = {url:?}
        share = "quorum"
        quorum = 2
        shared_timeout = "500ms"
        "#,
        url = server.url()
    ))
    .unwrap();
    let down = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicU64::new(0));
    let mut replicas: Vec<_> = (0..4)
        .map(|_| {
            let layer = FleetBreakerLayer::from_policy(&policy, "/quorum")
                .unwrap()
                .expect("a [fleet] section");
            assert_eq!(layer.share(), Share::Quorum(2));
            layer.layer(BackEnd {
                down: down.clone(),
                calls: calls.clone(),
                open_once: Arc::new(AtomicBool::new(false)),
            })
        })
        .collect();
    // One verdict: not enough.
    replicas[0].inner_open_once();
    assert_eq!(send(&mut replicas[0]).await, Err(Reason::Open));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = calls.load(Ordering::Acquire);
    assert_eq!(
        send(&mut replicas[3]).await,
        Err(Reason::Shed),
        "the back end's own error"
    );
    assert_eq!(
        calls.load(Ordering::Acquire),
        before + 1,
        "one verdict of two: replica 3 still calls"
    );
    // A second replica's verdict: the quorum opens the others.
    replicas[1].inner_open_once();
    assert_eq!(send(&mut replicas[1]).await, Err(Reason::Open));
    let opened = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let before = calls.load(Ordering::Acquire);
        if send(&mut replicas[3]).await == Err(Reason::Open)
            && calls.load(Ordering::Acquire) == before
        {
            break;
        }
        assert!(
            opened.elapsed() < Duration::from_secs(2),
            "the quorum opens replica 3 within one open_for"
        );
    }
}

#[cfg(feature = "toml")]
#[test]
fn fleet_fields_as_ops_write_them_and_their_errors() {
    use brownout::Policy;
    use brownout::policy::FleetShare;
    let fleet = |text: &str| Policy::from_toml(text).map(|p| p.fleet.expect("a [fleet] section"));
    let follow = fleet("[fleet]\n").unwrap();
    assert_eq!(follow.effective_share(), (FleetShare::Follow, 1));
    assert_eq!(Share::from(&follow), Share::Follow);
    let quorum = fleet("[fleet]\nquorum = 3\n").unwrap();
    assert_eq!(Share::from(&quorum), Share::Quorum(3));
    let err = |text: &str| fleet(text).unwrap_err().to_string();
    assert_eq!(
        err("[fleet]\nshare = \"follow\"\nquorum = 2\n"),
        "fleet.quorum: 2 is only read with share = \"quorum\" (share is \"follow\")"
    );
    assert_eq!(
        err("[fleet]\nshare = \"quorum\"\n"),
        "fleet.share: \"quorum\" needs fleet.quorum: how many replicas must hold an open verdict"
    );
    assert_eq!(
        err("[fleet]\nquorum = 0\n"),
        "fleet.quorum: 0 is not in 1..=1024"
    );
    let unknown = err("[fleet]\nshare = \"majority\"\n");
    assert!(unknown.contains("fleet.share"), "{unknown}");
    assert!(unknown.contains("majority"), "{unknown}");
    let url = err("[fleet]\nurl = \"http://redis\"\n");
    assert!(url.starts_with("fleet.url: \"http://redis\""), "{url}");
}
