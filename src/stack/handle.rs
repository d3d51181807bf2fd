//! Live policy reload: ops change the policy file, the running stack follows
//! on its next request, and no state is lost.

use std::path::Path;
use std::sync::Arc;

use metrics::SharedString;

use crate::breaker::Until;
use crate::core::breaker::Manual;
use crate::policy::{Policy, PolicyError};

use super::DEFAULT_ROUTE;
use super::shared::{Shared, route_spec};

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
/// The handle also says where every route stands ([`snapshot`](Self::snapshot))
/// and acts on one route's breaker by hand, without a reload
/// ([`reset`](Self::reset), [`open_until`](Self::open_until),
/// [`half_open_now`](Self::half_open_now), [`set_route_mode`](Self::set_route_mode)).
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

    /// Every route's state now: breaker state and mode, the open
    /// breaker's next probe, limit, calls in flight, waiters (by class).
    /// Serialise it for a health or admin endpoint; see
    /// [`RouteHealth`](super::RouteHealth).
    pub fn snapshot(&self) -> super::HealthSnapshot {
        super::health::snapshot(&self.shared)
    }

    /// Puts the breaker of one route in `mode` by hand (`forced_open` to
    /// take it out of service, `forced_closed` to let everything through,
    /// `enforce` to hand it back to the breaker), without touching the
    /// policy; `false` if the route has not been seen (`overflow` names the
    /// shared gate). The next [`apply`](Self::apply) or reload sets every
    /// route's mode from the policy again.
    pub fn set_route_mode(&self, route: &str, mode: crate::policy::Mode) -> bool {
        super::health::set_mode(&self.shared, route, mode)
    }

    /// Resets the breaker of `route` by hand: closed, its window of
    /// outcomes emptied and its open-period backoff forgotten, as if
    /// freshly built; `false` if the route has not been seen (`overflow`
    /// names the shared gate). Like every action by hand, it hands a
    /// breaker in a forced mode back to `enforce` (until the next
    /// [`apply`](Self::apply) sets the modes from the policy again), and
    /// is reported as a transition: the
    /// `brownout_breaker_transitions_total` counter, a log line, and the
    /// [listener](crate::listen) with [`Cause::Manual`](crate::listen::Cause::Manual).
    /// Calls admitted before it no longer count for the breaker.
    ///
    /// ```
    /// use std::time::Duration;
    /// use brownout::{BreakerState, BrownoutLayer, Policy};
    /// use tower::{Layer, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = BrownoutLayer::from_policy(&Policy::default());
    /// let handle = layer.handle();
    /// let svc = layer.layer(tower::service_fn(|_: ()| async { Ok::<_, std::io::Error>(()) }));
    /// svc.clone().oneshot(()).await.unwrap(); // the route is seen
    ///
    /// // Take the back end out for ten minutes, then let it be probed early.
    /// assert!(handle.open_until("default", Duration::from_secs(600)));
    /// assert_eq!(layer.state("default"), Some(BreakerState::Open));
    /// assert!(svc.clone().oneshot(()).await.is_err());
    /// assert!(handle.half_open_now("default"));
    /// svc.clone().oneshot(()).await.unwrap(); // a probe
    /// assert!(handle.reset("default"));
    /// assert_eq!(layer.state("default"), Some(BreakerState::Closed));
    /// assert!(!handle.reset("/never-seen"));
    /// # }
    /// ```
    pub fn reset(&self, route: &str) -> bool {
        super::health::control(&self.shared, route, |gate| {
            gate.control(Manual::Reset);
        })
    }

    /// Opens the breaker of `route` by hand until `until`, a wall-clock
    /// [`SystemTime`](std::time::SystemTime) or a [`Duration`](std::time::Duration)
    /// from now (see [`Until`]): calls are rejected with
    /// [`Reason::Open`](crate::Reason::Open) and a retry hint at that time,
    /// when the breaker probes the back end as after any open period (and
    /// closes or reopens on the probes' verdict). `false` if the route has
    /// not been seen. See [`reset`](Self::reset) for what every action by
    /// hand does.
    pub fn open_until(&self, route: &str, until: impl Into<Until>) -> bool {
        let until = until.into();
        super::health::control(&self.shared, route, |gate| {
            gate.open_until(until);
        })
    }

    /// Puts the breaker of `route` half-open by hand: the next calls (up
    /// to `half_open_probes`) are probes, whose verdict closes or reopens
    /// it. `false` if the route has not been seen. See
    /// [`reset`](Self::reset) for what every action by hand does.
    pub fn half_open_now(&self, route: &str) -> bool {
        super::health::control(&self.shared, route, |gate| {
            gate.control(Manual::HalfOpenNow);
        })
    }

    /// Reads the policy file at `path` (see [`Policy::from_path`]) and
    /// [applies](Self::apply) it.
    pub fn reload(&self, path: impl AsRef<Path>) -> Result<(), PolicyError> {
        self.apply(Policy::from_path(path)?)
    }

    /// Validates `policy` and puts it in force on every route, new and
    /// existing; on error the policy in force stays.
    ///
    /// Applies run one after the other (a second waits for the first to
    /// end), and a route first seen while an apply runs follows the policy
    /// that apply puts in force.
    pub fn apply(&self, policy: Policy) -> Result<(), PolicyError> {
        let _applying = self
            .shared
            .applying
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        policy.validate()?;
        let old = self.shared.policy.load_full();
        if policy.priority != old.priority {
            return Err(PolicyError::invalid(
                "priority",
                "a change",
                "cannot be applied while running: the priority classes are fixed at start; restart to change them",
            ));
        }
        // New routes wait for their policy from here until it is decided.
        let mut built = self.shared.built();
        let mut entries = self.shared.gates.entries();
        let seen = entries
            .iter()
            .map(|(route, _)| route.clone())
            .chain(built.iter().cloned().map(Some));
        for route in seen {
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
        let late = std::mem::take(&mut *built);
        drop(built);
        // Gates built from the old policy that were not yet in the map when
        // it was read: waits for their insertion to end.
        for route in late {
            let gate =
                self.shared
                    .gates
                    .with(&*route, |key: &str| Arc::<str>::from(key), Arc::clone);
            if !entries.iter().any(|(_, seen)| Arc::ptr_eq(seen, &gate)) {
                entries.push((Some(route), gate));
            }
        }
        let policy = self.shared.policy.load();
        #[cfg(test)]
        pause::at(&format!("apply {:p}", Arc::as_ptr(&self.shared)));
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

/// Pause points for tests of races: a thread reaching an armed point
/// says so and waits for the test to let it go.
#[cfg(test)]
pub(super) mod pause {
    use std::collections::HashMap;
    use std::sync::mpsc::{Receiver, Sender, channel};
    use std::sync::{Mutex, OnceLock};

    type Points = Mutex<HashMap<String, (Sender<()>, Receiver<()>)>>;

    fn points() -> &'static Points {
        static POINTS: OnceLock<Points> = OnceLock::new();
        POINTS.get_or_init(Points::default)
    }

    /// An armed point, seen from the test.
    pub(crate) struct Armed {
        reached: Receiver<()>,
        go: Sender<()>,
    }

    impl Armed {
        /// Waits until a thread is paused at the point.
        pub(crate) fn reached(&self) {
            self.reached.recv().expect("the paused thread lives");
        }

        /// Lets the paused thread go on.
        pub(crate) fn go(self) {
            let _ = self.go.send(());
        }
    }

    /// Arms `point`: the first thread to reach it pauses there.
    pub(crate) fn arm(point: &str) -> Armed {
        let (reached_tx, reached) = channel();
        let (go, go_rx) = channel();
        let mut points = points().lock().unwrap();
        points.insert(point.to_owned(), (reached_tx, go_rx));
        Armed { reached, go }
    }

    /// Pauses here if a test armed `point`.
    pub(crate) fn at(point: &str) {
        let armed = points().lock().unwrap().remove(point);
        if let Some((reached, go)) = armed {
            let _ = reached.send(());
            let _ = go.recv();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::mpsc::channel;
    use std::thread;
    use std::time::Duration;

    use crate::policy::{Mode, Policy};
    use crate::{BreakerState, BrownoutLayer};

    use super::pause;

    fn with_mode(mode: Mode) -> Policy {
        let mut policy = Policy::default();
        policy.breaker.mode = mode;
        policy
    }

    /// Runs `apply` on a thread and waits for it to end, or for a second if
    /// it is blocked (by a paused thread that must be let go first).
    fn apply_while_paused(apply: impl FnOnce() + Send + 'static) -> thread::JoinHandle<()> {
        let (done, ended) = channel();
        let applier = thread::spawn(move || {
            apply();
            let _ = done.send(());
        });
        let _ = ended.recv_timeout(Duration::from_secs(1));
        applier
    }

    #[test]
    fn a_route_first_seen_during_an_apply_follows_the_new_policy() {
        let route = "/first-seen-during-an-apply";
        let layer = BrownoutLayer::from_policy(&with_mode(Mode::Enforce));
        let handle = layer.handle();
        // The route's gate is being built: its policy has been read.
        let armed = pause::arm(&format!("built {route}"));
        let shared = handle.shared.clone();
        let caller = thread::spawn(move || {
            shared
                .gates
                .with(route, |key: &str| Arc::<str>::from(key), |_| ())
        });
        armed.reached();
        let applying = handle.clone();
        let applier = apply_while_paused(move || {
            applying.apply(with_mode(Mode::ForcedOpen)).unwrap();
        });
        armed.go();
        caller.join().unwrap();
        applier.join().unwrap();
        assert_eq!(layer.state(route), Some(BreakerState::ForcedOpen));
    }

    #[test]
    fn concurrent_applies_are_serialised_and_the_last_one_wins_everywhere() {
        let layer = BrownoutLayer::from_policy(&with_mode(Mode::Enforce));
        let handle = layer.handle();
        handle
            .shared
            .gates
            .with("/seen", |key: &str| Arc::<str>::from(key), |_| ());
        // The first apply pauses after putting its policy in force, before
        // reconfiguring the routes.
        let armed = pause::arm(&format!("apply {:p}", Arc::as_ptr(&handle.shared)));
        let first = handle.clone();
        let first = thread::spawn(move || first.apply(with_mode(Mode::ForcedOpen)).unwrap());
        armed.reached();
        let second = handle.clone();
        let second = apply_while_paused(move || {
            second.apply(with_mode(Mode::ForcedClosed)).unwrap();
        });
        armed.go();
        first.join().unwrap();
        second.join().unwrap();
        let in_force = handle.current().breaker.mode;
        let expected = match in_force {
            Mode::ForcedOpen => BreakerState::ForcedOpen,
            Mode::ForcedClosed => BreakerState::ForcedClosed,
            mode => panic!("{mode:?} was never applied"),
        };
        for route in ["/seen", "default", "overflow"] {
            let state = layer.state(route);
            if route == "default" && state.is_none() {
                continue;
            }
            assert_eq!(state, Some(expected), "{route} follows the policy in force");
        }
    }
}
