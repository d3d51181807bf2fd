//! Per-route overrides, `[routes."…"]` of the policy reference (docs/policy.md): inheritance field by
//! field, round trips that keep only what was written, the exact message of
//! every bad input, and proptests of the merge.
#![cfg(feature = "toml")]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use brownout::policy::{
    Algorithm, BackoffOverride, BreakerOverride, LimitOverride, Order, RoutePolicy,
    WaitingRoomOverride,
};
use brownout::{
    BackoffPolicy, BreakerPolicy, LimitPolicy, Mode, Policy, Trip, WaitingRoomPolicy, WindowPolicy,
};

use support::policy::{DESIGN_NO_MAINTENANCE_TOML, error, load};

/// The example ops gave for the feature.
const OPS_TOML: &str = r#"
[waiting_room]
capacity = 1000
max_wait = "10s"

[routes."/payments"]
waiting_room = { capacity = 0 }          # never hold a payment; max_wait is inherited ("10s")
breaker = { failure_rate = 0.2 }

[routes."/slots"]
limit = { initial = 50, max = 400 }
"#;

/// The top-level policy as a route that overrides nothing sees it.
fn top_level(policy: &Policy) -> Policy {
    Policy {
        routes: BTreeMap::new(),
        ..policy.clone()
    }
}

// ------------------------------------------------------------ the examples

#[test]
fn ops_example_routes_inherit_what_they_do_not_name() {
    let policy = load(OPS_TOML);

    // What was written, and nothing else.
    assert_eq!(
        policy.routes,
        BTreeMap::from([
            (
                "/payments".to_owned(),
                RoutePolicy {
                    breaker: BreakerOverride {
                        failure_rate: Some(0.2),
                        ..BreakerOverride::default()
                    },
                    waiting_room: WaitingRoomOverride {
                        capacity: Some(0),
                        ..WaitingRoomOverride::default()
                    },
                    ..RoutePolicy::default()
                }
            ),
            (
                "/slots".to_owned(),
                RoutePolicy {
                    limit: LimitOverride {
                        initial: Some(50),
                        max: Some(400),
                        ..LimitOverride::default()
                    },
                    ..RoutePolicy::default()
                }
            ),
        ])
    );

    let payments = policy.route("/payments");
    assert_eq!(
        payments.waiting_room,
        WaitingRoomPolicy {
            capacity: 0,
            ..policy.waiting_room.clone()
        }
    );
    assert_eq!(payments.waiting_room.max_wait, Duration::from_secs(10));
    assert_eq!(
        payments.breaker,
        BreakerPolicy {
            failure_rate: 0.2,
            ..policy.breaker.clone()
        }
    );
    assert_eq!(payments.limit, policy.limit);
    assert_eq!(payments.priority, policy.priority);
    assert!(payments.routes.is_empty());

    let slots = policy.route("/slots");
    assert_eq!(
        slots.limit,
        LimitPolicy {
            initial: 50,
            max: 400,
            ..LimitPolicy::default()
        }
    );
    assert_eq!(slots.breaker, policy.breaker);
    assert_eq!(slots.waiting_room, policy.waiting_room);

    // A route not listed gets the top level, as does an inexact key.
    for other in ["/appointments", "/payments/", "/Payments", "", "payments"] {
        assert_eq!(policy.route(other), top_level(&policy), "{other:?}");
    }
}

/// Inherited means from the top-level section as written, not from the
/// defaults: top-level values that differ from the defaults reach routes.
#[test]
fn routes_inherit_the_top_level_not_the_defaults() {
    let policy = load(
        r#"
        [breaker]
        open_for = "20s"
        open_backoff = { multiplier = 3.0, reset_after = "1h" }
        mode = "shadow"
        [limit]
        algorithm = "aimd"
        min = 5
        [waiting_room]
        max_wait = "45s"
        order = "adaptive_lifo"
        deadline_header = "x-deadline"

        [routes."/payments"]
        breaker = { failure_rate = 0.2, open_backoff = { max = "10m" } }
        limit = { initial = 7 }
        waiting_room = { capacity = 10 }
        "#,
    );
    let payments = policy.route("/payments");
    assert_eq!(
        payments.breaker,
        BreakerPolicy {
            failure_rate: 0.2,
            open_for: Duration::from_secs(20),
            open_backoff: BackoffPolicy {
                multiplier: 3.0,
                max: Duration::from_secs(600),
                reset_after: Some(Duration::from_secs(3600)),
                ..BackoffPolicy::default()
            },
            mode: Mode::Shadow,
            ..BreakerPolicy::default()
        }
    );
    assert_eq!(
        payments.limit,
        LimitPolicy {
            algorithm: Algorithm::Aimd,
            initial: 7,
            min: 5,
            ..LimitPolicy::default()
        }
    );
    assert_eq!(
        payments.waiting_room,
        WaitingRoomPolicy {
            capacity: 10,
            max_wait: Duration::from_secs(45),
            order: Order::AdaptiveLifo,
            deadline_header: Some("x-deadline".to_owned()),
            ..WaitingRoomPolicy::default()
        }
    );
}

