//! `BrownoutLayer`'s read accessors and builder settings: the overflow
//! gate is read like any route, and `max_routes` and `clock` keep each
//! other's setting.

use std::time::{Duration, SystemTime};

use brownout::clock::Clock;
use brownout::stack::route_fn;
use brownout::{BrownoutLayer, Policy, Reason, Rejected};
use tokio::sync::oneshot;
use tower::{BoxError, Layer, Service, ServiceExt};

/// A request: its route, and what the back end waits for before answering.
struct Call {
    route: &'static str,
    release: Option<oneshot::Receiver<()>>,
}

fn backend() -> impl Service<Call, Response = (), Error = BoxError, Future: Send> + Clone {
    tower::service_fn(|call: Call| async move {
        if let Some(release) = call.release {
            let _ = release.await;
        }
        Ok::<(), BoxError>(())
    })
}

fn route_of(call: &Call) -> Option<&str> {
    Some(call.route)
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn inflight_reads_the_overflow_gate_like_state_limit_and_waiting() {
    let layer = BrownoutLayer::from_policy(&Policy::default())
        .max_routes(1)
        .route_by(route_fn(route_of));
    let svc = layer.layer(backend());
    // The first route has a gate of its own; the next shares the overflow gate.
    svc.clone()
        .oneshot(Call {
            route: "/slots",
            release: None,
        })
        .await
        .unwrap();
    let (release, held) = oneshot::channel();
    let call = tokio::spawn(svc.clone().oneshot(Call {
        route: "/beyond",
        release: Some(held),
    }));
    settle().await;

    assert_eq!(layer.state("/beyond"), None, "no gate of its own");
    assert!(layer.state("overflow").is_some());
    assert!(layer.limit("overflow").is_some());
    assert_eq!(
        layer.inflight("overflow"),
        Some(1),
        "the overflow gate's call"
    );
    assert_eq!(layer.inflight("/slots"), Some(0));
    assert_eq!(layer.inflight("/never-seen"), None);

    release.send(()).unwrap();
    call.await.unwrap().unwrap();
    assert_eq!(layer.inflight("overflow"), Some(0), "its slot given back");
}

/// A maintenance window in 2030, and a clock on which it is inside it.
fn in_maintenance() -> (Policy, Clock) {
    let policy = Policy::from_toml(
        r#"
        [[maintenance]]
        from = "2030-01-01T00:00:00Z"
        until = "2030-01-02T00:00:00Z"
        message = "Planned upgrade."
        "#,
    )
    .unwrap();
    let one_am = SystemTime::UNIX_EPOCH + Duration::from_secs(1_893_459_600);
    (policy, Clock::tokio_at(one_am))
}

fn reason(result: Result<(), BoxError>) -> Option<Reason> {
    let err = result.err()?;
    err.downcast_ref::<Rejected>().map(Rejected::reason)
}

#[tokio::test(start_paused = true)]
async fn max_routes_and_clock_keep_each_other_in_either_order() {
    let (policy, clock) = in_maintenance();
    let layers = [
        BrownoutLayer::from_policy(&policy)
            .max_routes(1)
            .clock(clock.clone()),
        BrownoutLayer::from_policy(&policy)
            .clock(clock.clone())
            .max_routes(1),
    ];
    for (order, layer) in layers.into_iter().enumerate() {
        let layer = layer.route_by(route_fn(route_of));
        let svc = layer.layer(backend());
        for route in ["/slots", "/beyond"] {
            let call = Call {
                route,
                release: None,
            };
            // The clock says 2030: inside the window.
            assert_eq!(
                reason(svc.clone().oneshot(call).await),
                Some(Reason::Maintenance),
                "order {order}, {route}: the clock was kept"
            );
        }
        assert!(layer.state("/slots").is_some(), "order {order}");
        assert_eq!(
            layer.state("/beyond"),
            None,
            "order {order}: max_routes was kept, /beyond shares the overflow gate"
        );
    }
}
