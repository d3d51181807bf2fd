//! Metric names (stable, part of the contract with ops) and the handles a
//! route keeps so that the hot path never builds a metric key.
//!
//! brownout emits through the [`metrics`] facade; the application picks the
//! exporter (Prometheus, StatsD, …). Install the recorder before building
//! the layers: handles are registered once, when a layer (or a route of a
//! keyed layer) is built, and a request only bumps them. With no recorder a
//! handle is a no-op. The shared `overflow` gate (routes or keys beyond
//! the layer's bound) registers its series at its first use, so a service
//! that never overflows exports none.
//!
//! | name | kind | labels | meaning |
//! |---|---|---|---|
//! | `brownout_requests_total` | counter | `route`, `outcome`, `reason` | every request's one outcome: `served` (the inner service answered), `rejected` (with its reason; a rejection a fallback answered is counted here too), `cancelled` (the caller dropped the request before its answer); in shadow mode also `would_reject` (with the reason enforce mode would have given) and `would_wait` (a request the waiting room would have held), both of which were served |
//! | `brownout_breaker_state` | gauge | `route` | 0 closed, 1 half-open, 2 open, 3 forced open; forced closed lets every call through and reads 0 (its transitions say `to="forced_closed"`) |
//! | `brownout_breaker_throttle` | gauge | `route` | the share of new calls a closed breaker turns away (`trip = "throttle"`): 0 while the back end is within the thresholds, growing to 1 as it fails past them |
//! | `brownout_breaker_transitions_total` | counter | `route`, `from`, `to` | state changes |
//! | `brownout_latency_seconds` | histogram | `route`, `outcome` | time to the inner answer of served calls, `outcome` = `success` or `failure` |
//! | `brownout_limit` | gauge | `route` | calls the adaptive limit allows in flight |
//! | `brownout_inflight` | gauge | `route` | calls in flight, sampled at each limit update |
//! | `brownout_shed_total` | counter | `route`, `priority` | requests shed by the limit, by class |
//! | `brownout_waiting` | gauge | `route`, `priority` | requests in the waiting room |
//! | `brownout_wait_seconds` | histogram | `route`, `priority` | time in the waiting room of requests that left it with a permit |
//! | `brownout_shared_state_errors_total` | counter | `state` | calls to the shared state (Redis) that failed or ran past their deadline; `state` = `budget` |
//!
//! # Histograms in Prometheus
//!
//! `brownout_latency_seconds` and `brownout_wait_seconds` are histograms in
//! the `metrics` facade. `metrics-exporter-prometheus` renders a histogram
//! as a Prometheus *summary* (quantiles computed in the process, which
//! cannot be added up across replicas) unless it is given buckets. Give it
//! [`SECONDS_BUCKETS`] (1 ms to 30 s) for both, or your own:
//!
//! ```
//! use brownout::metrics::{LATENCY_SECONDS, SECONDS_BUCKETS, WAIT_SECONDS};
//! use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
//!
//! let builder = PrometheusBuilder::new()
//!     .set_buckets_for_metric(Matcher::Full(LATENCY_SECONDS.into()), &SECONDS_BUCKETS)
//!     .unwrap()
//!     .set_buckets_for_metric(Matcher::Full(WAIT_SECONDS.into()), &SECONDS_BUCKETS)
//!     .unwrap();
//! // builder.install_recorder() before building the layers.
//! # let _ = builder;
//! ```
//!
//! Then `histogram_quantile(0.99, sum by (route, le)
//! (rate(brownout_latency_seconds_bucket[5m])))` is the p99 over every
//! replica. The buckets are the upper bounds, in seconds: `0.001`,
//! `0.0025`, `0.005`, `0.01`, `0.025`, `0.05`, `0.1`, `0.25`, `0.5`, `1`,
//! `2.5`, `5`, `10`, `30`; choose bounds around your back end's latency
//! target and the waiting room's `max_wait`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use metrics::{Counter, Gauge, Histogram, SharedString, Unit};

use crate::priority::{Classes, Priority};
use crate::reject::Reason;

