//! The Redis Streams store (feature `defer-redis`): one backlog shared by
//! every replica.
//!
//! Layout, under the prefix `brownout:defer:<route>`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `…:q:<rank>` | stream, consumer group `brownout` | one entry per pending request of class `rank`: its ticket and arrival time |
//! | `…:e:<ticket>` | hash | the request, its class, stream id, state (`w` waiting, `c` claimed, `d` done), attempts, outcome, idempotency key |
//! | `…:c:<rank>` | sorted set | the claimed tickets of class `rank`, scored by when they were claimed |
//! | `…:k:<key>` | string | an idempotency key's request fingerprint and ticket |
//! | `…:f` | sorted set | the settled tickets, scored by when they settled: entries and keys forgotten `keep_finished` later |
//!
//! Each operation is one Lua script, so it is atomic on the server. A
//! claim reads the most important class's stream first; within a class,
//! claims left unsettled for `claim_after` (their replica died) are taken
//! over first (`XCLAIM`), then new entries (`XREADGROUP … >`). Claim age is
//! judged by the store's clock (`StoreConfig::clock`), not the server's,
//! so that replicas agree with the embedded store's contract and tests run
//! in virtual time; replicas' clocks should be synchronised (NTP), as for
//! any lease.
//!
//! Durability is the server's: run it with `appendonly yes` and
//! `appendfsync always` for the embedded store's promise (a `202` only
//! after the request is on disk); `appendfsync everysec` may lose the last
//! second on a power loss. Keys are computed inside the scripts, so a
//! Redis Cluster is not supported; use one primary (with replicas).

use std::path::PathBuf;
use std::time::SystemTime;

use redis::aio::MultiplexedConnection;
use redis::{Client, Script};

use super::codec::{decode_outcome, decode_request, encode_outcome, encode_request};
use super::store::{
    Appended, Claimed, DeferStore, Deferred, Outcome, Status, StoreConfig, StoreError, StoreFuture,
    Ticket, from_ms, to_ms,
};

const GROUP: &str = "brownout";

const LIB: &str = r#"
local P = ARGV[1]
local function id_less(a, b)
  local am, as = a:match('(%d+)-(%d+)')
  local bm, bs = b:match('(%d+)-(%d+)')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local function fields(list)
  local out = {}
  for i = 1, #list, 2 do out[list[i]] = list[i + 1] end
  return out
end
local NOW, KEEP = 0, 0
local function settle(rank, ticket, id, group, outcome)
  local e = P .. ':e:' .. ticket
  redis.call('XACK', P .. ':q:' .. rank, group, id)
  redis.call('XDEL', P .. ':q:' .. rank, id)
  redis.call('ZREM', P .. ':c:' .. rank, ticket)
  redis.call('HSET', e, 'state', 'd', 'out', outcome)
  redis.call('HDEL', e, 'req')
  redis.call('ZADD', P .. ':f', NOW, ticket)
