//! What deferring a request costs its caller, with the embedded store.
//!
//! `cargo bench --bench defer --features defer` runs, on a current-thread
//! runtime, through `BrownoutLayer::from_policy(&p).http()` with the
//! breaker forced open:
//!
//! - `defer/rejected_503`: a POST on a route without a `defer` section:
//!   the ordinary fallback's 503, the baseline;
//! - `defer/deferred_202`: a POST on a deferring route: the body read, the
//!   request written to the redb store and synced (`fsync`), the 202.
//!
//! Criterion reports the mean. The tail is what the target is about, so
//! before criterion runs, the bench sends [`SAMPLES`] requests of each kind
//! one at a time, times each, and prints p50, p99 and p99.9 and the p99
//! added by deferral (deferred p99 − rejected p99). The store directory is
//! in the system's temporary directory: its disk's `fsync` is what a
//! deferred request waits for.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::{Duration, Instant};

use brownout::defer::{Deferral, Outcome};
use brownout::fallback::ProblemJson;
use brownout::{BrownoutLayer, Policy};
use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::runtime::{Builder, Runtime};
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

/// Requests timed one by one for the percentiles.
const SAMPLES: usize = 3_000;

type Svc = BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

fn deferral_of(_: &Svc) -> brownout::defer::RouteDeferral {
    DEFERRAL
        .get()
        .unwrap()
        .route("/applications")
        .unwrap()
        .clone()
}

static DEFERRAL: std::sync::OnceLock<Deferral> = std::sync::OnceLock::new();

fn app(rt: &Runtime, dir: &std::path::Path) -> Svc {
    let policy = Policy::from_toml(&format!(
        r#"
        [breaker]
        mode = "forced_open"

        [routes."/applications".defer]
        path = {:?}
        max_pending = 10000000
        "#,
        dir.display().to_string()
    ))
    .unwrap();
    let deferral = rt.block_on(Deferral::open(&policy)).unwrap();
    let _ = DEFERRAL.set(deferral.clone());
    let backend = tower::service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::<Bytes>::from("created")))
    });
    let svc = ServiceBuilder::new()
        .layer(deferral.status_layer())
        .layer(
            BrownoutLayer::from_policy(&policy)
                .http()
                .fallback(deferral.fallback(ProblemJson)),
        )
        .service(backend);
    BoxCloneService::new(svc)
}

const BODY: &str = r#"{"applicant":"Ada Lovelace","passport":"X1234567","urgent":false}"#;

fn request(path: &str) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Full::from(BODY))
        .unwrap()
}

async fn send(svc: &Svc, path: &str, expect: StatusCode) {
    let response = svc.clone().oneshot(black_box(request(path))).await.unwrap();
    assert_eq!(response.status(), expect);
    black_box(response);
}

fn percentiles(rt: &Runtime, svc: &Svc, path: &str, expect: StatusCode) -> [Duration; 3] {
    let mut times: Vec<Duration> = rt.block_on(async {
        let mut times = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let start = Instant::now();
            send(svc, path, expect).await;
            times.push(start.elapsed());
        }
        times
    });
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    [at(0.5), at(0.99), at(0.999)]
}

fn bench(c: &mut Criterion) {
    let rt = Builder::new_current_thread().enable_all().build().unwrap();
    let dir = std::env::temp_dir().join(format!("brownout-bench-defer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let svc = app(&rt, &dir);

    let rejected = percentiles(&rt, &svc, "/payments", StatusCode::SERVICE_UNAVAILABLE);
    let deferred = percentiles(&rt, &svc, "/applications", StatusCode::ACCEPTED);
    println!(
        "defer: {SAMPLES} requests each, one at a time\n  rejected 503: p50 {:?}  p99 {:?}  p99.9 {:?}\n  deferred 202: p50 {:?}  p99 {:?}  p99.9 {:?}\n  added by deferral at p99: {:?}",
        rejected[0],
        rejected[1],
        rejected[2],
        deferred[0],
        deferred[1],
        deferred[2],
        deferred[1].saturating_sub(rejected[1]),
    );

    // The store's side of a replay: claim, then store the outcome.
    rt.block_on(async {
        let route = deferral_of(&svc);
        let store = route.store();
        let start = Instant::now();
        let mut n = 0u32;
        while let Some(claimed) = store.claim().await.unwrap() {
            let outcome = Outcome::Served {
                status: 201,
                content_type: None,
                body: Bytes::from_static(b"created"),
            };
            assert!(store.complete(claimed.ticket, outcome).await.unwrap());
            n += 1;
        }
        let each = start.elapsed() / n.max(1);
        println!(
            "  replay bookkeeping (claim + outcome), one at a time: {each:?} per request, \
             {:.0} requests/s",
            1.0 / each.as_secs_f64()
        );
    });

    let mut group = c.benchmark_group("defer");
    for (name, path, expect) in [
        ("rejected_503", "/payments", StatusCode::SERVICE_UNAVAILABLE),
        ("deferred_202", "/applications", StatusCode::ACCEPTED),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        send(&svc, path, expect).await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
    drop(svc);
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);