/// Requests by outcome and reason.
pub const REQUESTS_TOTAL: &str = "brownout_requests_total";
/// Breaker state: 0 closed (or forced closed), 1 half-open, 2 open,
/// 3 forced open.
pub const BREAKER_STATE: &str = "brownout_breaker_state";
/// The share of new calls a closed, throttling breaker turns away.
pub const BREAKER_THROTTLE: &str = "brownout_breaker_throttle";
/// Breaker state changes, by `from` and `to`.
pub const BREAKER_TRANSITIONS_TOTAL: &str = "brownout_breaker_transitions_total";
/// Time to the inner service's answer, for served requests.
pub const LATENCY_SECONDS: &str = "brownout_latency_seconds";
/// The adaptive limit: calls allowed in flight.
pub const LIMIT: &str = "brownout_limit";
/// Calls in flight to the back end (sampled when the limit is updated).
pub const INFLIGHT: &str = "brownout_inflight";
/// Requests shed by the limit, by priority class.
pub const SHED_TOTAL: &str = "brownout_shed_total";
/// Requests waiting in the waiting room, by priority class.
pub const WAITING: &str = "brownout_waiting";
/// Time spent in the waiting room by requests that left it with a permit.
pub const WAIT_SECONDS: &str = "brownout_wait_seconds";

/// Histogram bucket bounds, in seconds, for [`LATENCY_SECONDS`] and
/// [`WAIT_SECONDS`]: 1, 2.5 and 5 per decade from 1 ms, up to 30 s. See the
/// [module docs](self#histograms-in-prometheus) for how to give them to
/// `metrics-exporter-prometheus`.
pub const SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Calls to the shared state (Redis) that failed or ran past their
/// deadline, by `state` (`budget`): each one left a replica deciding
/// from local state.
pub const SHARED_STATE_ERRORS_TOTAL: &str = "brownout_shared_state_errors_total";

/// Label value of `reason` where no reason applies (served, cancelled).
pub const NO_REASON: &str = "none";

/// Describes every metric once per process, so exporters show units and help.
pub fn describe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        metrics::describe_counter!(
            REQUESTS_TOTAL,
            Unit::Count,
            "Requests by outcome (served, rejected, cancelled; would_reject and would_wait in shadow mode) and reason"
        );
        metrics::describe_gauge!(
            BREAKER_STATE,
            Unit::Count,
            "Circuit breaker state: 0 closed (or forced closed: every call goes through), 1 half-open, 2 open, 3 forced open (every call rejected)"
        );
        metrics::describe_gauge!(
            BREAKER_THROTTLE,
            Unit::Count,
            "Share of new calls a closed breaker turns away while the back end fails or is slow past its thresholds but still serves (trip = throttle), 0 to 1"
        );
        metrics::describe_counter!(
            BREAKER_TRANSITIONS_TOTAL,
            Unit::Count,
            "Circuit breaker state changes by from and to"
        );
        metrics::describe_histogram!(
            LATENCY_SECONDS,
            Unit::Seconds,
            "Time to the inner service's answer for served requests"
        );
        metrics::describe_gauge!(
            LIMIT,
            Unit::Count,
            "Calls the adaptive limit allows in flight"
        );
        metrics::describe_gauge!(
            INFLIGHT,
            Unit::Count,
            "Calls in flight to the back end, sampled at each limit update"
        );
        metrics::describe_counter!(
            SHED_TOTAL,
            Unit::Count,
            "Requests shed by the limit, by priority class"
        );
        metrics::describe_gauge!(
            WAITING,
            Unit::Count,
            "Requests in the waiting room, by priority class"
        );
        metrics::describe_histogram!(
            WAIT_SECONDS,
            Unit::Seconds,
            "Time in the waiting room of requests that left it with a permit, by priority class"
        );
        metrics::describe_counter!(
            SHARED_STATE_ERRORS_TOTAL,
            Unit::Count,
            "Calls to the shared state (Redis) that failed or ran past their deadline, by state; each left a replica deciding from local state"
        );
        // The deferral's own (feature `defer`).
        #[cfg(feature = "defer")]
        crate::defer::describe();
    });
}

/// The outcome label values of [`REQUESTS_TOTAL`].
pub(crate) mod outcome {
    pub(crate) const SERVED: &str = "served";
    pub(crate) const REJECTED: &str = "rejected";
    pub(crate) const CANCELLED: &str = "cancelled";
    pub(crate) const WOULD_REJECT: &str = "would_reject";
    pub(crate) const WOULD_WAIT: &str = "would_wait";
}

/// The handles one route bumps per request, registered once: when the
/// route's gate is built, or, for the shared `overflow` gate, at its first
/// use (a stack that never overflows exports no `overflow` series).
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    route: SharedString,
    handles: Registered,
}

