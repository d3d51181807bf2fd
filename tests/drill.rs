//! The outage drill (`examples/drill`) on a short scenario: every request
//! gets exactly one outcome in both stacks, the JSON report carries every
//! field scripts rely on, a seed always gives the same figures, and
//! brownout keeps the contracts the drill checks (answers within the
//! deadline while the back end hangs, maintenance answered as such); and a
//! long outage with durable deferral loses no deferred request and replays
//! the backlog in priority order within the limit.
#![cfg(feature = "sim")]

// The drill's modules, compiled here as they are in the example; `main`
// and the printing are not used by the test.
#[allow(dead_code)]
#[path = "../examples/drill/main.rs"]
mod drill;

use drill::scenario::Scenario;
use serde_json::Value;

/// One minute per phase, every kind of phase, a small back end.
const SHORT: &str = r#"
name = "short"
seed = 11

[backend]
capacity = 20
service_time = { kind = "log_normal", mean = "200ms", cv = 0.3 }
timeout = "1s"

[clients]
deadline = "2s"
mix = { urgent = 0.2, normal = 0.5, bulk = 0.3 }

[[phases]]
name = "normal"
duration = "1m"
rate = 50

[[phases]]
name = "slow"
duration = "1m"
rate = 50
backend = { state = "slow", factor = 3.0 }

[[phases]]
name = "down"
duration = "1m"
rate = 20
retries = 2
backend = { state = "hang" }

[[phases]]
name = "reduced"
duration = "1m"
rate = 100
backend = { state = "up", capacity = 0.27 }

[[phases]]
name = "flapping"
duration = "1m"
rate = 50
backend = { state = "flapping", period = "20s" }

[[phases]]
name = "maintenance"
duration = "1m"
rate = 10
maintenance = "Planned upgrade."
backend = { state = "down" }

[[phases]]
name = "recovery"
duration = "1m"
rate = 60
"#;

fn run_short() -> (drill::Outcome, Value) {
    let (policy, policy_file) = drill::load_policy(None).expect("the booking policy loads");
    let classes = brownout::priority::Classes::from_policy(&policy.priority);
    let plan = Scenario::from_toml(SHORT)
        .expect("the short scenario parses")
        .plan(&classes)
        .expect("the short scenario plans");
    let outcome = drill::run_both(&plan, &policy).expect("the drill runs");
    let json = drill::to_json(&outcome, "short", &policy_file);
    (outcome, json)
}

const FIELDS: [&str; 8] = [
    "offered",
    "served",
    "fallback",
    "rejected",
    "lost",
    "goodput_ratio",
    "p99_latency_ms",
    "urgent_served_ratio",
];

fn int(figures: &Value, field: &str) -> u64 {
    figures[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a count: {figures}"))
}

fn sum(map: &Value) -> u64 {
    map.as_object()
        .expect("a map of reasons")
        .values()
        .map(|n| n.as_u64().expect("a count"))
        .sum()
}

#[test]
fn every_request_has_one_outcome_and_the_json_has_every_field() {
    let (outcome, json) = run_short();
    assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);

    let phases = [
        "normal",
        "slow",
        "down",
        "reduced",
        "flapping",
        "maintenance",
        "recovery",
    ];
    for stack in ["brownout", "baseline"] {
        let report = &json["stacks"][stack];
        let totals = &report["totals"];
        let listed = report["phases"].as_array().expect("phases");
        assert_eq!(listed.len(), phases.len(), "{stack}");
        let mut offered = 0;
        for (figures, name) in listed
            .iter()
            .chain([totals])
            .zip(phases.iter().map(Some).chain([None]))
        {
            for field in FIELDS {
                assert!(
                    figures.get(field).is_some(),
                    "{stack} {name:?}: no {field} in {figures}"
                );
            }
            if let Some(name) = name {
                assert_eq!(figures["name"], **name, "{stack}");
                offered += int(figures, "offered");
            }
            let what = format!("{stack} {name:?}");
            assert_eq!(int(figures, "lost"), 0, "{what}: lost requests");
            assert!(int(figures, "offered") > 0, "{what}: nothing offered");
            assert_eq!(
                int(figures, "offered"),
                int(figures, "served") + int(figures, "fallback") + int(figures, "rejected"),
                "{what}: conservation"
            );
            assert_eq!(
                int(figures, "fallback"),
                sum(&figures["fallback_by_reason"]),
                "{what}"
            );
            assert_eq!(
                int(figures, "rejected"),
                sum(&figures["rejected_by_reason"]),
                "{what}"
            );
        }
        assert_eq!(
            offered,
            int(totals, "offered"),
            "{stack}: phases add up to the total"
        );
    }

    // The baseline has no fallback: its failures are errors.
    assert_eq!(int(&json["stacks"]["baseline"]["totals"], "fallback"), 0);
    // brownout's own counters saw every request once.
    let library: u64 = json["stacks"]["brownout"]["library_counts"]
        .as_object()
        .expect("library counts")
        .iter()
        .filter(|(key, _)| !key.starts_with("would_reject"))
        .map(|(_, n)| n.as_u64().expect("a count"))
        .sum();
    assert_eq!(
        library,
        int(&json["stacks"]["brownout"]["totals"], "offered")
    );
    assert_eq!(json["scenario"]["name"], "short");
    assert_eq!(
        json["scenario"]["phases"].as_array().map(Vec::len),
        Some(phases.len())
    );
}

