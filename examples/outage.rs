//! A back end goes down for a minute; a circuit breaker in front of it stops
//! the callers from waiting on it, probes it, and lets traffic back when it
//! returns. Runs in virtual time, so the two minutes take milliseconds.
//!
//! ```text
//! cargo run --example outage
//! ```
//!
//! Each line is five seconds of traffic (ten calls a second): calls the back
//! end answered, calls it failed (each of which kept a caller waiting for the
//! back end's two-second timeout), calls the breaker answered at once, and
//! the breaker's state at the end of the five seconds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use brownout::{BreakerPolicy, CircuitBreakerLayer, Rejected, WindowPolicy};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

#[tokio::main(flavor = "current_thread", start_paused = true)]
async fn main() {
    let down = Arc::new(AtomicBool::new(false));
    let backend_down = down.clone();
    // A back end that answers in 50 ms, or, while down, fails after a 2 s timeout.
    let backend = tower::service_fn(move |_: u32| {
        let down = backend_down.load(Ordering::Relaxed);
        async move {
            if down {
                tokio::time::sleep(Duration::from_secs(2)).await;
                Err::<&str, BoxError>("timed out".into())
            } else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok("slot booked")
            }
        }
    });

    let layer = CircuitBreakerLayer::new(BreakerPolicy {
        window: WindowPolicy::Count { size: 20 },
        minimum_calls: 10,
        open_for: Duration::from_secs(5),
        ..BreakerPolicy::default()
    })
    .route("slots");
    let state = layer.clone();
    let svc = ServiceBuilder::new().layer(layer).service(backend);

    println!(" time    back end  served  failed  rejected  breaker");
    let start = tokio::time::Instant::now();
    for window in 0..24u32 {
        let t = window * 5;
        let is_down = (10..70).contains(&t);
        down.store(is_down, Ordering::Relaxed);
        let mut calls = Vec::new();
        for i in 0..50u32 {
            let mut svc = svc.clone();
            calls.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100) * i).await;
                svc.ready().await?.call(i).await
            }));
        }
        let (mut served, mut failed, mut rejected) = (0, 0, 0);
        for call in calls {
            match call.await.expect("call task") {
                Ok(_) => served += 1,
                Err(err) if err.is::<Rejected>() => rejected += 1,
                Err(_) => failed += 1,
            }
        }
        tokio::time::sleep_until(start + Duration::from_secs(u64::from(t) + 5)).await;
        println!(
            "{:>4}s    {:<8}  {served:>6}  {failed:>6}  {rejected:>8}  {:?}",
            t,
            if is_down { "down" } else { "up" },
            state.state()
        );
    }
}
