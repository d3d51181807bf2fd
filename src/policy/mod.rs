//! Ops' policy file: the serde types, their defaults, loading and validation.
//!
//! A policy says how brownout treats one back end. Ops write it in TOML
//! (the default), YAML or JSON; every section and every field is optional
//! and falls back to the default shown below, so an empty file is
//! [`Policy::default()`].
//!
//! # A full file
//!
//! Every value below is the default, so this file is [`Policy::default()`]:
//!
//! ```toml
//! [breaker]
//! # Judge the back end by its last 100 calls; or by the last 30 seconds:
//! #   window = { kind = "time", size = "30s", buckets = 10 }
//! window = { kind = "count", size = 100 }
//! failure_rate = 0.5          # open when >= 50% of the window failed
//! slow_call_rate = 1.0        # ... or when >= 100% of it was slow
//! slow_call_duration = "5s"   # a call this long is slow
//! minimum_calls = 20          # no verdict before 20 calls
//! open_for = "5s"             # first open period
//! # While probes keep failing: 5s, 10s, 20s, ... up to 5m, each ±10%.
//! open_backoff = { multiplier = 2.0, max = "5m", jitter = 0.1 }
//! half_open_probes = 3        # calls let through to test the back end
//! mode = "enforce"            # enforce | shadow | forced_open | forced_closed
//!
//! [limit]
//! algorithm = "gradient"      # fixed | aimd | vegas | gradient
//! initial = 20                # calls in flight allowed at start
//! min = 1                     # 1 <= min <= initial <= max <= 1000000
//! max = 1000
//! reserve = 0.2               # the last class may use 80% of the limit
//!
//! [waiting_room]
//! capacity = 1000             # 0 = never wait
//! max_wait = "10s"
//! order = "priority_fifo"     # priority_fifo | adaptive_lifo
//! codel_interval = "100ms"    # adaptive_lifo: a queue this old is standing...
//! codel_target = "5ms"        # ... and waits are cut to this (<= max_wait)
//! # deadline_header = "x-request-timeout"   # unset: only grpc-timeout is read
//!
//! [priority]
//! header = "x-priority"                   # where HTTP requests say their class
//! classes = ["urgent", "normal", "bulk"]  # most to least important; shed from the last
//! default = "normal"
//!
//! # No [[maintenance]] windows. See "Maintenance windows" below.
//!
//! # No [routes."…"] sections: every route uses the sections above.
//! # See "Per-route overrides" below.
//! ```
//!
//! Durations are written the human way: `"250ms"`, `"30s"`, `"5m"`,
//! `"1h 30m"`. Part of it in YAML:
//!
//! ```yaml
//! breaker:
//!   window: { kind: count, size: 100 }
//!   failure_rate: 0.5
//!   open_for: 5s
//!   open_backoff: { multiplier: 2.0, max: 5m, jitter: 0.1 }
//! limit: { algorithm: gradient, initial: 20, min: 1, max: 1000 }
//! waiting_room: { capacity: 1000, max_wait: 10s, order: priority_fifo }
//! priority:
//!   header: x-priority
//!   classes: [urgent, normal, bulk]
//!   default: normal
//! ```
//!
//! and in JSON: `{"breaker": {"failure_rate": 0.5, "open_for": "5s"},
//! "waiting_room": {"capacity": 0}}`.
//!
//! # Maintenance windows
//!
//! A `[[maintenance]]` entry is a planned period in which the back end is
//! not called at all: every request is answered at once with
//! [`Reason::Maintenance`](crate::Reason), the window's `message` (in the
//! HTTP problem document's `detail`, in gRPC's `grpc-message`) and a retry
//! hint pointing at the window's end (`Retry-After`, rounded up to whole
//! seconds). Times are RFC 3339 with their offset; `message` is optional:
//!
//! ```toml
//! [[maintenance]]
//! from = "2026-12-02T00:00:00+05:30"
//! until = "2026-12-09T00:00:00+05:30"
//! message = "Planned upgrade. Urgent files: use e-mail."
//!
//! [[maintenance]]                          # a second window, e.g. a rehearsal
//! from = "2026-11-25T22:00:00Z"
//! until = "2026-11-25T23:00:00Z"
//! ```
//!
//! - `from` must be before `until`: `maintenance[1].until:
//!   2026-12-01T00:00:00+05:30 is not after maintenance[1].from
//!   (2026-12-02T00:00:00+05:30)`. A time that is not RFC 3339 with an offset
//!   is refused with its path, e.g. `maintenance[0].from: invalid timestamp
//!   "2026-12-02T00:00:00": …` (an offset says which midnight is meant).
//! - Windows that overlap or touch act as one window, from the earliest
//!   `from` to the latest `until`, so the retry hint points at the real end;
//!   it says the message of the earliest window that has one (blank
//!   messages count as none). The policy keeps the windows as written.
//! - Windows apply to every route, whatever the breaker's `mode` but
//!   `shadow` (a `forced_closed` breaker does not serve through a window:
//!   remove the window to do that). A window already over is ignored.
//! - A waiting request stays in the waiting room only if the window ends
//!   before its own wait runs out (`max_wait`, or its deadline); otherwise it
//!   is answered at once.
//! - As a window ends, each route's breaker goes half-open (the next calls
//!   are probes) and its limit starts again from `limit.min`, so the back end
//!   coming out of maintenance is not flooded.
//! - In `mode = "shadow"` a window rejects nothing: it only counts
//!   `brownout_requests_total{outcome="would_reject", reason="maintenance"}`.
//! - A [`PolicyHandle`](crate::PolicyHandle) replaces the windows of a
//!   running stack: a window added is in force on the next request, and
//!   removing the window in force ends it as if its time had come.
//!
//! Wall-clock times are mapped onto brownout's own time line by its
//! [`Clock`](crate::clock::Clock) when the policy is put in force, so tests
//! in paused time can pin "now" with
//! [`Clock::tokio_at`](crate::clock::Clock::tokio_at).
//!
//! # Per-route overrides
//!
//! A `[routes."<path>"]` section changes the `breaker`, `limit` or
//! `waiting_room` of one route. It names only the fields it changes; every
//! other field is inherited from the top-level section (which itself
//! defaults), field by field, also inside `open_backoff`:
//!
//! ```toml
//! [waiting_room]
//! capacity = 1000
//! max_wait = "10s"
//!
//! [routes."/payments"]
//! waiting_room = { capacity = 0 }          # never hold a payment; max_wait is inherited ("10s")
//! breaker = { failure_rate = 0.2 }
//!
//! [routes."/slots"]
//! limit = { initial = 50, max = 400 }
//!
//! [routes."/booking.Booking/Book"]         # a gRPC method
//! breaker = { open_backoff = { max = "1m" } }
//! ```
//!
//! A key is the request's path and starts with `/`, as HTTP paths and gRPC
//! methods (`/package.Service/Method`) do. Priority classes are global: a
//! route cannot have a `priority` section. [`Policy::route`] gives a
//! route's effective policy (a route not listed gets the top-level
//! sections); [`Policy::routes`] keeps only what each route wrote, so a
//! policy written back to a file does not turn inherited values into
//! written ones.
//!
//! Each route's merged sections are validated; the errors name the field
//! under its route, and a value the route inherits says where from:
//!
//! ```text
//! routes."/payments".limit.initial: 5 is below routes."/payments".limit.min (10)
//! routes."/slots".breaker.minimum_calls: 20 (inherited from breaker.minimum_calls) is more than routes."/slots".breaker.window.size = 10, so the breaker could never open
//! routes."/payments".waiting_room.capcity: unknown field `capcity`, expected one of `capacity`, `max_wait`, ... (TOML line 6, column 18)
//! routes."/payments".priority: priority classes are global and cannot be set per route; set them in the top-level `priority` section (TOML line 7, column 1)
//! routes: "payments" does not start with "/": a route key is a request path, and HTTP paths ("/payments") and gRPC methods ("/booking.Booking/Book") both start with "/"; write "/payments"
//! ```
//!
//! # Loading it
//!
//! [`Policy::from_path`] picks the format by the file's extension (`.toml`,
//! `.yaml` or `.yml`, `.json`); [`Policy::from_toml`], [`Policy::from_yaml`]
//! and [`Policy::from_json`] read text already in memory. Each needs its
//! cargo feature: `toml` (on by default), `yaml`, `json`. Every loader
//! rejects unknown fields and [validates](Policy::validate) what it read,
//! so a loaded policy is always usable as it is:
//!
//! ```
//! # #[cfg(feature = "toml")] {
//! use std::time::Duration;
//! use brownout::{CircuitBreakerLayer, Policy, WindowPolicy};
//!
//! let policy = Policy::from_toml(
//!     r#"
//!     [breaker]
//!     window = { kind = "time", size = "30s" }
//!     failure_rate = 0.25
//!     open_for = "10s"
//!     "#,
//! )?;
//! assert_eq!(policy.breaker.failure_rate, 0.25);
//! assert_eq!(
//!     policy.breaker.window,
//!     WindowPolicy::Time { size: Duration::from_secs(30), buckets: 10 },
//! );
//! // Fields the file leaves out keep their defaults.
//! assert_eq!(policy.breaker.half_open_probes, 3);
//!
//! let layer = CircuitBreakerLayer::new(policy.breaker);
//! # let _ = layer;
//! # }
//! # Ok::<(), brownout::PolicyError>(())
//! ```
//!
//! # What errors look like
//!
//! A [`PolicyError`] names the field by its path in the file and quotes the
//! value. A value out of range, or one that does not fit with another:
//!
//! ```text
//! breaker.failure_rate: 1.5 is not in (0, 1]
//! breaker.minimum_calls: 200 is more than breaker.window.size = 100, so the breaker could never open
//! limit.initial: 5 is below limit.min (10)
//! waiting_room.codel_target: 20s is longer than waiting_room.max_wait (10s)
//! priority.header: "x priority" is not a valid HTTP header name: it contains ' '; use letters, digits and !#$%&'*+-.^_`|~
//! priority.default: "vip" is not one of priority.classes ["urgent", "normal", "bulk"]
//! ```
//!
//! A value of the wrong shape, with its line and column:
//!
//! ```text
//! breaker.open_for: invalid duration "5 parsecs": unknown time unit "parsecs", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations) (TOML line 3, column 12)
//! breaker.minimum_calls: invalid type: string "twenty", expected u32 (TOML line 2, column 17)
//! breaker.failure_ratio: unknown field `failure_ratio`, expected one of `window`, `failure_rate`, ... (TOML line 2, column 1)
//! ```
//!
//! Read through [`Policy::from_path`], the error starts with the file:
//!
//! ```text
//! /etc/brownout/policy.toml: breaker.failure_rate: 1.5 is not in (0, 1]
//! cannot read policy file /etc/brownout/policy.toml: No such file or directory (os error 2)
//! /etc/brownout/policy.ini: cannot tell the policy format from the extension `.ini`: use .toml, .yaml, .yml or .json
//! ```
//!
//! ```
//! # #[cfg(feature = "toml")] {
//! use brownout::Policy;
//!
//! let err = Policy::from_toml("[breaker]\nfailure_rate = 1.5\n").unwrap_err();
//! assert_eq!(err.to_string(), "breaker.failure_rate: 1.5 is not in (0, 1]");
//! assert_eq!(err.field(), Some("breaker.failure_rate"));
//! # }
//! ```

