//! A payment endpoint (axum) where degraded mode never charges twice and
//! never pretends success, with brownout in front of a simulated payment
//! processor that can go down, slow down or flap while the service runs.
//!
//! ```text
//! cargo run --example payment                      # port 3001, examples/policies/payment.toml
//! PORT=0 cargo run --example payment -- my.toml    # any free port, another policy
//! ```
//!
//! It prints `listening on http://127.0.0.1:PORT` on stdout; logs go to
//! stderr (`RUST_LOG`, default `info`). The policy is the first argument,
//! else `$PAYMENT_POLICY`, else `examples/policies/payment.toml`.
//!
//! # The rules
//!
//! - **No `Idempotency-Key`, no waiting.** A payment without a key is never
//!   held in the waiting room (`[routes."/payments"] waiting_room = {
//!   capacity = 0 }`): while the processor is busy or failing it gets a
//!   fast `503` at once, and the client decides what to do (a blind retry
//!   of a keyless payment could charge twice).
//! - **With a key, it may wait,** on its own brownout route,
//!   `/payments#idempotent`, which keeps the top-level waiting room; and a
//!   retry with the same key answers the first outcome (`201` charged or
//!   `402` declined) from an in-memory idempotency store, with
//!   `idempotent-replayed: true`, without calling the processor again —
//!   even while it is down. The same key with a different request is a
//!   `422`; a retry while the first attempt is still running, a `409`.
//! - **Only a definitive outcome is stored.** A call the processor refused
//!   (`502`), one abandoned after 3 s (`504`; the simulated processor charges
//!   only when it answers), and brownout's own answer leave nothing behind:
//!   nothing was charged, so a retry with the same key tries again.
//! - **Degraded mode answers `503` + `Retry-After`,** an RFC 9457 problem
//!   document and `payment-charged: false`: never a `200` it did not earn.
//!
//! The idempotency store sits in front of brownout (`route_layer` order:
//! the later layer is the outer one), so replays never use the processor's
//! capacity. Real services keep keys for a day or so, in a shared store.
//!
//! # Try it
//!
//! ```text
//! pay() { curl -si localhost:3001/payments -H 'content-type: application/json' "$@" \
//!           -d '{"amount":150000,"currency":"INR","reference":"PSK/2026/0001"}'; echo; }
//! pay -H 'idempotency-key: fee-asha-1'    # 201 Created, charged
//! pay -H 'idempotency-key: fee-asha-1'    # the same 201, idempotent-replayed: true
//! curl -s localhost:3001/admin/ledger; echo   # one charge
//!
//! curl -s localhost:3001/admin/backend -d '{"state":"down"}'; echo
//! for i in $(seq 15); do pay -o /dev/null -w '%{http_code} ' -H "idempotency-key: k$i"; done; echo
//! #   502 ... (refused, not charged) then 503 ...: the breaker opened; never a 200
//! pay -H 'idempotency-key: k99'           # 503 at once, Retry-After, payment-charged: false
//! pay -H 'idempotency-key: fee-asha-1'    # still the first outcome: 201, replayed
//! for i in $(seq 15); do pay -o /dev/null -w '%{http_code} '; done; echo
//! #   the keyless route has a breaker of its own: 502 ... then 503 ...
//! curl -s localhost:3001/admin/ledger; echo   # still one charge
//! curl -s localhost:3001/admin/backend -d '{"state":"up"}'; echo
//! ```
//!
//! Keyless and keyed payments are two brownout routes, so each has its own
//! breaker and limit: both learn the same processor, from their own calls.
//!
//! # Watch and steer it
//!
//! ```text
//! curl -s localhost:3001/admin/health; echo   # each route: breaker, next probe, limit, waiting by class
//! curl -s localhost:3001/admin/breaker -d '{"route":"/payments","action":"open_until","for":"10m"}'; echo
//! curl -s localhost:3001/admin/breaker -d '{"route":"/payments","action":"half_open_now"}'; echo
//! curl -s localhost:3001/admin/breaker -d '{"route":"/payments","action":"reset"}'; echo
//! ```

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hash::{Hash, Hasher};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::JsonRejection;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use brownout::classify::ServerErrorsAsFailures;
use brownout::deadline::HeaderDeadline;
use brownout::fallback::{Fallback, ProblemJson};
use brownout::priority::HeaderPriority;
use brownout::sim::{ServiceTime, SimBackend, SimBuilder, SimConfigError, SimHandle};
use brownout::stack::RouteOf;
use brownout::{BrownoutLayer, Policy, Rejected};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower::ServiceExt;

