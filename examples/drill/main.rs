//! The outage drill: replays an outage scenario in virtual time against a
//! simulated back end, once behind brownout and once behind plain tower,
//! and reports what each did to the traffic.
//!
//! ```text
//! cargo run --release --example drill                          # the built-in scenario
//! cargo run --release --example drill -- my-outage.toml --json # yours, plus JSON
//! cargo run --release --example drill -- --all                 # every file in examples/scenarios
//! ```
//!
//! `--all` runs every scenario file in `examples/scenarios/` (or in the
//! directory given after it) and prints one table: scenario × phase ×
//! stack → goodput, urgent served, p50/p99 latency of the served, p99 time
//! to answer the unserved, lost; and per scenario brownout's goodput minus
//! the baseline's. With `--json`, one JSON object for the whole set.
//!
//! Options: `--policy FILE` (default `examples/policies/booking.toml`),
//! `--svg FILE` (default `target/drill/report.svg`), `--csv FILE` (the
//! chart's time series), `--sample-every DURATION` (their resolution;
//! about 900 samples by default), `--json` (print one JSON object as the last line).
//!
//! The scenario (see `examples/scenarios/seed.toml`, which follows the
//! outages the README tells of) says what the back end does phase by phase — up,
//! slow, down (refusing), hanging, at a fraction of its capacity, flapping
//! — and what the clients do: how many requests a second (open-loop,
//! seeded Poisson arrivals), which priority classes, their deadline, and
//! whether they retry after `Retry-After`.
//!
//! Both stacks see the same seeded arrivals, each in front of its own
//! simulated back end with the same conditions and seed:
//!
//! - **brownout**: `BrownoutLayer::from_policy(&policy)` with a fallback
//!   that answers every rejection at once (its reason and `Retry-After`),
//!   classes from the request, and a wait bounded so that the back-end call
//!   still fits in the client's deadline; then tower's `Timeout`.
//! - **baseline**: tower's `LoadShed` + `ConcurrencyLimit` (sized for the
//!   back end's full capacity) + `Timeout`.
//!
//! A scenario with a `[defer]` section (`examples/scenarios/long-outage-defer.toml`)
//! also gives brownout durable deferral: the rejections it names are
//! written to a real embedded store and answered "deferred", and the
//! crate's replayer drains the store through the same stack once the back
//! end is back. The report then shows every deferred request's end
//! (replayed, expired, pending, lost), the replay order, the drain's length
//! and the stack against its limit meanwhile (see `defer.rs`).
//!
//! Everything runs in paused tokio time on current-thread runtimes (one
//! thread per stack), so hours of scenario take seconds and a seed always
//! gives the same numbers. Every request's outcome is counted: `served`
//! (by the back end, within the deadline), `fallback` (by brownout's
//! fallback), `rejected` (an error, or no answer by the deadline), and
//! `lost` (no outcome at all), which must be 0; the drill exits with status
//! 1 if it is not, or if the library's own counters disagree.

pub mod all;
pub mod chart;
pub mod defer;
pub mod report;
pub mod run;
pub mod scenario;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use brownout::Policy;
use brownout::priority::Classes;
use serde_json::json;

use self::report::{StackReport, targets, targets_table};
use self::run::{Stack, StackRun};
use self::scenario::{Plan, Scenario};

/// The built-in policy, `examples/policies/booking.toml`.
const BOOKING_POLICY: &str = include_str!("../policies/booking.toml");
const BOOKING_POLICY_PATH: &str = "examples/policies/booking.toml";

/// Where `--all` finds its scenarios unless told.
const SCENARIO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/scenarios");

/// Replays an outage scenario in virtual time against a simulated back end,
/// behind brownout and behind plain tower, and reports what each did to the
/// traffic. Exits with 1 if a request went unaccounted for, 2 on bad input.
#[derive(Debug, clap::Parser)]
#[command(name = "drill")]
struct Args {
    /// The scenario file (default: the built-in examples/scenarios/seed.toml);
    /// with --all, the directory of scenario files (default:
    /// examples/scenarios).
    #[arg(value_name = "SCENARIO")]
    scenario: Option<PathBuf>,
    /// The brownout policy (default: examples/policies/booking.toml).
    #[arg(long, value_name = "POLICY.toml")]
    policy: Option<PathBuf>,
    /// Where the chart goes (default: target/drill/report.svg).
    #[arg(long, value_name = "REPORT.svg", conflicts_with = "all")]
    svg: Option<PathBuf>,
    /// Also write the chart's time series as CSV.
    #[arg(long, value_name = "SAMPLES.csv", conflicts_with = "all")]
    csv: Option<PathBuf>,
    /// The chart's resolution, e.g. 1s (default: about 900 samples).
    #[arg(
        long,
        value_name = "DURATION",
        value_parser = sample_every,
        conflicts_with = "all"
    )]
    sample_every: Option<Duration>,
    /// Print one JSON object with every figure as the last line.
    #[arg(long)]
    json: bool,
    /// Run every scenario file of a directory and print one table.
    #[arg(long)]
    all: bool,
}

