//! The budget shared through Redis: one Lua script per admission, local
//! pools while Redis does not answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use metrics::Counter;
use redis::aio::MultiplexedConnection;
use redis::{Client, Script};

use super::engine::{LocalPools, Plan, Taken};
use super::{BudgetError, Inner, Store, Verdict};
use crate::metrics::SHARED_STATE_ERRORS_TOTAL;
use crate::policy::BudgetPolicy;
use crate::priority::Priority;

/// How long a replica decides alone after Redis failed it, before trying
/// Redis again.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// Replicas not heard from for this long no longer count as known.
const REPLICA_TTL_MS: u64 = 10 * 60 * 1000;

/// One admission, atomically. KEYS[1]: the budget's key prefix.
/// ARGV: slot, ring, ttl_ms, replica id, now_ms, npools, then npools sizes,
/// npools credits (units admitted locally while Redis was away, counted
/// now), the number of pools to try, the replicas' TTL, the pools in order,
/// then per pool the slot and count of units given back (taken by an
/// earlier admission that did not use them: taken off that slot's count,
/// never below zero).
/// Returns {1, pool, replicas, used per pool…} or
/// {0, slot at which the next unit of a tried pool frees (-1: none),
/// replicas, used per pool…}.
const ADMIT: &str = r#"
local prefix = KEYS[1]
local slot = tonumber(ARGV[1])
local ring = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local id = ARGV[4]
local now = tonumber(ARGV[5])
local npools = tonumber(ARGV[6])
local members = prefix .. ':replicas'
redis.call('ZADD', members, now, id)
redis.call('ZREMRANGEBYSCORE', members, '-inf', now - tonumber(ARGV[7 + 2 * npools + 1]))
redis.call('PEXPIRE', members, ttl + 600000)
local replicas = redis.call('ZCARD', members)
local current = prefix .. ':' .. string.format('%d', slot)
local fields = {}
for p = 0, npools - 1 do
  fields[p + 1] = 'p' .. p
  local credit = tonumber(ARGV[7 + npools + p])
  if credit > 0 then
    redis.call('HINCRBY', current, 'p' .. p, credit)
    redis.call('PEXPIRE', current, ttl)
  end
end
local used = {}
local oldest = {}
for p = 0, npools - 1 do used[p] = 0 end
for s = slot - ring + 1, slot do
  local vals = redis.call('HMGET', prefix .. ':' .. string.format('%d', s), unpack(fields))
  for p = 0, npools - 1 do
    local n = tonumber(vals[p + 1]) or 0
    if n > 0 then
      used[p] = used[p] + n
      if oldest[p] == nil then oldest[p] = s end
    end
  end
end
local norder = tonumber(ARGV[7 + 2 * npools])
local refunds = 7 + 2 * npools + 1 + norder
for p = 0, npools - 1 do
  local count = tonumber(ARGV[refunds + 2 * p + 2])
  if count > 0 then
    local key = prefix .. ':' .. ARGV[refunds + 2 * p + 1]
    local have = tonumber(redis.call('HGET', key, 'p' .. p)) or 0
    local back = math.min(have, count)
    if back > 0 then redis.call('HINCRBY', key, 'p' .. p, -back) end
  end
end
local earliest = -1
local reply = {0, -1, replicas}
for i = 1, norder do
  local p = tonumber(ARGV[7 + 2 * npools + 1 + i])
  if used[p] < tonumber(ARGV[6 + p + 1]) then
    redis.call('HINCRBY', current, 'p' .. p, 1)
    redis.call('PEXPIRE', current, ttl)
    used[p] = used[p] + 1
    reply[1] = 1
    reply[2] = p
    break
  end
  if oldest[p] ~= nil and (earliest < 0 or oldest[p] < earliest) then earliest = oldest[p] end
end
if reply[1] == 0 then reply[2] = earliest end
for p = 0, npools - 1 do reply[4 + p] = used[p] end
return reply
"#;

/// The Redis store's state in one replica.
pub(crate) struct Shared {
    client: Client,
    conn: ArcSwapOption<MultiplexedConnection>,
    script: Script,
    prefix: String,
    id: String,
    timeout: Duration,
    ttl_ms: u64,
    /// Clock reading before which Redis is not asked (it failed).
    down_until: AtomicU64,
    /// Whether this outage was logged.
    down: AtomicBool,
    /// The policy's fleet size, and the most replicas Redis reported.
    replicas_floor: u64,
    replicas_seen: AtomicU64,
    /// The fleet's use of each pool in the last answer.
    last_used: Box<[AtomicU64]>,
    /// Units admitted by the fallback, to add to Redis's count on rejoining.
    credits: Box<[AtomicU64]>,
    /// Units Redis admitted that went unused, per pool, to take off its
    /// count with the next admission: see [`Refunds`].
    refunds: Box<[Refunds]>,
    fallback: LocalPools,
    errors: Counter,
    url: String,
}

