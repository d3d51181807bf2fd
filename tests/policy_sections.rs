//! The `[limit]`, `[waiting_room]` and `[priority]` sections of ops' policy
//! file: the policy reference's example (docs/policy.md), each section alone, the edges of every range,
//! and the exact message of every bad input.
//!
//! The proptests over whole policies (all sections) live in `policy.rs`.
#![cfg(feature = "toml")]

mod support;

use std::time::Duration;

use brownout::policy::{Algorithm, MAX_CLASSES, Order};
use brownout::{
    BreakerPolicy, LimitPolicy, Policy, PolicyError, PriorityPolicy, WaitingRoomPolicy,
};

use support::policy::{DESIGN_LATER_TOML, DESIGN_SECTIONS_TOML, error, load};

/// The sections a policy reads, as the unknown-field error lists them.
const SECTIONS: &str = "expected one of `breaker`, `limit`, `waiting_room`, `priority`, `maintenance`, `routes`, `budget`, `fleet`";

// ------------------------------------------------------------ the example

#[test]
fn design_example_with_all_four_sections_is_the_default() {
    let policy = load(DESIGN_SECTIONS_TOML);
    assert_eq!(policy, Policy::default());
    // The defaults are the ones docs/policy.md shows, field by field.
    assert_eq!(policy.limit.algorithm, Algorithm::Capacity);
    assert_eq!(
        (policy.limit.initial, policy.limit.min, policy.limit.max),
        (20, 1, 1000)
    );
    assert_eq!(policy.waiting_room.capacity, 1000);
    assert_eq!(policy.waiting_room.max_wait, Duration::from_secs(10));
    assert_eq!(policy.waiting_room.order, Order::PriorityFifo);
    assert_eq!(policy.priority.header, "x-priority");
    assert_eq!(policy.priority.classes, ["urgent", "normal", "bulk"]);
    assert_eq!(policy.priority.default, "normal");
}

#[test]
fn the_whole_design_example_loads_maintenance_and_routes_included() {
    use std::time::{Duration, SystemTime};

    let full = load(&format!("{DESIGN_SECTIONS_TOML}{DESIGN_LATER_TOML}"));
    // The sections before are the defaults, as without the rest.
    let Policy {
        maintenance,
        routes,
        ..
    } = full.clone();
    assert_eq!(
        Policy {
            maintenance: Vec::new(),
            routes: Default::default(),
            ..full.clone()
        },
        Policy::default()
    );
    // One window, a week from midnight in India (UTC+05:30) on 2 December.
    assert_eq!(maintenance.len(), 1);
    let window = &maintenance[0];
    let from = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_149_800);
    assert_eq!(window.from(), from);
    assert_eq!(window.until(), from + Duration::from_secs(7 * 86_400));
    assert_eq!(
        window.message(),
        Some("Planned upgrade. Urgent files: use e-mail.")
    );
    assert_eq!(
        window.to_string(),
        "2026-12-02T00:00:00+05:30 until 2026-12-09T00:00:00+05:30"
    );
    assert_eq!(routes.len(), 1);
    assert_eq!(full.route("/payments").waiting_room.capacity, 0);
    assert_eq!(
        full.route("/payments").maintenance,
        maintenance,
        "windows apply to every route"
    );
}

#[test]
fn an_unknown_section_lists_the_sections() {
    assert_eq!(
        error("[[maintenence]]\nfrom = \"2026-12-02T00:00:00Z\"\n").to_string(),
        format!("maintenence: unknown field `maintenence`, {SECTIONS} (TOML line 1, column 3)")
    );
}

