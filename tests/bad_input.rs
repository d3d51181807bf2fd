//! Bad input from outside, generated: policy files in TOML, YAML and JSON,
//! and request headers (the priority header, `grpc-timeout`, the HTTP
//! deadline header, an idempotency key and any other header through the
//! HTTP stack).
//!
//! - Arbitrary bytes into every loader and parser: no panic; a refused
//!   policy has a message, a syntax error says where, and an error about a
//!   field names it.
//! - Structure-aware policies: a valid document in each format with one
//!   field set to a known-bad value (out of range, NaN, wrong type, unknown
//!   variant, bad duration, unknown field, bad header name, a route key
//!   without `/`): the error names exactly that field. The same document
//!   without the bad value loads.
//! - Valid documents cut and spliced at random: no panic, a clear error.
//! - Header values: `grpc-timeout` parses exactly what the spec allows,
//!   the deadline header parses milliseconds or a duration and nothing
//!   else, the priority header gets its class or the default; and any
//!   headers through `BrownoutLayer::from_policy(&p).http()` get the back
//!   end's answer, or a 503 problem document exactly when their deadline is
//!   already over.
//!
//! The cargo-fuzz targets in `fuzz/` run the same checks coverage-guided.

#![cfg(all(feature = "toml", feature = "yaml", feature = "json", feature = "http"))]

use std::convert::Infallible;
use std::time::Duration;

use brownout::deadline::{
    DeadlineOf, HeaderDeadline, encode_grpc_timeout, parse_grpc_timeout, parse_http_deadline,
};
use brownout::priority::{Classes, HeaderPriority, PriorityOf};
use brownout::{BrownoutLayer, Policy, PolicyError};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use tower::{Layer, ServiceExt};

// ---- policies: what every loader must do with any text ----------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Toml,
    Yaml,
    Json,
}

const FORMATS: [Format; 3] = [Format::Toml, Format::Yaml, Format::Json];

fn load(format: Format, text: &str) -> Result<Policy, PolicyError> {
    match format {
        Format::Toml => Policy::from_toml(text),
        Format::Yaml => Policy::from_yaml(text),
        Format::Json => Policy::from_json(text),
    }
}

/// A refused policy's error is clear: a message, the field it names in
/// the message, an invalid value always with its field, and a syntax error
/// (no field) in TOML or JSON with its line and column.
fn assert_clear(format: Format, text: &str, err: &PolicyError) {
    let message = err.to_string();
    assert!(
        !message.trim().is_empty(),
        "no message for {text:?}: {err:?}"
    );
    if let Some(field) = err.field() {
        assert!(
            message.starts_with(field),
            "{message:?} does not start with {field}"
        );
    }
    match err {
        PolicyError::Invalid { field, problem, .. } => {
            assert!(!field.is_empty() && !problem.is_empty(), "{message}");
        }
        PolicyError::Parse { field, .. } if field.is_empty() && format != Format::Yaml => {
            assert!(
                err.line_column().is_some(),
                "a {format:?} syntax error without a place: {message} in {text:?}"
            );
        }
        _ => {}
    }
}

/// A loaded policy validates, every route of it too, and the stack takes it.
fn assert_usable(policy: &Policy) {
    policy.validate().expect("a loaded policy validates");
    for key in policy.routes.keys() {
        policy.route(key).validate().expect("its routes validate");
    }
    let _ = BrownoutLayer::from_policy(policy).http();
}

fn check_text(format: Format, text: &str) {
    match load(format, text) {
        Ok(policy) => assert_usable(&policy),
        Err(err) => assert_clear(format, text, &err),
    }
}

// ---- policies: documents, valid and mutated ---------------------------------

/// NaN in a document: TOML says `nan`, YAML `.nan`, JSON cannot say it.
const NAN: &str = "__NAN__";

/// A document as TOML, YAML or JSON text; `None` if the format cannot
/// express it (NaN in JSON).
fn render(format: Format, doc: &Value) -> Option<String> {
    let quoted = format!("\"{NAN}\"");
    Some(match format {
        Format::Toml => toml::to_string(doc)
            .expect("a document renders as TOML")
            .replace(&quoted, "nan"),
        Format::Yaml => serde_yaml_ng::to_string(doc)
            .expect("a document renders as YAML")
            .replace(NAN, ".nan"),
        Format::Json => {
            let text = serde_json::to_string_pretty(doc).expect("a document renders as JSON");
            if text.contains(NAN) {
                return None;
            }
            text
        }
    })
}