/// `--sample-every`: a duration up to a day.
fn sample_every(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .ok()
        .filter(|every| *every <= Duration::from_secs(86_400))
        .ok_or_else(|| "not a duration up to a day, e.g. 1s or 250ms".to_owned())
}

fn main() -> ExitCode {
    // `RUST_LOG=brownout=trace` shows every learning round of the limit.
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    // Usage errors exit with 2, `--help` with 0, as before clap.
    let args = <Args as clap::Parser>::parse();
    let result = if args.all {
        all::drill_all(args.scenario.as_deref(), args.policy.as_deref(), args.json)
    } else {
        drill(&args)
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(message) => {
            eprintln!("drill: {message}");
            ExitCode::from(2)
        }
    }
}

/// Everything the drill found, ready to print.
pub struct Outcome {
    pub plan: Plan,
    pub brownout: StackRun,
    pub baseline: StackRun,
    pub brownout_report: StackReport,
    pub baseline_report: StackReport,
    pub classes: Classes,
    /// Lost requests, broken conservation or library counters that
    /// disagree, in words; empty when every request is accounted for.
    pub problems: Vec<String>,
}

/// Loads a policy file (or the built-in one); errors name the field.
pub fn load_policy(path: Option<&Path>) -> Result<(Policy, String), String> {
    let (text, name) = match path {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|err| format!("cannot read policy {}: {err}", path.display()))?,
            path.display().to_string(),
        ),
        None => (BOOKING_POLICY.to_owned(), BOOKING_POLICY_PATH.to_owned()),
    };
    let policy = parse_policy(&text).map_err(|err| format!("{name}: {err}"))?;
    Ok((policy, name))
}

/// Reads a TOML policy with the library's types and checks; the drill
/// does not rely on the library's `toml` feature being on.
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    let document = toml::Deserializer::parse(text).map_err(|err| err.message().to_owned())?;
    let policy: Policy = serde_path_to_error::deserialize(document)
        .map_err(|err| format!("{}: {}", err.path(), err.inner().message().trim_end()))?;
    policy.validate().map_err(|err| err.to_string())?;
    Ok(policy)
}

/// Loads a scenario file (or the built-in one); errors name the field.
pub fn load_scenario(path: Option<&Path>) -> Result<(Scenario, String), String> {
    let (text, name) = match path {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|err| format!("cannot read scenario {}: {err}", path.display()))?,
            path.display().to_string(),
        ),
        None => (scenario::SEED.to_owned(), scenario::SEED_PATH.to_owned()),
    };
    let scenario = Scenario::from_toml(&text).map_err(|err| format!("{name}: {err}"))?;
    Ok((scenario, name))
}

/// Runs both stacks through `plan`, each on its own thread.
pub fn run_both(plan: &Plan, policy: &Policy) -> Result<Outcome, String> {
    let classes = Classes::from_policy(&policy.priority);
    let (brownout, baseline) = std::thread::scope(|scope| {
        let brownout = scope.spawn(|| run::run(Stack::Brownout, plan, policy));
        let baseline = run::run(Stack::Baseline, plan, policy);
        let brownout = brownout
            .join()
            .unwrap_or_else(|_| Err("the brownout run panicked".into()));
        (brownout, baseline)
    });
    let (brownout, baseline) = (brownout?, baseline?);
    let mut brownout_report = StackReport::new(plan, &brownout, &classes);
    let baseline_report = StackReport::new(plan, &baseline, &classes);
    let mut problems = Vec::new();
    if let Some(deferral) = &mut brownout_report.deferral {
        deferral.live = defer::live_during_drain(deferral, &brownout, &baseline);
        problems.extend(deferral.problems());
    }
    for (run, report) in [(&brownout, &brownout_report), (&baseline, &baseline_report)] {
        let name = run.stack.name();
        for f in report.phases.iter().chain([&report.totals]) {
            let phase = f.name.as_deref().unwrap_or("total");
            if f.lost > 0 {
                problems.push(format!("{name}, {phase}: {} requests lost", f.lost));
            }
            let answered = f.served + f.fallback + f.rejected;
            if f.offered != answered + f.lost {
                problems.push(format!(
                    "{name}, {phase}: offered {} != served {} + fallback {} + rejected {} + lost {}",
                    f.offered, f.served, f.fallback, f.rejected, f.lost
                ));
            }
        }
        if run.unfinished > 0 {
            problems.push(format!(
                "{name}: {} requests still running after their deadline",
                run.unfinished
            ));
        }
    }
    // brownout counts every request it saw once, by its own outcome: the
    // drill's, and each replay the replayer sent through it.
    let counted = brownout.library.total();
    let replays = brownout
        .deferral
        .as_ref()
        .map_or(0, |deferral| deferral.replay_attempts);
    if counted != brownout_report.totals.offered + replays {
        problems.push(format!(
            "brownout's brownout_requests_total counts {counted} requests, the drill offered {} \
             and replayed {replays}",
            brownout_report.totals.offered
        ));
    }
    Ok(Outcome {
        plan: plan.clone(),
        brownout,
        baseline,
        brownout_report,
        baseline_report,
        classes,
        problems,
    })
}

