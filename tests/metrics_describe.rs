//! Every metric brownout exports has help text, as `promtool check metrics`
//! requires: rendered by the Prometheus exporter, each `# TYPE` line has
//! its `# HELP` line. One test in its own binary: `describe` runs once per
//! process, against the recorder installed then.

use std::collections::BTreeSet;

use brownout::metrics;
use brownout::{BrownoutLayer, Policy};
use metrics_exporter_prometheus::PrometheusBuilder;

/// The metric names after `prefix` in `text`'s lines.
fn names(text: &str, prefix: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix(prefix))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_exported_metric_has_help_text() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    ::metrics::set_global_recorder(recorder).expect("the only recorder of this binary");

    // A stack with a breaker, a limit and a waiting room registers every
    // metric of a route when the route is first seen.
    let layer = BrownoutLayer::from_policy(&Policy::default());
    let svc = tower::Layer::layer(
        &layer,
        tower::service_fn(|()| async { Ok::<_, std::convert::Infallible>(()) }),
    );
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
        .block_on(tower::ServiceExt::oneshot(svc, ()))
        .unwrap();
    let constants = [
        metrics::REQUESTS_TOTAL,
        metrics::BREAKER_STATE,
        metrics::BREAKER_THROTTLE,
        metrics::BREAKER_TRANSITIONS_TOTAL,
        metrics::LATENCY_SECONDS,
        metrics::LIMIT,
        metrics::INFLIGHT,
        metrics::SHED_TOTAL,
        metrics::WAITING,
        metrics::WAIT_SECONDS,
        metrics::SHARED_STATE_ERRORS_TOTAL,
    ];
    // Values make every series render, histograms included.
    ::metrics::histogram!(metrics::LATENCY_SECONDS).record(0.1);
    ::metrics::histogram!(metrics::WAIT_SECONDS).record(0.1);
    ::metrics::counter!(metrics::BREAKER_TRANSITIONS_TOTAL).increment(1);
    // Registered by a budget shared through Redis (feature `fleet`).
    ::metrics::counter!(metrics::SHARED_STATE_ERRORS_TOTAL).increment(1);
    // The deferral's (feature `defer`), registered by its replay.
    #[cfg(feature = "defer")]
    let constants = {
        use brownout::defer;
        ::metrics::counter!(defer::DEFERRED_TOTAL).increment(1);
        ::metrics::gauge!(defer::DEFERRED_PENDING).set(1.0);
        ::metrics::counter!(defer::REPLAYED_TOTAL).increment(1);
        ::metrics::counter!(defer::DEFERRED_EXPIRED_TOTAL).increment(1);
        ::metrics::gauge!(defer::DEFERRED_AGE_SECONDS).set(1.0);
        let deferral = [
            defer::DEFERRED_TOTAL,
            defer::DEFERRED_PENDING,
            defer::REPLAYED_TOTAL,
            defer::DEFERRED_EXPIRED_TOTAL,
            defer::DEFERRED_AGE_SECONDS,
        ];
        [&constants[..], &deferral[..]].concat()
    };
    drop(layer);

    let text = handle.render();
    let typed = names(&text, "# TYPE ");
    let helped = names(&text, "# HELP ");
    for name in constants {
        assert!(typed.contains(name), "{name} is exported:\n{text}");
    }
    let missing: Vec<_> = typed.difference(&helped).collect();
    assert!(missing.is_empty(), "no help text for {missing:?}:\n{text}");
}
