//! The replayer: drains a route's store through the same brownout-protected
//! service as live traffic.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderName, HeaderValue, Method, Request, Response, Uri};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tower::{BoxError, Service, ServiceExt};

use crate::BreakerState;
use crate::priority::{Classes, Priority};
use crate::reject::Rejected;

mod load;

pub use self::load::Load;

use super::deferral::{Deferral, RouteDeferral};
use super::store::{Claimed, DeferStore, Outcome, Ticket};
use super::{
    DEFERRED_AGE_SECONDS, DEFERRED_EXPIRED_TOTAL, DEFERRED_PENDING, IDEMPOTENCY_KEY, REPLAYED_TOTAL,
};

/// How often the replayer expires old requests and refreshes its gauges,
/// and how long it waits before looking again at an empty store.
pub const UPKEEP: Duration = Duration::from_secs(5);
/// First pause after a replay brownout rejected; doubles up to
/// [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between two tries while the back end is not ready (a
/// longer retry hint, such as a maintenance window's end, is cut to this,
/// so that a window ended early is noticed).
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// A running replayer; [`stop`](Self::stop) it, or drop it to let it run
/// on (it stops with the runtime).
#[derive(Debug)]
pub struct ReplayHandle {
    stop: Arc<Notify>,
    task: JoinHandle<()>,
}

impl ReplayHandle {
    /// Stops the replayer and waits for it. Replays under way are dropped:
    /// their claims stay in the store and are handed out again after
    /// `claim_after` (or at the next open of an embedded store), so each is
    /// tried again, and settled once.
    pub async fn stop(self) {
        self.stop.notify_one();
        let _ = self.task.await;
    }
}

impl<F, R, P, D, C> crate::BrownoutLayer<F, R, P, D, C>
where
    crate::BrownoutLayer<F, R, P, D, C>: Clone + Send + Sync + 'static,
{
    /// Starts a replayer for every deferring route of the stack's policy
    /// (none without one), on the current tokio runtime; see
    /// [`Deferral::replay`].
    ///
    /// `service` is what live traffic goes through, this stack included:
    /// an axum `Router` whose routes are behind it, or the stack over the
    /// back end. A replayed request carries [`Replayed`](super::Replayed),
    /// so the stack's fallback never defers it again: a replay the stack
    /// rejects comes back as its ordinary answer (a `503` or `429`, or a
    /// [`Rejected`] error) and is put back in its store for later. The
    /// replays of a route use its whole limit while no live call is under
    /// way, and yield to live traffic otherwise: what it leaves of the
    /// share of the limit its least important class may use, never more
    /// than `replay_share` of the limit, none added while callers wait, at
    /// least one ([`Load::replay_budget`]).
    ///
    /// `B` is the request body type to rebuild requests with; a service
    /// that takes several (an axum `Router`) needs it named:
    /// `layer.replay::<axum::body::Body, _, _>(router.clone())`.
    pub fn replay<B, S, RB>(&self, service: S) -> Vec<ReplayHandle>
    where
        S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: From<Bytes> + Send + 'static,
        RB: Body + Send + 'static,
        RB::Data: Send,
        RB::Error: Into<BoxError>,
    {
        let Some(deferral) = self.deferral() else {
            return Vec::new();
        };
        let layer = self.clone();
        deferral.replay_all(service.map_err(Into::into), move |route: &str| {
            Load::read(&layer, route)
        })
    }
}

/// When a replay was sent: in which round of the replayer (see `run`),
/// and whether as a probe.
#[derive(Clone, Copy)]
struct Sent {
    round: u64,
    probe: bool,
    at: tokio::time::Instant,
}

/// What one replay came to.
enum Replayed {
    /// The back end answered it: settled (or found settled).
    Answered,
    /// Settled without being sent (it could not be rebuilt): says nothing
    /// of the back end.
    Unsent,
    /// Brownout, or the back end, said "not yet": put back; wait this long.
    NotYet(Option<Duration>),
}

