//! Runs one stack through a plan in paused, virtual time, on a
//! current-thread runtime, and records every request's outcome.
//!
//! Arrivals are open-loop and seeded (Poisson, class drawn from the
//! phase's mix), so both stacks see the same first attempts; retries come
//! on top, after the answer's `Retry-After` (or the scenario's default
//! wait when there is none), up to the phase's bound.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use brownout::clock::Clock;
use brownout::deadline::deadline_fn;
use brownout::fallback::fallback_fn;
use brownout::policy::MaintenanceWindow;
use brownout::priority::{Classes, Priority, priority_fn};
use brownout::sim::{Change, SimBackend, SimError, SimHandle, SimResponse};
use brownout::stack::DEFAULT_ROUTE;
use brownout::{BreakerState, BrownoutLayer, Policy, Reason, Rejected};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

use super::defer::{DeferFigures, DeferRun, DrainWatch};
use super::scenario::{PhasePlan, Plan};

/// The two stacks the drill compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// `BrownoutLayer::from_policy`, with a fallback that answers every
    /// rejection at once with its reason and `Retry-After`.
    Brownout,
    /// tower's `LoadShed` + `ConcurrencyLimit` (sized for the back end's
    /// full capacity) + `Timeout`.
    Baseline,
}

impl Stack {
    pub fn name(self) -> &'static str {
        match self {
            Stack::Brownout => "brownout",
            Stack::Baseline => "baseline",
        }
    }
}

/// A request: its class, when its client gives up, and whether it is a
/// deferred request's replay (which no fallback defers again).
#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub class: u8,
    pub deadline: Instant,
    pub replay: bool,
}

/// What a stack answers: the back end's answer, or the fallback's.
#[derive(Debug, Clone)]
pub enum Reply {
    Served(#[allow(dead_code)] SimResponse),
    Fallback(Rejected),
    /// Written to the deferral store: answered 202, replayed later.
    Deferred,
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The back end answered, within the deadline.
    Served,
    /// The fallback answered, for this reason.
    Fallback(Reason),
    /// The fallback deferred it (202 with a ticket): the client is done,
    /// the replayer serves it later.
    Deferred,
    /// An error answer, or none before the deadline.
    Rejected(Why),
}

/// Why a request got an error (or nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// brownout's rejection as an error (not with the drill's fallback).
    Brownout(Reason),
    /// tower's `LoadShed`: the concurrency limit was full.
    Overloaded,
    /// The back-end call timed out.
    Timeout,
    /// The back end refused the call.
    Error,
    /// No answer before the client's deadline: the client gave up.
    Late,
    /// Anything else.
    Other,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Brownout(reason) => reason.as_str(),
            Why::Overloaded => "overloaded",
            Why::Timeout => "timeout",
            Why::Error => "backend_error",
            Why::Late => "late",
            Why::Other => "other",
        }
    }
}

/// Everything recorded about the requests that arrived in one phase (and
/// about the stack while the phase ran).
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Attempts made: first attempts plus retries.
    pub offered: u64,
    /// Of which retries.
    pub retries: u64,
    pub offered_by_class: Vec<u64>,
    pub served_by_class: Vec<u64>,
    pub served: u64,
    pub fallback: BTreeMap<&'static str, u64>,
    pub rejected: BTreeMap<&'static str, u64>,
    /// Requests not served, by class rank and reason.
    pub unserved_by_class: Vec<BTreeMap<&'static str, u64>>,
    /// Attempts with no outcome yet (at the end: lost).
    pub pending: u64,
    /// Time to answer of served requests, µs.
    pub latencies: Vec<u32>,
    /// Time to answer of requests not served (fallback or rejected), µs.
    pub unserved: Vec<u32>,
    /// The most calls in flight to the back end at once, and the stack's
    /// limit at that moment.
    pub peak_inflight: u64,
    pub limit_at_peak: Option<u32>,
    /// The highest and lowest limit seen at admissions and samples.
    pub max_limit: Option<u32>,
    pub min_limit: Option<u32>,
    /// Admissions that took the calls in flight above the limit.
    pub over_limit: u64,
    /// Breaker transitions while the phase ran, e.g. `closed->open`.
    pub transitions: BTreeMap<String, u64>,
    /// Waits in the waiting room of requests that left it with a permit,
    /// by class name, seconds.
    pub waits: BTreeMap<String, Vec<f64>>,
}

