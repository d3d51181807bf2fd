//! Figures from the runs: per phase and in total, as a table for people
//! and as one JSON object for scripts; and the targets, checked.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use brownout::Priority;
use brownout::priority::Classes;
use serde::Serialize;

use super::defer::DeferFigures;
use super::run::{StackRun, Tally};
use super::scenario::{Plan, State};

/// One phase's (or the whole run's) figures for one stack.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// The phase's name (absent in totals).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Attempts: first attempts plus retries.
    pub offered: u64,
    /// Of which retries.
    pub retries: u64,
    /// Answered by the back end within the deadline.
    pub served: u64,
    /// Answered by brownout's fallback (reason and `Retry-After`).
    pub fallback: u64,
    /// Answered with an error, or not answered before the deadline.
    pub rejected: u64,
    /// With no outcome at all: must be 0.
    pub lost: u64,
    pub fallback_by_reason: BTreeMap<String, u64>,
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Requests whose client gave up at its deadline with no answer.
    pub late: u64,
    /// Calls the back end could have completed (its slots over its mean
    /// service time, over the phase).
    pub capacity: f64,
    /// served / min(offered, capacity): 1 is every request the back end
    /// could have served; null when it could serve none.
    pub goodput_ratio: Option<f64>,
    /// Time to answer of served requests.
    pub p50_latency_ms: Option<f64>,
    pub p99_latency_ms: Option<f64>,
    /// Time to answer of the requests not served (fallback or rejected).
    pub p50_rejected_answer_ms: Option<f64>,
    pub p99_rejected_answer_ms: Option<f64>,
    /// Requests offered, served, and not served by reason, per class.
    pub classes: BTreeMap<String, ClassFigures>,
    pub urgent_offered: u64,
    pub urgent_served: u64,
    /// Served share of the most important class's requests.
    pub urgent_served_ratio: Option<f64>,
    /// Most calls in flight to the back end at once, and the stack's limit
    /// then (the baseline's is its fixed concurrency limit).
    pub peak_inflight: u64,
    pub limit_at_peak: Option<u32>,
    pub limit_min: Option<u32>,
    pub limit_max: Option<u32>,
    /// Admissions that took the calls in flight above the limit.
    pub over_limit_admissions: u64,
    /// brownout's breaker transitions, e.g. `closed->open`.
    pub breaker_transitions: BTreeMap<String, u64>,
    /// Waiting-room waits of requests that left it with a permit, by class.
    pub waits: BTreeMap<String, Wait>,
}

/// One priority class's requests.
#[derive(Debug, Clone, Serialize)]
pub struct ClassFigures {
    pub offered: u64,
    pub served: u64,
    pub not_served: BTreeMap<String, u64>,
}

