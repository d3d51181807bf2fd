//! Breaker verdicts shared by a fleet of replicas through Redis (feature
//! `fleet`).
//!
//! Each replica's own breaker learns alone: with 8 replicas in front of a
//! dead back end, each burns its own failures before it opens and each
//! sends its own half-open probes. Sharing what they learn takes one of
//! two forms, with the same Redis keys (a replica of either kind follows
//! the other on the same route):
//!
//! - **In the composed stack** (the usual way): a policy with a `[fleet]`
//!   section, built with [`BrownoutLayer::from_policy`](crate::BrownoutLayer::from_policy)
//!   (inside a tokio runtime), shares the breaker of every route the stack
//!   gives a gate of its own, routes first seen at run time included (up
//!   to its `max_routes`; the shared `overflow` gate is not shared: the
//!   routes it stands for differ from one replica to the next).
//! - **Outside any stack**: a [`FleetBreakerLayer`] per route, in front of
//!   a stack whose rejections are errors.
//!
//! ```
//! # #[cfg(feature = "toml")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), brownout::stack::BuildError> {
//! use brownout::{BrownoutLayer, Policy};
//!
//! let policy = Policy::from_toml(r#"
//!     [fleet]
//!     url = "redis://127.0.0.1:6379"
//!     share = "follow"
//!     shared_timeout = "5ms"
//! "#).unwrap();
//! // Inside the runtime: the stack's background task starts here, and
//! // Redis is first contacted by it, never by a request.
//! let layer = BrownoutLayer::try_from_policy(&policy)?;
//! # let _ = layer;
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "toml"))]
//! # fn main() {}
//! ```
//!
//! What the replicas share, either way:
//!
//! - **Open.** A replica whose breaker opens by its own verdict publishes
//!   "open until" (its next probe) for its route. Every replica reads the
//!   route's verdicts every tick (a tenth of `open_for`, 5 to 100 ms) and,
//!   with [`Share::Follow`], opens on any replica's verdict; with
//!   [`Share::Quorum`]`(n)`, once `n` replicas hold one. An open fleet
//!   answers [`Reason::Open`] at once, with the retry hint of the verdict.
//! - **Probes.** When the verdict runs out, one replica takes the route's
//!   probe lease (`SET NX PX open_for`) and lets `half_open_probes`
//!   requests through; the others keep answering `Open`. A probe that
//!   fails publishes a new verdict (`open_for` from now); one that succeeds
//!   closes the route for the fleet. So a fleet sends `half_open_probes`
//!   probes per open period, not one set per replica.
//! - **Redis down.** Every Redis call has `shared_timeout`; on error the
//!   replica forgets the fleet's verdict and its own breaker decides alone,
//!   logs once, counts `brownout_shared_state_errors_total{state="breaker"}`
//!   and tries Redis again at the next tick.
//!
//! In the stack, the fleet acts on each route's breaker through the
//! controls an operator has ([`PolicyHandle::open_until`](crate::PolicyHandle::open_until),
//! `half_open_now`, `reset`), reported to listeners, logs and metrics as
//! transitions with [`Cause::Fleet`](crate::listen::Cause::Fleet):
//!
//! - a verdict in force opens the breaker until one `open_for` past the
//!   verdict's end, so that the replicas do not each go half-open when it
//!   ends; the replica that takes the lease goes half-open then, and only
//!   one that has turned callers away (or has them waiting) takes it;
//! - a probe's failure is the breaker's own reopening, published as a new
//!   verdict; its success closes the route for the fleet (the verdicts
//!   published before it deleted, a close counter moved), and the others
//!   reset when they read it;
//! - only the breaker's own verdicts are published: the fleet's actions,
//!   an operator's, a reload's and a maintenance window's stay on the
//!   replica; a breaker that does not enforce (`shadow`, a forced mode)
//!   neither publishes nor follows;
//! - with Redis down, a breaker the fleet holds open is let go at the
//!   verdict's end (half-open at once if it has passed); a verdict reached
//!   meanwhile is published when Redis answers if it is still in force.
//!
//! The admitted path is the stack's own: no lock, no allocation, no round
//! trip. A breaker transition writes an atomic for the task; a rejection by
//! an open breaker reads one (and writes it once per lease). Everything
//! Redis happens in one background task per stack (per
//! [`FleetBreakerLayer`]), spawned where it is built: so build inside a
//! tokio runtime. Outside one,
//! [`try_from_policy`](crate::BrownoutLayer::try_from_policy) says so
//! (`fleet: …`), and [`from_policy`](crate::BrownoutLayer::from_policy)
//! logs it and builds a stack whose breakers decide alone: a fleet that
//! cannot be joined is no reason to refuse traffic. Replicas compare
//! verdicts in wall-clock time: keep their clocks in NTP.
//!
//! Place a [`FleetBreakerLayer`] outside a stack whose rejections are
//! errors (`BrownoutLayer::from_policy`, before any fallback answers
//! them): it recognises its breaker's verdict by the [`Rejected`] error
//! (a rejection with [`Reason::Open`] after a request served), and a
//! probe's failure by an error. Its admitted path reads two atomics.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, UNIX_EPOCH};

