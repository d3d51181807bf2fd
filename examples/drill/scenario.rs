//! The scenario file: the simulated back end, the clients, and the phases of
//! an outage. Read from TOML, checked, then resolved against the policy's
//! priority classes into a [`Plan`] the drill runs.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use brownout::priority::Classes;
use brownout::sim::{Abandoned, Condition, ServiceTime};
use serde::Deserialize;

/// The built-in scenario, `examples/scenarios/seed.toml`.
pub const SEED: &str = include_str!("../scenarios/seed.toml");
/// Where the built-in scenario lives, for messages.
pub const SEED_PATH: &str = "examples/scenarios/seed.toml";

/// More requests than this in one scenario is a typo, not a drill.
const MAX_REQUESTS: f64 = 20_000_000.0;
/// Longest timeout, deadline, retry wait or flapping period.
const MAX_WAIT: Duration = Duration::from_secs(86_400);
/// Longest scenario.
const MAX_TOTAL: Duration = Duration::from_secs(366 * 86_400);

/// `Err` naming `field` if `value` is longer than `MAX_WAIT`.
fn at_most_a_day(field: &str, value: Duration) -> Result<(), ScenarioError> {
    if value > MAX_WAIT {
        return Err(ScenarioError::new(
            field,
            format!(
                "{} is longer than the drill's limit of a day",
                humantime::format_duration(value)
            ),
        ));
    }
    Ok(())
}

/// A scenario as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Shown in the report.
    pub name: String,
    /// One line on what the scenario replays.
    #[serde(default)]
    pub description: String,
    /// Seeds the arrivals, the classes and the back end's service times.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// The simulated back end both stacks sit in front of.
    pub backend: Backend,
    /// What every phase's clients do unless the phase says otherwise.
    #[serde(default)]
    pub clients: Clients,
    /// The plain tower stack's settings.
    #[serde(default)]
    pub baseline: Baseline,
    /// The phases, in order.
    pub phases: Vec<Phase>,
    /// Durable deferral in the brownout stack: what its rejections during
    /// the outage become (none without the section).
    #[serde(default)]
    pub defer: Option<DeferSection>,
}

/// The `[defer]` section: brownout's stack defers what it rejects for the
/// `when` reasons into a real embedded store, and the crate's replayer
/// drains it through the same stack once the back end is back. The
/// baseline has no deferral: its rejections stay rejections.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeferSection {
    /// The classes whose requests are deferred, by the policy's names
    /// (every class when absent): a status poll is not worth replaying
    /// two days later, a booking is.
    #[serde(default)]
    pub classes: Option<Vec<String>>,
    /// The rejection reasons that defer (the policy's `when`; `open`,
    /// `maintenance` and `shed` when absent).
    #[serde(default)]
    pub when: Option<Vec<String>>,
    /// A deferred request older than this expires unreplayed (7 days when
    /// absent).
    #[serde(default, with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// Most requests pending at once; the next is answered as a plain
    /// rejection (100,000 when absent).
    #[serde(default)]
    pub max_pending: Option<u64>,
    /// The most of the limit replays hold while live traffic runs, in
    /// (0, 1] (0.5 when absent).
    #[serde(default)]
    pub replay_share: Option<f64>,
}

/// A `[defer]` section, checked and resolved.
#[derive(Debug, Clone)]
pub struct DeferPlan {
    /// The route's defer policy (the store's path is chosen at run time).
    pub policy: brownout::policy::DeferPolicy,
    /// Whether each class (by rank) is deferred.
    pub classes: Vec<bool>,
    /// The phase in which the back end is back after its outage: the
    /// backlog's drain is timed from its start.
    pub recovery: usize,
}

impl DeferPlan {
    /// When the drain starts, from the start of the run.
    pub fn recovery_start(&self, plan: &Plan) -> Duration {
        plan.phases[self.recovery].start
    }
}

fn default_seed() -> u64 {
    1
}

