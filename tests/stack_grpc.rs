#![cfg(feature = "grpc")]
//! The composed stack in front of a real tonic server, called by a real
//! tonic client, over an in-memory HTTP/2 connection (`tokio::io::duplex`),
//! in paused time.
//!
//! The service is the booking example's `booking.v1.Booking`, generated from
//! `proto/booking.proto` (`examples/grpc/generated/booking.v1.rs`), with a
//! test back end behind it. Two of its methods, each its own route for
//! brownout:
//! - `Book` (unary): a handler error goes out as a trailers-only response,
//!   `grpc-status` in the headers;
//! - `WatchSlots` (server streaming): one message, then the status in the
//!   trailers after the body.
//!
//! Two kinds of client: tonic's `Channel`, and a plain hyper HTTP/2
//! connection under `tonic::client::Grpc`. They differ on `grpc-timeout`:
//! the `Channel` enforces it on the client side too (and reports its own
//! timeout as `CANCELLED` "Timeout expired"), so at the deadline it gives up
//! before brownout's answer arrives; the plain client sees brownout's
//! answer.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::SeqCst};
use std::task::{Context, Poll};
use std::time::Duration;

use brownout::classify::GrpcErrorsAsFailures;
use brownout::deadline::HeaderDeadline;
use brownout::fallback::GrpcUnavailable;
use brownout::priority::HeaderPriority;
use brownout::stack::HttpRoute;
use brownout::{BreakerState, BrownoutLayer, Policy};
use http::Uri;
use hyper_util::rt::TokioExecutor;
use hyper_util::rt::TokioIo;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::io::DuplexStream;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status, Streaming};
use tower::Service;

/// The booking example's messages, server and client, generated.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
mod proto {
    include!("../examples/grpc/generated/booking.v1.rs");
}

use proto::booking_client::BookingClient;
use proto::booking_server::{Booking, BookingServer};
use proto::{BookReply, BookRequest, ListSlotsRequest, SlotList, WatchSlotsRequest};

// ---- the service: the generated server, a test back end ---------------------

const BOOK: &str = "/booking.v1.Booking/Book";
const WATCH: &str = "/booking.v1.Booking/WatchSlots";

/// How the back end answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    /// Books the slot.
    Ok = 0,
    /// `UNAVAILABLE`: trailers-only from `Book`, in the trailers after one
    /// message from `Watch`.
    Unavailable = 1,
    /// Says it started (on `entered`), then holds the call until the test
    /// releases it, and books the slot.
    Hold = 2,
}

/// The back end's behaviour and what it saw, shared with the test.
struct Backend {
    mode: AtomicU8,
    calls: AtomicUsize,
    entered: mpsc::UnboundedSender<()>,
    release: Semaphore,
}

