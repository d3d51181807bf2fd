//! Durable deferral in the drill (a scenario's `[defer]` section): the
//! brownout stack's fallback defers what it rejects for the `when` reasons
//! into a real embedded store (redb), and the crate's own replayer
//! ([`Deferral::replay`]) drains it through the same stack as live
//! traffic once the back end is back. At the end every deferred request is
//! looked up in the store by its ticket: served, failed, expired or still
//! pending; one the store does not know is lost.
//!
//! Two things make the real store and replayer fit the drill:
//!
//! - The drill's stack is `Service<Call>` on a current-thread runtime with
//!   `Rc` state; the replayer wants a `Send` HTTP service. [`ReplayPort`]
//!   is that service: it turns each replayed request back into a `Call`
//!   and hands it over a channel to a task on the drill's `LocalSet`,
//!   which sends it through the stack and hands the answer back.
//! - The embedded store runs each operation with `spawn_blocking`. Tokio
//!   does not auto-advance paused time while a blocking task runs, but
//!   other tasks of the same virtual instant would run meanwhile, in an
//!   order set by wall-clock timing. [`InlineStore`] waits for each
//!   operation on the runtime's thread instead, so that a seed always
//!   gives the same figures. Every append is still a transaction synced to
//!   disk; the store lives on tmpfs (`/dev/shm`) when the machine has one,
//!   so that a sync costs what it costs in memory (as in
//!   `tests/defer_drain.rs`): two days of arrivals must take seconds.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, SystemTime};

use brownout::clock::Clock;
use brownout::defer::{
    Appended, Claimed, DeferStore, Deferral, Deferred, EmbeddedStore, Load, Outcome, ReplayHandle,
    Status, StoreConfig, StoreFuture, Ticket,
};
use brownout::priority::{Classes, Priority};
use brownout::{Reason, Rejected};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tower::{BoxError, Service, ServiceExt};

use super::run::{Call, Reply};
use super::scenario::{DeferPlan, Plan};

/// The route the drill's requests take (the composed stack's default).
const ROUTE: &str = brownout::stack::DEFAULT_ROUTE;

/// Waits for `future` on this thread, without yielding to the runtime.
///
/// The future runs outside tokio's cooperative budget: a task that has
/// used its budget gets its wake-up deferred until it yields to the
/// runtime, which a thread parked here never does.
fn wait_here<T>(future: impl Future<Output = T>) -> T {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(tokio::task::unconstrained(future));
    loop {
        if let Poll::Ready(value) = future.as_mut().poll(&mut cx) {
            return value;
        }
        std::thread::park();
    }
}

/// The embedded store with each operation waited for inline (see the
/// module's docs): the same store, the same transactions and syncs.
pub struct InlineStore(EmbeddedStore);

impl DeferStore for InlineStore {
    fn now(&self) -> SystemTime {
        self.0.now()
    }
    fn append(&self, request: Deferred) -> StoreFuture<'_, Appended> {
        Box::pin(std::future::ready(wait_here(self.0.append(request))))
    }
    fn claim(&self) -> StoreFuture<'_, Option<Claimed>> {
        Box::pin(std::future::ready(wait_here(self.0.claim())))
    }
    fn release(&self, ticket: Ticket) -> StoreFuture<'_, ()> {
        Box::pin(std::future::ready(wait_here(self.0.release(ticket))))
    }
    fn complete(&self, ticket: Ticket, outcome: Outcome) -> StoreFuture<'_, bool> {
        Box::pin(std::future::ready(wait_here(
            self.0.complete(ticket, outcome),
        )))
    }
    fn expire(&self) -> StoreFuture<'_, u64> {
        Box::pin(std::future::ready(wait_here(self.0.expire())))
    }
    fn status(&self, ticket: Ticket) -> StoreFuture<'_, Option<Status>> {
        Box::pin(std::future::ready(wait_here(self.0.status(ticket))))
    }
    fn ticket_for_key(&self, key: String) -> StoreFuture<'_, Option<Ticket>> {
        Box::pin(std::future::ready(wait_here(self.0.ticket_for_key(key))))
    }
    fn pending(&self) -> StoreFuture<'_, Vec<u64>> {
        Box::pin(std::future::ready(wait_here(self.0.pending())))
    }
    fn oldest(&self) -> StoreFuture<'_, Option<SystemTime>> {
        Box::pin(std::future::ready(wait_here(self.0.oldest())))
    }
}