mod breaker;
mod check;
mod defer;
mod duration;
mod limit;
mod maintenance;
mod priority;
mod route;
mod waiting_room;

pub use breaker::{BackoffPolicy, BreakerPolicy, Mode, WindowPolicy};
pub use defer::{ByteSize, DEFERRABLE_REASONS, DeferPolicy, DeferStoreKind};
pub use limit::{Algorithm, LimitPolicy};
pub use maintenance::MaintenanceWindow;
pub use priority::{MAX_CLASSES, PriorityPolicy};
pub use route::{
    BackoffOverride, BreakerOverride, LimitOverride, RoutePolicy, WaitingRoomOverride,
};
pub use waiting_room::{Order, WaitingRoomPolicy};

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole policy, as ops write it in TOML, YAML or JSON.
///
/// Every section is optional and defaults to its own `Default`; see the
/// [module docs](self) for a full file and how to load it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// The `[breaker]` section: when the circuit opens, for how long, and
    /// how it probes.
    pub breaker: BreakerPolicy,
    /// The `[limit]` section: how many calls may be in flight, learned from
    /// the back end's latency and failures.
    pub limit: LimitPolicy,
    /// The `[waiting_room]` section: how many requests may wait, for how
    /// long, and in which order they leave.
    pub waiting_room: WaitingRoomPolicy,
    /// The `[priority]` section: the classes requests come in and where an
    /// HTTP request says its class. Global: routes share it.
    pub priority: PriorityPolicy,
    /// The `[[maintenance]]` windows: planned periods in which every
    /// request is answered at once with [`Reason::Maintenance`](crate::Reason),
    /// the window's message and a retry hint at its end. Global: they apply
    /// to every route. Empty by default (and then left out when the policy
    /// is written back). See the [module docs](self#maintenance-windows).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub maintenance: Vec<MaintenanceWindow>,
    /// The `[routes."…"]` sections, by route key: per-route overrides of
    /// `breaker`, `limit` and `waiting_room`, each keeping only what was
    /// written; empty by default (and then left out when the policy is
    /// written back).
    ///
    /// A key is the request's path, starting with `/`: an HTTP path
    /// (`"/payments"`) or a gRPC method (`"/booking.Booking/Book"`).
    /// [`Policy::route`] gives a route's effective policy: the top-level
    /// sections with the route's overrides applied. See the
    /// [module docs](self#per-route-overrides).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub routes: BTreeMap<String, RoutePolicy>,
}

