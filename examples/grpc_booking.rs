//! The passport-appointment booking service over gRPC (tonic), with
//! brownout in front: during an outage clients get `UNAVAILABLE` at once,
//! with `grpc-retry-pushback-ms` saying when to try again, instead of
//! waiting on a dead back end.
//!
//! ```text
//! cargo run --example grpc_booking -- demo     # server + client in one process: an outage, scripted
//!
//! cargo run --example grpc_booking             # the server alone, 127.0.0.1:$PORT (default 50051)
//! cargo run --example grpc_booking -- client   # calls it 10 times a second and says what it sees
//! cargo run --example grpc_booking -- admin '{"state":"down"}'   # changes its back end
//! cargo run --example grpc_booking -- admin '{"state":"up"}'
//! ```
//!
//! `client` and `admin` take the server's URL first if it is not
//! `http://127.0.0.1:50051`. The admin JSON is the booking example's
//! (`{"state":"slow","factor":5}`, `{"capacity":0.27}`,
//! `{"state":"flapping","period":"20s"}`, ...). The policy is
//! `examples/policies/booking.toml`, or `$BOOKING_POLICY`.
//!
//! The `demo` takes about 13 seconds: a client calls `ListSlots` every 50 ms
//! (open loop, deadline 3 s) while the back end is up for 2 s, down from
//! 2 s to 7 s, then up again. Each line is what came back during one
//! second, e.g.:
//!
//! ```text
//!    t  back end   OK  UNAVAILABLE   UNAVAILABLE   other   pushback   slowest
//!                      (back end)    (brownout)            (ms)       call (ms)
//!   1s  up         22            0             0       0          -       901
//!   2s  down        4           20             0       0          -       245
//!   3s  down        0           20             0       0          -         8
//!   4s  down        0            0            20       0       5158         7
//!   5s  down        0            0            20       0       4159         2
//!   ...
//!   8s  up          0            0            20       0       1159         6
//!   9s  up         13            0             4       0        159      2101
//!  10s  up         20            0             0       0          -       351
//! ```
//!
//! For the first two seconds of the outage the back end's own errors come
//! back, until half of the calls in the breaker's 10 s window have failed;
//! then the breaker opens and brownout answers every call at once with
//! `UNAVAILABLE` and `grpc-retry-pushback-ms` counting down to its next
//! probe. The back end is up again at 7 s, but nobody knows until the
//! probe at ~9 s finds it: then calls flow again, the breaker closed.
//!
//! brownout sits in front of every method (`Server::builder().layer(...)`),
//! each its own route with its own breaker: `/booking.v1.Booking/ListSlots`,
//! `/booking.v1.Booking/Book`, and the admin method too.
//!
//! The gRPC types are written by hand with prost's derive (no `protoc`, no
//! build script); in a `.proto` they would read:
//!
//! ```text
//! package booking.v1;
//! service Booking {
//!   rpc ListSlots(ListSlotsRequest) returns (SlotList);
//!   rpc Book(BookRequest) returns (BookReply);
//! }
//! service Admin { rpc SetBackend(SetBackendRequest) returns (BackendStatus); }
//! message ListSlotsRequest {}
//! message SlotList { repeated string slots = 1; }
//! message BookRequest { string name = 1; string slot = 2; }
//! message BookReply { uint64 id = 1; string slot = 2; }
//! message SetBackendRequest { string change_json = 1; }
//! message BackendStatus { string status_json = 1; }
//! ```

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use brownout::sim::{Condition, SimBackend, SimHandle};
use brownout::{BrownoutLayer, Policy};
use http::uri::PathAndQuery;
use tokio::time::Instant;
use tonic::body::Body;
use tonic::client::Grpc as GrpcClient;
use tonic::server::{Grpc as GrpcServer, NamedService, UnaryService};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;
use tower::{Service, ServiceExt};

#[path = "shared/backend.rs"]
mod backend;
#[path = "shared/server.rs"]
mod server;

use backend::{BackendChange, CALL_TIMEOUT};