/// A deferred request as the drill remembers it.
#[derive(Debug, Clone)]
struct Kept {
    class: u8,
    /// When the store stamped it, ms since the epoch (the claim order's key
    /// within a class).
    arrived_ms: u64,
    ticket: Ticket,
    /// Deferred before the back end was back: part of the backlog.
    backlog: bool,
}

/// What the fallback defers, shared with the stack (which must be `Send`).
#[derive(Default)]
struct Book {
    /// By the drill's id; `None` for an id whose append did not write.
    kept: Vec<Option<Kept>>,
    /// Rejections not deferred because the store was full.
    full: u64,
    /// Appends the store failed (answered as plain rejections).
    failed: u64,
}

/// The fallback's side of deferral: which rejections defer, and the store.
pub struct Deferring {
    store: Arc<InlineStore>,
    reasons: Vec<Reason>,
    classes: Vec<bool>,
    recovery: SystemTime,
    book: Mutex<Book>,
}

impl Deferring {
    /// Defers `call`, rejected as `rejected`, when the scenario says so:
    /// `Some(Reply::Deferred)` once the store has it durably; `None` for
    /// the ordinary fallback (not deferrable, a replay, or the store full).
    pub async fn defer(&self, rejected: &Rejected, call: &Call) -> Option<Reply> {
        let deferrable = !call.replay
            && self.reasons.contains(&rejected.reason())
            && self.classes.get(usize::from(call.class)) == Some(&true);
        if !deferrable {
            return None;
        }
        // The id is taken before the append, so that two deferrals never
        // share one, whatever the store's timing.
        let id = {
            let mut book = self.lock();
            book.kept.push(None);
            book.kept.len() - 1
        };
        let arrived = self.store.now();
        let request = Deferred {
            priority: call.class,
            method: "POST".to_owned(),
            uri: "/applications".to_owned(),
            headers: Vec::new(),
            // The drill's own id: the replay port finds the request by it.
            body: Bytes::from(id.to_string()),
            arrived,
            idempotency_key: None,
        };
        let appended = self.store.append(request).await;
        let mut book = self.lock();
        match appended {
            Ok(Appended::New(ticket)) => {
                book.kept[id] = Some(Kept {
                    class: call.class,
                    arrived_ms: ms(arrived),
                    ticket,
                    backlog: arrived < self.recovery,
                });
                Some(Reply::Deferred)
            }
            Ok(Appended::Full) => {
                book.full += 1;
                None
            }
            Ok(_) | Err(_) => {
                book.failed += 1;
                None
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The claim-order key of request `id`, and whether it is backlog.
    fn key(&self, id: usize) -> Option<((u8, u64), bool)> {
        let book = self.lock();
        book.kept
            .get(id)
            .and_then(Option::as_ref)
            .map(|k| ((k.class, k.arrived_ms), k.backlog))
    }
}

fn ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A replayed request on its way to the drill's stack.
pub struct ReplayJob {
    id: usize,
    class: u8,
    answer: oneshot::Sender<Result<Reply, BoxError>>,
}

/// The HTTP service the crate's replayer sends the backlog to: each
/// request becomes a `Call` for the drill's stack (see the module docs).
#[derive(Clone)]
pub struct ReplayPort {
    jobs: mpsc::UnboundedSender<ReplayJob>,
}

impl Service<Request<Full<Bytes>>> for ReplayPort {
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> Self::Future {
        let jobs = self.jobs.clone();
        Box::pin(async move {
            let class = request
                .extensions()
                .get::<Priority>()
                .map_or(0, |p| p.rank());
            let body = request.into_body().collect().await?.to_bytes();
            let id: usize = std::str::from_utf8(&body)
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or("a replayed body that is not a drill id")?;
            let (answer, answered) = oneshot::channel();
            jobs.send(ReplayJob { id, class, answer })
                .map_err(|_| "the drill has stopped")?;
            match answered.await.map_err(|_| "the drill dropped a replay")? {
                Ok(Reply::Served(_)) => Ok(Response::new(Full::from("served"))),
                // brownout said "not yet": the replayer puts it back and
                // waits as the rejection's hint says.
                Ok(Reply::Fallback(rejected)) => Err(Box::new(rejected) as BoxError),
                Ok(Reply::Deferred) => Err("a replay was deferred again".into()),
                Err(err) => Err(err),
            }
        })
    }
}

/// What the drill saw of the replays, on its own thread.
#[derive(Debug, Default)]
pub struct ReplayLog {
    /// Sends through the stack (each is one request to brownout).
    pub attempts: u64,
    /// Answers brownout or the back end gave instead of serving, by why.
    pub not_served: BTreeMap<String, u64>,
    /// Served by the back end, by class rank.
    pub served_by_class: Vec<u64>,
    /// Ids sent at least once.
    first_sent: Vec<bool>,
    /// Backlog requests sent for the first time, and of those, how many
    /// came after a backlog request that should have come later (a more
    /// important class, or older within the class, sent before it).
    pub backlog_first_sends: u64,
    pub order_violations: u64,
    highest_key: Option<(u8, u64)>,
}

/// The drain window: from the back end's return until the store is empty.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DrainWindow {
    /// Admissions to the back end while draining (live and replayed).
    pub admissions: u64,
    /// Of which replays.
    pub replay_admissions: u64,
    /// Most calls in flight to the back end at once, the limit then, and
    /// the most replays in flight at once.
    pub peak_inflight: u64,
    pub limit_at_peak: Option<u32>,
    pub peak_replays_inflight: u64,
    /// Admissions that took the calls in flight above the limit.
    pub over_limit_admissions: u64,
    /// The most calls in flight above the limit at an admission (0: never
    /// above).
    pub max_over_limit: u64,
}

/// What the stack's admissions tell the drain window: shared by the
/// drill's in-flight tracking and the drain's watch.
#[derive(Clone, Default)]
pub struct DrainWatch {
    /// From the back end's return until the store is empty.
    draining: Rc<Cell<bool>>,
    window: Rc<RefCell<DrainWindow>>,
}

impl DrainWatch {
    /// An admission to the back end, with the calls in flight after it
    /// (all, and replays) and the limit: counted while the drain is under
    /// way.
    pub fn admitted(&self, replay: bool, inflight: u64, replays: u64, limit: Option<u32>) {
        if !self.draining.get() {
            return;
        }
        let mut window = self.window.borrow_mut();
        window.admissions += 1;
        if replay {
            window.replay_admissions += 1;
        }
        if inflight > window.peak_inflight {
            window.peak_inflight = inflight;
            window.limit_at_peak = limit;
        }
        window.peak_replays_inflight = window.peak_replays_inflight.max(replays);
        if let Some(limit) = limit {
            let over = inflight.saturating_sub(u64::from(limit));
            if over > 0 {
                window.over_limit_admissions += 1;
                window.max_over_limit = window.max_over_limit.max(over);
            }
        }
    }
}

/// Deferral's part of a run: started before the first arrival, finished
/// after the last.
pub struct DeferRun {
    deferring: Arc<Deferring>,
    log: Rc<RefCell<ReplayLog>>,
    pub watch: DrainWatch,
    drained_at: Rc<Cell<Option<Instant>>>,
    replayer: Rc<RefCell<Option<ReplayHandle>>>,
    store_dir: PathBuf,
    on_tmpfs: bool,
    recovery: Instant,
    recovery_at_s: f64,
    classes: Classes,
}

/// Where the store goes: tmpfs when there is one, else the temp dir.
fn store_dir(seed: u64) -> (PathBuf, bool) {
    let name = format!(
        "brownout-drill-defer-{}-{seed}-{:?}",
        std::process::id(),
        std::thread::current().id()
    )
    .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "");
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        (shm.join(name), true)
    } else {
        (std::env::temp_dir().join(name), false)
    }
}

