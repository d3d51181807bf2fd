//! The `[routes."…".defer]` section: defaults, every field, and errors that
//! name the field and quote its value.
#![cfg(feature = "toml")]

use std::time::Duration;

use brownout::Policy;
use brownout::policy::{ByteSize, DeferPolicy, DeferStoreKind};

fn defer(text: &str) -> DeferPolicy {
    let policy = Policy::from_toml(text).unwrap_or_else(|e| panic!("{e}"));
    policy.routes["/applications"]
        .defer
        .clone()
        .expect("a defer section")
}

fn error(text: &str) -> String {
    Policy::from_toml(text).unwrap_err().to_string()
}

#[test]
fn an_empty_section_takes_the_defaults() {
    assert_eq!(
        defer("[routes.\"/applications\".defer]\n"),
        DeferPolicy::default()
    );
    let d = DeferPolicy::default();
    assert_eq!(d.store, DeferStoreKind::Embedded);
    assert_eq!(d.when, ["open", "maintenance", "shed"]);
    assert_eq!(d.methods, ["POST", "PUT"]);
    assert_eq!(d.max_age, Duration::from_secs(7 * 86400));
    assert_eq!(d.max_pending, 100_000);
    assert_eq!(d.max_body, ByteSize(65536));
    assert_eq!(d.replay_share, 0.5);
    // No defer section: no deferral.
    let policy =
        Policy::from_toml("[routes.\"/applications\"]\nlimit = { initial = 5 }\n").unwrap();
    assert_eq!(policy.routes["/applications"].defer, None);
}

#[test]
fn every_field_as_ops_write_it() {
    let d = defer(
        r#"
        [routes."/applications".defer]
        store = "redis"
        url = "redis://127.0.0.1:6379"
        when = ["open", "maintenance", "shed", "queue_timeout"]
        methods = ["POST"]
        max_age = "2d"
        max_pending = 500
        max_body = "1MiB"
        max_answer = 4096
        keep_headers = ["content-type", "x-applicant"]
        status_path = "/applications/status"
        replay_share = 0.25
        claim_after = "1m"
        keep_finished = "3d"
        "#,
    );
    assert_eq!(d.keep_finished, Duration::from_secs(3 * 86400));
    assert_eq!(
        DeferPolicy::default().keep_finished,
        Duration::from_secs(7 * 86400)
    );
    assert_eq!(d.store, DeferStoreKind::Redis);
    assert_eq!(d.max_age, Duration::from_secs(2 * 86400));
    assert_eq!(d.max_body, ByteSize(1 << 20));
    assert_eq!(d.max_answer, ByteSize(4096));
    assert_eq!(d.status_path, "/applications/status");
    assert_eq!(d.claim_after, Duration::from_secs(60));
    // Written back and read again, it is the same.
    let policy = Policy::from_toml(&format!(
        "[routes.\"/applications\".defer]\n{}",
        toml::to_string(&d).unwrap()
    ))
    .unwrap();
    assert_eq!(policy.routes["/applications"].defer.as_ref(), Some(&d));
}

#[test]
fn bad_values_name_the_field_and_the_value() {
    let at = "[routes.\"/applications\".defer]\n";
    let cases = [
        (
            "when = [\"deadline\"]",
            "routes.\"/applications\".defer.when: \"deadline\" is not a reason that can defer a request; use open, maintenance, shed, queue_full or queue_timeout",
        ),
        (
            "when = []",
            "routes.\"/applications\".defer.when: [] is empty: name at least one reason, or remove the defer section",
        ),
        (
            "methods = [\"post\"]",
            "routes.\"/applications\".defer.methods: \"post\" is not an HTTP method in upper case (POST, PUT, PATCH, DELETE, GET)",
        ),
        (
            "max_age = \"0s\"",
            "routes.\"/applications\".defer.max_age: 0s must be more than zero",
        ),
        (
            "keep_finished = \"0s\"",
            "routes.\"/applications\".defer.keep_finished: 0s must be more than zero",
        ),
        (
            "max_pending = 0",
            "routes.\"/applications\".defer.max_pending: 0 must be more than zero",
        ),
        (
            "max_body = \"32MiB\"",
            "routes.\"/applications\".defer.max_body: 32MiB is more than 16MiB",
        ),
        (
            "replay_share = 1.5",
            "routes.\"/applications\".defer.replay_share: 1.5 is not in (0, 1]",
        ),
        (
            "status_path = \"deferred\"",
            "routes.\"/applications\".defer.status_path: \"deferred\" must start with \"/\" and not end with one, e.g. \"/deferred\"",
        ),
        (
            "store = \"redis\"\nurl = \"http://x\"",
            "routes.\"/applications\".defer.url: \"http://x\" is not a Redis URL (redis://host:port, rediss://, unix://)",
        ),
        (
            "keep_headers = [\"bad header\"]",
            "routes.\"/applications\".defer.keep_headers: \"bad header\" is not a valid HTTP header name: it contains ' '; use letters, digits and !#$%&'*+-.^_`|~",
        ),
    ];
    for (line, expected) in cases {
        assert_eq!(error(&format!("{at}{line}\n")), expected, "{line}");
    }
    let err = error(&format!("{at}max_body = \"64 parsecs\"\n"));
    assert!(err.starts_with("routes.\"/applications\".defer.max_body: invalid size \"64 parsecs\": unknown unit \"parsecs\""), "{err}");
    let err = error(&format!("{at}max_ages = \"1d\"\n"));
    assert!(
        err.starts_with("routes.\"/applications\".defer.max_ages: unknown field `max_ages`"),
        "{err}"
    );
}

#[test]
fn the_policy_reference_shows_the_defaults() {
    let doc = include_str!("../docs/policy.md");
    let start = doc
        .find("[routes.\"/applications\".defer]")
        .expect("docs/policy.md shows the defer section");
    let end = start + doc[start..].find("```").unwrap();
    assert_eq!(defer(&doc[start..end]), DeferPolicy::default());
}