impl Tally {
    fn new(classes: usize) -> Self {
        Self {
            offered_by_class: vec![0; classes],
            served_by_class: vec![0; classes],
            unserved_by_class: vec![BTreeMap::new(); classes],
            ..Self::default()
        }
    }

    pub fn fallbacks(&self) -> u64 {
        self.fallback.values().sum()
    }

    pub fn rejections(&self) -> u64 {
        self.rejected.values().sum()
    }

    fn note_limit(&mut self, limit: Option<u32>) {
        if let Some(limit) = limit {
            self.max_limit = Some(self.max_limit.map_or(limit, |m| m.max(limit)));
            self.min_limit = Some(self.min_limit.map_or(limit, |m| m.min(limit)));
        }
    }
}

/// The stack's state at one moment, for the chart.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Seconds since the start.
    pub t: f64,
    /// Requests served a second over the last interval (by completion).
    pub goodput: f64,
    /// Calls in flight to the back end.
    pub inflight: u64,
    /// The stack's limit on them.
    pub limit: Option<u32>,
    /// Requests in the waiting room.
    pub waiting: usize,
    /// Breaker state gauge: 0 closed, 1 half-open, 2 open, 3 forced.
    pub breaker: Option<f64>,
}

/// The library's own counters (`brownout_requests_total`), over the run.
#[derive(Debug, Clone, Default)]
pub struct LibraryCounts {
    /// By `outcome` (and `reason` for rejections), e.g. `rejected/shed`.
    pub requests: BTreeMap<String, u64>,
}

impl LibraryCounts {
    pub fn total(&self) -> u64 {
        self.requests
            .iter()
            .filter(|(key, _)| !key.starts_with("would_reject"))
            .map(|(_, n)| n)
            .sum()
    }
}

/// One stack's run.
#[derive(Debug, Clone)]
pub struct StackRun {
    pub stack: Stack,
    pub phases: Vec<Tally>,
    pub samples: Vec<Sample>,
    pub library: LibraryCounts,
    /// Attempts whose task was still running when the drill stopped
    /// waiting for them (also counted in the phases' `pending`).
    pub unfinished: u64,
    /// Deferral's figures (brownout on a scenario with `[defer]`).
    pub deferral: Option<DeferFigures>,
    /// Live requests offered and served, by the second they were sent in,
    /// from the back end's return (scenarios with `[defer]`): the drain
    /// window's live traffic, for both stacks.
    pub after_recovery: Vec<[u64; 2]>,
}

/// What the driver can read of a stack at any moment.
struct Probe {
    limit: Option<u32>,
    waiting: usize,
    breaker: Option<BreakerState>,
}

type ProbeFn = Rc<dyn Fn() -> Probe>;

/// State shared by the driver, the clients and the tracking layer.
struct Live {
    plan: Plan,
    start: Instant,
    tallies: RefCell<Vec<Tally>>,
    inflight: Cell<u64>,
    served_since_sample: Cell<u64>,
    outstanding: Cell<u64>,
    samples: RefCell<Vec<Sample>>,
    probe: ProbeFn,
    /// Replays among the calls in flight.
    replays_inflight: Cell<u64>,
    /// The drain window's view of admissions (deferring runs).
    drain: RefCell<Option<DrainWatch>>,
    /// When the back end is back after its outage (scenarios with `[defer]`).
    recovery: Option<Instant>,
    after_recovery: RefCell<Vec<[u64; 2]>>,
}