fn duration(lo: u64, hi: u64) -> impl Strategy<Value = Value> {
    (lo..=hi).prop_map(|s| json!(format!("{s}s")))
}

/// One valid value for each field a background document may set; the
/// values fit with each other whatever subset is written.
fn background() -> impl Strategy<Value = Value> {
    let breaker = (
        proptest::option::of((0.01f64..=1.0).prop_map(|r| json!(r))),
        proptest::option::of((0.01f64..=1.0).prop_map(|r| json!(r))),
        proptest::option::of(duration(1, 30)),
        proptest::option::of((1u32..=20).prop_map(|n| json!(n))),
        proptest::option::of(duration(1, 60)),
        proptest::option::of((1u32..=10).prop_map(|n| json!(n))),
        proptest::option::of(
            prop_oneof![
                Just("enforce"),
                Just("shadow"),
                Just("forced_open"),
                Just("forced_closed")
            ]
            .prop_map(|m| json!(m)),
        ),
        proptest::option::of(prop_oneof![
            (20u32..=500).prop_map(|size| json!({"kind": "count", "size": size})),
            (10u64..=60, 1u32..=20).prop_map(
                |(s, buckets)| json!({"kind": "time", "size": format!("{s}s"), "buckets": buckets})
            ),
        ]),
        proptest::option::of((1.0f64..=4.0, 0.0f64..0.9).prop_map(|(multiplier, jitter)| {
            json!({"multiplier": multiplier, "max": "10m", "jitter": jitter})
        })),
    )
        .prop_map(|(fr, sr, scd, mc, of, hop, mode, window, backoff)| {
            section(&[
                ("failure_rate", fr),
                ("slow_call_rate", sr),
                ("slow_call_duration", scd),
                ("minimum_calls", mc),
                ("open_for", of),
                ("half_open_probes", hop),
                ("mode", mode),
                ("window", window),
                ("open_backoff", backoff),
            ])
        });
    let limit = (
        proptest::option::of(
            prop_oneof![
                Just("fixed"),
                Just("aimd"),
                Just("vegas"),
                Just("gradient"),
                Just("capacity")
            ]
            .prop_map(|a| json!(a)),
        ),
        proptest::option::of((1u32..=5, 0u32..=45, 0u32..=950)),
        proptest::option::of((0.0f64..0.99).prop_map(|r| json!(r))),
    )
        .prop_map(|(algorithm, bounds, reserve)| {
            let (min, initial, max) = match bounds {
                Some((min, up, more)) => (
                    Some(json!(min)),
                    Some(json!(min + up)),
                    Some(json!(min + up + 50 + more)),
                ),
                None => (None, None, None),
            };
            section(&[
                ("algorithm", algorithm),
                ("min", min),
                ("initial", initial),
                ("max", max),
                ("reserve", reserve),
            ])
        });
    let room = (
        proptest::option::of((0u32..=5000).prop_map(|c| json!(c))),
        proptest::option::of(duration(1, 30)),
        proptest::option::of(
            prop_oneof![Just("priority_fifo"), Just("adaptive_lifo")].prop_map(|o| json!(o)),
        ),
        proptest::option::of(Just(json!("x-request-timeout"))),
    )
        .prop_map(|(capacity, max_wait, order, header)| {
            section(&[
                ("capacity", capacity),
                ("max_wait", max_wait),
                ("order", order),
                ("deadline_header", header),
            ])
        });
    let priority = proptest::option::of(prop_oneof![Just("urgent"), Just("normal"), Just("bulk")])
        .prop_map(|default| {
            section(&[
                ("header", Some(json!("x-priority"))),
                ("classes", Some(json!(["urgent", "normal", "bulk"]))),
                ("default", default.map(|d| json!(d))),
            ])
        });
    let route = proptest::option::of((0.01f64..=1.0, 1u32..=100));
    (breaker, limit, room, priority, route).prop_map(|(b, l, r, p, route)| {
        let mut doc = Map::new();
        for (name, section) in [("breaker", b), ("limit", l), ("waiting_room", r), ("priority", p)]
        {
            if !section.as_object().is_some_and(Map::is_empty) {
                doc.insert(name.to_owned(), section);
            }
        }
        if let Some((rate, capacity)) = route {
            doc.insert(
                "routes".to_owned(),
                json!({"/slots": {"breaker": {"failure_rate": rate}, "waiting_room": {"capacity": capacity}}}),
            );
        }
        Value::Object(doc)
    })
}