use pin_project_lite::pin_project;
use redis::Client;
use redis::aio::MultiplexedConnection;
use tower::{BoxError, Layer, Service};

use crate::clock::{Clock, Nanos, saturating_nanos};
use crate::policy::{BreakerPolicy, FleetPolicy, FleetShare, Policy};
use crate::reject::{Reason, Rejected};

use self::protocol::{Keys, Link, Read};

mod protocol;
pub(crate) mod stack;

/// When a replica follows the fleet's verdicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Share {
    /// Open on any replica's verdict.
    Follow,
    /// Open once this many replicas hold a verdict.
    Quorum(u32),
}

/// A fleet breaker that cannot be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FleetError {
    /// The Redis URL cannot be used.
    #[error("fleet url {url:?} cannot be used: {why}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
    /// Built outside a tokio runtime: the layer's background task needs one.
    #[error("a FleetBreakerLayer must be built inside a tokio runtime")]
    NoRuntime,
    /// The policy's `[fleet]` section does not validate (it names the
    /// field and its value).
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
}

impl From<&FleetPolicy> for Share {
    /// The section's `share` and `quorum`.
    fn from(fleet: &FleetPolicy) -> Self {
        match fleet.effective_share() {
            (FleetShare::Quorum, n) => Share::Quorum(n),
            _ => Share::Follow,
        }
    }
}

/// Shares one route's breaker verdicts with the fleet; see the
/// [module docs](self).
#[derive(Clone)]
pub struct FleetBreakerLayer {
    state: Arc<State>,
}

impl fmt::Debug for FleetBreakerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetBreakerLayer")
            .field("key", &self.state.key)
            .finish_non_exhaustive()
    }
}

struct State {
    clock: Clock,
    key: String,
    keys: Keys,
    id: String,
    share: Share,
    open_for: Duration,
    probes: u32,
    /// The fleet's verdict: open until this clock reading; 0 = closed.
    open_until: AtomicU64,
    /// This replica holds the probe lease until this reading.
    lease_until: AtomicU64,
    /// The fleet's close counter as last read; `u64::MAX` before the
    /// first read.
    closes_seen: AtomicU64,
    probes_left: AtomicU32,
    /// The stack behind answered `Open` to the last request.
    locally_open: AtomicBool,
    /// A verdict to publish (wall-clock ms), 0 = none.
    publish_open: AtomicU64,
    /// A successful probe at this wall-clock ms: close the route for the
    /// fleet; 0 = none.
    publish_closed: AtomicU64,
}

impl FleetBreakerLayer {
    /// Shares the verdicts of route `route` through Redis at `url`, with
    /// `breaker`'s `open_for` and `half_open_probes`. Each Redis call
    /// waits at most `shared_timeout`. A bad URL is an error here; a
    /// Redis that does not answer is a logged fallback at run time.
    ///
    /// Its keys start with `brownout:fleet` (the `[fleet]` section's
    /// default `key_prefix`; [`from_policy`](Self::from_policy) reads the
    /// section's).
    pub fn new(
        url: &str,
        route: &str,
        breaker: &BreakerPolicy,
        share: Share,
        shared_timeout: Duration,
    ) -> Result<Self, FleetError> {
        let prefix = FleetPolicy::default().key_prefix;
        Self::start(url, &prefix, route, breaker, share, shared_timeout)
    }

