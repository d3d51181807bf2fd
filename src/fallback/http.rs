//! The HTTP answer: `503 Service Unavailable`, `Retry-After`, and an RFC 9457
//! problem document.

use std::future::{Ready, ready};

use http::header::{CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

use crate::reject::{Reason, Rejected};

use super::Fallback;

/// The media type of an RFC 9457 problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Answers a rejection with `503 Service Unavailable`, a `Retry-After` header
/// in whole seconds (rounded up) when the hint is known, `Cache-Control:
/// no-store`, and an RFC 9457 `application/problem+json` body:
///
/// ```json
/// {
///   "type": "urn:brownout:open",
///   "title": "Service temporarily unavailable",
///   "status": 503,
///   "detail": "request rejected (open): the back end is failing and its circuit breaker is open; retry after 4.200s",
///   "reason": "open",
///   "retry_after": 5
/// }
/// ```
///
/// Inside a maintenance window the title is "Service in planned
/// maintenance" and `detail` is the window's `message` as ops wrote it
/// ([`Rejected::message`]), when it has one:
///
/// ```json
/// {
///   "type": "urn:brownout:maintenance",
///   "title": "Service in planned maintenance",
///   "status": 503,
///   "detail": "Planned upgrade. Urgent files: use e-mail.",
///   "reason": "maintenance",
///   "retry_after": 561600
/// }
/// ```
///
/// The body type needs `From<String>` (axum's `Body`, `Full<Bytes>`, `String`
/// do). Every reason answers 503 except [`Reason::Budget`], which answers
/// `429 Too Many Requests`: the service is up, and the declared quota of
/// the period is what ran out (429 is not used for shedding, which is about
/// the back end's health, not a quota).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProblemJson;

impl ProblemJson {
    /// The response for `rejected`.
    pub fn response<B: From<String>>(rejected: &Rejected) -> Response<B> {
        let status = match rejected.reason() {
            Reason::Budget => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        let retry_after = rejected.retry_after_secs();
        let mut body = serde_json::json!({
            "type": format!("urn:brownout:{}", rejected.reason()),
            "title": title(rejected.reason()),
            "status": status.as_u16(),
            "detail": match rejected.message() {
                Some(message) => message.to_owned(),
                None => rejected.to_string(),
            },
            "reason": rejected.reason().as_str(),
        });
        if let Some(secs) = retry_after {
            body["retry_after"] = secs.into();
        }
        let mut response = Response::new(B::from(body.to_string()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(secs) = retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

fn title(reason: Reason) -> &'static str {
    match reason {
        Reason::Maintenance => "Service in planned maintenance",
        Reason::Deadline => "Request deadline passed",
        Reason::Budget => "Capacity for this period used up",
        _ => "Service temporarily unavailable",
    }
}

impl<Req, B: From<String>, E> Fallback<Req, Response<B>, E> for ProblemJson {
    type Error = E;
    type Future = Ready<Result<Response<B>, E>>;

    fn fallback(&self, rejected: Rejected, _: Option<Req>) -> Self::Future {
        ready(Ok(Self::response(&rejected)))
    }

    fn inner_error(&self, error: E) -> E {
        error
    }
}
