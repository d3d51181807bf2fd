//! What the examples' servers share around their own routes: logs, the
//! Prometheus recorder, `$PORT`, the policy file, the loopback listener and
//! its `listening on http://127.0.0.1:PORT` line (scripts such as
//! `.ci/soak` read it), RFC 9457 problem documents, and ops' routes for the
//! simulated back end and `GET /metrics`.
//!
//! Shared by the examples with `#[path = "shared/server.rs"] mod server;`
//! (a file in a subfolder of `examples/` is not an example of its own).
#![allow(dead_code)] // each example uses part of it

use std::fmt::Display;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use brownout::sim::SimHandle;
use brownout::{Policy, PolicyHandle};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::json;

use super::backend::{self, BackendChange};

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// The port from `$PORT` (`default` when unset; 0 picks a free one).
pub fn port(default: u16) -> Result<u16, String> {
    match std::env::var("PORT") {
        Err(_) => Ok(default),
        Ok(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("PORT: {text:?} is not a port number (0 to 65535)")),
    }
}

/// How [`main`] starts an HTTP example.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    /// The service's name, at the head of its error messages.
    pub name: &'static str,
    /// The port when `$PORT` is unset.
    pub port: u16,
    /// The variable naming the policy file when no argument does.
    pub policy_var: &'static str,
    /// The policy file when neither does.
    pub default_policy: &'static str,
}

/// The examples' Prometheus exporter: brownout's `_seconds` histograms
/// rendered as Prometheus histograms with [`SECONDS_BUCKETS`] (without
/// buckets the exporter renders summaries, which cannot be aggregated
/// across replicas).
///
/// [`SECONDS_BUCKETS`]: brownout::metrics::SECONDS_BUCKETS
pub fn prometheus() -> PrometheusBuilder {
    use brownout::metrics::{LATENCY_SECONDS, SECONDS_BUCKETS, WAIT_SECONDS};
    use metrics_exporter_prometheus::Matcher;

    [LATENCY_SECONDS, WAIT_SECONDS]
        .into_iter()
        .fold(PrometheusBuilder::new(), |builder, name| {
            builder
                .set_buckets_for_metric(Matcher::Full(name.to_owned()), &SECONDS_BUCKETS)
                .expect("buckets are given")
        })
}

/// Installs the examples' Prometheus recorder ([`prometheus`]) as the
/// global one, describes brownout's metrics and keeps the recorder's
/// histograms trimmed every 5 s (on a task: call inside a tokio runtime).
pub fn install_metrics() -> Result<PrometheusHandle, String> {
    let metrics = prometheus()
        .install_recorder()
        .map_err(|err| format!("cannot install the metrics recorder: {err}"))?;
    brownout::metrics::describe();
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(metrics)
}