impl Deferral {
    /// Starts a replayer for every deferring route; see [`replay`](Self::replay).
    pub fn replay_all<S, B, RB>(
        &self,
        service: S,
        load: impl Fn(&str) -> Option<Load> + Clone + Send + Sync + 'static,
    ) -> Vec<ReplayHandle>
    where
        S: Service<Request<B>, Response = Response<RB>, Error = BoxError> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: From<Bytes> + Send + 'static,
        RB: Body + Send + 'static,
        RB::Data: Send,
        RB::Error: Into<BoxError>,
    {
        self.routes()
            .map(|route| {
                let key = route.route.clone();
                let load = load.clone();
                self.replay(route, service.clone(), move || load(&key))
            })
            .collect()
    }

    /// Starts the replayer of `route`, on the current tokio runtime.
    ///
    /// `service` is the same brownout-protected service live traffic goes
    /// through, built with a fallback that passes rejections on as errors
    /// (`BrownoutLayer::from_policy(&p).http().fallback(RejectAsError)`,
    /// sharing the live stack's state: a clone of its layer). `load` says
    /// the route's learned limit, its least important class's share of it,
    /// and the calls in flight and waiting now ([`Load::of`]`(&layer, route)`).
    ///
    /// The replayer claims requests most important class first, oldest
    /// first, and keeps as many in flight as [`Load::replay_budget`] allows:
    /// the whole limit while no live call is under way; otherwise what live
    /// traffic leaves of its least important class's share of the limit,
    /// at most `replay_share` of the limit, none added while callers wait
    /// (at least one in flight, so that the backlog always drains). Live
    /// traffic counts as under way from the moment it is seen (and from
    /// the replayer's start and an outage's end, when callers turned away
    /// are about but not in flight) until a replay sent after that comes
    /// back with none seen meanwhile (a replay sent but not yet admitted
    /// would hide a live call).
    ///
    /// It sends each with its method, URI, kept headers, body, priority
    /// class (as a [`Priority`] extension) and an
    /// `Idempotency-Key` (the client's, or else the ticket), so that a
    /// back end can recognise a request replayed twice after a crash.
    ///
    /// | the replay | then |
    /// |---|---|
    /// | brownout rejects it (breaker open, maintenance, shed) | put back in its place; pause ([`MIN_BACKOFF`] doubling to [`MAX_BACKOFF`], or the rejection's retry hint), then probe |
    /// | the answer is 429, 502, 503 or 504 (the stack or the back end says "not now"), or the back end cannot be reached | the same, pausing as its `Retry-After` says (within the bounds above) |
    /// | the back end answers anything else | `served`, with status and body (up to `max_answer`) |
    /// | its answer's body cannot be read | `failed` |
    ///
    /// Probing: once a replay is turned away, the replayer sends one
    /// replay at a time, each after a pause, until one is answered; then
    /// it goes back to its budget. An open breaker (or a back end that is
    /// still down) sees one replay per pause, not a budget's worth; the
    /// replays already under way when the first was turned away are put
    /// back as they come, without a pause of their own. While it pauses,
    /// the replayer watches the route's breaker ([`Load::breaker`], every
    /// [`MIN_BACKOFF`]): one seen open and then closed again (live
    /// traffic's probes found the back end back) ends the pause at once.
    ///
    /// Every [`UPKEEP`] it expires the requests older than `max_age` and
    /// sets the pending and age gauges.
    pub fn replay<S, B, RB>(
        &self,
        route: &RouteDeferral,
        service: S,
        load: impl Fn() -> Option<Load> + Send + Sync + 'static,
    ) -> ReplayHandle
    where
        S: Service<Request<B>, Response = Response<RB>, Error = BoxError> + Clone + Send + 'static,
        S::Future: Send + 'static,
        B: From<Bytes> + Send + 'static,
        RB: Body + Send + 'static,
        RB::Data: Send,
        RB::Error: Into<BoxError>,
    {
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(run(
            route.clone(),
            self.classes.clone(),
            service,
            load,
            stop.clone(),
        ));
        ReplayHandle { stop, task }
    }
}