end
-- Forgets what settled more than KEEP ms before NOW: its entry, and its
-- idempotency key if the key still names it.
local function forget()
  local n = 0
  for _, t in ipairs(redis.call('ZRANGEBYSCORE', P .. ':f', '-inf', '(' .. (NOW - KEEP), 'LIMIT', 0, 1024)) do
    local e = P .. ':e:' .. t
    local key = redis.call('HGET', e, 'key')
    if key and key ~= '' then
      local k = P .. ':k:' .. key
      local found = redis.call('GET', k)
      if found and string.sub(found, -#t) == t then redis.call('DEL', k) end
    end
    redis.call('DEL', e)
    redis.call('ZREM', P .. ':f', t)
    n = n + 1
  end
  return n
end
"#;

/// ARGV: prefix, classes, max_pending, key, fingerprint:ticket, ticket, rank, request, arrived.
const APPEND: &str = r#"
if ARGV[4] ~= '' then
  local found = redis.call('GET', P .. ':k:' .. ARGV[4])
  if found then return {'seen', found} end
end
local total = 0
for r = 0, tonumber(ARGV[2]) - 1 do total = total + redis.call('XLEN', P .. ':q:' .. r) end
if total >= tonumber(ARGV[3]) then return {'full', ''} end
local id = redis.call('XADD', P .. ':q:' .. ARGV[7], '*', 't', ARGV[6], 'a', ARGV[9])
redis.call('HSET', P .. ':e:' .. ARGV[6], 'req', ARGV[8], 'rank', ARGV[7], 'id', id,
  'state', 'w', 'arrived', ARGV[9], 'attempts', 0, 'key', ARGV[4])
if ARGV[4] ~= '' then redis.call('SET', P .. ':k:' .. ARGV[4], ARGV[5]) end
return {'new', ARGV[6]}
"#;

/// ARGV: prefix, classes, group, consumer, now, claim_after, max_age, expired outcome.
const CLAIM: &str = r#"
local now, lease, max_age = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
NOW = now
local function take(rank, ticket)
  local e = P .. ':e:' .. ticket
  redis.call('ZADD', P .. ':c:' .. rank, now, ticket)
  redis.call('HSET', e, 'state', 'c')
  local attempts = redis.call('HINCRBY', e, 'attempts', 1)
  return {ticket, redis.call('HGET', e, 'req'), attempts}
end
for r = 0, tonumber(ARGV[2]) - 1 do
  local q = P .. ':q:' .. r
  local best, best_id = nil, nil
  for _, t in ipairs(redis.call('ZRANGEBYSCORE', P .. ':c:' .. r, '-inf', now - lease)) do
    local id = redis.call('HGET', P .. ':e:' .. t, 'id')
    if id and (best_id == nil or id_less(id, best_id)) then best, best_id = t, id end
  end
  if best then
    redis.call('XCLAIM', q, ARGV[3], ARGV[4], 0, best_id)
    return take(r, best)
  end
  while true do
    local got = redis.call('XREADGROUP', 'GROUP', ARGV[3], ARGV[4], 'COUNT', 1, 'STREAMS', q, '>')
    if not got or #got[1][2] == 0 then break end
    local entry = got[1][2][1]
    local f = fields(entry[2])
    if tonumber(f['a']) + max_age <= now then
      settle(r, f['t'], entry[1], ARGV[3], ARGV[8])
    else
      return take(r, f['t'])
    end
  end
end
return false
"#;

/// ARGV: prefix, ticket.
const RELEASE: &str = r#"
local e = P .. ':e:' .. ARGV[2]
if redis.call('HGET', e, 'state') ~= 'c' then return 0 end
redis.call('ZADD', P .. ':c:' .. redis.call('HGET', e, 'rank'), 0, ARGV[2])
redis.call('HINCRBY', e, 'attempts', -1)
return 1
"#;

/// ARGV: prefix, ticket, group, outcome, now.
const COMPLETE: &str = r#"
NOW = tonumber(ARGV[5])
local e = P .. ':e:' .. ARGV[2]
local state = redis.call('HGET', e, 'state')
if not state or state == 'd' then return 0 end
settle(redis.call('HGET', e, 'rank'), ARGV[2], redis.call('HGET', e, 'id'), ARGV[3], ARGV[4])
return 1
"#;

/// ARGV: prefix, classes, group, now, max_age, expired outcome, keep_finished.
const EXPIRE: &str = r#"
local now, max_age = tonumber(ARGV[4]), tonumber(ARGV[5])
NOW, KEEP = now, tonumber(ARGV[7])
forget()
local n = 0
for r = 0, tonumber(ARGV[2]) - 1 do
  local q = P .. ':q:' .. r
  local start = '-'
  local done = false
  while not done do
    local rows = redis.call('XRANGE', q, start, '+', 'COUNT', 256)
    if #rows == 0 then break end
    for _, row in ipairs(rows) do
      local f = fields(row[2])
      if tonumber(f['a']) + max_age > now then done = true break end
      if redis.call('HGET', P .. ':e:' .. f['t'], 'state') == 'w' then
        settle(r, f['t'], row[1], ARGV[3], ARGV[6])
        n = n + 1
      end
    end
    if #rows < 256 then break end
    start = '(' .. rows[#rows][1]
  end
end
return n
"#;

/// ARGV: prefix, classes. The arrival of each class's oldest pending entry.
const OLDEST: &str = r#"
local out = {}
for r = 0, tonumber(ARGV[2]) - 1 do
  local rows = redis.call('XRANGE', P .. ':q:' .. r, '-', '+', 'COUNT', 1)
  if #rows > 0 then out[#out + 1] = fields(rows[1][2])['a'] end
end
return out
"#;

/// The Redis Streams store (feature `defer-redis`); see the
/// [module docs](crate::defer) for durability.
#[derive(Clone)]
pub struct RedisStore {
    conn: MultiplexedConnection,
    prefix: String,
    consumer: String,
    config: StoreConfig,
    scripts: Scripts,
}

#[derive(Clone)]
struct Scripts {
    append: Script,
    claim: Script,
    release: Script,
    complete: Script,
    expire: Script,
    oldest: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

fn io(err: redis::RedisError) -> StoreError {
    StoreError::Io(err.to_string())
}

impl RedisStore {
    /// Connects to `url` and keeps `route`'s backlog under
    /// `brownout:defer:<route>`, creating its streams and consumer group if
    /// missing. Each store is one consumer of the group (a random name):
    /// open one per replica. A server that does not answer is
    /// [`StoreError::Open`] naming the URL.
    pub async fn open(url: &str, route: &str, config: StoreConfig) -> Result<Self, StoreError> {
        let fail = |why: String| StoreError::Open {
            path: PathBuf::from(url),
            why,
        };
        let client = Client::open(url).map_err(|e| fail(e.to_string()))?;
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let prefix = format!("brownout:defer:{route}");
        for rank in 0..config.classes {
            let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(format!("{prefix}:q:{rank}"))
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            if let Err(err) = created {
                if err.code() != Some("BUSYGROUP") {
                    return Err(fail(err.to_string()));
                }
            }
        }
        let script = |body: &str| Script::new(&format!("{LIB}\n{body}"));
        Ok(Self {
            conn,
            prefix,
            consumer: format!("replica-{}", Ticket::random()),
            config,
            scripts: Scripts {
                append: script(APPEND),
                claim: script(CLAIM),
                release: script(RELEASE),
                complete: script(COMPLETE),
                expire: script(EXPIRE),
                oldest: script(OLDEST),
            },
        })
    }

    /// This store's consumer name in the group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    fn entry_key(&self, ticket: &Ticket) -> String {
        format!("{}:e:{ticket}", self.prefix)
    }
}

fn parse_seen(key: &str, found: &str) -> Result<(u64, Ticket), StoreError> {
    let corrupt = || StoreError::Corrupt {
        key: key.to_owned(),
        why: "bad idempotency record".to_owned(),
    };
    let (fp, ticket) = found.split_once(':').ok_or_else(corrupt)?;
    let fp = u64::from_str_radix(fp, 16).map_err(|_| corrupt())?;
    Ok((fp, Ticket::parse(ticket).ok_or_else(corrupt)?))
}

impl DeferStore for RedisStore {
    fn now(&self) -> SystemTime {
        self.config.clock.system_time()
    }

    fn append(&self, request: Deferred) -> StoreFuture<'_, Appended> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let ticket = Ticket::random();
            let rank = request.priority.min(self.config.classes - 1);
            let fingerprint = request.fingerprint();
            let key = request.idempotency_key.clone().unwrap_or_default();
            let record = encode_request(&Deferred {
                priority: rank,
                ..request.clone()
            });
            let (what, found): (String, String) = self
                .scripts
                .append
                .arg(&self.prefix)
                .arg(self.config.classes)
                .arg(self.config.max_pending)
                .arg(&key)
                .arg(format!("{fingerprint:016x}:{ticket}"))
                .arg(ticket.as_str())
                .arg(rank)
                .arg(record)
                .arg(to_ms(request.arrived))
                .invoke_async(&mut conn)
                .await
                .map_err(io)?;
            Ok(match what.as_str() {
                "new" => Appended::New(ticket),
                "full" => Appended::Full,
                _ => {
                    let (fp, first) = parse_seen(&key, &found)?;
                    if fp == fingerprint {
                        Appended::Repeat(first)
                    } else {
                        Appended::Conflict(first)
                    }
                }
            })
        })
    }

    fn claim(&self) -> StoreFuture<'_, Option<Claimed>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let got: Option<(String, Vec<u8>, u32)> = self
                .scripts
                .claim
                .arg(&self.prefix)
                .arg(self.config.classes)
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(self.config.now_ms())
                .arg(self.config.claim_after.as_millis() as u64)
                .arg(self.config.max_age.as_millis() as u64)
                .arg(encode_outcome(&Outcome::Expired))
                .invoke_async(&mut conn)
                .await
                .map_err(io)?;
            let Some((ticket, record, attempts)) = got else {
                return Ok(None);
            };
            let request = decode_request(&ticket, &record)?;
            let ticket = Ticket::parse(&ticket).ok_or_else(|| StoreError::Corrupt {
                key: ticket.clone(),
                why: "not a ticket".to_owned(),
            })?;
            Ok(Some(Claimed {
                ticket,
                request,
                attempts,
            }))
        })
    }

    fn release(&self, ticket: Ticket) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let _: i64 = self
                .scripts
                .release
                .arg(&self.prefix)
                .arg(ticket.as_str())
                .invoke_async(&mut conn)
                .await
                .map_err(io)?;
            Ok(())
        })
    }

    fn complete(&self, ticket: Ticket, outcome: Outcome) -> StoreFuture<'_, bool> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let done: i64 = self
                .scripts
                .complete
                .arg(&self.prefix)
                .arg(ticket.as_str())
                .arg(GROUP)
                .arg(encode_outcome(&outcome))
                .arg(self.config.now_ms())
                .invoke_async(&mut conn)
                .await
                .map_err(io)?;
            Ok(done == 1)
        })
    }

    fn expire(&self) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let n: u64 = self
                .scripts
                .expire
                .arg(&self.prefix)
                .arg(self.config.classes)
                .arg(GROUP)
                .arg(self.config.now_ms())
                .arg(self.config.max_age.as_millis() as u64)
                .arg(encode_outcome(&Outcome::Expired))
                .arg(self.config.keep_finished.as_millis() as u64)
                .invoke_async(&mut conn)
                .await
                .map_err(io)?;
            Ok(n)
        })
    }

    fn status(&self, ticket: Ticket) -> StoreFuture<'_, Option<Status>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let (state, out, arrived): (Option<String>, Option<Vec<u8>>, Option<u64>) =
                redis::cmd("HMGET")
                    .arg(self.entry_key(&ticket))
                    .arg("state")
                    .arg("out")
                    .arg("arrived")
                    .query_async(&mut conn)
                    .await
                    .map_err(io)?;
            match (state.as_deref(), out, arrived) {
                (None, ..) => Ok(None),
                (Some("d"), Some(out), _) => {
                    Ok(Some(Status::Done(decode_outcome(ticket.as_str(), &out)?)))
                }
                (Some(_), _, Some(arrived)) => Ok(Some(Status::Pending {
                    arrived: from_ms(arrived),
                })),
                _ => Err(StoreError::Corrupt {
                    key: self.entry_key(&ticket),
                    why: "entry without state or arrival".to_owned(),
                }),
            }
        })
    }

    fn ticket_for_key(&self, key: String) -> StoreFuture<'_, Option<Ticket>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let found: Option<String> = redis::cmd("GET")
                .arg(format!("{}:k:{key}", self.prefix))
                .query_async(&mut conn)
                .await
                .map_err(io)?;
            found
                .map(|found| parse_seen(&key, &found).map(|(_, t)| t))
                .transpose()
        })
    }

    fn pending(&self) -> StoreFuture<'_, Vec<u64>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut pipe = redis::pipe();
            for rank in 0..self.config.classes {
                pipe.cmd("XLEN").arg(format!("{}:q:{rank}", self.prefix));
            }
            pipe.query_async(&mut conn).await.map_err(io)
        })
    }

    fn oldest(&self) -> StoreFuture<'_, Option<SystemTime>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let arrivals: Vec<u64> = self
                .scripts
                .oldest
                .arg(&self.prefix)
                .arg(self.config.classes)
                .invoke_async(&mut conn)
                .await
                .map_err(io)?;
            Ok(arrivals.into_iter().min().map(from_ms))
        })
    }
}

