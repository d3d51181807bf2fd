//! Ops' policy file: loading in every format, defaults, and an error that
//! names the field and the value for every bad input.
//!
//! TOML is the reference format (and a default feature); the YAML and JSON
//! tests run with their features, and without them `from_path` must say
//! which feature is missing.
#![cfg(feature = "toml")]

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use brownout::breaker::MAX_PROBES;
use brownout::policy::{Algorithm, Format, MAX_CLASSES, Order};
use brownout::{
    BackoffPolicy, BreakerPolicy, LimitPolicy, Mode, Policy, PolicyError, PriorityPolicy, Trip,
    WaitingRoomPolicy, WindowPolicy,
};

use support::policy::DESIGN_BREAKER_TOML;

const DESIGN_BREAKER_YAML: &str = r#"
breaker:
  window: { kind: count, size: 100 }
  failure_rate: 0.5
  slow_call_rate: 1.0
  slow_call_duration: 5s
  minimum_calls: 20
  open_for: 5s
  open_backoff: { multiplier: 2.0, max: 5m, jitter: 0.1 }
  half_open_probes: 3
  mode: enforce
"#;

const DESIGN_BREAKER_JSON: &str = r#"{
  "breaker": {
    "window": { "kind": "count", "size": 100 },
    "failure_rate": 0.5,
    "slow_call_rate": 1.0,
    "slow_call_duration": "5s",
    "minimum_calls": 20,
    "open_for": "5s",
    "open_backoff": { "multiplier": 2.0, "max": "5m", "jitter": 0.1 },
    "half_open_probes": 3,
    "mode": "enforce"
  }
}"#;

/// A policy where every field differs from its default.
fn custom_policy() -> Policy {
    Policy {
        breaker: BreakerPolicy {
            window: WindowPolicy::Time {
                size: Duration::from_secs(30),
                buckets: 6,
            },
            failure_rate: 0.25,
            slow_call_rate: 0.75,
            trip: Trip::Open,
            slow_call_duration: Duration::from_millis(1500),
            minimum_calls: 7,
            open_for: Duration::from_secs(10),
            open_backoff: BackoffPolicy {
                multiplier: 1.5,
                max: Duration::from_secs(90 * 60),
                jitter: 0.0,
                reset_after: Some(Duration::from_secs(3600)),
            },
            half_open_probes: 5,
            probe_after: 40,
            mode: Mode::Shadow,
        },
        limit: LimitPolicy {
            algorithm: Algorithm::Vegas,
            initial: 40,
            min: 4,
            max: 400,
            reserve: 0.3,
        },
        waiting_room: WaitingRoomPolicy {
            capacity: 250,
            max_wait: Duration::from_secs(30),
            order: Order::AdaptiveLifo,
            codel_interval: Duration::from_millis(50),
            codel_target: Duration::from_millis(10),
            deadline_header: Some("x-deadline-ms".to_owned()),
        },
        priority: PriorityPolicy {
            header: "x-class".to_owned(),
            classes: ["tatkal", "regular", "bulk", "batch"]
                .map(String::from)
                .to_vec(),
            default: "regular".to_owned(),
        },
        ..Policy::default()
    }
}

const CUSTOM_TOML: &str = r#"
[breaker]
window = { kind = "time", size = "30s", buckets = 6 }
failure_rate = 0.25
slow_call_rate = 0.75
trip = "open"
slow_call_duration = "1s 500ms"
minimum_calls = 7
open_for = "10s"
half_open_probes = 5
probe_after = 40
mode = "shadow"

[breaker.open_backoff]
multiplier = 1.5
max = "1h 30m"
jitter = 0
reset_after = "1h"

[limit]
algorithm = "vegas"
initial = 40
min = 4
max = 400
reserve = 0.3

[waiting_room]
capacity = 250
max_wait = "30s"
order = "adaptive_lifo"
codel_interval = "50ms"
codel_target = "10ms"
deadline_header = "x-deadline-ms"

[priority]
header = "x-class"
classes = ["tatkal", "regular", "bulk", "batch"]
default = "regular"
"#;

const CUSTOM_YAML: &str = r#"
breaker:
  window:
    kind: time
    size: 30s
    buckets: 6
  failure_rate: 0.25
  slow_call_rate: 0.75
  trip: open
  slow_call_duration: 1500ms
  minimum_calls: 7
  open_for: 10s
  open_backoff:
    multiplier: 1.5
    max: 90m
    jitter: 0.0
    reset_after: 1h
  half_open_probes: 5
  probe_after: 40
  mode: shadow
limit:
  algorithm: vegas
  initial: 40
  min: 4
  max: 400
  reserve: 0.3
waiting_room:
  capacity: 250
  max_wait: 30s
  order: adaptive_lifo
  codel_interval: 50ms
  codel_target: 10ms
  deadline_header: x-deadline-ms
priority:
  header: x-class
  classes:
    - tatkal
    - regular
    - bulk
    - batch
  default: regular
"#;

const CUSTOM_JSON: &str = r#"{"breaker": {
  "window": {"kind": "time", "size": "30s", "buckets": 6},
  "failure_rate": 0.25, "slow_call_rate": 0.75, "trip": "open", "slow_call_duration": "1500ms",
  "minimum_calls": 7, "open_for": "10s",
  "open_backoff": {"multiplier": 1.5, "max": "90m", "jitter": 0.0, "reset_after": "1h"},
  "half_open_probes": 5, "mode": "shadow", "probe_after": 40
},
"limit": {"algorithm": "vegas", "initial": 40, "min": 4, "max": 400, "reserve": 0.3},
"waiting_room": {"capacity": 250, "max_wait": "30s", "order": "adaptive_lifo",
  "codel_interval": "50ms", "codel_target": "10ms", "deadline_header": "x-deadline-ms"},
"priority": {"header": "x-class", "classes": ["tatkal", "regular", "bulk", "batch"],
  "default": "regular"}
}"#;

// ---------------------------------------------------------------- loading

#[test]
fn design_example_is_the_default() {
    assert_eq!(
        Policy::from_toml(DESIGN_BREAKER_TOML).unwrap(),
        Policy::default()
    );
    assert_eq!(Policy::default().breaker, BreakerPolicy::default());
}

#[test]
fn empty_toml_is_the_default() {
    for text in ["", "\n\n", "# nothing yet\n", "[breaker]\n"] {
        assert_eq!(
            Policy::from_toml(text).unwrap(),
            Policy::default(),
            "{text:?}"
        );
    }
}

#[test]
fn every_field_is_read_from_toml() {
    assert_eq!(Policy::from_toml(CUSTOM_TOML).unwrap(), custom_policy());
}

#[test]
fn a_missing_field_keeps_its_default() {
    let policy = Policy::from_toml("[breaker.open_backoff]\njitter = 0.2\n").unwrap();
    let expected = BreakerPolicy {
        open_backoff: BackoffPolicy {
            jitter: 0.2,
            ..BackoffPolicy::default()
        },
        ..BreakerPolicy::default()
    };
    assert_eq!(policy.breaker, expected);

    let time =
        Policy::from_toml("[breaker]\nwindow = { kind = \"time\", size = \"1m\" }\n").unwrap();
    assert_eq!(
        time.breaker.window,
        WindowPolicy::Time {
            size: Duration::from_secs(60),
            buckets: WindowPolicy::DEFAULT_BUCKETS,
        }
    );
}