/// The `[backend]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// Calls served at once at full capacity.
    pub capacity: usize,
    /// How long one call takes at full health.
    pub service_time: ServiceTimeSpec,
    /// Both stacks give up on a back-end call after this long.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a down back end takes to refuse a call.
    #[serde(default = "default_down_latency", with = "humantime_serde")]
    pub down_latency: Duration,
    /// What the back end does with a call its client abandoned: `free`
    /// (the default: it notices and frees the slot) or `keep_working` (it
    /// serves the call out, holding the slot for its whole service time).
    #[serde(default)]
    pub abandoned: AbandonedSpec,
}

/// `abandoned = "keep_working"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AbandonedSpec {
    /// The slot is freed when the client goes away.
    #[default]
    Free,
    /// The back end works on until the call's service time ends.
    KeepWorking,
}

impl AbandonedSpec {
    pub fn to_sim(self) -> Abandoned {
        match self {
            AbandonedSpec::Free => Abandoned::Free,
            AbandonedSpec::KeepWorking => Abandoned::KeepWorking,
        }
    }
}

fn default_down_latency() -> Duration {
    Duration::from_millis(1)
}

/// `service_time = { kind = "log_normal", mean = "400ms", cv = 0.3 }`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServiceTimeSpec {
    /// Every call takes `mean`.
    Constant {
        /// The service time.
        #[serde(with = "humantime_serde")]
        mean: Duration,
    },
    /// Exponentially distributed.
    Exponential {
        /// The mean service time.
        #[serde(with = "humantime_serde")]
        mean: Duration,
    },
    /// Log-normally distributed.
    LogNormal {
        /// The mean service time.
        #[serde(with = "humantime_serde")]
        mean: Duration,
        /// Standard deviation / mean.
        cv: f64,
    },
    /// Gamma-distributed: cv 1 is exponential, above 1 a heavier tail.
    Gamma {
        /// The mean service time.
        #[serde(with = "humantime_serde")]
        mean: Duration,
        /// Standard deviation / mean.
        cv: f64,
    },
    /// Pareto-distributed: a power-law tail of index `alpha` (> 1).
    Pareto {
        /// The mean service time.
        #[serde(with = "humantime_serde")]
        mean: Duration,
        /// Tail index: the lower, the heavier (infinite variance at 2 and
        /// below).
        alpha: f64,
    },
}

impl ServiceTimeSpec {
    pub fn to_sim(self) -> ServiceTime {
        match self {
            ServiceTimeSpec::Constant { mean } => ServiceTime::Constant(mean),
            ServiceTimeSpec::Exponential { mean } => ServiceTime::Exponential { mean },
            ServiceTimeSpec::LogNormal { mean, cv } => ServiceTime::LogNormal { mean, cv },
            ServiceTimeSpec::Gamma { mean, cv } => ServiceTime::Gamma { mean, cv },
            ServiceTimeSpec::Pareto { mean, alpha } => ServiceTime::Pareto { mean, alpha },
        }
    }

    pub fn mean(self) -> Duration {
        self.to_sim().mean()
    }

    /// Checks the parameters; errors name `at`'s fields.
    fn check(self, at: &str) -> Result<(), ScenarioError> {
        let mean = self.mean();
        if mean.is_zero() {
            return Err(ScenarioError::new(
                format!("{at}.mean"),
                "0s: a call must take some time",
            ));
        }
        at_most_a_day(&format!("{at}.mean"), mean)?;
        match self {
            ServiceTimeSpec::LogNormal { cv, .. } | ServiceTimeSpec::Gamma { cv, .. }
                if !(cv.is_finite() && cv >= 0.0) =>
            {
                Err(ScenarioError::new(
                    format!("{at}.cv"),
                    format!("{cv} is not a finite number >= 0"),
                ))
            }
            ServiceTimeSpec::Pareto { alpha, .. } if !(alpha.is_finite() && alpha > 1.0) => {
                Err(ScenarioError::new(
                    format!("{at}.alpha"),
                    format!(
                        "{alpha} is not a finite number > 1 (a Pareto tail index of 1 or less has no mean)"
                    ),
                ))
            }
            _ => brownout::sim::Change::ServiceTime(self.to_sim())
                .validate()
                .map_err(|err| ScenarioError::new(at, err.to_string())),
        }
    }
}