impl Backend {
    fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, SeqCst);
    }

    fn mode(&self) -> Mode {
        match self.mode.load(SeqCst) {
            0 => Mode::Ok,
            1 => Mode::Unavailable,
            _ => Mode::Hold,
        }
    }

    /// Calls that reached the handlers.
    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }

    /// Counts the call and plays the mode; `Err` for `Unavailable`, else
    /// `booked {slot}`.
    async fn serve(&self, slot: &str) -> Result<String, Status> {
        self.calls.fetch_add(1, SeqCst);
        let mode = self.mode();
        if mode == Mode::Hold {
            let _ = self.entered.send(());
            self.release
                .acquire()
                .await
                .expect("the semaphore stays open")
                .forget();
        }
        match mode {
            Mode::Unavailable => Err(Status::unavailable("booking database is down")),
            Mode::Ok | Mode::Hold => Ok(format!("booked {slot}")),
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// `booking.v1.Booking` in front of the test's back end.
struct TestBooking(Arc<Backend>);

type WatchStream = tokio_stream::Iter<std::vec::IntoIter<Result<SlotList, Status>>>;

#[tonic::async_trait]
impl Booking for TestBooking {
    async fn list_slots(&self, _: Request<ListSlotsRequest>) -> Result<Response<SlotList>, Status> {
        Err(Status::unimplemented("not in these tests"))
    }

    /// Books `slot`: the reply's `slot` is `booked {slot}`.
    async fn book(&self, request: Request<BookRequest>) -> Result<Response<BookReply>, Status> {
        let slot = request.into_inner().slot;
        let booked = self.0.serve(&slot).await?;
        Ok(Response::new(BookReply {
            id: self.0.calls() as u64,
            slot: booked,
        }))
    }

    type WatchSlotsStream = WatchStream;

    /// One list, `[booked {day}]`; on failure `[watching {day}]` and then
    /// the error.
    async fn watch_slots(
        &self,
        request: Request<WatchSlotsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let day = request.into_inner().day;
        // The handler itself succeeds: the headers go out with 200, a
        // message follows, and the error, if any, ends the stream in
        // the trailers.
        let list = |slot: String| SlotList { slots: vec![slot] };
        let items = match self.0.serve(&day).await {
            Ok(booked) => vec![Ok(list(booked))],
            Err(status) => vec![Ok(list(format!("watching {day}"))), Err(status)],
        };
        Ok(Response::new(tokio_stream::iter(items)))
    }
}

// ---- the harness ------------------------------------------------------------

type GrpcStack =
    BrownoutLayer<GrpcUnavailable, HttpRoute, HeaderPriority, HeaderDeadline, GrpcErrorsAsFailures>;

/// A tonic server with brownout in front, and a client connected to it.
struct Harness {
    client: BookingClient<Channel>,
    backend: Arc<Backend>,
    /// A clone of the layer the server uses: the same gates.
    stack: GrpcStack,
    entered: mpsc::UnboundedReceiver<()>,
    /// Hands the server end of a new in-memory connection to the server.
    accept: mpsc::UnboundedSender<DuplexStream>,
}

impl Harness {
    /// Starts the server and connects the client. Call in paused time: the
    /// layer is built here, after the pause.
    async fn start(policy: &str) -> Self {
        let policy = Policy::from_toml(policy).expect("the test's policy is valid");
        let stack = BrownoutLayer::from_policy(&policy).grpc();
        let (entered_tx, entered) = mpsc::unbounded_channel();
        let backend = Arc::new(Backend {
            mode: AtomicU8::new(Mode::Ok as u8),
            calls: AtomicUsize::new(0),
            entered: entered_tx,
            release: Semaphore::new(0),
        });

        let (accept, incoming) = mpsc::unbounded_channel::<DuplexStream>();
        let incoming = UnboundedReceiverStream::new(incoming).map(Ok::<_, io::Error>);
        let server = Server::builder()
            .layer(stack.clone())
            .add_service(BookingServer::new(TestBooking(backend.clone())));
        tokio::spawn(server.serve_with_incoming(incoming));

        let dialer = accept.clone();
        let channel = Endpoint::from_static("http://booking.test")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let io = dial(&dialer);
                async move { io.map(TokioIo::new) }
            }))
            .await
            .expect("the client connects over the duplex");
        Self {
            client: BookingClient::new(channel),
            backend,
            stack,
            entered,
            accept,
        }
    }

    /// A gRPC client straight on an HTTP/2 connection, without tonic's
    /// `Channel`, which enforces `grpc-timeout` on the client side.
    async fn raw_client(&self) -> BookingClient<RawHttp2> {
        let io = dial(&self.accept).expect("the server accepts");
        let (send, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .expect("HTTP/2 handshake over the duplex");
        tokio::spawn(connection);
        BookingClient::with_origin(RawHttp2(send), Uri::from_static("http://booking.test"))
    }

    async fn book(&self, slot: &str) -> Result<Response<BookReply>, Status> {
        self.book_with(book_request(slot)).await
    }

    async fn book_with(
        &self,
        request: Request<BookRequest>,
    ) -> Result<Response<BookReply>, Status> {
        book_on(self.client.clone(), request).await
    }

    /// A `Book` call on its own task.
    fn spawn_book(
        &self,
        request: Request<BookRequest>,
    ) -> JoinHandle<Result<Response<BookReply>, Status>> {
        tokio::spawn(book_on(self.client.clone(), request))
    }

    /// A `WatchSlots` call read to its end: the messages (each list's
    /// slots, joined), then the status.
    async fn watch(&self, day: &str) -> (Vec<String>, Status) {
        let request = Request::new(WatchSlotsRequest {
            day: day.into(),
            updates: 1,
        });
        let started: Result<Response<Streaming<SlotList>>, Status> =
            self.client.clone().watch_slots(request).await;
        let mut stream = match started {
            Ok(response) => response.into_inner(),
            Err(status) => return (Vec::new(), status),
        };
        let mut messages = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(list)) => messages.push(list.slots.join(",")),
                Ok(None) => return (messages, Status::ok("")),
                Err(status) => return (messages, status),
            }
        }
    }
}