#[test]
fn toml_integers_are_read_as_rates() {
    let policy = Policy::from_toml("[breaker]\nfailure_rate = 1\n").unwrap();
    assert_eq!(policy.breaker.failure_rate, 1.0);
}

#[cfg(feature = "yaml")]
#[test]
fn yaml_loads_like_toml() {
    assert_eq!(
        Policy::from_yaml(DESIGN_BREAKER_YAML).unwrap(),
        Policy::default()
    );
    assert_eq!(Policy::from_yaml(CUSTOM_YAML).unwrap(), custom_policy());
    for text in [
        "",
        "# nothing yet\n",
        "---\n",
        "breaker:\n",
        "breaker: {}\n",
    ] {
        assert_eq!(
            Policy::from_yaml(text).unwrap(),
            Policy::default(),
            "{text:?}"
        );
    }
}

#[cfg(feature = "json")]
#[test]
fn json_loads_like_toml() {
    assert_eq!(
        Policy::from_json(DESIGN_BREAKER_JSON).unwrap(),
        Policy::default()
    );
    assert_eq!(Policy::from_json(CUSTOM_JSON).unwrap(), custom_policy());
    for text in ["", " \n", "{}", r#"{"breaker": {}}"#] {
        assert_eq!(
            Policy::from_json(text).unwrap(),
            Policy::default(),
            "{text:?}"
        );
    }
    // `null` leaves an optional duration unset.
    let policy = Policy::from_json(r#"{"breaker": {"open_backoff": {"reset_after": null}}}"#);
    assert_eq!(policy.unwrap(), Policy::default());
}

#[test]
fn from_str_as_picks_the_loader() {
    assert_eq!(
        Policy::from_str_as(Format::Toml, CUSTOM_TOML).unwrap(),
        custom_policy()
    );
    #[cfg(feature = "yaml")]
    assert_eq!(
        Policy::from_str_as(Format::Yaml, CUSTOM_YAML).unwrap(),
        custom_policy()
    );
    #[cfg(not(feature = "yaml"))]
    assert_eq!(
        Policy::from_str_as(Format::Yaml, CUSTOM_YAML)
            .unwrap_err()
            .to_string(),
        "YAML policies need brownout's `yaml` cargo feature, which this build lacks"
    );
    #[cfg(feature = "json")]
    assert_eq!(
        Policy::from_str_as(Format::Json, CUSTOM_JSON).unwrap(),
        custom_policy()
    );
}

// -------------------------------------------------------------- from_path

/// A fresh file in the system's temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "brownout-policy-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn from_path_reads_toml_by_extension() {
    for name in ["policy.toml", "POLICY.TOML"] {
        let file = TempFile::new(name, CUSTOM_TOML);
        assert_eq!(
            Policy::from_path(&file.0).unwrap(),
            custom_policy(),
            "{name}"
        );
    }
}

#[test]
fn from_path_reads_yaml_and_json_by_extension() {
    let cases = [
        ("policy.yaml", CUSTOM_YAML, Format::Yaml),
        ("policy.yml", CUSTOM_YAML, Format::Yaml),
        ("policy.json", CUSTOM_JSON, Format::Json),
    ];
    for (name, text, format) in cases {
        let file = TempFile::new(name, text);
        let loaded = Policy::from_path(&file.0);
        if format.is_enabled() {
            assert_eq!(loaded.unwrap(), custom_policy(), "{name}");
        } else {
            let err = loaded.unwrap_err();
            assert!(matches!(err, PolicyError::FormatDisabled { .. }), "{err:?}");
            assert_eq!(
                err.to_string(),
                format!(
                    "{}: {format} policies need brownout's `{}` cargo feature, which this build lacks",
                    file.0.display(),
                    format.feature()
                )
            );
        }
    }
}

#[test]
fn from_path_rejects_an_unknown_extension() {
    for name in ["policy.ini", "policy"] {
        let file = TempFile::new(name, CUSTOM_TOML);
        let err = Policy::from_path(&file.0).unwrap_err();
        assert!(matches!(err, PolicyError::UnknownFormat { .. }), "{err:?}");
        assert_eq!(err.file(), Some(file.0.as_path()));
        let what = if name.contains('.') {
            "the extension `.ini`"
        } else {
            "a name without an extension"
        };
        assert_eq!(
            err.to_string(),
            format!(
                "{}: cannot tell the policy format from {what}: use .toml, .yaml, .yml or .json",
                file.0.display()
            )
        );
    }
}

#[test]
fn from_path_names_a_missing_file() {
    let file = TempFile::new("present.toml", "");
    let missing = file.0.with_file_name("missing.toml");
    let err = Policy::from_path(&missing).unwrap_err();
    let PolicyError::Read { source, .. } = &err else {
        panic!("expected a read error, got {err:?}");
    };
    assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
    assert_eq!(err.file(), Some(missing.as_path()));
    let message = err.to_string();
    let prefix = format!("cannot read policy file {}: ", missing.display());
    assert!(message.starts_with(&prefix), "{message}");
}

#[test]
fn from_path_names_the_file_of_a_bad_policy() {
    let file = TempFile::new("bad.toml", "[breaker]\nfailure_rate = 1.5\n");
    let err = Policy::from_path(&file.0).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: breaker.failure_rate: 1.5 is not in (0, 1]",
            file.0.display()
        )
    );
    assert_eq!(err.field(), Some("breaker.failure_rate"));

    let file = TempFile::new("typo.toml", "[breaker]\nopen_for = \"5 parsecs\"\n");
    let err = Policy::from_path(&file.0).unwrap_err();
    let message = err.to_string();
    let prefix = format!(
        "{}: breaker.open_for: invalid duration \"5 parsecs\"",
        file.0.display()
    );
    assert!(message.starts_with(&prefix), "{message}");
    assert_eq!(err.line_column(), Some((2, 12)));
}

// ------------------------------------------------------------- bad inputs

