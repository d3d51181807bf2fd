//! HTTP: the fallback that defers ([`DeferFallback`]), and the status
//! endpoint ([`DeferStatusLayer`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tower::{BoxError, Layer, Service};

use crate::fallback::{Fallback, PROBLEM_JSON};
use crate::priority::PriorityOf;
use crate::reject::Rejected;
use crate::stack::{HttpRoute, RouteOf};

use super::Replayed;
use super::deferral::{Deferral, RouteDeferral};
use super::store::{Appended, Deferred, Outcome, Status, Ticket};
use super::{DEFERRED_TOTAL, IDEMPOTENCY_KEY};

/// Longest `Idempotency-Key` accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A problem document (RFC 9457) with `status`.
fn problem<B: From<String>>(
    status: StatusCode,
    kind: &str,
    title: &str,
    detail: &str,
) -> Response<B> {
    let body = serde_json::json!({
        "type": format!("urn:brownout:{kind}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut response = Response::new(B::from(body.to_string()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn json<B: From<String>>(status: StatusCode, body: serde_json::Value) -> Response<B> {
    let mut response = Response::new(B::from(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The request's `Idempotency-Key`: `None` when it has none; an error
/// saying what is wrong when it is malformed.
///
/// The value is a Structured Field string (`"8e03…"`, as the IETF httpapi
/// draft says) or, as many clients send it, a bare token of letters,
/// digits and `-._~+/=:`; at most [`MAX_IDEMPOTENCY_KEY`] bytes, not
/// empty, and sent once.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, String> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err("is sent more than once".to_owned());
    }
    let bytes = value.as_bytes();
    let key = if let Some(inner) = bytes.strip_prefix(b"\"") {
        let Some(inner) = inner.strip_suffix(b"\"") else {
            return Err("opens a quoted string it does not close".to_owned());
        };
        let mut out = String::with_capacity(inner.len());
        let mut escaped = false;
        for &b in inner {
            match (escaped, b) {
                (false, b'\\') => escaped = true,
                (true, b'"' | b'\\') => {
                    out.push(b as char);
                    escaped = false;
                }
                (false, b'"') => return Err("has an unescaped '\"' inside its quotes".to_owned()),
                (false, 0x20..=0x7e) => out.push(b as char),
                _ => {
                    return Err(
                        "is not a valid string: use printable ASCII, with '\\' only before '\"' or '\\'"
                            .to_owned(),
                    );
                }
            }
        }
        if escaped {
            return Err("ends with a lone '\\'".to_owned());
        }
        out
    } else {
        if let Some(&b) = bytes
            .iter()
            .find(|&&b| !(b.is_ascii_alphanumeric() || b"-._~+/=:".contains(&b)))
        {
            return Err(format!(
                "contains {:?}: quote it as a string (\"...\") or use letters, digits and -._~+/=:",
                b as char
            ));
        }
        String::from_utf8_lossy(bytes).into_owned()
    };
    if key.is_empty() {
        return Err("is empty".to_owned());
    }
    if key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(format!(
            "is {} bytes long, more than {MAX_IDEMPOTENCY_KEY}",
            key.len()
        ));
    }
    Ok(Some(key))
}

/// A [`Fallback`] that defers the rejected requests of the routes that opt
/// in, and hands every other rejection to the ordinary fallback `F`
/// (`ProblemJson`: 503 + `Retry-After`). Get one from
/// [`Deferral::fallback`] and give it to
/// [`BrownoutLayer::fallback`](crate::BrownoutLayer::fallback).
///
/// A rejected request is deferred when its route has a `defer` section,
/// the rejection's reason is in `when`, its method is in `methods`, and it
/// still has its body (the stack gives the fallback the request whenever
/// the rejection came before the inner call). Then:
///
/// | case | answer |
/// |---|---|
/// | written to the store (synced) | `202 Accepted`, JSON `{ ticket, status: "pending", location, reason }`, `Location: <status_path>/<ticket>` |
/// | the same `Idempotency-Key` with the same request again | `202 Accepted` with the first ticket, nothing written |
/// | the same key with another method, URI or body | `422 Unprocessable Content`, problem JSON naming the header |
/// | `Idempotency-Key` malformed | `400 Bad Request`, problem JSON naming the header |
/// | no `Idempotency-Key` while `require_idempotency_key` | `400 Bad Request`, problem JSON naming the header |
/// | body over `max_body` (by `Content-Length`, or read) | the ordinary fallback (503) |
/// | `max_pending` requests pending, or the store fails | the ordinary fallback (503) |
#[derive(Debug, Clone)]
pub struct DeferFallback<F> {
    deferral: Deferral,
    inner: F,
}

impl Deferral {
    /// The fallback that defers, with `inner` for every rejection it does
    /// not defer; see [`DeferFallback`].
    pub fn fallback<F>(&self, inner: F) -> DeferFallback<F> {
        DeferFallback {
            deferral: self.clone(),
            inner,
        }
    }

    /// The status endpoint in front of a service; see [`DeferStatusLayer`].
    pub fn status_layer(&self) -> DeferStatusLayer {
        let mut paths: Vec<String> = self
            .routes()
            .map(|r| r.policy.status_path.clone())
            .collect();
        paths.sort();
        paths.dedup();
        DeferStatusLayer {
            deferral: self.clone(),
            paths: paths.into(),
        }
    }
}

impl<F> DeferFallback<F> {
    /// The deferring route that takes `req`, rejected as `rejected` says:
    /// its route has a `defer` section whose `when` has the reason and
    /// whose `methods` have the method, and it is not a replay.
    fn route_for<B>(&self, rejected: &Rejected, req: &Request<B>) -> Option<&RouteDeferral> {
        if req.extensions().get::<Replayed>().is_some() {
            return None;
        }
        HttpRoute
            .route_of(req)
            .and_then(|key| self.deferral.route(key))
            .filter(|route| route.defers(rejected.reason(), req.method().as_str()))
    }

    /// Whether `req`, rejected as `rejected` says, goes to a store (then
    /// answered `202`, or, if it cannot be kept, by the ordinary
    /// fallback) rather than straight to the ordinary fallback.
    pub fn would_defer<B>(&self, rejected: &Rejected, req: &Request<B>) -> bool {
        self.route_for(rejected, req).is_some()
    }
}

impl<B, RB, E, F> Fallback<Request<B>, Response<RB>, E> for DeferFallback<F>
where
    F: Fallback<Request<B>, Response<RB>, E> + Clone + Send + Sync + 'static,
    F::Future: Send + 'static,
    F::Error: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
    RB: From<String> + Send + 'static,
{
    type Error = F::Error;
    type Future = BoxFuture<Result<Response<RB>, F::Error>>;

    fn fallback(&self, rejected: Rejected, request: Option<Request<B>>) -> Self::Future {
        let Some(req) = request else {
            return Box::pin(self.inner.fallback(rejected, None));
        };
        let route = self.route_for(&rejected, &req).cloned();
        let Some(route) = route else {
            return Box::pin(self.inner.fallback(rejected, Some(req)));
        };
        let key = match idempotency_key(req.headers()) {
            Ok(key) => key,
            Err(why) => {
                return Box::pin(std::future::ready(Ok(problem(
                    StatusCode::BAD_REQUEST,
                    "idempotency-key",
                    "Malformed Idempotency-Key header",
                    &format!("the Idempotency-Key header {why}"),
                ))));
            }
        };
        if key.is_none() && route.policy.require_idempotency_key {
            return Box::pin(std::future::ready(Ok(problem(
                StatusCode::BAD_REQUEST,
                "idempotency-key",
                "Missing Idempotency-Key header",
                "this request can only be accepted for later with an Idempotency-Key header \
                 (a unique value per request, e.g. a UUID), so that sending it again is safe",
            ))));
        }
        let max_body = route.policy.max_body.0;
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max_body) {
            return Box::pin(self.inner.fallback(rejected, Some(req)));
        }
        let priority = self
            .deferral
            .priority
            .priority_of(&req, &self.deferral.classes);
        let inner = self.inner.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let limit = usize::try_from(max_body).unwrap_or(usize::MAX);
            let body = match http_body_util::Limited::new(body, limit).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(err) => {
                    tracing::debug!(route = %route.route, %err, "brownout: request not deferred: body over max_body or unreadable");
                    return inner.fallback(rejected, None).await;
                }
            };
            let headers = parts
                .headers
                .iter()
                .filter(|(name, _)| {
                    route
                        .policy
                        .keep_headers
                        .iter()
                        .any(|keep| name.as_str().eq_ignore_ascii_case(keep))
                })
                .map(|(name, value)| {
                    (
                        name.as_str().to_owned(),
                        Bytes::copy_from_slice(value.as_bytes()),
                    )
                })
                .collect();
            let deferred = Deferred {
                priority: priority.rank(),
                method: parts.method.as_str().to_owned(),
                uri: parts
                    .uri
                    .path_and_query()
                    .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned()),
                headers,
                body,
                arrived: route.store.now(),
                idempotency_key: key,
            };
            let appended = route.store.append(deferred).await;
            let location = |ticket: &Ticket| format!("{}/{ticket}", route.policy.status_path);
            match appended {
                Ok(Appended::New(ticket)) => {
                    metrics::counter!(
                        DEFERRED_TOTAL,
                        "route" => route.route.to_string(),
                        "reason" => rejected.reason().as_str()
                    )
                    .increment(1);
                    Ok(accepted(&ticket, &location(&ticket), &rejected, false))
                }
                Ok(Appended::Repeat(ticket)) => {
                    Ok(accepted(&ticket, &location(&ticket), &rejected, true))
                }
                Ok(Appended::Conflict(ticket)) => Ok(problem(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency-key",
                    "Idempotency-Key reused",
                    &format!(
                        "the Idempotency-Key header was already used for another request \
                         (ticket {ticket}, {}): use a new key for a new request",
                        location(&ticket)
                    ),
                )),
                Ok(Appended::Full) => {
                    tracing::warn!(route = %route.route, "brownout: deferral store full (max_pending): answering with the fallback");
                    inner.fallback(rejected, None).await
                }
                Err(err) => {
                    tracing::error!(route = %route.route, %err, "brownout: deferral store failed: answering with the fallback");
                    inner.fallback(rejected, None).await
                }
            }
        })
    }

    fn inner_error(&self, error: E) -> Self::Error {
        self.inner.inner_error(error)
    }

    fn on_inner_error(&self, error: E) -> Result<Self::Future, Self::Error> {
        self.inner
            .on_inner_error(error)
            .map(|f| Box::pin(f) as Self::Future)
    }
}