async fn run<S, B, RB>(
    route: RouteDeferral,
    classes: Classes,
    service: S,
    load: impl Fn() -> Option<Load> + Send + Sync + 'static,
    stop: Arc<Notify>,
) where
    S: Service<Request<B>, Response = Response<RB>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: From<Bytes> + Send + 'static,
    RB: Body + Send + 'static,
    RB::Data: Send,
    RB::Error: Into<BoxError>,
{
    let store = route.store.clone();
    // Each replay, with the round it was sent in and whether as a probe.
    let mut replays: JoinSet<(Replayed, Sent)> = JoinSet::new();
    let mut backoff = MIN_BACKOFF;
    let mut paused_until: Option<tokio::time::Instant> = None;
    // From a replay turned away until one is answered: one replay at a
    // time, each after a pause. A round starts each time probing does.
    let mut probing = false;
    let mut round = 0u64;
    // Whether the route's breaker was seen turning calls away while probing.
    let mut breaker_shut = false;
    // When live traffic was last seen (a live call in flight, a caller
    // waiting), and when the latest answered replay was sent. A replay
    // sent but not yet admitted hides a live call from `Load::live`, so
    // replays yield to live traffic from the moment it is seen until a
    // replay sent after that has been answered with none seen since. It
    // counts as seen at the start and at the end of an outage too: live
    // callers turned away meanwhile are not in flight, but about.
    let mut live_seen: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());
    let mut alone_since: Option<tokio::time::Instant> = None;
    let mut next_upkeep = tokio::time::Instant::now();
    let stopped = stop.notified();
    tokio::pin!(stopped);
    loop {
        let now = tokio::time::Instant::now();
        if now >= next_upkeep {
            upkeep(&route, &classes).await;
            next_upkeep = now + UPKEEP;
        }
        let load = load().unwrap_or(Load {
            limit: 1,
            lowest: 1,
            inflight: 0,
            waiting: 0,
            breaker: None,
        });
        // Probing after the breaker turned calls away: once it lets them
        // through again (live traffic's probes closed it), probe now
        // rather than at the pause's end.
        if probing {
            match load.breaker {
                Some(BreakerState::Closed | BreakerState::ForcedClosed) if breaker_shut => {
                    breaker_shut = false;
                    paused_until = None;
                }
                Some(BreakerState::Open | BreakerState::HalfOpen | BreakerState::ForcedOpen) => {
                    breaker_shut = true;
                }
                _ => {}
            }
        }
        let paused = paused_until.is_some_and(|until| now < until);
        let mut idle = false;
        if !paused {
            let share = route.policy.replay_share;
            if load.live(replays.len()) > 0 || load.waiting > 0 {
                live_seen = Some(now);
            }
            let allowed = if probing {
                1
            } else if live_seen.is_some_and(|seen| alone_since.is_none_or(|since| since <= seen)) {
                load.yielding_budget(share, replays.len())
            } else {
                load.replay_budget(share, replays.len())
            };
            while replays.len() < allowed {
                match store.claim().await {
                    Ok(Some(claimed)) => {
                        let replay =
                            replay_one(route.clone(), store.clone(), service.clone(), claimed);
                        let sent = Sent {
                            round,
                            probe: probing,
                            at: tokio::time::Instant::now(),
                        };
                        replays.spawn(async move { (replay.await, sent) });
                    }
                    Ok(None) => {
                        idle = true;
                        break;
                    }
                    Err(err) => {
                        tracing::error!(route = %route.route, %err, "brownout: deferral store failed: cannot claim");
                        idle = true;
                        break;
                    }
                }
            }
        }
        let wake = match paused_until {
            // The breaker is watched every MIN_BACKOFF while it is shut.
            Some(until) if paused && breaker_shut => until.min(next_upkeep).min(now + MIN_BACKOFF),
            Some(until) if paused => until.min(next_upkeep),
            _ => next_upkeep,
        };
        tokio::select! {
            () = &mut stopped => break,
            Some(done) = replays.join_next(), if !replays.is_empty() => {
                match done {
                    Ok((Replayed::Answered, sent)) => {
                        if probing {
                            probing = false;
                            breaker_shut = false;
                            live_seen = Some(tokio::time::Instant::now());
                        }
                        backoff = MIN_BACKOFF;
                        alone_since = Some(alone_since.map_or(sent.at, |since| since.max(sent.at)));
                    }
                    Ok((Replayed::Unsent, _)) => {}
                    // A probe turned away, or the first replay of a round
                    // (sent at full budget): pause, then probe. The others
                    // sent with it come back put back, and change nothing.
                    Ok((Replayed::NotYet(hint), sent))
                        if sent.probe || (!probing && sent.round == round) =>
                    {
                        if !probing {
                            probing = true;
                            round += 1;
                        }
                        let pause = hint.unwrap_or(backoff).clamp(MIN_BACKOFF, MAX_BACKOFF);
                        paused_until = Some(tokio::time::Instant::now() + pause);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                    Ok((Replayed::NotYet(_), _)) => {}
                    Err(err) => {
                        tracing::error!(route = %route.route, %err, "brownout: a replay panicked; its claim is handed out again after claim_after");
                    }
                }
            }
            () = tokio::time::sleep_until(wake), if idle || paused || replays.is_empty() => {}
        }
    }
    replays.abort_all();
}

