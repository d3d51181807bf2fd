//! A passport-appointment booking service (axum) in front of a central
//! booking server that goes down, slows down, comes back at a quarter of its
//! capacity or flaps — simulated, and changed while the service runs — with
//! brownout between them.
//!
//! ```text
//! cargo run --example booking                      # port 3000, examples/policies/booking.toml
//! PORT=0 cargo run --example booking -- my.toml    # any free port, another policy
//! RUST_LOG=brownout=debug,info cargo run --example booking
//! ```
//!
//! It prints `listening on http://127.0.0.1:PORT` on stdout once it accepts
//! connections; logs go to stderr (`RUST_LOG`, default `info`). The policy
//! is the first argument, else `$BOOKING_POLICY`, else
//! `examples/policies/booking.toml`.
//!
//! | route | does |
//! |---|---|
//! | `GET /slots` | free appointment slots |
//! | `POST /bookings` | books one: `{"name":"Asha Rao","slot":"2026-12-02T09:15"}`; `x-priority: urgent` for tatkal |
//! | `GET /bookings/{id}` | a booking |
//! | `GET /deferred/{ticket}` | a booking accepted while the central server was down: pending, then served (with the booking), failed or expired |
//! | `POST /admin/backend` | changes the simulated back end (below); `GET` shows it |
//! | `GET /admin/brownout` | breaker state, limit and waiting requests per route |
//! | `GET /admin/health` | every route's breaker state and mode, limit, in flight, waiting (JSON) |
//! | `POST /admin/mode` | `{"route":"/slots","mode":"forced_open"}`: one route's breaker mode, until the next reload |
//! | `POST /admin/policy` | reloads the policy file, live, keeping breaker and limit state |
//! | `GET /metrics` | Prometheus metrics (`brownout_*`) |
//!
//! While the central server is down (the breaker open, a maintenance
//! window, or shed), `POST /bookings` is not turned away: the booking is
//! written to a durable store and answered `202 Accepted` with a ticket and
//! a `Location` for its status; once the server is back it is sent again,
//! urgent first, through the same route (`[routes."/bookings".defer]`,
//! brownout's `defer` feature). The store is the directory
//! `$BOOKING_DEFER_DIR` (keep it across restarts), else a fresh one under
//! the system's temporary directory.
//!
//! Only the three booking routes are behind brownout (`Router::route_layer`,
//! so each has its own breaker, limit and waiting room, named by its route
//! template); ops' routes always answer. Each call to the back end gives up
//! after 3 s: a refusal answers `502`, a timeout `504`, and both count as
//! failures for the breaker.
//!
//! # Watch an outage
//!
//! ```text
//! curl -s localhost:3000/slots | head -c 300; echo
//! curl -s localhost:3000/bookings -H 'content-type: application/json' \
//!      -d '{"name":"Asha Rao","slot":"2026-12-02T09:15"}'; echo
//!
//! # The central server goes down.
//! curl -s localhost:3000/admin/backend -d '{"state":"down"}'; echo
//! for i in $(seq 40); do curl -s -o /dev/null -w '%{http_code} ' localhost:3000/slots; done; echo
//! #   502 502 ... (the back end refuses) then 503 503 ...: the breaker opened
//! curl -si localhost:3000/slots           # 503, Retry-After: the next probe, a problem+json body
//! curl -s localhost:3000/admin/brownout; echo
//! curl -s localhost:3000/metrics | grep -E 'brownout_(requests_total|breaker_state)'
//!
//! # New bookings meanwhile: 502 until /bookings' own breaker has seen its
//! # minimum_calls refused, then 202 Accepted, a ticket and a Location; booked
//! # when the server is back (its status then "served", with the booking).
//! curl -si localhost:3000/bookings -H 'content-type: application/json' \
//!      -d '{"name":"Ravi Kumar","slot":"2026-12-02T10:00"}'
//! curl -s localhost:3000/deferred/TICKET; echo
//!
//! # It comes back: within Retry-After seconds the probes find it and traffic flows.
//! curl -s localhost:3000/admin/backend -d '{"state":"up"}'; echo
//!
//! # Back at 27% of its capacity, under load: the limit learns it, the excess
//! # gets a fast 503 instead of a timeout, urgent requests are shed last.
//! curl -s localhost:3000/admin/backend -d '{"capacity":0.27}'; echo
//! seq 2000 | xargs -P 200 -I{} curl -s -o /dev/null -w '%{http_code}\n' localhost:3000/slots | sort | uniq -c
//! curl -s localhost:3000/admin/brownout; echo
//!
//! # Other conditions.
//! curl -s localhost:3000/admin/backend -d '{"state":"slow","factor":5}'
//! curl -s localhost:3000/admin/backend -d '{"state":"flapping","period":"20s"}'
//! curl -s localhost:3000/admin/backend -d '{"state":"hang"}'      # calls time out (504)
//! curl -s localhost:3000/admin/backend -d '{"state":"up","capacity":1}'
//! ```
//!
//! A change the back end cannot take gets a `400` naming the field, e.g.
//! `{"state":"slow"}` → `factor: missing: "state":"slow" needs a factor, e.g. 5`.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use brownout::sim::{SimBackend, SimBuilder, SimHandle};
use brownout::{BrownoutLayer, Policy, PolicyHandle};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;
use tower::ServiceExt;