/// Opens a fresh store for `plan`'s `[defer]` section, on `clock`.
pub fn open(
    plan: &Plan,
    defer: &DeferPlan,
    clock: Clock,
    wall_start: SystemTime,
) -> Result<(Arc<Deferring>, PathBuf, bool), String> {
    let (dir, on_tmpfs) = store_dir(plan.seed);
    // A run killed half-way leaves its store; never read a stale one.
    let _ = std::fs::remove_dir_all(&dir);
    let config = StoreConfig {
        max_pending: defer.policy.max_pending,
        max_age: defer.policy.max_age,
        claim_after: defer.policy.claim_after,
        keep_finished: defer.policy.keep_finished,
        classes: u8::try_from(defer.classes.len()).unwrap_or(u8::MAX),
        clock,
    };
    let store =
        EmbeddedStore::open(&dir, config).map_err(|err| format!("the deferral store: {err}"))?;
    let reasons = Reason::ALL
        .into_iter()
        .filter(|r| defer.policy.when.iter().any(|w| w == r.as_str()))
        .collect();
    let deferring = Arc::new(Deferring {
        store: Arc::new(InlineStore(store)),
        reasons,
        classes: defer.classes.clone(),
        recovery: wall_start + defer.recovery_start(plan),
        book: Mutex::new(Book::default()),
    });
    Ok((deferring, dir, on_tmpfs))
}