#[test]
fn a_route_can_replace_the_window_and_set_optional_fields() {
    let policy = load(
        r#"
        [breaker]
        window = { kind = "count", size = 50 }
        minimum_calls = 10
        [routes."/booking.Booking/Book"]
        breaker = { window = { kind = "time", size = "30s" }, open_backoff = { reset_after = "2m" } }
        waiting_room = { deadline_header = "x-request-timeout", order = "adaptive_lifo" }
        "#,
    );
    let book = policy.route("/booking.Booking/Book");
    assert_eq!(
        book.breaker.window,
        WindowPolicy::Time {
            size: Duration::from_secs(30),
            buckets: WindowPolicy::DEFAULT_BUCKETS,
        }
    );
    assert_eq!(book.breaker.minimum_calls, 10);
    assert_eq!(
        book.breaker.open_backoff.reset_after,
        Some(Duration::from_secs(120))
    );
    assert_eq!(
        book.waiting_room.deadline_header.as_deref(),
        Some("x-request-timeout")
    );
    assert_eq!(book.waiting_room.order, Order::AdaptiveLifo);
}

#[test]
fn design_file_loads_but_for_maintenance() {
    let policy = load(DESIGN_NO_MAINTENANCE_TOML);
    assert_eq!(top_level(&policy), Policy::default());
    assert_eq!(policy.routes.len(), 1);
    let payments = policy.route("/payments");
    assert_eq!(
        payments,
        Policy {
            waiting_room: WaitingRoomPolicy {
                capacity: 0,
                ..WaitingRoomPolicy::default()
            },
            ..Policy::default()
        }
    );
}

#[test]
fn empty_routes_are_not_written_and_an_empty_route_changes_nothing() {
    let policy = load("[routes.\"/health\"]\n");
    assert!(policy.routes["/health"].is_empty());
    assert_eq!(policy.route("/health"), top_level(&policy));
    // An empty override section is the same as none.
    assert_eq!(
        load("[routes.\"/health\"]\nbreaker = {}\nlimit = {}\n"),
        policy
    );
    // No routes: the policy is written as before routes existed.
    let text = toml::to_string(&Policy::default()).unwrap();
    assert!(!text.contains("routes"), "{text}");
    assert_eq!(load(&text), Policy::default());
}

/// The policy reference's example of routes (docs/policy.md, the module
/// docs of `brownout::policy`), read from the file so that the docs cannot
/// drift from what loads.
#[test]
fn the_module_docs_routes_example_loads() {
    let docs = include_str!("../docs/policy.md");
    let section = &docs[docs.find("# Per-route overrides\n").unwrap()..];
    let fence = "```toml\n";
    let start = section.find(fence).unwrap() + fence.len();
    let toml = &section[start..start + section[start..].find("```").unwrap()];
    let policy = load(toml);
    assert_eq!(policy.route("/payments").waiting_room.capacity, 0);
    assert_eq!(
        policy.route("/payments").waiting_room.max_wait,
        Duration::from_secs(10)
    );
    assert_eq!(policy.route("/slots").limit.max, 400);
    assert_eq!(
        policy
            .route("/booking.Booking/Book")
            .breaker
            .open_backoff
            .max,
        Duration::from_secs(60)
    );
    // The full file above it says it has no routes.
    assert!(docs.contains("# No [routes.\"…\"] sections"));
}

// ------------------------------------------------------------- round trips

/// A policy whose routes write a bit of everything, durations included.
const WRITTEN_TOML: &str = r#"
[limit]
min = 5

[routes."/payments"]
waiting_room = { capacity = 0 }
breaker = { failure_rate = 0.2, open_for = "1m", open_backoff = { max = "10m" } }