/// The `[clients]` section: defaults for every phase.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Clients {
    /// A client gives up on a request after this long.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// Shares of the priority classes, by the policy's class names.
    pub mix: BTreeMap<String, f64>,
    /// Retries of a request that was not served (0: none).
    pub retries: u32,
    /// Wait before a retry when the answer gave no `Retry-After`.
    #[serde(with = "humantime_serde")]
    pub retry_default: Duration,
    /// A client told to come back later than this gives up instead.
    #[serde(with = "humantime_serde")]
    pub retry_max_wait: Duration,
}

impl Default for Clients {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(5),
            mix: [("urgent", 0.1), ("normal", 0.6), ("bulk", 0.3)]
                .into_iter()
                .map(|(name, share)| (name.to_owned(), share))
                .collect(),
            retries: 0,
            retry_default: Duration::from_secs(1),
            retry_max_wait: Duration::from_secs(300),
        }
    }
}

/// The `[baseline]` section: the plain tower stack.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Baseline {
    /// `ConcurrencyLimit`'s size; the back end's full capacity if unset.
    pub concurrency: Option<usize>,
}

/// One `[[phases]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// Shown in the report.
    pub name: String,
    /// How long the phase lasts.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// The back end's condition during the phase.
    #[serde(default)]
    pub backend: BackendState,
    /// Overrides `backend.service_time` for the calls made during the
    /// phase.
    #[serde(default)]
    pub service_time: Option<ServiceTimeSpec>,
    /// Offered load: new requests a second (Poisson arrivals; retries come
    /// on top).
    pub rate: f64,
    /// Overrides `clients.deadline`.
    #[serde(default, with = "humantime_serde")]
    pub deadline: Option<Duration>,
    /// Overrides `clients.mix`.
    #[serde(default)]
    pub mix: Option<BTreeMap<String, f64>>,
    /// Overrides `clients.retries`.
    #[serde(default)]
    pub retries: Option<u32>,
    /// Marks a planned maintenance window, with the message users get.
    #[serde(default)]
    pub maintenance: Option<String>,
}

/// `backend = { state = "slow", factor = 4.0, capacity = 0.27 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendState {
    /// `up`, `slow`, `down` (refuses at once), `hang` (down, never
    /// answers) or `flapping`.
    #[serde(default)]
    pub state: State,
    /// `slow` only: service times × this.
    #[serde(default)]
    pub factor: Option<f64>,
    /// `flapping` only: one up-then-down cycle.
    #[serde(default, with = "humantime_serde")]
    pub period: Option<Duration>,
    /// Share of the full capacity (1 unless set).
    #[serde(default = "one")]
    pub capacity: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for BackendState {
    fn default() -> Self {
        Self {
            state: State::Up,
            factor: None,
            period: None,
            capacity: 1.0,
        }
    }
}

/// The back end's state in a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Healthy.
    #[default]
    Up,
    /// Service times × `factor`.
    Slow,
    /// Down, refusing every call at once.
    Down,
    /// Down, every call hanging until the caller gives up.
    Hang,
    /// Up and down in turn, each half a `period`.
    Flapping,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Slow => "slow",
            State::Down => "down",
            State::Hang => "hang",
            State::Flapping => "flapping",
        }
    }
}

/// A bad scenario: the field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioError {
    /// The field's path in the file, e.g. `phases[2].backend.factor`.
    pub field: String,
    /// What is wrong.
    pub message: String,
    /// Line and column in the file, when known.
    pub at: Option<(usize, usize)>,
}

