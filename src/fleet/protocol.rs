//! The fleet's breaker verdicts in Redis, in one place for both users:
//! the [`FleetBreakerLayer`](super::FleetBreakerLayer) in front of a
//! replica, and the composed stack built from a policy with `[fleet]`.
//! Both use the same keys, so a replica that shares a route through one
//! and a replica that shares it through the other follow each other.
//!
//! Per route, under `{key_prefix}:{route}` (`fleet.key_prefix`, by default
//! `brownout:fleet`):
//!
//! - `:open`, a sorted set: each replica's open verdict, scored by when it
//!   ends (wall-clock milliseconds). Ended verdicts are removed by the
//!   next read.
//! - `:lease`, the probe lease (`SET NX PX open_for`): the one replica
//!   that probes the back end once the verdicts have ended.
//! - `:closed`, a counter each successful probe increments (with the
//!   verdicts published before it deleted): a replica that sees it move
//!   knows the fleet closed, without having to infer it from a lease gone.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::Counter;
use redis::aio::MultiplexedConnection;
use redis::{Client, Pipeline, RedisResult};

use super::Share;
use crate::metrics::SHARED_STATE_ERRORS_TOTAL;

/// A route's keys.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// Every replica's verdict, scored by its end.
    pub(crate) verdicts: String,
    /// The probe lease.
    pub(crate) lease: String,
    /// How many times a probe closed the route for the fleet.
    pub(crate) closed: String,
}

impl Keys {
    /// The keys of `route` under `prefix` (the policy's `fleet.key_prefix`).
    pub(crate) fn of(prefix: &str, route: &str) -> Self {
        let base = format!("{prefix}:{route}");
        Self {
            verdicts: format!("{base}:open"),
            lease: format!("{base}:lease"),
            closed: format!("{base}:closed"),
        }
    }
}

/// `at` in wall-clock milliseconds since the Unix epoch (0 before it).
pub(crate) fn wall_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// How often a replica reads the fleet's verdicts when the shortest open
/// period is `open_for`: a tenth of it, 5 to 100 ms.
pub(crate) fn tick(open_for: Duration) -> Duration {
    (open_for / 10).clamp(Duration::from_millis(5), Duration::from_millis(100))
}

/// Milliseconds of `d`, at least 1 (a `PX` of 0 is an error in Redis).
pub(crate) fn px(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Publishes replica `id`'s verdict: open until `until_ms`. The set
/// outlives its last verdict by a minute, so an abandoned route's keys
/// go away on their own.
pub(crate) async fn publish_open(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    id: &str,
    until_ms: u64,
    now_ms: u64,
) -> RedisResult<()> {
    let ttl = until_ms.saturating_sub(now_ms).saturating_add(60_000);
    redis::pipe()
        .zadd(&keys.verdicts, id, until_ms)
        .pexpire(&keys.verdicts, i64::try_from(ttl).unwrap_or(i64::MAX))
        .query_async(conn)
        .await
}

/// A successful probe at `closed_ms` (wall ms) closes the route for the
/// fleet: the close counter moves, and the verdicts published before the
/// close (those ending less than `open_for` after it) are deleted. A
/// verdict published after it, which reached Redis first (the close waits
/// for its replica's next tick), stays: the back end failed again after
/// the probe. The lease is left to expire: deleted, another replica that
/// had read the fleet before the close would take it and probe a back end
/// already known to be up (and a new verdict ends after the lease does).
/// Returns the counter.
pub(crate) async fn publish_closed(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    closed_ms: u64,
    open_for: Duration,
) -> RedisResult<u64> {
    let before = format!("({}", closed_ms.saturating_add(px(open_for)));
    let (_, closes): ((), u64) = redis::pipe()
        .zrembyscore(&keys.verdicts, "-inf", before)
        .incr(&keys.closed, 1)
        .query_async(conn)
        .await?;
    Ok(closes)
}

/// Adds to `pipe` the read of a route: ended verdicts removed (one reply,
/// ignored), then the verdicts in force with their ends, then the close
/// counter. [`Read::from_replies`] reads the two replies it keeps.
pub(crate) fn read_into(pipe: &mut Pipeline, keys: &Keys, now_ms: u64) {
    pipe.zrembyscore(&keys.verdicts, "-inf", now_ms.saturating_sub(1))
        .ignore()
        .zrange_withscores(&keys.verdicts, 0, -1)
        .get(&keys.closed);
}

/// A route as Redis holds it now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Read {
    /// Each replica's verdict in force: its id and its end (wall ms).
    pub(crate) held: Vec<(String, u64)>,
    /// The close counter (0 before the first close).
    pub(crate) closes: u64,
}

impl Read {
    /// Reads one route in one round trip.
    pub(crate) async fn one(
        conn: &mut MultiplexedConnection,
        keys: &Keys,
        now_ms: u64,
    ) -> RedisResult<Self> {
        let mut pipe = redis::pipe();
        read_into(&mut pipe, keys, now_ms);
        let (held, closes): (Vec<(String, u64)>, Option<u64>) = pipe.query_async(conn).await?;
        Ok(Self {
            held,
            closes: closes.unwrap_or(0),
        })
    }