/// A new in-memory connection: the server gets one end, the caller the other.
fn dial(accept: &mpsc::UnboundedSender<DuplexStream>) -> io::Result<DuplexStream> {
    let (client, server) = tokio::io::duplex(64 * 1024);
    accept
        .send(server)
        .map_err(|_| io::Error::other("the server has stopped"))?;
    Ok(client)
}

/// hyper's HTTP/2 client connection as a tower service, for
/// `tonic::client::Grpc`.
#[derive(Clone)]
struct RawHttp2(hyper::client::conn::http2::SendRequest<Body>);

impl Service<http::Request<Body>> for RawHttp2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = BoxFuture<Result<Self::Response, hyper::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

/// A `Book` call on `client`.
async fn book_on(
    mut client: BookingClient<Channel>,
    request: Request<BookRequest>,
) -> Result<Response<BookReply>, Status> {
    client.book(request).await
}

fn book_request(slot: &str) -> Request<BookRequest> {
    Request::new(BookRequest {
        name: "Asha".into(),
        slot: slot.into(),
    })
}

/// The `grpc-retry-pushback-ms` of `status`, in milliseconds.
fn pushback_ms(status: &Status) -> Option<u64> {
    let value = status.metadata().get("grpc-retry-pushback-ms")?;
    let text = value.to_str().expect("pushback is ASCII");
    Some(text.parse().expect("pushback is a whole number of ms"))
}

/// A breaker that opens on the 4th failure of 4 calls, for 5 s exactly (no
/// jitter), a limit that never sheds, and waits (1 s) shorter than the open
/// period: with the default `max_wait` (10 s, longer than `open_for`), a
/// call to an open breaker would wait in the room for the probe instead of
/// being answered at once.
const TRIPPING: &str = r#"
    [breaker]
    window = { kind = "count", size = 4 }
    minimum_calls = 4
    failure_rate = 0.5
    open_for = "5s"
    open_backoff = { multiplier = 2.0, max = "1m", jitter = 0.0 }
    half_open_probes = 1

    [limit]
    algorithm = "fixed"
    initial = 100

    [waiting_room]
    max_wait = "1s"
"#;

/// One call at a time per route, and nowhere to wait.
const ONE_SLOT_NO_ROOM: &str = r#"
    [limit]
    algorithm = "fixed"
    initial = 1
    reserve = 0.0

    [waiting_room]
    capacity = 0
"#;

/// One call at a time per route, and a room where calls may wait 10 s.
const ONE_SLOT_A_ROOM: &str = r#"
    [limit]
    algorithm = "fixed"
    initial = 1
    reserve = 0.0

    [waiting_room]
    capacity = 10
    max_wait = "10s"
"#;

// ---- 1. OK calls ------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn ok_calls_pass_through_untouched() {
    // One slot and no room: if a finished call did not give its slot back
    // (its trailers unread, its permit kept), the next call would be shed.
    let h = Harness::start(ONE_SLOT_NO_ROOM).await;
    for slot in ["09:30", "09:45", "10:00"] {
        let response = h.book(slot).await.expect("served");
        assert_eq!(response.get_ref().slot, format!("booked {slot}"));
        assert_eq!(response.metadata().get("grpc-retry-pushback-ms"), None);
        let (messages, status) = h.watch(slot).await;
        assert_eq!(messages, [format!("booked {slot}")]);
        assert_eq!(status.code(), Code::Ok, "{status:?}");
    }
    assert_eq!(h.backend.calls(), 6);
    for route in [BOOK, WATCH] {
        assert_eq!(h.stack.state(route), Some(BreakerState::Closed), "{route}");
        assert_eq!(h.stack.limit(route), Some(1), "{route}");
    }
    // Each method is a route of its own, named by its gRPC path.
    assert_eq!(h.stack.state("default"), None);
}