impl ScenarioError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            at: None,
        }
    }
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)?;
        if let Some((line, column)) = self.at {
            write!(f, " (line {line}, column {column})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ScenarioError {}

impl Scenario {
    /// Reads a scenario from TOML; errors name the field.
    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        let located = |field: String, err: toml::de::Error| ScenarioError {
            field,
            message: err.message().trim_end().to_owned(),
            at: err.span().map(|span| line_column(text, span.start)),
        };
        let document = toml::Deserializer::parse(text).map_err(|err| located(".".into(), err))?;
        serde_path_to_error::deserialize(document).map_err(|err| {
            let field = err.path().to_string();
            located(field, err.into_inner())
        })
    }

    /// Checks the scenario and resolves the class names of its mixes
    /// against `classes` (the policy's).
    pub fn plan(&self, classes: &Classes) -> Result<Plan, ScenarioError> {
        let backend = &self.backend;
        if backend.capacity == 0 {
            return Err(ScenarioError::new(
                "backend.capacity",
                "0 calls at once: the back end needs a capacity of at least 1",
            ));
        }
        backend.service_time.check("backend.service_time")?;
        at_most_a_day("backend.timeout", backend.timeout)?;
        at_most_a_day("backend.down_latency", backend.down_latency)?;
        at_most_a_day("clients.deadline", self.clients.deadline)?;
        at_most_a_day("clients.retry_default", self.clients.retry_default)?;
        at_most_a_day("clients.retry_max_wait", self.clients.retry_max_wait)?;
        if backend.timeout.is_zero() {
            return Err(ScenarioError::new(
                "backend.timeout",
                "0s: the back-end call timeout must be more than zero",
            ));
        }
        if self.baseline.concurrency == Some(0) {
            return Err(ScenarioError::new(
                "baseline.concurrency",
                "0: the baseline's concurrency limit must be at least 1",
            ));
        }
        let clients = &self.clients;
        if clients.deadline.is_zero() {
            return Err(ScenarioError::new(
                "clients.deadline",
                "0s: a deadline must be more than zero",
            ));
        }
        let default_mix = resolve_mix("clients.mix", &clients.mix, classes)?;
        if self.phases.is_empty() {
            return Err(ScenarioError::new(
                "phases",
                "no phases: a scenario needs at least one [[phases]] entry",
            ));
        }

        let mut phases = Vec::with_capacity(self.phases.len());
        let mut start = Duration::ZERO;
        let mut requests = 0.0;
        for (i, phase) in self.phases.iter().enumerate() {
            let at = |field: &str| format!("phases[{i}].{field}");
            if phase.duration.is_zero() {
                return Err(ScenarioError::new(
                    at("duration"),
                    format!("0s: phase {:?} must last more than zero", phase.name),
                ));
            }
            if !(phase.rate.is_finite() && phase.rate >= 0.0) {
                return Err(ScenarioError::new(
                    at("rate"),
                    format!(
                        "{} is not a finite number of requests a second >= 0",
                        phase.rate
                    ),
                ));
            }
            requests += phase.rate * phase.duration.as_secs_f64();
            let deadline = phase.deadline.unwrap_or(clients.deadline);
            at_most_a_day(&at("deadline"), deadline)?;
            if let Some(period) = phase.backend.period {
                at_most_a_day(&at("backend.period"), period)?;
            }
            if deadline.is_zero() {
                return Err(ScenarioError::new(
                    at("deadline"),
                    "0s: a deadline must be more than zero",
                ));
            }
            let mix = match &phase.mix {
                Some(mix) => resolve_mix(&at("mix"), mix, classes)?,
                None => default_mix.clone(),
            };
            let condition = condition(&at("backend"), &phase.backend)?;
            let service_time = match phase.service_time {
                Some(spec) => {
                    spec.check(&at("service_time"))?;
                    spec.to_sim()
                }
                None => backend.service_time.to_sim(),
            };
            phases.push(PhasePlan {
                name: phase.name.clone(),
                start,
                duration: phase.duration,
                state: phase.backend.state,
                condition,
                capacity_fraction: phase.backend.capacity,
                factor: phase.backend.factor.unwrap_or(1.0),
                service_time,
                rate: phase.rate,
                deadline,
                mix,
                retries: phase.retries.unwrap_or(clients.retries),
                maintenance: phase.maintenance.clone(),
            });
            start = start.saturating_add(phase.duration);
            if start > MAX_TOTAL {
                return Err(ScenarioError::new(
                    at("duration"),
                    format!(
                        "the phases so far last {}, longer than the drill's limit of a year",
                        humantime::format_duration(start)
                    ),
                ));
            }
        }
        let defer = match &self.defer {
            Some(section) => Some(defer_plan(section, &phases, classes)?),
            None => None,
        };
        if requests > MAX_REQUESTS {
            return Err(ScenarioError::new(
                "phases",
                format!(
                    "about {requests:.0} requests in all: more than the drill's {MAX_REQUESTS:.0}; \
                     lower the rates or shorten the phases"
                ),
            ));
        }
        Ok(Plan {
            name: self.name.clone(),
            description: self.description.clone(),
            seed: self.seed,
            capacity: backend.capacity,
            service_time: backend.service_time.to_sim(),
            timeout: backend.timeout,
            down_latency: backend.down_latency,
            abandoned: backend.abandoned.to_sim(),
            baseline_concurrency: self.baseline.concurrency.unwrap_or(backend.capacity),
            retry_default: clients.retry_default,
            retry_max_wait: clients.retry_max_wait,
            total: start,
            phases,
            sample_every: None,
            defer,
        })
    }
}

/// Checks a `[defer]` section against the policy's classes and the
/// phases; errors name the field.
fn defer_plan(
    section: &DeferSection,
    phases: &[PhasePlan],
    classes: &Classes,
) -> Result<DeferPlan, ScenarioError> {
    let defaults = brownout::policy::DeferPolicy::default();
    let policy = brownout::policy::DeferPolicy {
        when: section.when.clone().unwrap_or(defaults.when.clone()),
        max_age: section.max_age.unwrap_or(defaults.max_age),
        max_pending: section.max_pending.unwrap_or(defaults.max_pending),
        replay_share: section.replay_share.unwrap_or(defaults.replay_share),
        ..defaults
    };
    policy.validate_at("defer").map_err(|err| {
        let text = err.to_string();
        // "defer.when: ..." -> field "defer.when".
        match text.split_once(": ") {
            Some((field, message)) if field.starts_with("defer") => {
                ScenarioError::new(field, message)
            }
            _ => ScenarioError::new("defer", text),
        }
    })?;
    let mut deferred = vec![section.classes.is_none(); classes.len()];
    for name in section.classes.iter().flatten() {
        let Some(priority) = classes.by_name(name) else {
            return Err(ScenarioError::new(
                "defer.classes",
                format!("{name:?} is not one of the policy's priority classes"),
            ));
        };
        deferred[usize::from(priority.rank())] = true;
    }
    if !deferred.contains(&true) {
        return Err(ScenarioError::new(
            "defer.classes",
            "[]: name at least one class, or remove the section",
        ));
    }
    let outage = phases
        .iter()
        .position(|p| matches!(p.state, State::Down | State::Hang));
    let recovery = outage.and_then(|first_down| {
        (first_down + 1..phases.len()).find(|&i| phases[i].state == State::Up)
    });
    let Some(recovery) = recovery else {
        return Err(ScenarioError::new(
            "defer",
            "no phase where the back end is up again after being down or hanging: \
             there is no backlog to drain",
        ));
    };
    Ok(DeferPlan {
        policy,
        classes: deferred,
        recovery,
    })
}

fn condition(at: &str, backend: &BackendState) -> Result<Condition, ScenarioError> {
    let field = |name: &str| format!("{at}.{name}");
    let state = backend.state.as_str();
    if !(backend.capacity.is_finite() && backend.capacity >= 0.0) {
        return Err(ScenarioError::new(
            field("capacity"),
            format!(
                "{} is not a finite share of the capacity >= 0",
                backend.capacity
            ),
        ));
    }
    match (backend.state, backend.factor) {
        (State::Slow, None) => {
            return Err(ScenarioError::new(
                field("factor"),
                "missing: state = \"slow\" needs a factor, e.g. factor = 4.0",
            ));
        }
        (State::Slow, Some(factor)) if !(factor.is_finite() && factor > 0.0) => {
            return Err(ScenarioError::new(
                field("factor"),
                format!("{factor} is not a finite number > 0"),
            ));
        }
        (State::Slow, _) | (_, None) => {}
        (_, Some(factor)) => {
            return Err(ScenarioError::new(
                field("factor"),
                format!(
                    "{factor} given for state = {state:?}: only state = \"slow\" takes a factor"
                ),
            ));
        }
    }
    match (backend.state, backend.period) {
        (State::Flapping, None) => {
            return Err(ScenarioError::new(
                field("period"),
                "missing: state = \"flapping\" needs a period, e.g. period = \"2m\"",
            ));
        }
        (State::Flapping, Some(period)) if period.is_zero() => {
            return Err(ScenarioError::new(
                field("period"),
                "0s: a flapping period must be more than zero",
            ));
        }
        (State::Flapping, _) | (_, None) => {}
        (_, Some(period)) => {
            return Err(ScenarioError::new(
                field("period"),
                format!(
                    "{} given for state = {state:?}: only state = \"flapping\" takes a period",
                    humantime::format_duration(period)
                ),
            ));
        }
    }
    Ok(match backend.state {
        State::Up => Condition::Up,
        State::Slow => Condition::Slow {
            factor: backend.factor.unwrap_or(1.0),
        },
        State::Down => Condition::DownFast,
        State::Hang => Condition::DownHang,
        State::Flapping => Condition::Flapping {
            period: backend.period.unwrap_or(Duration::from_secs(60)),
        },
    })
}

/// Cumulative shares by class rank, checked to add up to 1.
fn resolve_mix(
    at: &str,
    mix: &BTreeMap<String, f64>,
    classes: &Classes,
) -> Result<Mix, ScenarioError> {
    let mut shares = vec![0.0; classes.len()];
    for (name, &share) in mix {
        let Some(priority) = classes.by_name(name) else {
            let known: Vec<&str> = (0..classes.len())
                .map(|rank| classes.name(brownout::Priority::new(rank as u8)))
                .collect();
            return Err(ScenarioError::new(
                format!("{at}.{name}"),
                format!("{name:?} is not one of the policy's priority classes {known:?}"),
            ));
        };
        if !(share.is_finite() && share >= 0.0) {
            return Err(ScenarioError::new(
                format!("{at}.{name}"),
                format!("{share} is not a finite share >= 0"),
            ));
        }
        shares[usize::from(priority.rank())] += share;
    }
    let sum: f64 = shares.iter().sum();
    if (sum - 1.0).abs() > 1e-3 {
        return Err(ScenarioError::new(
            at,
            format!("the shares add up to {sum}, not 1"),
        ));
    }
    Ok(Mix { shares })
}

/// The share of each class, by rank.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    pub shares: Vec<f64>,
}

