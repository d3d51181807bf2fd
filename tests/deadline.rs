//! Deadline propagation: a request's deadline bounds its wait and
//! its call, and the time left after a wait is passed on to the back end.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use brownout::deadline::deadline_fn;
use brownout::policy::Algorithm;
use brownout::{BrownoutLayer, Policy, Reason, Rejected};
use tokio::time::Instant;
use tower::{BoxError, Layer, ServiceExt};

fn one_at_a_time() -> Policy {
    let mut policy = Policy::default();
    policy.limit.algorithm = Algorithm::Fixed;
    policy.limit.initial = 1;
    policy
}

fn reason<T>(result: &Result<T, BoxError>) -> Option<Reason> {
    result
        .as_ref()
        .err()?
        .downcast_ref::<Rejected>()
        .map(Rejected::reason)
}

/// A request: how long the back end takes, and the caller's deadline.
#[derive(Debug, Clone, Copy)]
struct Call {
    hold: Duration,
    deadline: Option<Duration>,
}

#[tokio::test(start_paused = true)]
async fn a_call_that_outlives_its_deadline_is_abandoned_at_the_deadline() {
    let dropped = Arc::new(Mutex::new(0));
    let backend = {
        let dropped = dropped.clone();
        tower::service_fn(move |c: Call| {
            let guard = DropCounter(dropped.clone());
            async move {
                tokio::time::sleep(c.hold).await;
                drop(guard);
                Ok::<_, BoxError>(())
            }
        })
    };
    let layer =
        BrownoutLayer::from_policy(&Policy::default()).deadline(deadline_fn(|c: &Call| c.deadline));
    let svc = layer.layer(backend);

    let start = Instant::now();
    let result = svc
        .clone()
        .oneshot(Call {
            hold: Duration::from_secs(5),
            deadline: Some(Duration::from_millis(100)),
        })
        .await;
    assert_eq!(reason(&result), Some(Reason::Deadline));
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(100),
        "answered at the deadline"
    );
    assert_eq!(
        *dropped.lock().unwrap(),
        1,
        "the back end's call was dropped"
    );

    // A call that finishes in time is served; one without a deadline waits
    // as long as the back end takes.
    let quick = Call {
        hold: Duration::from_millis(50),
        deadline: Some(Duration::from_millis(100)),
    };
    svc.clone().oneshot(quick).await.unwrap();
    let patient = Call {
        hold: Duration::from_secs(5),
        deadline: None,
    };
    svc.clone().oneshot(patient).await.unwrap();
}

struct DropCounter(Arc<Mutex<u32>>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        *self.0.lock().unwrap() += 1;
    }
}

#[cfg(feature = "http")]
#[tokio::test(start_paused = true)]
async fn the_time_left_after_a_wait_is_re_encoded_in_grpc_timeout() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let backend = {
        let seen = seen.clone();
        tower::service_fn(move |req: http::Request<String>| {
            let seen = seen.clone();
            async move {
                let timeout = req
                    .headers()
                    .get("grpc-timeout")
                    .map(|v| v.to_str().unwrap().to_owned());
                seen.lock().unwrap().push(timeout);
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
            }
        })
    };
    let layer = BrownoutLayer::from_policy(&one_at_a_time()).http();
    let svc = layer.layer(backend);
    let request = |timeout: &str| {
        http::Request::builder()
            .uri("/booking.Booking/Book")
            .header("grpc-timeout", timeout)
            .body(String::new())
            .unwrap()
    };
    // The first call holds the only slot for 300 ms; the second waits that
    // long, so 700 ms of its 1 s are left when it reaches the back end.
    let first = tokio::spawn(svc.clone().oneshot(request("1S")));
    tokio::task::yield_now().await;
    let second = svc.clone().oneshot(request("1S")).await.unwrap();
    assert_eq!(second.status(), http::StatusCode::OK);
    first.await.unwrap().unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some("1S".to_owned()), Some("700000u".to_owned())]
    );
}