[routes."/slots"]
limit = { initial = 50, max = 400, algorithm = "vegas" }

[routes."/booking.Booking/Book"]
waiting_room = { deadline_header = "x-request-timeout" }
"#;

#[test]
fn toml_round_trip_keeps_only_written_fields() {
    let policy = load(WRITTEN_TOML);
    let text = toml::to_string(&policy).unwrap();
    assert_eq!(load(&text), policy, "{text}");
    // The routes written back are exactly the routes read.
    let routes = |text: &str| text.parse::<toml::Table>().unwrap()["routes"].clone();
    assert_eq!(routes(&text), routes(WRITTEN_TOML), "{text}");
}

#[cfg(feature = "yaml")]
#[test]
fn yaml_round_trip_keeps_only_written_fields() {
    let policy = load(WRITTEN_TOML);
    let text = serde_yaml_ng::to_string(&policy).unwrap();
    assert_eq!(Policy::from_yaml(&text).unwrap(), policy, "{text}");
    let written: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        r#"
        /payments:
          breaker: { failure_rate: 0.2, open_for: 1m, open_backoff: { max: 10m } }
          waiting_room: { capacity: 0 }
        /slots:
          limit: { algorithm: vegas, initial: 50, max: 400 }
        /booking.Booking/Book:
          waiting_room: { deadline_header: x-request-timeout }
        "#,
    )
    .unwrap();
    let read: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(read["routes"], written, "{text}");
}

#[cfg(feature = "json")]
#[test]
fn json_round_trip_keeps_only_written_fields() {
    let policy = load(WRITTEN_TOML);
    let text = serde_json::to_string(&policy).unwrap();
    assert_eq!(Policy::from_json(&text).unwrap(), policy, "{text}");
    let read: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        read["routes"],
        serde_json::json!({
            "/payments": {
                "breaker": { "failure_rate": 0.2, "open_for": "1m", "open_backoff": { "max": "10m" } },
                "waiting_room": { "capacity": 0 }
            },
            "/slots": { "limit": { "algorithm": "vegas", "initial": 50, "max": 400 } },
            "/booking.Booking/Book": { "waiting_room": { "deadline_header": "x-request-timeout" } }
        }),
        "{text}"
    );
}

#[cfg(all(feature = "yaml", feature = "json"))]
#[test]
fn every_format_reads_the_same_routes() {
    let toml = load(OPS_TOML);
    let yaml = Policy::from_yaml(
        r#"
        waiting_room: { capacity: 1000, max_wait: 10s }
        routes:
          /payments:
            waiting_room: { capacity: 0 }
            breaker: { failure_rate: 0.2 }
          /slots:
            limit: { initial: 50, max: 400 }
        "#,
    )
    .unwrap();
    let json = Policy::from_json(
        r#"{
          "waiting_room": { "capacity": 1000, "max_wait": "10s" },
          "routes": {
            "/payments": { "waiting_room": { "capacity": 0 }, "breaker": { "failure_rate": 0.2 } },
            "/slots": { "limit": { "initial": 50, "max": 400 } }
          }
        }"#,
    )
    .unwrap();
    assert_eq!(yaml, toml);
    assert_eq!(json, toml);
}

// ------------------------------------------------------------- bad input

/// Why a route key must start with `/`, as every key error says.
const KEY_WHY: &str = r#"a route key is a request path, and HTTP paths ("/payments") and gRPC methods ("/booking.Booking/Book") both start with "/""#;