    fn start(
        url: &str,
        prefix: &str,
        route: &str,
        breaker: &BreakerPolicy,
        share: Share,
        shared_timeout: Duration,
    ) -> Result<Self, FleetError> {
        let client = Client::open(url).map_err(|err| FleetError::Url {
            url: url.to_owned(),
            why: err.to_string(),
        })?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| FleetError::NoRuntime)?;
        let key = format!("{prefix}:{route}");
        let state = Arc::new(State {
            clock: Clock::detect(),
            keys: Keys::of(prefix, route),
            id: crate::budget::replica_id(),
            share,
            open_for: breaker.open_for,
            probes: breaker.half_open_probes.max(1),
            open_until: AtomicU64::new(0),
            lease_until: AtomicU64::new(0),
            closes_seen: AtomicU64::new(u64::MAX),
            probes_left: AtomicU32::new(0),
            locally_open: AtomicBool::new(false),
            publish_open: AtomicU64::new(0),
            publish_closed: AtomicU64::new(0),
            key,
        });
        let mut link = Link::new(client, shared_timeout, state.key.clone());
        let tick = protocol::tick(breaker.open_for);
        let task = Arc::downgrade(&state);
        runtime.spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(state) = task.upgrade() else { return };
                let result = match link.conn().await {
                    Ok(mut conn) => link.within(state.sync(&mut conn)).await,
                    Err(why) => Err(why),
                };
                match result {
                    Ok(()) => link.answered(),
                    Err(why) => {
                        link.failed(&why);
                        // Local state in charge: forget the fleet's verdict.
                        state.open_until.store(0, Ordering::Release);
                        state.lease_until.store(0, Ordering::Release);
                    }
                }
            }
        });
        Ok(Self { state })
    }

    /// The fleet breaker of `route` as `policy` says: its `[fleet]` section
    /// (`url`, `share`/`quorum`, `shared_timeout`) and the route's breaker
    /// (`open_for`, `half_open_probes`, with the route's overrides);
    /// `Ok(None)` without a `[fleet]` section. A section that does not
    /// validate is an error naming the field.
    ///
    /// ```
    /// # #[cfg(feature = "toml")] {
    /// use brownout::fleet::FleetBreakerLayer;
    /// use brownout::Policy;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let policy = Policy::from_toml("[fleet]\nurl = \"redis://127.0.0.1:1\"\nquorum = 2\n").unwrap();
    /// // Redis is not contacted here: a replica that cannot reach it decides alone.
    /// let layer = FleetBreakerLayer::from_policy(&policy, "/slots").unwrap();
    /// assert!(layer.is_some());
    /// assert!(FleetBreakerLayer::from_policy(&brownout::Policy::default(), "/slots").unwrap().is_none());
    /// # }
    /// # }
    /// ```
    pub fn from_policy(policy: &Policy, route: &str) -> Result<Option<Self>, FleetError> {
        let Some(fleet) = &policy.fleet else {
            return Ok(None);
        };
        fleet.validate()?;
        Self::start(
            &fleet.url,
            &fleet.key_prefix,
            route,
            &policy.route(route).breaker,
            Share::from(fleet),
            fleet.shared_timeout,
        )
        .map(Some)
    }

    /// How this layer follows the fleet's verdicts.
    pub fn share(&self) -> Share {
        self.state.share
    }

    /// Whether the fleet holds this route open now.
    pub fn is_open(&self) -> bool {
        let until = self.state.open_until.load(Ordering::Acquire);
        until != 0
    }
}

impl State {
    fn wall_ms(&self, at: Nanos) -> u64 {
        protocol::wall_ms(self.clock.wall_at(at))
    }

    fn at_ms(&self, ms: u64) -> Nanos {
        self.clock
            .at_wall(UNIX_EPOCH + Duration::from_millis(ms))
            .max(1)
    }

    /// One tick: publish what this replica learned, read the fleet's
    /// verdicts, take the probe lease when the verdict ran out.
    async fn sync(&self, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        let keys = &self.keys;
        let now = self.clock.now();
        let now_ms = self.wall_ms(now);
        let closed_ms = self.publish_closed.swap(0, Ordering::AcqRel);
        if closed_ms > 0 {
            let closes = protocol::publish_closed(conn, keys, closed_ms, self.open_for).await?;
            self.closes_seen.store(closes, Ordering::Release);
        }
        let until_ms = self.publish_open.swap(0, Ordering::AcqRel);
        if until_ms > 0 {
            protocol::publish_open(conn, keys, &self.id, until_ms, now_ms).await?;
        }
        let read = Read::one(conn, keys, now_ms).await?;
        let seen = self.closes_seen.swap(read.closes, Ordering::AcqRel);
        if let Some(end) = read.verdict_end(self.share) {
            self.open_until.store(self.at_ms(end), Ordering::Release);
            return Ok(());
        }
        let open_until = self.open_until.load(Ordering::Acquire);
        if open_until == 0 {
            return Ok(());
        }
        if seen != u64::MAX && seen != read.closes {
            // Another replica's probe closed the route for the fleet.
            self.open_until.store(0, Ordering::Release);
            self.lease_until.store(0, Ordering::Release);
            return Ok(());
        }
        if !read.held.is_empty() {
            // Verdicts, but fewer than the quorum: each breaker decides.
            self.open_until.store(0, Ordering::Release);
            return Ok(());
        }
        // The verdict ran out: half-open for the fleet.
        let probing = self.lease_until.load(Ordering::Acquire) > now;
        if !probing {
            if protocol::take_lease(conn, keys, &self.id, self.open_for).await? {
                self.probes_left.store(self.probes, Ordering::Release);
                self.lease_until.store(
                    now.saturating_add(saturating_nanos(self.open_for)),
                    Ordering::Release,
                );
            } else {
                // Someone probes; closed once the lease is gone and
                // no verdict came back.
                let held = protocol::lease_held(conn, keys).await?;
                let waited = now.saturating_sub(open_until) > saturating_nanos(self.open_for);
                if !held && waited {
                    self.open_until.store(0, Ordering::Release);
                }
            }
        }
        Ok(())
    }

