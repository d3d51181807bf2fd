//! State-change listeners: your code, called when a route's breaker
//! changes state, its limit moves, a request is turned away, or a
//! maintenance window starts or ends.
//!
//! A [`Listener`] has one method per kind of event, each a no-op by
//! default, in the style of tower-http's callbacks: implement the ones you
//! need, pass `()` for none, or pass a closure that takes an [`Event`].
//! Set it with [`BrownoutLayer::listener`](crate::BrownoutLayer::listener)
//! (every route of the stack) or on a standalone layer
//! ([`CircuitBreakerLayer::listener`](crate::CircuitBreakerLayer::listener),
//! also for its keyed breakers,
//! [`AdaptiveLimitLayer::listener`](crate::AdaptiveLimitLayer::listener),
//! [`WaitingRoomLayer::listener`](crate::WaitingRoomLayer::listener)).
//!
//! Listeners are called on the thread that made the change, while the
//! request that made it waits: keep them short and never block (count,
//! send on a channel, log). A shed is reported on the rejection path and
//! is called with no lock held and nothing allocated; an event borrows its
//! route name, so a listener that keeps it must copy it. Each change is
//! reported once, after the metrics and the log line of the same change.
//!
//! | event | when | method |
//! |---|---|---|
//! | [`BreakerTransition`] | the breaker changes state: its own verdict, a maintenance window's end, a policy reload that changes its mode, a manual action on the [`PolicyHandle`](crate::PolicyHandle) (even one that leaves the state as it was: a reset clears the counts), or the fleet's verdict ([`Cause::Fleet`]) | [`on_breaker`](Listener::on_breaker) |
//! | [`LimitChanged`] | the adaptive limit moves: at the end of a window of samples when the learner changes it (never per call), after an outage, or on a policy reload | [`on_limit`](Listener::on_limit) |
//! | [`Shed`] | a request is turned away before reaching the back end, whatever the [`Reason`] | [`on_shed`](Listener::on_shed) |
//! | [`MaintenanceStarted`], [`MaintenanceEnded`] | the route sees a maintenance window in force for the first time, and its end | [`on_maintenance_start`](Listener::on_maintenance_start), [`on_maintenance_end`](Listener::on_maintenance_end) |
//!
//! A gate sees time move only when something asks it (a request, a
//! snapshot): a breaker whose open period is over, or a window that has
//! started, is reported when the next request arrives.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use brownout::listen::Event;
//! use brownout::{BrownoutLayer, Mode, Policy, Reason};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let opened = Arc::new(AtomicUsize::new(0));
//! let shed = Arc::new(AtomicUsize::new(0));
//! let (o, s) = (opened.clone(), shed.clone());
//! let layer = BrownoutLayer::from_policy(&Policy::default()).listener(move |event: Event<'_>| {
//!     match event {
//!         Event::Breaker(t) if t.to == brownout::BreakerState::ForcedOpen => {
//!             o.fetch_add(1, Ordering::Relaxed);
//!         }
//!         Event::Shed(shed) if shed.reason == Reason::Open => {
//!             s.fetch_add(1, Ordering::Relaxed);
//!         }
//!         _ => {}
//!     }
//! });
//! let handle = layer.handle();
//! let svc = ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|_: ()| async { Ok::<_, std::io::Error>("slots") });
//!
//! svc.clone().oneshot(()).await.unwrap(); // the route is seen
//! handle.set_route_mode("default", Mode::ForcedOpen);
//! assert!(svc.oneshot(()).await.is_err());
//! assert_eq!(opened.load(Ordering::Relaxed), 1);
//! assert_eq!(shed.load(Ordering::Relaxed), 1);
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::breaker::BreakerState;
use crate::reject::Reason;

/// Called when a route's state changes; every method does nothing unless
/// you say otherwise. See the [module docs](self).
///
/// Implemented for `()` (no listener) and for closures taking an
/// [`Event`].
pub trait Listener: Send + Sync + 'static {
    /// A breaker changed state (or was acted on by hand).
    fn on_breaker(&self, event: &BreakerTransition<'_>) {
        let _ = event;
    }

    /// The adaptive limit moved.
    fn on_limit(&self, event: &LimitChanged<'_>) {
        let _ = event;
    }

    /// A request was turned away. Called on the rejection path: no lock is
    /// held, and brownout allocates nothing for it.
    fn on_shed(&self, event: &Shed<'_>) {
        let _ = event;
    }

    /// The route found a maintenance window in force.
    fn on_maintenance_start(&self, event: &MaintenanceStarted<'_>) {
        let _ = event;
    }

    /// A maintenance window ended: the breaker probes the back end.
    fn on_maintenance_end(&self, event: &MaintenanceEnded<'_>) {
        let _ = event;
    }
}

impl Listener for () {}