// ---- 2. UNAVAILABLE from the back end trips the breaker ---------------------

/// Where the back end's `UNAVAILABLE` travels.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// `Book`'s handler returns `Err`: tonic answers trailers-only, the
    /// status in the response headers.
    TrailersOnly,
    /// `Watch` streams a message, then the status in the trailers.
    Trailers,
}

impl Shape {
    fn route(self) -> &'static str {
        match self {
            Shape::TrailersOnly => BOOK,
            Shape::Trailers => WATCH,
        }
    }

    /// A call on this shape's method: what the back end sent before the
    /// status, and the status.
    async fn call(self, h: &Harness, slot: &str) -> (Vec<String>, Status) {
        match self {
            Shape::TrailersOnly => match h.book(slot).await {
                Ok(response) => (vec![response.into_inner().slot], Status::ok("")),
                Err(status) => (Vec::new(), status),
            },
            Shape::Trailers => h.watch(slot).await,
        }
    }

    /// The messages a failing call of this shape sends before its status.
    fn before_failure(self, slot: &str) -> Vec<String> {
        match self {
            Shape::TrailersOnly => Vec::new(),
            Shape::Trailers => vec![format!("watching {slot}")],
        }
    }

    /// The other method, on a route of its own.
    fn other(self) -> Shape {
        match self {
            Shape::TrailersOnly => Shape::Trailers,
            Shape::Trailers => Shape::TrailersOnly,
        }
    }
}

async fn unavailable_back_end_trips_the_breaker(shape: Shape) {
    let h = Harness::start(TRIPPING).await;
    let route = shape.route();
    h.backend.set(Mode::Unavailable);

    for n in 1..=4 {
        let (messages, status) = shape.call(&h, "09:30").await;
        // The back end's own answer, untouched by brownout.
        assert_eq!(messages, shape.before_failure("09:30"), "call {n}");
        assert_eq!(status.code(), Code::Unavailable, "call {n}: {status:?}");
        assert_eq!(status.message(), "booking database is down", "call {n}");
        assert_eq!(pushback_ms(&status), None, "call {n}");
        assert_eq!(h.backend.calls(), n, "call {n} reached the back end");
        let expected = if n < 4 {
            BreakerState::Closed
        } else {
            BreakerState::Open
        };
        assert_eq!(h.stack.state(route), Some(expected), "after call {n}");
    }

    // Open: brownout answers itself, and the back end is not called.
    let (messages, status) = shape.call(&h, "09:45").await;
    assert_eq!(messages, Vec::<String>::new());
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.message(),
        "request rejected (open): the back end is failing and its circuit breaker is open; \
         retry after 5.000s"
    );
    // Virtual time stood still: the next probe is the whole `open_for` away.
    assert_eq!(pushback_ms(&status), Some(5_000));
    assert_eq!(h.backend.calls(), 4);

    // The other method is another route, with its own closed breaker.
    h.backend.set(Mode::Ok);
    let (messages, status) = shape.other().call(&h, "10:00").await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    assert_eq!(messages, ["booked 10:00"]);
    assert_eq!(h.backend.calls(), 5);
    assert_eq!(h.stack.state(route), Some(BreakerState::Open));

    // Part of the way through the open period, the hint counts down.
    tokio::time::advance(Duration::from_millis(1_500)).await;
    let (_, status) = shape.call(&h, "10:15").await;
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(pushback_ms(&status), Some(3_500));
    assert_eq!(h.backend.calls(), 5);

    // At the probe time, one probe goes through; its OK, read from the
    // trailers, closes the breaker.
    tokio::time::advance(Duration::from_millis(3_500)).await;
    let (messages, status) = shape.call(&h, "10:30").await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");
    assert_eq!(messages, ["booked 10:30"]);
    assert_eq!(h.backend.calls(), 6);
    assert_eq!(h.stack.state(route), Some(BreakerState::Closed));
}