impl Mix {
    /// The class of a request whose uniform draw is `u` in [0, 1).
    pub fn pick(&self, u: f64) -> u8 {
        let mut acc = 0.0;
        let mut last = 0;
        for (rank, share) in self.shares.iter().enumerate() {
            if *share <= 0.0 {
                continue;
            }
            acc += share;
            last = rank;
            if u < acc {
                return rank as u8;
            }
        }
        last as u8
    }
}

/// A checked scenario, ready to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub description: String,
    pub seed: u64,
    pub capacity: usize,
    pub service_time: ServiceTime,
    pub timeout: Duration,
    pub down_latency: Duration,
    pub abandoned: Abandoned,
    pub baseline_concurrency: usize,
    pub retry_default: Duration,
    pub retry_max_wait: Duration,
    pub total: Duration,
    pub phases: Vec<PhasePlan>,
    /// How often the chart's time series is sampled (`--sample-every`).
    pub sample_every: Option<Duration>,
    /// The `[defer]` section, if the scenario has one.
    pub defer: Option<DeferPlan>,
}

/// One phase, resolved.
#[derive(Debug, Clone)]
pub struct PhasePlan {
    pub name: String,
    pub start: Duration,
    pub duration: Duration,
    pub state: State,
    pub condition: Condition,
    pub capacity_fraction: f64,
    pub factor: f64,
    /// The service times of calls made in this phase.
    pub service_time: ServiceTime,
    pub rate: f64,
    pub deadline: Duration,
    pub mix: Mix,
    pub retries: u32,
    pub maintenance: Option<String>,
}