impl DeferRun {
    /// Starts the crate's replayer over `svc` (the drill's brownout stack)
    /// once the back end is back, and the watch on the drain; `load` reads
    /// the stack's limit and calls in flight.
    ///
    /// The replayer starts at the recovery, not at the first deferral:
    /// through an outage it would probe with one replay every
    /// [`MAX_BACKOFF`](brownout::defer::MAX_BACKOFF) at most (some 17,000
    /// claims and releases over two days), and the backlog's first sends
    /// would mix with deferrals still arriving, which the order check
    /// (first sends in priority order) cannot tell from disorder. What it
    /// does from the recovery on is what the drill measures.
    #[allow(clippy::too_many_arguments)]
    pub fn start<S>(
        plan: &Plan,
        defer: &DeferPlan,
        policy: &brownout::Policy,
        opened: (Arc<Deferring>, PathBuf, bool),
        svc: S,
        load: impl Fn() -> Option<Load> + Send + Sync + 'static,
        start: Instant,
        deadline_of: Rc<dyn Fn(Instant) -> Duration>,
    ) -> Self
    where
        S: Service<Call, Response = Reply, Error = BoxError> + Clone + 'static,
    {
        let (deferring, store_dir, on_tmpfs) = opened;
        let mut route_policy = defer.policy.clone();
        route_policy.path = store_dir.display().to_string();
        let store: Arc<dyn DeferStore> = deferring.store.clone();
        let deferral = Deferral::empty(policy).with_store(ROUTE, route_policy, store);
        let log = Rc::new(RefCell::new(ReplayLog {
            served_by_class: vec![0; defer.classes.len()],
            ..ReplayLog::default()
        }));
        let (jobs, incoming) = mpsc::unbounded_channel();
        tokio::task::spawn_local(serve_replays(
            incoming,
            svc,
            log.clone(),
            deferring.clone(),
            deadline_of,
        ));
        // The replayer starts when the back end is back (see `start`'s docs).
        let recovery = start + defer.recovery_start(plan);
        let replayer = Rc::new(RefCell::new(None));
        let started = replayer.clone();
        let port = ReplayPort { jobs };
        tokio::task::spawn_local(async move {
            tokio::time::sleep_until(recovery).await;
            if let Some(route) = deferral.route(ROUTE) {
                *started.borrow_mut() = Some(deferral.replay(route, port, load));
            }
        });
        let watch = DrainWatch::default();
        let drained_at = Rc::new(Cell::new(None));
        tokio::task::spawn_local(watch_drain(
            deferring.clone(),
            recovery,
            start + plan.total,
            watch.draining.clone(),
            drained_at.clone(),
        ));
        Self {
            deferring,
            log,
            watch,
            drained_at,
            replayer,
            store_dir,
            on_tmpfs,
            recovery,
            recovery_at_s: defer.recovery_start(plan).as_secs_f64(),
            classes: Classes::from_policy(&policy.priority),
        }
    }