/// TOML inputs and the exact message each must give; `…` stands for any
/// text.
const BAD_TOML: &[(&str, &str)] = &[
    (
        "[breaker]\nfailure_rate = 1.5\n",
        "breaker.failure_rate: 1.5 is not in (0, 1]",
    ),
    (
        "[breaker]\nfailure_rate = 0\n",
        "breaker.failure_rate: 0.0 is not in (0, 1]",
    ),
    (
        "[breaker]\nfailure_rate = nan\n",
        "breaker.failure_rate: NaN is not in (0, 1]",
    ),
    (
        "[breaker]\nslow_call_rate = -0.5\n",
        "breaker.slow_call_rate: -0.5 is not in (0, 1]",
    ),
    (
        "[breaker]\nslow_call_rate = inf\n",
        "breaker.slow_call_rate: inf is not in (0, 1]",
    ),
    (
        "[breaker]\nslow_call_duration = \"0s\"\n",
        "breaker.slow_call_duration: 0s must be more than zero",
    ),
    (
        "[breaker]\nopen_for = \"0ms\"\n",
        "breaker.open_for: 0s must be more than zero",
    ),
    (
        "[breaker]\nopen_for = \"-5s\"\n",
        "breaker.open_for: invalid duration \"-5s\": a duration cannot be negative (TOML line 2, column 12)",
    ),
    (
        "[breaker]\nopen_for = \"5 parsecs\"\n",
        "breaker.open_for: invalid duration \"5 parsecs\": unknown time unit \"parsecs\", supported units: \
         ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations) (TOML line 2, column 12)",
    ),
    (
        "[breaker]\nslow_call_duration = \"5\"\n",
        "breaker.slow_call_duration: invalid duration \"5\": it needs a unit, e.g. \"5s\" or \"5ms\" (TOML line 2, column 22)",
    ),
    (
        "[breaker]\nopen_for = 5\n",
        "breaker.open_for: invalid type: integer `5`, expected a duration such as \"30s\", \"250ms\" or \"5m\" (TOML line 2, column 12)",
    ),
    (
        "[breaker]\nopen_for = \"\"\n",
        "breaker.open_for: invalid duration \"\": it is empty; expected a duration such as \"30s\", \"250ms\" or \"5m\" (TOML line 2, column 12)",
    ),
    (
        "limits = { max = 10 }\n",
        // The sections listed after "expected" grow with the policy.
        "limits: unknown field `limits`, expected … (TOML line 1, column 1)",
    ),
    (
        "[breaker]\nfailure_ratio = 0.5\n",
        "breaker.failure_ratio: unknown field `failure_ratio`, expected one of `window`, `failure_rate`, \
         `slow_call_rate`, `trip`, `slow_call_duration`, `minimum_calls`, `open_for`, `open_backoff`, \
         `half_open_probes`, `mode`, `probe_after` (TOML line 2, column 1)",
    ),
    (
        "[breaker]\nwindow = { kind = \"count\", sizee = 100 }\n",
        "breaker.window.sizee: unknown field `sizee`, expected one of `kind`, `size`, `buckets` (TOML line 2, column 28)",
    ),
    (
        "[breaker.open_backoff]\nmaximum = \"5m\"\n",
        "breaker.open_backoff.maximum: unknown field `maximum`, expected one of `multiplier`, `max`, `jitter`, \
         `reset_after` (TOML line 2, column 1)",
    ),
    (
        "[breaker]\nwindow = { kind = \"sliding\", size = 100 }\n",
        "breaker.window.kind: unknown variant `sliding`, expected `count` or `time` (TOML line 2, column 19)",
    ),
    (
        "[breaker]\nwindow = { size = 100 }\n",
        "breaker.window: missing field `kind` (TOML line 2, column 10)",
    ),
    (
        "[breaker]\nwindow = { kind = \"count\", size = \"30s\" }\n",
        "breaker.window: size = \"30s\" is a duration, but kind = \"count\" counts calls: write a number of calls, \
         or kind = \"time\" (TOML line 2, column 10)",
    ),
    (
        "[breaker]\nwindow = { kind = \"time\", size = 30 }\n",
        "breaker.window: size = 30 needs a unit for kind = \"time\", e.g. \"30s\" (TOML line 2, column 10)",
    ),
    (
        "[breaker]\nwindow = { kind = \"count\", size = 100, buckets = 10 }\n",
        "breaker.window: `buckets` only applies to kind = \"time\" (TOML line 2, column 10)",
    ),
    (
        "[breaker]\nwindow = { kind = \"count\", size = -1 }\n",
        "breaker.window.size: invalid value: integer `-1`, expected a number of calls (kind = \"count\") or a \
         duration such as \"30s\" (kind = \"time\") (TOML line 2, column 35)",
    ),
    (
        "[breaker]\nwindow = { kind = \"count\", size = 0 }\n",
        "breaker.window.size: 0 is not in 1..=1000000",
    ),
    (
        "[breaker]\nwindow = { kind = \"count\", size = 1000001 }\nminimum_calls = 1\n",
        "breaker.window.size: 1000001 is not in 1..=1000000",
    ),
    (
        "[breaker]\nwindow = { kind = \"count\", size = 5000000000 }\n",
        "breaker.window: size = 5000000000 is not in 1..=1000000 (TOML line 2, column 10)",
    ),
    (
        "[breaker]\nwindow = { kind = \"time\", size = \"0s\" }\n",
        "breaker.window.size: 0s must be more than zero",
    ),
    (
        "[breaker]\nwindow = { kind = \"time\", size = \"30s\", buckets = 0 }\n",
        "breaker.window.buckets: 0 is not in 1..=1000",
    ),
    (
        "[breaker]\nwindow = { kind = \"time\", size = \"30m\", buckets = 1001 }\n",
        "breaker.window.buckets: 1001 is not in 1..=1000",
    ),
    (
        "[breaker]\nwindow = { kind = \"time\", size = \"100ms\", buckets = 200 }\n",
        "breaker.window.buckets: 200 cuts breaker.window.size = 100ms into buckets shorter than 1ms",
    ),
    (
        "[breaker]\nwindow = { kind = \"count\", size = 10 }\nminimum_calls = 20\n",
        "breaker.minimum_calls: 20 is more than breaker.window.size = 10, so the breaker could never open",
    ),
    (
        "[breaker]\nminimum_calls = 0\n",
        "breaker.minimum_calls: 0 must be at least 1",
    ),
    (
        "[breaker]\nminimum_calls = \"twenty\"\n",
        "breaker.minimum_calls: invalid type: string \"twenty\", expected u32 (TOML line 2, column 17)",
    ),
    (
        "[breaker]\nhalf_open_probes = 0\n",
        "breaker.half_open_probes: 0 is not in 1..=1023",
    ),
    (
        "[breaker]\nhalf_open_probes = 5000\n",
        "breaker.half_open_probes: 5000 is not in 1..=1023",
    ),
    (
        "[breaker.open_backoff]\njitter = 1.0\n",
        "breaker.open_backoff.jitter: 1.0 is not in [0, 1)",
    ),
    (
        "[breaker.open_backoff]\njitter = -0.1\n",
        "breaker.open_backoff.jitter: -0.1 is not in [0, 1)",
    ),
    (
        "[breaker.open_backoff]\nmultiplier = 0.5\n",
        "breaker.open_backoff.multiplier: 0.5 is not a finite number >= 1.0",
    ),
    (
        "[breaker.open_backoff]\nmultiplier = inf\n",
        "breaker.open_backoff.multiplier: inf is not a finite number >= 1.0",
    ),
    (
        "[breaker]\nopen_for = \"10m\"\nopen_backoff = { max = \"5m\" }\n",
        "breaker.open_backoff.max: 5m is shorter than breaker.open_for = 10m",
    ),
    (
        "[breaker.open_backoff]\nreset_after = \"0s\"\n",
        "breaker.open_backoff.reset_after: 0s must be more than zero",
    ),
    (
        "[breaker]\nmode = \"sometimes\"\n",
        "breaker.mode: unknown variant `sometimes`, expected one of `enforce`, `shadow`, `forced_open`, \
         `forced_closed` (TOML line 2, column 8)",
    ),
    (
        "breaker = 3\n",
        "breaker: invalid type: integer `3`, expected a table (TOML line 1, column 11)",
    ),
    (
        "[breaker\nfailure_rate = 0.5\n",
        "unclosed table, expected `]` (TOML line 1, column 9)",
    ),
];

