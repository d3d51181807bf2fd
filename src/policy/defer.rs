//! The `[routes."…".defer]` section: which rejected requests of a route are
//! written to a durable store, answered `202 Accepted` with a ticket, and
//! replayed when the back end is back.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::PolicyError;
use super::check::{header_name, positive, rate};
use super::duration;

/// Where deferred requests are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeferStoreKind {
    /// An embedded database in the directory `path`, on this machine (one
    /// process at a time).
    #[default]
    Embedded,
    /// Redis Streams at `url`, shared by every replica.
    Redis,
}

/// A route's `defer` section (see the crate's `defer` module, feature
/// `defer`). Every field is optional; the defaults are shown.
///
/// ```toml
/// [routes."/applications".defer]
/// store = "embedded"                 # "embedded" | "redis"
/// path = "brownout-deferred"         # embedded: a directory
/// # url = "redis://127.0.0.1:6379"   # redis
/// when = ["open", "maintenance", "shed"]
/// methods = ["POST", "PUT"]          # GET only if listed
/// max_age = "7d"                     # undelivered after this: expired
/// max_pending = 100000               # full: the ordinary fallback answers
/// max_body = "64KiB"                 # larger: the ordinary fallback answers
/// max_answer = "64KiB"               # the back end's answer kept for the status endpoint
/// keep_headers = ["content-type", "accept"]
/// require_idempotency_key = false    # true: 400 without one
/// status_path = "/deferred"          # GET /deferred/{ticket}
/// replay_share = 0.5                 # most of the limit replays hold while live traffic runs
/// claim_after = "30s"                # a replay not settled by then is retried
/// keep_finished = "7d"               # a settled ticket's status (and key) kept this long
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeferPolicy {
    /// Which store keeps the deferred requests.
    pub store: DeferStoreKind,
    /// The embedded store's directory (created if missing).
    pub path: String,
    /// The Redis server of the `redis` store.
    pub url: String,
    /// The rejection reasons that defer a request: `open`, `maintenance`,
    /// `shed`, `queue_full`, `queue_timeout` (not `deadline`: its caller
    /// has given up). Not empty.
    pub when: Vec<String>,
    /// The methods safe to replay (upper case, as sent).
    pub methods: Vec<String>,
    /// How long a deferred request may wait for its replay; more than zero.
    #[serde(with = "duration")]
    pub max_age: Duration,
    /// Most requests pending at once; more than zero.
    pub max_pending: u64,
    /// Largest body deferred, in bytes (`"64KiB"`, `"1MiB"`, `65536`).
    pub max_body: ByteSize,
    /// Largest answer body kept for the status endpoint; longer ones are cut.
    pub max_answer: ByteSize,
    /// Whether a request without an `Idempotency-Key` is refused (`400`)
    /// instead of deferred.
    pub require_idempotency_key: bool,
    /// The request headers stored with a deferred request and sent with its
    /// replay (`Idempotency-Key` always is).
    pub keep_headers: Vec<String>,
    /// Where the status endpoint answers: `GET <status_path>/{ticket}`.
    pub status_path: String,
    /// The most of the route's limit replays hold while live traffic is
    /// under way, in (0, 1]: live traffic loses at most this share to the
    /// backlog, even when it rises at once. Within it, replays yield to
    /// live traffic: they take only what live calls leave of the share of
    /// the limit the least important class may use (`1 - reserve`), and
    /// none is added while callers wait; at least one is in flight, so
    /// that the backlog always drains. With no live call under way,
    /// replays use the whole limit.
    pub replay_share: f64,
    /// How long a claimed replay may stay unsettled before it is claimed
    /// again (by this replica after a restart, or by another); more than zero.
    #[serde(with = "duration")]
    pub claim_after: Duration,
    /// How long a settled request (served, failed or expired) is
    /// remembered after it settles: its status for the status endpoint,
    /// and its `Idempotency-Key` (the same key again gets the same
    /// ticket). After that the ticket is unknown (`404`) and the key may be
    /// used again. More than zero; 7 days by default.
    #[serde(with = "duration")]
    pub keep_finished: Duration,
}