/// The policy reference's full file (docs/policy.md, the module docs of
/// `brownout::policy`), read from the file so that the docs cannot drift
/// from what loads.
#[test]
fn the_module_docs_full_file_loads_as_the_default() {
    let docs = include_str!("../docs/policy.md");
    let block = |fence: &str| {
        let start = docs.find(fence).expect(fence) + fence.len();
        let end = start + docs[start..].find("```").unwrap();
        docs[start..end].to_owned()
    };
    let toml = block(
        "# A full file\n\nEvery value below is the default, so this file is [`Policy::default()`]:\n\n```toml\n",
    );
    for section in ["[breaker]", "[limit]", "[waiting_room]", "[priority]"] {
        assert!(toml.contains(section), "{section} missing from\n{toml}");
    }
    assert_eq!(load(&toml), Policy::default());
    #[cfg(feature = "yaml")]
    {
        let yaml = block("```yaml\n");
        assert_eq!(Policy::from_yaml(&yaml).unwrap(), Policy::default());
    }
}

// ------------------------------------------------------- each section alone

#[test]
fn limit_alone() {
    let policy =
        load("[limit]\nalgorithm = \"aimd\"\ninitial = 50\nmin = 10\nmax = 200\nreserve = 0.5\n");
    assert_eq!(
        policy,
        Policy {
            limit: LimitPolicy {
                algorithm: Algorithm::Aimd,
                initial: 50,
                min: 10,
                max: 200,
                reserve: 0.5,
            },
            ..Policy::default()
        }
    );
    // A missing field keeps its default.
    let policy = load("[limit]\nalgorithm = \"fixed\"\n");
    assert_eq!(
        policy.limit,
        LimitPolicy {
            algorithm: Algorithm::Fixed,
            ..LimitPolicy::default()
        }
    );
    for (name, algorithm) in [
        ("fixed", Algorithm::Fixed),
        ("aimd", Algorithm::Aimd),
        ("vegas", Algorithm::Vegas),
        ("gradient", Algorithm::Gradient),
        ("capacity", Algorithm::Capacity),
    ] {
        let policy = load(&format!("[limit]\nalgorithm = \"{name}\"\n"));
        assert_eq!(policy.limit.algorithm, algorithm);
        assert_eq!(algorithm.as_str(), name);
    }
}

#[test]
fn waiting_room_alone() {
    let policy = load(
        r#"
        [waiting_room]
        capacity = 50
        max_wait = "1m 30s"
        order = "adaptive_lifo"
        codel_interval = "200ms"
        codel_target = "20ms"
        deadline_header = "X-Request-Timeout"
        "#,
    );
    assert_eq!(
        policy,
        Policy {
            waiting_room: WaitingRoomPolicy {
                capacity: 50,
                max_wait: Duration::from_secs(90),
                order: Order::AdaptiveLifo,
                codel_interval: Duration::from_millis(200),
                codel_target: Duration::from_millis(20),
                deadline_header: Some("X-Request-Timeout".to_owned()),
            },
            ..Policy::default()
        }
    );
    // The policy reference's per-route example: a room that is off.
    let off = load("[waiting_room]\ncapacity = 0\n");
    assert_eq!(
        off.waiting_room,
        WaitingRoomPolicy {
            capacity: 0,
            ..WaitingRoomPolicy::default()
        }
    );
    assert_eq!(off.waiting_room.deadline_header, None);
}

#[test]
fn priority_alone() {
    let policy = load(
        "[priority]\nheader = \"X-Class\"\nclasses = [\"tatkal\", \"regular\"]\ndefault = \"REGULAR\"\n",
    );
    assert_eq!(
        policy,
        Policy {
            priority: PriorityPolicy {
                header: "X-Class".to_owned(),
                classes: vec!["tatkal".to_owned(), "regular".to_owned()],
                default: "REGULAR".to_owned(),
            },
            ..Policy::default()
        }
    );
    // Classes alone: the default must still be one of them.
    let policy = load("[priority]\nclasses = [\"high\", \"normal\"]\n");
    assert_eq!(policy.priority.default, "normal");
}