/// Waits of one class.
#[derive(Debug, Clone, Serialize)]
pub struct Wait {
    pub count: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One stack's figures.
#[derive(Debug, Clone, Serialize)]
pub struct StackReport {
    pub totals: Figures,
    pub phases: Vec<Figures>,
    /// The library's own `brownout_requests_total`, by outcome/reason
    /// (brownout only).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub library_counts: BTreeMap<String, u64>,
    /// Durable deferral's figures (brownout on a scenario with `[defer]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deferral: Option<DeferFigures>,
}

impl StackReport {
    pub fn new(plan: &Plan, run: &StackRun, classes: &Classes) -> Self {
        let phases: Vec<Figures> = plan
            .phases
            .iter()
            .zip(&run.phases)
            .map(|(phase, tally)| {
                let capacity = phase.throughput(plan) * phase.duration.as_secs_f64();
                figures(Some(phase.name.clone()), tally, capacity, classes)
            })
            .collect();
        let mut all = run.phases.first().cloned().unwrap_or_default();
        for tally in run.phases.iter().skip(1) {
            merge(&mut all, tally);
        }
        let capacity = phases.iter().map(|p| p.capacity).sum();
        let mut totals = figures(None, &all, capacity, classes);
        // The whole run's goodput: served over what could be served, phase by phase.
        let servable: f64 = phases
            .iter()
            .map(|p| p.capacity.min(p.offered as f64))
            .sum();
        totals.goodput_ratio = (servable >= 1.0).then(|| totals.served as f64 / servable);
        Self {
            totals,
            phases,
            library_counts: run.library.requests.clone(),
            deferral: run.deferral.clone(),
        }
    }
}

fn figures(name: Option<String>, tally: &Tally, capacity: f64, classes: &Classes) -> Figures {
    let by_class = (0..classes.len())
        .map(|rank| {
            let name = classes.name(Priority::new(rank as u8)).to_owned();
            let figures = ClassFigures {
                offered: tally.offered_by_class.get(rank).copied().unwrap_or(0),
                served: tally.served_by_class.get(rank).copied().unwrap_or(0),
                not_served: tally
                    .unserved_by_class
                    .get(rank)
                    .map(own)
                    .unwrap_or_default(),
            };
            (name, figures)
        })
        .collect();
    let mut latencies = tally.latencies.clone();
    let mut unserved = tally.unserved.clone();
    let servable = capacity.min(tally.offered as f64);
    let urgent_offered = tally.offered_by_class.first().copied().unwrap_or(0);
    let urgent_served = tally.served_by_class.first().copied().unwrap_or(0);
    let waits = tally
        .waits
        .iter()
        .map(|(class, values)| {
            let mut ms: Vec<f64> = values.iter().map(|s| s * 1e3).collect();
            ms.sort_by(f64::total_cmp);
            let wait = Wait {
                count: ms.len(),
                p50_ms: percentile_f(&ms, 0.50),
                p99_ms: percentile_f(&ms, 0.99),
            };
            (class.clone(), wait)
        })
        .collect();
    Figures {
        name,
        offered: tally.offered,
        retries: tally.retries,
        served: tally.served,
        fallback: tally.fallbacks(),
        rejected: tally.rejections(),
        lost: tally.pending,
        fallback_by_reason: own(&tally.fallback),
        rejected_by_reason: own(&tally.rejected),
        late: tally.rejected.get("late").copied().unwrap_or(0),
        capacity,
        goodput_ratio: (servable >= 1.0).then(|| tally.served as f64 / servable),
        p50_latency_ms: percentile(&mut latencies, 0.50),
        p99_latency_ms: percentile(&mut latencies, 0.99),
        p50_rejected_answer_ms: percentile(&mut unserved, 0.50),
        p99_rejected_answer_ms: percentile(&mut unserved, 0.99),
        classes: by_class,
        urgent_offered,
        urgent_served,
        urgent_served_ratio: (urgent_offered > 0)
            .then(|| urgent_served as f64 / urgent_offered as f64),
        peak_inflight: tally.peak_inflight,
        limit_at_peak: tally.limit_at_peak,
        limit_min: tally.min_limit,
        limit_max: tally.max_limit,
        over_limit_admissions: tally.over_limit,
        breaker_transitions: tally.transitions.clone(),
        waits,
    }
}

fn own(map: &BTreeMap<&'static str, u64>) -> BTreeMap<String, u64> {
    map.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

fn merge(into: &mut Tally, other: &Tally) {
    into.offered += other.offered;
    into.retries += other.retries;
    into.served += other.served;
    into.pending += other.pending;
    for (a, b) in into
        .offered_by_class
        .iter_mut()
        .zip(&other.offered_by_class)
    {
        *a += b;
    }
    for (a, b) in into.served_by_class.iter_mut().zip(&other.served_by_class) {
        *a += b;
    }
    for (a, b) in into
        .unserved_by_class
        .iter_mut()
        .zip(&other.unserved_by_class)
    {
        for (k, v) in b {
            *a.entry(k).or_default() += v;
        }
    }
    for (k, v) in &other.fallback {
        *into.fallback.entry(k).or_default() += v;
    }
    for (k, v) in &other.rejected {
        *into.rejected.entry(k).or_default() += v;
    }
    into.latencies.extend_from_slice(&other.latencies);
    into.unserved.extend_from_slice(&other.unserved);
    if other.peak_inflight > into.peak_inflight {
        into.peak_inflight = other.peak_inflight;
        into.limit_at_peak = other.limit_at_peak;
    }
    into.max_limit = match (into.max_limit, other.max_limit) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    into.min_limit = match (into.min_limit, other.min_limit) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    into.over_limit += other.over_limit;
    for (k, v) in &other.transitions {
        *into.transitions.entry(k.clone()).or_default() += v;
    }
    for (k, v) in &other.waits {
        into.waits
            .entry(k.clone())
            .or_default()
            .extend_from_slice(v);
    }
}

/// Nearest-rank percentile of microseconds, in milliseconds.
fn percentile(values: &mut [u32], p: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
    let (_, value, _) = values.select_nth_unstable(rank);
    Some(f64::from(*value) / 1e3)
}

fn percentile_f(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[rank])
}

/// One of the targets, with both stacks' figures.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub phase: String,
    pub what: String,
    pub goal: String,
    pub brownout: String,
    pub baseline: String,
    pub met: bool,
}