impl Policy {
    /// Reads a TOML policy and [validates](Self::validate) it.
    ///
    /// ```
    /// let policy = brownout::Policy::from_toml("[breaker]\nfailure_rate = 0.3")?;
    /// assert_eq!(policy.breaker.failure_rate, 0.3);
    /// # Ok::<(), brownout::PolicyError>(())
    /// ```
    #[cfg(feature = "toml")]
    #[cfg_attr(docsrs, doc(cfg(feature = "toml")))]
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let policy = parse_toml(text)?;
        policy.validate()?;
        Ok(policy)
    }

    /// Reads a YAML policy and [validates](Self::validate) it. An empty
    /// document is the default policy.
    ///
    /// ```
    /// let policy = brownout::Policy::from_yaml("breaker:\n  open_for: 10s\n")?;
    /// assert_eq!(policy.breaker.open_for, std::time::Duration::from_secs(10));
    /// # Ok::<(), brownout::PolicyError>(())
    /// ```
    #[cfg(feature = "yaml")]
    #[cfg_attr(docsrs, doc(cfg(feature = "yaml")))]
    pub fn from_yaml(text: &str) -> Result<Self, PolicyError> {
        let policy = parse_yaml(text)?;
        policy.validate()?;
        Ok(policy)
    }

    /// Reads a JSON policy and [validates](Self::validate) it. An empty (or
    /// all-blank) text is the default policy, like an empty TOML file.
    ///
    /// ```
    /// let policy = brownout::Policy::from_json(r#"{"breaker": {"minimum_calls": 5}}"#)?;
    /// assert_eq!(policy.breaker.minimum_calls, 5);
    /// # Ok::<(), brownout::PolicyError>(())
    /// ```
    #[cfg(feature = "json")]
    #[cfg_attr(docsrs, doc(cfg(feature = "json")))]
    pub fn from_json(text: &str) -> Result<Self, PolicyError> {
        let policy = parse_json(text)?;
        policy.validate()?;
        Ok(policy)
    }

    /// Reads a policy written in `format` and [validates](Self::validate)
    /// it; [`PolicyError::FormatDisabled`] if this build lacks the format's
    /// feature. Useful when the format is known some other way than by a
    /// file name, e.g. for a policy fetched over the network.
    pub fn from_str_as(format: Format, text: &str) -> Result<Self, PolicyError> {
        match format {
            #[cfg(feature = "toml")]
            Format::Toml => Self::from_toml(text),
            #[cfg(feature = "yaml")]
            Format::Yaml => Self::from_yaml(text),
            #[cfg(feature = "json")]
            Format::Json => Self::from_json(text),
            #[allow(unreachable_patterns)]
            _ => {
                let _ = text;
                Err(PolicyError::FormatDisabled { format, file: None })
            }
        }
    }

    /// Reads the policy file at `path`, in the format its extension names
    /// (`.toml`, `.yaml` or `.yml`, `.json`, in any case), and
    /// [validates](Self::validate) it. Every error names the file.
    ///
    /// ```no_run
    /// let policy = brownout::Policy::from_path("/etc/brownout/policy.toml")?;
    /// # Ok::<(), brownout::PolicyError>(())
    /// ```
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, PolicyError> {
        let path = path.as_ref();
        let in_file = |err: PolicyError| err.in_file(path);
        let format = Format::from_path(path).ok_or_else(|| PolicyError::UnknownFormat {
            file: path.to_owned(),
        })?;
        if !format.is_enabled() {
            return Err(in_file(PolicyError::FormatDisabled { format, file: None }));
        }
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            file: path.to_owned(),
            source,
        })?;
        Self::from_str_as(format, &text).map_err(in_file)
    }

    /// Checks every section, in the order of the file (`breaker`, `limit`,
    /// `waiting_room`, `priority`), then each maintenance window (it must
    /// end after it starts), then every route in key order; the
    /// loaders call it. The error names the first bad field: see
    /// [`BreakerPolicy::validate`], [`LimitPolicy::validate`],
    /// [`WaitingRoomPolicy::validate`] and [`PriorityPolicy::validate`] for
    /// what each section checks.
    ///
    /// A route's key must be a path starting with `/`, and each section a
    /// route overrides is checked as the route will use it, merged with the
    /// top-level section. Its errors name the field under the route, and
    /// a value the route inherits says so:
    ///
    /// ```
    /// # #[cfg(feature = "toml")] {
    /// let err = brownout::Policy::from_toml(
    ///     r#"
    ///     limit = { min = 10, initial = 20 }
    ///     [routes."/slots"]
    ///     limit = { initial = 5 }
    ///     [routes."/payments"]
    ///     limit = { min = 30 }
    ///     "#,
    /// )
    /// .unwrap_err();
    /// // "/payments" comes first: routes are checked in key order.
    /// assert_eq!(
    ///     err.to_string(),
    ///     r#"routes."/payments".limit.initial: 20 (inherited from limit.initial) is below routes."/payments".limit.min (30)"#,
    /// );
    /// # }
    /// ```
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.breaker.validate()?;
        self.limit.validate()?;
        self.waiting_room.validate()?;
        self.priority.validate()?;
        for (index, window) in self.maintenance.iter().enumerate() {
            window.validate_at(index)?;
        }
        for (key, route) in &self.routes {
            route::check_key(key)?;
            route.validate_at(&route::route_path(key), self)?;
        }
        Ok(())
    }

    /// The effective policy of `route`: the top-level sections with the
    /// overrides of `[routes."<route>"]` applied, field by field; a route
    /// not listed in [`routes`](Self::routes) gets the top-level sections
    /// as they are. `priority` is global, and the result's `routes` is
    /// empty: it is one route's policy.
    ///
    /// The key is matched exactly (no prefix or pattern matching). Build
    /// each route's layers from its effective sections:
    ///
    /// ```
    /// # #[cfg(feature = "toml")] {
    /// use std::time::Duration;
    /// use brownout::{Policy, WaitingRoomLayer};
    ///
    /// let policy = Policy::from_toml(
    ///     r#"
    ///     [waiting_room]
    ///     max_wait = "30s"
    ///     [routes."/payments"]
    ///     waiting_room = { capacity = 0 }
    ///     "#,
    /// )?;
    /// let payments = policy.route("/payments");
    /// assert_eq!(payments.waiting_room.capacity, 0);
    /// assert_eq!(payments.waiting_room.max_wait, Duration::from_secs(30)); // inherited
    /// assert_eq!(policy.route("/slots").waiting_room, policy.waiting_room); // not listed
    ///
    /// let layer = WaitingRoomLayer::new(payments.waiting_room).route("/payments");
    /// # let _ = layer;
    /// # }
    /// # Ok::<(), brownout::PolicyError>(())
    /// ```
    pub fn route(&self, route: &str) -> Policy {
        let mut policy = Policy {
            routes: BTreeMap::new(),
            ..self.clone()
        };
        if let Some(overrides) = self.routes.get(route) {
            overrides.apply_to(&mut policy);
        }
        policy
    }
}