#[path = "shared/backend.rs"]
mod backend;
#[path = "shared/server.rs"]
mod server;

use backend::CALL_TIMEOUT;

/// The policy used when none is given.
pub const DEFAULT_POLICY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/policies/payment.toml"
);

/// The brownout route of payments without an `Idempotency-Key`.
pub const KEYLESS: &str = "/payments";
/// The brownout route of payments with one.
pub const KEYED: &str = "/payments#idempotent";
/// The request header that makes a payment safe to retry.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The response header of an answer replayed from the idempotency store.
pub const REPLAYED: &str = "idempotent-replayed";
/// Largest amount the processor accepts, in paise (₹10,000).
pub const CARD_LIMIT: u64 = 1_000_000;

/// The brownout stack of this service.
pub type PaymentStack =
    BrownoutLayer<NotCharged, PaymentRoute, HeaderPriority, HeaderDeadline, ServerErrorsAsFailures>;

/// Names a payment's brownout route: [`KEYED`] when it has an
/// `Idempotency-Key` (it may wait), else its axum route ([`KEYLESS`] for
/// `POST /payments`, which never waits).
#[derive(Debug, Clone, Copy, Default)]
pub struct PaymentRoute;

impl<B> RouteOf<http::Request<B>> for PaymentRoute {
    fn route_of<'a>(&self, req: &'a http::Request<B>) -> Option<&'a str> {
        let matched = req
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str);
        if matched == Some(KEYLESS) && req.headers().contains_key(IDEMPOTENCY_KEY) {
            return Some(KEYED);
        }
        matched.or(Some(req.uri().path()))
    }
}

/// brownout's answer for a payment it did not let through: `503`,
/// `Retry-After` (1 s when brownout has no better hint), the problem
/// document of [`ProblemJson`], and `payment-charged: false`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NotCharged;

impl NotCharged {
    /// The answer to `rejected`.
    pub fn response(rejected: Rejected) -> Response {
        let rejected = match rejected.retry_after() {
            Some(_) => rejected,
            None => rejected.with_retry_after(Duration::from_secs(1)),
        };
        let mut response = ProblemJson::response::<Body>(&rejected);
        response
            .headers_mut()
            .insert("payment-charged", HeaderValue::from_static("false"));
        response
    }
}

impl<Req> Fallback<Req, Response, Infallible> for NotCharged {
    type Error = Infallible;
    type Future = Ready<Result<Response, Infallible>>;

    fn fallback(&self, rejected: Rejected, _request: Option<Req>) -> Self::Future {
        tracing::debug!(reason = %rejected.reason(), "payment not taken");
        ready(Ok(Self::response(rejected)))
    }

    fn inner_error(&self, error: Infallible) -> Infallible {
        error
    }
}

/// What the service is built from.
#[derive(Debug, Clone)]
pub struct Config {
    /// The brownout policy.
    pub policy: Policy,
    /// The Prometheus recorder's handle, for `GET /metrics` (install the
    /// recorder before calling [`app`]).
    pub metrics: Option<PrometheusHandle>,
    /// The simulated payment processor.
    pub backend: SimBuilder,
}

impl Config {
    /// A processor taking 50 calls at once, 150 ms each on average.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            metrics: None,
            backend: SimBackend::builder()
                .capacity(50)
                .service_time(ServiceTime::LogNormal {
                    mean: Duration::from_millis(150),
                    cv: 0.5,
                })
                .seed(7),
        }
    }
}

/// One charge the processor made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Charge {
    /// The payment's id.
    pub id: u64,
    /// Its `Idempotency-Key`, if it had one.
    pub key: Option<String>,
    /// The amount, in paise.
    pub amount: u64,
    /// The payer's reference.
    pub reference: String,
}

/// Every charge made, in order: what the tests count.
#[derive(Debug, Clone, Default)]
pub struct Ledger(Arc<Mutex<Vec<Charge>>>);

impl Ledger {
    /// The charges made so far.
    pub fn charges(&self) -> Vec<Charge> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn charge(&self, key: Option<String>, amount: u64, reference: String) -> Charge {
        let mut charges = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let charge = Charge {
            id: charges.len() as u64 + 1,
            key,
            amount,
            reference,
        };
        charges.push(charge.clone());
        charge
    }
}