#[test]
fn brownout_answers_within_the_deadline_while_down_and_says_maintenance() {
    let (_, json) = run_short();
    let phase = |stack: &str, name: &str| {
        json["stacks"][stack]["phases"]
            .as_array()
            .expect("phases")
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .expect("phase")
    };
    let down = phase("brownout", "down");
    assert_eq!(int(&down, "late"), 0, "{down}");
    assert_eq!(int(&down, "served"), 0, "a hanging back end serves nothing");
    let maintenance = phase("brownout", "maintenance");
    let by_maintenance = maintenance["fallback_by_reason"]["maintenance"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        by_maintenance * 10 >= int(&maintenance, "offered") * 9,
        "most requests told it is maintenance: {maintenance}"
    );
    assert!(
        phase("baseline", "maintenance")["rejected_by_reason"]["backend_error"]
            .as_u64()
            .is_some_and(|n| n > 0)
    );
    // Back at full health, both stacks serve again.
    for stack in ["brownout", "baseline"] {
        let recovery = phase(stack, "recovery");
        assert!(int(&recovery, "served") > 0, "{stack}: {recovery}");
    }
}

#[test]
fn a_seed_always_gives_the_same_figures() {
    let (_, first) = run_short();
    let (_, second) = run_short();
    assert_eq!(first["stacks"], second["stacks"]);
}

#[test]
fn the_seed_scenario_and_the_booking_policy_load() {
    let (scenario, _) = drill::load_scenario(None).expect("seed.toml parses");
    let (policy, _) = drill::load_policy(None).expect("booking.toml loads");
    let classes = brownout::priority::Classes::from_policy(&policy.priority);
    let plan = scenario.plan(&classes).expect("seed.toml plans");
    assert!(plan.phases.iter().any(|p| p.maintenance.is_some()));
    assert!(plan.phases.iter().any(|p| p.capacity_fraction < 1.0));
}

#[test]
fn a_bad_policy_names_its_field() {
    let err = drill::parse_policy("[limit]\ninitial = 0\n").unwrap_err();
    assert!(err.starts_with("limit.initial"), "{err}");
    let err = drill::parse_policy("[limit]\ninital = 5\n").unwrap_err();
    assert!(err.starts_with("limit.inital"), "{err}");
}

#[test]
fn every_scenario_file_parses_and_plans() {
    let (policy, _) = drill::load_policy(None).expect("booking.toml loads");
    let classes = brownout::priority::Classes::from_policy(&policy.priority);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/scenarios");
    let plans = drill::all::load_all(Some(std::path::Path::new(dir)), &classes)
        .unwrap_or_else(|err| panic!("{err}"));
    let names: Vec<&str> = plans.iter().map(|(_, plan)| plan.name.as_str()).collect();
    // The family: each file once, named as its file.
    for name in [
        "seed",
        "slow-x2",
        "slow-x4",
        "slow-x8",
        "cut-27",
        "cut-10",
        "ramp-to-dead",
        "heavy-tail",
        "abandoned",
        "burst",
        "healthy-20",
        "healthy-60",
        "healthy-95",
        "long-outage",
        "long-outage-defer",
    ] {
        assert!(names.contains(&name), "no scenario {name:?} in {names:?}");
    }
    for (file, plan) in &plans {
        assert!(
            file.ends_with(&format!("/{}.toml", plan.name)),
            "{file} is named {:?}",
            plan.name
        );
        assert!(!plan.description.is_empty(), "{file}: no description");
        // Virtual time is cheap, but not free: keep `--all` quick.
        let requests: f64 = plan
            .phases
            .iter()
            .map(|p| p.rate * p.duration.as_secs_f64())
            .sum();
        assert!(requests < 2_000_000.0, "{file}: {requests} requests");
    }
    let abandoned = &plans[names.iter().position(|n| *n == "abandoned").unwrap()].1;
    assert_eq!(abandoned.abandoned, brownout::sim::Abandoned::KeepWorking);
    let heavy = &plans[names.iter().position(|n| *n == "heavy-tail").unwrap()].1;
    assert!(
        heavy
            .phases
            .iter()
            .any(|p| matches!(p.service_time, brownout::sim::ServiceTime::Pareto { .. }))
    );
}

