//! `BrownoutLayer`'s read accessors and builder settings: the overflow
//! gate is read like any route, and `max_routes` and `clock` keep each
//! other's setting.

use brownout::stack::route_fn;
use brownout::{BrownoutLayer, Policy};
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