#[path = "shared/backend.rs"]
mod backend;
#[path = "shared/server.rs"]
pub mod server;

use backend::CALL_TIMEOUT;

/// The policy used when none is given.
pub const DEFAULT_POLICY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/policies/booking.toml"
);

/// The routes brownout protects, as axum names them (each its own gate).
pub const ROUTES: [&str; 3] = ["/slots", "/bookings", "/bookings/{id}"];

/// The route whose requests are deferred while the central server is down.
pub const DEFERRED_ROUTE: &str = "/bookings";

/// The environment variable naming the deferred bookings' directory.
pub const DEFER_DIR_VAR: &str = "BOOKING_DEFER_DIR";

/// The composed stack for HTTP, as `BrownoutLayer::from_policy(&p).http()` builds it.
pub type HttpStack = brownout::stack::HttpBrownoutLayer;

/// What the service is built from.
#[derive(Debug, Clone)]
pub struct Config {
    /// The brownout policy.
    pub policy: Policy,
    /// Where `POST /admin/policy` reloads the policy from.
    pub policy_path: Option<PathBuf>,
    /// The Prometheus recorder's handle, for `GET /metrics`. Install the
    /// recorder before calling [`app`]: brownout's gates register their
    /// metrics when they are built.
    pub metrics: Option<PrometheusHandle>,
    /// The simulated central server.
    pub backend: SimBuilder,
    /// Where `POST /bookings` keeps the bookings it defers while the
    /// central server is down (an embedded store; `None`: no deferral).
    /// The policy's `[routes."/bookings".defer]` section is used if it has
    /// one (its `path` replaced by this), else the defaults.
    pub defer_dir: Option<PathBuf>,
}

impl Config {
    /// The central server of the incidents ([`backend::central_server`]).
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            policy_path: None,
            metrics: None,
            backend: backend::central_server(),
            defer_dir: None,
        }
    }
}

/// The service, ready to serve, and its handles.
#[derive(Debug)]
pub struct App {
    /// The axum router: booking routes behind brownout, ops' routes not.
    pub router: Router,
    /// The simulated central server.
    pub backend: SimHandle,
    /// The brownout stack in front of the booking routes (its state).
    pub stack: HttpStack,
    /// The replayer of deferred bookings (none without a `defer_dir`):
    /// it sends them through `router` once the central server is back.
    pub replayers: Vec<brownout::defer::ReplayHandle>,
}

/// One booking.
#[derive(Debug, Clone, serde::Serialize)]
struct Booking {
    id: u64,
    name: String,
    slot: String,
    /// `urgent` (tatkal), `normal` or `bulk`, from `x-priority`.
    class: String,
}

#[derive(Debug, Default)]
struct Book {
    next_id: u64,
    bookings: HashMap<u64, Booking>,
    /// Slots booked, or being booked right now.
    taken: BTreeSet<String>,
}

struct Inner {
    backend: SimBackend,
    book: Mutex<Book>,
    slots: Vec<String>,
    policy: PolicyHandle,
    policy_path: Option<PathBuf>,
    stack: HttpStack,
}

type AppState = Arc<Inner>;

