//! Arbitrary requests through the composed HTTP stack,
//! `BrownoutLayer::from_policy(&policy).http()`: any path, any headers
//! (among them the priority header, `grpc-timeout`, the policy's deadline
//! header and an idempotency key), any back end answer, any time between
//! calls. No panic; every answer is the back end's or brownout's 503; no
//! request is left waiting.
#![no_main]

use std::convert::Infallible;
use std::sync::OnceLock;
use std::time::Duration;

use brownout::{BrownoutLayer, Policy};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use tower::{Layer, ServiceExt};

#[derive(Debug, Arbitrary)]
struct Call {
    path: Vec<u8>,
    priority: Vec<u8>,
    grpc_timeout: Option<Vec<u8>>,
    deadline: Option<Vec<u8>>,
    idempotency_key: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The back end's answer: 200, 404, 500 or 503.
    answer: u8,
    /// Virtual time before the call, in ms.
    after_ms: u16,
}

#[derive(Clone, Copy)]
struct Answer(StatusCode);

const POLICY: &str = r#"
    [breaker]
    window = { kind = "count", size = 10 }
    minimum_calls = 4
    open_for = "2s"
    [limit]
    algorithm = "aimd"
    initial = 4
    [waiting_room]
    capacity = 8
    max_wait = "1s"
    deadline_header = "x-request-timeout"
    [priority]
    header = "x-priority"
    [routes."/slots"]
    breaker = { failure_rate = 0.2 }
"#;

struct Stack {
    runtime: tokio::runtime::Runtime,
    layer: BrownoutLayer<
        brownout::fallback::ProblemJson,
        brownout::stack::HttpRoute,
        brownout::priority::HeaderPriority,
        brownout::deadline::HeaderDeadline,
        brownout::classify::ServerErrorsAsFailures,
    >,
}

fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a runtime");
        let policy = Policy::from_toml(POLICY).expect("the fuzz policy loads");
        // Built in paused time, so the stack follows virtual time.
        let layer = runtime.block_on(async { BrownoutLayer::from_policy(&policy).http() });
        Stack { runtime, layer }
    })
}

fn request(call: &Call) -> Option<Request<()>> {
    let mut builder = Request::builder().uri(http::Uri::try_from(call.path.clone()).ok()?);
    let mut add = |name: HeaderName, value: &[u8]| {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            builder = std::mem::take(&mut builder).header(name, value);
        }
    };
    add(HeaderName::from_static("x-priority"), &call.priority);
    if let Some(timeout) = &call.grpc_timeout {
        add(HeaderName::from_static("grpc-timeout"), timeout);
    }
    if let Some(deadline) = &call.deadline {
        add(HeaderName::from_static("x-request-timeout"), deadline);
    }
    add(
        HeaderName::from_static("idempotency-key"),
        &call.idempotency_key,
    );
    for (name, value) in &call.headers {
        if let Ok(name) = HeaderName::from_bytes(name) {
            add(name, value);
        }
    }
    let mut request = builder.body(()).ok()?;
    let answer = [200, 404, 500, 503][usize::from(call.answer % 4)];
    request
        .extensions_mut()
        .insert(Answer(StatusCode::from_u16(answer).expect("a status")));
    Some(request)
}

libfuzzer_sys::fuzz_target!(|calls: Vec<Call>| {
    let stack = stack();
    for call in calls.iter().take(64) {
        let Some(request) = request(call) else {
            continue;
        };
        let answer = request.extensions().get::<Answer>().expect("set").0;
        let route = request.uri().path().to_owned();
        let service = stack
            .layer
            .layer(tower::service_fn(|req: Request<()>| async move {
                let Answer(status) = *req.extensions().get::<Answer>().expect("kept");
                let mut response = Response::new(String::new());
                *response.status_mut() = status;
                Ok::<_, Infallible>(response)
            }));
        let response = stack.runtime.block_on(async {
            tokio::time::advance(Duration::from_millis(call.after_ms.into())).await;
            service
                .oneshot(request)
                .await
                .unwrap_or_else(|never| match never {})
        });
        let status = response.status();
        assert!(
            status == answer || status == StatusCode::SERVICE_UNAVAILABLE,
            "{status} for a back end answering {answer}"
        );
        assert_eq!(stack.layer.waiting(&route), 0, "a request left waiting");
    }
});
