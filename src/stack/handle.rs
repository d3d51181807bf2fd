//! Live policy reload: ops change the policy file, the running stack follows
//! on its next request, and no state is lost.

use std::path::Path;
use std::sync::Arc;

use metrics::SharedString;

use crate::policy::{Policy, PolicyError};

use super::DEFAULT_ROUTE;
use super::layer::{Shared, route_spec};

/// Replaces the policy of a running [`BrownoutLayer`](super::BrownoutLayer)
/// stack, atomically, keeping its state.
///
/// Every route keeps its breaker window and verdict, its learned limit,
/// its calls in flight and its waiters; what changes is the thresholds,
/// bounds, modes and settings they are judged by. A smaller waiting room
/// turns away its excess waiters, least important class and newest first,
/// with `QueueFull` (never silently). A change of `mode` (`forced_open`,
/// `forced_closed`, `shadow`, `enforce`) takes effect on the next request.
///
/// Two things are fixed while the stack runs, and a policy that changes
/// them is refused: the priority classes (their metrics and the requests'
/// classes depend on them) and each route's breaker window shape (`kind`,
/// `size`, `buckets`: its contents cannot be carried over).
///
/// A policy that does not load or validate leaves the one in force, and
/// the error names the field.
///
/// ```
/// use brownout::{BrownoutLayer, Mode, Policy};
///
/// let layer = BrownoutLayer::from_policy(&Policy::default());
/// let handle = layer.handle();
/// let mut maintenance = Policy::default();
/// maintenance.breaker.mode = Mode::ForcedOpen;
/// handle.apply(maintenance).unwrap();
/// assert_eq!(layer.policy().breaker.mode, Mode::ForcedOpen);
///
/// let mut bad = Policy::default();
/// bad.breaker.failure_rate = 1.5;
/// let err = handle.apply(bad).unwrap_err();
/// assert_eq!(err.to_string(), "breaker.failure_rate: 1.5 is not in (0, 1]");
/// assert_eq!(layer.policy().breaker.mode, Mode::ForcedOpen, "the old policy stays");
/// ```
#[derive(Debug, Clone)]
pub struct PolicyHandle {
    shared: Arc<Shared>,
}

impl PolicyHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The policy in force.
    pub fn current(&self) -> Arc<Policy> {
        self.shared.policy.load_full()
    }

    /// Reads the policy file at `path` (see [`Policy::from_path`]) and
    /// [applies](Self::apply) it.
    pub fn reload(&self, path: impl AsRef<Path>) -> Result<(), PolicyError> {
        self.apply(Policy::from_path(path)?)
    }

    /// Validates `policy` and puts it in force on every route, new and
    /// existing; on error the policy in force stays.
    pub fn apply(&self, policy: Policy) -> Result<(), PolicyError> {
        policy.validate()?;
        let old = self.shared.policy.load_full();
        if policy.priority != old.priority {
            return Err(PolicyError::invalid(
                "priority",
                "a change",
                "cannot be applied while running: the priority classes are fixed at start; restart to change them",
            ));
        }
        let entries = self.shared.gates.entries();
        for (route, _) in &entries {
            let key = route.as_deref().unwrap_or("");
            let (before, after) = (old.route(key), policy.route(key));
            if before.breaker.window != after.breaker.window {
                let field = match route.as_deref() {
                    Some(DEFAULT_ROUTE) | None => "breaker.window".to_owned(),
                    Some(route) => format!("routes.\"{route}\".breaker.window"),
                };
                return Err(PolicyError::invalid(
                    field,
                    describe_window(&after.breaker.window),
                    "cannot be applied while running: the window's contents cannot be carried over to a new shape; restart to change it",
                ));
            }
        }
        log_changes(&old, &policy);
        self.shared.policy.store(Arc::new(policy));
        let policy = self.shared.policy.load();
        for (route, gate) in entries {
            let key = route.as_deref().unwrap_or("");
            let effective = policy.route(key);
            let label = SharedString::from(key.to_owned());
            let spec = route_spec(
                &effective,
                &self.shared.classes,
                label,
                gate.clock().clone(),
            );
            gate.reconfigure(&spec);
        }
        Ok(())
    }
}

/// A window as ops write it.
fn describe_window(window: &crate::policy::WindowPolicy) -> String {
    match window {
        crate::policy::WindowPolicy::Count { size } => {
            format!("{{ kind = \"count\", size = {size} }}")
        }
        crate::policy::WindowPolicy::Time { size, buckets } => format!(
            "{{ kind = \"time\", size = \"{}\", buckets = {buckets} }}",
            humantime::format_duration(*size)
        ),
    }
}

/// Says which sections a reload changed.
fn log_changes(old: &Policy, new: &Policy) {
    macro_rules! section {
        ($name:literal, $field:ident) => {
            if old.$field != new.$field {
                tracing::info!(section = $name, new = ?new.$field, "brownout: policy reloaded: section changed");
            }
        };
    }
    section!("breaker", breaker);
    section!("limit", limit);
    section!("waiting_room", waiting_room);
    section!("maintenance", maintenance);
    section!("routes", routes);
    if old == new {
        tracing::info!("brownout: policy reloaded: nothing changed");
    }
}
