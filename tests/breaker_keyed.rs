//! One breaker per key: isolation, shared state across clones, bounded
//! memory past `max_keys`.

use std::time::Duration;

use brownout::{
    BreakerPolicy, BreakerState, CircuitBreakerLayer, Reason, Rejected, Trip, WindowPolicy,
};
use tower::{BoxError, Layer, Service, ServiceExt};

fn policy() -> BreakerPolicy {
    BreakerPolicy {
        window: WindowPolicy::Count { size: 10 },
        minimum_calls: 4,
        // Opens at the threshold (the overflow breaker sees the failing
        // key's calls among the others').
        trip: Trip::Open,
        open_for: Duration::from_secs(10),
        ..BreakerPolicy::default()
    }
}

/// A back end where `/payments` always fails and every other path works.
fn backend() -> impl Service<&'static str, Response = &'static str, Error = BoxError> + Clone {
    tower::service_fn(|path: &'static str| async move {
        if path == "/payments" {
            Err::<&'static str, BoxError>("payments down".into())
        } else {
            Ok(path)
        }
    })
}

async fn call<S>(svc: &mut S, path: &'static str) -> Result<&'static str, BoxError>
where
    S: Service<&'static str, Response = &'static str, Error = BoxError>,
{
    svc.ready().await?.call(path).await
}

fn reason(err: &BoxError) -> Option<Reason> {
    err.downcast_ref::<Rejected>().map(Rejected::reason)
}

#[tokio::test(start_paused = true)]
async fn a_failing_key_does_not_open_another_keys_breaker() {
    let layer = CircuitBreakerLayer::new(policy()).per_key(16, |path: &&'static str| *path);
    let mut svc = layer.layer(backend());

    for _ in 0..4 {
        let err = call(&mut svc, "/payments").await.unwrap_err();
        assert_eq!(reason(&err), None, "the back end's own error");
    }
    let err = call(&mut svc, "/payments").await.unwrap_err();
    assert_eq!(reason(&err), Some(Reason::Open));
    assert_eq!(layer.state(&"/payments"), Some(BreakerState::Open));

    // `/slots` has its own breaker, closed and serving.
    for _ in 0..20 {
        assert_eq!(call(&mut svc, "/slots").await.unwrap(), "/slots");
    }
    assert_eq!(layer.state(&"/slots"), Some(BreakerState::Closed));
    assert_eq!(layer.keys(), 2);
}

#[tokio::test(start_paused = true)]
async fn clones_and_services_from_one_layer_share_each_keys_state() {
    let layer = CircuitBreakerLayer::new(policy()).per_key(16, |path: &&'static str| *path);
    let mut a = layer.layer(backend());
    let mut b = a.clone();
    let mut c = layer.layer(backend());
    for svc in [&mut a, &mut b] {
        for _ in 0..2 {
            call(svc, "/payments").await.unwrap_err();
        }
    }
    // Four failures across two clones opened the one shared breaker.
    let err = call(&mut c, "/payments").await.unwrap_err();
    assert_eq!(reason(&err), Some(Reason::Open));
    assert_eq!(c.state(&"/payments"), Some(BreakerState::Open));
}

#[tokio::test(start_paused = true)]
async fn keys_beyond_max_keys_share_one_overflow_breaker() {
    const PATHS: [&str; 6] = ["/a", "/b", "/payments", "/c", "/d", "/e"];
    let layer = CircuitBreakerLayer::new(policy()).per_key(2, |path: &&'static str| *path);
    let mut svc = layer.layer(backend());
    for path in PATHS {
        let _ = call(&mut svc, path).await;
    }
    // Only the first two keys got a breaker of their own.
    assert_eq!(layer.keys(), 2);
    assert_eq!(layer.state(&"/a"), Some(BreakerState::Closed));
    assert_eq!(layer.state(&"/payments"), None);

    // `/payments` fails on the overflow breaker, which `/c`, `/d` and `/e`
    // share: when it opens they are rejected too, but `/a` is not.
    for _ in 0..3 {
        let _ = call(&mut svc, "/payments").await;
    }
    let err = call(&mut svc, "/e").await.unwrap_err();
    assert_eq!(reason(&err), Some(Reason::Open));
    assert_eq!(call(&mut svc, "/a").await.unwrap(), "/a");
    assert_eq!(layer.keys(), 2, "memory stays bounded");
}
