//! Header values from outside: the priority header (`HeaderPriority`),
//! `grpc-timeout` (`parse_grpc_timeout`, and its encoding back), and the
//! HTTP deadline header (`parse_http_deadline`, `HeaderDeadline`). None may
//! panic; a value either parses or is ignored, and what the stack writes
//! back reads the same or later.
#![no_main]

use std::time::Duration;

use brownout::deadline::{
    DeadlineOf, HeaderDeadline, encode_grpc_timeout, parse_grpc_timeout, parse_http_deadline,
};
use brownout::priority::{Classes, HeaderPriority, PriorityOf};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let classes = Classes::default();
    if let Some(timeout) = parse_grpc_timeout(data) {
        // At most 8 digits and a unit.
        assert!((2..=9).contains(&data.len()), "{data:?}");
        let encoded = encode_grpc_timeout(timeout);
        let again = parse_grpc_timeout(encoded.as_bytes()).expect("an encoded timeout parses");
        assert!(again >= timeout, "{timeout:?} encoded as {encoded}");
    }
    let http_deadline = parse_http_deadline(data);
    if let Some(priority) = classes.parse(data) {
        assert!(usize::from(priority.rank()) < classes.len());
    }

    // As the values of a request's headers (a value `http` refuses never
    // reaches a service).
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let reader = HeaderDeadline::new(Some("x-request-timeout"));
    let request = |names: &[&str]| {
        let mut builder = http::Request::builder();
        for name in names {
            builder = builder.header(*name, value.clone());
        }
        builder.body(()).expect("valid parts")
    };
    let priority =
        HeaderPriority::new("x-priority").priority_of(&request(&["x-priority"]), &classes);
    assert!(usize::from(priority.rank()) < classes.len());
    assert_eq!(
        priority,
        classes.parse(data).unwrap_or(classes.default_priority())
    );

    // grpc-timeout wins over the deadline header.
    let both = request(&["grpc-timeout", "x-request-timeout"]);
    assert_eq!(reader.deadline_of(&both), parse_grpc_timeout(data));
    let mut plain = request(&["x-request-timeout"]);
    assert_eq!(reader.deadline_of(&plain), http_deadline);

    // What is left after a wait is written back in whole milliseconds,
    // rounded up (saturating), and reads back at least as long.
    if let Some(left) = http_deadline {
        let left = left / 2;
        reader.propagate(&mut plain, left);
        let back = reader
            .deadline_of(&plain)
            .expect("a propagated deadline parses");
        assert!(
            back >= left.min(Duration::from_millis(u64::MAX)),
            "{left:?} became {back:?}"
        );
    }
    let mut grpc = request(&["grpc-timeout"]);
    if let Some(left) = parse_grpc_timeout(data) {
        reader.propagate(&mut grpc, left / 3);
        let back = reader
            .deadline_of(&grpc)
            .expect("a propagated grpc-timeout parses");
        assert!(back >= left / 3);
    }
});
