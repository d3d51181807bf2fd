//! The embedded store's file stays small through claims and releases
//! alone: what a replayer does for as long as the back end stays down
//! (claim, be rejected, put back, again). Claims and releases commit
//! without a sync, and redb frees the pages a commit replaced only at a
//! synced commit; with nothing else synced in between, 60,000 claims and
//! releases of 100 requests grew the file to 8 GiB (the drill's two-day
//! outage found it). The store lives on tmpfs (`/dev/shm`) when the
//! machine has one.
#![cfg(feature = "defer")]

#[path = "support/tempdir.rs"]
mod tempdir;

use std::time::{Duration, SystemTime};

use brownout::clock::Clock;
use brownout::defer::{DeferStore, Deferred, EmbeddedStore, FILE_NAME, StoreConfig};
use bytes::Bytes;

use tempdir::TempDir;

#[tokio::test(start_paused = true)]
async fn claims_and_releases_alone_do_not_grow_the_file() {
    let temp = TempDir::new("defer-claims-growth");
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.join(format!("brownout-claims-growth-{}", std::process::id()))
    } else {
        temp.path().join("store")
    };
    let _ = std::fs::remove_dir_all(&dir);
    let clock = Clock::tokio_at(SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_457_600));
    let config = StoreConfig {
        max_pending: 1_000,
        max_age: Duration::from_secs(7 * 24 * 3600),
        claim_after: Duration::from_secs(30),
        keep_finished: Duration::from_secs(7 * 24 * 3600),
        classes: 3,
        clock: clock.clone(),
    };
    let store = EmbeddedStore::open(&dir, config).expect("the store opens");
    for i in 0..50u64 {
        store
            .append(Deferred {
                priority: 1,
                method: "POST".to_owned(),
                uri: "/applications".to_owned(),
                headers: Vec::new(),
                body: Bytes::from(i.to_string()),
                arrived: clock.system_time(),
                idempotency_key: None,
            })
            .await
            .expect("append");
    }
    let file = dir.join(FILE_NAME);
    let size = || std::fs::metadata(&file).expect("the store's file").len();
    let after_appends = size();
    // 60 rounds of claiming all 50 and putting them back: 6,000 commits.
    for _ in 0..60 {
        let mut claimed = Vec::new();
        while let Some(claim) = store.claim().await.expect("claim") {
            claimed.push(claim.ticket);
        }
        assert_eq!(claimed.len(), 50);
        for ticket in claimed {
            store.release(ticket).await.expect("release");
        }
    }
    let after_cycles = size();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        after_cycles <= after_appends.max(1 << 20) * 8,
        "6,000 claims and releases grew the file from {after_appends} to {after_cycles} bytes"
    );
}
