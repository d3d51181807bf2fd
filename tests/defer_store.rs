//! The deferral store contract, run against every store: the embedded
//! store here, the Redis store against a real `redis-server` (feature
//! `defer-redis`). Time is tokio's paused clock, read by the store through
//! `StoreConfig::clock`.
#![cfg(feature = "defer")]

#[path = "support/tempdir.rs"]
mod tempdir;

#[cfg(feature = "defer-redis")]
#[path = "support/redis.rs"]
mod redis_server;

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use brownout::clock::Clock;
use brownout::defer::{
    Appended, DeferStore, Deferred, EmbeddedStore, Outcome, Status, StoreConfig, StoreError, Ticket,
};
use bytes::Bytes;

use tempdir::TempDir;

const MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
const CLAIM_AFTER: Duration = Duration::from_secs(30);
const KEEP_FINISHED: Duration = Duration::from_secs(3 * 24 * 3600);

fn config(max_pending: u64) -> StoreConfig {
    StoreConfig {
        max_pending,
        max_age: MAX_AGE,
        claim_after: CLAIM_AFTER,
        keep_finished: KEEP_FINISHED,
        classes: 3,
        clock: Clock::tokio_at(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_457_600)),
    }
}

fn request(config: &StoreConfig, priority: u8, body: &str, key: Option<&str>) -> Deferred {
    Deferred {
        priority,
        method: "POST".to_owned(),
        uri: "/applications?x=1".to_owned(),
        headers: vec![(
            "content-type".to_owned(),
            Bytes::from_static(b"application/json"),
        )],
        body: Bytes::from(body.to_owned()),
        arrived: config.clock.system_time(),
        idempotency_key: key.map(str::to_owned),
    }
}

fn ticket(appended: Appended) -> Ticket {
    match appended {
        Appended::New(ticket) => ticket,
        other => panic!("expected a new ticket, got {other:?}"),
    }
}

type Opened = (Arc<dyn DeferStore>, Box<dyn Any>);

/// Every contract test, for one store: `$open(config)` opens a fresh one.
macro_rules! contract {
    ($store:ident, $open:expr) => {
        mod $store {
            use super::*;

            async fn open(config: StoreConfig) -> Opened {
                ($open)(config).await
            }

            #[tokio::test(start_paused = true)]
            async fn append_is_pending_and_unknown_is_none() {
                super::append_is_pending_and_unknown_is_none(open(config(10)).await).await;
            }
            #[tokio::test(start_paused = true)]
            async fn claims_most_important_first_then_oldest() {
                super::claims_most_important_first_then_oldest(open(config(100)).await).await;
            }
            #[tokio::test(start_paused = true)]
            async fn idempotency_key_repeats_and_conflicts() {
                super::idempotency_key_repeats_and_conflicts(open(config(10)).await).await;
            }
            #[tokio::test(start_paused = true)]
            async fn full_store_writes_nothing() {
                super::full_store_writes_nothing(open(config(2)).await).await;
            }
            #[tokio::test(start_paused = true)]
            async fn complete_settles_once() {
                super::complete_settles_once(open(config(10)).await).await;
            }
            #[tokio::test(start_paused = true)]
            async fn release_puts_back_in_place() {
                super::release_puts_back_in_place(open(config(10)).await).await;
            }
            #[tokio::test(start_paused = true)]
            async fn unsettled_claim_is_claimed_again_after_claim_after() {
                super::unsettled_claim_is_claimed_again(open(config(10)).await).await;
            }
            #[tokio::test(start_paused = true)]
            async fn expires_at_max_age_in_virtual_time() {
                super::expires_at_max_age(open(config(10)).await).await;
            }
            #[tokio::test(start_paused = true)]
            async fn a_settled_request_is_forgotten_after_keep_finished() {
                super::forgets_after_keep_finished(open(config(10)).await).await;
            }
            #[tokio::test(start_paused = true)]
            async fn claim_never_hands_out_an_expired_request() {
                super::claim_skips_expired(open(config(10)).await).await;
            }
        }
    };
}

contract!(embedded, |config: StoreConfig| async move {
    let dir = TempDir::new("defer-contract");
    let store = EmbeddedStore::open(dir.path().join("store"), config).expect("open");
    (
        Arc::new(store) as Arc<dyn DeferStore>,
        Box::new(dir) as Box<dyn Any>,
    )
});