impl Shared {
    pub(crate) fn new(policy: &BudgetPolicy, plan: &Plan) -> Result<Self, BudgetError> {
        let client = Client::open(policy.url.as_str()).map_err(|err| BudgetError::Url {
            url: policy.url.clone(),
            why: err.to_string(),
        })?;
        crate::metrics::describe();
        let pools = plan.sizes.len();
        let width_ms = plan.slots.width / 1_000_000;
        Ok(Self {
            client,
            conn: ArcSwapOption::empty(),
            script: Script::new(ADMIT),
            prefix: policy.key_prefix.clone(),
            id: replica_id(),
            timeout: policy.shared_timeout,
            ttl_ms: (plan.slots.ring + 1) * width_ms.max(1) + 1000,
            down_until: AtomicU64::new(0),
            down: AtomicBool::new(false),
            replicas_floor: u64::from(policy.replicas),
            replicas_seen: AtomicU64::new(0),
            last_used: (0..pools).map(|_| AtomicU64::new(0)).collect(),
            credits: (0..pools).map(|_| AtomicU64::new(0)).collect(),
            refunds: (0..pools).map(|_| Refunds::default()).collect(),
            fallback: LocalPools::new(plan),
            errors: metrics::counter!(SHARED_STATE_ERRORS_TOTAL, "state" => "budget"),
            url: policy.url.clone(),
        })
    }

    /// The verdict of the local fallback while Redis is considered down;
    /// `None` when Redis should be asked.
    pub(crate) fn try_local(&self, plan: &Plan, priority: Priority, now: u64) -> Option<Verdict> {
        if now < self.down_until.load(Ordering::Acquire) {
            Some(self.local(plan, priority, now))
        } else {
            None
        }
    }

    fn local(&self, plan: &Plan, priority: Priority, now: u64) -> Verdict {
        match self.fallback.admit(plan, priority, now) {
            Ok(taken) => {
                self.credits[usize::from(taken.pool)].fetch_add(1, Ordering::Relaxed);
                Verdict::Admit(None)
            }
            Err(after) => Verdict::Reject(after),
        }
    }

    /// A unit Redis admitted went unused: it is taken off Redis's count
    /// with the next admission this replica sends.
    pub(crate) fn give_back(&self, taken: Taken) {
        if let Some(refunds) = self.refunds.get(usize::from(taken.pool)) {
            refunds.add(taken.slot);
        }
    }

    fn replicas(&self) -> u64 {
        self.replicas_floor
            .max(self.replicas_seen.load(Ordering::Relaxed))
            .max(1)
    }

    /// Redis failed: decide alone for a while, from pools sized for this
    /// replica's share of the fleet, starting from its share of the
    /// fleet's last known use.
    fn fail(&self, plan: &Plan, now: u64, why: &str) {
        self.errors.increment(1);
        self.conn.store(None);
        let retry = crate::clock::saturating_nanos(RETRY_AFTER_ERROR);
        self.down_until
            .store(now.saturating_add(retry), Ordering::Release);
        if !self.down.swap(true, Ordering::AcqRel) {
            let replicas = self.replicas();
            let slot = plan.slot(now);
            for (i, pool) in self.fallback.pools.iter().enumerate() {
                pool.set_size(plan.sizes[i] / replicas);
                let used = self.last_used[i].load(Ordering::Relaxed);
                let share = used.div_ceil(replicas);
                let already = pool.used(slot);
                pool.seed(slot, share.saturating_sub(already));
            }
            tracing::warn!(
                url = %self.url,
                error = why,
                replicas,
                "brownout: the budget's Redis does not answer; deciding from local state \
                 (capacity / {replicas} replicas) until it does"
            );
        }
    }

    fn rejoined(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            tracing::info!(url = %self.url, "brownout: the budget's Redis answers again; shared counts resume");
        }
    }

    async fn connection(&self) -> Result<MultiplexedConnection, redis::RedisError> {
        if let Some(conn) = self.conn.load_full() {
            return Ok((*conn).clone());
        }
        let conn = self.client.get_multiplexed_async_connection().await?;
        self.conn.store(Some(Arc::new(conn.clone())));
        Ok(conn)
    }

    async fn ask(&self, plan: &Plan, priority: Priority, now: u64) -> Result<Verdict, String> {
        let mut conn = self.connection().await.map_err(|e| e.to_string())?;
        let slot = plan.slot(now);
        let order = plan.order(priority, now);
        let pools = plan.sizes.len();
        let credits: Vec<u64> = self
            .credits
            .iter()
            .map(|c| c.swap(0, Ordering::AcqRel))
            .collect();
        let now_ms = plan
            .wall()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut invocation = self.script.key(&self.prefix);
        invocation
            .arg(slot)
            .arg(plan.slots.ring)
            .arg(self.ttl_ms)
            .arg(&self.id)
            .arg(now_ms)
            .arg(pools)
            .arg(&plan.sizes[..])
            .arg(&credits[..])
            .arg(order.as_slice().len())
            .arg(REPLICA_TTL_MS);
        for pool in order.as_slice() {
            invocation.arg(*pool);
        }
        for refunds in &self.refunds[..] {
            let (at, count) = refunds.take(slot);
            invocation.arg(at).arg(count);
        }
        let reply: Result<Vec<i64>, _> = invocation.invoke_async(&mut conn).await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(err) => {
                // Not counted: give them back to the next call.
                for (c, n) in self.credits.iter().zip(credits) {
                    c.fetch_add(n, Ordering::AcqRel);
                }
                return Err(err.to_string());
            }
        };
        if reply.len() < 3 + pools {
            return Err(format!(
                "unexpected reply from the budget script: {reply:?}"
            ));
        }
        self.replicas_seen
            .fetch_max(reply[2].max(0) as u64, Ordering::Relaxed);
        for (last, used) in self.last_used.iter().zip(&reply[3..]) {
            last.store((*used).max(0) as u64, Ordering::Relaxed);
        }
        Ok(if reply[0] == 1 {
            // (A pool the script did not name cannot be given back.)
            let taken = u8::try_from(reply[1])
                .ok()
                .filter(|&pool| usize::from(pool) < pools)
                .map(|pool| Taken { pool, slot });
            Verdict::Admit(taken)
        } else {
            let frees = u64::try_from(reply[1]).ok().map(|s| s + plan.slots.ring);
            Verdict::Reject(plan.retry_after(frees, false, now))
        })
    }
}