/// Expires old requests and sets the gauges.
async fn upkeep(route: &RouteDeferral, classes: &Classes) {
    let store = &route.store;
    match store.expire().await {
        Ok(0) => {}
        Ok(n) => metrics::counter!(DEFERRED_EXPIRED_TOTAL, "route" => route.route.to_string())
            .increment(n),
        Err(err) => {
            tracing::error!(route = %route.route, %err, "brownout: deferral store failed: cannot expire");
        }
    }
    if let Ok(pending) = store.pending().await {
        for (rank, count) in pending.iter().enumerate() {
            let name = classes.name(Priority::new(rank as u8)).to_owned();
            metrics::gauge!(DEFERRED_PENDING, "route" => route.route.to_string(), "priority" => name)
                .set(*count as f64);
        }
    }
    if let Ok(oldest) = store.oldest().await {
        let age = oldest
            .and_then(|o| store.now().duration_since(o).ok())
            .unwrap_or(Duration::ZERO);
        metrics::gauge!(DEFERRED_AGE_SECONDS, "route" => route.route.to_string())
            .set(age.as_secs_f64());
    }
}

/// The request to send for `claimed`.
fn rebuild<B: From<Bytes>>(claimed: &Claimed) -> Result<Request<B>, String> {
    let r = &claimed.request;
    let method = Method::from_bytes(r.method.as_bytes())
        .map_err(|e| format!("stored method {:?}: {e}", r.method))?;
    let uri: Uri = r
        .uri
        .parse()
        .map_err(|e| format!("stored URI {:?}: {e}", r.uri))?;
    let mut request = Request::new(B::from(r.body.clone()));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    for (name, value) in &r.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| format!("stored header name {name:?}: {e}"))?;
        let value = HeaderValue::from_maybe_shared(value.clone())
            .map_err(|e| format!("stored header {name}: {e}"))?;
        headers.append(name, value);
    }
    let key = r
        .idempotency_key
        .clone()
        .unwrap_or_else(|| claimed.ticket.to_string());
    let key = HeaderValue::try_from(key).map_err(|e| format!("idempotency key: {e}"))?;
    headers.insert(IDEMPOTENCY_KEY, key);
    request.extensions_mut().insert(Priority::new(r.priority));
    request.extensions_mut().insert(super::Replayed);
    Ok(request)
}