const DEFAULT_POLICY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/policies/booking.toml"
);
const DEFAULT_URL: &str = "http://127.0.0.1:50051";
/// The client's deadline (`grpc-timeout`): longer than the waiting room's
/// `max_wait` (2 s in booking.toml), so brownout answers first.
const DEADLINE: Duration = Duration::from_secs(3);

// ---- the messages, by hand ----------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
struct ListSlotsRequest {}

#[derive(Clone, PartialEq, prost::Message)]
struct SlotList {
    #[prost(string, repeated, tag = "1")]
    slots: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct BookRequest {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    slot: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct BookReply {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(string, tag = "2")]
    slot: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SetBackendRequest {
    #[prost(string, tag = "1")]
    change_json: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct BackendStatus {
    #[prost(string, tag = "1")]
    status_json: String,
}

const LIST_SLOTS: &str = "/booking.v1.Booking/ListSlots";
const BOOK: &str = "/booking.v1.Booking/Book";
const SET_BACKEND: &str = "/booking.v1.Admin/SetBackend";

// ---- the server -------------------------------------------------------------

/// The service's state: the simulated central server and the bookings.
struct Inner {
    backend: SimBackend,
    sim: SimHandle,
    taken: Mutex<BTreeSet<String>>,
    next_id: AtomicU64,
}

impl Inner {
    fn new() -> Result<Arc<Self>, brownout::sim::SimConfigError> {
        let backend = backend::central_server().build()?;
        Ok(Arc::new(Self {
            sim: backend.handle(),
            backend,
            taken: Mutex::new(BTreeSet::new()),
            next_id: AtomicU64::new(1),
        }))
    }

    /// One call to the central server, given up after [`CALL_TIMEOUT`].
    async fn call_backend(&self) -> Result<(), Status> {
        match tokio::time::timeout(CALL_TIMEOUT, self.backend.clone().oneshot(())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(Status::unavailable(format!(
                "the central booking server refused the call: {err}"
            ))),
            Err(_) => Err(Status::deadline_exceeded(
                "the central booking server did not answer within 3s",
            )),
        }
    }

    fn free_slots(&self) -> Vec<String> {
        let taken = self.taken.lock().unwrap_or_else(PoisonError::into_inner);
        slots().filter(|slot| !taken.contains(slot)).collect()
    }
}

/// Three days of quarter-hour slots, 09:00 to 16:45.
fn slots() -> impl Iterator<Item = String> {
    (2..=4).flat_map(|day| {
        (9 * 60..17 * 60).step_by(15).map(move |minutes: u32| {
            format!("2026-12-{day:02}T{:02}:{:02}", minutes / 60, minutes % 60)
        })
    })
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

struct ListSlots(Arc<Inner>);

impl UnaryService<ListSlotsRequest> for ListSlots {
    type Response = SlotList;
    type Future = BoxFuture<Result<Response<SlotList>, Status>>;

    fn call(&mut self, _: Request<ListSlotsRequest>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move {
            inner.call_backend().await?;
            Ok(Response::new(SlotList {
                slots: inner.free_slots(),
            }))
        })
    }
}

struct Book(Arc<Inner>);

impl UnaryService<BookRequest> for Book {
    type Response = BookReply;
    type Future = BoxFuture<Result<Response<BookReply>, Status>>;

    fn call(&mut self, request: Request<BookRequest>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move {
            let BookRequest { name, slot } = request.into_inner();
            if name.trim().is_empty() {
                return Err(Status::invalid_argument("name: must not be empty"));
            }
            if !slots().any(|s| s == slot) {
                return Err(Status::invalid_argument(format!(
                    "slot: {slot:?} is not a slot of this centre"
                )));
            }
            if !inner
                .taken
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(slot.clone())
            {
                return Err(Status::already_exists(format!(
                    "slot {slot} is already booked"
                )));
            }
            if let Err(status) = inner.call_backend().await {
                inner
                    .taken
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&slot);
                return Err(status);
            }
            let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
            Ok(Response::new(BookReply { id, slot }))
        })
    }
}

/// `booking.v1.Booking`, routed by hand.
#[derive(Clone)]
struct BookingServer(Arc<Inner>);

impl NamedService for BookingServer {
    const NAME: &'static str = "booking.v1.Booking";
}

impl Service<http::Request<Body>> for BookingServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let inner = self.0.clone();
        match req.uri().path() {
            LIST_SLOTS => Box::pin(async move {
                let mut grpc = GrpcServer::new(ProstCodec::<SlotList, ListSlotsRequest>::default());
                Ok(grpc.unary(ListSlots(inner), req).await)
            }),
            BOOK => Box::pin(async move {
                let mut grpc = GrpcServer::new(ProstCodec::<BookReply, BookRequest>::default());
                Ok(grpc.unary(Book(inner), req).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

struct SetBackend(Arc<Inner>);

impl UnaryService<SetBackendRequest> for SetBackend {
    type Response = BackendStatus;
    type Future = BoxFuture<Result<Response<BackendStatus>, Status>>;

    fn call(&mut self, request: Request<SetBackendRequest>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move {
            let json = request.into_inner().change_json;
            BackendChange::parse(json.as_bytes())
                .and_then(|change| change.apply(&inner.sim))
                .map_err(|err| Status::invalid_argument(err.to_string()))?;
            tracing::info!(state = %backend::describe(inner.sim.condition()), "back end changed");
            Ok(Response::new(BackendStatus {
                status_json: backend::status(&inner.sim).to_string(),
            }))
        })
    }
}

/// `booking.v1.Admin`: ops' control of the simulated back end.
#[derive(Clone)]
struct AdminServer(Arc<Inner>);

impl NamedService for AdminServer {
    const NAME: &'static str = "booking.v1.Admin";
}

impl Service<http::Request<Body>> for AdminServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let inner = self.0.clone();
        match req.uri().path() {
            SET_BACKEND => Box::pin(async move {
                let mut grpc =
                    GrpcServer::new(ProstCodec::<BackendStatus, SetBackendRequest>::default());
                Ok(grpc.unary(SetBackend(inner), req).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
        }
    }
}

/// Starts the server on `listener` with brownout in front of every method
/// (each its own route: `/booking.v1.Booking/ListSlots`, ...).
fn serve(
    policy: &Policy,
    listener: tokio::net::TcpListener,
) -> Result<(Arc<Inner>, tokio::task::JoinHandle<()>), String> {
    let inner = Inner::new().map_err(|err| err.to_string())?;
    let router = Server::builder()
        .layer(BrownoutLayer::from_policy(policy).grpc())
        .add_service(BookingServer(inner.clone()))
        .add_service(AdminServer(inner.clone()));
    let task = tokio::spawn(async move {
        if let Err(err) = router
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
        {
            eprintln!("grpc_booking: server stopped: {err}");
        }
    });
    Ok((inner, task))
}

// ---- the client -------------------------------------------------------------

/// What a call came back with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    Ok,
    /// `UNAVAILABLE` from the handler: the back end refused the call.
    BackendError,
    /// brownout's answer (its `grpc-message` says "request rejected").
    Brownout,
    /// Anything else (a deadline, a broken connection).
    Other,
}

fn pushback_ms(status: &Status) -> Option<u64> {
    status
        .metadata()
        .get("grpc-retry-pushback-ms")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn seen(result: &Result<Response<SlotList>, Status>) -> Seen {
    match result {
        Ok(_) => Seen::Ok,
        Err(status) if status.message().starts_with("request rejected") => Seen::Brownout,
        Err(status) if status.code() == tonic::Code::Unavailable => Seen::BackendError,
        Err(_) => Seen::Other,
    }
}

async fn connect(url: &str) -> Result<GrpcClient<Channel>, String> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|err| format!("{url:?} is not a server URL: {err}"))?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|err| format!("cannot connect to {url}: {err}"))?;
    Ok(GrpcClient::new(channel))
}

async fn list_slots(client: &mut GrpcClient<Channel>) -> Result<Response<SlotList>, Status> {
    client
        .ready()
        .await
        .map_err(|err| Status::unavailable(format!("channel not ready: {err}")))?;
    let mut request = Request::new(ListSlotsRequest {});
    request.set_timeout(DEADLINE);
    client
        .unary(
            request,
            PathAndQuery::from_static(LIST_SLOTS),
            ProstCodec::default(),
        )
        .await
}

async fn set_backend(client: &mut GrpcClient<Channel>, change: &str) -> Result<String, Status> {
    client
        .ready()
        .await
        .map_err(|err| Status::unavailable(format!("channel not ready: {err}")))?;
    let reply: Response<BackendStatus> = client
        .unary(
            Request::new(SetBackendRequest {
                change_json: change.to_owned(),
            }),
            PathAndQuery::from_static(SET_BACKEND),
            ProstCodec::default(),
        )
        .await?;
    Ok(reply.into_inner().status_json)
}

fn describe(result: &Result<Response<SlotList>, Status>) -> String {
    match result {
        Ok(reply) => format!("OK, {} free slots", reply.get_ref().slots.len()),
        Err(status) => {
            let pushback = match pushback_ms(status) {
                Some(ms) => format!(", grpc-retry-pushback-ms: {ms}"),
                None => String::new(),
            };
            format!("{:?}: {}{pushback}", status.code(), status.message())
        }
    }
}

/// `client`: a call every 100 ms, one line each, until ctrl-c.
async fn run_client(url: &str) -> Result<(), String> {
    let mut client = connect(url).await?;
    let start = Instant::now();
    let mut every = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = every.tick() => {}
        }
        let sent = Instant::now();
        let result = list_slots(&mut client).await;
        println!(
            "{:>7.1}s  {:>6.0} ms  {}",
            start.elapsed().as_secs_f64(),
            sent.elapsed().as_secs_f64() * 1000.0,
            describe(&result)
        );
    }
}