#[cfg(feature = "defer-redis")]
contract!(redis, |config: StoreConfig| async move {
    let server = redis_server::RedisServer::start();
    let store = brownout::defer::RedisStore::open(&server.url(), "contract", config)
        .await
        .expect("open");
    (
        Arc::new(store) as Arc<dyn DeferStore>,
        Box::new(server) as Box<dyn Any>,
    )
});

async fn append_is_pending_and_unknown_is_none((store, _guard): Opened) {
    let config = config(10);
    let t = ticket(store.append(request(&config, 1, "a", None)).await.unwrap());
    assert_eq!(
        store.status(t.clone()).await.unwrap(),
        Some(Status::Pending {
            arrived: config.clock.system_time()
        })
    );
    assert_eq!(store.pending().await.unwrap(), vec![0, 1, 0]);
    assert_eq!(
        store.oldest().await.unwrap(),
        Some(config.clock.system_time())
    );
    let unknown = Ticket::random();
    assert_ne!(unknown, t);
    assert_eq!(store.status(unknown).await.unwrap(), None);
    assert_eq!(
        store.ticket_for_key("never-seen".to_owned()).await.unwrap(),
        None
    );
}

async fn claims_most_important_first_then_oldest((store, _guard): Opened) {
    let config = config(100);
    let mut expected: Vec<(u8, Ticket)> = Vec::new();
    for (i, rank) in [2u8, 1, 2, 0, 1, 0, 2].into_iter().enumerate() {
        let t = ticket(
            store
                .append(request(&config, rank, &format!("body {i}"), None))
                .await
                .unwrap(),
        );
        expected.push((rank, t));
        tokio::time::advance(Duration::from_millis(5)).await;
    }
    // Stable sort: by class, then in arrival order.
    expected.sort_by_key(|(rank, _)| *rank);
    let mut claimed = Vec::new();
    while let Some(c) = store.claim().await.unwrap() {
        assert_eq!(c.attempts, 1);
        claimed.push((c.request.priority, c.ticket));
    }
    assert_eq!(claimed, expected);
    assert_eq!(
        store.pending().await.unwrap(),
        vec![2, 2, 3],
        "claimed is still pending"
    );
    assert_eq!(
        store.oldest().await.unwrap(),
        Some(config.clock.system_time() - Duration::from_millis(35)),
        "being replayed is pending"
    );
}

async fn idempotency_key_repeats_and_conflicts((store, _guard): Opened) {
    let config = config(10);
    let first = ticket(
        store
            .append(request(&config, 1, "apply", Some("key-1")))
            .await
            .unwrap(),
    );
    assert_eq!(
        store
            .append(request(&config, 1, "apply", Some("key-1")))
            .await
            .unwrap(),
        Appended::Repeat(first.clone())
    );
    assert_eq!(
        store
            .append(request(&config, 1, "something else", Some("key-1")))
            .await
            .unwrap(),
        Appended::Conflict(first.clone())
    );
    assert_eq!(
        store.ticket_for_key("key-1".to_owned()).await.unwrap(),
        Some(first.clone())
    );
    assert_eq!(store.pending().await.unwrap(), vec![0, 1, 0], "one written");
    // A settled request's key still answers with its ticket.
    let c = store.claim().await.unwrap().unwrap();
    assert_eq!(c.request.idempotency_key.as_deref(), Some("key-1"));
    assert!(
        store
            .complete(c.ticket, Outcome::Failed("no".into()))
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .append(request(&config, 1, "apply", Some("key-1")))
            .await
            .unwrap(),
        Appended::Repeat(first)
    );
}

async fn full_store_writes_nothing((store, _guard): Opened) {
    let config = config(2);
    ticket(store.append(request(&config, 0, "1", None)).await.unwrap());
    let t = ticket(store.append(request(&config, 2, "2", None)).await.unwrap());
    assert_eq!(
        store
            .append(request(&config, 1, "3", Some("k")))
            .await
            .unwrap(),
        Appended::Full
    );
    assert_eq!(store.ticket_for_key("k".to_owned()).await.unwrap(), None);
    assert_eq!(store.pending().await.unwrap(), vec![1, 0, 1]);
    // Settling one makes room.
    let c = store.claim().await.unwrap().unwrap();
    assert_ne!(c.ticket, t);
    store.complete(c.ticket, Outcome::Expired).await.unwrap();
    ticket(store.append(request(&config, 1, "3", None)).await.unwrap());
}

