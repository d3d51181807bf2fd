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
//! brownout sits in front of every method, each its own route with its
//! own breaker: `/booking.v1.Booking/ListSlots`, `/booking.v1.Booking/Book`,
//! `/booking.v1.Booking/WatchSlots` (a server stream: one request for
//! brownout, its outcome read from the trailers) and the admin method too.
//! Its answers carry the gRPC code brownout gives each reason
//! ([`GrpcUnavailable::code`], read here as a [`tonic::Code`]):
//! `UNAVAILABLE` for an open breaker or maintenance, `RESOURCE_EXHAUSTED`
//! when shed, `DEADLINE_EXCEEDED` when the caller's own deadline passed.
//!
//! The same port answers HTTP/1.1 for ops, as the HTTP examples do:
//!
//! ```text
//! curl -s localhost:50051/metrics                 # Prometheus text
//! curl -s localhost:50051/admin/health; echo      # every route's breaker, limit, waiting
//! curl -s localhost:50051/admin/mode -d '{"route":"/booking.v1.Booking/Book","mode":"forced_open"}'
//! curl -s localhost:50051/admin/backend -d '{"state":"down"}'; echo
//! ```
//!
//! The messages, the servers and the clients are generated from
//! `proto/booking.proto` (tonic-prost-build, with protox: no protoc) into
//! `examples/grpc/generated/booking.v1.rs`, which is checked in, so that
//! this example builds with cargo alone; `tests/proto_codegen.rs` says when
//! it is stale and how to generate it again.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use brownout::fallback::GrpcUnavailable;
use brownout::sim::{Condition, SimBackend, SimConfigError, SimHandle};
use brownout::{BrownoutLayer, Policy, PolicyHandle, Reason};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};
use tower::{Layer, ServiceExt};

#[path = "shared/backend.rs"]
mod backend;
#[path = "shared/server.rs"]
pub mod server;

/// The messages, servers and clients of `proto/booking.proto`, generated.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    include!("grpc/generated/booking.v1.rs");
}

use backend::{BackendChange, CALL_TIMEOUT};
use proto::admin_client::AdminClient;
use proto::admin_server::{Admin, AdminServer};
use proto::booking_client::BookingClient;
use proto::booking_server::{Booking, BookingServer};
use proto::{
    BackendStatus, BookReply, BookRequest, ListSlotsRequest, SetBackendRequest, SlotList,
    WatchSlotsRequest,
};

pub const DEFAULT_POLICY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/examples/policies/booking.toml"
);
const DEFAULT_URL: &str = "http://127.0.0.1:50051";
/// The client's deadline (`grpc-timeout`): longer than the waiting room's
/// `max_wait` (2 s in booking.toml), so brownout answers first.
const DEADLINE: Duration = Duration::from_secs(3);
/// At most this many lists from one `WatchSlots`.
const MAX_UPDATES: u32 = 10;

// ---- the server -------------------------------------------------------------

/// The passport office: the simulated central server and the bookings.
/// Cheap to clone (one `Arc`).
#[derive(Clone)]
pub struct Office(Arc<Inner>);

struct Inner {
    backend: SimBackend,
    sim: SimHandle,
    taken: Mutex<BTreeSet<String>>,
    next_id: AtomicU64,
}

impl Office {
    fn new() -> Result<Self, SimConfigError> {
        let backend = backend::central_server().build()?;
        Ok(Self(Arc::new(Inner {
            sim: backend.handle(),
            backend,
            taken: Mutex::new(BTreeSet::new()),
            next_id: AtomicU64::new(1),
        })))
    }

    /// The simulated central server's controls.
    pub fn sim(&self) -> &SimHandle {
        &self.0.sim
    }