fn section(fields: &[(&str, Option<Value>)]) -> Value {
    Value::Object(
        fields
            .iter()
            .filter_map(|(name, value)| Some(((*name).to_owned(), value.clone()?)))
            .collect(),
    )
}

/// A known-bad value for one field, and the field its error must name.
#[derive(Debug, Clone)]
struct Bad {
    /// Where to write it in the document.
    at: Vec<&'static str>,
    value: Value,
    /// The field the error names.
    field: &'static str,
}

fn bad(at: &[&'static str], value: Value, field: &'static str) -> Bad {
    Bad {
        at: at.to_vec(),
        value,
        field,
    }
}

/// Values that are bad whatever the rest of the document says.
fn bad_values() -> Vec<Bad> {
    let nan = json!(NAN);
    let fr = "breaker.failure_rate";
    let mut all = vec![
        // Out of range, NaN, wrong type.
        bad(&["breaker", "failure_rate"], json!(1.5), fr),
        bad(&["breaker", "failure_rate"], json!(0.0), fr),
        bad(&["breaker", "failure_rate"], json!(-0.5), fr),
        bad(&["breaker", "failure_rate"], nan.clone(), fr),
        bad(&["breaker", "failure_rate"], json!("half"), fr),
        bad(&["breaker", "failure_rate"], json!(true), fr),
        bad(&["breaker", "failure_rate"], json!([0.5]), fr),
        bad(
            &["breaker", "slow_call_rate"],
            json!(2),
            "breaker.slow_call_rate",
        ),
        bad(
            &["breaker", "slow_call_rate"],
            nan.clone(),
            "breaker.slow_call_rate",
        ),
        // Durations: zero, unknown unit, not a duration, a bare number.
        bad(
            &["breaker", "slow_call_duration"],
            json!("0s"),
            "breaker.slow_call_duration",
        ),
        bad(
            &["breaker", "open_for"],
            json!("5 parsecs"),
            "breaker.open_for",
        ),
        bad(&["breaker", "open_for"], json!("soon"), "breaker.open_for"),
        bad(&["breaker", "open_for"], json!(""), "breaker.open_for"),
        bad(&["breaker", "open_for"], json!("-1s"), "breaker.open_for"),
        bad(&["breaker", "open_for"], json!(10), "breaker.open_for"),
        bad(&["breaker", "open_for"], json!("0ms"), "breaker.open_for"),
        // Integers: zero, negative, too big for u32, a string, a fraction.
        bad(
            &["breaker", "minimum_calls"],
            json!(0),
            "breaker.minimum_calls",
        ),
        bad(
            &["breaker", "minimum_calls"],
            json!(-1),
            "breaker.minimum_calls",
        ),
        bad(
            &["breaker", "minimum_calls"],
            json!("twenty"),
            "breaker.minimum_calls",
        ),
        bad(
            &["breaker", "minimum_calls"],
            json!(1.5),
            "breaker.minimum_calls",
        ),
        bad(
            &["breaker", "half_open_probes"],
            json!(0),
            "breaker.half_open_probes",
        ),
        bad(
            &["breaker", "half_open_probes"],
            json!(1024),
            "breaker.half_open_probes",
        ),
        bad(
            &["breaker", "half_open_probes"],
            json!(99_999_999_999u64),
            "breaker.half_open_probes",
        ),
        bad(
            &["breaker", "half_open_probes"],
            json!("3"),
            "breaker.half_open_probes",
        ),
        // Enums.
        bad(&["breaker", "mode"], json!("sometimes"), "breaker.mode"),
        bad(&["breaker", "mode"], json!(3), "breaker.mode"),
        bad(&["breaker", "mode"], json!("Enforce"), "breaker.mode"),
        // The window.
        bad(&["breaker", "window"], json!("big"), "breaker.window"),
        bad(
            &["breaker", "window"],
            json!({"kind": "count", "size": 0}),
            "breaker.window.size",
        ),
        bad(
            &["breaker", "window"],
            json!({"kind": "time", "size": "10s", "buckets": 0}),
            "breaker.window.buckets",
        ),
        bad(
            &["breaker", "window"],
            json!({"kind": "time", "size": "10ms", "buckets": 100}),
            "breaker.window.buckets",
        ),
        // The backoff.
        bad(
            &["breaker", "open_backoff", "multiplier"],
            json!(0.5),
            "breaker.open_backoff.multiplier",
        ),
        bad(
            &["breaker", "open_backoff", "multiplier"],
            nan.clone(),
            "breaker.open_backoff.multiplier",
        ),
        bad(
            &["breaker", "open_backoff", "jitter"],
            json!(1.5),
            "breaker.open_backoff.jitter",
        ),
        bad(
            &["breaker", "open_backoff", "jitter"],
            json!(-0.1),
            "breaker.open_backoff.jitter",
        ),
        bad(
            &["breaker", "open_backoff", "jitter"],
            nan.clone(),
            "breaker.open_backoff.jitter",
        ),
        // Unknown fields, at every depth.
        bad(
            &["breaker", "failure_ratio"],
            json!(0.5),
            "breaker.failure_ratio",
        ),
        bad(
            &["breaker", "open_backoff", "maximum"],
            json!("1m"),
            "breaker.open_backoff.maximum",
        ),
        bad(&["breakr"], json!({}), "breakr"),
        // The limit.
        bad(&["limit", "algorithm"], json!("magic"), "limit.algorithm"),
        bad(&["limit", "min"], json!(0), "limit.min"),
        bad(&["limit", "max"], json!(2_000_000), "limit.max"),
        bad(&["limit", "initial"], json!("x"), "limit.initial"),
        bad(&["limit", "initial"], json!(-5), "limit.initial"),
        bad(&["limit", "reserve"], json!(1.0), "limit.reserve"),
        bad(&["limit", "reserve"], json!(-0.1), "limit.reserve"),
        bad(&["limit", "reserve"], nan.clone(), "limit.reserve"),
        bad(&["limit", "maximum"], json!(5), "limit.maximum"),
        // The waiting room.
        bad(
            &["waiting_room", "capacity"],
            json!(-1),
            "waiting_room.capacity",
        ),
        bad(
            &["waiting_room", "capacity"],
            json!(1_000_001),
            "waiting_room.capacity",
        ),
        bad(
            &["waiting_room", "max_wait"],
            json!("forever"),
            "waiting_room.max_wait",
        ),
        bad(
            &["waiting_room", "codel_interval"],
            json!("0s"),
            "waiting_room.codel_interval",
        ),
        bad(
            &["waiting_room", "codel_target"],
            json!("0s"),
            "waiting_room.codel_target",
        ),
        bad(
            &["waiting_room", "order"],
            json!("random"),
            "waiting_room.order",
        ),
        bad(
            &["waiting_room", "deadline_header"],
            json!("x deadline"),
            "waiting_room.deadline_header",
        ),
        bad(
            &["waiting_room", "deadline_header"],
            json!(""),
            "waiting_room.deadline_header",
        ),
        bad(
            &["waiting_room", "deadline_header"],
            json!("x-é"),
            "waiting_room.deadline_header",
        ),
        // Priorities.
        bad(
            &["priority", "header"],
            json!("x priority"),
            "priority.header",
        ),
        bad(
            &["priority", "header"],
            json!("x:priority"),
            "priority.header",
        ),
        bad(&["priority", "classes"], json!([]), "priority.classes"),
        bad(
            &["priority", "classes"],
            json!("urgent"),
            "priority.classes",
        ),
        bad(&["priority", "default"], json!("vip"), "priority.default"),
        // Routes.
        bad(&["routes", "payments"], json!({}), "routes"),
        bad(
            &["routes", "/slots", "breaker", "failure_rate"],
            json!(1.5),
            "routes.\"/slots\".breaker.failure_rate",
        ),
        bad(
            &["routes", "/slots", "limit", "algorithm"],
            json!("magic"),
            "routes.\"/slots\".limit.algorithm",
        ),
        bad(
            &["routes", "/slots", "priority"],
            json!({}),
            "routes.\"/slots\".priority",
        ),
    ];
    // Class names: empty, with a space, repeated; the field is the entry.
    for (classes, field) in [
        (json!(["urgent", ""]), "priority.classes[1]"),
        (json!(["urgent", "bad name"]), "priority.classes[1]"),
        (json!(["urgent", "normal", "URGENT"]), "priority.classes[2]"),
    ] {
        all.push(bad(&["priority", "classes"], classes, field));
    }
    all
}

/// Writes `value` at `at` in `doc`, making sections on the way.
fn set(doc: &mut Value, at: &[&str], value: Value) {
    let (last, path) = at.split_last().expect("a path");
    let mut here = doc;
    for key in path {
        let map = here.as_object_mut().expect("sections are maps");
        here = map
            .entry((*key).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !here.is_object() {
            *here = Value::Object(Map::new());
        }
    }
    here.as_object_mut()
        .expect("sections are maps")
        .insert((*last).to_owned(), value);
}

fn one_bad_value() -> impl Strategy<Value = Bad> {
    proptest::sample::select(bad_values())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes (as text, the loaders take text) into every loader.
    #[test]
    fn any_bytes_get_a_policy_or_a_clear_error(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        for format in FORMATS {
            check_text(format, &text);
        }
    }

    /// Arbitrary Unicode text, which reaches deeper into the parsers.
    #[test]
    fn any_text_gets_a_policy_or_a_clear_error(text in "\\PC{0,300}") {
        for format in FORMATS {
            check_text(format, &text);
        }
    }

    /// A valid document loads; with one known-bad value in it, the error
    /// names that field, in every format.
    #[test]
    fn one_bad_field_is_named(doc in background(), bad in one_bad_value()) {
        for format in FORMATS {
            let text = render(format, &doc).expect("background documents have no NaN");
            if let Err(err) = load(format, &text) {
                panic!("a valid {format:?} document is refused: {err}\n{text}");
            }
            let mut mutated = doc.clone();
            set(&mut mutated, &bad.at, bad.value.clone());
            let Some(text) = render(format, &mutated) else { continue };
            match load(format, &text) {
                Ok(_) => panic!("{format:?} accepted {} = {}\n{text}", bad.field, bad.value),
                Err(err) => {
                    assert_clear(format, &text, &err);
                    prop_assert_eq!(
                        err.field(),
                        Some(bad.field),
                        "{:?} for {} = {}: {}\n{}", format, bad.field, bad.value, err, text
                    );
                }
            }
        }
    }

    /// Valid documents cut, spliced and sprinkled with syntax: no panic,
    /// and a policy that loads or a clear error.
    #[test]
    fn mangled_documents_get_a_policy_or_a_clear_error(
        doc in background(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..8, "[\\[\\]{}\"'=:,#.\\- \n\t0-9a-z]{0,4}"), 1..6),
    ) {
        for format in FORMATS {
            let mut text: Vec<char> = render(format, &doc).expect("no NaN").chars().collect();
            for (at, cut, insert) in &edits {
                let start = at.index(text.len() + 1);
                let end = (start + cut).min(text.len());
                text.splice(start..end, insert.chars());
            }
            let text: String = text.into_iter().collect();
            check_text(format, &text);
        }
    }
}

// ---- headers ------------------------------------------------------------------

/// `grpc-timeout` as the gRPC over HTTP/2 spec says: 1 to 8 ASCII digits
/// and a unit.
fn grpc_timeout_oracle(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if !(1..=8).contains(&digits.len()) || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Header values: arbitrary bytes, and near-misses of valid ones.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..24),
        "[+\\- ]?[0-9]{0,10}[HMSmunhsx ]?".prop_map(String::into_bytes),
        "[0-9]{1,6} ?(ms|s|m|h|us|ns|min|sec|parsecs|)( [0-9]{1,3}ms)?"
            .prop_map(String::into_bytes),
        "[ \t]?(urgent|normal|bulk|URGENT|Bulk|vip|)[ \t]?".prop_map(String::into_bytes),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn grpc_timeouts_parse_exactly_what_the_spec_allows(value in header_bytes()) {
        let parsed = parse_grpc_timeout(&value);
        prop_assert_eq!(parsed, grpc_timeout_oracle(&value));
        if let Some(timeout) = parsed {
            let again = parse_grpc_timeout(encode_grpc_timeout(timeout).as_bytes());
            prop_assert!(again >= Some(timeout));
        }
    }

    #[test]
    fn deadline_headers_take_milliseconds_or_a_duration(value in header_bytes()) {
        let parsed = parse_http_deadline(&value);
        let text = std::str::from_utf8(&value).map(str::trim);
        if let Ok(Ok(millis)) = text.map(str::parse::<u64>) {
            prop_assert_eq!(parsed, Some(Duration::from_millis(millis)));
        }
        if let Ok(text) = text {
            if let Ok(duration) = humantime::parse_duration(text) {
                prop_assert!(parsed.is_some());
                if text.parse::<u64>().is_err() {
                    prop_assert_eq!(parsed, Some(duration));
                }
            }
        } else {
            prop_assert_eq!(parsed, None, "not UTF-8");
        }
    }

    #[test]
    fn priority_headers_get_their_class_or_the_default(value in header_bytes()) {
        let classes = Classes::default();
        let reader = HeaderPriority::new("x-priority");
        let Ok(header) = HeaderValue::from_bytes(&value) else { return Ok(()) };
        let req = Request::builder().header("x-priority", header).body(()).unwrap();
        let priority = reader.priority_of(&req, &classes);
        let named = ["urgent", "normal", "bulk"]
            .iter()
            .position(|name| value.trim_ascii().eq_ignore_ascii_case(name.as_bytes()));
        let expected = named.map_or(1, |rank| rank as u8);
        prop_assert_eq!(priority.rank(), expected);
    }
}