async fn complete_settles_once((store, _guard): Opened) {
    let config = config(10);
    let t = ticket(store.append(request(&config, 0, "a", None)).await.unwrap());
    let c = store.claim().await.unwrap().unwrap();
    assert_eq!(c.ticket, t);
    assert_eq!(c.request, request(&config, 0, "a", None));
    let served = Outcome::Served {
        status: 201,
        content_type: Some("application/json".into()),
        body: Bytes::from_static(b"{\"id\":7}"),
    };
    assert!(store.complete(t.clone(), served.clone()).await.unwrap());
    assert!(
        !store
            .complete(t.clone(), Outcome::Failed("again".into()))
            .await
            .unwrap(),
        "a second completion changes nothing"
    );
    assert_eq!(
        store.status(t.clone()).await.unwrap(),
        Some(Status::Done(served))
    );
    assert_eq!(store.pending().await.unwrap(), vec![0, 0, 0]);
    assert_eq!(store.claim().await.unwrap(), None);
    assert!(
        !store
            .complete(Ticket::random(), Outcome::Expired)
            .await
            .unwrap()
    );
}

async fn release_puts_back_in_place((store, _guard): Opened) {
    let config = config(10);
    let a = ticket(store.append(request(&config, 1, "a", None)).await.unwrap());
    tokio::time::advance(Duration::from_millis(1)).await;
    let b = ticket(store.append(request(&config, 1, "b", None)).await.unwrap());
    let c = store.claim().await.unwrap().unwrap();
    assert_eq!(c.ticket, a);
    store.release(c.ticket).await.unwrap();
    let again = store.claim().await.unwrap().unwrap();
    assert_eq!(
        (again.ticket, again.attempts),
        (a, 1),
        "a release is not an attempt"
    );
    assert_eq!(store.claim().await.unwrap().unwrap().ticket, b);
}

async fn unsettled_claim_is_claimed_again((store, _guard): Opened) {
    let config = config(10);
    let a = ticket(store.append(request(&config, 1, "a", None)).await.unwrap());
    assert_eq!(store.claim().await.unwrap().unwrap().ticket, a);
    assert_eq!(store.claim().await.unwrap(), None, "claimed, not yet stale");
    tokio::time::advance(CLAIM_AFTER - Duration::from_millis(1)).await;
    assert_eq!(store.claim().await.unwrap(), None);
    tokio::time::advance(Duration::from_millis(1)).await;
    let again = store
        .claim()
        .await
        .unwrap()
        .expect("stale claim handed out again");
    assert_eq!((again.ticket.clone(), again.attempts), (a.clone(), 2));
    assert!(store.complete(a.clone(), Outcome::Expired).await.unwrap());
    assert!(!store.complete(a, Outcome::Expired).await.unwrap());
}

async fn expires_at_max_age((store, _guard): Opened) {
    let config = config(10);
    let old = ticket(
        store
            .append(request(&config, 2, "old", None))
            .await
            .unwrap(),
    );
    tokio::time::advance(Duration::from_secs(3600)).await;
    let young = ticket(
        store
            .append(request(&config, 0, "young", None))
            .await
            .unwrap(),
    );
    tokio::time::advance(MAX_AGE - Duration::from_secs(3600) - Duration::from_millis(1)).await;
    assert_eq!(store.expire().await.unwrap(), 0, "1 ms before max_age");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(store.expire().await.unwrap(), 1, "at max_age");
    assert_eq!(
        store.status(old).await.unwrap(),
        Some(Status::Done(Outcome::Expired))
    );
    assert!(matches!(
        store.status(young.clone()).await.unwrap(),
        Some(Status::Pending { .. })
    ));
    assert_eq!(store.pending().await.unwrap(), vec![1, 0, 0]);
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(store.expire().await.unwrap(), 1);
    assert_eq!(store.expire().await.unwrap(), 0);
    assert_eq!(store.pending().await.unwrap(), vec![0, 0, 0]);
}