/// One second of answers, as the demo prints it.
#[derive(Default)]
struct Second {
    ok: u32,
    backend: u32,
    brownout: u32,
    other: u32,
    pushback: Option<u64>,
    slowest_ms: f64,
}

/// `demo`: server and client in one process; the back end up, down, up.
async fn run_demo(policy: &Policy) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|err| format!("cannot listen on 127.0.0.1: {err}"))?;
    let addr = listener.local_addr().map_err(|err| err.to_string())?;
    let (inner, server) = serve(policy, listener)?;
    let url = format!("http://{addr}");
    println!("booking.v1.Booking on {url}, brownout in front");
    println!(
        "a client calls ListSlots every 50 ms (deadline {}); the back end is up, down from 2 s to 7 s, then up\n",
        humantime::format_duration(DEADLINE)
    );
    let client = connect(&url).await?;

    // The script, on the back end's own clock: down at 2 s, up at 7 s.
    let zero = inner.sim.elapsed();
    inner
        .sim
        .schedule([
            (zero + Duration::from_secs(2), Condition::DownFast),
            (zero + Duration::from_secs(7), Condition::Up),
        ])
        .map_err(|err| err.to_string())?;

    println!("answers received in second t:");
    println!("   t  back end   OK  UNAVAILABLE   UNAVAILABLE   other   pushback   slowest");
    println!("                     (back end)    (brownout)            (ms)       call (ms)");
    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel();
    let start = Instant::now();
    let end = start + Duration::from_secs(12);
    let mut send = tokio::time::interval(Duration::from_millis(50));
    let mut report =
        tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
    let mut second = Second::default();
    let mut totals = [0u32; 4];
    let mut first_brownout: Option<String> = None;
    let mut t = 0;
    let mut outstanding = 0u32;
    let mut condition = inner.sim.condition();
    loop {
        tokio::select! {
            _ = send.tick(), if Instant::now() < end => {
                // Open loop: a call every 50 ms, however long the others take.
                let mut client = client.clone();
                let answers = answers.clone();
                outstanding += 1;
                tokio::spawn(async move {
                    let sent = Instant::now();
                    let result = list_slots(&mut client).await;
                    let _ = answers.send((sent.duration_since(start), sent.elapsed(), result));
                });
            }
            Some((sent, took, result)) = answered.recv() => {
                outstanding -= 1;
                second.slowest_ms = second.slowest_ms.max(took.as_secs_f64() * 1000.0);
                let kind = seen(&result);
                totals[kind as usize] += 1;
                match kind {
                    Seen::Ok => second.ok += 1,
                    Seen::BackendError => second.backend += 1,
                    Seen::Other => second.other += 1,
                    Seen::Brownout => {
                        second.brownout += 1;
                        if let Err(status) = &result {
                            second.pushback = second.pushback.or(pushback_ms(status));
                        }
                        if first_brownout.is_none() {
                            first_brownout = Some(format!(
                                "(sent at t = {:.2}s, answered in {:.1} ms): {}",
                                sent.as_secs_f64(),
                                took.as_secs_f64() * 1000.0,
                                describe(&result)
                            ));
                        }
                    }
                }
            }
            _ = report.tick() => {
                print_second(t, condition, &second);
                second = Second::default();
                condition = inner.sim.condition();
                t += 1;
                // Past the end, wait for the last answers (each within its deadline).
                if Instant::now() >= end && outstanding == 0 {
                    break;
                }
            }
        }
    }
    println!(
        "\n{} calls: {} OK, {} UNAVAILABLE from the back end, {} answered by brownout, {} other",
        totals.iter().sum::<u32>(),
        totals[0],
        totals[1],
        totals[2],
        totals[3]
    );
    if let Some(first) = first_brownout {
        println!("brownout's first answer {first}");
    }
    server.abort();
    Ok(())
}

