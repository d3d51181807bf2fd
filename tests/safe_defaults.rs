//! `Policy::default()` (which is also the policy the README shows, see
//! tests/readme.rs) does no harm in front of a healthy back end: at 20%,
//! 60% and 95% of its capacity, with steady (cv 0.3) and exponential
//! (cv 1.0) service times, with a tight caller deadline and with none to
//! speak of, it never opens the breaker, turns nobody away once the first
//! 10 s are over, and serves at least what plain tower's
//! `ConcurrencyLimit` sized for the back end serves in the same run.
//!
//! Each case is a fresh start (the limit begins at the default `initial`)
//! through the drill, in virtual time, beside its plain-tower baseline.
#![cfg(feature = "sim")]

#[allow(dead_code)]
#[path = "../examples/drill/main.rs"]
mod drill;

use brownout::Policy;
use brownout::priority::Classes;
use drill::scenario::Scenario;

/// The back end serves 100 calls at once, 400 ms each on average: 250
/// calls a second.
const SERVABLE: f64 = 250.0;

/// One case: a 10 s warm-up and 50 s of the same load, from a fresh start.
fn scenario(load: f64, cv: f64, deadline: &str, seed: u64) -> String {
    let rate = SERVABLE * load;
    format!(
        r#"
name = "healthy"
seed = {seed}

[backend]
capacity = 100
service_time = {{ kind = "gamma", mean = "400ms", cv = {cv} }}
timeout = "3s"

[clients]
deadline = "{deadline}"
mix = {{ urgent = 0.1, normal = 0.6, bulk = 0.3 }}

[baseline]
concurrency = 100

[[phases]]
name = "first 10 s"
duration = "10s"
rate = {rate}

[[phases]]
name = "after"
duration = "50s"
rate = {rate}
"#
    )
}

#[test]
fn the_default_policy_does_no_harm_in_front_of_a_healthy_back_end() {
    let policy = Policy::default();
    let classes = Classes::from_policy(&policy.priority);
    let mut failures = Vec::new();
    let mut seed = 1;
    for load in [0.2, 0.6, 0.95] {
        for cv in [0.3, 1.0] {
            // 2 s: tight for cv 1.0 (0.7% of calls take longer); 1 h: no
            // deadline to speak of (the back end's 3 s timeout rules).
            for deadline in ["2s", "1h"] {
                seed += 1;
                let case = format!("load {load}, cv {cv}, deadline {deadline}");
                let plan = Scenario::from_toml(&scenario(load, cv, deadline, seed))
                    .expect("the scenario parses")
                    .plan(&classes)
                    .expect("the scenario plans");
                let outcome = drill::run_both(&plan, &policy).expect("the drill runs");
                assert!(
                    outcome.problems.is_empty(),
                    "{case}: {:?}",
                    outcome.problems
                );

                let openings: u64 = outcome
                    .brownout
                    .phases
                    .iter()
                    .flat_map(|phase| &phase.transitions)
                    .filter(|(name, _)| name.ends_with("->open"))
                    .map(|(_, n)| n)
                    .sum();
                if openings > 0 {
                    failures.push(format!("{case}: the breaker opened {openings}x"));
                }
                // Turned away by brownout itself (a call the back end did
                // not finish by its caller's deadline is answered
                // `deadline` by both stacks, and counts in goodput below).
                let after = &outcome.brownout.phases[1];
                let turned_away: u64 = ["shed", "queue_full", "queue_timeout", "open"]
                    .iter()
                    .filter_map(|reason| after.fallback.get(reason))
                    .sum();
                if turned_away > 0 {
                    failures.push(format!(
                        "{case}: {turned_away} turned away after the first 10 s: {:?}",
                        after.fallback
                    ));
                }
                let goodput = |report: &drill::report::StackReport, phase: Option<usize>| {
                    let figures = phase.map_or(&report.totals, |i| &report.phases[i]);
                    figures.goodput_ratio.unwrap()
                };
                let (ours, plain) = (&outcome.brownout_report, &outcome.baseline_report);
                // After the first 10 s, what plain tower serves (within a
                // tenth of a point); over the whole run, the cold start
                // included, within half a point.
                for (phase, slack) in [(Some(1), 0.001), (None, 0.005)] {
                    let (ours, plain) = (goodput(ours, phase), goodput(plain, phase));
                    if ours < plain - slack {
                        failures.push(format!(
                            "{case}, {}: goodput {:.2}% against plain tower's {:.2}%",
                            phase.map_or("whole run", |_| "after 10 s"),
                            ours * 100.0,
                            plain * 100.0
                        ));
                    }
                }
                // Without a deadline every call the back end finishes
                // within its timeout is served: all but a rare tail.
                let after = goodput(ours, Some(1));
                if deadline == "1h" && after < 0.999 {
                    failures.push(format!("{case}: goodput {:.2}% after 10 s", after * 100.0));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
