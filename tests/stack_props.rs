//! Conservation through the whole composed HTTP stack, in paused tokio
//! time: random request sequences through `BrownoutLayer::from_policy(&p)
//! .http()` on an axum `Router`, over a handler that answers 200, 404 or
//! 500 after a random virtual delay, with clients that give up (their
//! response future is dropped) at random times.
//!
//! Every request the client kept waiting for gets exactly one answer, in
//! bounded virtual time: the handler's own (for that very request), or a
//! 503 problem document. Served + fallback == not cancelled; brownout's
//! counters agree with what clients saw (`in == served + rejected +
//! cancelled`); and afterwards nobody waits, no handler runs, and every
//! route's full limit is free again.
#![cfg(feature = "http")]

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use brownout::{BreakerState, BrownoutLayer, Policy};
use http_body_util::BodyExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestRunner};
use tokio::time::Instant;
use tower::ServiceExt;

const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---- the random scenario ---------------------------------------------------

#[derive(Debug, Clone)]
struct Setup {
    algorithm: &'static str,
    limit: u32,
    capacity: u32,
    max_wait: u64,
    order: &'static str,
    probes: u32,
    open_for: u64,
    /// `throttle` or `open`.
    trip: &'static str,
}

impl Setup {
    fn policy(&self) -> Policy {
        let toml = format!(
            r#"
            [breaker]
            window = {{ kind = "count", size = 10 }}
            minimum_calls = 5
            failure_rate = 0.5
            trip = "{trip}"
            open_for = "{open_for}ms"
            open_backoff = {{ multiplier = 2.0, max = "2s", jitter = 0.1 }}
            half_open_probes = {probes}

            [limit]
            algorithm = "{algorithm}"
            initial = {limit}
            min = 1
            max = 8

            [waiting_room]
            capacity = {capacity}
            max_wait = "{max_wait}ms"
            order = "{order}"
            deadline_header = "x-deadline-ms"
            "#,
            open_for = self.open_for,
            probes = self.probes,
            trip = self.trip,
            algorithm = self.algorithm,
            limit = self.limit,
            capacity = self.capacity,
            max_wait = self.max_wait,
            order = self.order,
        );
        Policy::from_toml(&toml).expect("the generated policy loads")
    }
}