/// Builds the service. Call it inside a tokio runtime, after pausing time
/// in tests and after installing the metrics recorder in `main`.
pub fn app(config: Config) -> Result<App, Box<dyn std::error::Error + Send + Sync>> {
    let backend = config.backend.build()?;
    let sim = backend.handle();
    let mut policy = config.policy;
    if let Some(dir) = &config.defer_dir {
        let route = policy.routes.entry(DEFERRED_ROUTE.to_owned()).or_default();
        let mut defer = route.defer.clone().unwrap_or_default();
        defer.store = brownout::policy::DeferStoreKind::Embedded;
        defer.path = dir.display().to_string();
        // A replayed booking keeps its class (the handler reads it).
        let header = &policy.priority.header;
        if !header.is_empty()
            && !defer
                .keep_headers
                .iter()
                .any(|h| h.eq_ignore_ascii_case(header))
        {
            defer.keep_headers.push(header.clone());
        }
        route.defer = Some(defer);
    }
    // Names what cannot be built: a bad policy, a store it cannot open.
    let stack = BrownoutLayer::try_from_policy(&policy)?.http();
    let state = Arc::new(Inner {
        backend,
        book: Mutex::new(Book::default()),
        slots: all_slots(),
        policy: stack.handle(),
        policy_path: config.policy_path,
        stack: stack.clone(),
    });
    let booking = Router::new()
        .route("/slots", get(slots))
        .route("/bookings", post(create_booking))
        .route("/bookings/{id}", get(get_booking))
        // `route_layer`: routes by template (`/bookings/{id}`, not one
        // route per id), and axum's own 404s stay outside brownout.
        .route_layer(stack.clone());
    let ops = Router::new()
        .route("/admin/brownout", get(brownout_status))
        .route("/admin/policy", post(reload_policy))
        .merge(server::ops(server::Ops {
            name: "booking",
            backend: "back end",
            sim: sim.clone(),
            metrics: config.metrics,
            policy: Some(stack.handle()),
        }));
    let mut router = booking.merge(ops).with_state(state);
    let mut replayers = Vec::new();
    if let Some(deferral) = stack.deferral() {
        // GET /deferred/{ticket}: a deferred booking's status.
        router = router.layer(deferral.status_layer());
        // Deferred bookings go through the same routes (and the same
        // breaker and limit) once the central server is back.
        replayers = stack.replay::<axum::body::Body, _, _>(router.clone());
    }
    Ok(App {
        router,
        backend: sim,
        stack,
        replayers,
    })
}

/// Three days of quarter-hour slots, 09:00 to 16:45.
fn all_slots() -> Vec<String> {
    let mut slots = Vec::new();
    for day in 2..=4 {
        for minutes in (9 * 60..17 * 60).step_by(15) {
            slots.push(format!(
                "2026-12-{day:02}T{:02}:{:02}",
                minutes / 60,
                minutes % 60
            ));
        }
    }
    slots
}

/// An answer with an RFC 9457 problem document (`urn:booking:{kind}`).
fn problem(status: StatusCode, kind: &str, detail: impl Into<String>) -> Response {
    server::problem("booking", status, kind, detail)
}

/// One call to the central server, given up after [`CALL_TIMEOUT`].
async fn call_backend(state: &Inner, what: &'static str) -> Result<(), Response> {
    match tokio::time::timeout(CALL_TIMEOUT, state.backend.clone().oneshot(what)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(problem(
            StatusCode::BAD_GATEWAY,
            "backend-refused",
            format!("the central booking server refused the call: {err}"),
        )),
        Err(_) => Err(problem(
            StatusCode::GATEWAY_TIMEOUT,
            "backend-timeout",
            format!(
                "the central booking server did not answer within {}",
                humantime::format_duration(CALL_TIMEOUT)
            ),
        )),
    }
}

