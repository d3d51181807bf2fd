//! What every clone of a composed stack shares ([`Shared`]: the policy in
//! force, the gates of its routes, the budget), and how it is built from
//! the policy and the layer's settings ([`Settings`]), the fleet included.

use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use metrics::SharedString;

use crate::clock::Clock;
use crate::core::gate::{Gate, GateSpec};
use crate::core::gate_map::{GateMap, OVERFLOW_KEY};
use crate::listen::SharedListener;
use crate::policy::Policy;
use crate::priority::Classes;

use super::DEFAULT_ROUTE;
use super::extras::BuildError;

/// What every clone of a stack shares: the policy in force and the gates
/// of its routes.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) policy: Arc<ArcSwap<Policy>>,
    pub(crate) gates: GateMap<Arc<str>>,
    pub(crate) classes: Classes,
    /// Held through a whole [`PolicyHandle::apply`](super::PolicyHandle::apply),
    /// so that applies run one after the other.
    pub(crate) applying: Mutex<()>,
    /// The routes whose gates were built since the last apply, all from the
    /// policy in force. A new route's gate reads its policy with this held,
    /// and an apply puts its policy in force with this held: a gate built
    /// from the old policy is listed here by then, so the apply finds and
    /// reconfigures it even if it is not yet in `gates`.
    pub(crate) built: Arc<Mutex<Vec<Arc<str>>>>,
    /// The policy's `[budget]`, taken before admission; `None` without one.
    pub(crate) budget: Option<crate::budget::Budget>,
    /// The gate `gates` gives the default route, once it has given it: a
    /// request without a route (every request of a single-route stack)
    /// finds it without hashing and comparing the route's name. A key's
    /// gate never changes once the map has given it (nothing is evicted),
    /// so this is always the map's own.
    pub(crate) default_gate: OnceLock<Arc<Gate>>,
}

