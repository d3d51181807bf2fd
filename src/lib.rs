//! Tower layers that keep a service useful while the system behind it is
//! down, flapping, slow or running at reduced capacity.
//!
//! Public-service back ends fail in a few recurring ways: down for hours,
//! back at a quarter of their capacity, up and down for a week, slow before
//! they die, shut for a planned upgrade. Without protection the front end
//! hangs on a dead server, piles requests onto a recovering one, and leaves
//! people waiting with no answer. brownout's layers give every request one
//! clear, fast answer instead.
//!
//! | layer | does | module |
//! |---|---|---|
//! | [`CircuitBreakerLayer`] | stops calling a failing or slow back end, probes it, lets traffic back when it recovers | [`breaker`] |
//! | [`AdaptiveLimitLayer`] | learns how many calls the back end can take at once and sheds the excess at once, least important class first | [`limit`] |
//! | [`WaitingRoomLayer`] | holds requests through short outages and bursts, lets them out in priority order at the pace the limit allows | [`waiting_room`] |
//! | [`FallbackLayer`] | turns every rejection into a clear answer (503 + `Retry-After` + problem JSON, gRPC `UNAVAILABLE`) | [`fallback`] |
//! | [`BrownoutLayer`] | all of the above from one policy, per route, with live reload | [`stack`] |
//!
//! Every layer rejects with one type, [`Rejected`], carrying a [`Reason`]
//! and, when known, a retry hint. Rejections come back through the response
//! future, never from `poll_ready`, so axum's and tonic's clone-per-request
//! patterns work unchanged. What counts as a failure is pluggable
//! ([`classify`]): inner errors by default, HTTP 5xx and gRPC status codes
//! (from headers or trailers) with the `http` and `grpc` features.
//!
//! Ops describe all of it in a [`Policy`] file (TOML, YAML or JSON); metric
//! names are in [`metrics`].
//! Contributors: the request's way through the code, and where to add an algorithm, a rejection reason or a fallback, are in `docs/architecture.md`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use brownout::{BreakerPolicy, CircuitBreakerLayer, Rejected};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(CircuitBreakerLayer::new(BreakerPolicy::default()).route("slots"))
//!     .service_fn(|day: u32| async move { Ok::<_, std::io::Error>(format!("slots for day {day}")) });
//!
//! match svc.oneshot(3).await {
//!     Ok(slots) => assert_eq!(slots, "slots for day 3"),
//!     Err(err) => match err.downcast_ref::<Rejected>() {
//!         Some(rejected) => println!("try again in {:?}", rejected.retry_after()),
//!         None => println!("back end error: {err}"),
//!     },
//! }
//! # }
//! ```
//!
//! # Operations
//!
//! Ops steer an outage from the policy file, live, with no restart and no
//! lost state.
//!
//! A policy for a back end in trouble (slow and failing for days, a planned
//! upgrade next week): judge it by time, not calls; open early; keep
//! payments out of the waiting room; say when it will be back.
//!
//! ```toml
//! [breaker]
//! window = { kind = "time", size = "30s" }
//! failure_rate = 0.3
//! slow_call_duration = "2s"
//! slow_call_rate = 0.5
//! open_for = "10s"
//! open_backoff = { multiplier = 2.0, max = "5m", jitter = 0.2 }
//! mode = "enforce"                  # "shadow" first, to see what it would do
//!
//! [limit]
//! algorithm = "capacity"
//! initial = 20
//! max = 200
//!
//! [waiting_room]
//! capacity = 500
//! max_wait = "20s"
//! deadline_header = "x-deadline-ms"
//!
//! [routes."/payments"]
//! waiting_room = { capacity = 0 }   # a payment is never held
//!
//! [[maintenance]]
//! from = "2026-12-02T00:00:00+05:30"
//! until = "2026-12-09T00:00:00+05:30"
//! message = "Planned upgrade. Urgent files: use e-mail."
//! ```
//!
//! **Reload.** [`BrownoutLayer::handle`] gives a [`PolicyHandle`]:
//! `handle.reload("policy.toml")` (or `apply(policy)`) puts a new policy in
//! force on every route at once, keeping breaker windows, learned limits and
//! waiters; a file that does not load or validate leaves the old policy and
//! returns the error naming the field. With the `watch` feature,
//! `handle.watch(path, |_| {})` does it whenever the file changes. To force
//! a breaker open or closed, or to watch a new policy in `shadow` mode
//! before enforcing it, change `mode` and reload; a maintenance window is a
//! `[[maintenance]]` entry.
//!
//! **By hand, and watching.** The handle also acts on one route's breaker
//! without a reload ([`PolicyHandle::reset`], [`open_until`](PolicyHandle::open_until),
//! [`half_open_now`](PolicyHandle::half_open_now), [`set_route_mode`](PolicyHandle::set_route_mode)),
//! and [`snapshot`](PolicyHandle::snapshot) says where every route stands,
//! for an admin endpoint. A [listener](listen) set with
//! [`BrownoutLayer::listener`] hears every state change as it happens.
//!
//! **Reading the metrics during an outage** (see [`metrics`]):
//!
//! | you see | it means |
//! |---|---|
//! | `brownout_breaker_state` at 2, `..._transitions_total{to="open"}` rising every few minutes | the back end is down; the breaker probes it with backoff; callers get an answer at once |
//! | `brownout_breaker_throttle` above 0 with `brownout_breaker_state` at 0, `reason="open"` rising | the back end fails (or is slow) past a threshold but still serves: the breaker turns away that share of new calls, and opens only if nothing succeeds (`trip = "throttle"`) |
//! | `brownout_requests_total{outcome="rejected",reason="shed"}` rising, `brownout_limit` well below its usual value | the back end runs at reduced capacity; the limit found it, and sheds the excess, `bulk` first (`brownout_shed_total{priority}`) |
//! | `brownout_waiting` high, `brownout_wait_seconds` near `max_wait`, `reason="queue_timeout"` rising | the room holds more than the back end drains: lower `max_wait` or `capacity`, so callers get their answer sooner |
//! | `outcome="would_reject"` in `shadow` mode | what `enforce` would reject: tune thresholds until it matches the incidents you want caught |
//! | `reason="maintenance"` | a maintenance window is in force |
//!
//! # Time
//!
//! brownout reads time through a [`clock::Clock`]: a coarse clock in
//! production (one atomic load per read), tokio's clock when tokio's time is
//! paused, so tests and drills run in virtual time. Build layers after
//! `tokio::time::pause()`.
//!
//! # Bad input
//!
//! Nothing from outside makes brownout panic. A bad policy is refused with
//! an error that names the field and quotes the value; a bad request header
//! never fails the request. Tried with generated input on every build
//! (`tests/bad_input.rs`) and, locally, with the cargo-fuzz targets in
//! `fuzz/`.
//!
//! | bad input | e.g. | what it gets |
//! |---|---|---|
//! | policy text that is not TOML, YAML or JSON | `failure_rate = = 0.5` | [`PolicyError`], with the place: ``extra `=`, expected nothing (TOML line 2, column 16)`` |
//! | a field of the wrong type, or too big for it | `minimum_calls = "twenty"`, `half_open_probes = 99999999999` | `breaker.minimum_calls: invalid type: string "twenty", expected u32 (TOML line 2, column 17)` |
//! | a value out of range, NaN included | `failure_rate = 1.5`, `failure_rate = nan` | `breaker.failure_rate: NaN is not in (0, 1]` |
//! | a duration that is not one, or zero | `open_for = "5 parsecs"`, `"0s"` | `breaker.open_for: invalid duration "5 parsecs": unknown time unit "parsecs", …` |
//! | an unknown field, section or variant | `failure_ratio = 0.5`, `mode = "sometimes"` | ``breaker.failure_ratio: unknown field `failure_ratio`, expected one of …`` |
//! | fields that do not fit together | `minimum_calls` above `window.size`, `initial` below `min` | `limit.initial: 5 is below limit.min (10)` |
//! | a bad header or class name | `header = "x priority"`, `classes = ["a", "A"]` | `priority.header: "x priority" is not a valid HTTP header name: it contains ' '; …` |
//! | a bad route | `[routes.payments]`, a route's `priority` | `routes: "payments" does not start with "/": …` |
//! | a policy file that cannot be read | not UTF-8, no such file, `.ini` | `cannot read policy file /etc/brownout/policy.toml: stream did not contain valid UTF-8` |
//! | a priority header naming no class, or not text | `x-priority: vip`, bytes ≥ 0x80 | the policy's default class; a debug-level trace |
//! | a malformed `grpc-timeout` | `123456789S` (9 digits), `5x`, `-1S`, ` 1S` | ignored: no deadline of its own; a debug-level trace |
//! | a malformed deadline header | `soon`, `-5`, `2.5.1s` | ignored, as above |
//! | a deadline already over | `grpc-timeout: 0m`, `x-request-timeout: 0` | rejected at once with [`Reason::Deadline`]: `503` + problem document over HTTP, `UNAVAILABLE` over gRPC |
//! | any other header (an idempotency key, garbage bytes) | | passed to the service untouched |
//! | a user's closure or back end that panics | a priority, classifier or fallback closure | the panic reaches the caller's task; the permit, probe slot or place in the room it held is given back (`tests/panics.rs`) |
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod breaker;
pub mod budget;
pub mod classify;
pub mod clock;
mod core;
pub mod deadline;
#[cfg(feature = "defer")]
#[cfg_attr(docsrs, doc(cfg(feature = "defer")))]
pub mod defer;
pub mod fallback;
#[cfg(feature = "fleet")]
#[cfg_attr(docsrs, doc(cfg(feature = "fleet")))]
pub mod fleet;
pub mod limit;
pub mod listen;
pub mod metrics;
pub mod policy;
pub mod priority;
mod reject;
pub mod retry;
#[cfg(feature = "sim")]
#[cfg_attr(docsrs, doc(cfg(feature = "sim")))]
pub mod sim;
pub mod stack;
pub mod waiting_room;

/// The admission core's atomics, for the loom model checks in
/// `tests/loom.rs`; only in a `--cfg brownout_loom` build.
#[cfg(brownout_loom)]
#[doc(hidden)]
pub use crate::core::loom_model;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use crate::breaker::{BreakerState, CircuitBreaker, CircuitBreakerLayer};
pub use crate::fallback::FallbackLayer;
pub use crate::limit::{AdaptiveLimit, AdaptiveLimitLayer};
pub use crate::policy::{
    BackoffPolicy, BreakerPolicy, LimitPolicy, Mode, Policy, PolicyError, PriorityPolicy, Trip,
    WaitingRoomPolicy, WindowPolicy,
};
pub use crate::priority::Priority;
pub use crate::reject::{Reason, Rejected};
pub use crate::stack::{Brownout, BrownoutLayer, PolicyHandle};
pub use crate::waiting_room::{WaitingRoom, WaitingRoomLayer};