    /// Stops the replayer, reads every deferred request's end from the
    /// store, and removes the store.
    pub async fn finish(self) -> Result<DeferFigures, String> {
        let replayer = self.replayer.borrow_mut().take();
        if let Some(replayer) = replayer {
            replayer.stop().await;
        }
        let kept: Vec<Kept> = self
            .deferring
            .lock()
            .kept
            .iter()
            .flatten()
            .cloned()
            .collect();
        let (full, failed_appends) = {
            let book = self.deferring.lock();
            (book.full, book.failed)
        };
        let classes = self.log.borrow().served_by_class.len();
        let name = |rank: usize| self.classes.name(Priority::new(rank as u8)).to_owned();
        let mut ends = Ends::new(classes);
        for k in &kept {
            let status = self
                .deferring
                .store
                .status(k.ticket.clone())
                .await
                .map_err(|err| format!("the deferral store: {err}"))?;
            let rank = usize::from(k.class);
            let slot = match status {
                Some(Status::Done(Outcome::Served { .. })) => &mut ends.replayed,
                Some(Status::Done(Outcome::Failed(_))) => &mut ends.failed,
                Some(Status::Done(Outcome::Expired)) => &mut ends.expired,
                Some(Status::Pending { .. }) => &mut ends.pending,
                None => &mut ends.lost,
            };
            slot[rank] += 1;
            ends.deferred[rank] += 1;
            if k.backlog {
                ends.backlog += 1;
            }
        }
        let pending_in_store: u64 = self
            .deferring
            .store
            .pending()
            .await
            .map_err(|err| format!("the deferral store: {err}"))?
            .iter()
            .sum();
        let by_name = |counts: &[u64]| -> BTreeMap<String, u64> {
            counts
                .iter()
                .enumerate()
                .filter(|(rank, n)| **n > 0 || self.deferring.classes[*rank])
                .map(|(rank, n)| (name(rank), *n))
                .collect()
        };
        let log = self.log.borrow();
        let sum = |v: &[u64]| v.iter().sum::<u64>();
        let deferred = sum(&ends.deferred);
        let replayed = sum(&ends.replayed);
        let failed = sum(&ends.failed);
        let expired = sum(&ends.expired);
        let pending = sum(&ends.pending);
        let lost = sum(&ends.lost);
        let drained_after_s = self
            .drained_at
            .get()
            .map(|at| at.saturating_duration_since(self.recovery).as_secs_f64());
        let figures = DeferFigures {
            store: if self.on_tmpfs {
                "embedded (redb), every append synced, on tmpfs".to_owned()
            } else {
                "embedded (redb), every append synced, in the temp dir".to_owned()
            },
            deferred_classes: (0..classes)
                .filter(|&rank| self.deferring.classes[rank])
                .map(name)
                .collect(),
            deferred,
            backlog: ends.backlog,
            deferred_by_class: by_name(&ends.deferred),
            refused_full: full,
            append_failures: failed_appends,
            replayed,
            replayed_by_class: by_name(&ends.replayed),
            failed,
            expired,
            expired_by_class: by_name(&ends.expired),
            pending,
            pending_in_store,
            lost,
            replay_attempts: log.attempts,
            replay_not_served: log.not_served.clone(),
            replay_served_seen: sum(&log.served_by_class),
            backlog_first_sends: log.backlog_first_sends,
            order_violations: log.order_violations,
            recovery_at_s: self.recovery_at_s,
            drained_after_s,
            drain: self.watch.window.borrow().clone(),
            live: None,
        };
        drop(log);
        drop(self.deferring);
        let _ = std::fs::remove_dir_all(&self.store_dir);
        Ok(figures)
    }
}

/// Every deferred request's end, by class rank.
struct Ends {
    deferred: Vec<u64>,
    replayed: Vec<u64>,
    failed: Vec<u64>,
    expired: Vec<u64>,
    pending: Vec<u64>,
    lost: Vec<u64>,
    backlog: u64,
}

impl Ends {
    fn new(classes: usize) -> Self {
        Self {
            deferred: vec![0; classes],
            replayed: vec![0; classes],
            failed: vec![0; classes],
            expired: vec![0; classes],
            pending: vec![0; classes],
            lost: vec![0; classes],
            backlog: 0,
        }
    }
}

/// Sends each replayed request through the drill's stack, on its thread.
async fn serve_replays<S>(
    mut incoming: mpsc::UnboundedReceiver<ReplayJob>,
    svc: S,
    log: Rc<RefCell<ReplayLog>>,
    deferring: Arc<Deferring>,
    deadline_of: Rc<dyn Fn(Instant) -> Duration>,
) where
    S: Service<Call, Response = Reply, Error = BoxError> + Clone + 'static,
{
    while let Some(job) = incoming.recv().await {
        {
            let mut log = log.borrow_mut();
            log.attempts += 1;
            if log.first_sent.len() <= job.id {
                log.first_sent.resize(job.id + 1, false);
            }
            if !log.first_sent[job.id] {
                log.first_sent[job.id] = true;
                if let Some((key, true)) = deferring.key(job.id) {
                    log.backlog_first_sends += 1;
                    if log.highest_key.is_some_and(|highest| key < highest) {
                        log.order_violations += 1;
                    }
                    log.highest_key = Some(log.highest_key.map_or(key, |h| h.max(key)));
                }
            }
        }
        let now = Instant::now();
        let call = Call {
            class: job.class,
            deadline: now + deadline_of(now),
            replay: true,
        };
        let svc = svc.clone();
        let log = log.clone();
        tokio::task::spawn_local(async move {
            let answer = svc.oneshot(call).await;
            {
                let mut log = log.borrow_mut();
                let why = match &answer {
                    Ok(Reply::Served(_)) => None,
                    Ok(Reply::Fallback(rejected)) => Some(rejected.reason().as_str().to_owned()),
                    Ok(Reply::Deferred) => Some("deferred".to_owned()),
                    Err(err) => Some(super::run::why(err).as_str().to_owned()),
                };
                match why {
                    None => {
                        if let Some(n) = log.served_by_class.get_mut(usize::from(job.class)) {
                            *n += 1;
                        }
                    }
                    Some(why) => *log.not_served.entry(why).or_default() += 1,
                }
            }
            let _ = job.answer.send(answer);
        });
    }
}

