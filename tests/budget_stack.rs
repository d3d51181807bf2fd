//! The `[budget]` from the policy alone: `BrownoutLayer::from_policy` counts
//! it in front of admission. Over budget is `429` with `Retry-After` and a
//! problem document over HTTP (a `Rejected` with reason `budget` in the
//! generic stack), counted as `rejected{reason="budget"}` on the route; the
//! urgent reserve holds; a unit taken by a request admission then rejects
//! is given back; units free when the period has passed.
#![cfg(feature = "toml")]

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use brownout::{BrownoutLayer, Policy, Reason, Rejected};
use http::{Request, Response, StatusCode};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::sync::oneshot;
use tower::{BoxError, Layer, ServiceExt};

type Labels = Vec<(String, String)>;

fn counters() -> &'static Mutex<HashMap<(String, Labels), u64>> {
    static SEEN: OnceLock<Mutex<HashMap<(String, Labels), u64>>> = OnceLock::new();
    SEEN.get_or_init(Default::default)
}

fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this test binary");
        snapshotter
    })
}

/// `brownout_requests_total` of `route` by (outcome, reason), summed over
/// snapshots.
fn requests(route: &str) -> HashMap<(String, String), u64> {
    let mut seen = counters().lock().unwrap();
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        if let DebugValue::Counter(n) = value {
            let key = key.key();
            let mut l: Labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            l.sort();
            *seen.entry((key.name().to_owned(), l)).or_default() += n;
        }
    }
    let label = |l: &Labels, name: &str| {
        l.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut out = HashMap::new();
    for ((name, l), n) in seen.iter() {
        if name == "brownout_requests_total" && label(l, "route") == route && *n > 0 {
            *out.entry((label(l, "outcome"), label(l, "reason")))
                .or_default() += *n;
        }
    }
    out
}

fn count(map: &HashMap<(String, String), u64>, outcome: &str, reason: &str) -> u64 {
    map.get(&(outcome.to_owned(), reason.to_owned()))
        .copied()
        .unwrap_or(0)
}

fn get(path: &str, class: &str) -> Request<String> {
    Request::get(path)
        .header("x-priority", class)
        .body(String::new())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn over_budget_is_429_with_retry_after_and_the_urgent_reserve_holds() {
    snapshotter();
    let policy = Policy::from_toml(
        r#"
        [budget]
        capacity = 4
        per = "1h"
        shares = { urgent = 0.25 }     # one unit kept for urgent requests
        "#,
    )
    .unwrap();
    let layer = BrownoutLayer::try_from_policy(&policy).unwrap().http();
    assert!(layer.budget().is_some());
    let svc = layer.layer(tower::service_fn(|_: Request<String>| async {
        Ok::<_, BoxError>(Response::new(String::from("slots")))
    }));
    let route = "/slots";
    let mut statuses = Vec::new();
    for class in ["normal", "bulk", "normal", "normal", "urgent", "urgent"] {
        let response = svc.clone().oneshot(get(route, class)).await.unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            let retry: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            // A unit frees a period after the end of its slot (`per / 60`).
            assert!((3600..=3660).contains(&retry), "Retry-After {retry}");
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json"
            );
            assert!(
                response.body().contains("\"status\":429"),
                "{}",
                response.body()
            );
        }
    }
    // Three unreserved units; the fourth normal one would take urgent's.
    assert_eq!(statuses, [200, 200, 200, 429, 200, 429]);
    let seen = requests(route);
    assert_eq!(count(&seen, "served", "none"), 4, "{seen:?}");
    assert_eq!(count(&seen, "rejected", "budget"), 2, "{seen:?}");
    assert_eq!(
        seen.values().sum::<u64>(),
        6,
        "every request ended once: {seen:?}"
    );

    // A period later, every unit is free again.
    tokio::time::advance(Duration::from_secs(3600 + 61)).await;
    let response = svc.clone().oneshot(get(route, "normal")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_unit_taken_by_a_request_admission_rejects_is_given_back() {
    snapshotter();
    let policy = Policy::from_toml(
        r#"
        [limit]
        algorithm = "fixed"
        initial = 1
        min = 1
        max = 1

        [waiting_room]
        capacity = 0

        [budget]
        capacity = 2
        per = "1h"
        "#,
    )
    .unwrap();
    let layer = BrownoutLayer::try_from_policy(&policy).unwrap();
    let (release, released) = oneshot::channel::<()>();
    let released = std::sync::Arc::new(tokio::sync::Mutex::new(Some(released)));
    let svc = layer.layer(tower::service_fn(move |n: u32| {
        let released = released.clone();
        async move {
            if n == 0 {
                let rx = released.lock().await.take().unwrap();
                let _ = rx.await;
            }
            Ok::<_, BoxError>(n)
        }
    }));
    // The first call holds the only in-flight slot (and a unit).
    let first = tokio::spawn(svc.clone().oneshot(0));
    tokio::task::yield_now().await;
    // The second is shed by the limit: its unit goes back.
    let err = svc.clone().oneshot(1).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<Rejected>().unwrap().reason(),
        Reason::Shed
    );
    release.send(()).unwrap();
    assert_eq!(first.await.unwrap().unwrap(), 0);
    // So the budget of 2 still has one: the third is admitted...
    assert_eq!(svc.clone().oneshot(2).await.unwrap(), 2);
    // ...and the fourth is over it.
    let err = svc.clone().oneshot(3).await.unwrap_err();
    let rejected = err.downcast_ref::<Rejected>().unwrap();
    assert_eq!(rejected.reason(), Reason::Budget);
    assert!(rejected.retry_after().is_some());
    let seen = requests("default");
    assert_eq!(count(&seen, "served", "none"), 2, "{seen:?}");
    assert_eq!(count(&seen, "rejected", "shed"), 1, "{seen:?}");
    assert_eq!(count(&seen, "rejected", "budget"), 1, "{seen:?}");
}

#[test]
fn a_budget_section_with_bad_values_is_an_error_naming_the_field() {
    let mut policy = Policy::from_toml("[budget]\ncapacity = 5\n").unwrap();
    policy.budget.as_mut().unwrap().capacity = 0;
    let err = BrownoutLayer::try_from_policy(&policy)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("budget.capacity: 0"), "{err}");
    let mut policy = Policy::from_toml("[budget]\ncapacity = 5\n").unwrap();
    policy.budget.as_mut().unwrap().shares = [("vip".to_owned(), 0.5)].into();
    let err = BrownoutLayer::try_from_policy(&policy)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("budget.shares.vip"), "{err}");
}