/// The service, ready to serve, and its handles.
#[derive(Debug)]
pub struct App {
    /// The axum router.
    pub router: Router,
    /// The simulated payment processor.
    pub backend: SimHandle,
    /// The brownout stack in front of `POST /payments`.
    pub stack: PaymentStack,
    /// The charges made.
    pub ledger: Ledger,
}

struct Inner {
    processor: SimBackend,
    ledger: Ledger,
    idempotency: IdempotencyStore,
}

type AppState = Arc<Inner>;

/// Builds the service. Call it inside a tokio runtime, after pausing time
/// in tests and after installing the metrics recorder in `main`.
pub fn app(config: Config) -> Result<App, SimConfigError> {
    let processor = config.backend.build()?;
    let sim = processor.handle();
    let ledger = Ledger::default();
    let stack = BrownoutLayer::from_policy(&config.policy)
        .http()
        .fallback(NotCharged)
        .route_by(PaymentRoute);
    let state = Arc::new(Inner {
        processor,
        ledger: ledger.clone(),
        idempotency: IdempotencyStore::default(),
    });
    let payments = Router::new()
        .route("/payments", post(pay))
        .route_layer(stack.clone())
        // Outside brownout: replays never reach it.
        .route_layer(middleware::from_fn_with_state(state.clone(), idempotency));
    let ops = Router::new()
        .route("/admin/ledger", get(ledger_status))
        .merge(server::ops(server::Ops {
            name: "payment",
            backend: "payment processor",
            sim: sim.clone(),
            metrics: config.metrics,
            policy: Some(stack.handle()),
        }));
    Ok(App {
        router: payments.merge(ops).with_state(state),
        backend: sim,
        stack,
        ledger,
    })
}

/// An answer with an RFC 9457 problem document (`urn:payment:{kind}`).
fn problem(status: StatusCode, kind: &str, detail: impl Into<String>) -> Response {
    server::problem("payment", status, kind, detail)
}

// ---- the idempotency store ----------------------------------------------

/// A response kept for replay.
#[derive(Debug, Clone)]
struct Stored {
    status: StatusCode,
    headers: Vec<(header::HeaderName, HeaderValue)>,
    body: Bytes,
}

impl Stored {
    fn replay(&self) -> Response {
        let mut response = Response::new(Body::from(self.body.clone()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        headers.insert(REPLAYED, HeaderValue::from_static("true"));
        response
    }
}

#[derive(Debug)]
enum Entry {
    /// The first attempt is running.
    Running { fingerprint: u64 },
    /// Its outcome, for replay.
    Done { fingerprint: u64, outcome: Stored },
}

#[derive(Debug, Default)]
struct IdempotencyStore {
    entries: Mutex<HashMap<String, Entry>>,
}

enum Begin {
    /// First attempt: run it.
    Run,
    /// A retry of a finished payment.
    Replay(Stored),
    /// A retry while the first attempt runs.
    Running,
    /// The key was used for another request.
    Mismatch,
}

impl IdempotencyStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn begin(&self, key: &str, fingerprint: u64) -> Begin {
        let mut entries = self.lock();
        match entries.get(key) {
            None => {
                entries.insert(key.to_owned(), Entry::Running { fingerprint });
                Begin::Run
            }
            Some(Entry::Running { fingerprint: f } | Entry::Done { fingerprint: f, .. })
                if *f != fingerprint =>
            {
                Begin::Mismatch
            }
            Some(Entry::Running { .. }) => Begin::Running,
            Some(Entry::Done { outcome, .. }) => Begin::Replay(outcome.clone()),
        }
    }
}

/// The store's claim on a key while its first attempt runs: on drop
/// without an outcome (nothing charged, or the client went away), the key
/// is released for a retry.
struct Claim<'a> {
    store: &'a IdempotencyStore,
    key: String,
    fingerprint: u64,
    done: bool,
}

impl Claim<'_> {
    fn finish(mut self, outcome: Stored) {
        let fingerprint = self.fingerprint;
        self.store.lock().insert(
            std::mem::take(&mut self.key),
            Entry::Done {
                fingerprint,
                outcome,
            },
        );
        self.done = true;
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.store.lock().remove(&self.key);
        }
    }
}

/// Marks a response as the payment's definitive outcome, to be replayed.
#[derive(Debug, Clone, Copy)]
struct Definitive;

const MAX_BODY: usize = 64 * 1024;