fn lock(book: &Mutex<Book>) -> std::sync::MutexGuard<'_, Book> {
    book.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn slots(State(state): State<AppState>) -> Response {
    if let Err(answer) = call_backend(&state, "GET /slots").await {
        return answer;
    }
    let book = lock(&state.book);
    let free: Vec<&String> = state
        .slots
        .iter()
        .filter(|slot| !book.taken.contains(*slot))
        .collect();
    Json(json!({
        "centre": "Passport Seva Kendra, Pune",
        "free": free.len(),
        "slots": free,
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewBooking {
    name: String,
    slot: String,
}

async fn create_booking(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<NewBooking>, JsonRejection>,
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
    let name = new.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!("name: {:?} must have 1 to 100 characters", new.name),
        );
    }
    if !state.slots.contains(&new.slot) {
        return problem(
            StatusCode::BAD_REQUEST,
            "bad-request",
            format!(
                "slot: {:?} is not a slot of this centre; see GET /slots",
                new.slot
            ),
        );
    }
    // Hold the slot while the central server books it, so two people never
    // get the same one.
    if !lock(&state.book).taken.insert(new.slot.clone()) {
        return problem(
            StatusCode::CONFLICT,
            "slot-taken",
            format!("slot {} is already booked", new.slot),
        );
    }
    let release = SlotHold {
        state: &state,
        slot: &new.slot,
        kept: false,
    };
    if let Err(answer) = call_backend(&state, "POST /bookings").await {
        return answer; // `release` frees the slot
    }
    release.keep();
    let class = headers
        .get("x-priority")
        .and_then(|v| v.to_str().ok())
        .map_or("normal", str::trim)
        .to_ascii_lowercase();
    let booking = {
        let mut book = lock(&state.book);
        book.next_id += 1;
        let booking = Booking {
            id: book.next_id,
            name: name.to_owned(),
            slot: new.slot.clone(),
            class,
        };
        book.bookings.insert(booking.id, booking.clone());
        booking
    };
    tracing::info!(id = booking.id, slot = %booking.slot, class = %booking.class, "booked");
    (
        StatusCode::CREATED,
        [(header::LOCATION, format!("/bookings/{}", booking.id))],
        Json(booking),
    )
        .into_response()
}

/// A slot held while it is being booked; freed unless kept (also when the
/// client goes away mid-call and the handler is dropped).
struct SlotHold<'a> {
    state: &'a Inner,
    slot: &'a str,
    kept: bool,
}

impl SlotHold<'_> {
    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for SlotHold<'_> {
    fn drop(&mut self) {
        if !self.kept {
            lock(&self.state.book).taken.remove(self.slot);
        }
    }
}

async fn get_booking(
    State(state): State<AppState>,
    id: Result<Path<u64>, PathRejection>,
) -> Response {
    let Path(id) = match id {
        Ok(id) => id,
        Err(rejection) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "bad-request",
                rejection.body_text(),
            );
        }
    };
    if let Err(answer) = call_backend(&state, "GET /bookings/{id}").await {
        return answer;
    }
    match lock(&state.book).bookings.get(&id) {
        Some(booking) => Json(booking.clone()).into_response(),
        None => problem(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no booking {id}"),
        ),
    }
}

async fn brownout_status(State(state): State<AppState>) -> Response {
    let routes: serde_json::Map<String, serde_json::Value> = ROUTES
        .iter()
        .map(|route| {
            let status = json!({
                "breaker": state.stack.state(route).map(|s| s.as_str()),
                "limit": state.stack.limit(route),
                "waiting": state.stack.waiting(route),
            });
            ((*route).to_owned(), status)
        })
        .collect();
    Json(json!({ "mode": state.policy.current().breaker.mode, "routes": routes })).into_response()
}

/// Reloads the policy file; the stack keeps its state.
async fn reload_policy(State(state): State<AppState>) -> Response {
    let Some(path) = &state.policy_path else {
        return problem(
            StatusCode::CONFLICT,
            "no-policy-file",
            "this service was started without a policy file to reload",
        );
    };
    match state.policy.reload(path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "policy reloaded");
            Json(json!({ "reloaded": path })).into_response()
        }
        Err(err) => {
            tracing::warn!(%err, "policy reload refused; the policy in force stays");
            problem(StatusCode::BAD_REQUEST, "bad-policy", err.to_string())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let service = server::Service {
        name: "booking",
        port: 3000,
        policy_var: "BOOKING_POLICY",
        default_policy: DEFAULT_POLICY,
    };
    server::main(service, |policy, path, metrics| {
        let mut config = Config::new(policy);
        config.policy_path = Some(path);
        config.metrics = Some(metrics);
        config.defer_dir = Some(std::env::var_os(DEFER_DIR_VAR).map_or_else(
            || std::env::temp_dir().join(format!("brownout-booking-{}", std::process::id())),
            PathBuf::from,
        ));
        app(config).map(|app| app.router)
    })
    .await
}
