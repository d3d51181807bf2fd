//! The store contract: what every deferral store (embedded, Redis) does.

use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;

/// A boxed future of a store operation.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A deferred request's ticket: 32 lower-case hex digits, random, so that
/// one client cannot guess another's.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(String);

impl Ticket {
    /// A fresh random ticket.
    pub fn random() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut out = String::with_capacity(32);
        for _ in 0..2 {
            // Each `RandomState` is keyed from the OS's randomness.
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_u64(n);
            out.push_str(&format!("{:016x}", hasher.finish()));
        }
        Ticket(out)
    }

    /// The ticket `text`, when it is one (32 hex digits); `None` otherwise.
    pub fn parse(text: &str) -> Option<Self> {
        (text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Ticket(text.to_owned()))
    }

    /// The ticket as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A request as it is kept until its replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deferred {
    /// Its priority class, by rank (0 is the most important).
    pub priority: u8,
    /// The method, as sent.
    pub method: String,
    /// The URI, as sent (path and query).
    pub uri: String,
    /// The headers the policy keeps, in order.
    pub headers: Vec<(String, Bytes)>,
    /// The whole body.
    pub body: Bytes,
    /// When it arrived (wall-clock time, milliseconds resolution).
    pub arrived: SystemTime,
    /// Its `Idempotency-Key`, when it had one.
    pub idempotency_key: Option<String>,
}

impl Deferred {
    /// A fingerprint of what the request asks (method, URI, body), kept
    /// with its idempotency key: the same key with another request is a
    /// conflict, not a repeat.
    pub fn fingerprint(&self) -> u64 {
        // FNV-1a: stable across builds and versions, unlike the std hashers.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for part in [self.method.as_bytes(), self.uri.as_bytes(), &self.body] {
            for &b in part.iter().chain(&[0xff]) {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        hash
    }
}

/// What [`DeferStore::append`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Written durably under a new ticket.
    New(Ticket),
    /// The idempotency key was seen before with the same request: its
    /// ticket, nothing written.
    Repeat(Ticket),
    /// The idempotency key was seen before with another request (another
    /// method, URI or body): nothing written.
    Conflict(Ticket),
    /// `max_pending` requests are pending: nothing written.
    Full,
}

/// A pending request handed to a replayer by [`DeferStore::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// Its ticket.
    pub ticket: Ticket,
    /// The request.
    pub request: Deferred,
    /// How many times it has been claimed and not given back
    /// ([`DeferStore::release`]), this time included: more than 1 after a
    /// replay that was interrupted (a crash, or a claim left past
    /// `claim_after`).
    pub attempts: u32,
}

/// How a deferred request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The back end answered (any status: a 4xx is an answer too).
    Served {
        /// The answer's status code.
        status: u16,
        /// The answer's `Content-Type`, when it had one.
        content_type: Option<String>,
        /// The answer's body, up to the policy's `max_answer`.
        body: Bytes,
    },
    /// The replay failed for good (the back end's error, or an answer that
    /// could not be read); says why.
    Failed(String),
    /// It waited longer than `max_age` and was never sent.
    Expired,
}

impl Outcome {
    /// The outcome's label in `brownout_replayed_total` and in the status
    /// document: `served`, `failed`, `expired`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Served { .. } => "served",
            Outcome::Failed(_) => "failed",
            Outcome::Expired => "expired",
        }
    }
}

/// Where a ticket stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Waiting for its replay (or being replayed).
    Pending {
        /// When it arrived.
        arrived: SystemTime,
    },
    /// Settled, once and for good.
    Done(Outcome),
}

/// What a store failed at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store at `path` cannot be opened: unreadable, not a store, or
    /// corrupt. Nothing was read from it.
    #[error("deferral store {path}: cannot open: {why}")]
    Open {
        /// The store's path (a directory, or a Redis URL).
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A read or write failed.
    #[error("deferral store: {0}")]
    Io(String),
    /// A stored record could not be read back.
    #[error("deferral store: corrupt record {key}: {why}")]
    Corrupt {
        /// The record's key.
        key: String,
        /// What was wrong with it.
        why: String,
    },
}

