//! The fleet breaker inside the composed stack: a
//! [`BrownoutLayer`](crate::BrownoutLayer) built from a policy with a
//! `[fleet]` section shares every route's breaker verdicts through Redis,
//! with the keys of [`FleetBreakerLayer`](super::FleetBreakerLayer) (see
//! [`protocol`](super::protocol)).
//!
//! Nothing here is on the request path. Each route's breaker tells its
//! transitions to a [`FleetListener`] (two atomics written, nothing
//! allocated, no lock), and one background task per stack, every tick,
//! publishes them, reads every route's verdicts in one round trip, and acts
//! on the local breakers through the same controls an operator uses
//! (`open_until`, `half_open_now`, `reset`), reported with
//! [`Cause::Fleet`]:
//!
//! - a verdict in force (any replica's, or a quorum's) holds the breaker
//!   open until one `open_for` past its end: the replicas must not each
//!   go half-open when it ends;
//! - when it ends, the replica that takes the probe lease goes half-open
//!   and probes; the others stay open (held again while the lease runs);
//! - a probe that fails publishes a new verdict (the breaker's own
//!   reopening); one that succeeds closes the route for the fleet, and the
//!   others reset when they read it;
//! - Redis down: the holds are let go (to the verdict's end, half-open at
//!   once if it has passed) and each breaker decides alone; the task tries
//!   Redis every tick and shares again when it answers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, UNIX_EPOCH};

use redis::Client;
use redis::aio::MultiplexedConnection;

use super::Share;
use super::protocol::{self, Keys, Link, Read, px, wall_ms};
use crate::breaker::{BreakerState, Until};
use crate::clock::Clock;
use crate::core::breaker::Manual;
use crate::core::gate::Gate;
use crate::listen::{
    BreakerTransition, Cause, LimitChanged, Listener, MaintenanceEnded, MaintenanceStarted,
    SharedListener, Shed,
};
use crate::policy::{Mode, Policy, PolicyError};
use crate::reject::Reason;

/// Why a stack cannot share its breakers as its `[fleet]` says.
#[derive(Debug)]
pub(crate) enum StartError {
    /// The section does not validate, or its URL cannot be used (the
    /// error names `fleet.url`).
    Policy(PolicyError),
    /// Built outside a tokio runtime: the background task needs one.
    NoRuntime,
}

/// The fleet of one stack: its settings, and the routes whose breakers it
/// shares, registered as the stack first sees them.
pub(crate) struct StackFleet {
    client: Client,
    runtime: tokio::runtime::Handle,
    share: Share,
    shared_timeout: Duration,
    /// This replica in the verdicts' set and the lease.
    id: String,
    /// What the fleet's keys start with (`fleet.key_prefix`).
    key_prefix: String,
    clock: Clock,
    /// How often the task reads Redis: a tenth of the shortest `open_for`
    /// of the policy's routes, 5 to 100 ms.
    tick: Duration,
    routes: Mutex<Vec<Arc<RouteCell>>>,
}

impl std::fmt::Debug for StackFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackFleet")
            .field("share", &self.share)
            .field("tick", &self.tick)
            .finish_non_exhaustive()
    }
}

/// What the task needs of the stack it serves.
pub(crate) trait Routes: Send + Sync + 'static {
    /// The gate of `route`, once it is in the stack's map.
    fn gate(&self, route: &str) -> Option<Arc<Gate>>;
    /// The `open_for` of `route` in the policy in force (a reload may
    /// change it): the lease's length, and how far past a verdict's end
    /// the others are held. Read when the fleet starts holding the route
    /// and when this replica publishes a close: never per tick.
    fn open_for(&self, route: &str) -> Duration;
}

/// One route's line between its breaker and the task.
struct RouteCell {
    route: Arc<str>,
    keys: Keys,
    /// The breaker opened by its own verdict until this time (wall ms),
    /// to publish; 0: nothing to publish.
    publish_open: AtomicU64,
    /// The breaker closed after probing at this time (wall ms), to
    /// publish; 0: nothing to publish.
    publish_closed: AtomicU64,
    /// The open breaker turned a caller away since the task last took or
    /// passed on the lease: this replica has callers to probe with. A
    /// replica without takes no lease (its probes would never come).
    wanted: AtomicBool,
}

