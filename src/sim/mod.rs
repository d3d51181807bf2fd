//! A simulated back end for tests, benches and outage drills: a
//! [`tower::Service`] with a true capacity, a queue, seeded service times and
//! outages you switch on and off — all on tokio's clock, so it runs in
//! paused, virtual time.
//!
//! # The model
//!
//! A [`SimBackend`] serves at most *C* calls at once (its capacity). Calls
//! beyond *C* wait inside the back end, in FIFO order, and their latency is
//! their queueing delay plus their service time: an overloaded back end
//! does not refuse work, it gets slower — which is what a load shedder has to
//! notice. [`poll_ready`](tower::Service::poll_ready) is always ready.
//!
//! - **Service time.** Each call draws a base service time from a
//!   [`ServiceTime`] distribution (constant, exponential, log-normal, gamma
//!   or Pareto) with a
//!   seeded RNG, in call order: the same seed gives the same sequence of
//!   draws ([`ServiceTime::draws`] shows it), so a run on a current-thread
//!   runtime is deterministic.
//! - **Condition.** [`Condition::Up`], [`Slow`](Condition::Slow) (service
//!   times × factor), [`DownFast`](Condition::DownFast) (an error after
//!   about 1 ms), [`DownHang`](Condition::DownHang) (no answer until the
//!   caller gives up and drops the future) and
//!   [`Flapping`](Condition::Flapping) (up and down-fast in turn, each half
//!   a period).
//! - **Capacity.** [`SimHandle::set_capacity`] or
//!   [`set_capacity_fraction`](SimHandle::set_capacity_fraction) of the base
//!   capacity. Shrinking never interrupts calls already in service: they
//!   finish, and new ones start only once the number in service is below
//!   the new capacity. A capacity of 0 makes every call queue.
//! - **Schedule.** [`SimHandle::at`] applies a [`Change`] at a virtual time
//!   measured from when the back end was built: "capacity falls to 27% at
//!   t = 20 s" is one line. A change at time *t* applies to every call made
//!   at or after *t*.
//! - **Counters.** [`SimHandle::stats`] reads calls started, served,
//!   failed and cancelled, calls in service, queued and hanging now, and
//!   the peaks in service and in total (in service + queued), which show
//!   whether the layers in front kept the back end within its capacity.
//!
//! A response future that is dropped (the caller timed out or went away)
//! counts as cancelled and frees its place in the queue or its service slot,
//! like a real back end noticing a closed connection; or, with
//! [`Abandoned::KeepWorking`] ([`SimBuilder::abandoned`]), the back end
//! works on regardless and the call holds its place until its service
//! time ends.
//!
//! # Time and determinism
//!
//! Everything runs on `tokio::time`: build the back end after pausing time
//! (`#[tokio::test(start_paused = true)]` or `tokio::time::pause()`), and
//! an hour of simulated load takes milliseconds. Scheduled changes are
//! applied by a small task spawned on the first call to [`SimHandle::at`]
//! (so `at` needs a runtime), and also when the back end is next used,
//! whichever comes first. With the same seed and the same order of calls
//! (a current-thread runtime), two runs give identical answers.
//!
//! # Example
//!
//! Two slots and 100 ms per call: four calls at once means two queue and
//! take twice as long. Then the capacity halves at t = 20 s, and the back
//! end goes down.
//!
//! ```
//! use std::time::Duration;
//! use brownout::sim::{Change, Condition, ServiceTime, SimBackend, SimError};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let backend = SimBackend::builder()
//!     .capacity(2)
//!     .service_time(ServiceTime::Constant(Duration::from_millis(100)))
//!     .seed(7)
//!     .build()?;
//! let sim = backend.handle();
//!
//! let calls: Vec<_> = (0..4)
//!     .map(|_| tokio::spawn(backend.clone().oneshot("GET /slots")))
//!     .collect();
//! let mut latencies = Vec::new();
//! for call in calls {
//!     latencies.push(call.await??.latency());
//! }
//! let ms = Duration::from_millis;
//! assert_eq!(latencies, [ms(100), ms(100), ms(200), ms(200)]);
//! assert_eq!(sim.stats().peak_in_service, 2);
//! assert_eq!(sim.stats().peak_concurrent, 4);
//!
//! // Half the capacity from t = 20 s.
//! sim.at(Duration::from_secs(20), Change::CapacityFraction(0.5))?;
//! tokio::time::sleep_until(sim.origin() + Duration::from_secs(20)).await;
//! assert_eq!(sim.capacity(), 1);
//!
//! // Down: refused after about a millisecond.
//! sim.set_condition(Condition::DownFast)?;
//! assert_eq!(backend.clone().oneshot("GET /slots").await, Err(SimError::Down));
//! assert_eq!(sim.stats().failed, 1);
//! # Ok(())
//! # }
//! ```

mod config;
mod core;
mod future;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use self::config::Sampler;
pub use self::config::{Abandoned, Change, Condition, ServiceTime, SimConfigError};
use self::core::Shared;
pub use self::future::{ResponseFuture, SimError, SimResponse};

