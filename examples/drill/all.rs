//! `--all`: every scenario file of a directory, each run against the same
//! plain-tower baseline, in one table.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use brownout::priority::Classes;
use serde_json::json;

use super::report::{Figures, count};
use super::scenario::{Plan, describe_service_time};
use super::{Outcome, SCENARIO_DIR, load_policy, load_scenario, run_both, to_json};

/// The scenario files (`*.toml`) in `dir`, by name.
pub fn scenario_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|err| {
        format!(
            "cannot read the scenario directory {}: {err}",
            dir.display()
        )
    })?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|err| {
                format!(
                    "cannot read the scenario directory {}: {err}",
                    dir.display()
                )
            })?
            .path();
        if path.is_file() && path.extension().is_some_and(|ext| ext == "toml") {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(format!("no scenario files (*.toml) in {}", dir.display()));
    }
    Ok(files)
}

/// Every scenario in `dir` (or `examples/scenarios`), planned against the
/// policy's classes; errors name the file and the field.
pub fn load_all(dir: Option<&Path>, classes: &Classes) -> Result<Vec<(String, Plan)>, String> {
    let dir = dir.unwrap_or(Path::new(SCENARIO_DIR));
    scenario_files(dir)?
        .iter()
        .map(|file| {
            let (scenario, name) = load_scenario(Some(file))?;
            let plan = scenario
                .plan(classes)
                .map_err(|err| format!("{name}: {err}"))?;
            Ok((name, plan))
        })
        .collect()
}

/// Whole-run goodput of brownout minus the baseline's, in points.
pub fn goodput_delta(outcome: &Outcome) -> Option<f64> {
    let b = outcome.brownout_report.totals.goodput_ratio?;
    let t = outcome.baseline_report.totals.goodput_ratio?;
    Some((b - t) * 100.0)
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1}%", v * 100.0))
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
        None => "-".into(),
    }
}

fn points(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:+.1}"))
}

const HEADER: &str = "scenario         phase            stack       offered  goodput   Δ pts   urgent   p50 ms   p99 ms  p99 unserved ms   lost";

fn row(
    out: &mut String,
    scenario: &str,
    phase: &str,
    stack: &str,
    f: &Figures,
    delta: Option<f64>,
) {
    let _ = writeln!(
        out,
        "{scenario:<16} {phase:<16} {stack:<9} {:>9} {:>8} {:>7} {:>8} {:>8} {:>8} {:>16} {:>6}",
        count(f.offered),
        pct(f.goodput_ratio),
        if stack == "brownout" {
            points(delta)
        } else {
            String::new()
        },
        pct(f.urgent_served_ratio),
        ms(f.p50_latency_ms),
        ms(f.p99_latency_ms),
        ms(f.p99_rejected_answer_ms),
        count(f.lost),
    );
}

fn phase_delta(b: &Figures, t: &Figures) -> Option<f64> {
    Some((b.goodput_ratio? - t.goodput_ratio?) * 100.0)
}

/// The rows of one scenario: each phase, then the whole run, then the
/// goodput line.
pub fn scenario_rows(out: &mut String, outcome: &Outcome) {
    let plan = &outcome.plan;
    let (b, t) = (&outcome.brownout_report, &outcome.baseline_report);
    let mut name = plan.name.as_str();
    for (i, phase) in plan.phases.iter().enumerate() {
        let delta = phase_delta(&b.phases[i], &t.phases[i]);
        row(out, name, &phase.name, "brownout", &b.phases[i], delta);
        row(out, "", "", "baseline", &t.phases[i], None);
        name = "";
    }
    let delta = goodput_delta(outcome);
    row(out, "", "(whole run)", "brownout", &b.totals, delta);
    row(out, "", "", "baseline", &t.totals, None);
    let _ = writeln!(
        out,
        "  => {}: brownout's goodput minus the baseline's: {} points ({} against {}){}",
        plan.name,
        points(delta),
        pct(b.totals.goodput_ratio),
        pct(t.totals.goodput_ratio),
        if outcome.problems.is_empty() {
            String::new()
        } else {
            format!("; {} ACCOUNTING PROBLEMS", outcome.problems.len())
        }
    );
    if let Some(deferral) = &outcome.brownout_report.deferral {
        for line in super::defer::summary(deferral).lines().skip(1) {
            let _ = writeln!(out, "  {line}");
        }
    }
}