    /// When the fleet's verdict ends, as `share` counts verdicts: the
    /// latest end for [`Share::Follow`]; for [`Share::Quorum`]`(n)`, the
    /// `n`-th latest (until then at least `n` replicas hold one). `None`:
    /// not enough verdicts, each breaker decides.
    pub(crate) fn verdict_end(&self, share: Share) -> Option<u64> {
        let need = match share {
            Share::Follow => 1,
            Share::Quorum(n) => usize::try_from(n.max(1)).unwrap_or(usize::MAX),
        };
        if self.held.len() < need {
            return None;
        }
        let mut ends: Vec<u64> = self.held.iter().map(|(_, end)| *end).collect();
        ends.sort_unstable_by(|a, b| b.cmp(a));
        ends.get(need - 1).copied()
    }
}

/// Takes the route's probe lease for `ttl` if no replica holds it: `true`
/// if this replica (`id`) has it now.
pub(crate) async fn take_lease(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    id: &str,
    ttl: Duration,
) -> RedisResult<bool> {
    let taken: Option<String> = redis::cmd("SET")
        .arg(&keys.lease)
        .arg(id)
        .arg("NX")
        .arg("PX")
        .arg(px(ttl))
        .query_async(conn)
        .await?;
    Ok(taken.is_some())
}

/// Whether some replica holds the route's probe lease.
pub(crate) async fn lease_held(conn: &mut MultiplexedConnection, keys: &Keys) -> RedisResult<bool> {
    redis::cmd("EXISTS")
        .arg(&keys.lease)
        .query_async(conn)
        .await
}

/// A background task's line to Redis: one multiplexed connection, opened
/// again after an error, every call bounded by `shared_timeout`, and an
/// outage logged once (with its end) and counted in
/// `brownout_shared_state_errors_total{state="breaker"}`.
pub(crate) struct Link {
    client: Client,
    conn: Option<MultiplexedConnection>,
    timeout: Duration,
    /// What the logs name: a route's key, or the stack's routes.
    label: String,
    down: bool,
    errors: Counter,
}

impl Link {
    pub(crate) fn new(client: Client, timeout: Duration, label: String) -> Self {
        crate::metrics::describe();
        Self {
            client,
            conn: None,
            timeout,
            label,
            down: false,
            errors: metrics::counter!(SHARED_STATE_ERRORS_TOTAL, "state" => "breaker"),
        }
    }

    /// The connection, opened within `shared_timeout` if there is none.
    pub(crate) async fn conn(&mut self) -> Result<MultiplexedConnection, String> {
        if let Some(conn) = &self.conn {
            return Ok(conn.clone());
        }
        let conn = self
            .within(self.client.get_multiplexed_async_connection())
            .await?;
        self.conn = Some(conn.clone());
        Ok(conn)
    }

    /// `call`'s answer, or why there is none (an error, or no answer
    /// within `shared_timeout`).
    pub(crate) async fn within<T>(
        &self,
        call: impl std::future::Future<Output = RedisResult<T>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("no answer within shared_timeout".to_owned()),
        }
    }

    /// A round with Redis went through: logs its return after an outage.
    pub(crate) fn answered(&mut self) {
        if std::mem::take(&mut self.down) {
            tracing::info!(key = %self.label, "brownout: the fleet's Redis answers again; sharing breaker verdicts");
        }
    }

    /// A round with Redis failed for `why`: the connection is dropped (the
    /// next round opens a new one), the error counted, and the first of an
    /// outage logged.
    pub(crate) fn failed(&mut self, why: &str) {
        self.conn = None;
        self.errors.increment(1);
        if !std::mem::replace(&mut self.down, true) {
            tracing::warn!(key = %self.label, error = %why, "brownout: the fleet's Redis does not answer; each replica's breaker decides alone until it does");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(ends: &[u64]) -> Read {
        Read {
            held: ends
                .iter()
                .enumerate()
                .map(|(i, end)| (format!("replica-{i}"), *end))
                .collect(),
            closes: 0,
        }
    }

    #[test]
    fn the_verdict_ends_when_fewer_than_the_quorum_hold_one() {
        assert_eq!(read(&[]).verdict_end(Share::Follow), None);
        assert_eq!(read(&[30, 10, 20]).verdict_end(Share::Follow), Some(30));
        assert_eq!(read(&[30, 10, 20]).verdict_end(Share::Quorum(2)), Some(20));
        assert_eq!(read(&[30, 10, 20]).verdict_end(Share::Quorum(3)), Some(10));
        assert_eq!(read(&[30, 10]).verdict_end(Share::Quorum(3)), None);
        assert_eq!(read(&[30]).verdict_end(Share::Quorum(0)), Some(30));
    }

    #[test]
    fn keys_and_times() {
        let keys = Keys::of("brownout:fleet", "/slots");
        assert_eq!(keys.verdicts, "brownout:fleet:/slots:open");
        assert_eq!(keys.lease, "brownout:fleet:/slots:lease");
        assert_eq!(keys.closed, "brownout:fleet:/slots:closed");
        assert_eq!(wall_ms(UNIX_EPOCH + Duration::from_millis(1_234)), 1_234);
        assert_eq!(wall_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(px(Duration::ZERO), 1);
        assert_eq!(px(Duration::from_millis(1_500)), 1_500);
    }
}