/// One line of the demo's table: what came back during second `t`.
fn print_second(t: u64, condition: Condition, s: &Second) {
    let pushback = s
        .pushback
        .map_or_else(|| "-".to_owned(), |ms| ms.to_string());
    println!(
        "{t:>3}s  {:<9} {:>3}  {:>11}   {:>11}   {:>5}   {:>8}   {:>7.0}",
        backend::describe(condition),
        s.ok,
        s.backend,
        s.brownout,
        s.other,
        pushback,
        s.slowest_ms
    );
}

// ---- main -------------------------------------------------------------------

fn policy() -> Result<(PathBuf, Policy), String> {
    let path = std::env::var_os("BOOKING_POLICY")
        .map_or_else(|| PathBuf::from(DEFAULT_POLICY), PathBuf::from);
    let policy = Policy::from_path(&path).map_err(|err| err.to_string())?;
    Ok((path, policy))
}

async fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        None | Some("serve") => {
            let (path, policy) = policy()?;
            let addr = SocketAddr::from(([127, 0, 0, 1], server::port(50051)?));
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|err| format!("cannot listen on {addr}: {err}"))?;
            let addr = listener.local_addr().map_err(|err| err.to_string())?;
            let (_, server) = serve(&policy, listener)?;
            tracing::info!(policy = %path.display(), "brownout policy loaded");
            println!("listening on http://{addr}");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = server => {}
            }
            Ok(())
        }
        Some("demo") => run_demo(&policy()?.1).await,
        Some("client") => run_client(args.get(1).map_or(DEFAULT_URL, String::as_str)).await,
        Some("admin") => {
            let (url, change) = match &args[1..] {
                [change] if !change.starts_with("http") => (DEFAULT_URL, change),
                [url, change] => (url.as_str(), change),
                _ => {
                    return Err("usage: admin [URL] JSON, e.g. admin '{\"state\":\"down\"}'".into());
                }
            };
            let mut client = connect(url).await?;
            let status = set_backend(&mut client, change)
                .await
                .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
            println!("{status}");
            Ok(())
        }
        Some(other) => Err(format!(
            "unknown mode {other:?}: use serve (the default), demo, client [URL] or admin [URL] JSON"
        )),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    server::init_tracing();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("grpc_booking: {err}");
            ExitCode::FAILURE
        }
    }
}
