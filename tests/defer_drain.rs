//! A backlog of deferred requests in the embedded store, drained in paused
//! time: every request is claimed exactly once, most important class first
//! and oldest first within a class, each settled once, a full store refuses
//! the next one, and the store ends empty. 10,000 requests in every run;
//! 100,000 with `--ignored` (some minutes in a debug build: each append and
//! each settlement is a transaction synced to disk). The store lives on
//! tmpfs (`/dev/shm`) when the machine has one, so that a sync costs what
//! it costs in memory; the order and the count are what is checked, not
//! the speed (the rates are printed).
#![cfg(feature = "defer")]

#[path = "support/tempdir.rs"]
mod tempdir;

use std::time::{Duration, SystemTime};

use brownout::clock::Clock;
use brownout::defer::{Appended, DeferStore, Deferred, EmbeddedStore, Outcome, StoreConfig};
use bytes::Bytes;

use tempdir::TempDir;

/// A class for request `i`: an LCG spreads urgent (0), normal (1) and bulk
/// (2) about 1:6:3, in no order.
fn class_of(i: u64) -> u8 {
    let x = i
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407)
        >> 33;
    match x % 10 {
        0 => 0,
        1..=6 => 1,
        _ => 2,
    }
}

#[tokio::test(start_paused = true)]
async fn a_backlog_of_10k_drains_most_important_first_oldest_first_none_lost_none_twice() {
    drain(10_000).await;
}

#[tokio::test(start_paused = true)]
#[ignore = "100,000 synced appends and settlements: minutes in a debug build; run with --ignored"]
async fn a_backlog_of_100k_drains_most_important_first_oldest_first_none_lost_none_twice() {
    drain(100_000).await;
}

async fn drain(n: u64) {
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        let path = shm.join(format!("brownout-drain-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        Some(path)
    } else {
        None
    };
    let temp = TempDir::new("defer-drain");
    let path = dir.clone().unwrap_or_else(|| temp.path().join("store"));
    let clock = Clock::tokio_at(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_457_600));
    let config = StoreConfig {
        max_pending: n,
        max_age: Duration::from_secs(7 * 24 * 3600),
        claim_after: Duration::from_secs(30),
        keep_finished: Duration::from_secs(7 * 24 * 3600),
        classes: 3,
        clock,
    };
    let store = EmbeddedStore::open(&path, config.clone()).expect("the store opens");

    let started = std::time::Instant::now();
    let mut per_class = [0u64; 3];
    for i in 0..n {
        let class = class_of(i);
        per_class[usize::from(class)] += 1;
        let appended = store
            .append(Deferred {
                priority: class,
                method: "POST".to_owned(),
                uri: "/applications".to_owned(),
                headers: Vec::new(),
                body: Bytes::from(i.to_string()),
                arrived: config.clock.system_time(),
                idempotency_key: None,
            })
            .await
            .unwrap();
        assert!(matches!(appended, Appended::New(_)), "{i}: {appended:?}");
    }
    let appended_in = started.elapsed();
    assert_eq!(store.pending().await.unwrap(), per_class.to_vec());
    // Full at max_pending: the next one is refused, not lost.
    let full = store
        .append(Deferred {
            priority: 0,
            method: "POST".to_owned(),
            uri: "/applications".to_owned(),
            headers: Vec::new(),
            body: Bytes::from_static(b"one too many"),
            arrived: config.clock.system_time(),
            idempotency_key: None,
        })
        .await
        .unwrap();
    assert!(matches!(full, Appended::Full), "{full:?}");

    let started = std::time::Instant::now();
    let mut seen = vec![false; n as usize];
    let mut last: Option<(u8, u64)> = None;
    let mut claimed = 0u64;
    while let Some(claim) = store.claim().await.unwrap() {
        let i: u64 = std::str::from_utf8(&claim.request.body)
            .unwrap()
            .parse()
            .unwrap();
        let class = claim.request.priority;
        assert_eq!(class, class_of(i), "request {i} kept its class");
        assert!(!seen[i as usize], "request {i} claimed twice");
        seen[i as usize] = true;
        if let Some((last_class, last_i)) = last {
            assert!(
                (last_class, last_i) < (class, i),
                "request {i} (class {class}) claimed after {last_i} (class {last_class})"
            );
        }
        last = Some((class, i));
        assert_eq!(claim.attempts, 1);
        let done = store
            .complete(
                claim.ticket,
                Outcome::Served {
                    status: 201,
                    content_type: None,
                    body: Bytes::new(),
                },
            )
            .await
            .unwrap();
        assert!(done, "request {i} settled once");
        claimed += 1;
    }
    let drained_in = started.elapsed();
    assert_eq!(claimed, n, "every request claimed");
    assert!(seen.iter().all(|&s| s), "none lost");
    assert_eq!(store.pending().await.unwrap(), vec![0, 0, 0]);
    assert_eq!(store.oldest().await.unwrap(), None);
    eprintln!(
        "defer_drain: {n} requests (urgent {}, normal {}, bulk {}): appended in {appended_in:.1?} ({:.0}/s), claimed and settled in {drained_in:.1?} ({:.0}/s)",
        per_class[0],
        per_class[1],
        per_class[2],
        n as f64 / appended_in.as_secs_f64(),
        n as f64 / drained_in.as_secs_f64(),
    );
    drop(store);
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}