/// The one JSON object `--json` prints.
pub fn to_json(outcome: &Outcome, scenario_file: &str, policy_file: &str) -> serde_json::Value {
    let plan = &outcome.plan;
    let phases: Vec<_> = plan
        .phases
        .iter()
        .map(|p| {
            json!({
                "name": p.name,
                "start_s": p.start.as_secs_f64(),
                "duration_s": p.duration.as_secs_f64(),
                "backend": p.describe(plan),
                "rate": p.rate,
                "capacity_per_s": p.throughput(plan),
                "deadline_ms": p.deadline.as_secs_f64() * 1e3,
                "retries": p.retries,
                "maintenance": p.maintenance,
            })
        })
        .collect();
    let targets = targets(plan, &outcome.brownout_report, &outcome.baseline_report);
    json!({
        "scenario": {
            "name": plan.name,
            "description": plan.description,
            "file": scenario_file,
            "policy": policy_file,
            "seed": plan.seed,
            "duration_s": plan.total.as_secs_f64(),
            "phases": phases,
        },
        "stacks": {
            "brownout": outcome.brownout_report,
            "baseline": outcome.baseline_report,
        },
        "targets": targets,
        "problems": outcome.problems,
        // Durable deferral's figures (scenarios with `[defer]`; null otherwise).
        "deferral": outcome.brownout_report.deferral,
    })
}

/// The time series behind the chart, one row per sample and stack.
fn write_csv(path: &Path, outcome: &Outcome) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(
        out,
        "stack,t_s,goodput_per_s,inflight,limit,waiting,breaker"
    )?;
    for run in [&outcome.brownout, &outcome.baseline] {
        for s in &run.samples {
            let opt = |v: Option<f64>| v.map_or(String::new(), |v| v.to_string());
            writeln!(
                out,
                "{},{},{},{},{},{},{}",
                run.stack.name(),
                s.t,
                s.goodput,
                s.inflight,
                opt(s.limit.map(f64::from)),
                s.waiting,
                opt(s.breaker),
            )?;
        }
    }
    out.flush()
}

/// Where the chart goes by default: `<target dir>/drill/report.svg`, the
/// target dir being the one this binary was built into.
fn default_svg() -> PathBuf {
    let target = std::env::current_exe().ok().and_then(|exe| {
        // <target>/<profile>/examples/drill
        let dir = exe.parent()?.parent()?.parent()?;
        dir.is_dir().then(|| dir.to_path_buf())
    });
    target
        .unwrap_or_else(|| PathBuf::from("target"))
        .join("drill")
        .join("report.svg")
}