    /// One call to the central server, given up after [`CALL_TIMEOUT`].
    async fn call_backend(&self) -> Result<(), Status> {
        match tokio::time::timeout(CALL_TIMEOUT, self.0.backend.clone().oneshot(())).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(Status::unavailable(format!(
                "the central booking server refused the call: {err}"
            ))),
            Err(_) => Err(Status::deadline_exceeded(
                "the central booking server did not answer within 3s",
            )),
        }
    }

    /// The free slots whose day starts with `day` (every one for `""`).
    fn free_slots(&self, day: &str) -> Vec<String> {
        let taken = self.0.taken.lock().unwrap_or_else(PoisonError::into_inner);
        slots()
            .filter(|slot| slot.starts_with(day) && !taken.contains(slot))
            .collect()
    }

    fn take(&self, slot: &str) -> bool {
        let mut taken = self.0.taken.lock().unwrap_or_else(PoisonError::into_inner);
        taken.insert(slot.to_owned())
    }

    fn give_back(&self, slot: &str) {
        let mut taken = self.0.taken.lock().unwrap_or_else(PoisonError::into_inner);
        taken.remove(slot);
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

#[tonic::async_trait]
impl Booking for Office {
    async fn list_slots(&self, _: Request<ListSlotsRequest>) -> Result<Response<SlotList>, Status> {
        self.call_backend().await?;
        Ok(Response::new(SlotList {
            slots: self.free_slots(""),
        }))
    }

    async fn book(&self, request: Request<BookRequest>) -> Result<Response<BookReply>, Status> {
        let BookRequest { name, slot } = request.into_inner();
        if name.trim().is_empty() {
            return Err(Status::invalid_argument("name: must not be empty"));
        }
        if !slots().any(|s| s == slot) {
            return Err(Status::invalid_argument(format!(
                "slot: {slot:?} is not a slot of this office"
            )));
        }
        if !self.take(&slot) {
            return Err(Status::already_exists(format!(
                "slot {slot} is already booked"
            )));
        }
        if let Err(status) = self.call_backend().await {
            self.give_back(&slot);
            return Err(status);
        }
        let id = self.0.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(Response::new(BookReply { id, slot }))
    }

    type WatchSlotsStream = ReceiverStream<Result<SlotList, Status>>;

    async fn watch_slots(
        &self,
        request: Request<WatchSlotsRequest>,
    ) -> Result<Response<Self::WatchSlotsStream>, Status> {
        let WatchSlotsRequest { day, updates } = request.into_inner();
        if updates > MAX_UPDATES {
            return Err(Status::invalid_argument(format!(
                "updates: {updates} is more than {MAX_UPDATES}"
            )));
        }
        if !slots().any(|slot| slot.starts_with(&day)) {
            return Err(Status::invalid_argument(format!(
                "day: {day:?} is not a day of this office (2026-12-02 to 2026-12-04)"
            )));
        }
        let (lists, stream) = mpsc::channel(1);
        let office = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            for _ in 0..updates.max(1) {
                every.tick().await;
                let list = match office.call_backend().await {
                    Ok(()) => Ok(SlotList {
                        slots: office.free_slots(&day),
                    }),
                    Err(status) => Err(status),
                };
                let last = list.is_err();
                // An error ends the stream; so does a client that hung up.
                if lists.send(list).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

#[tonic::async_trait]
impl Admin for Office {
    async fn set_backend(
        &self,
        request: Request<SetBackendRequest>,
    ) -> Result<Response<BackendStatus>, Status> {
        let json = request.into_inner().change_json;
        BackendChange::parse(json.as_bytes())
            .and_then(|change| change.apply(self.sim()))
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        tracing::info!(state = %backend::describe(self.sim().condition()), "back end changed");
        Ok(Response::new(BackendStatus {
            status_json: backend::status(self.sim()).to_string(),
        }))
    }
}

/// The service, ready to serve, and its handles.
pub struct App {
    /// gRPC (`booking.v1.Booking`, `booking.v1.Admin`) behind brownout, and
    /// ops' HTTP routes beside it (`/metrics`, `/admin/health`,
    /// `/admin/mode`, `/admin/backend`), outside brownout.
    pub router: axum::Router,
    /// The office and its simulated central server.
    pub office: Office,
    /// The brownout stack in front of the gRPC methods.
    pub policy: PolicyHandle,
}

/// Builds the service. Call it inside a tokio runtime, after pausing time
/// in tests and after installing the metrics recorder in `main`.
///
/// brownout wraps tonic's router, not each service: it sees each call
/// before routing, so each method is a route of its own, named by its
/// path. Ops' routes are matched first and never reach it.
pub fn app(policy: &Policy, metrics: Option<PrometheusHandle>) -> Result<App, SimConfigError> {
    let office = Office::new()?;
    let stack = BrownoutLayer::from_policy(policy).grpc();
    let handle = stack.handle();
    let grpc = Routes::new(BookingServer::new(office.clone()))
        .add_service(AdminServer::new(office.clone()))
        .prepare();
    let router = server::ops(server::Ops {
        name: "grpc_booking",
        backend: "central booking server",
        sim: office.sim().clone(),
        metrics,
        policy: Some(handle.clone()),
    })
    .fallback_service(stack.layer(grpc));
    Ok(App {
        router,
        office,
        policy: handle,
    })
}

/// Serves `router` on `listener`: gRPC over HTTP/2, and HTTP/1.1 for ops'
/// routes (`curl`).
fn serve(router: axum::Router, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
    let mut server = Server::builder().accept_http1(true);
    let router = server.add_routes(Routes::from(router));
    tokio::spawn(async move {
        if let Err(err) = router
            .serve_with_incoming(TcpIncoming::from(listener))
            .await
        {
            eprintln!("grpc_booking: server stopped: {err}");
        }
    })
}

// ---- the client -------------------------------------------------------------

/// What a call came back with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    Ok,
    /// `UNAVAILABLE` from the handler: the back end refused the call.
    BackendError,
    /// brownout's answer.
    Brownout,
    /// Anything else (a deadline, a broken connection).
    Other,
}

/// The gRPC code brownout answers `reason` with: the library's one mapping
/// ([`GrpcUnavailable::code`]), as tonic's [`tonic::Code`].
pub fn code_of(reason: Reason) -> tonic::Code {
    tonic::Code::from(GrpcUnavailable::code(reason).as_i32())
}

/// The reason of brownout's answer, if `status` is one: its
/// `grpc-message` names the reason (`request rejected (open): ...`) and
/// its code is the one brownout gives that reason. (Inside a maintenance
/// window with a `message`, `grpc-message` is that message instead.)
pub fn brownout_reason(status: &Status) -> Option<Reason> {
    let rest = status.message().strip_prefix("request rejected (")?;
    let (name, _) = rest.split_once("): ")?;
    let reason = Reason::ALL.into_iter().find(|r| r.as_str() == name)?;
    (status.code() == code_of(reason)).then_some(reason)
}

pub fn pushback_ms(status: &Status) -> Option<u64> {
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
        Err(status) if brownout_reason(status).is_some() => Seen::Brownout,
        Err(status) if status.code() == tonic::Code::Unavailable => Seen::BackendError,
        Err(_) => Seen::Other,
    }
}

async fn connect(url: &str) -> Result<Channel, String> {
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|err| format!("{url:?} is not a server URL: {err}"))?;
    endpoint
        .connect()
        .await
        .map_err(|err| format!("cannot connect to {url}: {err}"))
}

async fn list_slots(client: &mut BookingClient<Channel>) -> Result<Response<SlotList>, Status> {
    let mut request = Request::new(ListSlotsRequest {});
    request.set_timeout(DEADLINE);
    client.list_slots(request).await
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
    let mut client = BookingClient::new(connect(url).await?);
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
    let app = app(policy, None).map_err(|err| err.to_string())?;
    let sim = app.office.sim().clone();
    let server = serve(app.router, listener);
    let url = format!("http://{addr}");
    println!("booking.v1.Booking on {url}, brownout in front");
    println!(
        "a client calls ListSlots every 50 ms (deadline {}); the back end is up, down from 2 s to 7 s, then up\n",
        humantime::format_duration(DEADLINE)
    );
    let client = BookingClient::new(connect(&url).await?);

    // The script, on the back end's own clock: down at 2 s, up at 7 s.
    let zero = sim.elapsed();
    sim.schedule([
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
    let mut by_reason = BTreeMap::<Reason, u32>::new();
    let mut t = 0;
    let mut outstanding = 0u32;
    let mut condition = sim.condition();
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
                            if let Some(reason) = brownout_reason(status) {
                                *by_reason.entry(reason).or_default() += 1;
                            }
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
                condition = sim.condition();
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
    for (reason, n) in &by_reason {
        println!("  brownout, {reason}: {n} answered {:?}", code_of(*reason));
    }
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
            let metrics = server::install_metrics()?;
            let app = app(&policy, Some(metrics)).map_err(|err| err.to_string())?;
            let server = serve(app.router, listener);
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
            let mut client = AdminClient::new(connect(url).await?);
            let request = Request::new(SetBackendRequest {
                change_json: change.clone(),
            });
            let reply = client
                .set_backend(request)
                .await
                .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
            println!("{}", reply.into_inner().status_json);
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