/// The resolution of tokio's timer, and so of simulated service times: they
/// are whole milliseconds (see [`ServiceTime`]).
pub const TIMER_RESOLUTION: Duration = Duration::from_millis(1);

/// How long a [`Condition::DownFast`] back end takes to refuse a call,
/// unless [`SimBuilder::down_latency`] says otherwise.
pub const DEFAULT_DOWN_LATENCY: Duration = Duration::from_millis(1);

/// A simulated back end: a [`tower::Service`] for any request type that
/// serves at most *capacity* calls at once and queues the rest (see the
/// [module docs](self)).
///
/// Cheap to clone; all clones are the same back end. Control it and read
/// its counters through its [`SimHandle`].
#[derive(Clone)]
pub struct SimBackend {
    shared: Arc<Shared>,
}

impl fmt::Debug for SimBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_sim(f, "SimBackend", &self.shared)
    }
}

fn debug_sim(f: &mut fmt::Formatter<'_>, name: &str, shared: &Shared) -> fmt::Result {
    let (stats, condition, _) = shared.snapshot();
    f.debug_struct(name)
        .field("condition", &condition)
        .field("stats", &stats)
        .finish_non_exhaustive()
}

impl SimBackend {
    /// A builder with the defaults: capacity 10, a constant 10 ms service
    /// time, seed 0, [`Condition::Up`], a 1 ms down latency.
    pub fn builder() -> SimBuilder {
        SimBuilder::default()
    }

    /// The handle that changes this back end's condition and capacity and
    /// reads its counters. Clones share the back end.
    pub fn handle(&self) -> SimHandle {
        SimHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<R> tower::Service<R> for SimBackend {
    type Response = SimResponse;
    type Error = SimError;
    type Future = ResponseFuture;

    /// Always ready: an overloaded back end queues calls inside, it does not
    /// push back.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    /// Starts the call now: it draws its service time, then queues for a
    /// slot, or fails or hangs if the back end is down.
    fn call(&mut self, _request: R) -> Self::Future {
        ResponseFuture::new(Arc::clone(&self.shared))
    }
}

/// Builds a [`SimBackend`]; start with [`SimBackend::builder`].
#[derive(Debug, Clone)]
pub struct SimBuilder {
    capacity: usize,
    service_time: ServiceTime,
    seed: u64,
    condition: Condition,
    down_latency: Duration,
    abandoned: Abandoned,
}

impl Default for SimBuilder {
    fn default() -> Self {
        Self {
            capacity: 10,
            service_time: ServiceTime::default(),
            seed: 0,
            condition: Condition::Up,
            down_latency: DEFAULT_DOWN_LATENCY,
            abandoned: Abandoned::Free,
        }
    }
}

impl SimBuilder {
    /// The base capacity *C*: calls served at once (0: every call queues
    /// until the capacity is raised). Capacity fractions are shares of it.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// The distribution of base service times.
    pub fn service_time(mut self, service_time: ServiceTime) -> Self {
        self.service_time = service_time;
        self
    }

    /// The seed of the service-time draws.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The condition the back end starts in.
    pub fn condition(mut self, condition: Condition) -> Self {
        self.condition = condition;
        self
    }

    /// How long a down back end takes to refuse a call.
    pub fn down_latency(mut self, latency: Duration) -> Self {
        self.down_latency = latency;
        self
    }

    /// What the back end does with calls whose caller went away:
    /// [`Abandoned::Free`] (the default) gives back their place at once,
    /// [`Abandoned::KeepWorking`] serves them out.
    pub fn abandoned(mut self, abandoned: Abandoned) -> Self {
        self.abandoned = abandoned;
        self
    }

    /// The back end. Its virtual time zero (for [`SimHandle::at`]) is now:
    /// build it after pausing tokio's time.
    ///
    /// # Errors
    ///
    /// [`SimConfigError::Invalid`] naming the field and value if the service
    /// time or the condition is unusable.
    pub fn build(self) -> Result<SimBackend, SimConfigError> {
        self.condition.validate()?;
        let sampler = Sampler::new(self.service_time, self.seed)?;
        Ok(SimBackend {
            shared: Shared::new(
                sampler,
                self.capacity,
                self.condition,
                self.down_latency,
                self.abandoned,
            ),
        })
    }
}

/// Changes a [`SimBackend`]'s condition and capacity, now or at a virtual
/// time, and reads its counters. Cheap to clone; keeps the back end alive.
#[derive(Clone)]
pub struct SimHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for SimHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug_sim(f, "SimHandle", &self.shared)
    }
}

impl SimHandle {
    /// Switches the back end to `condition` now.
    ///
    /// # Errors
    ///
    /// [`SimConfigError::Invalid`] for an unusable condition (see
    /// [`Condition::validate`]); the back end is unchanged.
    pub fn set_condition(&self, condition: Condition) -> Result<(), SimConfigError> {
        self.apply(Change::Condition(condition))
    }

    /// Sets the capacity now to `capacity` calls at once (0: every call
    /// queues). Calls already in service are never interrupted.
    pub fn set_capacity(&self, capacity: usize) {
        self.shared.apply(Change::Capacity(capacity));
    }