async fn idempotency(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(value) = req.headers().get(IDEMPOTENCY_KEY) else {
        return next.run(req).await;
    };
    let key = match value.to_str() {
        Ok(key) if (1..=255).contains(&key.trim().len()) => key.trim().to_owned(),
        _ => {
            return problem(
                StatusCode::BAD_REQUEST,
                "bad-idempotency-key",
                format!("Idempotency-Key: {value:?} must be 1 to 255 visible ASCII characters"),
            );
        }
    };
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(body) => body,
        Err(err) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "bad-request",
                format!("body: {err}"),
            );
        }
    };
    let mut hasher = DefaultHasher::new();
    (parts.method.as_str(), parts.uri.path(), &body[..]).hash(&mut hasher);
    let fingerprint = hasher.finish();

    match state.idempotency.begin(&key, fingerprint) {
        Begin::Replay(outcome) => {
            tracing::info!(%key, status = %outcome.status, "replayed the first outcome");
            return outcome.replay();
        }
        Begin::Running => {
            return (
                [(header::RETRY_AFTER, "1")],
                problem(
                    StatusCode::CONFLICT,
                    "in-progress",
                    format!("a payment with Idempotency-Key {key:?} is in progress; retry to get its outcome"),
                ),
            )
                .into_response();
        }
        Begin::Mismatch => {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                format!("Idempotency-Key {key:?} was used for a different request"),
            );
        }
        Begin::Run => {}
    }
    let claim = Claim {
        store: &state.idempotency,
        key,
        fingerprint,
        done: false,
    };
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    if response.extensions().get::<Definitive>().is_none() {
        return response; // nothing charged: `claim` frees the key
    }
    let (parts, body) = response.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the payment's answer could not be read",
        );
    };
    let outcome = Stored {
        status: parts.status,
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect(),
        body: body.clone(),
    };
    claim.finish(outcome);
    Response::from_parts(parts, Body::from(body))
}

// ---- the payment ----------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPayment {
    /// In paise.
    amount: u64,
    currency: String,
    reference: String,
}

async fn pay(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Result<Json<NewPayment>, JsonRejection>,
) -> Response {
    let Json(new) = match body {
        Ok(body) => body,
        Err(rejection) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "bad-request",
                rejection.body_text(),
            );
        }
    };
    if new.amount == 0 {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "amount: 0 is not a payment; give the amount in paise, e.g. 150000 for ₹1,500",
        );
    }
    if new.currency != "INR" {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!("currency: {:?} is not accepted; use \"INR\"", new.currency),
        );
    }
    if new.reference.trim().is_empty() {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "reference: must not be empty",
        );
    }
    let key = headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .map(|k| k.trim().to_owned());

    let call = state.processor.clone().oneshot("charge");
    let mut response = match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(_)) if new.amount > CARD_LIMIT => problem(
            StatusCode::PAYMENT_REQUIRED,
            "declined",
            format!(
                "declined: {} paise is over the card's limit of {CARD_LIMIT}",
                new.amount
            ),
        ),
        Ok(Ok(_)) => {
            let charge = state.ledger.charge(key, new.amount, new.reference);
            tracing::info!(id = charge.id, key = ?charge.key, amount = charge.amount, "charged");
            (
                StatusCode::CREATED,
                [(header::LOCATION, format!("/payments/{}", charge.id))],
                Json(json!({ "id": charge.id, "status": "charged", "amount": charge.amount, "currency": "INR" })),
            )
                .into_response()
        }
        Ok(Err(err)) => {
            return problem(
                StatusCode::BAD_GATEWAY,
                "processor-refused",
                format!("not charged: the payment processor refused the call ({err}); retry later"),
            );
        }
        Err(_) => {
            return problem(
                StatusCode::GATEWAY_TIMEOUT,
                "processor-timeout",
                format!(
                    "not charged: the payment processor did not confirm within {}; retry later",
                    humantime::format_duration(CALL_TIMEOUT)
                ),
            );
        }
    };
    response.extensions_mut().insert(Definitive);
    response
}

// ---- ops ------------------------------------------------------------------

async fn ledger_status(State(state): State<AppState>) -> Response {
    let charges = state.ledger.charges();
    Json(json!({ "count": charges.len(), "charges": charges })).into_response()
}

#[tokio::main]
async fn main() -> ExitCode {
    let service = server::Service {
        name: "payment",
        port: 3001,
        policy_var: "PAYMENT_POLICY",
        default_policy: DEFAULT_POLICY,
    };
    server::main(service, |policy, _path, metrics| {
        let mut config = Config::new(policy);
        config.metrics = Some(metrics);
        app(config).map(|app| app.router)
    })
    .await
}