/// A policy file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// TOML, feature `toml` (on by default); extension `.toml`.
    Toml,
    /// YAML, feature `yaml`; extension `.yaml` or `.yml`.
    Yaml,
    /// JSON, feature `json`; extension `.json`.
    Json,
}

impl Format {
    /// The format a file's extension names, in any case; `None` for any
    /// other extension or none.
    ///
    /// ```
    /// use brownout::policy::Format;
    ///
    /// assert_eq!(Format::from_path("policy.yml".as_ref()), Some(Format::Yaml));
    /// assert_eq!(Format::from_path("policy.ini".as_ref()), None);
    /// ```
    pub fn from_path(path: &Path) -> Option<Self> {
        let extension = path.extension()?.to_str()?;
        [
            ("toml", Format::Toml),
            ("yaml", Format::Yaml),
            ("yml", Format::Yaml),
            ("json", Format::Json),
        ]
        .into_iter()
        .find(|(name, _)| extension.eq_ignore_ascii_case(name))
        .map(|(_, format)| format)
    }

    /// The cargo feature of brownout that reads this format.
    pub const fn feature(self) -> &'static str {
        match self {
            Format::Toml => "toml",
            Format::Yaml => "yaml",
            Format::Json => "json",
        }
    }

    /// Whether this build reads this format.
    pub const fn is_enabled(self) -> bool {
        match self {
            Format::Toml => cfg!(feature = "toml"),
            Format::Yaml => cfg!(feature = "yaml"),
            Format::Json => cfg!(feature = "json"),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Toml => "TOML",
            Format::Yaml => "YAML",
            Format::Json => "JSON",
        })
    }
}