    /// Sets the capacity now to a share of the base capacity: rounded, and
    /// at least 1 when `fraction > 0`.
    ///
    /// # Errors
    ///
    /// [`SimConfigError::Invalid`] if `fraction` is not a finite number
    /// `>= 0`; the back end is unchanged.
    pub fn set_capacity_fraction(&self, fraction: f64) -> Result<(), SimConfigError> {
        self.apply(Change::CapacityFraction(fraction))
    }

    /// Applies `change` now.
    ///
    /// # Errors
    ///
    /// [`SimConfigError::Invalid`] for an unusable change (see
    /// [`Change::validate`]); the back end is unchanged.
    pub fn apply(&self, change: impl Into<Change>) -> Result<(), SimConfigError> {
        let change = change.into();
        change.validate()?;
        self.shared.apply(change);
        Ok(())
    }

    /// Applies `change` at virtual time `at`, measured from when the back
    /// end was built ([`origin`](Self::origin)). A time already past applies
    /// now (a flapping cycle still counts from `at`). Changes for the same
    /// time apply in the order they were scheduled.
    ///
    /// # Errors
    ///
    /// [`SimConfigError::Invalid`] for an unusable change or a time beyond
    /// the clock's range, and [`SimConfigError::NoRuntime`] when called for a
    /// future time outside a tokio runtime. Nothing is scheduled then.
    pub fn at(&self, at: Duration, change: impl Into<Change>) -> Result<(), SimConfigError> {
        let change = change.into();
        change.validate()?;
        let when = self
            .shared
            .origin
            .checked_add(at)
            .ok_or_else(|| SimConfigError::invalid("at", format_args!("{at:?}"), "too far"))?;
        self.shared.schedule(when, change)
    }

    /// Schedules every `(time, change)` of `changes`, as [`at`](Self::at)
    /// would, in order.
    ///
    /// # Errors
    ///
    /// The first error of [`at`](Self::at); the changes before it stay
    /// scheduled. Call [`Change::validate`] on each first to schedule all or
    /// nothing.
    pub fn schedule<C: Into<Change>>(
        &self,
        changes: impl IntoIterator<Item = (Duration, C)>,
    ) -> Result<(), SimConfigError> {
        changes
            .into_iter()
            .try_for_each(|(at, change)| self.at(at, change))
    }

    /// The back end's virtual time zero: when it was built.
    pub fn origin(&self) -> Instant {
        self.shared.origin
    }

    /// Virtual time since the back end was built.
    pub fn elapsed(&self) -> Duration {
        self.shared.origin.elapsed()
    }

    /// The condition in force now (a flapping back end reports
    /// [`Condition::Flapping`], whichever half it is in).
    pub fn condition(&self) -> Condition {
        self.shared.snapshot().1
    }

    /// The capacity now.
    pub fn capacity(&self) -> usize {
        self.shared.snapshot().0.capacity
    }

    /// The base capacity the back end was built with.
    pub fn base_capacity(&self) -> usize {
        self.shared.base_capacity
    }

    /// How many scheduled changes have not been applied yet.
    pub fn pending_changes(&self) -> usize {
        self.shared.snapshot().2
    }

    /// A snapshot of the counters (after applying changes due by now).
    pub fn stats(&self) -> SimStats {
        self.shared.snapshot().0
    }

    /// Restarts the peaks from the current values, e.g. at the start of a
    /// drill phase.
    pub fn reset_peaks(&self) {
        self.shared.reset_peaks();
    }
}

/// A snapshot of a [`SimBackend`]'s counters.
///
/// Every call started ends exactly once as served, failed or cancelled, or
/// is still open: `started == served + failed + cancelled + open()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SimStats {
    /// Calls made (`Service::call`).
    pub started: u64,
    /// Calls answered with a [`SimResponse`].
    pub served: u64,
    /// Calls answered with a [`SimError`].
    pub failed: u64,
    /// Calls whose future was dropped before it answered.
    pub cancelled: u64,
    /// Calls in service now.
    pub in_service: usize,
    /// Calls waiting for a slot now.
    pub queued: usize,
    /// Calls hanging now (made or dequeued while the back end hung).
    pub hanging: usize,
    /// The most calls in service at once (since the start or
    /// [`SimHandle::reset_peaks`]).
    pub peak_in_service: usize,
    /// The most calls in service plus queued at once (since the start or
    /// [`SimHandle::reset_peaks`]).
    pub peak_concurrent: usize,
    /// The capacity now.
    pub capacity: usize,
    /// Calls whose caller went away that the back end is still working
    /// on, queued or in service (in `queued` and `in_service` too); only
    /// with [`Abandoned::KeepWorking`].
    pub abandoned_working: usize,
}

impl SimStats {
    /// Calls started that have not ended yet: queued, in service, hanging,
    /// or about to answer an error.
    pub fn open(&self) -> u64 {
        self.started
            .saturating_sub(self.served)
            .saturating_sub(self.failed)
            .saturating_sub(self.cancelled)
    }
}
