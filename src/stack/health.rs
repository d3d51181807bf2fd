//! A health snapshot of every route of a running stack, and manual control
//! of a route's breaker mode, for an application's admin endpoint.

use std::sync::Arc;

use std::time::SystemTime;

use serde::{Serialize, Serializer};

use crate::core::gate::Gate;
use crate::core::gate_map::OVERFLOW_KEY;
use crate::policy::Mode;
use crate::priority::Priority;

use super::shared::Shared;

/// Every route of a stack as it stands now; serialise it (JSON, …) for a
/// health or admin endpoint (see [`RouteHealth`] for what one route says). Built by [`PolicyHandle::snapshot`](super::PolicyHandle::snapshot)
/// and [`BrownoutLayer::snapshot`](super::BrownoutLayer::snapshot).
///
/// ```
/// use brownout::{BrownoutLayer, Policy};
///
/// let layer = BrownoutLayer::from_policy(&Policy::default());
/// let snapshot = layer.snapshot();
/// // A fresh stack has only its shared overflow gate.
/// assert_eq!(snapshot.routes.len(), 1);
/// assert_eq!(snapshot.routes[0].route, "overflow");
/// assert_eq!(snapshot.routes[0].state, "closed");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HealthSnapshot {
    /// The routes seen so far, by name, then the shared `overflow` gate.
    pub routes: Vec<RouteHealth>,
}

/// One route's admission state.
///
/// Serialised (with serde, e.g. to JSON), times are RFC 3339 in UTC and
/// the waiters by class an object in order of importance:
///
/// ```json
/// { "route": "/slots", "state": "open", "mode": "enforce", "limit": 20,
///   "inflight": 0, "waiting": 3,
///   "waiting_by_class": { "urgent": 1, "normal": 2, "bulk": 0 },
///   "next_probe_at": "2026-12-07T05:21:13.250Z", "next_probe_in_ms": 4250 }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RouteHealth {
    /// The route's label, as in the metrics (`default`, `overflow`, a path).
    pub route: String,
    /// The breaker's state: `closed`, `half_open`, `open`, `forced_open`,
    /// `forced_closed` (as the state's `as_str` says).
    pub state: &'static str,
    /// The breaker's mode: `enforce`, `shadow`, `forced_open`, `forced_closed`.
    pub mode: Mode,
    /// Calls the adaptive limit allows in flight (none without a limit).
    pub limit: Option<u32>,
    /// Calls in flight now.
    pub inflight: u32,
    /// Requests in the waiting room now.
    pub waiting: usize,
    /// Requests in the waiting room now, by priority class, most important
    /// first (empty without a waiting room).
    #[serde(serialize_with = "ordered_map")]
    pub waiting_by_class: Vec<(String, usize)>,
    /// When an open breaker lets its next probe through (the `Retry-After`
    /// its rejections carry), in wall-clock time as the stack's clock sees
    /// it; `None` unless the breaker is open and enforcing.
    #[serde(serialize_with = "rfc3339")]
    pub next_probe_at: Option<SystemTime>,
    /// How long from the snapshot until that probe, in milliseconds.
    pub next_probe_in_ms: Option<u64>,
    /// The share of new calls a closed breaker turns away while the
    /// back end fails or is slow past the thresholds but still serves
    /// (`trip = "throttle"`), in [0, 1); left out of the serialised form
    /// when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub throttled: f64,
    // Budget and deferral counts belong here, once a route can report
    // them: one `Option<…>` field per section (`#[serde(skip_serializing_if
    // = "Option::is_none")]`, so that routes without a budget or deferral
    // serialise as before), filled in `RouteHealth::of` from the route's
    // budget pools and deferral store. The struct is `#[non_exhaustive]`:
    // adding them breaks no one.
}

impl RouteHealth {
    fn of(route: &str, gate: &Gate) -> Self {
        let next_probe = gate.next_probe();
        let classes = gate.classes();
        let waiting_by_class = gate
            .waiting_by_class()
            .into_iter()
            .enumerate()
            .map(|(rank, n)| (classes.name(Priority::new(rank as u8)).to_owned(), n))
            .collect();
        Self {
            route: route.to_owned(),
            state: gate.state().as_str(),
            mode: gate.mode(),
            limit: gate.limiter().map(|limit| limit.limit()),
            inflight: gate.inflight(),
            waiting: gate.waiting(),
            waiting_by_class,
            next_probe_at: next_probe.map(|(at, _)| at),
            next_probe_in_ms: next_probe
                .map(|(_, wait)| u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
            throttled: gate.throttled_share(),
        }
    }
}

fn is_zero(share: &f64) -> bool {
    *share == 0.0
}

/// A list of pairs as an object, in the list's order.
fn ordered_map<S: Serializer>(pairs: &[(String, usize)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

/// A time as RFC 3339 (UTC, milliseconds), or null.
fn rfc3339<S: Serializer>(at: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => s.collect_str(&humantime::format_rfc3339_millis(*at)),
        None => s.serialize_none(),
    }
}

/// The snapshot of `shared`'s routes.
pub(super) fn snapshot(shared: &Shared) -> HealthSnapshot {
    let mut named = Vec::new();
    let mut overflow = None;
    for (route, gate) in shared.gates.entries() {
        match route {
            Some(route) => named.push(RouteHealth::of(&route, &gate)),
            None => overflow = Some(RouteHealth::of(OVERFLOW_KEY, &gate)),
        }
    }
    named.sort_by(|a, b| a.route.cmp(&b.route));
    named.extend(overflow);
    HealthSnapshot { routes: named }
}

/// The gate of `route` if it has been seen (`overflow`: the shared gate).
pub(super) fn gate_of(shared: &Shared, route: &str) -> Option<Arc<Gate>> {
    match route {
        OVERFLOW_KEY => Some(shared.gates.overflow().clone()),
        route => shared.gates.get(route),
    }
}

/// Acts on the breaker of `route` by hand with `act`; `false` if the
/// route has not been seen.
pub(super) fn control(shared: &Shared, route: &str, act: impl FnOnce(&Gate)) -> bool {
    match gate_of(shared, route) {
        Some(gate) => {
            act(&gate);
            true
        }
        None => false,
    }
}

/// Puts the breaker of `route` in `mode`; `false` if the route has not
/// been seen.
pub(super) fn set_mode(shared: &Shared, route: &str, mode: Mode) -> bool {
    match gate_of(shared, route) {
        Some(gate) => {
            tracing::warn!(route, mode = ?mode, "brownout: breaker mode set by hand");
            gate.set_mode(mode);
            true
        }
        None => false,
    }
}