/// A [`RedisStore`] that connects at its first use: what
/// [`BrownoutLayer::from_policy`](crate::BrownoutLayer::from_policy), which
/// cannot wait, opens for a `store = "redis"` route. The URL is checked at
/// once; a server that does not answer fails the call that needed it (the
/// request is answered by the ordinary fallback, the replayer tries again),
/// and the next call connects again.
pub(crate) struct LazyRedisStore {
    url: String,
    route: String,
    config: StoreConfig,
    store: tokio::sync::OnceCell<RedisStore>,
}

impl LazyRedisStore {
    pub(crate) fn new(url: &str, route: &str, config: StoreConfig) -> Result<Self, StoreError> {
        Client::open(url).map_err(|e| StoreError::Open {
            path: PathBuf::from(url),
            why: e.to_string(),
        })?;
        Ok(Self {
            url: url.to_owned(),
            route: route.to_owned(),
            config,
            store: tokio::sync::OnceCell::new(),
        })
    }

    async fn store(&self) -> Result<&RedisStore, StoreError> {
        self.store
            .get_or_try_init(|| RedisStore::open(&self.url, &self.route, self.config.clone()))
            .await
    }
}

impl DeferStore for LazyRedisStore {
    fn now(&self) -> SystemTime {
        self.config.clock.system_time()
    }

