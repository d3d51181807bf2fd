//! A health snapshot of every route of a running stack, and manual control
//! of a route's breaker mode, for an application's admin endpoint.

use std::sync::Arc;

use serde::Serialize;

use crate::core::gate::Gate;
use crate::core::gate_map::OVERFLOW_KEY;
use crate::policy::Mode;

use super::layer::Shared;

/// Every route of a stack as it stands now; serialise it (JSON, …) for a
/// health or admin endpoint. Built by [`PolicyHandle::snapshot`](super::PolicyHandle::snapshot)
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
}

impl RouteHealth {
    fn of(route: &str, gate: &Gate) -> Self {
        Self {
            route: route.to_owned(),
            state: gate.state().as_str(),
            mode: gate.mode(),
            limit: gate.limiter().map(|limit| limit.limit()),
            inflight: gate.inflight(),
            waiting: gate.waiting(),
        }
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
