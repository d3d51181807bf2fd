//! The budget's decision, shared by the local store and the Redis store's
//! fallback: which pools a class may draw from, in which order, and when
//! the next unit frees.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::local::{Pool, Slots};
use crate::clock::Clock;
use crate::policy::{BudgetPolicy, BudgetWindow};
use crate::priority::{Classes, MAX_CLASSES, Priority};

/// Slots of a sliding window: a unit frees at most `per / SLIDING_SLOTS`
/// after exactly one period.
pub(crate) const SLIDING_SLOTS: u64 = 60;

/// Most pools: the unreserved one and one reserve per class.
pub(crate) const MAX_POOLS: usize = MAX_CLASSES + 1;

/// The pools a class draws from, in order; `len` of them are used.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Order {
    pub(crate) pools: [u8; MAX_POOLS],
    pub(crate) len: u8,
}

impl Order {
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.pools[..usize::from(self.len)]
    }
}

/// The time geometry and pool layout of one budget.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) slots: Slots,
    pub(crate) window: BudgetWindow,
    /// Nanoseconds since the Unix epoch, shifted by `tz`, at the clock's
    /// reading 0.
    origin: i128,
    /// How long before a calendar period's end reserves are released.
    release: u64,
    /// Pool sizes: `[0]` unreserved, then one per class with a share.
    pub(crate) sizes: Vec<u64>,
    /// Each class's reserve pool, by rank.
    reserve_of: [Option<u8>; MAX_CLASSES],
    pub(crate) clock: Clock,
}

/// A unit taken: from which pool, in which slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken {
    pub(crate) pool: u8,
    pub(crate) slot: u64,
}

impl Plan {
    pub(crate) fn new(policy: &BudgetPolicy, classes: &Classes, clock: Clock) -> Self {
        let per = crate::clock::saturating_nanos(policy.per).max(1);
        let slots = match policy.window {
            BudgetWindow::Calendar => Slots {
                width: per,
                ring: 1,
            },
            _ => Slots {
                width: (per / SLIDING_SLOTS).max(1),
                ring: SLIDING_SLOTS + 1,
            },
        };
        let wall = clock.wall_at(0);
        let since_epoch: i128 = match wall.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        };
        let origin = since_epoch + i128::from(policy.offset_secs()) * 1_000_000_000;
        let mut sizes = vec![0];
        let mut reserve_of = [None; MAX_CLASSES];
        let mut reserved = 0;
        for (name, share) in &policy.shares {
            if let Some(priority) = classes.by_name(name) {
                let size = (share * policy.capacity as f64).floor() as u64;
                let size = size.min(policy.capacity - reserved);
                reserved += size;
                reserve_of[usize::from(priority.rank())] = Some(sizes.len() as u8);
                sizes.push(size);
            }
        }
        sizes[0] = policy.capacity - reserved;
        Self {
            slots,
            window: policy.window,
            origin,
            release: crate::clock::saturating_nanos(policy.release_or_default()),
            sizes,
            reserve_of,
            clock,
        }
    }

    /// Nanoseconds since the (shifted) epoch at clock reading `now`.
    fn since_origin(&self, now: u64) -> u64 {
        (self.origin + i128::from(now)).max(0) as u64
    }

    /// The slot of clock reading `now`.
    #[inline]
    pub(crate) fn slot(&self, now: u64) -> u64 {
        self.since_origin(now) / self.slots.width
    }

    /// Whether `now` is in a calendar period's last `release`.
    fn releasing(&self, now: u64) -> bool {
        self.window == BudgetWindow::Calendar
            && self.since_origin(now) % self.slots.width
                >= self.slots.width.saturating_sub(self.release)
    }

    /// The pools `priority` may draw from at `now`: its reserve, the
    /// unreserved pool, and in a calendar period's release the other
    /// classes' reserves.
    pub(crate) fn order(&self, priority: Priority, now: u64) -> Order {
        let mut order = Order {
            pools: [0; MAX_POOLS],
            len: 0,
        };
        let mut push = |pool: u8| {
            order.pools[usize::from(order.len)] = pool;
            order.len += 1;
        };
        let own = self
            .reserve_of
            .get(usize::from(priority.rank()))
            .copied()
            .flatten();
        if let Some(own) = own {
            push(own);
        }
        push(0);
        if self.releasing(now) {
            for pool in 1..self.sizes.len() as u8 {
                if Some(pool) != own {
                    push(pool);
                }
            }
        }
        order
    }

    /// How long from `now` until slot `slot` starts.
    pub(crate) fn until_slot(&self, slot: u64, now: u64) -> Duration {
        let at = u128::from(slot) * u128::from(self.slots.width);
        let now = u128::from(self.since_origin(now));
        Duration::from_nanos(at.saturating_sub(now).min(u128::from(u64::MAX)) as u64)
    }

    /// The retry hint of a rejection at `now` after trying `order`: the
    /// soonest a tried pool frees a unit, or a calendar period's release
    /// if it comes first and another class's reserve has room.
    pub(crate) fn retry_after(
        &self,
        frees_at: Option<u64>,
        others_have_room: bool,
        now: u64,
    ) -> Duration {
        let slot = self.slot(now);
        let frees = frees_at.unwrap_or(slot + self.slots.ring);
        let mut after = self.until_slot(frees, now);
        if self.window == BudgetWindow::Calendar && others_have_room && !self.releasing(now) {
            let period_end = self.until_slot(slot + 1, now);
            let release = period_end.saturating_sub(Duration::from_nanos(self.release));
            after = after.min(release);
        }
        after
    }

    /// Wall-clock time now, for logs.
    #[cfg_attr(not(feature = "fleet"), allow(dead_code))]
    pub(crate) fn wall(&self) -> SystemTime {
        self.clock.system_time()
    }
}

/// A budget's pools in this process.
#[derive(Debug)]
pub(crate) struct LocalPools {
    pub(crate) pools: Vec<Pool>,
}

impl LocalPools {
    pub(crate) fn new(plan: &Plan) -> Self {
        Self {
            pools: plan
                .sizes
                .iter()
                .map(|&size| Pool::new(size, plan.slots.ring))
                .collect(),
        }
    }

    /// Takes a unit for `priority` at `now`, or says how long until one
    /// frees.
    #[inline]
    pub(crate) fn admit(
        &self,
        plan: &Plan,
        priority: Priority,
        now: u64,
    ) -> Result<Taken, Duration> {
        let slot = plan.slot(now);
        let order = plan.order(priority, now);
        for &pool in order.as_slice() {
            if self.pools[usize::from(pool)].take(slot) {
                return Ok(Taken { pool, slot });
            }
        }
        let frees = order
            .as_slice()
            .iter()
            .filter_map(|&p| self.pools[usize::from(p)].frees_at(slot))
            .min();
        let others_have_room = self.pools.iter().enumerate().skip(1).any(|(i, pool)| {
            !order.as_slice().contains(&(i as u8)) && pool.used(slot) < pool.size()
        });
        Err(plan.retry_after(frees, others_have_room, now))
    }

    pub(crate) fn give_back(&self, taken: Taken) {
        self.pools[usize::from(taken.pool)].give_back(taken.slot);
    }
}