async fn settle(
    route: &RouteDeferral,
    store: &Arc<dyn DeferStore>,
    ticket: Ticket,
    outcome: Outcome,
) -> Replayed {
    let label = outcome.as_str();
    match store.complete(ticket.clone(), outcome).await {
        Ok(true) => {
            metrics::counter!(REPLAYED_TOTAL, "route" => route.route.to_string(), "outcome" => label)
                .increment(1);
        }
        Ok(false) => {
            tracing::debug!(route = %route.route, %ticket, "brownout: replay already settled");
        }
        Err(err) => {
            tracing::error!(route = %route.route, %ticket, %err, "brownout: deferral store failed: cannot store an outcome; the request will be replayed again");
        }
    }
    Replayed::Answered
}

async fn not_yet(
    route: &RouteDeferral,
    store: &Arc<dyn DeferStore>,
    ticket: Ticket,
    hint: Option<Duration>,
) -> Replayed {
    if let Err(err) = store.release(ticket).await {
        tracing::error!(route = %route.route, %err, "brownout: deferral store failed: cannot put a request back; it is handed out again after claim_after");
    }
    Replayed::NotYet(hint)
}

async fn replay_one<S, B, RB>(
    route: RouteDeferral,
    store: Arc<dyn DeferStore>,
    service: S,
    claimed: Claimed,
) -> Replayed
where
    S: Service<Request<B>, Response = Response<RB>, Error = BoxError>,
    B: From<Bytes>,
    RB: Body,
    RB::Error: Into<BoxError>,
{
    let ticket = claimed.ticket.clone();
    if claimed.attempts > 1 {
        tracing::info!(route = %route.route, %ticket, attempts = claimed.attempts, "brownout: replaying a request whose earlier replay was interrupted");
    }
    let request = match rebuild::<B>(&claimed) {
        Ok(request) => request,
        Err(why) => {
            settle(&route, &store, ticket, Outcome::Failed(why)).await;
            return Replayed::Unsent;
        }
    };
    let answer = match service.oneshot(request).await {
        Ok(answer) => answer,
        Err(err) => {
            if let Some(rejected) = err.downcast_ref::<Rejected>() {
                return not_yet(&route, &store, ticket, rejected.retry_after()).await;
            }
            tracing::debug!(route = %route.route, %err, "brownout: replay could not reach the back end");
            return not_yet(&route, &store, ticket, None).await;
        }
    };
    let status = answer.status();
    if matches!(status.as_u16(), 429 | 502..=504) {
        // Not back yet, or over its budget: later, when it says.
        let hint = answer
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return not_yet(&route, &store, ticket, hint).await;
    }
    let content_type = answer
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let max = usize::try_from(route.policy.max_answer.0).unwrap_or(usize::MAX);
    let body = answer.into_body();
    tokio::pin!(body);
    let mut kept = BytesMut::new();
    let unreadable = loop {
        let frame = match body.frame().await {
            None => break None,
            Some(Ok(frame)) => frame,
            Some(Err(err)) => break Some(Into::<BoxError>::into(err).to_string()),
        };
        if let Ok(mut data) = frame.into_data() {
            use bytes::Buf;
            while data.has_remaining() && kept.len() < max {
                let chunk = data.chunk();
                let take = chunk.len().min(max - kept.len());
                kept.extend_from_slice(&chunk[..take]);
                data.advance(take);
            }
            if kept.len() >= max {
                break None;
            }
        }
    };
    if let Some(err) = unreadable {
        let why = format!("the back end answered {status} but its body could not be read: {err}");
        return settle(&route, &store, ticket, Outcome::Failed(why)).await;
    }
    let outcome = Outcome::Served {
        status: status.as_u16(),
        content_type,
        body: kept.freeze(),
    };
    settle(&route, &store, ticket, outcome).await
}