/// A route's handles, registered now or at first use. The handles of a
/// route registered now are kept inline: no pointer to follow per request.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Registered {
    Now(Handles),
    Lazy(Box<Lazy>),
}

/// What a lazily registered route needs to register its handles, and the
/// gauges' values set before it did.
#[derive(Debug)]
struct Lazy {
    handles: OnceLock<Handles>,
    limit_classes: Option<Classes>,
    room_classes: Option<Classes>,
    /// `f64` bits of the last breaker state set.
    breaker_state: AtomicU64,
    limit: AtomicU32,
    inflight: AtomicU32,
}

/// The handles themselves.
#[derive(Debug)]
struct Handles {
    served: Counter,
    cancelled: Counter,
    rejected: [Counter; Reason::ALL.len()],
    would_reject: [Counter; Reason::ALL.len()],
    would_wait: Counter,
    latency_success: Histogram,
    latency_failure: Histogram,
    breaker_state: Gauge,
    breaker_throttle: Gauge,
    limit: Gauge,
    inflight: Gauge,
    /// One per priority class, by rank; empty without a limit.
    shed: Box<[Counter]>,
    /// One per priority class, by rank; empty without a waiting room.
    waiting: Box<[Gauge]>,
    wait_seconds: Box<[Histogram]>,
}