#[tokio::test(start_paused = true)]
async fn unavailable_in_a_trailers_only_response_trips_the_breaker() {
    unavailable_back_end_trips_the_breaker(Shape::TrailersOnly).await;
}

#[tokio::test(start_paused = true)]
async fn unavailable_in_the_trailers_after_a_message_trips_the_breaker() {
    unavailable_back_end_trips_the_breaker(Shape::Trailers).await;
}

// ---- 3. shed ------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_shed_call_gets_resource_exhausted_with_pushback() {
    let mut h = Harness::start(ONE_SLOT_NO_ROOM).await;
    h.backend.set(Mode::Hold);
    let first = h.spawn_book(book_request("09:30"));
    h.entered
        .recv()
        .await
        .expect("the first call reaches the back end");

    let status = h.book("09:45").await.expect_err("shed");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().starts_with(
            "request rejected (shed): the back end is at its capacity and this request was shed; retry after "
        ),
        "{}",
        status.message()
    );
    // No call has finished yet, so the limit knows no latency: the hint is
    // a sane 1 s, not an invitation to retry at once.
    assert_eq!(pushback_ms(&status), Some(1_000));
    assert_eq!(
        h.backend.calls(),
        1,
        "the shed call never reached the back end"
    );

    // The held call is served, and its slot is free again.
    h.backend.set(Mode::Ok);
    h.backend.release.add_permits(1);
    let response = first.await.expect("no panic").expect("served");
    assert_eq!(response.get_ref().slot, "booked 09:30");
    let response = h.book("10:00").await.expect("served once the slot is free");
    assert_eq!(response.get_ref().slot, "booked 10:00");
    assert_eq!(h.backend.calls(), 2);
}

// ---- 4. grpc-timeout bounds the wait ------------------------------------------

/// Holds the only slot of `Book` with a call the back end does not answer
/// until [`release`].
async fn hold_the_slot(h: &mut Harness) -> JoinHandle<Result<Response<BookReply>, Status>> {
    h.backend.set(Mode::Hold);
    let first = h.spawn_book(book_request("09:30"));
    h.entered
        .recv()
        .await
        .expect("the first call reaches the back end");
    first
}

/// Lets the held call finish, and checks it was served.
async fn release(h: &Harness, first: JoinHandle<Result<Response<BookReply>, Status>>) {
    h.backend.set(Mode::Ok);
    h.backend.release.add_permits(1);
    let response = first.await.expect("no panic").expect("served");
    assert_eq!(response.get_ref().slot, "booked 09:30");
}

/// A `Book` request whose client waits 200 ms: `grpc-timeout: 200000u`.
fn impatient(slot: &str) -> Request<BookRequest> {
    let mut request = book_request(slot);
    request.set_timeout(Duration::from_millis(200));
    assert_eq!(request.metadata().get("grpc-timeout").unwrap(), "200000u");
    request
}

/// Answered at the deadline, to the timer's millisecond (virtual time),
/// having waited for a slot until then.
fn assert_answered_at_the_deadline(waited: Duration) {
    assert!(
        waited >= Duration::from_millis(200) && waited <= Duration::from_millis(201),
        "answered after {waited:?}"
    );
}

/// `brownout_requests_total{route, outcome, reason}` as the recorder saw it.
fn requests_total(snapshot: &[Counted], outcome: &str, reason: &str) -> u64 {
    snapshot
        .iter()
        .filter(|(name, labels, _)| {
            name == brownout::metrics::REQUESTS_TOTAL
                && labels.contains(&("route".into(), BOOK.into()))
                && labels.contains(&("outcome".into(), outcome.into()))
                && labels.contains(&("reason".into(), reason.into()))
        })
        .map(|(_, _, n)| n)
        .sum()
}

/// A counter's name, labels and value.
type Counted = (String, Vec<(String, String)>, u64);