#[cfg(feature = "yaml")]
#[test]
fn yaml_sections_load_like_toml() {
    let yaml = r#"
limit: { algorithm: vegas, initial: 8, min: 2, max: 64, reserve: 0 }
waiting_room:
  capacity: 10
  max_wait: 2s
  order: adaptive_lifo
  deadline_header: x-deadline
priority:
  header: x-class
  classes: [high, low]
  default: low
"#;
    let toml = r#"
[limit]
algorithm = "vegas"
initial = 8
min = 2
max = 64
reserve = 0
[waiting_room]
capacity = 10
max_wait = "2s"
order = "adaptive_lifo"
deadline_header = "x-deadline"
[priority]
header = "x-class"
classes = ["high", "low"]
default = "low"
"#;
    assert_eq!(Policy::from_yaml(yaml).unwrap(), load(toml));
    assert_ne!(load(toml), Policy::default());
}

#[cfg(feature = "json")]
#[test]
fn json_sections_load_like_toml() {
    let json = r#"{
      "limit": {"algorithm": "vegas", "initial": 8, "min": 2, "max": 64, "reserve": 0.0},
      "waiting_room": {"capacity": 10, "max_wait": "2s", "order": "adaptive_lifo",
                       "deadline_header": null},
      "priority": {"header": "x-class", "classes": ["high", "low"], "default": "low"}
    }"#;
    let toml = r#"
[limit]
algorithm = "vegas"
initial = 8
min = 2
max = 64
reserve = 0.0
[waiting_room]
capacity = 10
max_wait = "2s"
order = "adaptive_lifo"
[priority]
header = "x-class"
classes = ["high", "low"]
default = "low"
"#;
    assert_eq!(Policy::from_json(json).unwrap(), load(toml));
}

// ------------------------------------------------------------------ edges

#[test]
fn the_edges_of_every_range_are_valid() {
    let limits = [
        (1, 1, 1, 0.0),
        (1, 1, LimitPolicy::MAX_LIMIT, 0.999_999),
        (
            LimitPolicy::MAX_LIMIT,
            LimitPolicy::MAX_LIMIT,
            LimitPolicy::MAX_LIMIT,
            1.0 - f64::EPSILON,
        ),
        (7, 7, 9, -0.0),
        (9, 7, 9, 0.5),
    ];
    for (initial, min, max, reserve) in limits {
        let limit = LimitPolicy {
            algorithm: Algorithm::Fixed,
            initial,
            min,
            max,
            reserve,
        };
        assert!(
            limit.validate().is_ok(),
            "{limit:?}: {:?}",
            limit.validate()
        );
    }
    assert_eq!(LimitPolicy::MAX_LIMIT, 1_000_000);

    let rooms = [
        WaitingRoomPolicy {
            capacity: WaitingRoomPolicy::MAX_CAPACITY,
            ..WaitingRoomPolicy::default()
        },
        // A room that is off needs no wait, whatever the rest says.
        WaitingRoomPolicy {
            capacity: 0,
            max_wait: Duration::ZERO,
            order: Order::AdaptiveLifo,
            ..WaitingRoomPolicy::default()
        },
        WaitingRoomPolicy {
            max_wait: Duration::from_nanos(1),
            codel_interval: Duration::from_nanos(1),
            codel_target: Duration::from_nanos(1),
            order: Order::AdaptiveLifo,
            ..WaitingRoomPolicy::default()
        },
        // codel_target only bounds adaptive_lifo, whose waits it cuts.
        WaitingRoomPolicy {
            max_wait: Duration::from_millis(1),
            order: Order::PriorityFifo,
            ..WaitingRoomPolicy::default()
        },
        WaitingRoomPolicy {
            deadline_header: Some("!#$%&'*+-.^_`|~0123456789azAZ".to_owned()),
            ..WaitingRoomPolicy::default()
        },
        WaitingRoomPolicy {
            deadline_header: Some("x".repeat(65_535)),
            ..WaitingRoomPolicy::default()
        },
    ];
    for room in rooms {
        let verdict = room.validate();
        assert!(verdict.is_ok(), "{verdict:?}");
    }
    assert_eq!(WaitingRoomPolicy::MAX_CAPACITY, 1_000_000);

    let names = |n: usize| (0..n).map(|i| format!("c{i}")).collect::<Vec<_>>();
    let priorities = [
        PriorityPolicy {
            header: "X-Priority".to_owned(),
            classes: names(MAX_CLASSES),
            default: "C15".to_owned(),
        },
        PriorityPolicy {
            header: "p".to_owned(),
            classes: vec!["only".to_owned()],
            default: "ONLY".to_owned(),
        },
        PriorityPolicy {
            header: "x-priority".to_owned(),
            classes: vec![
                "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~".to_owned(),
                "0".to_owned(),
            ],
            default: "0".to_owned(),
        },
    ];
    for priority in priorities {
        let verdict = priority.validate();
        assert!(verdict.is_ok(), "{priority:?}: {verdict:?}");
    }
    assert_eq!(MAX_CLASSES, 16);
}