/// A settled request's status and key are kept `keep_finished`, then
/// forgotten: unknown ticket, and the key takes a new request.
async fn forgets_after_keep_finished((store, _guard): Opened) {
    let config = config(10);
    let day = Duration::from_secs(24 * 3600);
    assert_eq!((KEEP_FINISHED, MAX_AGE), (3 * day, 7 * day));
    let a = ticket(
        store
            .append(request(&config, 1, "a", Some("key-a")))
            .await
            .unwrap(),
    );
    let b = ticket(store.append(request(&config, 2, "b", None)).await.unwrap());
    let claimed = store.claim().await.unwrap().unwrap();
    assert_eq!(claimed.ticket, a);
    let served = Outcome::Served {
        status: 201,
        content_type: None,
        body: Bytes::from_static(b"ok"),
    };
    assert!(store.complete(a.clone(), served.clone()).await.unwrap());
    // Two days on: kept.
    tokio::time::advance(2 * day).await;
    assert_eq!(store.expire().await.unwrap(), 0);
    assert_eq!(
        store.status(a.clone()).await.unwrap(),
        Some(Status::Done(served.clone()))
    );
    assert_eq!(
        store.ticket_for_key("key-a".to_owned()).await.unwrap(),
        Some(a.clone())
    );
    // Four days on, past keep_finished: forgotten; b still waits.
    tokio::time::advance(2 * day).await;
    assert_eq!(store.expire().await.unwrap(), 0);
    assert_eq!(store.status(a.clone()).await.unwrap(), None);
    assert_eq!(
        store.ticket_for_key("key-a".to_owned()).await.unwrap(),
        None
    );
    assert!(matches!(
        store.status(b.clone()).await.unwrap(),
        Some(Status::Pending { .. })
    ));
    // The key may be used again: a new ticket.
    let again = ticket(
        store
            .append(request(&config, 1, "a", Some("key-a")))
            .await
            .unwrap(),
    );
    assert_ne!(again, a);
    // b expires at max_age, is kept keep_finished more, then forgotten.
    tokio::time::advance(3 * day).await;
    assert_eq!(store.expire().await.unwrap(), 1);
    assert_eq!(
        store.status(b.clone()).await.unwrap(),
        Some(Status::Done(Outcome::Expired))
    );
    tokio::time::advance(3 * day + Duration::from_secs(1)).await;
    store.expire().await.unwrap();
    assert_eq!(store.status(b).await.unwrap(), None);
}