/// A policy that could not be read or does not validate.
///
/// Its message names the field by its dotted path in the file
/// (`breaker.open_backoff.jitter`) and quotes the value; read through
/// [`Policy::from_path`], it starts with the file. See the
/// [module docs](self#what-errors-look-like) for examples.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A field holds a value outside its range, or one that does not fit
    /// with another field.
    #[error("{}{field}: {value} {problem}", FilePrefix(file))]
    #[non_exhaustive]
    Invalid {
        /// Dotted path of the field, e.g. `breaker.failure_rate`.
        field: String,
        /// The offending value, e.g. `1.5` or `0s`.
        value: String,
        /// What is wrong with it, e.g. `is not in (0, 1]`.
        problem: String,
        /// The file it came from, when read by [`Policy::from_path`].
        file: Option<PathBuf>,
    },
    /// The text is not valid TOML, YAML or JSON, or a field has the wrong
    /// type, an unknown name, or a value that cannot be read (a bad
    /// duration, an unknown mode).
    #[error(
        "{}{}{message} ({format}{})",
        FilePrefix(file),
        FieldPrefix(field),
        Location(*line, *column)
    )]
    #[non_exhaustive]
    Parse {
        /// The format being read.
        format: Format,
        /// Dotted path of the field being read, e.g. `breaker.open_for`;
        /// empty when the problem is at the top of the file or in its syntax.
        field: String,
        /// What is wrong, from the format's parser.
        message: String,
        /// Line of the problem, from 1, when the parser says.
        line: Option<usize>,
        /// Column of the problem, from 1, when the parser says.
        column: Option<usize>,
        /// The file it came from, when read by [`Policy::from_path`].
        file: Option<PathBuf>,
    },
    /// The policy file could not be read.
    #[error("cannot read policy file {}: {source}", file.display())]
    #[non_exhaustive]
    Read {
        /// The file.
        file: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// [`Policy::from_path`] cannot tell the format from the file's extension.
    #[error(
        "{}: cannot tell the policy format from {}: use .toml, .yaml, .yml or .json",
        file.display(),
        Extension(file)
    )]
    #[non_exhaustive]
    UnknownFormat {
        /// The file.
        file: PathBuf,
    },
    /// The policy is written in a format this build does not read.
    #[error(
        "{}{format} policies need brownout's `{}` cargo feature, which this build lacks",
        FilePrefix(file),
        format.feature()
    )]
    #[non_exhaustive]
    FormatDisabled {
        /// The format.
        format: Format,
        /// The file, when read by [`Policy::from_path`].
        file: Option<PathBuf>,
    },
}