/// The `202 Accepted` of a deferred request.
fn accepted<B: From<String>>(
    ticket: &Ticket,
    location: &str,
    rejected: &Rejected,
    repeat: bool,
) -> Response<B> {
    let mut body = serde_json::json!({
        "ticket": ticket.as_str(),
        "status": "pending",
        "location": location,
        "reason": rejected.reason().as_str(),
        "detail": "the back end is unavailable; this request is kept and will be sent when it is back: \
                   see its status at the location",
    });
    if repeat {
        body["repeat"] = true.into();
    }
    let mut response = json(StatusCode::ACCEPTED, body);
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(LOCATION, value);
    }
    if let Some(secs) = rejected.retry_after_secs() {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// Answers `GET <status_path>/{ticket}` from the deferral stores, in front
/// of a service; every other request goes to the service untouched (one
/// string comparison per status path, no allocation).
///
/// | ticket | answer |
/// |---|---|
/// | waiting or being replayed | `200`, `{ "ticket", "status": "pending", "arrived" }` |
/// | replayed and answered | `200`, `{ "ticket", "status": "served", "answer": { "status", "content_type", "body" } }` (`body` as text when it is UTF-8, up to `max_answer`) |
/// | replay failed for good | `200`, `{ "ticket", "status": "failed", "detail" }` |
/// | not replayed within `max_age` | `200`, `{ "ticket", "status": "expired", "detail" }` |
/// | unknown, or not a ticket | `404`, problem JSON |
/// | a method other than `GET` or `HEAD` | `405`, problem JSON, `Allow: GET, HEAD` |
#[derive(Debug, Clone)]
pub struct DeferStatusLayer {
    deferral: Deferral,
    paths: std::sync::Arc<[String]>,
}

impl<S> Layer<S> for DeferStatusLayer {
    type Service = DeferStatus<S>;

    fn layer(&self, inner: S) -> DeferStatus<S> {
        DeferStatus {
            inner,
            deferral: self.deferral.clone(),
            paths: self.paths.clone(),
        }
    }
}

/// The status endpoint's service; see [`DeferStatusLayer`].
#[derive(Debug, Clone)]
pub struct DeferStatus<S> {
    inner: S,
    deferral: Deferral,
    paths: std::sync::Arc<[String]>,
}

impl<S> DeferStatus<S> {
    /// The status path and ticket text `path` asks for, if any.
    fn asks<'a>(&self, path: &'a str) -> Option<(&str, &'a str)> {
        self.paths.iter().find_map(|status| {
            path.strip_prefix(status.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
                .map(|ticket| (status.as_str(), ticket))
        })
    }
}

pin_project_lite::pin_project! {
    /// The future of [`DeferStatus`].
    #[project = StatusProj]
    #[allow(missing_docs)]
    pub enum StatusFuture<F, RB, E> {
        /// The inner service's.
        Inner { #[pin] future: F },
        /// A status answer, once read from the stores.
        Answer { future: BoxFuture<Result<Response<RB>, E>> },
    }
}

impl<F, RB, E> std::fmt::Debug for StatusFuture<F, RB, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StatusFuture")
    }
}