#[test]
fn every_bad_toml_input_gets_its_message() {
    assert!(BAD_TOML.len() >= 12);
    let mut wrong = Vec::new();
    for &(text, expected) in BAD_TOML {
        match Policy::from_toml(text) {
            Ok(policy) => wrong.push(format!("{text:?} loaded: {policy:?}")),
            Err(err) => {
                let message = err.to_string();
                let matches = match expected.split_once('…') {
                    Some((head, tail)) => {
                        message.len() >= head.len() + tail.len()
                            && message.starts_with(head)
                            && message.ends_with(tail)
                    }
                    None => message == expected,
                };
                if !matches {
                    wrong.push(format!(
                        "{text:?}\n  said:     {message}\n  expected: {expected}"
                    ));
                }
                // The field the message starts with is the one `field()` names.
                if let Some(field) = err.field() {
                    assert!(message.starts_with(&format!("{field}: ")), "{message}");
                }
            }
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn errors_travel_as_box_error() {
    fn is_box_error<E: std::error::Error + Send + Sync + 'static>() {}
    is_box_error::<PolicyError>();
    let err = Policy::from_toml("[breaker]\nhalf_open_probes = 0\n").unwrap_err();
    let boxed: Box<dyn std::error::Error + Send + Sync> = err.into();
    let back = boxed.downcast_ref::<PolicyError>().unwrap();
    assert_eq!(back.field(), Some("breaker.half_open_probes"));
}

#[test]
fn errors_expose_their_parts() {
    let err = Policy::from_toml("[breaker]\nfailure_rate = 1.5\n").unwrap_err();
    let PolicyError::Invalid {
        field,
        value,
        problem,
        file,
        ..
    } = &err
    else {
        panic!("expected Invalid, got {err:?}");
    };
    assert_eq!(field, "breaker.failure_rate");
    assert_eq!(value, "1.5");
    assert_eq!(problem, "is not in (0, 1]");
    assert_eq!(file, &None);
    assert_eq!(err.line_column(), None);

    let err = Policy::from_toml("\n[breaker]\nopen_for = 'soon'\n").unwrap_err();
    let PolicyError::Parse { format, field, .. } = &err else {
        panic!("expected Parse, got {err:?}");
    };
    assert_eq!(*format, Format::Toml);
    assert_eq!(field, "breaker.open_for");
    assert_eq!(err.field(), Some("breaker.open_for"));
    assert_eq!(err.line_column(), Some((3, 12)));

    // A syntax error names no field.
    let err = Policy::from_toml("[breaker\n").unwrap_err();
    assert_eq!(err.field(), None);
    assert_eq!(err.line_column(), Some((1, 9)));
}

#[test]
fn columns_count_characters_not_bytes() {
    let err = Policy::from_toml("# café ☕\n[breaker] # ☕\nopen_for = \"5 ☕\"\n").unwrap_err();
    assert_eq!(err.field(), Some("breaker.open_for"));
    assert_eq!(err.line_column(), Some((3, 12)));
    let err = Policy::from_toml("[breaker]\nmode = \"☕☕\" ; \n").unwrap_err();
    assert_eq!(err.line_column(), Some((2, 13)), "{err}");
}

#[cfg(feature = "yaml")]
#[test]
fn bad_yaml_inputs_name_field_and_value() {
    let cases = [
        (
            "breaker:\n  failure_rate: 1.5\n",
            "breaker.failure_rate: 1.5 is not in (0, 1]",
        ),
        (
            "breaker:\n  failure_rate: .nan\n",
            "breaker.failure_rate: NaN is not in (0, 1]",
        ),
        (
            "breaker:\n  open_for: 5 parsecs\n",
            "breaker.open_for: invalid duration \"5 parsecs\": unknown time unit \"parsecs\", supported units: \
             ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations) (YAML line 2, column 13)",
        ),
        (
            "breaker:\n  failure_ratio: 0.5\n",
            "breaker.failure_ratio: unknown field `failure_ratio`, expected one of `window`, `failure_rate`, \
             `slow_call_rate`, `trip`, `slow_call_duration`, `minimum_calls`, `open_for`, `open_backoff`, \
             `half_open_probes`, `mode`, `probe_after` (YAML line 2, column 3)",
        ),
        (
            "breaker:\n  window: { kind: count, sizee: 3 }\n",
            "breaker.window.sizee: unknown field `sizee`, expected one of `kind`, `size`, `buckets` (YAML line 2, column 26)",
        ),
        (
            "breaker:\n  minimum_calls: twenty\n",
            "breaker.minimum_calls: invalid type: string \"twenty\", expected u32 (YAML line 2, column 18)",
        ),
        (
            "breaker: [1, 2]\n",
            "breaker: invalid type: sequence, expected a mapping (YAML line 1, column 10)",
        ),
    ];
    support::policy::assert_messages(Policy::from_yaml, &cases);
}

#[cfg(feature = "json")]
#[test]
fn bad_json_inputs_name_field_and_value() {
    let cases = [
        (
            r#"{"breaker": {"failure_rate": 0}}"#,
            "breaker.failure_rate: 0.0 is not in (0, 1]",
        ),
        (
            r#"{"breaker": {"half_open_probes": 5000}}"#,
            "breaker.half_open_probes: 5000 is not in 1..=1023",
        ),
        (
            r#"{"breaker": {"open_for": "5 parsecs"}}"#,
            "breaker.open_for: invalid duration \"5 parsecs\": unknown time unit \"parsecs\", supported units: \
             ns, us/µs, ms, sec, min, hours, days, weeks, months, years (and few variations) (JSON line 1, column 36)",
        ),
        (
            r#"{"breaker": {"window": {"kind": "count", "sizee": 3}}}"#,
            "breaker.window.sizee: unknown field `sizee`, expected one of `kind`, `size`, `buckets` (JSON line 1, column 48)",
        ),
        (
            r#"{"breaker": {"minimum_calls": "twenty"}}"#,
            "breaker.minimum_calls: invalid type: string \"twenty\", expected u32 (JSON line 1, column 38)",
        ),
        (
            r#"{"breaker": null}"#,
            "breaker: invalid type: null, expected an object (JSON line 1, column 16)",
        ),
        (
            r#"{"breaker": {}} {"#,
            "trailing characters (JSON line 1, column 17)",
        ),
        (
            r#"{"breaker": "#,
            "breaker: EOF while parsing a value (JSON line 1, column 12)",
        ),
    ];
    support::policy::assert_messages(Policy::from_json, &cases);
}

// ------------------------------------------------------------- validation

#[test]
fn the_edges_of_every_range_are_valid() {
    let edges = [
        BreakerPolicy {
            failure_rate: 1.0,
            slow_call_rate: f64::MIN_POSITIVE,
            ..BreakerPolicy::default()
        },
        BreakerPolicy {
            window: WindowPolicy::Count { size: 1 },
            minimum_calls: 1,
            ..BreakerPolicy::default()
        },
        BreakerPolicy {
            window: WindowPolicy::Count {
                size: WindowPolicy::MAX_COUNT_SIZE,
            },
            minimum_calls: WindowPolicy::MAX_COUNT_SIZE,
            ..BreakerPolicy::default()
        },
        BreakerPolicy {
            window: WindowPolicy::Time {
                size: Duration::from_secs(1),
                buckets: WindowPolicy::MAX_BUCKETS,
            },
            minimum_calls: u32::MAX,
            ..BreakerPolicy::default()
        },
        BreakerPolicy {
            window: WindowPolicy::Time {
                size: Duration::from_millis(1),
                buckets: 1,
            },
            ..BreakerPolicy::default()
        },
        BreakerPolicy {
            slow_call_duration: Duration::from_nanos(1),
            open_for: Duration::from_nanos(1),
            open_backoff: BackoffPolicy {
                multiplier: 1.0,
                max: Duration::from_nanos(1),
                jitter: 0.0,
                reset_after: Some(Duration::from_nanos(1)),
            },
            half_open_probes: MAX_PROBES,
            ..BreakerPolicy::default()
        },
    ];
    for policy in &edges {
        let verdict = policy.validate();
        assert!(verdict.is_ok(), "{policy:?}: {verdict:?}");
    }
    assert_eq!(MAX_PROBES, 1023);

    // Just past the edges.
    let window = |size, buckets| BreakerPolicy {
        window: WindowPolicy::Time { size, buckets },
        ..BreakerPolicy::default()
    };
    assert_eq!(
        window(Duration::from_nanos(999_999), 1)
            .validate()
            .unwrap_err()
            .to_string(),
        "breaker.window.buckets: 1 cuts breaker.window.size = 999us 999ns into buckets shorter than 1ms"
    );
    assert_eq!(
        window(Duration::from_nanos(1_000_999), 2)
            .validate()
            .unwrap_err()
            .to_string(),
        "breaker.window.buckets: 2 cuts breaker.window.size = 1ms 999ns into buckets shorter than 1ms"
    );
    let backoff = BreakerPolicy {
        open_for: Duration::from_secs(5),
        open_backoff: BackoffPolicy {
            max: Duration::from_secs(5) - Duration::from_nanos(1),
            ..BackoffPolicy::default()
        },
        ..BreakerPolicy::default()
    };
    assert_eq!(
        backoff.validate().unwrap_err().to_string(),
        "breaker.open_backoff.max: 4s 999ms 999us 999ns is shorter than breaker.open_for = 5s"
    );
    let rate = BreakerPolicy {
        failure_rate: 1.0 + f64::EPSILON,
        ..BreakerPolicy::default()
    };
    assert_eq!(
        rate.validate().unwrap_err().to_string(),
        "breaker.failure_rate: 1.0000000000000002 is not in (0, 1]"
    );
}

#[test]
fn an_invalid_policy_is_refused_by_try_new() {
    let policy = BreakerPolicy {
        half_open_probes: 0,
        ..BreakerPolicy::default()
    };
    let err = brownout::CircuitBreakerLayer::try_new(policy).unwrap_err();
    assert_eq!(
        err.to_string(),
        "breaker.half_open_probes: 0 is not in 1..=1023"
    );
}

// -------------------------------------------------------------- proptests

mod props {
    use super::*;
    use proptest::prelude::*;

    fn rate() -> impl Strategy<Value = f64> {
        prop_oneof![
            4 => 0.0..=1.0f64,
            1 => Just(0.0),
            1 => Just(1.0),
            1 => Just(-0.0),
            1 => Just(f64::NAN),
            1 => Just(f64::INFINITY),
            1 => Just(f64::NEG_INFINITY),
            2 => -2.0..3.0f64,
            1 => any::<f64>(),
        ]
    }

    fn duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            1 => Just(Duration::ZERO),
            4 => (0u64..600_000).prop_map(Duration::from_millis),
            2 => (0u64..10_000_000_000, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
            1 => (0u64..1_000_000).prop_map(Duration::from_nanos),
        ]
    }

    fn window() -> impl Strategy<Value = WindowPolicy> {
        prop_oneof![
            3 => (0u32..2_000).prop_map(|size| WindowPolicy::Count { size }),
            1 => (999_990u32..1_000_010).prop_map(|size| WindowPolicy::Count { size }),
            1 => any::<u32>().prop_map(|size| WindowPolicy::Count { size }),
            3 => (duration(), prop_oneof![0u32..1_100, any::<u32>()])
                .prop_map(|(size, buckets)| WindowPolicy::Time { size, buckets }),
        ]
    }

    fn count(small: u32) -> impl Strategy<Value = u32> {
        prop_oneof![4 => 0..=small, 1 => any::<u32>()]
    }

    prop_compose! {
        fn backoff()(
            multiplier in prop_oneof![3 => 0.0..10.0f64, 1 => rate()],
            max in duration(),
            jitter in rate(),
            reset_after in proptest::option::of(duration()),
        ) -> BackoffPolicy {
            BackoffPolicy { multiplier, max, jitter, reset_after }
        }
    }

    fn positive_duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (1u64..3_600_000).prop_map(Duration::from_millis),
            (1u64..10_000_000_000, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        ]
    }

    prop_compose! {
        /// A policy inside every range.
        fn valid_breaker()(
            window in prop_oneof![
                (1u32..=WindowPolicy::MAX_COUNT_SIZE).prop_map(|size| WindowPolicy::Count { size }),
                (1u64..100_000_000, 1u32..=WindowPolicy::MAX_BUCKETS).prop_map(|(ms, buckets)| {
                    let size = Duration::from_millis(ms.max(u64::from(buckets)));
                    WindowPolicy::Time { size, buckets }
                }),
            ],
            failure_rate in prop_oneof![f64::MIN_POSITIVE..=1.0, Just(1.0)],
            slow_call_rate in prop_oneof![f64::MIN_POSITIVE..=1.0, Just(1.0)],
            slow_call_duration in positive_duration(),
            minimum_calls in any::<prop::sample::Index>(),
            open_for in positive_duration(),
            longer in duration(),
            multiplier in prop_oneof![1.0..100.0f64, Just(1.0)],
            jitter in prop_oneof![0.0..1.0f64, Just(0.0)],
            reset_after in proptest::option::of(positive_duration()),
            half_open_probes in 1..=MAX_PROBES,
            (mode, trip, probe_after) in (mode(), trip(), any::<u32>()),
        ) -> BreakerPolicy {
            let most = match window {
                WindowPolicy::Count { size } => size as usize,
                WindowPolicy::Time { .. } => u32::MAX as usize,
            };
            BreakerPolicy {
                window, failure_rate, slow_call_rate, trip, slow_call_duration,
                minimum_calls: minimum_calls.index(most) as u32 + 1,
                open_for,
                open_backoff: BackoffPolicy {
                    multiplier,
                    max: open_for.saturating_add(longer),
                    jitter,
                    reset_after,
                },
                half_open_probes, mode, probe_after,
            }
        }
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

    /// Valid policies, policies with one field out of its range, and
    /// policies with anything anywhere.
    fn breaker() -> BoxedStrategy<BreakerPolicy> {
        // Boxed: the unboxed strategy tree overflows a test thread's stack.
        let valid = || valid_breaker().boxed();
        let any = || any_breaker().boxed();
        prop_oneof![
            1 => valid(),
            2 => (valid(), any(), 0..12usize).prop_map(|(mut p, any, field)| {
                match field {
                    0 => p.window = any.window,
                    1 => p.failure_rate = any.failure_rate,
                    2 => p.slow_call_rate = any.slow_call_rate,
                    3 => p.slow_call_duration = any.slow_call_duration,
                    4 => p.minimum_calls = any.minimum_calls,
                    5 => p.open_for = any.open_for,
                    6 => p.open_backoff.multiplier = any.open_backoff.multiplier,
                    7 => p.open_backoff.max = any.open_backoff.max,
                    8 => p.open_backoff.jitter = any.open_backoff.jitter,
                    9 => p.open_backoff.reset_after = any.open_backoff.reset_after,
                    10 => p.half_open_probes = any.half_open_probes,
                    _ => p.mode = any.mode,
                }
                p
            }),
            1 => any(),
        ]
        .boxed()
    }

    prop_compose! {
        /// A policy with any value, mostly near or past the edges.
        fn any_breaker()(
            window in window(),
            failure_rate in rate(),
            slow_call_rate in rate(),
            slow_call_duration in duration(),
            minimum_calls in count(300),
            open_for in duration(),
            open_backoff in backoff(),
            half_open_probes in count(1100),
            (mode, trip, probe_after) in (mode(), trip(), any::<u32>()),
        ) -> BreakerPolicy {
            BreakerPolicy {
                window, failure_rate, slow_call_rate, trip, slow_call_duration, minimum_calls,
                open_for, open_backoff, half_open_probes, mode, probe_after,
            }
        }
    }

    /// The fields that break the documented ranges, written from the spec
    /// independently of `validate`.
    fn bad_breaker_fields(p: &BreakerPolicy) -> Vec<String> {
        let in_rate = |r: f64| r > 0.0 && r <= 1.0;
        let mut bad = Vec::new();
        match p.window {
            WindowPolicy::Count { size } => {
                if size == 0 || size > 1_000_000 {
                    bad.push("breaker.window.size");
                } else if p.minimum_calls > size {
                    bad.push("breaker.minimum_calls");
                }
            }
            WindowPolicy::Time { size, buckets } => {
                if size.is_zero() {
                    bad.push("breaker.window.size");
                } else if buckets == 0
                    || buckets > 1000
                    || size / buckets < Duration::from_millis(1)
                {
                    bad.push("breaker.window.buckets");
                }
            }
        }
        if !in_rate(p.failure_rate) {
            bad.push("breaker.failure_rate");
        }
        if !in_rate(p.slow_call_rate) {
            bad.push("breaker.slow_call_rate");
        }
        if p.slow_call_duration.is_zero() {
            bad.push("breaker.slow_call_duration");
        }
        if p.minimum_calls == 0 {
            bad.push("breaker.minimum_calls");
        }
        if p.open_for.is_zero() {
            bad.push("breaker.open_for");
        }
        let b = &p.open_backoff;
        if !b.multiplier.is_finite() || b.multiplier < 1.0 {
            bad.push("breaker.open_backoff.multiplier");
        }
        if b.max < p.open_for {
            bad.push("breaker.open_backoff.max");
        }
        if !(0.0..1.0).contains(&b.jitter) {
            bad.push("breaker.open_backoff.jitter");
        }
        if b.reset_after == Some(Duration::ZERO) {
            bad.push("breaker.open_backoff.reset_after");
        }
        if p.half_open_probes == 0 || p.half_open_probes > 1023 {
            bad.push("breaker.half_open_probes");
        }
        bad.into_iter().map(String::from).collect()
    }

    // ------------------------------------------------------------ [limit]

    fn algorithm() -> impl Strategy<Value = Algorithm> {
        prop_oneof![
            Just(Algorithm::Fixed),
            Just(Algorithm::Aimd),
            Just(Algorithm::Vegas),
            Just(Algorithm::Gradient),
        ]
    }

    /// A limit value, mostly small, sometimes near or past 1_000_000.
    fn limit_value() -> impl Strategy<Value = u32> {
        prop_oneof![
            4 => 0u32..2_000,
            1 => 999_990u32..1_000_010,
            1 => any::<u32>(),
        ]
    }

    prop_compose! {
        /// A `[limit]` inside every range: 1 <= min <= initial <= max <= 1e6.
        fn valid_limit()(
            algorithm in algorithm(),
            mut values in [
                prop_oneof![3 => 1u32..2_000, 1 => 1u32..=1_000_000],
                prop_oneof![3 => 1u32..2_000, 1 => 1u32..=1_000_000],
                prop_oneof![3 => 1u32..2_000, 1 => 1u32..=1_000_000],
            ],
            reserve in prop_oneof![3 => 0.0..1.0f64, 1 => Just(0.0), 1 => Just(1.0 - f64::EPSILON)],
        ) -> LimitPolicy {
            values.sort_unstable();
            let [min, initial, max] = values;
            LimitPolicy { algorithm, initial, min, max, reserve }
        }
    }

    prop_compose! {
        fn any_limit()(
            algorithm in algorithm(),
            initial in limit_value(),
            min in limit_value(),
            max in limit_value(),
            reserve in rate(),
        ) -> LimitPolicy {
            LimitPolicy { algorithm, initial, min, max, reserve }
        }
    }

    fn limit() -> BoxedStrategy<LimitPolicy> {
        let valid = || valid_limit().boxed();
        prop_oneof![
            1 => valid(),
            2 => (valid(), any_limit(), 0..5usize).prop_map(|(mut p, any, field)| {
                match field {
                    0 => p.algorithm = any.algorithm,
                    1 => p.initial = any.initial,
                    2 => p.min = any.min,
                    3 => p.max = any.max,
                    _ => p.reserve = any.reserve,
                }
                p
            }),
            1 => any_limit(),
        ]
        .boxed()
    }

    fn bad_limit_fields(p: &LimitPolicy) -> Vec<String> {
        let mut bad = Vec::new();
        if p.min == 0 {
            bad.push("limit.min");
        }
        if p.max == 0 || p.max > 1_000_000 {
            bad.push("limit.max");
        }
        if p.min > p.max {
            // Either end of an empty range may be the one at fault.
            bad.extend(["limit.min", "limit.max"]);
        }
        if p.initial < p.min || p.initial > p.max {
            bad.push("limit.initial");
        }
        if !(0.0..1.0).contains(&p.reserve) {
            bad.push("limit.reserve");
        }
        bad.into_iter().map(String::from).collect()
    }

    // ------------------------------------------------------ header names

    /// Header names the `http` crate accepts (the RFC 9110 token).
    fn valid_header() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "x-[a-z0-9-]{1,16}",
            1 => "[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}",
        ]
    }

    /// Anything, often almost a header name.
    fn any_header() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => valid_header(),
            1 => Just(String::new()),
            2 => "[a-z -]{0,6}[ :\"(),/;<=>?@\\[\\]{}\\\\\t\u{7f}é☕][a-z-]{0,6}",
            1 => "\\PC{0,12}",
            1 => any::<String>(),
        ]
    }

    fn is_header_name(name: &str) -> bool {
        http::HeaderName::from_bytes(name.as_bytes()).is_ok()
    }

    // ----------------------------------------------------- [waiting_room]

    fn order() -> impl Strategy<Value = Order> {
        prop_oneof![Just(Order::PriorityFifo), Just(Order::AdaptiveLifo)]
    }

    prop_compose! {
        /// A `[waiting_room]` inside every range.
        fn valid_waiting_room()(
            capacity in prop_oneof![1 => Just(0u32), 4 => 1u32..5_000, 1 => 0u32..=1_000_000],
            max_wait in positive_duration(),
            off_wait in duration(),
            order in order(),
            codel_interval in positive_duration(),
            codel_target in positive_duration(),
            target_share in 0.0..=1.0f64,
            deadline_header in proptest::option::of(valid_header()),
        ) -> WaitingRoomPolicy {
            // A room that is off may say any wait; adaptive_lifo cuts waits
            // to at most max_wait.
            let max_wait = if capacity == 0 { off_wait } else { max_wait };
            let codel_target = if capacity > 0 && order == Order::AdaptiveLifo {
                max_wait.mul_f64(target_share).max(Duration::from_nanos(1)).min(max_wait)
            } else {
                codel_target
            };
            WaitingRoomPolicy {
                capacity, max_wait, order, codel_interval, codel_target, deadline_header,
            }
        }
    }

    prop_compose! {
        fn any_waiting_room()(
            capacity in prop_oneof![3 => 0u32..2_000, 1 => 999_990u32..1_000_010, 1 => any::<u32>()],
            max_wait in duration(),
            order in order(),
            codel_interval in duration(),
            codel_target in duration(),
            deadline_header in proptest::option::of(any_header()),
        ) -> WaitingRoomPolicy {
            WaitingRoomPolicy {
                capacity, max_wait, order, codel_interval, codel_target, deadline_header,
            }
        }
    }

    fn waiting_room() -> BoxedStrategy<WaitingRoomPolicy> {
        let valid = || valid_waiting_room().boxed();
        prop_oneof![
            1 => valid(),
            2 => (valid(), any_waiting_room(), 0..6usize).prop_map(|(mut p, any, field)| {
                match field {
                    0 => p.capacity = any.capacity,
                    1 => p.max_wait = any.max_wait,
                    2 => p.order = any.order,
                    3 => p.codel_interval = any.codel_interval,
                    4 => p.codel_target = any.codel_target,
                    _ => p.deadline_header = any.deadline_header,
                }
                p
            }),
            1 => any_waiting_room(),
        ]
        .boxed()
    }

    fn bad_waiting_room_fields(p: &WaitingRoomPolicy) -> Vec<String> {
        let mut bad = Vec::new();
        if p.capacity > 1_000_000 {
            bad.push("waiting_room.capacity");
        }
        let open = p.capacity > 0;
        if open && p.max_wait.is_zero() {
            bad.push("waiting_room.max_wait");
        }
        if p.codel_interval.is_zero() {
            bad.push("waiting_room.codel_interval");
        }
        if p.codel_target.is_zero() {
            bad.push("waiting_room.codel_target");
        }
        if open && p.order == Order::AdaptiveLifo && p.codel_target > p.max_wait {
            bad.push("waiting_room.codel_target");
        }
        if p.deadline_header
            .as_deref()
            .is_some_and(|h| !is_header_name(h))
        {
            bad.push("waiting_room.deadline_header");
        }
        bad.into_iter().map(String::from).collect()
    }

    // --------------------------------------------------------- [priority]

    /// Flips the case of some letters of `name`.
    fn recase(name: &str, flips: u64) -> String {
        name.chars()
            .enumerate()
            .map(|(i, c)| {
                if flips >> (i % 64) & 1 == 1 {
                    if c.is_ascii_lowercase() {
                        c.to_ascii_uppercase()
                    } else {
                        c.to_ascii_lowercase()
                    }
                } else {
                    c
                }
            })
            .collect()
    }

    prop_compose! {
        /// A `[priority]` inside every range.
        fn valid_priority()(
            header in valid_header(),
            names in proptest::collection::vec(
                prop_oneof![3 => "[a-z]{1,8}", 1 => "[!-~]{1,10}"],
                1..=24,
            ),
            default in any::<prop::sample::Index>(),
            flips in any::<u64>(),
        ) -> PriorityPolicy {
            let mut classes: Vec<String> = Vec::new();
            for name in names {
                if classes.len() < MAX_CLASSES
                    && !classes.iter().any(|c| c.eq_ignore_ascii_case(&name))
                {
                    classes.push(name);
                }
            }
            let default = recase(&classes[default.index(classes.len())], flips);
            PriorityPolicy { header, classes, default }
        }
    }

    /// A class name, often valid, often a near miss.
    fn any_class() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[a-zA-Z]{1,6}",
            1 => Just(String::new()),
            1 => "[a-z]{0,3}[ \t\n\u{7f}é☕][a-z]{0,3}",
            1 => "\\PC{0,8}",
        ]
    }

    prop_compose! {
        fn any_priority()(
            header in any_header(),
            classes in proptest::collection::vec(any_class(), 0..20),
            default in prop_oneof![any_class(), Just("normal".to_owned())],
            pick in proptest::option::of((any::<prop::sample::Index>(), any::<u64>())),
        ) -> PriorityPolicy {
            let default = match pick {
                Some((at, flips)) if !classes.is_empty() => recase(&classes[at.index(classes.len())], flips),
                _ => default,
            };
            PriorityPolicy { header, classes, default }
        }
    }

    fn priority() -> BoxedStrategy<PriorityPolicy> {
        let valid = || valid_priority().boxed();
        prop_oneof![
            1 => valid(),
            2 => (valid(), any_priority(), 0..5usize, any::<prop::sample::Index>(), any::<u64>())
                .prop_map(|(mut p, any, field, at, flips)| {
                    match field {
                        0 => p.header = any.header,
                        1 => p.classes = any.classes,
                        2 => p.default = any.default,
                        // A class repeated in another case.
                        3 => {
                            let again = recase(&p.classes[at.index(p.classes.len())], flips);
                            p.classes.push(again);
                        }
                        _ => p.classes.extend(any.classes),
                    }
                    p
                }),
            1 => any_priority(),
        ]
        .boxed()
    }

    fn bad_priority_fields(p: &PriorityPolicy) -> Vec<String> {
        let mut bad = Vec::new();
        if !is_header_name(&p.header) {
            bad.push("priority.header".to_owned());
        }
        if p.classes.is_empty() || p.classes.len() > 16 {
            bad.push("priority.classes".to_owned());
        }
        for (i, name) in p.classes.iter().enumerate() {
            let printable = name.bytes().all(|b| (b'!'..=b'~').contains(&b));
            let repeated = p.classes[..i]
                .iter()
                .any(|earlier| earlier.eq_ignore_ascii_case(name));
            if name.is_empty() || !printable || repeated {
                bad.push(format!("priority.classes[{i}]"));
            }
        }
        if !p.classes.iter().any(|c| c.eq_ignore_ascii_case(&p.default)) {
            bad.push("priority.default".to_owned());
        }
        bad
    }

    // ------------------------------------------------------ whole policies

    fn valid_policy() -> BoxedStrategy<Policy> {
        (
            valid_breaker().boxed(),
            valid_limit(),
            valid_waiting_room(),
            valid_priority(),
        )
            .prop_map(|(breaker, limit, waiting_room, priority)| Policy {
                breaker,
                limit,
                waiting_room,
                priority,
                ..Policy::default()
            })
            .boxed()
    }

    /// A policy, and the one section that may be bad (`None`: any may be).
    fn policy_with_suspect() -> BoxedStrategy<(Policy, Option<&'static str>)> {
        prop_oneof![
            1 => valid_policy().prop_map(|p| (p, None)),
            1 => (valid_policy(), breaker()).prop_map(|(p, breaker)| (Policy { breaker, ..p }, Some("breaker"))),
            1 => (valid_policy(), limit()).prop_map(|(p, limit)| (Policy { limit, ..p }, Some("limit"))),
            1 => (valid_policy(), waiting_room())
                .prop_map(|(p, waiting_room)| (Policy { waiting_room, ..p }, Some("waiting_room"))),
            1 => (valid_policy(), priority()).prop_map(|(p, priority)| (Policy { priority, ..p }, Some("priority"))),
            1 => (breaker(), limit(), waiting_room(), priority())
                .prop_map(|(breaker, limit, waiting_room, priority)| {
                    (Policy { breaker, limit, waiting_room, priority, ..Policy::default() }, None)
                }),
        ]
        .boxed()
    }

    fn policy() -> BoxedStrategy<Policy> {
        policy_with_suspect().prop_map(|(p, _)| p).boxed()
    }

    fn bad_fields(p: &Policy) -> Vec<String> {
        let mut bad = bad_breaker_fields(&p.breaker);
        bad.extend(bad_limit_fields(&p.limit));
        bad.extend(bad_waiting_room_fields(&p.waiting_room));
        bad.extend(bad_priority_fields(&p.priority));
        bad
    }

    #[cfg(feature = "json")]
    fn floats_are_finite(p: &Policy) -> bool {
        let b = &p.breaker;
        [
            b.failure_rate,
            b.slow_call_rate,
            b.open_backoff.multiplier,
            b.open_backoff.jitter,
            p.limit.reserve,
        ]
        .iter()
        .all(|x| x.is_finite())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3_000))]

        #[test]
        fn validate_agrees_with_the_spec((policy, suspect) in policy_with_suspect()) {
            let bad = bad_fields(&policy);
            match policy.validate() {
                Ok(()) => {
                    prop_assert!(bad.is_empty(), "accepted, but {bad:?} are bad: {policy:?}");
                    let text = toml::to_string(&policy).unwrap();
                    prop_assert_eq!(&Policy::from_toml(&text).unwrap(), &policy, "{}", text);
                    #[cfg(feature = "yaml")]
                    {
                        let text = serde_yaml_ng::to_string(&policy).unwrap();
                        let loaded = Policy::from_yaml(&text);
                        prop_assert!(loaded.is_ok(), "{loaded:?}\n{text}");
                        prop_assert_eq!(&loaded.unwrap(), &policy, "{}", text);
                    }
                    #[cfg(feature = "json")]
                    {
                        let text = serde_json::to_string(&policy).unwrap();
                        prop_assert_eq!(&Policy::from_json(&text).unwrap(), &policy, "{}", text);
                    }
                }
                Err(err) => {
                    let message = err.to_string();
                    let field = err.field().unwrap_or_default().to_owned();
                    prop_assert!(message.starts_with(&format!("{field}: ")), "{}", message);
                    prop_assert!(bad.contains(&field), "{message}, but the bad fields are {bad:?}");
                    if let Some(section) = suspect {
                        prop_assert!(field.starts_with(&format!("{section}.")), "{message} is not about {section}");
                    }
                    // Each section's own validate names the same field.
                    let section = field.split(['.', '[']).next().unwrap_or_default();
                    let own = match section {
                        "breaker" => policy.breaker.validate(),
                        "limit" => policy.limit.validate(),
                        "waiting_room" => policy.waiting_room.validate(),
                        "priority" => policy.priority.validate(),
                        _ => Ok(()),
                    };
                    prop_assert_eq!(own.map_err(|e| e.to_string()), Err(message));
                }
            }
        }

        #[test]
        fn header_names_are_what_the_http_crate_accepts(header in any_header()) {
            let priority = PriorityPolicy { header: header.clone(), ..PriorityPolicy::default() };
            let room = WaitingRoomPolicy { deadline_header: Some(header.clone()), ..WaitingRoomPolicy::default() };
            prop_assert_eq!(priority.validate().is_ok(), is_header_name(&header), "{:?}", header);
            prop_assert_eq!(room.validate().is_ok(), is_header_name(&header), "{:?}", header);
        }

        #[test]
        fn an_invalid_policy_fails_to_load_with_the_same_error(policy in policy()) {
            // NaN and infinities aside, any policy serializes; loading it
            // gives back the policy or validate's own error.
            if let Ok(text) = toml::to_string(&policy) {
                match (Policy::from_toml(&text), policy.validate()) {
                    (Ok(loaded), Ok(())) => prop_assert_eq!(&loaded, &policy),
                    (Err(loaded), Err(validated)) => prop_assert_eq!(loaded.to_string(), validated.to_string()),
                    (loaded, validated) => prop_assert!(false, "{loaded:?} vs {validated:?} for {text}"),
                }
            }
            // JSON writes NaN and infinities as `null`.
            #[cfg(feature = "json")]
            if let (true, Ok(text)) = (floats_are_finite(&policy), serde_json::to_string(&policy)) {
                match (Policy::from_json(&text), policy.validate()) {
                    (Ok(loaded), Ok(())) => prop_assert_eq!(loaded, policy),
                    (Err(loaded), Err(validated)) => prop_assert_eq!(loaded.to_string(), validated.to_string()),
                    (loaded, validated) => prop_assert!(false, "{loaded:?} vs {validated:?} for {text}"),
                }
            }
        }

        #[test]
        fn any_text_loads_or_errs_without_panicking(text in "\\PC*") {
            check_loaders(&text)?;
        }

        #[test]
        fn tomlish_text_loads_or_errs_without_panicking(
            text in "(\\[(breaker(\\.open_backoff)?|limit|waiting_room|priority)\\]\n|[a-z_]{1,20} = (\"[0-9a-z -]{0,8}\"|-?[0-9.]{1,6}|nan|inf|\\[(\"[a-zA-Z ]{0,4}\", ?){0,3}\\]|\\{ ?(kind|size|buckets|max) = [0-9\"a-z]{0,6} ?\\})\n|(initial|min|max|capacity|reserve) = -?[0-9.]{1,8}\n|(max_wait|codel_target|codel_interval) = \"[0-9]{0,3}(ms|s|m)?\"\n|(header|deadline_header|default) = \"[a-z -]{0,8}\"\n|#[^\n]*\n){0,14}"
        ) {
            check_loaders(&text)?;
        }

        #[test]
        fn mutated_valid_toml_loads_or_errs_without_panicking(
            policy in policy(),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), 0u8..3, any::<char>()), 1..6),
        ) {
            let text = toml::to_string(&policy).unwrap_or_default();
            let mut chars: Vec<char> = text.chars().collect();
            for (at, op, c) in edits {
                let i = if chars.is_empty() { 0 } else { at.index(chars.len()) };
                match op {
                    0 if !chars.is_empty() => { chars.remove(i); }
                    1 => chars.insert(i, c),
                    _ if !chars.is_empty() => chars[i] = c,
                    _ => chars.push(c),
                }
            }
            let text: String = chars.into_iter().collect();
            check_loaders(&text)?;
        }
    }

    /// Every loader either gives a valid policy or an error whose place, if
    /// any, is inside the text or just past its end (YAML puts an
    /// unexpected end of the text on the line after the last).
    fn check_loaders(text: &str) -> Result<(), TestCaseError> {
        // Lines end at `\n`, `\r\n`, or (for YAML) a lone `\r`.
        let lines = text.replace("\r\n", "\n").split(['\n', '\r']).count() + 1;
        let mut results = vec![Policy::from_toml(text)];
        #[cfg(feature = "yaml")]
        results.push(Policy::from_yaml(text));
        #[cfg(feature = "json")]
        results.push(Policy::from_json(text));
        for result in results {
            match result {
                Ok(policy) => prop_assert!(policy.validate().is_ok()),
                Err(err) => {
                    prop_assert!(!err.to_string().is_empty());
                    if let Some((line, column)) = err.line_column() {
                        prop_assert!((1..=lines).contains(&line), "{err} in {lines} lines");
                        prop_assert!(column >= 1, "{}", err);
                    }
                }
            }
        }
        Ok(())
    }
}

#[test]
fn probe_after_is_refused_beside_a_fleet() {
    let fleet = "[fleet]\nurl = \"redis://127.0.0.1:6379\"\n";
    let err = Policy::from_toml(&format!("[breaker]\nprobe_after = 200\n{fleet}")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "breaker.probe_after: 200 must be 0 with a [fleet] section: the fleet's probe lease paces the probes"
    );
    let err = Policy::from_toml(&format!(
        "[routes.\"/slots\".breaker]\nprobe_after = 5\n{fleet}"
    ))
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("routes.\"/slots\".breaker.probe_after: 5 must be 0"),
        "{err}"
    );
    Policy::from_toml(fleet).expect("0, the default, is fine");
    Policy::from_toml("[breaker]\nprobe_after = 200\n").expect("fine without a fleet");
}