/// The drill's targets, checked on every phase they apply to: reduced
/// capacity (goodput, urgent served, fast rejections), down (answered
/// within the deadline), and every phase after a down one (in flight never
/// above the limit).
pub fn targets(plan: &Plan, brownout: &StackReport, baseline: &StackReport) -> Vec<Target> {
    let mut out = Vec::new();
    let ratio = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{:.1}%", r * 100.0));
    let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1} ms"));
    let mut after_down = false;
    for (i, phase) in plan.phases.iter().enumerate() {
        let (b, t) = (&brownout.phases[i], &baseline.phases[i]);
        let name = phase.name.clone();
        let reduced = phase.state == State::Up && phase.capacity_fraction < 1.0;
        if reduced {
            out.push(Target {
                phase: name.clone(),
                what: "goodput / capacity".into(),
                goal: ">= 95%".into(),
                brownout: ratio(b.goodput_ratio),
                baseline: ratio(t.goodput_ratio),
                met: b.goodput_ratio.is_some_and(|r| r >= 0.95),
            });
            out.push(Target {
                phase: name.clone(),
                what: "urgent served".into(),
                goal: ">= 99%".into(),
                brownout: ratio(b.urgent_served_ratio),
                baseline: ratio(t.urgent_served_ratio),
                met: b.urgent_served_ratio.is_some_and(|r| r >= 0.99),
            });
            out.push(Target {
                phase: name.clone(),
                what: "p99 time to answer, not served".into(),
                goal: "<= 50 ms".into(),
                brownout: ms(b.p99_rejected_answer_ms),
                baseline: ms(t.p99_rejected_answer_ms),
                met: b.p99_rejected_answer_ms.is_none_or(|v| v <= 50.0),
            });
        }
        if matches!(phase.state, State::Down | State::Hang) {
            out.push(Target {
                phase: name.clone(),
                what: "answered within the deadline".into(),
                goal: "every request".into(),
                brownout: format!("{} late of {}", b.late, b.offered),
                baseline: format!("{} late of {}", t.late, t.offered),
                met: b.late == 0,
            });
            after_down = true;
        } else if after_down {
            let peak = |f: &Figures| {
                format!(
                    "peak {} / limit {}, {} over",
                    f.peak_inflight,
                    f.limit_at_peak.map_or("-".into(), |l| l.to_string()),
                    f.over_limit_admissions
                )
            };
            out.push(Target {
                phase: name,
                what: "in flight never above the limit".into(),
                goal: "0 admissions over".into(),
                brownout: peak(b),
                baseline: peak(t),
                met: b.over_limit_admissions == 0,
            });
        }
    }
    out
}

/// Thousands separators: 1234567 -> "1,234,567".
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn opt_ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
        None => "-".into(),
    }
}

fn opt_pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1}%", v * 100.0))
}

fn reasons(map: &BTreeMap<String, u64>) -> String {
    let mut items: Vec<_> = map.iter().filter(|(_, n)| **n > 0).collect();
    items.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    items
        .iter()
        .map(|(k, n)| format!("{k} {}", count(**n)))
        .collect::<Vec<_>>()
        .join(", ")
}

const HEADER: &str = "  stack       offered     served   fallback   rejected  lost  goodput   p50 ms   p99 ms  p99 unserved ms  urgent  peak in-flight/limit";

fn row(out: &mut String, stack: &str, f: &Figures) {
    let peak = format!(
        "{}/{}",
        f.peak_inflight,
        f.limit_at_peak.map_or("-".into(), |l| l.to_string())
    );
    let _ = writeln!(
        out,
        "  {stack:<9} {:>9} {:>10} {:>10} {:>10} {:>5} {:>8} {:>8} {:>8} {:>16} {:>7}  {peak}",
        count(f.offered),
        count(f.served),
        count(f.fallback),
        count(f.rejected),
        count(f.lost),
        opt_pct(f.goodput_ratio),
        opt_ms(f.p50_latency_ms),
        opt_ms(f.p99_latency_ms),
        opt_ms(f.p99_rejected_answer_ms),
        opt_pct(f.urgent_served_ratio),
    );
}