impl Live {
    fn phase_at(&self, at: Instant) -> usize {
        let t = at.saturating_duration_since(self.start);
        let phases = &self.plan.phases;
        phases
            .iter()
            .rposition(|phase| phase.start <= t)
            .unwrap_or(0)
            .min(phases.len() - 1)
    }

    fn offer(&self, phase: usize, class: u8, retry: bool) {
        let mut tallies = self.tallies.borrow_mut();
        let tally = &mut tallies[phase];
        tally.offered += 1;
        tally.pending += 1;
        if retry {
            tally.retries += 1;
        }
        tally.offered_by_class[usize::from(class)] += 1;
    }

    fn record(&self, phase: usize, class: u8, outcome: Outcome, took: Duration) {
        let micros = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        let mut tallies = self.tallies.borrow_mut();
        let tally = &mut tallies[phase];
        tally.pending -= 1;
        match outcome {
            Outcome::Served => {
                tally.served += 1;
                tally.served_by_class[usize::from(class)] += 1;
                tally.latencies.push(micros);
                self.served_since_sample
                    .set(self.served_since_sample.get() + 1);
            }
            Outcome::Fallback(reason) => {
                *tally.fallback.entry(reason.as_str()).or_default() += 1;
                *tally.unserved_by_class[usize::from(class)]
                    .entry(reason.as_str())
                    .or_default() += 1;
                tally.unserved.push(micros);
            }
            Outcome::Deferred => {
                *tally.fallback.entry("deferred").or_default() += 1;
                *tally.unserved_by_class[usize::from(class)]
                    .entry("deferred")
                    .or_default() += 1;
                tally.unserved.push(micros);
            }
            Outcome::Rejected(why) => {
                *tally.rejected.entry(why.as_str()).or_default() += 1;
                *tally.unserved_by_class[usize::from(class)]
                    .entry(why.as_str())
                    .or_default() += 1;
                tally.unserved.push(micros);
            }
        }
    }

    /// A live request sent at `sent` ended: counted by the second after
    /// the back end's return it was sent in.
    fn note_after_recovery(&self, sent: Instant, served: bool) {
        let Some(recovery) = self.recovery else {
            return;
        };
        if sent < recovery {
            return;
        }
        let second = sent.duration_since(recovery).as_secs() as usize;
        let mut counts = self.after_recovery.borrow_mut();
        if counts.len() <= second {
            counts.resize(second + 1, [0, 0]);
        }
        counts[second][0] += 1;
        if served {
            counts[second][1] += 1;
        }
    }

    /// A call was admitted to the back end: count it in flight and check
    /// it against the stack's limit.
    fn admitted(&self, replay: bool) {
        let inflight = self.inflight.get() + 1;
        self.inflight.set(inflight);
        if replay {
            self.replays_inflight.set(self.replays_inflight.get() + 1);
        }
        let limit = (self.probe)().limit;
        if let Some(watch) = &*self.drain.borrow() {
            watch.admitted(replay, inflight, self.replays_inflight.get(), limit);
        }
        let phase = self.phase_at(Instant::now());
        let mut tallies = self.tallies.borrow_mut();
        let tally = &mut tallies[phase];
        tally.note_limit(limit);
        if inflight > tally.peak_inflight {
            tally.peak_inflight = inflight;
            tally.limit_at_peak = limit;
        }
        if limit.is_some_and(|limit| inflight > u64::from(limit)) {
            tally.over_limit += 1;
        }
    }
}

/// Counts calls in flight between the stack and the back end.
#[derive(Clone)]
struct Track<S> {
    inner: S,
    live: Rc<Live>,
}

struct InFlight(Rc<Live>, bool);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.set(self.0.inflight.get() - 1);
        if self.1 {
            self.0
                .replays_inflight
                .set(self.0.replays_inflight.get() - 1);
        }
    }
}

impl<S> Service<Call> for Track<S>
where
    S: Service<Call>,
    S::Future: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> Self::Future {
        self.live.admitted(call.replay);
        let guard = InFlight(self.live.clone(), call.replay);
        let future = self.inner.call(call);
        Box::pin(async move {
            let _guard = guard;
            future.await
        })
    }
}