impl Shared {
    /// Takes the `built` list's lock, whoever panicked while holding it.
    pub(crate) fn built(&self) -> std::sync::MutexGuard<'_, Vec<Arc<str>>> {
        self.built.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` with the gate of `route`, `None` being the default route
    /// ([`DEFAULT_ROUTE`]); the gate is built on the route's first request.
    #[inline]
    pub(crate) fn with_gate<R>(&self, route: Option<&str>, f: impl FnOnce(&Arc<Gate>) -> R) -> R {
        let own = |key: &str| Arc::<str>::from(key);
        match route {
            Some(route) => self.gates.with(route, own, f),
            None => match self.default_gate.get() {
                Some(gate) => f(gate),
                None => self.gates.with(DEFAULT_ROUTE, own, |gate| {
                    let _ = self.default_gate.set(gate.clone());
                    f(gate)
                }),
            },
        }
    }
}

/// The gate settings of a route from `effective`, its policy with its
/// `[routes."…"]` overrides already applied by [`Policy::route`]; this
/// only points the gate at its sections and labels it `label`.
pub(crate) fn route_spec<'a>(
    effective: &'a Policy,
    classes: &'a Classes,
    label: SharedString,
    clock: Clock,
) -> GateSpec<'a> {
    GateSpec {
        breaker: Some(&effective.breaker),
        limit: Some(&effective.limit),
        room: Some(&effective.waiting_room),
        maintenance: &effective.maintenance,
        classes,
        route: label,
        clock,
        seed: None,
        listener: None,
        custom_limit: None,
    }
}

/// A route's breaker seed: the layer's, mixed with the route's name
/// (FNV-1a), the same in every run.
fn seed_for(seed: u64, route: &str) -> u64 {
    route
        .bytes()
        .fold(seed ^ 0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// What the stack's gates are built from. The setters that rebuild the
/// gates ([`max_routes`](super::BrownoutLayer::max_routes),
/// [`clock`](super::BrownoutLayer::clock)) change one field and rebuild from all
/// of them, so that each keeps what the others set.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) policy: Arc<Policy>,
    pub(super) max_routes: usize,
    /// `None`: detected when the gates are built.
    pub(super) clock: Option<Clock>,
    /// Seeds the breakers' jitter (each route's from this and its name);
    /// `None`: a fresh seed per breaker.
    pub(super) seed: Option<u64>,
    pub(super) listener: Option<SharedListener>,
    /// The application's own limit algorithm, for `algorithm = "custom"`.
    pub(super) custom_limit: Option<crate::limit::CustomAlgorithm>,
    /// The deferring routes of the policy with their stores, opened once
    /// by [`BrownoutLayer::from_policy`](super::BrownoutLayer::from_policy); `None` without any.
    #[cfg(feature = "defer")]
    pub(super) deferral: Option<crate::defer::Deferral>,
}

impl Settings {
    /// A fresh stack state: the policy in force and no gates but the
    /// overflow gate; errors logged.
    pub(super) fn build(&self) -> Arc<Shared> {
        match self.build_checked(false) {
            Ok(shared) => shared,
            Err(_) => unreachable!("a lenient build logs its errors"),
        }
    }

    /// A fresh stack state; a budget that cannot be built is an error when
    /// `strict`, else logged and left out.
    pub(super) fn build_checked(&self, strict: bool) -> Result<Arc<Shared>, BuildError> {
        let policy = &*self.policy;
        let max_routes = self.max_routes;
        if let Err(err) = policy.validate() {
            tracing::error!(%err, "brownout: invalid policy, using it with its values clamped");
        }
        let classes = Classes::from_policy(&policy.priority);
        let clock = self.clock.clone().unwrap_or_else(Clock::detect);
        let listener = self.listener.clone();
        let custom_limit = self.custom_limit.clone();
        let seed = self.seed;
        let budget = match &policy.budget {
            None => None,
            Some(budget) => {
                match crate::budget::Budget::with_clock(budget, &policy.priority, clock.clone()) {
                    Ok(budget) => Some(budget),
                    Err(err) if strict => return Err(err.into()),
                    Err(err) => {
                        tracing::error!(%err, "brownout: the [budget] cannot be built; the stack counts no budget");
                        None
                    }
                }
            }
        };
        #[cfg(feature = "fleet")]
        let fleet = start_fleet(policy, &clock, strict)?;
        let in_force = Arc::new(ArcSwap::from_pointee(policy.clone()));
        let built = Arc::new(Mutex::new(Vec::new()));
        let gates = {
            let in_force = in_force.clone();
            let classes = classes.clone();
            let built = built.clone();
            #[cfg(feature = "fleet")]
            let fleet = fleet.clone();
            GateMap::new(max_routes, move |route: Option<&Arc<str>>| {
                let (label, effective) = match route {
                    Some(route) => {
                        let effective = {
                            let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
                            built.push(route.clone());
                            in_force.load().route(route)
                        };
                        #[cfg(test)]
                        super::handle::pause::at(&format!("built {route}"));
                        (SharedString::from(route.to_string()), effective)
                    }
                    None => (
                        SharedString::const_str(OVERFLOW_KEY),
                        in_force.load().route(""),
                    ),
                };
                // A route of its own shares its breaker with the fleet;
                // the overflow gate does not: the routes it stands for
                // differ from one replica to the next.
                #[cfg(feature = "fleet")]
                let listener = match (&fleet, route) {
                    (Some(fleet), Some(route)) => Some(fleet.listener_for(route, listener.clone())),
                    _ => listener.clone(),
                };
                // Each route draws its own jitter from the layer's seed, so
                // that routes of one replica do not probe in step either.
                let seed = seed.map(|seed| seed_for(seed, route.map_or("", |r| &**r)));
                Gate::new(GateSpec {
                    listener: listener.clone(),
                    custom_limit: custom_limit.clone(),
                    seed,
                    ..route_spec(&effective, &classes, label, clock.clone())
                })
            })
        };
        let shared = Arc::new(Shared {
            policy: in_force,
            gates,
            classes,
            applying: Mutex::new(()),
            built,
            budget,
            default_gate: OnceLock::new(),
        });
        #[cfg(feature = "fleet")]
        if let Some(fleet) = &fleet {
            fleet.start(Arc::downgrade(&shared));
        }
        Ok(shared)
    }
}

#[cfg(feature = "fleet")]
impl crate::fleet::stack::Routes for Shared {
    fn gate(&self, route: &str) -> Option<Arc<Gate>> {
        self.gates.get(route)
    }

    fn open_for(&self, route: &str) -> std::time::Duration {
        self.policy.load().route(route).breaker.open_for
    }
}

/// The fleet that shares the stack's breakers, if `policy` has a
/// `[fleet]` section: an error when `strict`; else logged, and each
/// breaker decides alone (the stack still serves: a fleet that cannot be
/// joined is no reason to refuse traffic).
#[cfg(feature = "fleet")]
fn start_fleet(
    policy: &Policy,
    clock: &Clock,
    strict: bool,
) -> Result<Option<Arc<crate::fleet::stack::StackFleet>>, BuildError> {
    use crate::fleet::stack::{StackFleet, StartError};
    match StackFleet::new(policy, clock.clone()) {
        Ok(fleet) => Ok(fleet),
        Err(StartError::Policy(err)) if strict => Err(err.into()),
        Err(StartError::NoRuntime) if strict => Err(BuildError::FleetNeedsRuntime),
        Err(StartError::Policy(err)) => {
            tracing::error!(%err, "brownout: the [fleet] section cannot be used; each breaker decides alone");
            Ok(None)
        }
        Err(StartError::NoRuntime) => {
            tracing::error!(
                "brownout: the stack was built outside a tokio runtime; its [fleet] section needs one, \
                 so each breaker decides alone (build it inside the runtime to share them)"
            );
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(max_routes: usize) -> Arc<Shared> {
        Settings {
            policy: Arc::new(Policy::default()),
            max_routes,
            clock: None,
            seed: None,
            listener: None,
            custom_limit: None,
            #[cfg(feature = "defer")]
            deferral: None,
        }
        .build()
    }

    #[test]
    fn a_request_without_a_route_gets_the_default_routes_gate() {
        // Unnamed first, then named, then unnamed again.
        let shared = shared(4);
        let unnamed = shared.with_gate(None, Arc::clone);
        let named = shared.with_gate(Some(DEFAULT_ROUTE), Arc::clone);
        assert!(Arc::ptr_eq(&unnamed, &named));
        assert!(Arc::ptr_eq(&shared.with_gate(None, Arc::clone), &named));
        assert!(Arc::ptr_eq(
            &shared.gates.get(DEFAULT_ROUTE).unwrap(),
            &named
        ));
        // Named first.
        let shared = self::shared(4);
        let named = shared.with_gate(Some(DEFAULT_ROUTE), Arc::clone);
        assert!(Arc::ptr_eq(&shared.with_gate(None, Arc::clone), &named));
        // Past max_routes, the default route shares the overflow gate, as a
        // named one would.
        let shared = self::shared(1);
        let other = shared.with_gate(Some("other"), Arc::clone);
        let unnamed = shared.with_gate(None, Arc::clone);
        assert!(!Arc::ptr_eq(&unnamed, &other));
        assert!(Arc::ptr_eq(&unnamed, shared.gates.overflow()));
        assert!(Arc::ptr_eq(
            &shared.with_gate(Some(DEFAULT_ROUTE), Arc::clone),
            &unnamed
        ));
    }
}
