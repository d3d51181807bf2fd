//! What the replayer reads of its route's admission, and how many replays
//! that leaves room for.

use crate::BreakerState;

/// What the replayer reads of its route's admission before it claims:
/// the learned limit, the share of it the least important class may use,
/// the calls in flight (live and replayed) and the callers waiting for a
/// slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// The route's limit now.
    pub limit: u32,
    /// The calls in flight past which the route's least important class
    /// waits for a slot: its share of the limit (`1 - reserve` of it);
    /// `limit` when every class may use all of it.
    pub lowest: u32,
    /// Calls in flight on the route now, replays included.
    pub inflight: u32,
    /// Callers waiting in the route's waiting room now (replays included).
    pub waiting: u32,
    /// The route's breaker now, if the reader knows it: while the
    /// replayer probes after the breaker turned replays away, a breaker
    /// seen shut and then closed again ends the pause at once.
    pub breaker: Option<BreakerState>,
}

impl Load {
    /// A reader of `route`'s load in a [`BrownoutLayer`](crate::BrownoutLayer)
    /// stack (any clone of the one live traffic goes through).
    pub fn of<F, R, P, D, C>(
        layer: &crate::BrownoutLayer<F, R, P, D, C>,
        route: &str,
    ) -> impl Fn() -> Option<Load> + Send + Sync + 'static
    where
        crate::BrownoutLayer<F, R, P, D, C>: Clone + Send + Sync + 'static,
    {
        let layer = layer.clone();
        let route = route.to_owned();
        move || Load::read(&layer, &route)
    }

    /// `route`'s load in `layer` now; `None` if it has no limit (or has
    /// not been seen).
    pub(super) fn read<F, R, P, D, C>(
        layer: &crate::BrownoutLayer<F, R, P, D, C>,
        route: &str,
    ) -> Option<Load>
    where
        crate::BrownoutLayer<F, R, P, D, C>: Clone + Send + Sync + 'static,
    {
        let limit = layer.limit(route)?;
        // Past the last class counts as the last.
        let least = crate::priority::Priority::new(u8::MAX);
        Some(Load {
            limit,
            lowest: layer.class_cap(route, least).unwrap_or(limit),
            inflight: layer.inflight(route).unwrap_or(0),
            waiting: u32::try_from(layer.waiting(route)).unwrap_or(u32::MAX),
            breaker: layer.state(route),
        })
    }

    /// How many replays may be in flight, `replays` of them already.
    ///
    /// With no live call in flight and nobody waiting, the whole limit:
    /// a backlog drains at the back end's capacity. Otherwise replays
    /// yield to live traffic ([`yielding_budget`](Self::yielding_budget)).
    /// At least one.
    pub fn replay_budget(self, share: f64, replays: usize) -> usize {
        if self.live(replays) == 0 && self.waiting == 0 {
            (self.limit as usize).max(1)
        } else {
            self.yielding_budget(share, replays)
        }
    }

    /// How many replays may be in flight, `replays` of them already, while
    /// live traffic is under way.
    ///
    /// A live caller of the least important class waits once the calls in
    /// flight reach its share of the limit ([`lowest`](Self::lowest)), so
    /// replays take only what live traffic leaves of that share, never
    /// more than `share` of the limit (what a sudden rise of live traffic
    /// may find taken), and none is added while callers wait: a slot a
    /// replay frees goes to the live caller waiting for it, whatever its
    /// class, and a live caller of a more important class has the rest of
    /// the limit to itself. At least one, so that the backlog drains
    /// however busy live traffic keeps the route.
    pub fn yielding_budget(self, share: f64, replays: usize) -> usize {
        let live = self.live(replays);
        let room = (self.lowest.min(self.limit) as usize).saturating_sub(live);
        let cap = (f64::from(self.limit) * share).floor() as usize;
        let budget = room.min(cap);
        let budget = if self.waiting > 0 {
            budget.min(replays)
        } else {
            budget
        };
        budget.max(1)
    }

    /// Live calls in flight, `replays` replays under way: at least this
    /// many (a replay sent but not yet admitted is not in flight).
    pub fn live(self, replays: usize) -> usize {
        (self.inflight as usize).saturating_sub(replays)
    }
}