impl<F> Listener for F
where
    F: Fn(Event<'_>) + Send + Sync + 'static,
{
    fn on_breaker(&self, event: &BreakerTransition<'_>) {
        self(Event::Breaker(*event));
    }

    fn on_limit(&self, event: &LimitChanged<'_>) {
        self(Event::Limit(*event));
    }

    fn on_shed(&self, event: &Shed<'_>) {
        self(Event::Shed(*event));
    }

    fn on_maintenance_start(&self, event: &MaintenanceStarted<'_>) {
        self(Event::MaintenanceStarted(*event));
    }

    fn on_maintenance_end(&self, event: &MaintenanceEnded<'_>) {
        self(Event::MaintenanceEnded(*event));
    }
}

/// Any event, for a listener that is a closure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event<'a> {
    /// See [`Listener::on_breaker`].
    Breaker(BreakerTransition<'a>),
    /// See [`Listener::on_limit`].
    Limit(LimitChanged<'a>),
    /// See [`Listener::on_shed`].
    Shed(Shed<'a>),
    /// See [`Listener::on_maintenance_start`].
    MaintenanceStarted(MaintenanceStarted<'a>),
    /// See [`Listener::on_maintenance_end`].
    MaintenanceEnded(MaintenanceEnded<'a>),
}

impl Event<'_> {
    /// The route the event is about, as in the metrics' `route` label.
    pub fn route(&self) -> &str {
        match self {
            Event::Breaker(e) => e.route,
            Event::Limit(e) => e.route,
            Event::Shed(e) => e.route,
            Event::MaintenanceStarted(e) => e.route,
            Event::MaintenanceEnded(e) => e.route,
        }
    }
}

/// What made a breaker change state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Cause {
    /// Its own verdict: the window tripped it, an open period ended, the
    /// probes closed or reopened it.
    Verdict,
    /// A maintenance window ended: the breaker probes the back end.
    Maintenance,
    /// A policy reload changed its `mode`.
    Policy,
    /// Someone acted on it by hand: a forced mode, a reset, an open or
    /// half-open by hand (see [`PolicyHandle`](crate::PolicyHandle)).
    Manual,
    /// The fleet's shared verdict (feature `fleet`, a policy with a
    /// `[fleet]` section): another replica's breaker opened it, the
    /// replica holding the probe lease closed it, or this replica took the
    /// lease and probes. Told apart from [`Manual`](Self::Manual) so that
    /// an alert on actions by hand does not fire on every fleet verdict.
    Fleet,
}

impl Cause {
    /// The cause as a word: `verdict`, `maintenance`, `policy`, `manual`,
    /// `fleet`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Cause::Verdict => "verdict",
            Cause::Maintenance => "maintenance",
            Cause::Policy => "policy",
            Cause::Manual => "manual",
            Cause::Fleet => "fleet",
        }
    }
}

/// A breaker's change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct BreakerTransition<'a> {
    /// The route (or key) of the breaker.
    pub route: &'a str,
    /// The state before.
    pub from: BreakerState,
    /// The state after.
    pub to: BreakerState,
    /// What made it change.
    pub cause: Cause,
    /// When `to` is [`Open`](BreakerState::Open): how long it stays open.
    pub open_for: Option<Duration>,
    /// When `to` is [`Open`](BreakerState::Open): when it lets its next
    /// probe through, in wall-clock time as the layer's
    /// [clock](crate::clock::Clock) sees it.
    pub next_probe_at: Option<SystemTime>,
}

/// A change of a route's adaptive limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LimitChanged<'a> {
    /// The route.
    pub route: &'a str,
    /// The limit before, as last reported.
    pub from: u32,
    /// The limit now.
    pub to: u32,
}

/// A request turned away before it reached the back end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Shed<'a> {
    /// The route.
    pub route: &'a str,
    /// Why: the same as the caller's [`Rejected::reason`](crate::Rejected::reason).
    pub reason: Reason,
    /// The request's priority class, by name.
    pub priority: &'a str,
}

/// A maintenance window in force, first seen by a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MaintenanceStarted<'a> {
    /// The route.
    pub route: &'a str,
    /// When the window ends, in wall-clock time.
    pub until: SystemTime,
    /// The window's message for the people affected, if it has one.
    pub message: Option<&'a str>,
}

/// The end of a maintenance window, seen by a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MaintenanceEnded<'a> {
    /// The route.
    pub route: &'a str,
}

/// A listener shared by the gates of a layer.
#[derive(Clone)]
pub(crate) struct SharedListener(pub(crate) Arc<dyn Listener>);

impl SharedListener {
    pub(crate) fn new(listener: impl Listener) -> Self {
        Self(Arc::new(listener))
    }
}

impl fmt::Debug for SharedListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Listener")
    }
}

/// A gate's listener and what it needs to report each change once.
#[derive(Debug, Default)]
pub(crate) struct Hooks {
    pub(crate) listener: Option<SharedListener>,
    /// The limit last reported (the `from` of the next change).
    limit: AtomicU32,
    /// The end of the last maintenance window reported as started.
    maintenance_until: AtomicU64,
}

impl Hooks {
    pub(crate) fn new(listener: Option<SharedListener>, limit: u32) -> Self {
        Self {
            listener,
            limit: AtomicU32::new(limit),
            maintenance_until: AtomicU64::new(0),
        }
    }

    /// The listener, if one is set.
    #[inline]
    pub(crate) fn get(&self) -> Option<&dyn Listener> {
        self.listener.as_ref().map(|l| &*l.0)
    }

    /// Notes the limit now in force; returns the one it replaces, or
    /// `None` if it is the same.
    pub(crate) fn limit_moved(&self, limit: u32) -> Option<u32> {
        let before = self.limit.swap(limit, Ordering::Relaxed);
        (before != limit).then_some(before)
    }

    /// Notes a window ending at `until` as in force; `true` the first time.
    #[inline]
    pub(crate) fn maintenance_seen(&self, until: u64) -> bool {
        self.maintenance_until.load(Ordering::Relaxed) != until
            && self.maintenance_until.swap(until, Ordering::Relaxed) != until
    }
}