#[test]
fn bad_inputs_name_the_route_and_the_field() {
    let cases: Vec<(&str, String)> = vec![
        // Unknown fields, with their full path.
        (
            "[routes.\"/payments\"]\nwaiting_room = { capcity = 0 }\n",
            "routes.\"/payments\".waiting_room.capcity: unknown field `capcity`, expected one of \
             `capacity`, `max_wait`, `order`, `codel_interval`, `codel_target`, `deadline_header` \
             (TOML line 2, column 18)"
                .into(),
        ),
        (
            "[routes.\"/payments\"]\nretries = 3\n",
            "routes.\"/payments\".retries: unknown field `retries`, expected one of `breaker`, \
             `limit`, `waiting_room`, `defer` (TOML line 2, column 1)"
                .into(),
        ),
        (
            "[routes.\"/payments\".breaker]\nopen_backoff = { maximum = \"1m\" }\n",
            "routes.\"/payments\".breaker.open_backoff.maximum: unknown field `maximum`, expected \
             one of `multiplier`, `max`, `jitter`, `reset_after` (TOML line 2, column 18)"
                .into(),
        ),
        (
            "[routes.\"/payments\"]\nlimit = { initial = 5, minimum = 1 }\n",
            "routes.\"/payments\".limit.minimum: unknown field `minimum`, expected one of \
             `algorithm`, `initial`, `min`, `max`, `reserve` (TOML line 2, column 24)"
                .into(),
        ),
        // Priority classes are global.
        (
            "[routes.\"/payments\"]\npriority = { default = \"urgent\" }\n",
            "routes.\"/payments\".priority: priority classes are global and cannot be set per \
             route; set them in the top-level `priority` section (TOML line 2, column 1)"
                .into(),
        ),
        (
            "[routes.\"/payments\".priority]\ndefault = \"urgent\"\n",
            "routes.\"/payments\".priority: priority classes are global and cannot be set per \
             route; set them in the top-level `priority` section (TOML line 1, column 21)"
                .into(),
        ),
        // Values that cannot be read.
        (
            "[routes.\"/payments\"]\nbreaker = { open_for = \"5 parsecs\" }\n",
            "routes.\"/payments\".breaker.open_for: invalid duration \"5 parsecs\": unknown time \
             unit \"parsecs\", supported units: ns, us/µs, ms, sec, min, hours, days, weeks, \
             months, years (and few variations) (TOML line 2, column 24)"
                .into(),
        ),
        (
            "[routes.\"/payments\"]\nwaiting_room = { capacity = \"none\" }\n",
            "routes.\"/payments\".waiting_room.capacity: invalid type: string \"none\", expected \
             u32 (TOML line 2, column 29)"
                .into(),
        ),
        (
            "[routes.\"/payments\"]\nbreaker = { mode = \"sometimes\" }\n",
            "routes.\"/payments\".breaker.mode: unknown variant `sometimes`, expected one of \
             `enforce`, `shadow`, `forced_open`, `forced_closed` (TOML line 2, column 20)"
                .into(),
        ),
        (
            "routes = 5\n",
            "routes: invalid type: integer `5`, expected a table (TOML line 1, column 10)".into(),
        ),
        (
            "[routes]\n\"/payments\" = 5\n",
            "routes.\"/payments\": invalid type: integer `5`, expected a table (TOML line 2, column 15)"
                .into(),
        ),
        (
            "[routes.\"/payments\"]\nbreaker = 5\n",
            "routes.\"/payments\".breaker: invalid type: integer `5`, expected a table \
             (TOML line 2, column 11)"
                .into(),
        ),
        // Values out of range.
        (
            "[routes.\"/payments\"]\nbreaker = { failure_rate = 1.5 }\n",
            "routes.\"/payments\".breaker.failure_rate: 1.5 is not in (0, 1]".into(),
        ),
        (
            "[routes.\"/payments\"]\nwaiting_room = { capacity = 2000000 }\n",
            "routes.\"/payments\".waiting_room.capacity: 2000000 is not in 0..=1000000".into(),
        ),
        // Values that only clash once merged with the top level.
        (
            "[limit]\nmin = 10\n[routes.\"/payments\"]\nlimit = { initial = 5 }\n",
            "routes.\"/payments\".limit.initial: 5 is below routes.\"/payments\".limit.min (10)"
                .into(),
        ),
        (
            "[routes.\"/payments\"]\nlimit = { min = 30 }\n",
            "routes.\"/payments\".limit.initial: 20 (inherited from limit.initial) is below \
             routes.\"/payments\".limit.min (30)"
                .into(),
        ),
        (
            "[routes.\"/payments\"]\nwaiting_room = { max_wait = \"0s\" }\n",
            "routes.\"/payments\".waiting_room.max_wait: 0s must be more than zero while \
             routes.\"/payments\".waiting_room.capacity is 1000 (capacity = 0 turns the room off)"
                .into(),
        ),
        (
            "[routes.\"/payments\"]\nbreaker = { open_for = \"10m\" }\n",
            "routes.\"/payments\".breaker.open_backoff.max: 5m (inherited from \
             breaker.open_backoff.max) is shorter than routes.\"/payments\".breaker.open_for = 10m"
                .into(),
        ),
        (
            "[routes.\"/payments\"]\nbreaker = { window = { kind = \"count\", size = 10 } }\n",
            "routes.\"/payments\".breaker.minimum_calls: 20 (inherited from breaker.minimum_calls) \
             is more than routes.\"/payments\".breaker.window.size = 10, so the breaker could never open"
                .into(),
        ),
        (
            "[waiting_room]\norder = \"adaptive_lifo\"\ncodel_target = \"1s\"\n\
             [routes.\"/payments\"]\nwaiting_room = { max_wait = \"500ms\" }\n",
            "routes.\"/payments\".waiting_room.codel_target: 1s (inherited from \
             waiting_room.codel_target) is longer than routes.\"/payments\".waiting_room.max_wait (500ms)"
                .into(),
        ),
        // Keys.
        (
            "[routes.\"\"]\nwaiting_room = { capacity = 0 }\n",
            format!("routes: \"\" is empty: {KEY_WHY}"),
        ),
        (
            "[routes.payments]\nwaiting_room = { capacity = 0 }\n",
            format!("routes: \"payments\" does not start with \"/\": {KEY_WHY}; write \"/payments\""),
        ),
        (
            "[routes.\"booking.Booking/Book\"]\n",
            format!(
                "routes: \"booking.Booking/Book\" does not start with \"/\": {KEY_WHY}; write \
                 \"/booking.Booking/Book\""
            ),
        ),
        (
            "[routes.\"/pay ments\"]\n",
            "routes: \"/pay ments\" contains ' ', which no request path does".into(),
        ),
        (
            "[routes.\"/payments\\n\"]\n",
            "routes: \"/payments\\n\" contains '\\n', which no request path does".into(),
        ),
    ];
    assert!(cases.len() >= 10);
    for (text, expected) in cases {
        assert_eq!(error(text).to_string(), expected, "{text:?}");
    }
}

