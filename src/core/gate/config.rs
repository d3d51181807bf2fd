//! The gate a standalone layer builds lazily, from the settings its
//! builder collected.

use std::sync::Arc;

use metrics::SharedString;

use crate::clock::Clock;
use crate::core::limit::algorithm::CustomAlgorithm;
use crate::listen::SharedListener;
use crate::policy::{BreakerPolicy, LimitPolicy, PriorityPolicy, WaitingRoomPolicy};
use crate::priority::Classes;

use super::{Gate, GateSpec};

/// What a layer builds its gate from, and the gate itself, built on first
/// use (the first service the layer wraps, or the first question about its
/// state) rather than when the layer is created, so that builder calls (a
/// route name, a clock) do not leave the metrics of a gate nobody uses
/// behind. Clones share the gate; changing a setting starts a new one.
#[derive(Debug, Clone)]
pub(crate) struct GateConfig {
    breaker: Option<BreakerPolicy>,
    limit: Option<LimitPolicy>,
    room: Option<WaitingRoomPolicy>,
    classes: Classes,
    route: SharedString,
    clock: Option<Clock>,
    seed: Option<u64>,
    listener: Option<SharedListener>,
    custom_limit: Option<CustomAlgorithm>,
    gate: Arc<std::sync::OnceLock<Arc<Gate>>>,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            breaker: None,
            limit: None,
            room: None,
            classes: Classes::default(),
            route: SharedString::const_str("default"),
            clock: None,
            seed: None,
            listener: None,
            custom_limit: None,
            gate: Arc::default(),
        }
    }
}

impl GateConfig {
    /// The gate, built now if it was not yet.
    pub(crate) fn gate(&self) -> &Arc<Gate> {
        self.gate.get_or_init(|| {
            Arc::new(Gate::new(GateSpec {
                breaker: self.breaker.as_ref(),
                limit: self.limit.as_ref(),
                room: self.room.as_ref(),
                maintenance: &[],
                classes: &self.classes,
                route: self.route.clone(),
                clock: self.clock.clone().unwrap_or_else(Clock::detect),
                seed: self.seed,
                listener: self.listener.clone(),
                custom_limit: self.custom_limit.clone(),
            }))
        })
    }

    /// Applies `change` to the settings and forgets the gate built from
    /// the old ones.
    fn changed(mut self, change: impl FnOnce(&mut Self)) -> Self {
        change(&mut self);
        self.gate = Arc::default();
        self
    }

    pub(crate) fn breaker(self, policy: BreakerPolicy) -> Self {
        self.changed(|c| c.breaker = Some(policy))
    }

    pub(crate) fn limit(self, policy: LimitPolicy) -> Self {
        self.changed(|c| c.limit = Some(policy))
    }

    pub(crate) fn room(self, policy: WaitingRoomPolicy) -> Self {
        self.changed(|c| c.room = Some(policy))
    }

    pub(crate) fn priorities(self, policy: &PriorityPolicy) -> Self {
        self.changed(|c| c.classes = Classes::from_policy(policy))
    }

    pub(crate) fn route(self, route: SharedString) -> Self {
        self.changed(|c| c.route = route)
    }

    pub(crate) fn clock(self, clock: Clock) -> Self {
        self.changed(|c| c.clock = Some(clock))
    }

    pub(crate) fn seed(self, seed: u64) -> Self {
        self.changed(|c| c.seed = Some(seed))
    }

    pub(crate) fn listener(self, listener: SharedListener) -> Self {
        self.changed(|c| c.listener = Some(listener))
    }

    pub(crate) fn custom_limit(self, custom: CustomAlgorithm) -> Self {
        self.changed(|c| c.custom_limit = Some(custom))
    }

    pub(crate) fn listener_value(&self) -> Option<SharedListener> {
        self.listener.clone()
    }

    pub(crate) fn breaker_policy(&self) -> Option<&BreakerPolicy> {
        self.breaker.as_ref()
    }

    pub(crate) fn classes(&self) -> &Classes {
        &self.classes
    }

    pub(crate) fn seed_value(&self) -> Option<u64> {
        self.seed
    }

    pub(crate) fn clock_or_detect(&self) -> Clock {
        self.clock.clone().unwrap_or_else(Clock::detect)
    }
}