fn drill(args: &Args) -> Result<bool, String> {
    let (scenario, scenario_file) = load_scenario(args.scenario.as_deref())?;
    let (policy, policy_file) = load_policy(args.policy.as_deref())?;
    let classes = Classes::from_policy(&policy.priority);
    let mut plan = scenario
        .plan(&classes)
        .map_err(|err| format!("{scenario_file}: {err}"))?;
    plan.sample_every = args.sample_every;

    let requests: f64 = plan
        .phases
        .iter()
        .map(|p| p.rate * p.duration.as_secs_f64())
        .sum();
    println!(
        "brownout drill: scenario {:?} from {scenario_file}, policy {policy_file}, seed {}",
        plan.name, plan.seed
    );
    if !plan.description.is_empty() {
        println!("  {}", plan.description);
    }
    println!(
        "  back end: {} slots, {:?} service time (mean {}), calls time out after {}; \
         baseline: LoadShed + ConcurrencyLimit({}) + Timeout({})",
        plan.capacity,
        plan.service_time,
        humantime::format_duration(plan.service_time.mean()),
        humantime::format_duration(plan.timeout),
        plan.baseline_concurrency,
        humantime::format_duration(plan.timeout),
    );
    println!(
        "  {} of virtual time, about {} new requests per stack",
        humantime::format_duration(plan.total),
        report::count(requests.round() as u64)
    );
    for phase in plan.phases.iter().filter(|p| p.maintenance.is_some()) {
        println!(
            "  note: phase {:?} is planned maintenance: brownout's policy gets a [[maintenance]] \
             window for it; the baseline only sees the back end down",
            phase.name
        );
    }

    if let Some(defer) = &plan.defer {
        println!(
            "  note: brownout defers what it rejects ({}) into an embedded store; the replayer \
             drains it from phase {:?} on; the baseline has no deferral",
            defer.policy.when.join(", "),
            plan.phases[defer.recovery].name
        );
    }

    let started = Instant::now();
    let outcome = run_both(&plan, &policy)?;
    let wall = started.elapsed();

    print!(
        "{}",
        report::table(
            &plan,
            &outcome.brownout_report,
            &outcome.baseline_report,
            &outcome.classes
        )
    );
    println!(
        "\n  goodput = served / min(offered, what the back end could serve); p99 unserved = time to \
         answer the requests not served; urgent = served share of class {:?}",
        outcome.classes.name(brownout::Priority::HIGHEST)
    );
    if let Some(deferral) = &outcome.brownout_report.deferral {
        print!("{}", defer::summary(deferral));
    }
    let targets = targets(&plan, &outcome.brownout_report, &outcome.baseline_report);
    if !targets.is_empty() {
        println!("\nTargets");
        print!("{}", targets_table(&targets));
    }

    if outcome.problems.is_empty() {
        println!(
            "\nEvery request accounted for: offered = served + fallback + rejected, lost = 0, \
             for both stacks; brownout's own counters agree ({} requests).",
            report::count(outcome.brownout.library.total())
        );
    } else {
        println!("\nACCOUNTING PROBLEMS:");
        for problem in &outcome.problems {
            println!("  {problem}");
        }
    }

    let svg = args.svg.clone().unwrap_or_else(default_svg);
    if let Some(dir) = svg.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|err| format!("cannot create {}: {err}", dir.display()))?;
    }
    chart::write_svg(&svg, &plan, &outcome.brownout, &outcome.baseline)?;
    println!("Chart written to {}", svg.display());
    if let Some(csv) = &args.csv {
        write_csv(csv, &outcome).map_err(|err| format!("cannot write {}: {err}", csv.display()))?;
        println!("Samples written to {}", csv.display());
    }
    println!(
        "Ran {} of virtual time in {:.1} s of wall time.",
        humantime::format_duration(plan.total),
        wall.as_secs_f64()
    );

    if args.json {
        println!("{}", to_json(&outcome, &scenario_file, &policy_file));
    }
    Ok(outcome.problems.is_empty())
}

#[cfg(test)]
mod args_tests {
    use clap::{CommandFactory, Parser, error::ErrorKind};

    use super::*;

    #[test]
    fn every_flag_parses_and_all_draws_no_chart() {
        Args::command().debug_assert();
        let args = Args::try_parse_from([
            "drill",
            "my.toml",
            "--policy",
            "p.toml",
            "--svg",
            "r.svg",
            "--csv",
            "s.csv",
            "--sample-every",
            "1s 500ms",
            "--json",
        ])
        .expect("every flag of one scenario");
        assert_eq!(args.scenario.as_deref(), Some(Path::new("my.toml")));
        assert_eq!(args.policy.as_deref(), Some(Path::new("p.toml")));
        assert_eq!(args.svg.as_deref(), Some(Path::new("r.svg")));
        assert_eq!(args.csv.as_deref(), Some(Path::new("s.csv")));
        assert_eq!(args.sample_every, Some(Duration::from_millis(1500)));
        assert!(args.json && !args.all);

        let args = Args::try_parse_from(["drill", "--all", "dir", "--json"]).expect("--all");
        assert!(args.all && args.json);
        assert_eq!(args.scenario.as_deref(), Some(Path::new("dir")));

        let err = |argv: &[&str]| Args::try_parse_from(argv).expect_err("refused").kind();
        assert_eq!(
            err(&["drill", "--all", "--csv", "s.csv"]),
            ErrorKind::ArgumentConflict
        );
        assert_eq!(
            err(&["drill", "--sample-every", "2d"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            err(&["drill", "--sample-every", "soon"]),
            ErrorKind::ValueValidation
        );
        assert_eq!(
            err(&["drill", "a.toml", "b.toml"]),
            ErrorKind::UnknownArgument
        );
        assert_eq!(err(&["drill", "--policy"]), ErrorKind::InvalidValue);
    }
}