#[test]
fn errors_name_the_field_for_tools() {
    let err = error("[limit]\nmin = 10\n[routes.\"/payments\"]\nlimit = { initial = 5 }\n");
    assert_eq!(err.field(), Some("routes.\"/payments\".limit.initial"));
    let err = error("[routes.\"/payments\"]\nwaiting_room = { capcity = 0 }\n");
    assert_eq!(
        err.field(),
        Some("routes.\"/payments\".waiting_room.capcity")
    );
    assert_eq!(err.line_column(), Some((2, 18)));
    let err = error("[routes.payments]\n");
    assert_eq!(err.field(), Some("routes"));
}

#[test]
fn the_top_level_is_checked_first_then_routes_in_key_order() {
    let text = r#"
        [limit]
        initial = 0
        [routes."/b"]
        limit = { initial = 0 }
        [routes."/a"]
        breaker = { failure_rate = 2.0 }
        "#;
    assert_eq!(
        error(text).to_string(),
        "limit.initial: 0 is below limit.min (1)"
    );
    let text = text.replace(
        "initial = 0\n        [routes",
        "initial = 1\n        [routes",
    );
    assert_eq!(
        error(&text).to_string(),
        "routes.\"/a\".breaker.failure_rate: 2.0 is not in (0, 1]"
    );
}

#[test]
fn validate_checks_routes_built_in_code() {
    let mut policy = Policy::default();
    policy.routes.insert(
        "/payments".to_owned(),
        RoutePolicy {
            limit: LimitOverride {
                max: Some(0),
                ..LimitOverride::default()
            },
            ..RoutePolicy::default()
        },
    );
    assert_eq!(
        policy.validate().unwrap_err().to_string(),
        "routes.\"/payments\".limit.max: 0 is not in 1..=1000000"
    );
    // A key is checked even when its route changes nothing.
    let mut policy = Policy::default();
    policy
        .routes
        .insert("payments".to_owned(), RoutePolicy::default());
    assert_eq!(
        policy.validate().unwrap_err().to_string(),
        format!("routes: \"payments\" does not start with \"/\": {KEY_WHY}; write \"/payments\"")
    );
}

#[test]
fn good_keys_are_accepted() {
    for key in [
        "/",
        "/payments",
        "/payments/",
        "/booking.Booking/Book",
        "/users/{id}/slots",
        "/ünïcödé",
        "/a?b=c",
    ] {
        let policy = load(&format!(
            "[routes.{key:?}]\nwaiting_room = {{ capacity = 0 }}\n"
        ));
        assert_eq!(policy.route(key).waiting_room.capacity, 0, "{key:?}");
    }
}