/// A request through the HTTP stack: the headers brownout reads, an
/// idempotency key it does not, and any others.
#[derive(Debug, Clone)]
struct HttpCall {
    path: String,
    priority: Vec<u8>,
    grpc_timeout: Option<Vec<u8>>,
    deadline: Option<Vec<u8>>,
    idempotency_key: Vec<u8>,
    others: Vec<(Vec<u8>, Vec<u8>)>,
}

fn http_call() -> impl Strategy<Value = HttpCall> {
    (
        "/[a-z/._%-]{0,12}",
        header_bytes(),
        proptest::option::of(header_bytes()),
        proptest::option::of(header_bytes()),
        proptest::collection::vec(any::<u8>(), 0..40),
        proptest::collection::vec(
            (
                prop_oneof![
                    "[a-z-]{1,12}".prop_map(String::into_bytes),
                    proptest::collection::vec(any::<u8>(), 0..12)
                ],
                proptest::collection::vec(any::<u8>(), 0..32),
            ),
            0..6,
        ),
    )
        .prop_map(
            |(path, priority, grpc_timeout, deadline, idempotency_key, others)| HttpCall {
                path,
                priority,
                grpc_timeout,
                deadline,
                idempotency_key,
                others,
            },
        )
}

/// The request `call` describes; headers `http` refuses are left out (they
/// never reach a service).
fn http_request(call: &HttpCall) -> Request<String> {
    let mut builder = Request::builder().uri(call.path.as_str());
    let mut add = |name: &str, value: &[u8]| {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            builder = std::mem::take(&mut builder).header(name, value);
        }
    };
    add("x-priority", &call.priority);
    if let Some(timeout) = &call.grpc_timeout {
        add("grpc-timeout", timeout);
    }
    if let Some(deadline) = &call.deadline {
        add("x-request-timeout", deadline);
    }
    add("idempotency-key", &call.idempotency_key);
    let mut request = builder.body(String::new()).expect("valid parts");
    for (name, value) in &call.others {
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            request.headers_mut().append(name, value);
        }
    }
    request
}

