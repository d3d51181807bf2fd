//! Ops' policy file in the tests: the policy reference's example (docs/policy.md), verbatim, in parts,
//! and loading helpers.

use brownout::{Policy, PolicyError};

// `concat!` takes literals only: each part is a macro.
macro_rules! breaker_part {
    () => {
        r#"
[breaker]
window = { kind = "count", size = 100 }     # or { kind = "time", size = "30s" }
failure_rate = 0.5                          # open at >= this share of failures
slow_call_rate = 1.0                        # open at >= this share of slow calls
slow_call_duration = "5s"
minimum_calls = 20                          # no verdict before this many calls
open_for = "5s"                             # first open period
open_backoff = { multiplier = 2.0, max = "5m", jitter = 0.1 }  # while flapping
half_open_probes = 3                        # calls let through to test
mode = "enforce"                            # enforce | shadow | forced_open | forced_closed
"#
    };
}
macro_rules! sections_part {
    () => {
        r#"
[limit]
algorithm = "capacity"                      # capacity | fixed | aimd | vegas | gradient
initial = 20
min = 1
max = 1000

[waiting_room]
capacity = 1000                             # 0 = never wait
max_wait = "10s"
order = "priority_fifo"                     # priority_fifo | adaptive_lifo

[priority]
header = "x-priority"                       # where HTTP requests say their class
classes = ["urgent", "normal", "bulk"]      # most to least important; shed from the last
default = "normal"
"#
    };
}
macro_rules! maintenance_part {
    () => {
        r#"
[[maintenance]]
from = "2026-12-02T00:00:00+05:30"          # RFC 3339
until = "2026-12-09T00:00:00+05:30"
message = "Planned upgrade. Urgent files: use e-mail."
"#
    };
}
macro_rules! routes_part {
    () => {
        r#"
[routes."/payments"]                        # per-route overrides of any section above
waiting_room = { capacity = 0 }             # never hold a payment
"#
    };
}

/// The policy reference's `[breaker]` section.
pub const DESIGN_BREAKER_TOML: &str = breaker_part!();

/// the policy reference's example (docs/policy.md) up to `[priority]`: `[breaker]`, `[limit]`,
/// `[waiting_room]` and `[priority]`.
pub const DESIGN_SECTIONS_TOML: &str = concat!(breaker_part!(), sections_part!());

/// The rest of the policy reference's example (docs/policy.md): `[[maintenance]]` and `[routes."…"]`.
pub const DESIGN_LATER_TOML: &str = concat!(maintenance_part!(), routes_part!());

/// the policy reference's example (docs/policy.md) without `[[maintenance]]`.
pub const DESIGN_NO_MAINTENANCE_TOML: &str =
    concat!(breaker_part!(), sections_part!(), routes_part!());

/// The policy `text` holds; panics naming the text and the error.
pub fn load(text: &str) -> Policy {
    Policy::from_toml(text).unwrap_or_else(|err| panic!("{text:?}: {err}"))
}

/// The error `text` gets; panics if it loads.
pub fn error(text: &str) -> PolicyError {
    match Policy::from_toml(text) {
        Ok(policy) => panic!("{text:?} loaded: {policy:?}"),
        Err(err) => err,
    }
}

/// Checks that `from` refuses each text with exactly its message.
pub fn assert_messages(from: fn(&str) -> Result<Policy, PolicyError>, cases: &[(&str, &str)]) {
    for &(text, expected) in cases {
        let err = from(text).unwrap_err();
        assert_eq!(err.to_string(), expected, "{text:?}");
    }
}
