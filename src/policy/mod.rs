#![doc = include_str!("../../docs/policy.md")]

mod breaker;
mod budget;
mod check;
mod defer;
mod duration;
mod error;
mod fleet;
mod limit;
mod load;
mod maintenance;
mod priority;
mod route;
mod waiting_room;

pub use breaker::{BackoffPolicy, BreakerPolicy, Mode, Trip, WindowPolicy};
pub(crate) use budget::Zone;
pub use budget::{BudgetPolicy, BudgetStore, BudgetWindow};
pub use defer::{ByteSize, DEFERRABLE_REASONS, DeferPolicy, DeferStoreKind};
pub use error::PolicyError;
pub use fleet::{FleetPolicy, FleetShare};
pub use limit::{Algorithm, LimitPolicy};
pub use load::Format;
pub use maintenance::MaintenanceWindow;
pub use priority::{MAX_CLASSES, PriorityPolicy};
pub use route::{
    BackoffOverride, BreakerOverride, LimitOverride, RoutePolicy, WaitingRoomOverride,
};
pub use waiting_room::{Order, WaitingRoomPolicy};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The whole policy, as ops write it in TOML, YAML or JSON.
///
/// Every section is optional and defaults to its own `Default`; see the
/// [module docs](self) for a full file and how to load it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// The `[breaker]` section: when the circuit opens, for how long, and
    /// how it probes.
    pub breaker: BreakerPolicy,
    /// The `[limit]` section: how many calls may be in flight, learned from
    /// the back end's latency and failures.
    pub limit: LimitPolicy,
    /// The `[waiting_room]` section: how many requests may wait, for how
    /// long, and in which order they leave.
    pub waiting_room: WaitingRoomPolicy,
    /// The `[priority]` section: the classes requests come in and where an
    /// HTTP request says its class. Global: routes share it.
    pub priority: PriorityPolicy,
    /// The `[[maintenance]]` windows: planned periods in which every
    /// request is answered at once with [`Reason::Maintenance`](crate::Reason),
    /// the window's message and a retry hint at its end. Global: they apply
    /// to every route. Empty by default (and then left out when the policy
    /// is written back). See the [module docs](self#maintenance-windows).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub maintenance: Vec<MaintenanceWindow>,
    /// The `[routes."…"]` sections, by route key: per-route overrides of
    /// `breaker`, `limit` and `waiting_room`, each keeping only what was
    /// written; empty by default (and then left out when the policy is
    /// written back).
    ///
    /// A key is the request's path, starting with `/`: an HTTP path
    /// (`"/payments"`) or a gRPC method (`"/booking.Booking/Book"`).
    /// [`Policy::route`] gives a route's effective policy: the top-level
    /// sections with the route's overrides applied. See the
    /// [module docs](self#per-route-overrides).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub routes: BTreeMap<String, RoutePolicy>,
    /// The `[budget]` section: a declared capacity, admissions per period
    /// with shares reserved for classes, local or shared through Redis.
    /// Global, optional: `None` (and then left out when the policy is
    /// written back) counts nothing. See [`BudgetPolicy`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetPolicy>,
    /// The `[fleet]` section: breaker verdicts shared by the replicas
    /// through Redis (feature `fleet`, `brownout::fleet`): every route's
    /// breaker in a stack built from the policy. Global, optional: `None`
    /// (and then left out when the policy is written back) shares nothing.
    /// See [`FleetPolicy`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetPolicy>,
}