/// A small seeded generator (SplitMix64) for arrivals and classes, so the
/// arrivals do not depend on any crate's RNG.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponential with mean 1.
    fn exponential(&mut self) -> f64 {
        -(1.0 - self.uniform()).ln()
    }
}

/// Wall-clock time at the start of every run (2026-12-01 09:15 IST), so
/// that maintenance windows fall at the same virtual time on any day.
pub fn wall_start() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_096_700)
}

/// The policy brownout runs with in the drill: `policy`, plus a
/// `[[maintenance]]` window for each phase the scenario marks as planned
/// maintenance (from its start to its end on the drill's wall clock,
/// [`wall_start`] at virtual time zero). The breaker's jitter runs as
/// written, drawn from the scenario's seed (`BrownoutLayer::seed`).
pub fn drill_policy(policy: &Policy, plan: &Plan) -> Policy {
    let mut policy = policy.clone();
    for phase in &plan.phases {
        if let Some(message) = &phase.maintenance {
            let window =
                MaintenanceWindow::new(wall_start() + phase.start, wall_start() + phase.end());
            policy.maintenance.push(if message.trim().is_empty() {
                window
            } else {
                window.with_message(message.clone())
            });
        }
    }
    policy
}

/// Runs `stack` through `plan` and returns what happened. Each call builds
/// its own runtime in paused time and its own metrics recorder, so two
/// runs on two threads do not meet.
pub fn run(stack: Stack, plan: &Plan, policy: &Policy) -> Result<StackRun, String> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .map_err(|err| format!("cannot start a tokio runtime: {err}"))?;
        let local = tokio::task::LocalSet::new();
        local.block_on(
            &runtime,
            run_in_paused_time(stack, plan, policy, snapshotter),
        )
    })
}