/// Runs an HTTP example: logs, installs the Prometheus recorder (first:
/// brownout's gates register their metrics when built), loads the policy
/// (the first argument, else `$policy_var`, else `default_policy`), builds
/// the router with `build(policy, its path, the recorder's handle)`, listens
/// on `127.0.0.1:$PORT`, prints `listening on http://127.0.0.1:PORT` on
/// stdout and serves until Ctrl-C. Exits with 2 on a bad policy or `$PORT`.
pub async fn main<E: Display>(
    service: Service,
    build: impl FnOnce(Policy, PathBuf, PrometheusHandle) -> Result<Router, E>,
) -> ExitCode {
    init_tracing();
    let name = service.name;

    let metrics = match install_metrics() {
        Ok(handle) => handle,
        Err(err) => {
            eprintln!("{name}: {err}");
            return ExitCode::FAILURE;
        }
    };

    let path = std::env::args_os()
        .nth(1)
        .or_else(|| std::env::var_os(service.policy_var))
        .map_or_else(|| PathBuf::from(service.default_policy), PathBuf::from);
    let policy = match Policy::from_path(&path) {
        Ok(policy) => policy,
        Err(err) => {
            eprintln!("{name}: {err}");
            return ExitCode::from(2);
        }
    };
    let port = match port(service.port) {
        Ok(port) => port,
        Err(err) => {
            eprintln!("{name}: {err}");
            return ExitCode::from(2);
        }
    };
    let router = match build(policy, path.clone(), metrics) {
        Ok(router) => router,
        Err(err) => {
            eprintln!("{name}: {err}");
            return ExitCode::FAILURE;
        }
    };

    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("{name}: cannot listen on 127.0.0.1:{port}: {err}");
            return ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(err) => {
            eprintln!("{name}: {err}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(policy = %path.display(), "brownout policy loaded");
    println!("listening on http://{addr}");
    if let Err(err) = axum::serve(listener, router)
        .with_graceful_shutdown(ctrl_c())
        .await
    {
        eprintln!("{name}: {err}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutting down");
}

/// An answer with an RFC 9457 problem document of type `urn:{service}:{kind}`.
pub fn problem(
    service: &str,
    status: StatusCode,
    kind: &str,
    detail: impl Into<String>,
) -> Response {
    let body = json!({
        "type": format!("urn:{service}:{kind}"),
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "detail": detail.into(),
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

/// What ops' routes ([`ops`]) serve.
#[derive(Debug, Clone)]
pub struct Ops {
    /// The service's name, in its problem types (`urn:NAME:kind`).
    pub name: &'static str,
    /// What its back end is, in the log of a change (`back end`,
    /// `payment processor`).
    pub backend: &'static str,
    /// The simulated back end.
    pub sim: SimHandle,
    /// The Prometheus recorder's handle, if one is installed.
    pub metrics: Option<PrometheusHandle>,
    /// The brownout stack's handle, for `GET /admin/health` and
    /// `POST /admin/mode`.
    pub policy: Option<PolicyHandle>,
}

/// Ops' routes, to merge into an example's router: `GET /admin/backend`
/// (the back end's state), `POST /admin/backend` (changes it; `400` naming
/// the field when it cannot), `GET /admin/health` (every route's
/// admission state), `POST /admin/mode` (one route's breaker mode by hand,
/// until the next reload), `POST /admin/breaker` (reset, open or half-open
/// one route's breaker by hand) and `GET /metrics` (Prometheus text; `404`
/// without a recorder).
pub fn ops<S: Clone + Send + Sync + 'static>(ops: Ops) -> Router<S> {
    Router::new()
        .route("/admin/backend", get(backend_status).post(change_backend))
        .route("/admin/health", get(health))
        .route("/admin/mode", post(set_route_mode))
        .route("/admin/breaker", post(act_on_breaker))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(ops))
}

/// Every route's admission state (`brownout::stack::HealthSnapshot`).
async fn health(State(ops): State<Arc<Ops>>) -> Response {
    match &ops.policy {
        Some(policy) => Json(policy.snapshot()).into_response(),
        None => problem(
            ops.name,
            StatusCode::NOT_FOUND,
            "no-stack",
            "this service has no brownout stack",
        ),
    }
}

/// `{"route": "/slots", "mode": "forced_open"}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteMode {
    route: String,
    mode: brownout::Mode,
}

/// Puts one route's breaker in a mode by hand, until the next reload.
async fn set_route_mode(State(ops): State<Arc<Ops>>, body: Bytes) -> Response {
    let change: RouteMode = match serde_json::from_slice(&body) {
        Ok(change) => change,
        Err(err) => {
            return problem(
                ops.name,
                StatusCode::BAD_REQUEST,
                "bad-request",
                format!("expected {{\"route\": \"/…\", \"mode\": \"forced_open\"}}: {err}"),
            );
        }
    };
    let Some(policy) = &ops.policy else {
        return problem(
            ops.name,
            StatusCode::NOT_FOUND,
            "no-stack",
            "this service has no brownout stack",
        );
    };
    if policy.set_route_mode(&change.route, change.mode) {
        Json(policy.snapshot()).into_response()
    } else {
        problem(
            ops.name,
            StatusCode::NOT_FOUND,
            "unknown-route",
            format!("route {:?} has not been seen yet", change.route),
        )
    }
}

/// `{"route": "/slots", "action": "reset"}`, `"half_open_now"`, or
/// `"open_until"` with `"for": "10m"` or `"until": "2026-12-07T10:00:00Z"`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BreakerAction {
    route: String,
    action: Action,
    #[serde(rename = "for")]
    for_: Option<String>,
    until: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Action {
    Reset,
    HalfOpenNow,
    OpenUntil,
}

/// Resets, opens or half-opens one route's breaker by hand; answers the
/// snapshot.
async fn act_on_breaker(State(ops): State<Arc<Ops>>, body: Bytes) -> Response {
    let bad = |detail: String| problem(ops.name, StatusCode::BAD_REQUEST, "bad-request", detail);
    let act: BreakerAction = match serde_json::from_slice(&body) {
        Ok(act) => act,
        Err(err) => {
            return bad(format!(
                "expected {{\"route\": \"/…\", \"action\": \"reset\" | \"half_open_now\" | \"open_until\"}}: {err}"
            ));
        }
    };
    let Some(policy) = &ops.policy else {
        return problem(
            ops.name,
            StatusCode::NOT_FOUND,
            "no-stack",
            "this service has no brownout stack",
        );
    };
    let done = match act.action {
        Action::Reset => policy.reset(&act.route),
        Action::HalfOpenNow => policy.half_open_now(&act.route),
        Action::OpenUntil => {
            let until = match (&act.for_, &act.until) {
                (Some(d), None) => match humantime::parse_duration(d) {
                    Ok(d) => brownout::breaker::Until::For(d),
                    Err(err) => return bad(format!("for: invalid duration {d:?}: {err}")),
                },
                (None, Some(t)) => match humantime::parse_rfc3339_weak(t) {
                    Ok(t) => brownout::breaker::Until::At(t),
                    Err(err) => return bad(format!("until: invalid RFC 3339 time {t:?}: {err}")),
                },
                _ => return bad("open_until takes one of \"for\" and \"until\"".to_owned()),
            };
            policy.open_until(&act.route, until)
        }
    };
    if done {
        Json(policy.snapshot()).into_response()
    } else {
        problem(
            ops.name,
            StatusCode::NOT_FOUND,
            "unknown-route",
            format!("route {:?} has not been seen yet", act.route),
        )
    }
}

async fn backend_status(State(ops): State<Arc<Ops>>) -> Response {
    Json(backend::status(&ops.sim)).into_response()
}

async fn change_backend(State(ops): State<Arc<Ops>>, body: Bytes) -> Response {
    match BackendChange::parse(&body).and_then(|change| change.apply(&ops.sim)) {
        Ok(()) => {
            tracing::info!(
                state = %backend::describe(ops.sim.condition()),
                capacity = ops.sim.capacity(),
                "{} changed",
                ops.backend
            );
            Json(backend::status(&ops.sim)).into_response()
        }
        Err(err) => {
            tracing::warn!(%err, "{} change refused", ops.backend);
            (StatusCode::BAD_REQUEST, Json(err.to_json())).into_response()
        }
    }
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    match &ops.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => problem(
            ops.name,
            StatusCode::NOT_FOUND,
            "no-metrics",
            "no metrics recorder is installed",
        ),
    }
}
