use std::sync::Arc;

use metrics::SharedString;
use tower::Layer;

use crate::admission::{Gate, GateSpec, LazyGate};
use crate::classify::ErrorsAsFailures;
use crate::clock::Clock;
use crate::deadline::NoDeadline;
use crate::policy::{BreakerPolicy, LimitPolicy, PriorityPolicy, WaitingRoomPolicy};
use crate::priority::{Classes, DefaultPriority};

use super::WaitingRoom;

/// Applies a [`WaitingRoom`] to a service.
///
/// The room holds requests that its gate cannot admit yet, so give it the
/// stages to wait for: [`limit`](Self::limit) (wait for a free slot) and
/// [`breaker`](Self::breaker) (wait through a short outage). Without
/// either, every request is admitted at once and nobody waits. The
/// composed [`BrownoutLayer`](crate) gives it both from one policy.
///
/// Every service the layer wraps, and their clones, share one room (created
/// when the layer first wraps a service).
#[derive(Debug, Clone)]
pub struct WaitingRoomLayer<P = DefaultPriority, D = NoDeadline, C = ErrorsAsFailures> {
    room: WaitingRoomPolicy,
    breaker: Option<BreakerPolicy>,
    limit: Option<LimitPolicy>,
    classes: Classes,
    route: SharedString,
    clock: Option<Clock>,
    seed: Option<u64>,
    gate: LazyGate,
    priority: P,
    deadline: D,
    classifier: C,
}

impl WaitingRoomLayer {
    /// A room following `policy`, in front of nothing yet: add the
    /// [`limit`](Self::limit) and [`breaker`](Self::breaker) it waits for.
    pub fn new(policy: WaitingRoomPolicy) -> Self {
        Self {
            gate: LazyGate::default(),
            room: policy,
            breaker: None,
            limit: None,
            classes: Classes::default(),
            route: SharedString::const_str("default"),
            clock: None,
            seed: None,
            priority: DefaultPriority,
            deadline: NoDeadline,
            classifier: ErrorsAsFailures,
        }
    }
}

impl<P, D, C> WaitingRoomLayer<P, D, C> {
    /// Waits for a circuit breaker following `policy`. Starts afresh.
    pub fn breaker(mut self, policy: BreakerPolicy) -> Self {
        self.breaker = Some(policy);
        self.gate = LazyGate::default();
        self
    }

    /// Waits for an adaptive limit following `policy`. Starts afresh.
    pub fn limit(mut self, policy: LimitPolicy) -> Self {
        self.limit = Some(policy);
        self.gate = LazyGate::default();
        self
    }

    /// Uses the classes of `policy`. Starts afresh.
    pub fn priorities(mut self, policy: &PriorityPolicy) -> Self {
        self.classes = Classes::from_policy(policy);
        self.gate = LazyGate::default();
        self
    }

    /// Names the route in metrics and logs. Starts afresh.
    pub fn route(mut self, route: impl Into<SharedString>) -> Self {
        self.route = route.into();
        self.gate = LazyGate::default();
        self
    }

    /// Uses `clock` instead of the detected one. Starts afresh.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self.gate = LazyGate::default();
        self
    }

    /// Seeds the breaker's jitter, for reproducible drills. Starts afresh.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self.gate = LazyGate::default();
        self
    }

    /// Finds each request's class with `priority`.
    pub fn priority<P2>(self, priority: P2) -> WaitingRoomLayer<P2, D, C> {
        WaitingRoomLayer {
            room: self.room,
            breaker: self.breaker,
            limit: self.limit,
            classes: self.classes,
            route: self.route,
            clock: self.clock,
            seed: self.seed,
            gate: self.gate,
            priority,
            deadline: self.deadline,
            classifier: self.classifier,
        }
    }

    /// Finds each request's own deadline with `deadline`.
    pub fn deadline<D2>(self, deadline: D2) -> WaitingRoomLayer<P, D2, C> {
        WaitingRoomLayer {
            room: self.room,
            breaker: self.breaker,
            limit: self.limit,
            classes: self.classes,
            route: self.route,
            clock: self.clock,
            seed: self.seed,
            gate: self.gate,
            priority: self.priority,
            deadline,
            classifier: self.classifier,
        }
    }

    /// Uses `classifier` to tell failures from successes.
    pub fn classify<C2>(self, classifier: C2) -> WaitingRoomLayer<P, D, C2> {
        WaitingRoomLayer {
            room: self.room,
            breaker: self.breaker,
            limit: self.limit,
            classes: self.classes,
            route: self.route,
            clock: self.clock,
            seed: self.seed,
            gate: self.gate,
            priority: self.priority,
            deadline: self.deadline,
            classifier,
        }
    }

    /// The classes requests are sorted into.
    pub fn classes(&self) -> &Classes {
        &self.classes
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.gate().waiting()
    }

    /// Places the room has allocated so far: its memory high-water mark,
    /// never more than its capacity.
    pub fn places_allocated(&self) -> usize {
        self.gate().room_slots()
    }

    /// The current limit (0 without one).
    pub fn limit_now(&self) -> u32 {
        self.gate().limiter().map_or(0, |limit| limit.limit())
    }

    /// Calls in flight now (0 without a limit).
    pub fn inflight(&self) -> u32 {
        self.gate().limiter().map_or(0, |limit| limit.inflight())
    }

    /// The breaker's state now (closed without one).
    pub fn state(&self) -> crate::BreakerState {
        self.gate().state()
    }

    fn gate(&self) -> &Arc<Gate> {
        self.gate.get(|| {
            Gate::new(GateSpec {
                breaker: self.breaker.as_ref(),
                limit: self.limit.as_ref(),
                room: Some(&self.room),
                classes: &self.classes,
                route: self.route.clone(),
                clock: self.clock.clone().unwrap_or_else(Clock::detect),
                seed: self.seed,
            })
        })
    }
}

impl<S, P: Clone, D: Clone, C: Clone> Layer<S> for WaitingRoomLayer<P, D, C> {
    type Service = WaitingRoom<S, P, D, C>;

    fn layer(&self, inner: S) -> Self::Service {
        WaitingRoom {
            inner,
            gate: self.gate().clone(),
            priority: self.priority.clone(),
            deadline: self.deadline.clone(),
            classifier: self.classifier.clone(),
        }
    }
}