impl PolicyError {
    /// An [`Invalid`](Self::Invalid) error: `field` holds `value`, which
    /// `problem` (e.g. `is not in (0, 1]`).
    pub(crate) fn invalid(
        field: impl Into<String>,
        value: impl ToString,
        problem: impl Into<String>,
    ) -> Self {
        PolicyError::Invalid {
            field: field.into(),
            value: value.to_string(),
            problem: problem.into(),
            file: None,
        }
    }

    /// Dotted path of the field at fault, e.g. `breaker.failure_rate`, when
    /// the error is about one field.
    pub fn field(&self) -> Option<&str> {
        match self {
            PolicyError::Invalid { field, .. } | PolicyError::Parse { field, .. }
                if !field.is_empty() =>
            {
                Some(field)
            }
            _ => None,
        }
    }

    /// The policy file at fault, when the policy was read by
    /// [`Policy::from_path`].
    pub fn file(&self) -> Option<&Path> {
        match self {
            PolicyError::Invalid { file, .. }
            | PolicyError::Parse { file, .. }
            | PolicyError::FormatDisabled { file, .. } => file.as_deref(),
            PolicyError::Read { file, .. } | PolicyError::UnknownFormat { file } => Some(file),
        }
    }

    /// Line and column (from 1) of the problem in the text, when the
    /// format's parser says.
    pub fn line_column(&self) -> Option<(usize, usize)> {
        match *self {
            PolicyError::Parse {
                line: Some(line),
                column: Some(column),
                ..
            } => Some((line, column)),
            _ => None,
        }
    }