async fn run_in_paused_time(
    stack: Stack,
    plan: &Plan,
    policy: &Policy,
    snapshotter: Snapshotter,
) -> Result<StackRun, String> {
    let backend = SimBackend::builder()
        .capacity(plan.capacity)
        .service_time(plan.service_time)
        .seed(plan.seed)
        .down_latency(plan.down_latency)
        .abandoned(plan.abandoned)
        .build()
        .map_err(|err| format!("backend: {err}"))?;
    let sim = backend.handle();
    let timeout = plan.timeout;
    let served = tower::util::MapResponse::new(backend, Reply::Served as fn(SimResponse) -> Reply);
    let classes = Classes::from_policy(&policy.priority);

    // The probe and the tracking layer need each other's stack; build the
    // shared state with a probe filled in once the stack exists.
    let probe_slot: Rc<RefCell<Option<ProbeFn>>> = Rc::new(RefCell::new(None));
    let probe: ProbeFn = {
        let slot = probe_slot.clone();
        Rc::new(move || match &*slot.borrow() {
            Some(probe) => probe(),
            None => Probe {
                limit: None,
                waiting: 0,
                breaker: None,
            },
        })
    };
    let live = Rc::new(Live {
        plan: plan.clone(),
        start: Instant::now(),
        tallies: RefCell::new(vec![Tally::new(classes.len()); plan.phases.len()]),
        inflight: Cell::new(0),
        served_since_sample: Cell::new(0),
        outstanding: Cell::new(0),
        samples: RefCell::new(Vec::new()),
        probe,
        replays_inflight: Cell::new(0),
        drain: RefCell::new(None),
        recovery: plan
            .defer
            .as_ref()
            .map(|defer| Instant::now() + defer.recovery_start(plan)),
        after_recovery: RefCell::new(Vec::new()),
    });
    let track = {
        let live = live.clone();
        move |inner| Track {
            inner,
            live: live.clone(),
        }
    };

    match stack {
        Stack::Brownout => {
            let policy = drill_policy(policy, plan);
            let clock = Clock::tokio_at(wall_start());
            // A deferring scenario's store, opened before the stack: the
            // fallback writes to it.
            let opened = match &plan.defer {
                Some(defer) => Some(super::defer::open(
                    plan,
                    defer,
                    clock.clone(),
                    wall_start(),
                )?),
                None => None,
            };
            let deferring = opened.as_ref().map(|(deferring, ..)| deferring.clone());
            let layer = BrownoutLayer::from_policy(&policy)
                .clock(clock)
                .seed(plan.seed)
                .priority(priority_fn(|call: &Call, classes: &Classes| {
                    classes.clamp(Priority::new(call.class))
                }))
                // The client's deadline: brownout waits no longer than it
                // and abandons a call still running when it passes.
                .deadline(deadline_fn(|call: &Call| {
                    Some(call.deadline.saturating_duration_since(Instant::now()))
                }))
                // Every rejection answered at once with its reason; on a
                // deferring scenario, those the `[defer]` section names are
                // written to the store first and answered "deferred".
                .fallback(fallback_fn(
                    move |rejected: Rejected, call: Option<Call>| {
                        let deferring = deferring.clone();
                        async move {
                            if let (Some(deferring), Some(call)) = (deferring, call) {
                                if let Some(reply) = deferring.defer(&rejected, &call).await {
                                    return reply;
                                }
                            }
                            Reply::Fallback(rejected)
                        }
                    },
                ));
            let view = layer.clone();
            *probe_slot.borrow_mut() = Some(Rc::new(move || Probe {
                limit: view.limit(DEFAULT_ROUTE),
                waiting: view.waiting(DEFAULT_ROUTE),
                breaker: view.state(DEFAULT_ROUTE),
            }));
            let svc = ServiceBuilder::new()
                .layer(layer.clone())
                .layer_fn(track)
                .timeout(timeout)
                .service(served);
            let deferral = match (opened, &plan.defer) {
                (Some(opened), Some(defer)) => {
                    let phases = plan.phases.clone();
                    let start = live.start;
                    // A replay's deadline: that of a live request sent then.
                    let deadline_of: Rc<dyn Fn(Instant) -> Duration> = Rc::new(move |now| {
                        let t = now.saturating_duration_since(start);
                        phases
                            .iter()
                            .rev()
                            .find(|p| p.start <= t)
                            .or(phases.first())
                            .map_or(Duration::from_secs(5), |p| p.deadline)
                    });
                    let run = DeferRun::start(
                        plan,
                        defer,
                        &policy,
                        opened,
                        svc.clone(),
                        brownout::defer::Load::of(&layer, DEFAULT_ROUTE),
                        live.start,
                        deadline_of,
                    );
                    *live.drain.borrow_mut() = Some(run.watch.clone());
                    Some(run)
                }
                _ => None,
            };
            drive(stack, svc, live, sim, &classes, Some(snapshotter), deferral).await
        }
        Stack::Baseline => {
            let concurrency = plan.baseline_concurrency;
            let limit = u32::try_from(concurrency).ok();
            *probe_slot.borrow_mut() = Some(Rc::new(move || Probe {
                limit,
                waiting: 0,
                breaker: None,
            }));
            let svc = ServiceBuilder::new()
                .load_shed()
                .concurrency_limit(concurrency)
                .layer_fn(track)
                .timeout(timeout)
                .service(served);
            drive(stack, svc, live, sim, &classes, None, None).await
        }
    }
}