#[test]
fn the_first_bad_section_in_file_order_is_named() {
    let policy = Policy {
        breaker: BreakerPolicy {
            failure_rate: 2.0,
            ..BreakerPolicy::default()
        },
        limit: LimitPolicy {
            min: 0,
            ..LimitPolicy::default()
        },
        waiting_room: WaitingRoomPolicy {
            capacity: u32::MAX,
            ..WaitingRoomPolicy::default()
        },
        priority: PriorityPolicy {
            classes: vec![],
            ..PriorityPolicy::default()
        },
        ..Policy::default()
    };
    let field = |policy: &Policy| policy.validate().unwrap_err().field().map(str::to_owned);
    assert_eq!(field(&policy).as_deref(), Some("breaker.failure_rate"));
    let policy = Policy {
        breaker: BreakerPolicy::default(),
        ..policy
    };
    assert_eq!(field(&policy).as_deref(), Some("limit.min"));
    let policy = Policy {
        limit: LimitPolicy::default(),
        ..policy
    };
    assert_eq!(field(&policy).as_deref(), Some("waiting_room.capacity"));
    let policy = Policy {
        waiting_room: WaitingRoomPolicy::default(),
        ..policy
    };
    assert_eq!(field(&policy).as_deref(), Some("priority.classes"));
    let policy = Policy {
        priority: PriorityPolicy::default(),
        ..policy
    };
    assert_eq!(policy.validate().ok(), Some(()));
}

// ------------------------------------------------------------- bad inputs