#[test]
fn any_headers_through_the_http_stack_get_the_back_ends_answer_or_a_clear_503() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let policy = Policy::from_toml(
        r#"
        [waiting_room]
        deadline_header = "x-request-timeout"
        [priority]
        header = "x-priority"
        "#,
    )
    .unwrap();
    let layer = runtime.block_on(async { BrownoutLayer::from_policy(&policy).http() });
    let reader = HeaderDeadline::new(Some("x-request-timeout"));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(1_000));
    runner
        .run(&http_call(), |call| {
            let request = http_request(&call);
            let deadline = reader.deadline_of(&request);
            let route = request.uri().path().to_owned();
            let service = layer.layer(tower::service_fn(|_: Request<String>| async {
                Ok::<_, Infallible>(Response::new(String::from("slots")))
            }));
            let response = runtime.block_on(service.oneshot(request)).unwrap();
            if deadline == Some(Duration::ZERO) {
                // Over before it came in: answered at once.
                prop_assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
                prop_assert_eq!(
                    &response.headers()["content-type"],
                    "application/problem+json"
                );
            } else {
                prop_assert_eq!(response.status(), StatusCode::OK);
                prop_assert_eq!(response.body(), "slots");
            }
            prop_assert_eq!(layer.waiting(&route), 0);
            Ok(())
        })
        .unwrap();
}
