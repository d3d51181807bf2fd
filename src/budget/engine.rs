//! The budget's decision, shared by the local store and the Redis store's
//! fallback: which pools a class may draw from, in which order, and when
//! the next unit frees.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::local::{Pool, Slots};
use crate::clock::Clock;
use crate::policy::Zone;
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
    /// Nanoseconds since the Unix epoch, shifted by a fixed `tz`, at the
    /// clock's reading 0.
    origin: i128,
    /// A `tz` whose offset changes: its offset is added at each reading.
    zone: Option<ZoneOffsets>,
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
        let (fixed, zone) = match policy.zone() {
            Zone::Fixed(seconds) => (seconds, None),
            Zone::Named(zone) => (0, Some(ZoneOffsets::new(zone))),
        };
        let origin = since_epoch + i128::from(fixed) * 1_000_000_000;
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
            zone,
            release: crate::clock::saturating_nanos(policy.release_or_default()),
            sizes,
            reserve_of,
            clock,
        }
    }

    /// Nanoseconds since the (shifted) epoch at clock reading `now`: the
    /// zone's local time.
    fn since_origin(&self, now: u64) -> u64 {
        let utc = self.origin + i128::from(now);
        let local = match &self.zone {
            Some(zone) => utc + zone.offset_nanos(utc),
            None => utc,
        };
        local.max(0) as u64
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
        let at = i128::from(slot) * i128::from(self.slots.width);
        let wait = match &self.zone {
            None => at - i128::from(self.since_origin(now)),
            // The slot starts at a local time; the wait is in real time,
            // which differs from the local clock's by a clock change in
            // between.
            Some(zone) => {
                let utc = self.origin + i128::from(now);
                zone.utc_of_local(at, utc) - utc
            }
        };
        Duration::from_nanos(wait.clamp(0, i128::from(u64::MAX)) as u64)
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

/// The offsets of a zone whose offset changes, with the current one cached
/// until the zone's next transition, so that an admission reads one atomic
/// word rather than searching the zone's rules. (Readings go forward: the
/// budget's clock is monotonic. A reading that races another thread's
/// lookup across a transition may take the new offset a moment early: an
/// admission at the boundary counted in the period next to it.)
#[derive(Debug)]
struct ZoneOffsets {
    zone: jiff::tz::TimeZone,
    /// The cached offset and until when it holds: seconds since the epoch
    /// of the next transition in the high 40 bits, the offset plus
    /// `OFFSET_BIAS` seconds in the low 24 (0: nothing cached yet).
    cached: AtomicU64,
}

impl ZoneOffsets {
    /// Offsets are within a day of UTC; biased to fit 24 unsigned bits.
    const OFFSET_BIAS: i64 = 1 << 23;
    const OFFSET_BITS: u32 = 24;
    /// Transitions after 2^40 s (year 36812) are taken as never.
    const MAX_UNTIL: i64 = (1 << 40) - 1;

    fn new(zone: jiff::tz::TimeZone) -> Self {
        Self {
            zone,
            cached: AtomicU64::new(0),
        }
    }

    /// The zone's offset at `utc` (nanoseconds since the epoch), in
    /// nanoseconds.
    fn offset_nanos(&self, utc: i128) -> i128 {
        let second = (utc.div_euclid(1_000_000_000)).clamp(0, i128::from(Self::MAX_UNTIL)) as i64;
        let word = self.cached.load(Relaxed);
        let until = (word >> Self::OFFSET_BITS) as i64;
        let offset = if second < until {
            (word & ((1 << Self::OFFSET_BITS) - 1)) as i64 - Self::OFFSET_BIAS
        } else {
            self.lookup(second)
        };
        i128::from(offset) * 1_000_000_000
    }

    /// The instant (nanoseconds since the epoch) at which the local clock
    /// reads `local`, searched from `utc`, without touching the cache (it
    /// is for a retry hint: a later instant).
    fn utc_of_local(&self, local: i128, utc: i128) -> i128 {
        let offset_at = |utc: i128| {
            jiff::Timestamp::from_nanosecond(utc)
                .map_or(0, |at| i128::from(self.offset_at(at)) * 1_000_000_000)
        };
        // The offset there is the offset now, unless a change comes in
        // between: one correction finds it (changes are hours apart).
        let guess = local - offset_at(utc);
        local - offset_at(guess)
    }

    /// The zone's offset at `at`, seconds east of UTC.
    fn offset_at(&self, at: jiff::Timestamp) -> i64 {
        i64::from(self.zone.to_offset(at).seconds())
    }

    /// The offset at `second`, cached until the next transition.
    #[cold]
    fn lookup(&self, second: i64) -> i64 {
        let Ok(at) = jiff::Timestamp::from_second(second) else {
            return 0;
        };
        let offset = self.offset_at(at);
        let until = self
            .zone
            .following(at)
            .next()
            .map_or(Self::MAX_UNTIL, |transition| {
                transition.timestamp().as_second()
            })
            .clamp(second + 1, Self::MAX_UNTIL);
        let word = ((until as u64) << Self::OFFSET_BITS) | (offset + Self::OFFSET_BIAS) as u64;
        self.cached.store(word, Relaxed);
        offset
    }
}