/// TOML inputs and the exact message each must give.
const BAD_TOML: &[(&str, &str)] = &[
    // [limit]
    ("[limit]\nmin = 0\n", "limit.min: 0 must be at least 1"),
    ("[limit]\nmax = 0\n", "limit.max: 0 is not in 1..=1000000"),
    (
        "[limit]\nmax = 1000001\n",
        "limit.max: 1000001 is not in 1..=1000000",
    ),
    (
        "[limit]\nmin = 10\ninitial = 7\nmax = 5\n",
        "limit.min: 10 is above limit.max (5)",
    ),
    (
        "[limit]\ninitial = 5\nmin = 10\n",
        "limit.initial: 5 is below limit.min (10)",
    ),
    (
        "[limit]\ninitial = 0\n",
        "limit.initial: 0 is below limit.min (1)",
    ),
    (
        "[limit]\ninitial = 2000\n",
        "limit.initial: 2000 is above limit.max (1000)",
    ),
    (
        "[limit]\nreserve = 1.0\n",
        "limit.reserve: 1.0 is not in [0, 1)",
    ),
    (
        "[limit]\nreserve = -0.1\n",
        "limit.reserve: -0.1 is not in [0, 1)",
    ),
    (
        "[limit]\nreserve = nan\n",
        "limit.reserve: NaN is not in [0, 1)",
    ),
    (
        "[limit]\nreserve = -inf\n",
        "limit.reserve: -inf is not in [0, 1)",
    ),
    (
        "[limit]\nalgorithm = \"pid\"\n",
        "limit.algorithm: unknown variant `pid`, expected one of `fixed`, `aimd`, `vegas`, `gradient`, `capacity`, `custom` \
         (TOML line 2, column 13)",
    ),
    (
        "[limit]\nmin = -1\n",
        "limit.min: invalid value: integer `-1`, expected u32 (TOML line 2, column 7)",
    ),
    (
        "[limit]\nmaximum = 10\n",
        "limit.maximum: unknown field `maximum`, expected one of `algorithm`, `initial`, `min`, `max`, \
         `reserve` (TOML line 2, column 1)",
    ),
    // [waiting_room]
    (
        "[waiting_room]\ncapacity = 1000001\n",
        "waiting_room.capacity: 1000001 is not in 0..=1000000",
    ),
    (
        "[waiting_room]\nmax_wait = \"0s\"\n",
        "waiting_room.max_wait: 0s must be more than zero while waiting_room.capacity is 1000 \
         (capacity = 0 turns the room off)",
    ),
    (
        "[waiting_room]\ncodel_interval = \"0s\"\n",
        "waiting_room.codel_interval: 0s must be more than zero",
    ),
    (
        "[waiting_room]\ncodel_target = \"0ms\"\n",
        "waiting_room.codel_target: 0s must be more than zero",
    ),
    (
        "[waiting_room]\norder = \"adaptive_lifo\"\ncodel_target = \"20s\"\n",
        "waiting_room.codel_target: 20s is longer than waiting_room.max_wait (10s)",
    ),
    (
        "[waiting_room]\norder = \"adaptive_lifo\"\nmax_wait = \"1ms\"\n",
        "waiting_room.codel_target: 5ms is longer than waiting_room.max_wait (1ms)",
    ),
    (
        "[waiting_room]\nmax_wait = \"10\"\n",
        "waiting_room.max_wait: invalid duration \"10\": it needs a unit, e.g. \"10s\" or \"10ms\" \
         (TOML line 2, column 12)",
    ),
    (
        "[waiting_room]\nmax_wait = \"-1s\"\n",
        "waiting_room.max_wait: invalid duration \"-1s\": a duration cannot be negative (TOML line 2, column 12)",
    ),
    (
        "[waiting_room]\ncodel_target = 5\n",
        "waiting_room.codel_target: invalid type: integer `5`, expected a duration such as \"30s\", \"250ms\" \
         or \"5m\" (TOML line 2, column 16)",
    ),
    (
        "[waiting_room]\norder = \"lifo\"\n",
        "waiting_room.order: unknown variant `lifo`, expected `priority_fifo` or `adaptive_lifo` \
         (TOML line 2, column 9)",
    ),
    (
        "[waiting_room]\ndeadline_header = \"\"\n",
        "waiting_room.deadline_header: \"\" is not a valid HTTP header name: it is empty",
    ),
    (
        "[waiting_room]\ndeadline_header = \"x deadline\"\n",
        "waiting_room.deadline_header: \"x deadline\" is not a valid HTTP header name: it contains ' '; \
         use letters, digits and !#$%&'*+-.^_`|~",
    ),
    (
        "[waiting_room]\ndeadline_header = \"x-deadline:\"\n",
        "waiting_room.deadline_header: \"x-deadline:\" is not a valid HTTP header name: it contains ':'; \
         use letters, digits and !#$%&'*+-.^_`|~",
    ),
    (
        "[waiting_room]\ndeadline_header = \"x-délai\"\n",
        "waiting_room.deadline_header: \"x-délai\" is not a valid HTTP header name: it contains 'é'; \
         use letters, digits and !#$%&'*+-.^_`|~",
    ),
    (
        "[waiting_room]\nsize = 10\n",
        "waiting_room.size: unknown field `size`, expected one of `capacity`, `max_wait`, `order`, \
         `codel_interval`, `codel_target`, `deadline_header` (TOML line 2, column 1)",
    ),
    // [priority]
    (
        "[priority]\nheader = \"\"\n",
        "priority.header: \"\" is not a valid HTTP header name: it is empty",
    ),
    (
        "[priority]\nheader = \"x priority\"\n",
        "priority.header: \"x priority\" is not a valid HTTP header name: it contains ' '; \
         use letters, digits and !#$%&'*+-.^_`|~",
    ),
    (
        "[priority]\nheader = \"x-priority\\n\"\n",
        "priority.header: \"x-priority\\n\" is not a valid HTTP header name: it contains '\\n'; \
         use letters, digits and !#$%&'*+-.^_`|~",
    ),
    (
        "[priority]\nclasses = []\n",
        "priority.classes: [] must name at least one class",
    ),
    (
        "[priority]\nclasses = [\"a\", \"b\", \"c\", \"d\", \"e\", \"f\", \"g\", \"h\", \"i\", \"j\", \"k\", \
         \"l\", \"m\", \"n\", \"o\", \"p\", \"normal\"]\n",
        "priority.classes: 17 classes are more than the 16 allowed",
    ),
    (
        "[priority]\nclasses = [\"normal\", \"\"]\n",
        "priority.classes[1]: \"\" is not a valid class name: it is empty",
    ),
    (
        "[priority]\nclasses = [\"very urgent\", \"normal\"]\n",
        "priority.classes[0]: \"very urgent\" is not a valid class name: it contains ' '; \
         use printable ASCII without spaces",
    ),
    (
        "[priority]\nclasses = [\"normal\", \"café\"]\n",
        "priority.classes[1]: \"café\" is not a valid class name: it contains 'é'; \
         use printable ASCII without spaces",
    ),
    (
        "[priority]\nclasses = [\"urgent\", \"normal\", \"Urgent\"]\n",
        "priority.classes[2]: \"Urgent\" repeats priority.classes[0] (\"urgent\"); class names are compared \
         ignoring case",
    ),
    (
        "[priority]\ndefault = \"vip\"\n",
        "priority.default: \"vip\" is not one of priority.classes [\"urgent\", \"normal\", \"bulk\"]",
    ),
    (
        "[priority]\nclasses = [\"high\", \"low\"]\ndefault = \"\"\n",
        "priority.default: \"\" is not one of priority.classes [\"high\", \"low\"]",
    ),
    (
        "[priority]\nclasses = \"urgent\"\n",
        "priority.classes: invalid type: string \"urgent\", expected a sequence (TOML line 2, column 11)",
    ),
    (
        "[priority]\nclasses = [\"urgent\", 3]\n",
        "priority.classes[1]: invalid type: integer `3`, expected a string (TOML line 2, column 22)",
    ),
    (
        "[priority]\nheaders = \"x-priority\"\n",
        "priority.headers: unknown field `headers`, expected one of `header`, `classes`, `default` \
         (TOML line 2, column 1)",
    ),
    (
        "limit = 3\n",
        "limit: invalid type: integer `3`, expected a table (TOML line 1, column 9)",
    ),
];