impl<F, RB, E> Future for StatusFuture<F, RB, E>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            StatusProj::Inner { future } => future.poll(cx),
            StatusProj::Answer { future } => future.as_mut().poll(cx),
        }
    }
}

impl<S, B, RB> Service<Request<B>> for DeferStatus<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Send + 'static,
    RB: From<String> + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = StatusFuture<S::Future, RB, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let Some((status_path, ticket)) = self.asks(req.uri().path()) else {
            return StatusFuture::Inner {
                future: self.inner.call(req),
            };
        };
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut response = problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
                "a deferred request's status is read with GET",
            );
            response
                .headers_mut()
                .insert(http::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return StatusFuture::Answer {
                future: Box::pin(std::future::ready(Ok(response))),
            };
        }
        let stores: Vec<_> = self
            .deferral
            .routes()
            .filter(|r| r.policy.status_path == status_path)
            .map(|r| r.store.clone())
            .collect();
        let text = ticket.to_owned();
        StatusFuture::Answer {
            future: Box::pin(async move {
                let not_found = || {
                    problem(
                        StatusCode::NOT_FOUND,
                        "unknown-ticket",
                        "Unknown ticket",
                        &format!("no deferred request has the ticket {text:?}"),
                    )
                };
                let Some(ticket) = Ticket::parse(&text) else {
                    return Ok(not_found());
                };
                for store in stores {
                    match store.status(ticket.clone()).await {
                        Ok(Some(status)) => return Ok(status_answer(&ticket, &status)),
                        Ok(None) => {}
                        Err(err) => {
                            tracing::error!(%err, "brownout: deferral store failed reading a status");
                            return Ok(problem(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "store",
                                "Status unavailable",
                                "the deferral store could not be read; try again shortly",
                            ));
                        }
                    }
                }
                Ok(not_found())
            }),
        }
    }
}