impl Policy {
    /// Checks every section, in the order of the file (`breaker`, `limit`,
    /// `waiting_room`, `priority`), then each maintenance window (it must
    /// end after it starts), then every route in key order, then `[budget]`
    /// (its classes must be in `[priority].classes`), then `[fleet]`; the
    /// loaders call it. The error names the first bad field: see
    /// [`BreakerPolicy::validate`], [`LimitPolicy::validate`],
    /// [`WaitingRoomPolicy::validate`] and [`PriorityPolicy::validate`] for
    /// what each section checks.
    ///
    /// A route's key must be a path starting with `/`, and each section a
    /// route overrides is checked as the route will use it, merged with the
    /// top-level section. Its errors name the field under the route, and
    /// a value the route inherits says so:
    ///
    /// ```
    /// # #[cfg(feature = "toml")] {
    /// let err = brownout::Policy::from_toml(
    ///     r#"
    ///     limit = { min = 10, initial = 20 }
    ///     [routes."/slots"]
    ///     limit = { initial = 5 }
    ///     [routes."/payments"]
    ///     limit = { min = 30 }
    ///     "#,
    /// )
    /// .unwrap_err();
    /// // "/payments" comes first: routes are checked in key order.
    /// assert_eq!(
    ///     err.to_string(),
    ///     r#"routes."/payments".limit.initial: 20 (inherited from limit.initial) is below routes."/payments".limit.min (30)"#,
    /// );
    /// # }
    /// ```
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.breaker.validate()?;
        self.limit.validate()?;
        self.waiting_room.validate()?;
        self.priority.validate()?;
        for (index, window) in self.maintenance.iter().enumerate() {
            window.validate_at(index)?;
        }
        for (key, route) in &self.routes {
            route::check_key(key)?;
            route.validate_at(&route::route_path(key), self)?;
        }
        if let Some(budget) = &self.budget {
            budget.validate()?;
            budget.validate_classes(&self.priority)?;
        }
        if let Some(fleet) = &self.fleet {
            fleet.validate()?;
            // The fleet's probe lease paces a shared route's probes; a
            // replica probing early on its own would pass it by.
            let early = |field: String, value: u32| match value {
                0 => Ok(()),
                value => Err(PolicyError::invalid(
                    field,
                    value,
                    "must be 0 with a [fleet] section: the fleet's probe lease paces the probes",
                )),
            };
            early("breaker.probe_after".to_owned(), self.breaker.probe_after)?;
            for (key, route) in &self.routes {
                if let Some(value) = route.breaker.probe_after {
                    early(
                        format!("{}.breaker.probe_after", route::route_path(key)),
                        value,
                    )?;
                }
            }
        }
        Ok(())
    }

    /// The effective policy of `route`: the top-level sections with the
    /// overrides of `[routes."<route>"]` applied, field by field; a route
    /// not listed in [`routes`](Self::routes) gets the top-level sections
    /// as they are. `priority` is global, and the result's `routes` is
    /// empty: it is one route's policy.
    ///
    /// The key is matched exactly (no prefix or pattern matching). Build
    /// each route's layers from its effective sections:
    ///
    /// ```
    /// # #[cfg(feature = "toml")] {
    /// use std::time::Duration;
    /// use brownout::{Policy, WaitingRoomLayer};
    ///
    /// let policy = Policy::from_toml(
    ///     r#"
    ///     [waiting_room]
    ///     max_wait = "30s"
    ///     [routes."/payments"]
    ///     waiting_room = { capacity = 0 }
    ///     "#,
    /// )?;
    /// let payments = policy.route("/payments");
    /// assert_eq!(payments.waiting_room.capacity, 0);
    /// assert_eq!(payments.waiting_room.max_wait, Duration::from_secs(30)); // inherited
    /// assert_eq!(policy.route("/slots").waiting_room, policy.waiting_room); // not listed
    ///
    /// let layer = WaitingRoomLayer::new(payments.waiting_room).route("/payments");
    /// # let _ = layer;
    /// # }
    /// # Ok::<(), brownout::PolicyError>(())
    /// ```
    pub fn route(&self, route: &str) -> Policy {
        let mut policy = Policy {
            routes: BTreeMap::new(),
            ..self.clone()
        };
        if let Some(overrides) = self.routes.get(route) {
            overrides.apply_to(&mut policy);
        }
        policy
    }
}