/// Offers the plan's arrivals to `svc`, phase by phase, and waits for
/// every request to end.
async fn drive<S>(
    stack: Stack,
    svc: S,
    live: Rc<Live>,
    sim: SimHandle,
    classes: &Classes,
    snapshotter: Option<Snapshotter>,
    deferral: Option<DeferRun>,
) -> Result<StackRun, String>
where
    S: Service<Call, Response = Reply, Error = BoxError> + Clone + 'static,
{
    let plan = live.plan.clone();
    let start = live.start;
    let end = start + plan.total;
    let mut library = LibraryCounts::default();
    let mut rng = Rng(plan.seed ^ 0xd1b5_4a32_d192_ed03);

    let sampler = tokio::task::spawn_local(sample(live.clone(), sample_every(&plan)));

    let timer = tokio::time::sleep_until(start);
    tokio::pin!(timer);
    for (index, phase) in plan.phases.iter().enumerate() {
        timer.as_mut().reset(start + phase.start);
        timer.as_mut().await;
        if index > 0 {
            take_snapshot(&snapshotter, &live, index - 1, classes, &mut library);
        }
        set_backend(&sim, phase)?;
        let phase_end = phase.end().as_secs_f64();
        if phase.rate <= 0.0 {
            continue;
        }
        let mut t = phase.start.as_secs_f64();
        loop {
            t += rng.exponential() / phase.rate;
            if t >= phase_end {
                break;
            }
            let class = phase.mix.pick(rng.uniform());
            timer.as_mut().reset(start + Duration::from_secs_f64(t));
            timer.as_mut().await;
            live.outstanding.set(live.outstanding.get() + 1);
            tokio::task::spawn_local(client(svc.clone(), live.clone(), index, class, end));
        }
    }

    // Let every request end: none may outlive its deadline, so waiting the
    // longest deadline past the end is enough; what is still running then
    // is lost.
    timer.as_mut().reset(end);
    timer.as_mut().await;
    let longest = plan
        .phases
        .iter()
        .map(|p| p.deadline)
        .max()
        .unwrap_or_default();
    let give_up = end + longest + Duration::from_secs(1);
    while live.outstanding.get() > 0 && Instant::now() < give_up {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sampler.abort();
    let _ = sampler.await;
    // The replayer stops, and the store says how each deferred request
    // ended, before the last snapshot.
    let deferral = match deferral {
        Some(run) => Some(run.finish().await?),
        None => None,
    };
    take_snapshot(
        &snapshotter,
        &live,
        plan.phases.len() - 1,
        classes,
        &mut library,
    );
    let phases = live.tallies.borrow().clone();
    let samples = live.samples.take();
    Ok(StackRun {
        stack,
        phases,
        samples,
        library,
        unfinished: live.outstanding.get(),
        deferral,
        after_recovery: live.after_recovery.take(),
    })
}

/// About 900 samples over the run (at least one a second), unless the
/// plan says.
fn sample_every(plan: &Plan) -> Duration {
    if let Some(every) = plan.sample_every {
        return every.max(Duration::from_millis(10));
    }
    let secs = (plan.total.as_secs_f64() / 900.0).round().max(1.0);
    Duration::from_secs_f64(secs)
}

async fn sample(live: Rc<Live>, every: Duration) {
    let mut at = live.start;
    loop {
        at += every;
        tokio::time::sleep_until(at).await;
        let probe = (live.probe)();
        let served = live.served_since_sample.replace(0);
        let sample = Sample {
            t: at.duration_since(live.start).as_secs_f64(),
            goodput: served as f64 / every.as_secs_f64(),
            inflight: live.inflight.get(),
            limit: probe.limit,
            waiting: probe.waiting,
            breaker: probe.breaker.map(BreakerState::gauge),
        };
        let phase = live.phase_at(at);
        live.tallies.borrow_mut()[phase].note_limit(probe.limit);
        live.samples.borrow_mut().push(sample);
    }
}

fn set_backend(sim: &SimHandle, phase: &PhasePlan) -> Result<(), String> {
    let at = |err| format!("phase {:?}: {err}", phase.name);
    sim.apply(Change::ServiceTime(phase.service_time))
        .map_err(at)?;
    sim.apply(Change::CapacityFraction(phase.capacity_fraction))
        .map_err(at)?;
    sim.apply(Change::Condition(phase.condition)).map_err(at)
}

/// One user: a request, and its retries while it is not served.
async fn client<S>(svc: S, live: Rc<Live>, first_phase: usize, class: u8, end: Instant)
where
    S: Service<Call, Response = Reply, Error = BoxError> + Clone + 'static,
{
    let plan = &live.plan;
    let mut retries_left = plan.phases[first_phase].retries;
    let mut retry = false;
    loop {
        let sent = Instant::now();
        let phase = live.phase_at(sent);
        let deadline = sent + plan.phases[phase].deadline;
        live.offer(phase, class, retry);
        let call = Call {
            class,
            deadline,
            replay: false,
        };
        let answer = tokio::time::timeout_at(deadline, svc.clone().oneshot(call)).await;
        let took = sent.elapsed();
        let (outcome, retry_after) = match answer {
            Err(_) => (Outcome::Rejected(Why::Late), None),
            Ok(Ok(Reply::Served(_))) => (Outcome::Served, None),
            Ok(Ok(Reply::Deferred)) => (Outcome::Deferred, None),
            Ok(Ok(Reply::Fallback(rejected))) => {
                (Outcome::Fallback(rejected.reason()), rejected.retry_after())
            }
            Ok(Err(err)) => match err.downcast_ref::<Rejected>() {
                Some(rejected) => (
                    Outcome::Rejected(Why::Brownout(rejected.reason())),
                    rejected.retry_after(),
                ),
                None => (Outcome::Rejected(why(&err)), None),
            },
        };
        live.record(phase, class, outcome, took);
        live.note_after_recovery(sent, outcome == Outcome::Served);
        // A deferred request is answered for good: its replay serves it.
        if matches!(outcome, Outcome::Served | Outcome::Deferred) || retries_left == 0 {
            break;
        }
        let wait = retry_after
            .unwrap_or(plan.retry_default)
            .max(Duration::from_millis(1));
        if wait > plan.retry_max_wait || Instant::now() + wait >= end {
            break;
        }
        retries_left -= 1;
        retry = true;
        tokio::time::sleep(wait).await;
    }
    live.outstanding.set(live.outstanding.get() - 1);
}

pub fn why(err: &BoxError) -> Why {
    if err.is::<tower::timeout::error::Elapsed>() {
        Why::Timeout
    } else if err.is::<tower::load_shed::error::Overloaded>() {
        Why::Overloaded
    } else if err.is::<SimError>() {
        Why::Error
    } else {
        Why::Other
    }
}

/// Reads (and resets) the library's counters, and files what happened
/// since the last snapshot under `phase`.
fn take_snapshot(
    snapshotter: &Option<Snapshotter>,
    live: &Live,
    phase: usize,
    classes: &Classes,
    library: &mut LibraryCounts,
) {
    let Some(snapshotter) = snapshotter else {
        return;
    };
    let mut tallies = live.tallies.borrow_mut();
    let tally = &mut tallies[phase];
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let label = |name: &str| {
            key.labels()
                .find(|label| label.key() == name)
                .map(|label| label.value().to_owned())
                .unwrap_or_default()
        };
        match (key.name(), value) {
            (brownout::metrics::REQUESTS_TOTAL, DebugValue::Counter(n)) if n > 0 => {
                let reason = label("reason");
                let outcome = label("outcome");
                let name = if reason.is_empty() || reason == "none" {
                    outcome
                } else {
                    format!("{outcome}/{reason}")
                };
                *library.requests.entry(name).or_default() += n;
            }
            (brownout::metrics::BREAKER_TRANSITIONS_TOTAL, DebugValue::Counter(n)) if n > 0 => {
                let name = format!("{}->{}", label("from"), label("to"));
                *tally.transitions.entry(name).or_default() += n;
            }
            (brownout::metrics::WAIT_SECONDS, DebugValue::Histogram(values)) => {
                let class = label("priority");
                let known = classes.by_name(&class).is_some();
                if known && !values.is_empty() {
                    tally
                        .waits
                        .entry(class)
                        .or_default()
                        .extend(values.iter().map(|v| v.into_inner()));
                }
            }
            _ => {}
        }
    }
}