fn details(out: &mut String, stack: &str, f: &Figures, classes: &Classes) {
    let mut parts = Vec::new();
    if f.fallback > 0 {
        parts.push(format!("fallback {}", reasons(&f.fallback_by_reason)));
    }
    if f.rejected > 0 {
        parts.push(format!("rejected {}", reasons(&f.rejected_by_reason)));
    }
    if f.retries > 0 {
        parts.push(format!("{} retries", count(f.retries)));
    }
    if let (Some(lo), Some(hi)) = (f.limit_min, f.limit_max) {
        if lo != hi {
            parts.push(format!("limit {lo}..{hi}"));
        }
    }
    if !f.breaker_transitions.is_empty() {
        let opened = f
            .breaker_transitions
            .iter()
            .filter(|(k, _)| k.ends_with("->open"))
            .map(|(_, n)| n)
            .sum::<u64>();
        let all: u64 = f.breaker_transitions.values().sum();
        parts.push(format!("breaker opened {opened}x ({all} transitions)"));
    }
    let waits: Vec<String> = (0..classes.len())
        .filter_map(|rank| {
            let name = classes.name(Priority::new(rank as u8));
            let wait = f.waits.get(name)?;
            Some(format!(
                "{name} {}/{}",
                opt_ms(wait.p50_ms),
                opt_ms(wait.p99_ms)
            ))
        })
        .collect();
    if !waits.is_empty() {
        parts.push(format!("waited p50/p99 ms: {}", waits.join(", ")));
    }
    if !parts.is_empty() {
        let _ = writeln!(out, "    {stack}: {}", parts.join("; "));
    }
}

/// The table, per phase and stack, then the totals.
pub fn table(
    plan: &Plan,
    brownout: &StackReport,
    baseline: &StackReport,
    classes: &Classes,
) -> String {
    let mut out = String::new();
    for (i, phase) in plan.phases.iter().enumerate() {
        let throughput = phase.throughput(plan);
        let _ = writeln!(
            out,
            "\n[{}/{}] {} ({}, from {}): back end {}; {} req/s offered, {} req/s servable; deadline {}{}",
            i + 1,
            plan.phases.len(),
            phase.name,
            humantime::format_duration(phase.duration),
            clock(phase.start.as_secs()),
            phase.describe(plan),
            phase.rate,
            if throughput >= 10.0 {
                format!("{throughput:.0}")
            } else {
                format!("{throughput:.1}")
            },
            humantime::format_duration(phase.deadline),
            if phase.retries > 0 {
                format!("; clients retry up to {}x", phase.retries)
            } else {
                String::new()
            },
        );
        let _ = writeln!(out, "{HEADER}");
        row(&mut out, "brownout", &brownout.phases[i]);
        row(&mut out, "baseline", &baseline.phases[i]);
        details(&mut out, "brownout", &brownout.phases[i], classes);
        details(&mut out, "baseline", &baseline.phases[i], classes);
    }
    let _ = writeln!(out, "\n[total] {}", humantime::format_duration(plan.total));
    let _ = writeln!(out, "{HEADER}");
    row(&mut out, "brownout", &brownout.totals);
    row(&mut out, "baseline", &baseline.totals);
    details(&mut out, "brownout", &brownout.totals, classes);
    details(&mut out, "baseline", &baseline.totals, classes);
    out
}

/// `h:mm:ss` of a number of seconds.
pub fn clock(secs: u64) -> String {
    format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// The targets as a small table.
pub fn targets_table(targets: &[Target]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  {:<12} {:<32} {:<14} {:<28} {:<28} met",
        "phase", "target", "goal", "brownout", "baseline"
    );
    for t in targets {
        let _ = writeln!(
            out,
            "  {:<12} {:<32} {:<14} {:<28} {:<28} {}",
            t.phase,
            t.what,
            t.goal,
            t.brownout,
            t.baseline,
            if t.met { "yes" } else { "NO" }
        );
    }
    out
}