    /// The same error, said to come from `path`.
    fn in_file(mut self, path: &Path) -> Self {
        match &mut self {
            PolicyError::Invalid { file, .. }
            | PolicyError::Parse { file, .. }
            | PolicyError::FormatDisabled { file, .. } => *file = Some(path.to_owned()),
            PolicyError::Read { .. } | PolicyError::UnknownFormat { .. } => {}
        }
        self
    }

    /// A [`Parse`](Self::Parse) error at `field` (serde_path_to_error's
    /// rendering of the path: `.` for the top).
    #[cfg(any(feature = "toml", feature = "yaml", feature = "json"))]
    fn parse(
        format: Format,
        field: String,
        message: String,
        line_column: Option<(usize, usize)>,
    ) -> Self {
        // serde_path_to_error says `.` for the top and `?` for a place it
        // could not name (inside a YAML syntax error, say).
        let mut field = field.as_str();
        while let Some(known) = field.strip_suffix(".?") {
            field = known;
        }
        if field == "." || field == "?" {
            field = "";
        }
        PolicyError::Parse {
            format,
            field: field.to_owned(),
            message: plain_types(format, message),
            line: line_column.map(|(line, _)| line),
            column: line_column.map(|(_, column)| column),
            file: None,
        }
    }
}

/// serde says `expected struct BreakerPolicy` when a section is not one,
/// and `expected a map` when `routes` is not one; say it in the format's
/// words.
#[cfg(any(feature = "toml", feature = "yaml", feature = "json"))]
fn plain_types(format: Format, message: String) -> String {
    const RUST: &str = "expected struct ";
    const MAP: &str = "expected a map";
    let section = match format {
        Format::Toml => "expected a table",
        Format::Yaml => "expected a mapping",
        Format::Json => "expected an object",
    };
    if let Some(start) = message.find(RUST) {
        let name_end = message[start + RUST.len()..]
            .find(|c: char| !c.is_alphanumeric() && c != '_')
            .map_or(message.len(), |end| start + RUST.len() + end);
        return format!("{}{section}{}", &message[..start], &message[name_end..]);
    }
    match message.strip_suffix(MAP) {
        Some(before) => format!("{before}{section}"),
        None => message,
    }
}

struct FilePrefix<'a>(&'a Option<PathBuf>);

impl fmt::Display for FilePrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(file) => write!(f, "{}: ", file.display()),
            None => Ok(()),
        }
    }
}

struct FieldPrefix<'a>(&'a str);

impl fmt::Display for FieldPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            Ok(())
        } else {
            write!(f, "{}: ", self.0)
        }
    }
}

struct Location(Option<usize>, Option<usize>);

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.0, self.1) {
            (Some(line), Some(column)) => write!(f, " line {line}, column {column}"),
            (Some(line), None) => write!(f, " line {line}"),
            _ => Ok(()),
        }
    }
}

struct Extension<'a>(&'a Path);