    /// What the layer does with an arriving request.
    #[inline]
    fn admit(&self) -> Admit {
        let open_until = self.open_until.load(Ordering::Acquire);
        if open_until == 0 {
            return Admit::Pass;
        }
        let now = self.clock.now();
        if now < open_until {
            return Admit::Reject(Duration::from_nanos(open_until - now));
        }
        if self.lease_until.load(Ordering::Acquire) > now
            && self
                .probes_left
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
        {
            return Admit::Probe;
        }
        Admit::Reject(self.open_for)
    }

    /// What the stack behind answered.
    fn settle(&self, probe: bool, failed: bool, open: Option<Option<Duration>>) {
        let now = self.clock.now();
        match open {
            Some(hint) => {
                if !self.locally_open.swap(true, Ordering::AcqRel) || probe {
                    let until = now.saturating_add(saturating_nanos(hint.unwrap_or(self.open_for)));
                    self.publish(until);
                }
            }
            None => {
                self.locally_open.store(false, Ordering::Release);
                if probe {
                    if failed {
                        self.publish(now.saturating_add(saturating_nanos(self.open_for)));
                    } else {
                        self.open_until.store(0, Ordering::Release);
                        self.lease_until.store(0, Ordering::Release);
                        self.publish_closed
                            .store(self.wall_ms(now).max(1), Ordering::Release);
                    }
                }
            }
        }
    }

    fn publish(&self, until: Nanos) {
        self.lease_until.store(0, Ordering::Release);
        if self.share == Share::Follow {
            self.open_until.fetch_max(until, Ordering::AcqRel);
        }
        self.publish_open
            .fetch_max(self.wall_ms(until), Ordering::AcqRel);
    }
}

enum Admit {
    Pass,
    Probe,
    Reject(Duration),
}

impl<S> Layer<S> for FleetBreakerLayer {
    type Service = FleetBreaker<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FleetBreaker {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The service of a [`FleetBreakerLayer`].
#[derive(Clone)]
pub struct FleetBreaker<S> {
    inner: S,
    state: Arc<State>,
}

impl<S> FleetBreaker<S> {
    /// The service behind.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for FleetBreaker<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetBreaker")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, Req> Service<Req> for FleetBreaker<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = FleetFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.state.admit() {
            Admit::Reject(after) => FleetFuture {
                inner: None,
                rejected: Some(after),
                probe: false,
                state: None,
            },
            admit => FleetFuture {
                inner: Some(self.inner.call(req)),
                rejected: None,
                probe: matches!(admit, Admit::Probe),
                state: Some(self.state.clone()),
            },
        }
    }
}

pin_project! {
    /// The response future of a [`FleetBreaker`].
    pub struct FleetFuture<F> {
        #[pin]
        inner: Option<F>,
        rejected: Option<Duration>,
        probe: bool,
        state: Option<Arc<State>>,
    }

    impl<F> PinnedDrop for FleetFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // A probe dropped unanswered gives its slot back.
            if *this.probe {
                if let Some(state) = this.state.take() {
                    state.probes_left.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
    }
}

impl<F> fmt::Debug for FleetFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetFuture").finish_non_exhaustive()
    }
}

impl<F, T, E> Future for FleetFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(after) = *this.rejected {
            return Poll::Ready(Err(Rejected::new(Reason::Open)
                .with_retry_after(after)
                .into()));
        }
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(Rejected::new(Reason::Open).into()));
        };
        let result = ready!(inner.poll(cx)).map_err(Into::into);
        let probe = std::mem::take(this.probe);
        if let Some(state) = this.state.take() {
            let open = match &result {
                Err(err) => err
                    .downcast_ref::<Rejected>()
                    .filter(|r| r.reason() == Reason::Open)
                    .map(Rejected::retry_after),
                Ok(_) => None,
            };
            let failed = result.is_err();
            state.settle(probe, failed, open);
        }
        Poll::Ready(result)
    }
}