#[test]
fn a_bad_scenario_in_the_directory_names_its_file_and_field() {
    let dir = std::env::temp_dir().join(format!("brownout-drill-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = SHORT.replace(
        "{ kind = \"log_normal\", mean = \"200ms\", cv = 0.3 }",
        "{ kind = \"pareto\", mean = \"200ms\", alpha = 0.8 }",
    );
    std::fs::write(dir.join("bad.toml"), bad).unwrap();
    let classes = brownout::priority::Classes::default();
    let err = drill::all::load_all(Some(&dir), &classes).unwrap_err();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(err.contains("bad.toml"), "{err}");
    assert!(err.contains("backend.service_time.alpha"), "{err}");
}

/// `examples/scenarios/long-outage-defer.toml` with its trickle cut from
/// two days to two hours and `max_age` from 36 h to one hour, so that the
/// test stays quick and still sees requests expire.
fn short_long_outage_defer() -> drill::scenario::Plan {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/scenarios/long-outage-defer.toml"
    );
    let text = std::fs::read_to_string(file).expect("the scenario file reads");
    let shortened = text
        .replace("duration = \"47h 59m\"", "duration = \"2h\"")
        .replace("max_age = \"36h\"", "max_age = \"1h\"");
    assert_ne!(
        shortened, text,
        "the trickle and max_age are where the test expects them"
    );
    assert!(shortened.contains("duration = \"2h\"") && shortened.contains("max_age = \"1h\""));
    let (policy, _) = drill::load_policy(None).expect("the booking policy loads");
    let classes = brownout::priority::Classes::from_policy(&policy.priority);
    Scenario::from_toml(&shortened)
        .expect("the scenario parses")
        .plan(&classes)
        .expect("the scenario plans")
}

#[test]
fn a_long_outage_with_deferral_loses_nothing_and_replays_in_priority_order_within_the_limit() {
    let plan = short_long_outage_defer();
    let (policy, policy_file) = drill::load_policy(None).expect("the booking policy loads");
    let outcome = drill::run_both(&plan, &policy).expect("the drill runs");
    assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);
    assert!(
        outcome.baseline_report.deferral.is_none(),
        "the baseline does not defer"
    );
    let deferral = outcome
        .brownout_report
        .deferral
        .as_ref()
        .expect("brownout deferred on a [defer] scenario");

    // Conservation, each request looked up in the store by its ticket.
    assert!(deferral.deferred > 0, "{deferral:?}");
    assert_eq!(deferral.lost, 0, "{deferral:?}");
    assert_eq!(
        deferral.deferred,
        deferral.replayed + deferral.failed + deferral.expired + deferral.pending,
        "{deferral:?}"
    );
    assert_eq!(
        deferral.deferred,
        deferral.deferred_by_class.values().sum::<u64>()
    );
    assert_eq!(
        deferral.replayed,
        deferral.replayed_by_class.values().sum::<u64>()
    );
    assert_eq!(
        deferral.expired,
        deferral.expired_by_class.values().sum::<u64>()
    );
    // The back end is back long enough: everything not expired is served.
    assert_eq!(deferral.pending, 0, "{deferral:?}");
    assert_eq!(deferral.pending_in_store, 0, "{deferral:?}");
    assert!(
        deferral.replayed > 0 && deferral.expired > 0,
        "{deferral:?}"
    );
    assert_eq!(deferral.replay_served_seen, deferral.replayed);
    // Only the classes the scenario names are deferred.
    assert_eq!(deferral.deferred_classes, ["urgent", "normal"]);
    assert!(!deferral.deferred_by_class.contains_key("bulk"));

    // Most important class first, oldest first within it.
    assert!(deferral.backlog_first_sends > 0, "{deferral:?}");
    assert_eq!(deferral.order_violations, 0, "{deferral:?}");

    // Drained, never over the limit while draining.
    let drained = deferral.drained_after_s.expect("the backlog drained");
    assert!(drained > 0.0, "{deferral:?}");
    assert!(deferral.drain.replay_admissions > 0, "{deferral:?}");
    assert_eq!(deferral.drain.over_limit_admissions, 0, "{deferral:?}");
    let live = deferral.live.as_ref().expect("live traffic while draining");
    assert!(live.brownout.offered > 0 && live.brownout.offered == live.baseline.offered);

    // brownout's own counters: every live request and every replay once.
    assert_eq!(
        outcome.brownout.library.total(),
        outcome.brownout_report.totals.offered + deferral.replay_attempts
    );

    // The JSON carries the figures.
    let json = drill::to_json(&outcome, "long-outage-defer", &policy_file);
    for field in [
        "deferred",
        "deferred_by_class",
        "replayed",
        "replayed_by_class",
        "expired",
        "pending",
        "lost",
        "order_violations",
        "drained_after_s",
        "drain",
        "live",
    ] {
        assert!(
            json["deferral"].get(field).is_some(),
            "no deferral.{field} in the JSON"
        );
    }
    assert_eq!(json["deferral"], json["stacks"]["brownout"]["deferral"]);
}