impl fmt::Display for Extension<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.extension() {
            Some(extension) => write!(f, "the extension `.{}`", extension.to_string_lossy()),
            None => f.write_str("a name without an extension"),
        }
    }
}

/// serde_path_to_error's rendering of `path` (`.` for the top, `?` for a
/// place it could not name), but with a route key quoted as in the file:
/// `routes."/payments".limit.initial`, not `routes./payments.limit.initial`.
#[cfg(any(feature = "toml", feature = "yaml", feature = "json"))]
fn field_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;

    let segments: Vec<&Segment> = path.iter().collect();
    let in_routes = matches!(segments.first(), Some(Segment::Map { key }) if key == "routes");
    let mut out = String::new();
    for (i, segment) in segments.iter().enumerate() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } if in_routes && i == 1 => out = route::route_path(key),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

/// Line and column, from 1, of byte `offset` in `text`; the column counts
/// characters. Never panics, whatever the offset.
#[cfg(feature = "toml")]
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |newline| newline + 1);
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

#[cfg(feature = "toml")]
fn parse_toml(text: &str) -> Result<Policy, PolicyError> {
    let error = |field: String, err: toml::de::Error| {
        PolicyError::parse(
            Format::Toml,
            field,
            err.message().trim_end().to_owned(),
            err.span().map(|span| line_column(text, span.start)),
        )
    };
    let document = toml::Deserializer::parse(text).map_err(|err| error(String::new(), err))?;
    serde_path_to_error::deserialize(document)
        .map_err(|err| error(field_path(err.path()), err.into_inner()))
}

#[cfg(feature = "yaml")]
fn parse_yaml(text: &str) -> Result<Policy, PolicyError> {
    let document = serde_yaml_ng::Deserializer::from_str(text);
    match serde_path_to_error::deserialize(document) {
        Ok(policy) => Ok(policy),
        Err(err) => {
            let field = field_path(err.path());
            // serde_yaml_ng writes paths as serde_path_to_error does.
            let yaml_field = err.path().to_string();
            let err = err.into_inner();
            if matches!(err.to_string().as_str(), "EOF while parsing a value") {
                // A document with nothing in it (or only comments).
                return Ok(Policy::default());
            }
            let location = err.location().map(|at| (at.line(), at.column()));
            // serde_yaml_ng's message says the path and the place itself;
            // keep only what is wrong, as the other formats do.
            let mut message = err.to_string();
            if let Some((line, column)) = location {
                let place = format!(" at line {line} column {column}");
                if let Some(start) = message.find(&place) {
                    message.replace_range(start..start + place.len(), "");
                }
            }
            // Its path is the section's for an unknown field, ours names the
            // field itself: drop whichever prefix of ours it starts with.
            let message = prefixes(&yaml_field)
                .find_map(|path| message.strip_prefix(&format!("{path}: ")))
                .unwrap_or(&message);
            Err(PolicyError::parse(
                Format::Yaml,
                field,
                message.to_owned(),
                location,
            ))
        }
    }
}

/// `a.b.c`, `a.b`, `a`: the paths of a field and of its sections, longest first.
#[cfg(feature = "yaml")]
fn prefixes(field: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(field), |path| path.rfind('.').map(|dot| &path[..dot]))
}

#[cfg(feature = "json")]
fn parse_json(text: &str) -> Result<Policy, PolicyError> {
    if text.trim().is_empty() {
        return Ok(Policy::default());
    }
    let error = |field: String, err: serde_json::Error| {
        let location = (err.line() > 0).then(|| (err.line(), err.column()));
        let mut message = err.to_string();
        if let Some((line, column)) = location {
            let place = format!(" at line {line} column {column}");
            if let Some(stripped) = message.strip_suffix(&place) {
                message.truncate(stripped.len());
            }
        }
        // serde_json says column 0 for the start of a line.
        let location = location.map(|(line, column)| (line, column.max(1)));
        PolicyError::parse(Format::Json, field, message, location)
    };
    let mut document = serde_json::Deserializer::from_str(text);
    let policy = serde_path_to_error::deserialize(&mut document)
        .map_err(|err| error(field_path(err.path()), err.into_inner()))?;
    document.end().map_err(|err| error(String::new(), err))?;
    Ok(policy)
}