#[cfg(feature = "yaml")]
#[test]
fn bad_yaml_names_the_route_and_the_field() {
    let cases = [
        (
            "routes:\n  /payments:\n    waiting_room: { capcity: 0 }\n",
            "routes.\"/payments\".waiting_room.capcity: unknown field `capcity`, expected one of \
             `capacity`, `max_wait`, `order`, `codel_interval`, `codel_target`, `deadline_header` \
             (YAML line 3, column 21)",
        ),
        (
            "routes:\n  /payments:\n    priority: { default: urgent }\n",
            "routes.\"/payments\".priority: priority classes are global and cannot be set per \
             route; set them in the top-level `priority` section (YAML line 3, column 5)",
        ),
        (
            "limit: { min: 10 }\nroutes:\n  /payments:\n    limit: { initial: 5 }\n",
            "routes.\"/payments\".limit.initial: 5 is below routes.\"/payments\".limit.min (10)",
        ),
        (
            "routes: 5\n",
            "routes: invalid type: integer `5`, expected a mapping (YAML line 1, column 9)",
        ),
    ];
    support::policy::assert_messages(Policy::from_yaml, &cases);
}

#[cfg(feature = "json")]
#[test]
fn bad_json_names_the_route_and_the_field() {
    let cases = [
        (
            r#"{"routes": {"/payments": {"waiting_room": {"capcity": 0}}}}"#,
            "routes.\"/payments\".waiting_room.capcity: unknown field `capcity`, expected one of \
             `capacity`, `max_wait`, `order`, `codel_interval`, `codel_target`, `deadline_header` \
             (JSON line 1, column 52)",
        ),
        (
            r#"{"routes": {"/payments": {"priority": {}}}}"#,
            "routes.\"/payments\".priority: priority classes are global and cannot be set per \
             route; set them in the top-level `priority` section (JSON line 1, column 36)",
        ),
        (
            r#"{"routes": {"/payments": {"limit": {}, "limit": {}}}}"#,
            "routes.\"/payments\": duplicate field `limit` (JSON line 1, column 46)",
        ),
        (
            r#"{"routes": []}"#,
            "routes: invalid type: sequence, expected an object (JSON line 1, column 11)",
        ),
    ];
    support::policy::assert_messages(Policy::from_json, &cases);
}

// --------------------------------------------------------------- proptests

mod props {
    use super::*;
    use proptest::option::of;
    use proptest::prelude::*;

    fn window() -> impl Strategy<Value = WindowPolicy> {
        prop_oneof![
            (0u32..300).prop_map(|size| WindowPolicy::Count { size }),
            ((0u64..120_000), (0u32..200)).prop_map(|(ms, buckets)| WindowPolicy::Time {
                size: Duration::from_millis(ms),
                buckets,
            }),
        ]
    }