impl PhasePlan {
    pub fn end(&self) -> Duration {
        self.start.saturating_add(self.duration)
    }

    /// Calls the back end can complete a second in this phase, at most:
    /// its slots over its mean service time (× the slow factor), half of
    /// that while flapping, none while down.
    pub fn throughput(&self, plan: &Plan) -> f64 {
        let slots = slots(plan.capacity, self.capacity_fraction) as f64;
        let service = self.service_time.mean().as_secs_f64();
        match self.state {
            State::Up => slots / service,
            State::Slow => slots / (service * self.factor),
            State::Flapping => slots / service / 2.0,
            State::Down | State::Hang => 0.0,
        }
    }

    /// A one-line description of the back end's condition.
    pub fn describe(&self, plan: &Plan) -> String {
        let mut out = match self.condition {
            Condition::Slow { factor } => format!("slow x{factor}"),
            Condition::Flapping { period } => {
                format!("flapping every {}", humantime::format_duration(period))
            }
            _ => self.state.as_str().to_owned(),
        };
        if self.service_time != plan.service_time {
            out.push_str(&format!(
                ", service time {}",
                describe_service_time(self.service_time)
            ));
        }
        if self.capacity_fraction != 1.0 {
            let slots = slots(plan.capacity, self.capacity_fraction);
            out.push_str(&format!(
                " at {:.0}% capacity ({slots} of {} slots)",
                self.capacity_fraction * 100.0,
                plan.capacity
            ));
        }
        if self.maintenance.is_some() {
            out.push_str(", planned maintenance");
        }
        out
    }
}