/// From `recovery` on, looks at the store every 100 ms of virtual time
/// until it is empty: the drain's end.
async fn watch_drain(
    deferring: Arc<Deferring>,
    recovery: Instant,
    end: Instant,
    draining: Rc<Cell<bool>>,
    drained_at: Rc<Cell<Option<Instant>>>,
) {
    tokio::time::sleep_until(recovery).await;
    draining.set(true);
    while Instant::now() < end {
        match deferring.store.pending().await {
            Ok(pending) if pending.iter().all(|&n| n == 0) => {
                drained_at.set(Some(Instant::now()));
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    draining.set(false);
}

/// Live traffic in the drain window, for one stack.
#[derive(Debug, Clone, Serialize)]
pub struct LiveInWindow {
    pub offered: u64,
    pub served: u64,
    pub served_ratio: Option<f64>,
}

/// Live traffic while the backlog drained, brownout against the baseline
/// over the same seconds.
#[derive(Debug, Clone, Serialize)]
pub struct LiveDuringDrain {
    pub seconds: u64,
    pub brownout: LiveInWindow,
    pub baseline: LiveInWindow,
}

/// Deferral's figures for a run (brownout only).
#[derive(Debug, Clone, Serialize)]
pub struct DeferFigures {
    /// Which store, and how durable.
    pub store: String,
    /// The classes the scenario defers.
    pub deferred_classes: Vec<String>,
    /// Requests deferred (written to the store, answered 202).
    pub deferred: u64,
    /// Of which before the back end was back: the backlog.
    pub backlog: u64,
    pub deferred_by_class: BTreeMap<String, u64>,
    /// Rejections not deferred because the store was full.
    pub refused_full: u64,
    /// Appends the store failed.
    pub append_failures: u64,
    /// Deferred requests the store holds as served by a replay.
    pub replayed: u64,
    pub replayed_by_class: BTreeMap<String, u64>,
    /// ... as failed for good.
    pub failed: u64,
    /// ... as expired at max_age, never sent.
    pub expired: u64,
    pub expired_by_class: BTreeMap<String, u64>,
    /// ... as still pending at the end.
    pub pending: u64,
    /// The store's own pending count at the end (must equal `pending`).
    pub pending_in_store: u64,
    /// Deferred requests the store does not know: must be 0.
    pub lost: u64,
    /// Replays sent through the stack (retries of a replay included).
    pub replay_attempts: u64,
    /// Replays answered without being served, by why (put back, tried later).
    pub replay_not_served: BTreeMap<String, u64>,
    /// Replays the drill saw served (must equal `replayed`).
    pub replay_served_seen: u64,
    /// Backlog requests sent for the first time, and how many of them came
    /// after one that should have come later (0: in priority order).
    pub backlog_first_sends: u64,
    pub order_violations: u64,
    /// When the back end was back, seconds from the start.
    pub recovery_at_s: f64,
    /// How long after that the store was empty (none: not within the run).
    pub drained_after_s: Option<f64>,
    /// The stack while draining.
    pub drain: DrainWindow,
    /// Live traffic while draining, against the baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveDuringDrain>,
}

impl DeferFigures {
    /// What does not add up, in words: empty when every deferred request
    /// is accounted for and the backlog went out in order.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.lost > 0 {
            problems.push(format!(
                "deferral: {} deferred requests unknown to the store",
                self.lost
            ));
        }
        let ended = self.replayed + self.failed + self.expired + self.pending;
        if self.deferred != ended + self.lost {
            problems.push(format!(
                "deferral: deferred {} != replayed {} + failed {} + expired {} + pending {}",
                self.deferred, self.replayed, self.failed, self.expired, self.pending
            ));
        }
        if self.pending != self.pending_in_store {
            problems.push(format!(
                "deferral: {} requests pending by ticket, the store counts {}",
                self.pending, self.pending_in_store
            ));
        }
        if self.replay_served_seen != self.replayed {
            problems.push(format!(
                "deferral: the drill saw {} replays served, the store holds {}",
                self.replay_served_seen, self.replayed
            ));
        }
        if self.order_violations > 0 {
            problems.push(format!(
                "deferral: {} backlog requests replayed out of priority order",
                self.order_violations
            ));
        }
        problems
    }
}

/// Live traffic in the drain window (from the back end's return until the
/// store was empty, whole seconds), brownout against the baseline over the
/// same seconds; `None` if the store never emptied.
pub fn live_during_drain(
    figures: &DeferFigures,
    brownout: &super::run::StackRun,
    baseline: &super::run::StackRun,
) -> Option<LiveDuringDrain> {
    let seconds = figures.drained_after_s?.ceil().max(1.0) as u64;
    let window = |counts: &[[u64; 2]]| {
        let (offered, served) = counts
            .iter()
            .take(seconds as usize)
            .fold((0, 0), |(o, s), [offered, served]| {
                (o + offered, s + served)
            });
        LiveInWindow {
            offered,
            served,
            served_ratio: (offered > 0).then(|| served as f64 / offered as f64),
        }
    };
    Some(LiveDuringDrain {
        seconds,
        brownout: window(&brownout.after_recovery),
        baseline: window(&baseline.after_recovery),
    })
}

/// Deferral's figures in a few lines, for the table.
pub fn summary(f: &DeferFigures) -> String {
    use super::report::{clock, count};
    use std::fmt::Write as _;
    let by_class = |map: &BTreeMap<String, u64>| {
        map.iter()
            .map(|(name, n)| format!("{name} {}", count(*n)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let pct = |ratio: Option<f64>| ratio.map_or("-".into(), |r| format!("{:.1}%", r * 100.0));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nDeferral (brownout only; store: {}; classes deferred: {})",
        f.store,
        f.deferred_classes.join(", ")
    );
    let _ = writeln!(
        out,
        "  deferred {} ({}), {} of them before the back end was back; {} refused (store full), {} failed appends",
        count(f.deferred),
        by_class(&f.deferred_by_class),
        count(f.backlog),
        count(f.refused_full),
        count(f.append_failures),
    );
    let _ = writeln!(
        out,
        "  replayed {} ({}); backlog order: {} of {} first replays out of priority order; \
         expired {} ({}); failed {}; still pending {}; lost {}",
        count(f.replayed),
        by_class(&f.replayed_by_class),
        count(f.order_violations),
        count(f.backlog_first_sends),
        count(f.expired),
        by_class(&f.expired_by_class),
        count(f.failed),
        count(f.pending),
        count(f.lost),
    );
    let drained = f.drained_after_s.map_or_else(
        || "not drained by the end of the run".to_owned(),
        |s| format!("drained {s:.1} s after the back end was back"),
    );
    let d = &f.drain;
    let _ = writeln!(
        out,
        "  {drained} (at {}); while draining: at most {} calls in flight (limit then {}), {} admissions over the limit \
         (at most {} over); up to {} replays in flight; {} replay sends put back ({})",
        clock(f.recovery_at_s as u64),
        d.peak_inflight,
        d.limit_at_peak.map_or("-".into(), |l| l.to_string()),
        count(d.over_limit_admissions),
        d.max_over_limit,
        d.peak_replays_inflight,
        count(f.replay_not_served.values().sum()),
        f.replay_not_served
            .iter()
            .map(|(why, n)| format!("{why} {}", count(*n)))
            .collect::<Vec<_>>()
            .join(", "),
    );
    if let Some(live) = &f.live {
        let _ = writeln!(
            out,
            "  live requests sent while draining ({} s): brownout served {} of {} ({}), baseline {} of {} ({})",
            live.seconds,
            count(live.brownout.served),
            count(live.brownout.offered),
            pct(live.brownout.served_ratio),
            count(live.baseline.served),
            count(live.baseline.offered),
            pct(live.baseline.served_ratio),
        );
    }
    out
}