    fn append(&self, request: Deferred) -> StoreFuture<'_, Appended> {
        Box::pin(async move { self.store().await?.append(request).await })
    }

    fn claim(&self) -> StoreFuture<'_, Option<Claimed>> {
        Box::pin(async move { self.store().await?.claim().await })
    }

    fn release(&self, ticket: Ticket) -> StoreFuture<'_, ()> {
        Box::pin(async move { self.store().await?.release(ticket).await })
    }

    fn complete(&self, ticket: Ticket, outcome: Outcome) -> StoreFuture<'_, bool> {
        Box::pin(async move { self.store().await?.complete(ticket, outcome).await })
    }

    fn expire(&self) -> StoreFuture<'_, u64> {
        Box::pin(async move { self.store().await?.expire().await })
    }

    fn status(&self, ticket: Ticket) -> StoreFuture<'_, Option<Status>> {
        Box::pin(async move { self.store().await?.status(ticket).await })
    }

    fn ticket_for_key(&self, key: String) -> StoreFuture<'_, Option<Ticket>> {
        Box::pin(async move { self.store().await?.ticket_for_key(key).await })
    }

    fn pending(&self) -> StoreFuture<'_, Vec<u64>> {
        Box::pin(async move { self.store().await?.pending().await })
    }

    fn oldest(&self) -> StoreFuture<'_, Option<SystemTime>> {
        Box::pin(async move { self.store().await?.oldest().await })
    }
}
