use metrics::SharedString;
use tower::Layer;

use crate::classify::ErrorsAsFailures;
use crate::clock::Clock;
use crate::core::gate::GateConfig;
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
    config: GateConfig,
    priority: P,
    deadline: D,
    classifier: C,
}

impl WaitingRoomLayer {
    /// A room following `policy`, in front of nothing yet: add the
    /// [`limit`](Self::limit) and [`breaker`](Self::breaker) it waits for.
    pub fn new(policy: WaitingRoomPolicy) -> Self {
        Self {
            config: GateConfig::default().room(policy),
            priority: DefaultPriority,
            deadline: NoDeadline,
            classifier: ErrorsAsFailures,
        }
    }
}

impl<P, D, C> WaitingRoomLayer<P, D, C> {
    /// Waits for a circuit breaker following `policy`. Starts afresh.
    pub fn breaker(mut self, policy: BreakerPolicy) -> Self {
        self.config = self.config.breaker(policy);
        self
    }

    /// Waits for an adaptive limit following `policy`. Starts afresh.
    pub fn limit(mut self, policy: LimitPolicy) -> Self {
        self.config = self.config.limit(policy);
        self
    }

    /// Uses the classes of `policy`. Starts afresh.
    pub fn priorities(mut self, policy: &PriorityPolicy) -> Self {
        self.config = self.config.priorities(policy);
        self
    }

    /// Names the route in metrics and logs. Starts afresh.
    pub fn route(mut self, route: impl Into<SharedString>) -> Self {
        self.config = self.config.route(route.into());
        self
    }

    /// Tells `listener` of the room's changes and of the calls it turns
    /// away (see [`listen`](crate::listen)). Starts afresh.
    pub fn listener(mut self, listener: impl crate::listen::Listener) -> Self {
        self.config = self
            .config
            .listener(crate::listen::SharedListener::new(listener));
        self
    }

    /// Uses `clock` instead of the one [detected](Clock::detect) when the
    /// room is created. Starts afresh.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.config = self.config.clock(clock);
        self
    }

    /// Seeds the breaker's jitter, for reproducible drills. Starts afresh.
    pub fn seed(mut self, seed: u64) -> Self {
        self.config = self.config.seed(seed);
        self
    }

    /// Finds each request's class with `priority`.
    pub fn priority<P2>(self, priority: P2) -> WaitingRoomLayer<P2, D, C> {
        WaitingRoomLayer {
            config: self.config,
            priority,
            deadline: self.deadline,
            classifier: self.classifier,
        }
    }

    /// Finds each request's own deadline with `deadline`.
    pub fn deadline<D2>(self, deadline: D2) -> WaitingRoomLayer<P, D2, C> {
        WaitingRoomLayer {
            config: self.config,
            priority: self.priority,
            deadline,
            classifier: self.classifier,
        }
    }

    /// Uses `classifier` to tell failures from successes.
    pub fn classify<C2>(self, classifier: C2) -> WaitingRoomLayer<P, D, C2> {
        WaitingRoomLayer {
            config: self.config,
            priority: self.priority,
            deadline: self.deadline,
            classifier,
        }
    }

    /// The classes requests are sorted into.
    pub fn classes(&self) -> &Classes {
        self.config.classes()
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.config.gate().waiting()
    }

    /// Places the room has allocated so far: its memory high-water mark.
    /// It stays within the capacity plus the few waiters that have been
    /// answered but have not yet read their answer.
    pub fn places_allocated(&self) -> usize {
        self.config.gate().room_slots()
    }

    /// The current limit (0 without one).
    pub fn limit_now(&self) -> u32 {
        self.config
            .gate()
            .limiter()
            .map_or(0, |limit| limit.limit())
    }

    /// Calls in flight now (0 without a limit), counting those a breaker
    /// in shadow mode let past the limit.
    pub fn inflight(&self) -> u32 {
        self.config.gate().inflight()
    }

    /// The breaker's state now (closed without one).
    pub fn state(&self) -> crate::BreakerState {
        self.config.gate().state()
    }
}

impl<S, P: Clone, D: Clone, C: Clone> Layer<S> for WaitingRoomLayer<P, D, C> {
    type Service = WaitingRoom<S, P, D, C>;

    fn layer(&self, inner: S) -> Self::Service {
        WaitingRoom {
            inner,
            gate: self.config.gate().clone(),
            priority: self.priority.clone(),
            deadline: self.deadline.clone(),
            classifier: self.classifier.clone(),
        }
    }
}