/// A route's breaker listener when the stack shares breakers: notes the
/// breaker's own verdicts for the task, and passes every event on to the
/// application's listener, if it set one.
struct FleetListener {
    cell: Arc<RouteCell>,
    /// The stack's clock: when a close happened, in wall-clock time.
    clock: Clock,
    user: Option<SharedListener>,
}

impl FleetListener {
    /// The application's listener, if it set one: every event goes on to it.
    fn user(&self) -> Option<&dyn Listener> {
        self.user.as_ref().map(|user| &*user.0)
    }
}

impl Listener for FleetListener {
    fn on_breaker(&self, event: &BreakerTransition<'_>) {
        // Only the breaker's own verdicts are the fleet's news: the
        // fleet's own actions, an operator's, a policy's or a maintenance
        // window's stay on this replica.
        if event.cause == Cause::Verdict {
            match (event.from, event.to) {
                (_, BreakerState::Open) => {
                    if let Some(at) = event.next_probe_at {
                        self.cell
                            .publish_open
                            .fetch_max(wall_ms(at), Ordering::AcqRel);
                    }
                }
                (BreakerState::HalfOpen, BreakerState::Closed) => {
                    let now = wall_ms(self.clock.system_time()).max(1);
                    self.cell.publish_closed.store(now, Ordering::Release);
                }
                _ => {}
            }
        }
        if let Some(user) = self.user() {
            user.on_breaker(event);
        }
    }

    fn on_limit(&self, event: &LimitChanged<'_>) {
        if let Some(user) = self.user() {
            user.on_limit(event);
        }
    }

    fn on_shed(&self, event: &Shed<'_>) {
        // On the rejection path: a load, and a store only when it changes.
        if event.reason == Reason::Open && !self.cell.wanted.load(Ordering::Relaxed) {
            self.cell.wanted.store(true, Ordering::Relaxed);
        }
        if let Some(user) = self.user() {
            user.on_shed(event);
        }
    }

    fn on_maintenance_start(&self, event: &MaintenanceStarted<'_>) {
        if let Some(user) = self.user() {
            user.on_maintenance_start(event);
        }
    }

    fn on_maintenance_end(&self, event: &MaintenanceEnded<'_>) {
        if let Some(user) = self.user() {
            user.on_maintenance_end(event);
        }
    }
}

/// A route the task serves, with its gate.
struct Route {
    cell: Arc<RouteCell>,
    gate: Arc<Gate>,
}

/// The task's memory of one route.
#[derive(Debug, Default)]
struct RouteState {
    /// The close counter last read; `None` before the first read.
    closes: Option<u64>,
    /// The fleet holds or probes this route; `None`: the breaker decides.
    episode: Option<Episode>,
}

#[derive(Debug, Clone, Copy)]
struct Episode {
    /// The end of the last verdict in force (wall ms).
    verdict_end: u64,
    /// This replica holds the probe lease until then (wall ms); 0: not.
    lease_until: u64,
    /// The route's `open_for` in the policy in force when the episode
    /// began (read once, not at every tick of a long outage).
    open_for: Duration,
}

impl StackFleet {
    /// The fleet of a stack built from `policy`; `Ok(None)` without a
    /// `[fleet]` section. Redis is not contacted here.
    pub(crate) fn new(policy: &Policy, clock: Clock) -> Result<Option<Arc<Self>>, StartError> {
        let Some(fleet) = &policy.fleet else {
            return Ok(None);
        };
        fleet.validate().map_err(StartError::Policy)?;
        let client = Client::open(fleet.url.as_str()).map_err(|err| {
            StartError::Policy(PolicyError::invalid(
                "fleet.url",
                format!("{:?}", fleet.url),
                format!("cannot be used: {err}"),
            ))
        })?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        let shortest = policy
            .routes
            .keys()
            .map(|route| policy.route(route).breaker.open_for)
            .fold(policy.breaker.open_for, Duration::min);
        Ok(Some(Arc::new(Self {
            client,
            runtime,
            share: Share::from(fleet),
            shared_timeout: fleet.shared_timeout,
            id: crate::budget::replica_id(),
            key_prefix: fleet.key_prefix.clone(),
            clock,
            tick: protocol::tick(shortest),
            routes: Mutex::new(Vec::new()),
        })))
    }

