//! The adaptive limit's metrics: `brownout_limit`,
//! `brownout_inflight`, shed counts by class, read through metrics-util's
//! `DebuggingRecorder` installed as this thread's recorder before the layer
//! is built.

use std::collections::HashMap;
use std::time::Duration;

use brownout::policy::Algorithm;
use brownout::priority::{Classes, Priority, priority_fn};
use brownout::{AdaptiveLimitLayer, LimitPolicy, Reason, Rejected};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::{BoxError, Layer, Service, ServiceExt};

/// Every metric of one snapshot: (name, sorted labels) → value.
fn snapshot(recorder: &DebuggingRecorder) -> HashMap<(String, Vec<(String, String)>), DebugValue> {
    recorder
        .snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<_> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            ((key.name().to_owned(), labels), value)
        })
        .collect()
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut labels: Vec<_> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    labels
}

fn by_class(class: &u8, classes: &Classes) -> Priority {
    classes.clamp(Priority::new(*class))
}

#[test]
fn sheds_are_counted_by_class_and_the_limit_and_inflight_are_published() {
    let recorder = DebuggingRecorder::new();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let layer = AdaptiveLimitLayer::new(LimitPolicy {
                algorithm: Algorithm::Aimd,
                initial: 2,
                ..LimitPolicy::default()
            })
            .route("slots")
            .priority(priority_fn(by_class));
            let backend = tower::service_fn(|hold: u8| async move {
                tokio::time::sleep(Duration::from_millis(u64::from(hold))).await;
                Ok::<_, BoxError>(())
            });
            let mut svc = layer.layer(backend);

            // Two calls hold both slots; one call of each class is shed.
            let a = ServiceExt::<u8>::ready(&mut svc).await.unwrap().call(100);
            let b = ServiceExt::<u8>::ready(&mut svc).await.unwrap().call(100);
            for class in 0..3u8 {
                let svc = layer.layer(tower::service_fn(|_: u8| async { Ok::<_, BoxError>(()) }));
                let err = svc.oneshot(class).await.unwrap_err();
                assert_eq!(
                    err.downcast_ref::<Rejected>().unwrap().reason(),
                    Reason::Shed
                );
            }
            a.await.unwrap();
            b.await.unwrap();

            let seen = snapshot(&recorder);
            for class in ["urgent", "normal", "bulk"] {
                let key = (
                    "brownout_shed_total".to_owned(),
                    labels(&[("route", "slots"), ("priority", class)]),
                );
                assert_eq!(seen.get(&key), Some(&DebugValue::Counter(1)), "{class}");
            }
            let rejected = (
                "brownout_requests_total".to_owned(),
                labels(&[
                    ("route", "slots"),
                    ("outcome", "rejected"),
                    ("reason", "shed"),
                ]),
            );
            assert_eq!(seen.get(&rejected), Some(&DebugValue::Counter(3)));
            let limit = ("brownout_limit".to_owned(), labels(&[("route", "slots")]));
            assert_eq!(seen.get(&limit), Some(&DebugValue::Gauge(2.0.into())));

            // 70 calls, one at a time: a window of 64 samples closes and
            // AIMD adds one (one in flight is half the limit of 2: not
            // app-limited).
            for _ in 0..70 {
                ServiceExt::<u8>::ready(&mut svc)
                    .await
                    .unwrap()
                    .call(5)
                    .await
                    .unwrap();
            }
            let seen = snapshot(&recorder);
            assert_eq!(seen.get(&limit), Some(&DebugValue::Gauge(3.0.into())));
            let inflight = (
                "brownout_inflight".to_owned(),
                labels(&[("route", "slots")]),
            );
            assert_eq!(seen.get(&inflight), Some(&DebugValue::Gauge(0.0.into())));
            assert_eq!(layer.limit(), 3);
        });
    });
}