async fn claim_skips_expired((store, _guard): Opened) {
    let config = config(10);
    let old = ticket(
        store
            .append(request(&config, 0, "old", None))
            .await
            .unwrap(),
    );
    tokio::time::advance(MAX_AGE - Duration::from_secs(1)).await;
    let young = ticket(
        store
            .append(request(&config, 1, "young", None))
            .await
            .unwrap(),
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(store.claim().await.unwrap().unwrap().ticket, young);
    assert_eq!(
        store.status(old).await.unwrap(),
        Some(Status::Done(Outcome::Expired))
    );
}

// ------------------------------------------------- embedded store, on disk

#[tokio::test(start_paused = true)]
async fn embedded_keeps_everything_across_a_reopen_and_puts_claims_back() {
    let dir = TempDir::new("defer-reopen");
    let path = dir.path().join("store");
    let config = config(10);
    let (a, b, c);
    {
        let store = EmbeddedStore::open(&path, config.clone()).unwrap();
        a = ticket(
            store
                .append(request(&config, 1, "a", Some("ka")))
                .await
                .unwrap(),
        );
        b = ticket(store.append(request(&config, 1, "b", None)).await.unwrap());
        c = ticket(store.append(request(&config, 0, "c", None)).await.unwrap());
        assert_eq!(store.claim().await.unwrap().unwrap().ticket, c);
        assert_eq!(store.claim().await.unwrap().unwrap().ticket, a);
        store
            .complete(c.clone(), Outcome::Failed("400".into()))
            .await
            .unwrap();
        // `a` is claimed and never settled: the process "dies" here.
    }
    let store = EmbeddedStore::open(&path, config.clone()).unwrap();
    assert_eq!(
        store.status(c).await.unwrap(),
        Some(Status::Done(Outcome::Failed("400".into())))
    );
    assert_eq!(
        store.ticket_for_key("ka".into()).await.unwrap(),
        Some(a.clone())
    );
    let again = store.claim().await.unwrap().unwrap();
    assert_eq!(
        (again.ticket, again.attempts),
        (a, 2),
        "put back, in its place"
    );
    assert_eq!(store.claim().await.unwrap().unwrap().ticket, b);
}

fn open_error(path: &std::path::Path) -> String {
    match EmbeddedStore::open(path, config(10)) {
        Ok(store) => panic!("opened {store:?}"),
        Err(err @ StoreError::Open { .. }) => err.to_string(),
        Err(other) => panic!("not an open error: {other}"),
    }
}

#[tokio::test(start_paused = true)]
async fn embedded_corrupt_store_is_an_error_naming_the_path() {
    let dir = TempDir::new("defer-corrupt");
    let path = dir.path().join("store");
    std::fs::create_dir_all(&path).unwrap();
    let file = path.join(brownout::defer::FILE_NAME);
    std::fs::write(&file, vec![0x5a; 8192]).unwrap();
    let err = open_error(&path);
    assert!(err.contains(&file.display().to_string()), "{err}");

    // A real store, damaged in the middle.
    let path = dir.path().join("damaged");
    {
        let config = config(10);
        let store = EmbeddedStore::open(&path, config.clone()).unwrap();
        for i in 0..50 {
            store
                .append(request(&config, 1, &format!("{i:0>2000}"), None))
                .await
                .unwrap();
        }
    }
    let file = path.join(brownout::defer::FILE_NAME);
    let mut bytes = std::fs::read(&file).unwrap();
    let len = bytes.len();
    for b in &mut bytes[..len.min(4096)] {
        *b ^= 0xa5;
    }
    std::fs::write(&file, bytes).unwrap();
    let err = open_error(&path);
    assert!(err.contains(&file.display().to_string()), "{err}");
}

#[tokio::test(start_paused = true)]
async fn embedded_path_that_is_not_a_store_directory_is_an_error_naming_it() {
    let dir = TempDir::new("defer-notdir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"hello").unwrap();
    let err = open_error(&file);
    assert_eq!(
        err,
        format!(
            "deferral store {}: cannot open: is not a directory",
            file.display()
        )
    );
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"x").unwrap();
    let err = open_error(&other);
    assert!(
        err.starts_with(&format!(
            "deferral store {}: cannot open: holds 1 other file",
            other.display()
        )),
        "{err}"
    );
}

// ------------------------------------------------ Redis store, two replicas

#[cfg(feature = "defer-redis")]
#[tokio::test(start_paused = true)]
async fn redis_replicas_share_one_backlog_and_take_over_a_dead_ones_claims() {
    let server = redis_server::RedisServer::start();
    let config = config(100);
    let url = server.url();
    let open = || brownout::defer::RedisStore::open(&url, "/shared", config.clone());
    let (a, b) = (open().await.unwrap(), open().await.unwrap());
    assert_ne!(a.consumer(), b.consumer());
    let mut tickets = Vec::new();
    for i in 0..4 {
        tickets.push(ticket(
            a.append(request(&config, 1, &format!("{i}"), None))
                .await
                .unwrap(),
        ));
    }
    // Each replica claims from the one backlog: no request twice.
    let first = a.claim().await.unwrap().unwrap();
    let second = b.claim().await.unwrap().unwrap();
    assert_eq!((&first.ticket, &second.ticket), (&tickets[0], &tickets[1]));
    // Replica `a` dies holding its claim. `b` settles its own and goes on.
    drop(a);
    assert!(b.complete(second.ticket, Outcome::Expired).await.unwrap());
    assert_eq!(b.claim().await.unwrap().unwrap().ticket, tickets[2]);
    // After claim_after, `b` takes over the dead replica's claim first.
    tokio::time::advance(CLAIM_AFTER).await;
    let taken = b.claim().await.unwrap().unwrap();
    assert_eq!(
        (taken.ticket.clone(), taken.attempts),
        (tickets[0].clone(), 2)
    );
    assert!(
        b.complete(taken.ticket, Outcome::Failed("x".into()))
            .await
            .unwrap()
    );
    // A fresh replica sees the same backlog.
    let c = open().await.unwrap();
    assert_eq!(c.pending().await.unwrap(), vec![0, 2, 0]);
    assert_eq!(
        c.status(tickets[0].clone()).await.unwrap(),
        Some(Status::Done(Outcome::Failed("x".into())))
    );
}

#[cfg(feature = "defer-redis")]
#[tokio::test]
async fn redis_server_that_does_not_answer_is_an_error_naming_the_url() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/");
    let err = brownout::defer::RedisStore::open(&url, "/x", config(10))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("deferral store {url}: cannot open: ")),
        "{err}"
    );
}
