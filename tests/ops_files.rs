//! The Grafana dashboard and the Prometheus alert rules in `ops/` use only
//! metrics brownout exports: every `brownout_…` name in them is one of
//! `brownout::metrics`' constants (a histogram's `_bucket`, `_sum` and
//! `_count` series included).

use brownout::metrics;

const CONSTANTS: [&str; 10] = [
    metrics::REQUESTS_TOTAL,
    metrics::BREAKER_STATE,
    metrics::BREAKER_TRANSITIONS_TOTAL,
    metrics::LATENCY_SECONDS,
    metrics::LIMIT,
    metrics::INFLIGHT,
    metrics::SHED_TOTAL,
    metrics::WAITING,
    metrics::WAIT_SECONDS,
    metrics::SHARED_STATE_ERRORS_TOTAL,
];

const HISTOGRAMS: [&str; 2] = [metrics::LATENCY_SECONDS, metrics::WAIT_SECONDS];

/// Every `brownout_…` word in `text`.
fn names(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("brownout_") {
        let word = &rest[at..];
        let end = word
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(word.len());
        names.push(&word[..end]);
        rest = &word[end..];
    }
    names
}

/// Whether `name` is a series of one of the crate's metrics.
fn known(name: &str) -> bool {
    CONSTANTS.contains(&name)
        || HISTOGRAMS.iter().any(|histogram| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| name.strip_suffix(suffix) == Some(histogram))
        })
}

fn check(path: &str, text: &str) {
    let used = names(text);
    assert!(!used.is_empty(), "{path} uses brownout's metrics");
    let unknown: Vec<_> = used.into_iter().filter(|name| !known(name)).collect();
    assert!(
        unknown.is_empty(),
        "{path} uses metrics brownout does not export: {unknown:?}"
    );
}

#[test]
fn the_dashboard_uses_only_the_crates_metrics() {
    let text = include_str!("../ops/grafana/brownout.json");
    let dashboard: serde_json::Value = serde_json::from_str(text).expect("the dashboard is JSON");
    assert!(
        dashboard["panels"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    );
    check("ops/grafana/brownout.json", text);
}

#[test]
fn the_alert_rules_use_only_the_crates_metrics() {
    check(
        "ops/prometheus/alerts.yml",
        include_str!("../ops/prometheus/alerts.yml"),
    );
}

#[test]
fn an_unknown_name_is_caught() {
    assert!(!known("brownout_requests"));
    assert!(!known("brownout_limit_bucket"));
    assert!(known("brownout_wait_seconds_bucket"));
    assert_eq!(
        names("rate(brownout_shed_total[5m]) / brownout_x"),
        ["brownout_shed_total", "brownout_x"]
    );
}