/// One line per scenario: what it replays.
fn legend(out: &mut String, file: &str, plan: &Plan) {
    let phases: Vec<String> = plan
        .phases
        .iter()
        .map(|p| {
            let servable = p.throughput(plan);
            format!(
                "{} {} ({}, {} req/s on {:.0} servable)",
                p.name,
                humantime::format_duration(p.duration),
                p.describe(plan),
                p.rate,
                servable
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "  {} ({file}): {} slots, {}, timeout {}{}; {}",
        plan.name,
        plan.capacity,
        describe_service_time(plan.service_time),
        humantime::format_duration(plan.timeout),
        if plan.abandoned == brownout::sim::Abandoned::KeepWorking {
            ", keeps working on abandoned calls"
        } else {
            ""
        },
        phases.join(" -> ")
    );
}

/// Runs every scenario of `dir` and prints one table; `Ok(false)` if a
/// request was lost or the counters disagree anywhere.
pub fn drill_all(dir: Option<&Path>, policy: Option<&Path>, json: bool) -> Result<bool, String> {
    let (policy, policy_file) = load_policy(policy)?;
    let classes = Classes::from_policy(&policy.priority);
    let plans = load_all(dir, &classes)?;
    println!(
        "brownout drill --all: {} scenarios, policy {policy_file}; each against plain tower \
         (LoadShed + ConcurrencyLimit(full capacity) + Timeout)",
        plans.len()
    );
    let started = Instant::now();
    let mut table = String::new();
    let _ = writeln!(table, "\n{HEADER}");
    let mut legends = String::new();
    let mut problems = Vec::new();
    let mut reports = Vec::new();
    let mut deltas = Vec::new();
    for (i, (file, plan)) in plans.iter().enumerate() {
        let at = Instant::now();
        eprint!("  [{}/{}] {} ... ", i + 1, plans.len(), plan.name);
        let outcome = run_both(plan, &policy)?;
        eprintln!("{:.1} s", at.elapsed().as_secs_f64());
        scenario_rows(&mut table, &outcome);
        legend(&mut legends, file, plan);
        problems.extend(
            outcome
                .problems
                .iter()
                .map(|problem| format!("{}: {problem}", plan.name)),
        );
        let delta = goodput_delta(&outcome);
        deltas.push((plan.name.clone(), delta));
        if json {
            let mut value = to_json(&outcome, file, &policy_file);
            value["goodput_delta_points"] = json!(delta);
            reports.push(value);
        }
    }
    print!("{table}");
    println!(
        "\n  goodput = served / min(offered, what the back end could serve); Δ pts = brownout's \
         goodput minus the baseline's; urgent = served share of class {:?}; p50/p99 = time to \
         answer of the served; p99 unserved = time to answer of the requests not served",
        classes.name(brownout::Priority::HIGHEST)
    );
    println!("\nScenarios:\n{legends}");
    let worse: Vec<String> = deltas
        .iter()
        .filter(|(_, d)| d.is_some_and(|d| d < -0.5))
        .map(|(name, d)| format!("{name} {}", points(*d)))
        .collect();
    if worse.is_empty() {
        println!(
            "brownout's whole-run goodput is within 0.5 points of the baseline's or above it in every scenario."
        );
    } else {
        println!(
            "brownout serves more than half a point less than the baseline (whole run, points): {}",
            worse.join(", ")
        );
    }
    if problems.is_empty() {
        println!(
            "Every request accounted for in every scenario: offered = served + fallback + \
             rejected, lost = 0, for both stacks; brownout's own counters agree."
        );
    } else {
        println!("\nACCOUNTING PROBLEMS:");
        for problem in &problems {
            println!("  {problem}");
        }
    }
    println!(
        "Ran {} scenarios in {:.1} s of wall time.",
        plans.len(),
        started.elapsed().as_secs_f64()
    );
    if json {
        println!(
            "{}",
            json!({
                "policy": policy_file,
                "scenarios": reports,
                "problems": problems,
            })
        );
    }
    Ok(problems.is_empty())
}