    /// Shares the breaker of `route`, first seen now: the listener its
    /// gate is built with, which passes every event on to `user`. Called
    /// once per route, when its gate is built: never on the request path
    /// of a route already seen.
    pub(crate) fn listener_for(
        &self,
        route: &Arc<str>,
        user: Option<SharedListener>,
    ) -> SharedListener {
        let cell = Arc::new(RouteCell {
            route: route.clone(),
            keys: Keys::of(&self.key_prefix, route),
            publish_open: AtomicU64::new(0),
            publish_closed: AtomicU64::new(0),
            wanted: AtomicBool::new(false),
        });
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(cell.clone());
        SharedListener::new(FleetListener {
            cell,
            clock: self.clock.clone(),
            user,
        })
    }

    /// Starts the task for `stack`; it ends once the stack is gone.
    pub(crate) fn start<R: Routes>(self: &Arc<Self>, stack: Weak<R>) {
        let fleet = self.clone();
        let link = Link::new(
            self.client.clone(),
            self.shared_timeout,
            "the stack's routes".to_owned(),
        );
        self.runtime.spawn(fleet.run(link, stack));
    }

    async fn run<R: Routes>(self: Arc<Self>, mut link: Link, stack: Weak<R>) {
        let mut interval = tokio::time::interval(self.tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut states: Vec<RouteState> = Vec::new();
        loop {
            interval.tick().await;
            let Some(stack) = stack.upgrade() else {
                return;
            };
            let cells: Vec<Arc<RouteCell>> = self
                .routes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let mut routes = Vec::with_capacity(cells.len());
            for cell in cells {
                // A route registered while its gate is being built waits
                // for the next tick, and so do the ones after it (the
                // states are kept in registration order).
                let Some(gate) = stack.gate(&cell.route) else {
                    break;
                };
                routes.push(Route { cell, gate });
            }
            if routes.is_empty() {
                continue;
            }
            states.resize_with(states.len().max(routes.len()), RouteState::default);
            let round = match link.conn().await {
                Ok(conn) => self.round(&link, conn, &*stack, &routes, &mut states).await,
                Err(why) => Err(why),
            };
            match round {
                Ok(()) => link.answered(),
                Err(why) => {
                    link.failed(&why);
                    release(&routes, &mut states);
                }
            }
        }
    }

    /// One tick: publish, read, act.
    async fn round(
        &self,
        link: &Link,
        mut conn: MultiplexedConnection,
        stack: &impl Routes,
        routes: &[Route],
        states: &mut [RouteState],
    ) -> Result<(), String> {
        let now_ms = wall_ms(self.clock.system_time());
        for (Route { cell, gate }, state) in routes.iter().zip(states.iter_mut()) {
            let closed_ms = cell.publish_closed.swap(0, Ordering::AcqRel);
            let open_until = cell.publish_open.swap(0, Ordering::AcqRel);
            // A breaker that does not enforce (shadow, forced) has no
            // verdict for the others.
            if gate.mode() != Mode::Enforce {
                continue;
            }
            if closed_ms > 0 {
                let open_for = stack.open_for(&cell.route);
                let closes = link
                    .within(protocol::publish_closed(
                        &mut conn, &cell.keys, closed_ms, open_for,
                    ))
                    .await?;
                state.closes = Some(closes);
                state.episode = None;
            }
            if open_until > now_ms {
                link.within(protocol::publish_open(
                    &mut conn, &cell.keys, &self.id, open_until, now_ms,
                ))
                .await?;
            }
        }
        let mut pipe = redis::pipe();
        for route in routes {
            protocol::read_into(&mut pipe, &route.cell.keys, now_ms);
        }
        let replies: Vec<redis::Value> = link.within(pipe.query_async(&mut conn)).await?;
        if replies.len() != 2 * routes.len() {
            return Err(format!(
                "{} replies to the read of {} routes",
                replies.len(),
                routes.len()
            ));
        }
        for ((route, state), replies) in routes
            .iter()
            .zip(states.iter_mut())
            .zip(replies.chunks_exact(2))
        {
            let read = Read {
                held: redis::from_redis_value(&replies[0]).map_err(|e| e.to_string())?,
                closes: redis::from_redis_value::<Option<u64>>(&replies[1])
                    .map_err(|e| e.to_string())?
                    .unwrap_or(0),
            };
            let open_for = || stack.open_for(&route.cell.route);
            self.follow(link, &mut conn, route, open_for, state, &read, now_ms)
                .await?;
        }
        Ok(())
    }

    /// Acts on one route's breaker as the fleet's `read` says.
    #[allow(clippy::too_many_arguments)]
    async fn follow(
        &self,
        link: &Link,
        conn: &mut MultiplexedConnection,
        Route { cell, gate }: &Route,
        open_for: impl FnOnce() -> Duration,
        state: &mut RouteState,
        read: &Read,
        now_ms: u64,
    ) -> Result<(), String> {
        if gate.mode() != Mode::Enforce {
            // Forced or in shadow by the policy or an operator: left alone.
            state.episode = None;
            return Ok(());
        }
        let end = read.verdict_end(self.share);
        let closed_since = state.closes.is_some_and(|seen| seen != read.closes);
        state.closes = Some(read.closes);
        let tick_ms = px(self.tick);
        match end {
            None if closed_since => {
                // Another replica's probe closed the route for the fleet.
                if state.episode.take().is_some()
                    && matches!(gate.state(), BreakerState::Open | BreakerState::HalfOpen)
                {
                    gate.follow_fleet(|_| Manual::Reset);
                }
            }
            Some(end) => {
                // A verdict in force: open until one lease past its end,
                // so that only the lease's holder probes when it ends.
                let open_for = state.episode.map_or_else(open_for, |e| e.open_for);
                state.episode = Some(Episode {
                    verdict_end: end,
                    lease_until: 0,
                    open_for,
                });
                let hold = end.saturating_add(px(open_for));
                let held_until = open_until_ms(gate);
                if held_until.is_none_or(|until| until.saturating_add(tick_ms) < hold) {
                    open_until(gate, hold);
                }
            }
            None => {
                let Some(episode) = state.episode.as_mut() else {
                    return Ok(());
                };
                if episode.lease_until > now_ms {
                    return Ok(()); // this replica probes
                }
                let open_for = episode.open_for;
                let open_for_ms = px(open_for);
                // Callers turned away, or waiting in the room for the
                // breaker: only then is this replica worth the lease.
                let wanted = cell.wanted.swap(false, Ordering::Relaxed) || gate.waiting() > 0;
                if wanted
                    && link
                        .within(protocol::take_lease(conn, &cell.keys, &self.id, open_for))
                        .await?
                {
                    episode.lease_until = now_ms.saturating_add(open_for_ms);
                    if gate.state() == BreakerState::Open {
                        gate.follow_fleet(|_| Manual::HalfOpenNow);
                    }
                } else {
                    // Another replica probes (or none has callers yet):
                    // stay open while it does.
                    episode.lease_until = 0;
                    let ends_soon = open_until_ms(gate)
                        .is_none_or(|until| until < now_ms.saturating_add(2 * tick_ms));
                    let state = gate.state();
                    if state == BreakerState::HalfOpen || (state == BreakerState::Open && ends_soon)
                    {
                        open_until(gate, now_ms.saturating_add(open_for_ms));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Redis does not answer: every breaker the fleet holds open past its
/// verdict is let go at the verdict's end (half-open at once if it has
/// passed), so that each replica decides alone. A close not yet published
/// is dropped: by the time Redis answers, other replicas may hold newer
/// verdicts it would delete. An open verdict is kept: published when Redis
/// answers if it is still in force, it is still true.
fn release(routes: &[Route], states: &mut [RouteState]) {
    for (Route { cell, gate }, state) in routes.iter().zip(states.iter_mut()) {
        cell.publish_closed.store(0, Ordering::Release);
        let Some(episode) = state.episode.take() else {
            continue;
        };
        if gate.mode() == Mode::Enforce && gate.state() == BreakerState::Open {
            open_until(gate, episode.verdict_end);
        }
    }
}

/// Until when (wall ms) the breaker is open, if it is.
fn open_until_ms(gate: &Gate) -> Option<u64> {
    gate.next_probe().map(|(at, _)| wall_ms(at))
}

/// Opens the breaker until `until_ms` (wall ms) for the fleet.
fn open_until(gate: &Gate, until_ms: u64) {
    let until = Until::At(UNIX_EPOCH + Duration::from_millis(until_ms));
    gate.follow_fleet(|clock| Manual::OpenUntil(until.on(clock)));
}