#[derive(Debug, Clone)]
enum Deadline {
    None,
    Millis(u64),
    Malformed(&'static str),
}

/// One request: when it arrives (after the previous one), where it goes,
/// its class and deadline headers, what the handler does with it, and when
/// its client gives up, if it does.
#[derive(Debug, Clone)]
struct Op {
    gap: u64,
    path: &'static str,
    class: Option<&'static str>,
    deadline: Deadline,
    status: u16,
    hold: u64,
    cancel: Option<u64>,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop::sample::select(vec!["fixed", "fixed", "aimd", "gradient"]),
        1u32..=3,
        0u32..=4,
        20u64..=400,
        prop::sample::select(vec!["priority_fifo", "adaptive_lifo"]),
        (
            1u32..=3,
            50u64..=500,
            prop::sample::select(vec!["throttle", "open"]),
        ),
    )
        .prop_map(
            |(algorithm, limit, capacity, max_wait, order, (probes, open_for, trip))| Setup {
                algorithm,
                limit,
                capacity,
                max_wait,
                order,
                probes,
                open_for,
                trip,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    let deadline = prop_oneof![
        3 => Just(Deadline::None),
        2 => (0u64..=300).prop_map(Deadline::Millis),
        1 => prop::sample::select(vec!["soon", "-5", "", "2,5s", "1e3"]).prop_map(Deadline::Malformed),
    ];
    (
        0u64..=60,
        prop::sample::select(vec!["/a", "/a", "/b/1", "/b/2", "/b/3"]),
        prop::sample::select(vec![
            Some("urgent"),
            Some("normal"),
            Some("bulk"),
            Some("vip"),
            None,
        ]),
        deadline,
        prop::sample::select(vec![200u16, 200, 404, 500]),
        0u64..=150,
        prop::option::weighted(0.3, 0u64..=300),
    )
        .prop_map(|(gap, path, class, deadline, status, hold, cancel)| Op {
            gap,
            path,
            class,
            deadline,
            status,
            hold,
            cancel,
        })
}

fn scenario() -> impl Strategy<Value = (Setup, Vec<Op>)> {
    (setup(), prop::collection::vec(op(), 1..64))
}

/// The route brownout files a path under: its axum route template when
/// the `axum` feature reads `MatchedPath`, else the path itself.
fn route_of(path: &str) -> &str {
    if cfg!(feature = "axum") && path.starts_with("/b/") {
        "/b/{id}"
    } else {
        path
    }
}

// ---- the handler -----------------------------------------------------------

/// What the handler saw: calls started, answered, and dropped unfinished.
#[derive(Debug, Default)]
struct Calls {
    started: AtomicU32,
    answered: AtomicU32,
    dropped: AtomicU32,
    ids: std::sync::Mutex<BTreeSet<usize>>,
}

impl Calls {
    fn running(&self) -> u32 {
        self.started.load(Ordering::SeqCst)
            - self.answered.load(Ordering::SeqCst)
            - self.dropped.load(Ordering::SeqCst)
    }
}

/// Counts a call dropped before it answered.
struct Running(Arc<Calls>, bool);

impl Drop for Running {
    fn drop(&mut self) {
        if !self.1 {
            self.0.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> u64 {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0)
}

async fn handler(calls: Arc<Calls>, headers: HeaderMap) -> Response {
    calls.started.fetch_add(1, Ordering::SeqCst);
    let id = header_u64(&headers, "x-id") as usize;
    calls.ids.lock().unwrap().insert(id);
    let mut running = Running(calls.clone(), false);
    tokio::time::sleep(ms(header_u64(&headers, "x-hold-ms"))).await;
    let status = StatusCode::from_u16(header_u64(&headers, "x-status") as u16).unwrap();
    let id = headers["x-id"].clone();
    running.1 = true;
    calls.answered.fetch_add(1, Ordering::SeqCst);
    (status, [("x-handled-id", id)], "from the handler").into_response()
}

// ---- one run ---------------------------------------------------------------

/// How a request ended, as its client saw it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    /// The handler's answer with this status.
    Served(u16),
    /// A brownout problem document with this reason.
    Fallback(String),
    /// The client gave up first.
    Cancelled,
}

fn request(id: usize, op: &Op) -> Request {
    let mut req = Request::builder()
        .uri(op.path)
        .header("x-id", id.to_string())
        .header("x-status", op.status.to_string())
        .header("x-hold-ms", op.hold.to_string());
    if let Some(class) = op.class {
        req = req.header("x-priority", class);
    }
    match &op.deadline {
        Deadline::None => {}
        Deadline::Millis(n) => req = req.header("x-deadline-ms", n.to_string()),
        Deadline::Malformed(value) => req = req.header("x-deadline-ms", *value),
    }
    req.body(Body::empty()).unwrap()
}

/// Checks one answer: the handler's, for this request and with the status
/// asked for, or a 503 problem document.
async fn judge(id: usize, op: &Op, response: Response) -> Result<Seen, String> {
    let status = response.status();
    if let Some(handled) = response.headers().get("x-handled-id") {
        if handled.to_str().ok() != Some(id.to_string().as_str()) {
            return Err(format!(
                "request {id} got the answer of request {handled:?}"
            ));
        }
        if status.as_u16() != op.status {
            return Err(format!(
                "request {id}: handler answered {status}, asked {}",
                op.status
            ));
        }
        return Ok(Seen::Served(status.as_u16()));
    }
    if status != StatusCode::SERVICE_UNAVAILABLE {
        return Err(format!(
            "request {id}: neither the handler's answer nor a 503: {status}"
        ));
    }
    if response.headers()[header::CONTENT_TYPE] != "application/problem+json" {
        return Err(format!("request {id}: 503 without a problem document"));
    }
    let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("request {id}: body not JSON: {e}"))?;
    if json["status"] != 503 || !json["title"].is_string() || !json["detail"].is_string() {
        return Err(format!("request {id}: incomplete problem document {json}"));
    }
    let header_secs = retry_after.and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if json["retry_after"].as_u64() != header_secs {
        return Err(format!(
            "request {id}: Retry-After {header_secs:?} but body says {json}"
        ));
    }
    let reason = json["reason"].as_str().unwrap_or("").to_owned();
    if json["type"] != format!("urn:brownout:{reason}") {
        return Err(format!("request {id}: type and reason differ in {json}"));
    }
    Ok(Seen::Fallback(reason))
}

/// Figures over all cases, for the assertions on coverage and the report.
#[derive(Debug, Default)]
struct Figures {
    cases: u64,
    requests: u64,
    seen: BTreeMap<String, u64>,
    /// Clients that gave up while their call ran in the handler.
    cancelled_in_handler: u64,
    /// Clients that gave up while they waited in the room.
    cancelled_waiting: u64,
    /// Routes whose breaker was open at the end of the traffic.
    open_at_end: u64,
    longest_answer: Duration,
}

fn run(setup: &Setup, ops: &[Op], figures: &mut Figures) -> Result<(), TestCaseError> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let calls = Arc::new(Calls::default());
    let policy = setup.policy();
    // The longest a request may wait before its call or its rejection.
    let max_wait = ms(setup.max_wait);

    rt.block_on(async {
        let layer = BrownoutLayer::from_policy(&policy).http();
        let app = {
            let a = calls.clone();
            let b = calls.clone();
            Router::new()
                .route("/a", get(move |h: HeaderMap| handler(a.clone(), h)))
                .route("/b/{id}", get(move |h: HeaderMap| handler(b.clone(), h)))
                .layer(layer.clone())
        };

        let mut tasks = Vec::new();
        for (id, op) in ops.iter().enumerate() {
            tokio::time::sleep(ms(op.gap)).await;
            let req = request(id, op);
            let app = app.clone();
            let op = op.clone();
            tasks.push(tokio::spawn(async move {
                let t0 = Instant::now();
                let call = app.oneshot(req);
                let answer = match op.cancel {
                    Some(after) => tokio::select! {
                        // An answer ready at the moment the client gives
                        // up is still taken.
                        biased;
                        answer = call => Some(answer),
                        _ = tokio::time::sleep(ms(after)) => None,
                    },
                    None => Some(call.await),
                };
                let took = t0.elapsed();
                let seen = match answer {
                    Some(answer) => {
                        judge(id, &op, answer.unwrap_or_else(|e: Infallible| match e {})).await?
                    }
                    None => Seen::Cancelled,
                };
                Ok::<_, String>((seen, took))
            }));
        }

        // No request hangs: everything is over well within an hour.
        let mut seen = Vec::new();
        let all = async {
            for task in tasks {
                seen.push(task.await.unwrap());
            }
        };
        prop_assert!(
            tokio::time::timeout(Duration::from_secs(3600), all)
                .await
                .is_ok(),
            "a request hung"
        );
        let mut outcomes = Vec::new();
        for (id, (result, op)) in seen.into_iter().zip(ops).enumerate() {
            let (outcome, took) = result.map_err(TestCaseError::fail)?;
            // Bounded answers: at most the wait, then the handler's time;
            // a deadline also bounds the call, which is abandoned there.
            let bound = match (&outcome, &op.deadline) {
                (Seen::Served(_), _) => max_wait + ms(op.hold),
                (Seen::Fallback(reason), Deadline::Millis(d)) if reason == "deadline" => {
                    max_wait.max(ms(*d))
                }
                (Seen::Fallback(_), _) => max_wait,
                (Seen::Cancelled, _) => ms(op.cancel.unwrap()),
            };
            prop_assert!(
                took <= bound,
                "request {id} ({outcome:?}) took {took:?}, more than {bound:?}"
            );
            if let Deadline::Millis(d) = op.deadline {
                if matches!(outcome, Seen::Fallback(_)) {
                    prop_assert!(
                        took <= ms(d),
                        "request {id} rejected after its deadline: {took:?}"
                    );
                }
            }
            figures.longest_answer = figures.longest_answer.max(took);
            if outcome == Seen::Cancelled {
                if calls.ids.lock().unwrap().contains(&id) {
                    figures.cancelled_in_handler += 1;
                } else {
                    figures.cancelled_waiting += 1;
                }
            }
            outcomes.push(outcome);
        }

        // Conservation as the clients saw it.
        let cancelled = outcomes.iter().filter(|o| **o == Seen::Cancelled).count();
        let served = outcomes
            .iter()
            .filter(|o| matches!(o, Seen::Served(_)))
            .count();
        let fallback = outcomes
            .iter()
            .filter(|o| matches!(o, Seen::Fallback(_)))
            .count();
        prop_assert_eq!(served + fallback, ops.len() - cancelled);
        let answered = calls.answered.load(Ordering::SeqCst) as usize;
        prop_assert_eq!(served, answered, "every answered call reached its client");
        prop_assert_eq!(calls.running(), 0, "no handler still runs");

        // brownout's own counters agree.
        let mut counted: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let key = key.key();
            if key.name() != "brownout_requests_total" {
                continue;
            }
            let label = |name: &str| {
                key.labels()
                    .find(|l| l.key() == name)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_default()
            };
            if let DebugValue::Counter(n) = value {
                *counted
                    .entry((label("outcome"), label("reason")))
                    .or_default() += n;
            }
        }
        let total = |outcome: &str| -> u64 {
            counted
                .iter()
                .filter(|((o, _), _)| o == outcome)
                .map(|(_, n)| n)
                .sum()
        };
        prop_assert_eq!(total("served") as usize, served, "{:?}", counted);
        prop_assert_eq!(total("cancelled") as usize, cancelled, "{:?}", counted);
        prop_assert_eq!(total("rejected") as usize, fallback, "{:?}", counted);
        for reason in outcomes
            .iter()
            .filter_map(|o| match o {
                Seen::Fallback(reason) => Some(reason.clone()),
                _ => None,
            })
            .collect::<BTreeSet<_>>()
        {
            let by_client = outcomes
                .iter()
                .filter(|o| **o == Seen::Fallback(reason.clone()))
                .count() as u64;
            prop_assert_eq!(
                counted
                    .get(&("rejected".to_owned(), reason.clone()))
                    .copied()
                    .unwrap_or(0),
                by_client,
                "{}",
                reason
            );
        }

        // Nobody is left waiting, and every route's breaker will close
        // again and its whole limit is free: nothing leaked.
        let routes: BTreeSet<&str> = ops.iter().map(|op| route_of(op.path)).collect();
        for route in &routes {
            prop_assert_eq!(layer.waiting(route), 0, "{} still has waiters", route);
            if layer.state(route) == Some(BreakerState::Open) {
                figures.open_at_end += 1;
            }
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        for route in &routes {
            let path = if *route == "/b/{id}" { "/b/1" } else { route };
            // Closed, and no longer throttling: successes push the
            // failures out of the window.
            let throttled = |route: &str| {
                layer
                    .snapshot()
                    .routes
                    .iter()
                    .find(|health| health.route == route)
                    .map_or(0.0, |health| health.throttled)
            };
            for n in 0.. {
                if layer.state(route) == Some(BreakerState::Closed) && throttled(route) == 0.0 {
                    break;
                }
                prop_assert!(
                    n < 200,
                    "{} does not close: {:?}",
                    route,
                    layer.state(route)
                );
                let op = Op {
                    gap: 0,
                    path,
                    class: Some("urgent"),
                    deadline: Deadline::None,
                    status: 200,
                    hold: 0,
                    cancel: None,
                };
                let throttling = layer.state(route) == Some(BreakerState::Closed);
                let answer = app.clone().oneshot(request(10_000 + n, &op)).await.unwrap();
                if throttling && answer.status() == StatusCode::SERVICE_UNAVAILABLE {
                    continue; // one of the share a throttling breaker turns away
                }
                prop_assert_eq!(answer.status(), StatusCode::OK);
            }
            let limit = layer.limit(route).unwrap();
            let before = calls.started.load(Ordering::SeqCst);
            let mut held = Vec::new();
            for n in 0..limit as usize {
                let op = Op {
                    gap: 0,
                    path,
                    class: Some("urgent"),
                    deadline: Deadline::None,
                    status: 200,
                    hold: 1000,
                    cancel: None,
                };
                held.push(tokio::spawn(app.clone().oneshot(request(20_000 + n, &op))));
            }
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
            prop_assert_eq!(
                calls.started.load(Ordering::SeqCst) - before,
                limit,
                "{}: the whole limit is free",
                route
            );
            prop_assert_eq!(calls.running(), limit);
            for task in held {
                prop_assert_eq!(task.await.unwrap().unwrap().status(), StatusCode::OK);
            }
        }

        figures.cases += 1;
        figures.requests += ops.len() as u64;
        for outcome in &outcomes {
            let name = match outcome {
                Seen::Served(status) => format!("served {status}"),
                Seen::Fallback(reason) => format!("503 {reason}"),
                Seen::Cancelled => "cancelled".to_owned(),
            };
            *figures.seen.entry(name).or_default() += 1;
        }
        Ok(())
    })
}

#[test]
fn every_request_gets_one_answer_through_the_whole_stack() {
    let config = Config {
        cases: 128,
        rng_seed: RngSeed::Fixed(0x5eed_b0a7),
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let figures = std::cell::RefCell::new(Figures::default());
    let result = runner.run(&scenario(), |(setup, ops)| {
        run(&setup, &ops, &mut figures.borrow_mut())
    });
    if let Err(err) = result {
        panic!("{err}");
    }
    let figures = figures.into_inner();
    eprintln!("{figures:#?}");
    // The traffic reached every kind of ending.
    for kind in [
        "served 200",
        "served 404",
        "served 500",
        "503 open",
        "503 shed",
        "cancelled",
    ] {
        assert!(
            figures.seen.get(kind).is_some_and(|&n| n > 0),
            "no `{kind}` in {figures:#?}"
        );
    }
    assert!(figures.open_at_end > 0);
    assert!(figures.cancelled_in_handler > 0 && figures.cancelled_waiting > 0);
}
