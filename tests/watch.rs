//! The policy file watcher (feature `watch`): a change to the file reaches
//! the running stack; a bad file leaves the policy in force.
//!
//! File-system events arrive in real time, so this test waits for them:
//! on a channel the watcher reports to, bounded to 10 s, never a fixed
//! sleep.
#![cfg(feature = "watch")]

use std::sync::mpsc;
use std::time::Duration;

use brownout::{BrownoutLayer, Policy};

#[test]
fn a_changed_file_is_reloaded_and_a_bad_one_is_not() {
    let dir = std::env::temp_dir().join(format!("brownout-watch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.toml");
    std::fs::write(&path, "[breaker]\nfailure_rate = 0.5\n").unwrap();

    let layer = BrownoutLayer::from_policy(&Policy::from_path(&path).unwrap());
    let handle = layer.handle();
    let (tx, reloads) = mpsc::channel();
    let watcher = handle
        .watch(&path, move |outcome| {
            let _ = tx.send(outcome.as_ref().map_err(ToString::to_string).cloned());
        })
        .unwrap();
    assert_eq!(watcher.path(), path);

    std::fs::write(&path, "[breaker]\nfailure_rate = 0.25\n").unwrap();
    let outcome = reloads
        .recv_timeout(Duration::from_secs(10))
        .expect("a reload");
    assert_eq!(outcome, Ok(()));
    assert_eq!(layer.policy().breaker.failure_rate, 0.25);

    // Reads are not changes: neither the watcher's own reload (which would
    // reload again and again) nor anyone else's read brings a reload.
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "[breaker]\nfailure_rate = 0.25\n"
    );
    let quiet = brownout::stack::DEBOUNCE * 4;
    assert_eq!(
        reloads.recv_timeout(quiet),
        Err(mpsc::RecvTimeoutError::Timeout),
        "no reload without a change"
    );

    std::fs::write(&path, "[breaker]\nfailure_rate = 7.5\n").unwrap();
    let outcome = reloads
        .recv_timeout(Duration::from_secs(10))
        .expect("a reload attempt");
    let message = outcome.unwrap_err();
    assert!(
        message.contains("breaker.failure_rate: 7.5 is not in (0, 1]"),
        "{message}"
    );
    assert_eq!(
        layer.policy().breaker.failure_rate,
        0.25,
        "the policy in force stays"
    );

    drop(watcher);
    std::fs::remove_dir_all(&dir).unwrap();
}