impl Handles {
    fn register(
        route: &SharedString,
        limit_classes: Option<&Classes>,
        room_classes: Option<&Classes>,
    ) -> Self {
        let per_class = |classes: Option<&Classes>| -> Vec<String> {
            classes
                .map(|classes| {
                    (0..classes.len())
                        .map(|rank| classes.name(Priority::new(rank as u8)).to_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        describe();
        let requests = |outcome: &'static str, reason: &'static str| metrics::counter!(REQUESTS_TOTAL, "route" => route.clone(), "outcome" => outcome, "reason" => reason);
        let latency = |outcome: &'static str| metrics::histogram!(LATENCY_SECONDS, "route" => route.clone(), "outcome" => outcome);
        Self {
            served: requests(outcome::SERVED, NO_REASON),
            cancelled: requests(outcome::CANCELLED, NO_REASON),
            rejected: Reason::ALL.map(|r| requests(outcome::REJECTED, r.as_str())),
            would_reject: Reason::ALL.map(|r| requests(outcome::WOULD_REJECT, r.as_str())),
            would_wait: requests(outcome::WOULD_WAIT, NO_REASON),
            latency_success: latency("success"),
            latency_failure: latency("failure"),
            breaker_state: metrics::gauge!(BREAKER_STATE, "route" => route.clone()),
            breaker_throttle: metrics::gauge!(BREAKER_THROTTLE, "route" => route.clone()),
            limit: metrics::gauge!(LIMIT, "route" => route.clone()),
            inflight: metrics::gauge!(INFLIGHT, "route" => route.clone()),
            shed: per_class(limit_classes)
                .into_iter()
                .map(|name| metrics::counter!(SHED_TOTAL, "route" => route.clone(), "priority" => name))
                .collect(),
            waiting: per_class(room_classes)
                .into_iter()
                .map(|name| metrics::gauge!(WAITING, "route" => route.clone(), "priority" => name))
                .collect(),
            wait_seconds: per_class(room_classes)
                .into_iter()
                .map(|name| metrics::histogram!(WAIT_SECONDS, "route" => route.clone(), "priority" => name))
                .collect(),
        }
    }
}

impl RouteMetrics {
    /// Handles for `route`; `limit_classes` names the priority classes
    /// whose sheds are counted (none for a route without a limit),
    /// `room_classes` those whose waits are measured (none without a room).
    /// The handles of the shared overflow gate (labelled
    /// [`OVERFLOW_KEY`](crate::breaker::OVERFLOW_KEY)) are registered at
    /// its first use.
    pub(crate) fn new(
        route: SharedString,
        limit_classes: Option<&Classes>,
        room_classes: Option<&Classes>,
    ) -> Self {
        describe();
        let handles = if &*route == crate::core::gate_map::OVERFLOW_KEY {
            Registered::Lazy(Box::new(Lazy {
                handles: OnceLock::new(),
                limit_classes: limit_classes.cloned(),
                room_classes: room_classes.cloned(),
                breaker_state: AtomicU64::new(0f64.to_bits()),
                limit: AtomicU32::new(0),
                inflight: AtomicU32::new(0),
            }))
        } else {
            Registered::Now(Handles::register(&route, limit_classes, room_classes))
        };
        Self { route, handles }
    }

    /// The handles, registered now if they were not yet.
    #[inline]
    fn handles(&self) -> &Handles {
        match &self.handles {
            Registered::Now(handles) => handles,
            Registered::Lazy(lazy) => lazy.handles.get_or_init(|| {
                let handles = Handles::register(
                    &self.route,
                    lazy.limit_classes.as_ref(),
                    lazy.room_classes.as_ref(),
                );
                handles
                    .breaker_state
                    .set(f64::from_bits(lazy.breaker_state.load(Ordering::Relaxed)));
                handles
                    .limit
                    .set(f64::from(lazy.limit.load(Ordering::Relaxed)));
                handles
                    .inflight
                    .set(f64::from(lazy.inflight.load(Ordering::Relaxed)));
                handles
            }),
        }
    }

    pub(crate) fn route(&self) -> &SharedString {
        &self.route
    }

    #[inline]
    pub(crate) fn served(&self, failed: bool, elapsed_secs: f64) {
        self.handles().served.increment(1);
        if failed {
            self.handles().latency_failure.record(elapsed_secs);
        } else {
            self.handles().latency_success.record(elapsed_secs);
        }
    }

    #[inline]
    pub(crate) fn cancelled(&self) {
        self.handles().cancelled.increment(1);
    }

    #[inline]
    pub(crate) fn rejected(&self, reason: Reason) {
        self.handles().rejected[reason as usize].increment(1);
    }

    #[inline]
    pub(crate) fn would_reject(&self, reason: Reason) {
        self.handles().would_reject[reason as usize].increment(1);
    }

    /// Shadow mode let through a request the waiting room would have held.
    #[inline]
    pub(crate) fn would_wait(&self) {
        self.handles().would_wait.increment(1);
    }

    #[inline]
    pub(crate) fn shed(&self, priority: Priority) {
        if let Some(counter) = self.handles().shed.get(usize::from(priority.rank())) {
            counter.increment(1);
        }
    }

    /// Moves the waiting gauge of `priority` by `delta`.
    pub(crate) fn waiting(&self, priority: Priority, delta: f64) {
        if let Some(gauge) = self.handles().waiting.get(usize::from(priority.rank())) {
            gauge.increment(delta);
        }
    }

    /// Records a wait that ended with a permit.
    pub(crate) fn waited(&self, priority: Priority, nanos: u64) {
        if let Some(histogram) = self
            .handles()
            .wait_seconds
            .get(usize::from(priority.rank()))
        {
            histogram.record(nanos as f64 * 1e-9);
        }
    }

    pub(crate) fn limit(&self, limit: u32, inflight: u32) {
        let handles = match &self.handles {
            Registered::Now(handles) => handles,
            Registered::Lazy(lazy) => {
                lazy.limit.store(limit, Ordering::Relaxed);
                lazy.inflight.store(inflight, Ordering::Relaxed);
                match lazy.handles.get() {
                    Some(handles) => handles,
                    None => return,
                }
            }
        };
        handles.limit.set(f64::from(limit));
        handles.inflight.set(f64::from(inflight));
    }

    pub(crate) fn breaker_state(&self, value: f64) {
        let handles = match &self.handles {
            Registered::Now(handles) => handles,
            Registered::Lazy(lazy) => {
                lazy.breaker_state.store(value.to_bits(), Ordering::Relaxed);
                match lazy.handles.get() {
                    Some(handles) => handles,
                    None => return,
                }
            }
        };
        handles.breaker_state.set(value);
    }

    /// The share a throttling breaker turns away moved (rare: only while
    /// the back end fails past a threshold); a use, for a lazy route.
    pub(crate) fn breaker_throttle(&self, share: f64) {
        self.handles().breaker_throttle.set(share);
    }

    /// Counts a breaker transition. Transitions are rare, so the handle is
    /// looked up here rather than kept.
    pub(crate) fn breaker_transition(&self, from: &'static str, to: &'static str) {
        // A transition is a use: a lazy route registers its handles.
        let _ = self.handles();
        metrics::counter!(BREAKER_TRANSITIONS_TOTAL, "route" => self.route.clone(), "from" => from, "to" => to)
            .increment(1);
    }
}