/// Every counter the recorder has seen.
fn counters(snapshotter: &Snapshotter) -> Vec<Counted> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let DebugValue::Counter(n) = value else {
                return None;
            };
            let key = key.key();
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            Some((key.name().to_owned(), labels, n))
        })
        .collect()
}

/// Without tonic's client-side timer (a plain HTTP/2 client, as a proxy or
/// a client that does not enforce deadlines would be), what the server
/// answers reaches the caller: brownout's own `UNAVAILABLE`, at the
/// deadline.
#[tokio::test(start_paused = true)]
async fn grpc_timeout_bounds_the_wait_in_the_room() {
    let mut h = Harness::start(ONE_SLOT_A_ROOM).await;
    let first = hold_the_slot(&mut h).await;

    // The room would let it wait 10 s; its own deadline is 200 ms.
    let mut raw = h.raw_client().await;
    let start = Instant::now();
    let waiting = tokio::spawn(async move { raw.book(impatient("09:45")).await });

    // Half way, it waits in the room.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.stack.waiting(BOOK), 1);
    assert!(!waiting.is_finished());

    let status = waiting.await.expect("no panic").expect_err("not served");
    assert_answered_at_the_deadline(start.elapsed());
    // brownout's answer. tonic's server also enforces `grpc-timeout` (its
    // `GrpcTimeout`, outside every layer, would answer `CANCELLED` "Timeout
    // expired"), and its timer fires at the same instant; but it polls the
    // inner service first, and brownout, seeing the deadline passed,
    // answers.
    // The caller's own deadline passed: `DEADLINE_EXCEEDED`, which gRPC
    // clients do not retry, and no tiny pushback.
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().starts_with(
            "request rejected (deadline): the request's deadline passed before the back end could serve it; retry after "
        ),
        "{}",
        status.message()
    );
    assert!(
        pushback_ms(&status).is_some_and(|ms| ms >= 1_000),
        "{status:?}"
    );
    assert_eq!(h.stack.waiting(BOOK), 0, "it left the room");
    assert_eq!(h.backend.calls(), 1, "it never reached the back end");

    release(&h, first).await;
}

/// tonic's own client (`Channel`) enforces `grpc-timeout` itself and, at
/// the same virtual instant as brownout's answer leaves the server, gives
/// up first: the caller sees tonic's `CANCELLED` "Timeout expired" (tonic
/// maps its timeout to `CANCELLED`, not `DEADLINE_EXCEEDED`). brownout has
/// still let the call go at its deadline, as its counters show.
#[tokio::test(start_paused = true)]
async fn a_tonic_client_gives_up_at_its_deadline_as_brownout_lets_the_call_go() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let mut h = Harness::start(ONE_SLOT_A_ROOM).await;
    let first = hold_the_slot(&mut h).await;

    let start = Instant::now();
    let status = h
        .book_with(impatient("09:45"))
        .await
        .expect_err("not served");
    assert_answered_at_the_deadline(start.elapsed());
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert_eq!(status.message(), "Timeout expired");
    // The server's timers fired in the same tick; let its task run.
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(h.stack.waiting(BOOK), 0, "it left the room");
    assert_eq!(h.backend.calls(), 1, "it never reached the back end");

    release(&h, first).await;
    let seen = counters(&snapshotter);
    assert_eq!(requests_total(&seen, "rejected", "deadline"), 1, "{seen:?}");
    assert_eq!(requests_total(&seen, "cancelled", "none"), 0, "{seen:?}");
    assert_eq!(requests_total(&seen, "served", "none"), 1, "{seen:?}");
}

#[tokio::test(start_paused = true)]
async fn a_waiter_is_served_when_the_slot_frees_before_its_deadline() {
    let mut h = Harness::start(ONE_SLOT_A_ROOM).await;
    let first = hold_the_slot(&mut h).await;

    let waiting = h.spawn_book(impatient("09:45"));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(h.stack.waiting(BOOK), 1);

    release(&h, first).await;
    let response = waiting
        .await
        .expect("no panic")
        .expect("served from the room");
    assert_eq!(response.get_ref().slot, "booked 09:45");
    assert_eq!(h.backend.calls(), 2);
    assert_eq!(h.stack.waiting(BOOK), 0);
}