fn rfc3339(time: SystemTime) -> String {
    jiff::Timestamp::try_from(time)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The status document of `ticket`.
pub(crate) fn status_answer<B: From<String>>(ticket: &Ticket, status: &Status) -> Response<B> {
    let body = match status {
        Status::Pending { arrived } => serde_json::json!({
            "ticket": ticket.as_str(),
            "status": "pending",
            "arrived": rfc3339(*arrived),
        }),
        Status::Done(Outcome::Served {
            status,
            content_type,
            body,
        }) => {
            let mut answer = serde_json::json!({ "status": status });
            if let Some(content_type) = content_type {
                answer["content_type"] = content_type.as_str().into();
            }
            match std::str::from_utf8(body) {
                Ok(text) => answer["body"] = text.into(),
                Err(_) => answer["body_bytes"] = body.len().into(),
            }
            serde_json::json!({ "ticket": ticket.as_str(), "status": "served", "answer": answer })
        }
        Status::Done(Outcome::Failed(why)) => serde_json::json!({
            "ticket": ticket.as_str(),
            "status": "failed",
            "detail": why,
        }),
        Status::Done(Outcome::Expired) => serde_json::json!({
            "ticket": ticket.as_str(),
            "status": "expired",
            "detail": "the back end did not come back before this request's max_age: it was never sent",
        }),
    };
    json(StatusCode::OK, body)
}