/// The settings every store follows.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Most requests pending (waiting or being replayed) at once.
    pub max_pending: u64,
    /// A pending request older than this is expired by
    /// [`DeferStore::expire`] and never claimed.
    pub max_age: Duration,
    /// A claim not settled after this long is handed out again.
    pub claim_after: Duration,
    /// A settled request's outcome and idempotency key are forgotten this
    /// long after it settled (by [`DeferStore::expire`]).
    pub keep_finished: Duration,
    /// Number of priority classes (ranks `0..classes`).
    pub classes: u8,
    /// Time, read with [`Clock::system_time`](crate::clock::Clock::system_time):
    /// tests drive it with tokio's paused clock.
    pub clock: crate::clock::Clock,
}

impl StoreConfig {
    /// The settings of a route's `defer` section for `classes` classes.
    pub fn from_policy(policy: &crate::policy::DeferPolicy, classes: usize) -> Self {
        Self {
            max_pending: policy.max_pending,
            max_age: policy.max_age,
            claim_after: policy.claim_after,
            keep_finished: policy.keep_finished,
            classes: classes.clamp(1, crate::priority::MAX_CLASSES) as u8,
            clock: crate::clock::Clock::detect(),
        }
    }

    /// Now, in milliseconds since the Unix epoch.
    pub(crate) fn now_ms(&self) -> u64 {
        to_ms(self.clock.system_time())
    }
}

pub(crate) fn to_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn from_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

/// A durable queue of deferred requests, in priority order.
///
/// The contract, checked for every store by the same test suite
/// (`tests/defer_store.rs`):
///
/// - [`append`](Self::append) returns only once the request is durable
///   (committed and synced as the store documents), so a `202` sent after
///   it is a promise kept across a crash; an idempotency key seen before
///   returns the first ticket and writes nothing.
/// - [`claim`](Self::claim) hands out the most important class first and,
///   within a class, the oldest first; a claim left unsettled for
///   `claim_after` (its replayer died) is handed out again, first.
/// - [`complete`](Self::complete) stores a ticket's outcome once: a second
///   completion of the same ticket changes nothing and says so.
/// - [`release`](Self::release) puts a claimed request back in its place
///   (the back end was not ready), for the next claim, uncounted.
/// - [`expire`](Self::expire) settles every waiting request older than
///   `max_age` as [`Outcome::Expired`].
pub trait DeferStore: Send + Sync + 'static {
    /// Now, by the store's clock: arrival times are stamped with it.
    fn now(&self) -> SystemTime;

    /// Writes `request` durably, unless its idempotency key was seen or the
    /// store is full.
    fn append(&self, request: Deferred) -> StoreFuture<'_, Appended>;

    /// The next request to replay, if any is waiting.
    fn claim(&self) -> StoreFuture<'_, Option<Claimed>>;

    /// Puts a claimed request back where it was, for a later claim; the
    /// claim does not count as an attempt.
    fn release(&self, ticket: Ticket) -> StoreFuture<'_, ()>;

    /// Settles a claimed ticket with `outcome`; `true` when this call
    /// settled it, `false` when it was settled already (or unknown).
    fn complete(&self, ticket: Ticket, outcome: Outcome) -> StoreFuture<'_, bool>;

    /// Expires the waiting requests older than `max_age` (how many), and
    /// forgets the requests settled more than `keep_finished` ago.
    fn expire(&self) -> StoreFuture<'_, u64>;

    /// Where `ticket` stands; `None` when the store does not know it.
    fn status(&self, ticket: Ticket) -> StoreFuture<'_, Option<Status>>;

    /// The ticket of the request that carried idempotency key `key`.
    fn ticket_for_key(&self, key: String) -> StoreFuture<'_, Option<Ticket>>;

    /// Requests pending (waiting or being replayed), by class rank.
    fn pending(&self) -> StoreFuture<'_, Vec<u64>>;

    /// When the oldest pending request (waiting or being replayed)
    /// arrived, if any is pending.
    fn oldest(&self) -> StoreFuture<'_, Option<SystemTime>>;
}