/// A service time distribution in a few words, e.g. `gamma mean 400ms cv 1`.
pub fn describe_service_time(st: ServiceTime) -> String {
    let mean = humantime::format_duration(st.mean());
    match st {
        ServiceTime::Constant(_) => format!("constant {mean}"),
        ServiceTime::Exponential { .. } => format!("exponential mean {mean}"),
        ServiceTime::LogNormal { cv, .. } => format!("log-normal mean {mean} cv {cv}"),
        ServiceTime::Gamma { cv, .. } => format!("gamma mean {mean} cv {cv}"),
        ServiceTime::Pareto { alpha, .. } => format!("Pareto mean {mean} alpha {alpha}"),
        other => format!("{other:?}"),
    }
}

/// The simulated back end's slots for a share of its capacity (as
/// `SimHandle::set_capacity_fraction` rounds it).
pub fn slots(capacity: usize, fraction: f64) -> usize {
    if fraction <= 0.0 {
        return 0;
    }
    ((capacity as f64 * fraction).round() as usize).max(1)
}

/// 1-based line and column of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Result<Plan, ScenarioError> {
        Scenario::from_toml(text)?.plan(&Classes::default())
    }

    const MINIMAL: &str = r#"
        name = "t"
        [backend]
        capacity = 10
        service_time = { kind = "constant", mean = "100ms" }
        timeout = "1s"
        [[phases]]
        name = "a"
        duration = "1m"
        rate = 10
    "#;

    #[test]
    fn the_seed_scenario_plans() {
        let plan = plan(SEED).unwrap();
        assert!(plan.phases.len() >= 7);
    }

    #[test]
    fn errors_name_the_field() {
        assert!(plan(MINIMAL).is_ok());
        let bad = MINIMAL.replace("rate = 10", "rate = 10\nbackend = { state = \"slow\" }");
        let err = plan(&bad).unwrap_err();
        assert_eq!(err.field, "phases[0].backend.factor");
        let bad = MINIMAL.replace("rate = 10", "rate = 10\nmix = { vip = 1.0 }");
        assert_eq!(plan(&bad).unwrap_err().field, "phases[0].mix.vip");
        let bad = MINIMAL.replace("rate = 10", "rate = 10\nmix = { urgent = 0.5 }");
        assert_eq!(plan(&bad).unwrap_err().field, "phases[0].mix");
        let bad = MINIMAL.replace("rate = 10", "rate = \"ten\"");
        assert_eq!(plan(&bad).unwrap_err().field, "phases[0].rate");
        let bad = MINIMAL.replace("duration = \"1m\"", "duration = \"1 fortnight\"");
        assert_eq!(plan(&bad).unwrap_err().field, "phases[0].duration");
        let bad = MINIMAL.replace("rate = 10", "rate = 10\nspeed = 1");
        let err = plan(&bad).unwrap_err();
        assert_eq!(err.field, "phases[0].speed", "{err}");
        let bad = MINIMAL.replace("duration = \"1m\"", "duration = \"1000 years\"");
        assert_eq!(plan(&bad).unwrap_err().field, "phases[0].duration");
        let bad = MINIMAL.replace("timeout = \"1s\"", "timeout = \"2days\"");
        assert_eq!(plan(&bad).unwrap_err().field, "backend.timeout");
        let bad = MINIMAL.replace("\"constant\"", "\"weibull\"");
        assert!(
            plan(&bad)
                .unwrap_err()
                .field
                .starts_with("backend.service_time")
        );
        let gamma = "{ kind = \"gamma\", mean = \"100ms\", cv = 1.0 }";
        let pareto = "{ kind = \"pareto\", mean = \"100ms\", alpha = 1.5 }";
        let ok = MINIMAL.replace("{ kind = \"constant\", mean = \"100ms\" }", gamma);
        assert!(plan(&ok).is_ok());
        let bad = ok.replace("cv = 1.0", "cv = -1.0");
        assert_eq!(plan(&bad).unwrap_err().field, "backend.service_time.cv");
        let bad = MINIMAL.replace("{ kind = \"constant\", mean = \"100ms\" }", pareto);
        assert!(plan(&bad).is_ok());
        let bad = bad.replace("alpha = 1.5", "alpha = 0.9");
        assert_eq!(plan(&bad).unwrap_err().field, "backend.service_time.alpha");
        let phase = format!("rate = 10\nservice_time = {}", pareto.replace("1.5", "1.0"));
        let bad = MINIMAL.replace("rate = 10", &phase);
        assert_eq!(
            plan(&bad).unwrap_err().field,
            "phases[0].service_time.alpha"
        );
        let bad = MINIMAL.replace(
            "timeout = \"1s\"",
            "timeout = \"1s\"\nabandoned = \"ignore\"",
        );
        assert_eq!(plan(&bad).unwrap_err().field, "backend.abandoned");
        let ok = MINIMAL.replace(
            "timeout = \"1s\"",
            "timeout = \"1s\"\nabandoned = \"keep_working\"",
        );
        assert_eq!(plan(&ok).unwrap().abandoned, Abandoned::KeepWorking);
    }
}