    fn duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            1 => Just(Duration::ZERO),
            8 => (1u64..3_600_000).prop_map(Duration::from_millis),
        ]
    }

    fn share() -> impl Strategy<Value = f64> {
        prop_oneof![
            8 => 0.0..=1.0f64,
            1 => Just(1.0),
            1 => -1.0..3.0f64,
        ]
    }

    fn trip() -> impl Strategy<Value = Trip> {
        prop_oneof![Just(Trip::Throttle), Just(Trip::Open)]
    }

    fn mode() -> impl Strategy<Value = Mode> {
        prop_oneof![
            Just(Mode::Enforce),
            Just(Mode::Shadow),
            Just(Mode::ForcedOpen),
            Just(Mode::ForcedClosed)
        ]
    }

    fn algorithm() -> impl Strategy<Value = Algorithm> {
        prop_oneof![
            Just(Algorithm::Fixed),
            Just(Algorithm::Aimd),
            Just(Algorithm::Vegas),
            Just(Algorithm::Gradient)
        ]
    }

    fn order() -> impl Strategy<Value = Order> {
        prop_oneof![Just(Order::PriorityFifo), Just(Order::AdaptiveLifo)]
    }

    fn header() -> impl Strategy<Value = String> {
        prop_oneof!["x-[a-z]{1,8}", "[a-z ]{0,4}"]
    }

    prop_compose! {
        fn backoff_override()(
            multiplier in of(0.5..4.0f64),
            max in of(duration()),
            jitter in of(share()),
            reset_after in of(duration()),
        ) -> BackoffOverride {
            BackoffOverride { multiplier, max, jitter, reset_after }
        }
    }

    prop_compose! {
        fn breaker_override()(
            window in of(window()),
            failure_rate in of(share()),
            slow_call_rate in of(share()),
            slow_call_duration in of(duration()),
            minimum_calls in of(0u32..150),
            open_for in of(duration()),
            open_backoff in backoff_override(),
            half_open_probes in of(0u32..40),
            (mode, trip, probe_after) in (of(mode()), of(trip()), of(0u32..1000)),
        ) -> BreakerOverride {
            BreakerOverride {
                window, failure_rate, slow_call_rate, trip, slow_call_duration, minimum_calls,
                open_for, open_backoff, half_open_probes, mode, probe_after,
            }
        }
    }

    prop_compose! {
        fn limit_override()(
            algorithm in of(algorithm()),
            initial in of(0u32..2000),
            min in of(0u32..2000),
            max in of(0u32..2000),
            reserve in of(share()),
        ) -> LimitOverride {
            LimitOverride { algorithm, initial, min, max, reserve }
        }
    }

    prop_compose! {
        fn waiting_room_override()(
            capacity in of(prop_oneof![Just(0u32), 1u32..2000]),
            max_wait in of(duration()),
            order in of(order()),
            codel_interval in of(duration()),
            codel_target in of(duration()),
            deadline_header in of(header()),
        ) -> WaitingRoomOverride {
            WaitingRoomOverride { capacity, max_wait, order, codel_interval, codel_target, deadline_header }
        }
    }

    prop_compose! {
        fn route_policy()(
            breaker in breaker_override(),
            limit in limit_override(),
            waiting_room in waiting_room_override(),
        ) -> RoutePolicy {
            RoutePolicy { breaker, limit, waiting_room, defer: None }
        }
    }

    /// A top level whose every field is random: an override applied to
    /// the defaults could not tell "inherited" from "defaulted".
    fn top_level() -> impl Strategy<Value = Policy> {
        (
            breaker_override(),
            limit_override(),
            waiting_room_override(),
        )
            .prop_map(|(breaker, limit, waiting_room)| {
                let mut policy = Policy::default();
                RoutePolicy {
                    breaker,
                    limit,
                    waiting_room,
                    defer: None,
                }
                .apply_to(&mut policy);
                policy
            })
    }

    /// `eff.f == over.f` if written, else `top.f`, for each listed field.
    macro_rules! merged {
        ($eff:expr, $top:expr, $over:expr; $($field:ident),* $(; optional $opt:ident)*) => {
            $(
                prop_assert_eq!(
                    &$eff.$field,
                    $over.$field.as_ref().unwrap_or(&$top.$field),
                    "{}", stringify!($field)
                );
            )*
            $(
                prop_assert_eq!(
                    &$eff.$opt,
                    &$over.$opt.clone().or($top.$opt.clone()),
                    "{}", stringify!($opt)
                );
            )*
        };
    }

    prop_compose! {
        /// A route that is valid with the default top level, whatever it
        /// writes: every range is inside what the defaults allow.
        fn valid_route_policy()(
            window in of(prop_oneof![
                (20u32..1000).prop_map(|size| WindowPolicy::Count { size }),
                ((1u64..60), (1u32..100)).prop_map(|(s, buckets)| WindowPolicy::Time {
                    size: Duration::from_secs(s),
                    buckets,
                }),
            ]),
            failure_rate in of(0.01..=1.0f64),
            slow_call_rate in of(0.01..=1.0f64),
            slow_call_duration in of((1u64..60_000).prop_map(Duration::from_millis)),
            minimum_calls in of(1u32..=20),
            open_for in of((1u64..300_000).prop_map(Duration::from_millis)),
            backoff in (of(1.0..4.0f64), of((300u64..3600).prop_map(Duration::from_secs)),
                        of(0.0..0.99f64), of((1u64..3600).prop_map(Duration::from_secs))),
            half_open_probes in of(1u32..=3),
            (mode, trip, probe_after) in (of(mode()), of(trip()), of(0u32..1000)),
            limit in (of(algorithm()), of(10u32..=100), of(1u32..=10), of(100u32..=1000),
                      of(0.0..0.99f64)),
            room in (of(0u32..=1000), of((100u64..60_000).prop_map(Duration::from_millis)),
                     of(order()), of((1u64..1000).prop_map(Duration::from_millis)),
                     of((1u64..=100).prop_map(Duration::from_millis)), of("x-[a-z]{1,8}")),
        ) -> RoutePolicy {
            let (multiplier, max, jitter, reset_after) = backoff;
            let (algorithm, initial, min, max_limit, reserve) = limit;
            let (capacity, max_wait, order, codel_interval, codel_target, deadline_header) = room;
            RoutePolicy {
                breaker: BreakerOverride {
                    window, failure_rate, slow_call_rate, trip, slow_call_duration, minimum_calls,
                    open_for,
                    open_backoff: BackoffOverride { multiplier, max, jitter, reset_after },
                    half_open_probes, mode, probe_after,
                },
                limit: LimitOverride { algorithm, initial, min, max: max_limit, reserve },
                waiting_room: WaitingRoomOverride {
                    capacity, max_wait, order, codel_interval, codel_target, deadline_header,
                },
                defer: None,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]

        #[test]
        fn overrides_merge_field_by_field(top in top_level(), over in route_policy()) {
            let mut policy = top.clone();
            policy.routes.insert("/r".to_owned(), over.clone());
            let eff = policy.route("/r");

            let (e, t, o) = (&eff.breaker, &top.breaker, &over.breaker);
            merged!(e, t, o; window, failure_rate, slow_call_rate, slow_call_duration,
                    minimum_calls, open_for, half_open_probes, mode);
            let (e, t, o) = (&eff.breaker.open_backoff, &top.breaker.open_backoff, &over.breaker.open_backoff);
            merged!(e, t, o; multiplier, max, jitter; optional reset_after);
            let (e, t, o) = (&eff.limit, &top.limit, &over.limit);
            merged!(e, t, o; algorithm, initial, min, max, reserve);
            let (e, t, o) = (&eff.waiting_room, &top.waiting_room, &over.waiting_room);
            merged!(e, t, o; capacity, max_wait, order, codel_interval, codel_target;
                    optional deadline_header);
            prop_assert_eq!(&eff.priority, &top.priority);
            prop_assert!(eff.routes.is_empty());
            // Other routes, listed or not, get the top level.
            prop_assert_eq!(policy.route("/other"), top.clone());
        }

        /// A route validates exactly when each section it changes does once
        /// merged, and the error names the same field under the route.
        #[test]
        fn validate_agrees_with_the_merged_sections(over in route_policy()) {
            let mut policy = Policy::default();
            policy.routes.insert("/r".to_owned(), over.clone());
            let eff = policy.route("/r");
            let expected = [
                (over.breaker.is_empty(), eff.breaker.validate()),
                (over.limit.is_empty(), eff.limit.validate()),
                (over.waiting_room.is_empty(), eff.waiting_room.validate()),
            ]
            .into_iter()
            .find_map(|(empty, result)| result.err().filter(|_| !empty));
            match (policy.validate(), expected) {
                (Ok(()), None) => {}
                (Err(err), Some(section_err)) => {
                    let field = format!("routes.\"/r\".{}", section_err.field().unwrap());
                    prop_assert_eq!(err.field(), Some(field.as_str()), "{}", err);
                    prop_assert!(err.to_string().starts_with(&format!("{field}: ")), "{}", err);
                }
                (got, expected) => prop_assert!(false, "validate: {got:?}, merged sections: {expected:?}"),
            }
        }

        #[test]
        fn valid_routes_round_trip_keeping_what_was_written(
            routes in proptest::collection::btree_map("/[a-z]{0,6}(/[A-Za-z.]{1,6})?", valid_route_policy(), 0..4),
        ) {
            let policy = Policy { routes, ..Policy::default() };
            prop_assert!(policy.validate().is_ok(), "{:?}", policy.validate());

            let text = toml::to_string(&policy).unwrap();
            prop_assert_eq!(&load(&text), &policy, "{}", text);
            #[cfg(feature = "yaml")]
            {
                let text = serde_yaml_ng::to_string(&policy).unwrap();
                prop_assert_eq!(&Policy::from_yaml(&text).unwrap(), &policy, "{}", text);
            }
            #[cfg(feature = "json")]
            {
                let text = serde_json::to_string(&policy).unwrap();
                prop_assert_eq!(&Policy::from_json(&text).unwrap(), &policy, "{}", text);
            }
        }
    }
}