#[test]
fn every_bad_toml_input_gets_its_message() {
    assert!(BAD_TOML.len() >= 40, "{}", BAD_TOML.len());
    let mut wrong = Vec::new();
    for &(text, expected) in BAD_TOML {
        match Policy::from_toml(text) {
            Ok(policy) => wrong.push(format!("{text:?} loaded: {policy:?}")),
            Err(err) => {
                let message = err.to_string();
                if message != expected {
                    wrong.push(format!(
                        "{text:?}\n  said:     {message}\n  expected: {expected}"
                    ));
                }
                // The field the message starts with is the one `field()` names.
                let field = err.field().unwrap_or_else(|| panic!("no field: {message}"));
                assert!(message.starts_with(&format!("{field}: ")), "{message}");
            }
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn validate_gives_the_loaders_message_and_parts() {
    let limit = LimitPolicy {
        initial: 5,
        min: 10,
        ..LimitPolicy::default()
    };
    let err = limit.validate().unwrap_err();
    let PolicyError::Invalid {
        field,
        value,
        problem,
        ..
    } = &err
    else {
        panic!("expected Invalid, got {err:?}");
    };
    assert_eq!(
        (field.as_str(), value.as_str(), problem.as_str()),
        ("limit.initial", "5", "is below limit.min (10)")
    );
    let policy = Policy {
        limit,
        ..Policy::default()
    };
    assert_eq!(policy.validate().unwrap_err().to_string(), err.to_string());
    let text = toml::to_string(&policy).unwrap();
    assert_eq!(error(&text).to_string(), err.to_string());

    let room = WaitingRoomPolicy {
        deadline_header: Some("x\u{7f}".to_owned()),
        ..WaitingRoomPolicy::default()
    };
    assert_eq!(
        room.validate().unwrap_err().to_string(),
        "waiting_room.deadline_header: \"x\\u{7f}\" is not a valid HTTP header name: it contains '\\u{7f}'; \
         use letters, digits and !#$%&'*+-.^_`|~"
    );
    let long = "x".repeat(65_536);
    let room = WaitingRoomPolicy {
        deadline_header: Some(long.clone()),
        ..WaitingRoomPolicy::default()
    };
    assert_eq!(
        room.validate().unwrap_err().to_string(),
        format!(
            "waiting_room.deadline_header: {long:?} is not a valid HTTP header name: it is 65536 bytes long, \
             more than 65535"
        )
    );
}

#[test]
fn bad_values_fail_through_from_path_with_the_file() {
    let dir = std::env::temp_dir().join(format!("brownout-policy-sections-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("policy.toml");
    std::fs::write(&path, "[priority]\ndefault = \"vip\"\n").unwrap();
    let err = Policy::from_path(&path).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: priority.default: \"vip\" is not one of priority.classes [\"urgent\", \"normal\", \"bulk\"]",
            path.display()
        )
    );
    assert_eq!(err.field(), Some("priority.default"));
    assert_eq!(err.file(), Some(path.as_path()));
}

#[cfg(feature = "yaml")]
#[test]
fn bad_yaml_inputs_name_field_and_value() {
    let cases = [
        (
            "limit:\n  initial: 5\n  min: 10\n",
            "limit.initial: 5 is below limit.min (10)",
        ),
        (
            "waiting_room:\n  max_wait: 10\n",
            // YAML hands a plain scalar over as the text it is.
            "waiting_room.max_wait: invalid duration \"10\": it needs a unit, e.g. \"10s\" or \"10ms\" \
             (YAML line 2, column 13)",
        ),
        (
            "priority:\n  classes: [urgent, URGENT]\n  default: urgent\n",
            "priority.classes[1]: \"URGENT\" repeats priority.classes[0] (\"urgent\"); class names are \
             compared ignoring case",
        ),
        (
            // A plain YAML scalar may hold spaces; a class name may not.
            "priority:\n  classes: [urgent, very urgent]\n  default: urgent\n",
            "priority.classes[1]: \"very urgent\" is not a valid class name: it contains ' '; \
             use printable ASCII without spaces",
        ),
        (
            "priority:\n  classes: [urgent, {name: normal}]\n",
            "priority.classes[1]: invalid type: map, expected a string (YAML line 2, column 21)",
        ),
    ];
    support::policy::assert_messages(Policy::from_yaml, &cases);
}

#[cfg(feature = "json")]
#[test]
fn bad_json_inputs_name_field_and_value() {
    let cases = [
        (
            r#"{"limit": {"reserve": 1}}"#,
            "limit.reserve: 1.0 is not in [0, 1)",
        ),
        (
            r#"{"waiting_room": {"capacity": 5, "max_wait": "0s"}}"#,
            "waiting_room.max_wait: 0s must be more than zero while waiting_room.capacity is 5 \
             (capacity = 0 turns the room off)",
        ),
        (
            r#"{"priority": {"header": "x priority"}}"#,
            "priority.header: \"x priority\" is not a valid HTTP header name: it contains ' '; \
             use letters, digits and !#$%&'*+-.^_`|~",
        ),
        (
            r#"{"priority": {"classes": null}}"#,
            "priority.classes: invalid type: null, expected a sequence (JSON line 1, column 29)",
        ),
    ];
    support::policy::assert_messages(Policy::from_json, &cases);
}