/// Asks Redis for a unit (at most `shared_timeout`), or the local
/// fallback when Redis errs or is late.
pub(crate) fn admit(
    inner: Arc<Inner>,
    priority: Priority,
    now: u64,
) -> Pin<Box<dyn Future<Output = Verdict> + Send>> {
    Box::pin(async move {
        let Store::Redis(shared) = &inner.store else {
            return Verdict::Admit(None);
        };
        let plan = &inner.plan;
        match tokio::time::timeout(shared.timeout, shared.ask(plan, priority, now)).await {
            Ok(Ok(verdict)) => {
                shared.rejoined();
                verdict
            }
            Ok(Err(why)) => {
                shared.fail(plan, now, &why);
                shared.local(plan, priority, now)
            }
            Err(_) => {
                shared.fail(plan, now, "no answer within budget.shared_timeout");
                shared.local(plan, priority, now)
            }
        }
    })
}

/// A name for this replica in the budget's member set: the process id and
/// a random number.
pub(crate) fn replica_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(std::process::id().into());
    format!("{}-{:016x}", std::process::id(), hasher.finish())
}

/// Units of one pool given back and not yet sent to Redis: the slot they
/// were taken in and how many, in one word (the slot's low 40 bits, the
/// count in the low 24). Only the latest slot's are kept: a give-back for an
/// older slot than the pending one, or one that finds a later slot's
/// pending, drops the older ones, and so do a failed call and a count past
/// 2^24. Dropped refunds leave the fleet admitting fewer, never more.
#[derive(Debug, Default)]
pub(crate) struct Refunds(AtomicU64);

impl Refunds {
    const COUNT_BITS: u32 = 24;
    const COUNT_MASK: u64 = (1 << Self::COUNT_BITS) - 1;
    const SLOT_MASK: u64 = (1 << 40) - 1;

    fn add(&self, slot: u64) {
        let slot = slot & Self::SLOT_MASK;
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
                let (pending, count) = (word >> Self::COUNT_BITS, word & Self::COUNT_MASK);
                if count == 0 || pending != slot {
                    // Nothing pending, or another slot's: this slot's if it is
                    // the later one (slot numbers wrap at 2^40: compared by
                    // their difference).
                    let later =
                        count == 0 || slot.wrapping_sub(pending) & Self::SLOT_MASK < 1 << 39;
                    later.then_some((slot << Self::COUNT_BITS) | 1)
                } else if count < Self::COUNT_MASK {
                    Some(word + 1)
                } else {
                    None
                }
            });
    }

    /// The pending slot (in full, from `now`, the current slot) and count,
    /// emptied.
    fn take(&self, now: u64) -> (u64, u64) {
        let word = self.0.swap(0, Ordering::AcqRel);
        let (pending, count) = (word >> Self::COUNT_BITS, word & Self::COUNT_MASK);
        if count == 0 {
            return (now, 0);
        }
        let behind = (now & Self::SLOT_MASK).wrapping_sub(pending) & Self::SLOT_MASK;
        (now.saturating_sub(behind), count)
    }
}

#[cfg(test)]
mod tests {
    use super::Refunds;

    #[test]
    fn refunds_keep_the_latest_slots_count() {
        let refunds = Refunds::default();
        assert_eq!(refunds.take(7), (7, 0), "nothing pending");
        for _ in 0..3 {
            refunds.add(5);
        }
        assert_eq!(refunds.take(7), (5, 3));
        assert_eq!(refunds.take(7), (7, 0), "taken once");
        // A later slot's give-back drops an earlier slot's pending ones
        // (the fleet then admits fewer, never more); an earlier one is
        // dropped itself.
        refunds.add(5);
        refunds.add(6);
        refunds.add(5);
        assert_eq!(refunds.take(6), (6, 1));
        // Slot numbers past 2^40 come back whole from the current slot.
        let slot = (1 << 41) + 9;
        refunds.add(slot);
        refunds.add(slot);
        assert_eq!(refunds.take(slot + 2), (slot, 2));
    }
}