impl Default for DeferPolicy {
    fn default() -> Self {
        Self {
            store: DeferStoreKind::Embedded,
            path: "brownout-deferred".to_owned(),
            url: "redis://127.0.0.1:6379".to_owned(),
            when: ["open", "maintenance", "shed"].map(str::to_owned).to_vec(),
            methods: ["POST", "PUT"].map(str::to_owned).to_vec(),
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_pending: 100_000,
            max_body: ByteSize(64 * 1024),
            max_answer: ByteSize(64 * 1024),
            require_idempotency_key: false,
            keep_headers: ["content-type", "accept"].map(str::to_owned).to_vec(),
            status_path: "/deferred".to_owned(),
            replay_share: 0.5,
            claim_after: Duration::from_secs(30),
            keep_finished: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The reasons `when` may name.
pub const DEFERRABLE_REASONS: [&str; 5] =
    ["open", "maintenance", "shed", "queue_full", "queue_timeout"];

impl DeferPolicy {
    /// Largest `max_body` and `max_answer`: 16 MiB.
    pub const MAX_BODY: u64 = 16 << 20;

    /// Checks every field; the error names the field under `at`
    /// (`routes."/applications".defer`) and quotes its value.
    ///
    /// ```
    /// use brownout::policy::DeferPolicy;
    ///
    /// let policy = DeferPolicy { when: vec!["deadline".into()], ..DeferPolicy::default() };
    /// assert_eq!(
    ///     policy.validate_at("defer").unwrap_err().to_string(),
    ///     "defer.when: \"deadline\" is not a reason that can defer a request; \
    ///      use open, maintenance, shed, queue_full or queue_timeout",
    /// );
    /// ```
    pub fn validate_at(&self, at: &str) -> Result<(), PolicyError> {
        let field = |name: &str| format!("{at}.{name}");
        if !cfg!(feature = "defer") {
            return Err(PolicyError::invalid(
                at,
                "(a defer section)",
                "needs brownout's `defer` cargo feature, which this build lacks: \
                 enable it, or remove the section",
            ));
        }
        if self.store == DeferStoreKind::Redis && !cfg!(feature = "defer-redis") {
            return Err(PolicyError::invalid(
                field("store"),
                "\"redis\"",
                "needs brownout's `defer-redis` cargo feature, which this build lacks: \
                 enable it, or use store = \"embedded\"",
            ));
        }
        if self.store == DeferStoreKind::Embedded && self.path.trim().is_empty() {
            return Err(PolicyError::invalid(
                field("path"),
                format!("{:?}", self.path),
                "is empty: the embedded store needs a directory",
            ));
        }
        if self.store == DeferStoreKind::Redis
            && !(self.url.starts_with("redis://")
                || self.url.starts_with("rediss://")
                || self.url.starts_with("redis+unix://")
                || self.url.starts_with("unix://"))
        {
            return Err(PolicyError::invalid(
                field("url"),
                format!("{:?}", self.url),
                "is not a Redis URL (redis://host:port, rediss://, unix://)",
            ));
        }
        if self.when.is_empty() {
            return Err(PolicyError::invalid(
                field("when"),
                "[]",
                "is empty: name at least one reason, or remove the defer section",
            ));
        }
        for reason in &self.when {
            if !DEFERRABLE_REASONS.contains(&reason.as_str()) {
                return Err(PolicyError::invalid(
                    field("when"),
                    format!("{reason:?}"),
                    "is not a reason that can defer a request; \
                     use open, maintenance, shed, queue_full or queue_timeout",
                ));
            }
        }
        if self.methods.is_empty() {
            return Err(PolicyError::invalid(
                field("methods"),
                "[]",
                "is empty: name the methods safe to replay, e.g. [\"POST\", \"PUT\"]",
            ));
        }
        for method in &self.methods {
            if method.is_empty()
                || !method
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
            {
                return Err(PolicyError::invalid(
                    field("methods"),
                    format!("{method:?}"),
                    "is not an HTTP method in upper case (POST, PUT, PATCH, DELETE, GET)",
                ));
            }
        }
        positive(&field("max_age"), self.max_age)?;
        if self.max_pending == 0 {
            return Err(PolicyError::invalid(
                field("max_pending"),
                0,
                "must be more than zero",
            ));
        }
        for (name, size) in [("max_body", self.max_body), ("max_answer", self.max_answer)] {
            if size.0 > Self::MAX_BODY {
                return Err(PolicyError::invalid(
                    field(name),
                    size,
                    format!("is more than {}", ByteSize(Self::MAX_BODY)),
                ));
            }
        }
        for header in &self.keep_headers {
            header_name(&field("keep_headers"), header)?;
        }
        if !self.status_path.starts_with('/') || self.status_path.ends_with('/') {
            return Err(PolicyError::invalid(
                field("status_path"),
                format!("{:?}", self.status_path),
                "must start with \"/\" and not end with one, e.g. \"/deferred\"",
            ));
        }
        rate(&field("replay_share"), self.replay_share)?;
        positive(&field("claim_after"), self.claim_after)?;
        positive(&field("keep_finished"), self.keep_finished)?;
        Ok(())
    }
}

/// A size in bytes, written as a number or with a unit: `"64KiB"`,
/// `"1MiB"`, `"512B"`, `"10kB"` (1000 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"64KiB"`, `"1 MiB"`, `"10kB"`, `"512"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let number: u64 = number.parse().map_err(|_| {
            format!(
                "invalid size {text:?}: expected a number of bytes such as \"64KiB\" or \"1MiB\""
            )
        })?;
        let scale: u64 = match unit.trim() {
            "" | "B" => 1,
            "kB" | "KB" => 1_000,
            "KiB" => 1 << 10,
            "MB" => 1_000_000,
            "MiB" => 1 << 20,
            "GB" => 1_000_000_000,
            "GiB" => 1 << 30,
            other => {
                return Err(format!(
                    "invalid size {text:?}: unknown unit {other:?}; use B, KiB, MiB, GiB, kB, MB or GB"
                ));
            }
        };
        number
            .checked_mul(scale)
            .map(ByteSize)
            .ok_or_else(|| format!("invalid size {text:?}: too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= 1 << 20 && n % (1 << 20) == 0 {
            write!(f, "{}MiB", n >> 20)
        } else if n >= 1 << 10 && n % (1 << 10) == 0 {
            write!(f, "{}KiB", n >> 10)
        } else {
            write!(f, "{n}B")
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a size such as "64KiB", "1MiB" or a number of bytes"#)
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<ByteSize, E> {
                ByteSize::parse(text).map_err(E::custom)
            }

            fn visit_u64<E: de::Error>(self, n: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(n))
            }

            fn visit_i64<E: de::Error>(self, n: i64) -> Result<ByteSize, E> {
                u64::try_from(n)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size {n}: a size cannot be negative")))
            }
        }

        d.deserialize_any(SizeVisitor)
    }
}
