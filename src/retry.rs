//! A retry policy for the clients of a brownout-protected service (or of
//! any service that speaks the same protocol): it retries only what the
//! service said may be retried, when it said, within a budget.
//!
//! [`RetryPolicy`] is a [`tower::retry::Policy`]; put it in a
//! [`RetryLayer`](tower::retry::RetryLayer) around the client:
//!
//! - **When**: an HTTP `Retry-After` (seconds or an HTTP-date), a gRPC
//!   `grpc-retry-pushback-ms`, or a [`Rejected`]'s
//!   [`retry_after`](Rejected::retry_after) is obeyed, with a little
//!   jitter added (never less than asked). Without a hint, exponential
//!   backoff with full jitter. A hint longer than
//!   [`max_wait`](RetryPolicy::max_wait) is not waited for: the answer is
//!   given back.
//! - **What**: HTTP `503` and `429`; gRPC `UNAVAILABLE`, and
//!   `RESOURCE_EXHAUSTED` only with a pushback; a [`Rejected`] error with a
//!   retry hint. A negative or malformed gRPC pushback means "do not retry"
//!   (as gRPC's retry design says), and so does a `Deadline` rejection.
//! - **Which requests**: idempotent methods (`GET`, `HEAD`, `OPTIONS`,
//!   `TRACE`, `PUT`, `DELETE`) and requests with an `Idempotency-Key`
//!   header; others only after
//!   [`retry_non_idempotent`](RetryPolicy::retry_non_idempotent).
//! - **How many**: at most [`max_retries`](RetryPolicy::max_retries) per
//!   request (default 2), and all requests together within a
//!   [`TpsBudget`]: by default retries may add 20% to the requests of the
//!   last 10 seconds, plus 1 a second, so that a fleet of clients cannot
//!   turn an overload into a retry storm. Clones of the policy share its
//!   budget.
//!
//! ```
//! use std::time::Duration;
//! use brownout::retry::RetryPolicy;
//! use tower::retry::RetryLayer;
//! use tower::ServiceBuilder;
//!
//! let policy = RetryPolicy::new().max_retries(3).max_wait(Duration::from_secs(5));
//! let client = ServiceBuilder::new()
//!     .layer(RetryLayer::new(policy))
//!     .service_fn(|req: http::Request<String>| async move {
//!         Ok::<_, tower::BoxError>(http::Response::new(req.into_body()))
//!     });
//! # let _ = client;
//! ```

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use tower::BoxError;
use tower::retry::budget::{Budget, TpsBudget};

use crate::reject::{Reason, Rejected};

/// What an answer says about trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryHint {
    /// Do not retry: a success, a final failure, or the service said so.
    No,
    /// Retry, after a backoff the policy picks.
    Backoff,
    /// Retry after this long.
    After(Duration),
}

/// Reads the retry hint of a response.
pub trait RetryResponse {
    /// What this response says about trying again.
    fn retry_hint(&self) -> RetryHint;
}

/// Reads the retry hint of an error.
pub trait RetryError {
    /// What this error says about trying again.
    fn retry_hint(&self) -> RetryHint;
}

/// A request the policy may send again.
pub trait RetryRequest: Sized {
    /// A copy to send again, if the request can be copied.
    fn try_clone(&self) -> Option<Self>;

    /// Whether sending it twice does no more than sending it once.
    fn idempotent(&self) -> bool;
}

/// The hint of a [`Rejected`]: its `retry_after`, if it has one; a
/// `Deadline` rejection, or one without a hint, is not retried.
fn rejected_hint(rejected: &Rejected) -> RetryHint {
    match (rejected.reason(), rejected.retry_after()) {
        (Reason::Deadline, _) | (_, None) => RetryHint::No,
        (_, Some(after)) => RetryHint::After(after),
    }
}

impl RetryError for Rejected {
    fn retry_hint(&self) -> RetryHint {
        rejected_hint(self)
    }
}

impl RetryError for BoxError {
    /// A [`Rejected`] inside says; any other error is not retried (it may
    /// have reached the back end).
    fn retry_hint(&self) -> RetryHint {
        self.downcast_ref::<Rejected>()
            .map_or(RetryHint::No, rejected_hint)
    }
}

impl RetryError for std::convert::Infallible {
    fn retry_hint(&self) -> RetryHint {
        match *self {}
    }
}

#[cfg(feature = "http")]
mod http_impls {
    use std::time::Duration;

    use super::{RetryHint, RetryRequest, RetryResponse};

    /// gRPC status codes the policy retries.
    const UNAVAILABLE: &[u8] = b"14";
    const RESOURCE_EXHAUSTED: &[u8] = b"8";

    impl<B> RetryResponse for http::Response<B> {
        fn retry_hint(&self) -> RetryHint {
            let headers = self.headers();
            if let Some(status) = headers.get("grpc-status") {
                let status = status.as_bytes();
                let retryable = status == UNAVAILABLE || status == RESOURCE_EXHAUSTED;
                if !retryable {
                    return RetryHint::No;
                }
                return match headers.get("grpc-retry-pushback-ms") {
                    // A negative or malformed pushback: do not retry.
                    Some(value) => std::str::from_utf8(value.as_bytes())
                        .ok()
                        .and_then(|ms| ms.trim().parse::<u64>().ok())
                        .map_or(RetryHint::No, |ms| {
                            RetryHint::After(Duration::from_millis(ms))
                        }),
                    None if status == UNAVAILABLE => RetryHint::Backoff,
                    None => RetryHint::No,
                };
            }
            match self.status().as_u16() {
                429 | 503 => headers
                    .get(http::header::RETRY_AFTER)
                    .and_then(|value| retry_after(value.as_bytes()))
                    .map_or(RetryHint::Backoff, RetryHint::After),
                _ => RetryHint::No,
            }
        }
    }

    /// A `Retry-After` value: delta-seconds, or an HTTP-date (a date
    /// already past is "now"). `None` if it is neither.
    pub(super) fn retry_after(value: &[u8]) -> Option<Duration> {
        let text = std::str::from_utf8(value).ok()?.trim();
        if let Ok(secs) = text.parse::<u64>() {
            return Some(Duration::from_secs(secs));
        }
        let at = jiff::fmt::rfc2822::DateTimeParser::new()
            .parse_timestamp(text)
            .ok()?;
        let left = at.duration_since(jiff::Timestamp::now());
        Some(Duration::try_from(left).unwrap_or(Duration::ZERO))
    }

    impl<B: Clone> RetryRequest for http::Request<B> {
        fn try_clone(&self) -> Option<Self> {
            let mut copy = http::Request::new(self.body().clone());
            *copy.method_mut() = self.method().clone();
            *copy.uri_mut() = self.uri().clone();
            *copy.version_mut() = self.version();
            *copy.headers_mut() = self.headers().clone();
            Some(copy)
        }

        fn idempotent(&self) -> bool {
            self.method().is_idempotent() || self.headers().contains_key("idempotency-key")
        }
    }
}

/// A retry policy that obeys the service's retry hints; see the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    budget: Arc<TpsBudget>,
    max_retries: u32,
    max_wait: Duration,
    base_backoff: Duration,
    max_backoff: Duration,
    /// Up to this share of a hinted wait is added, at random.
    jitter: f64,
    non_idempotent: bool,
    /// Retries made for the current request (tower clones the policy for
    /// each request).
    attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryPolicy {
    /// At most 2 retries a request, within a budget of 20% of the last
    /// 10 s of requests plus 1 a second; hints up to 30 s obeyed; 100 ms
    /// to 5 s of backoff without a hint; up to 20% of jitter on hints.
    pub fn new() -> Self {
        Self {
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 1, 0.2)),
            max_retries: 2,
            max_wait: Duration::from_secs(30),
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            jitter: 0.2,
            non_idempotent: false,
            attempts: 0,
        }
    }

    /// At most `max_retries` retries per request.
    pub fn max_retries(mut self, max_retries: u32) -> Self {
        self.max_retries = max_retries;
        self
    }

    /// A hint longer than `max_wait` is not waited for: the answer goes
    /// back to the caller.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Backoff without a hint: `base` doubled each retry, at most `max`,
    /// with full jitter.
    pub fn backoff(mut self, base: Duration, max: Duration) -> Self {
        self.base_backoff = base;
        self.max_backoff = max.max(base);
        self
    }

    /// Adds up to `share` (0 to 1) of a hinted wait, at random, so that
    /// clients told the same time do not all come back at once.
    pub fn jitter(mut self, share: f64) -> Self {
        self.jitter = if share.is_finite() {
            share.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self
    }

    /// The retry budget, shared by every clone of this policy: retries
    /// may add `retry_percent` (0 to 1000, as tower's [`TpsBudget`]) of the
    /// requests of the last `ttl` (1 to 60 s), plus `min_per_sec`.
    /// Out-of-range values are brought into range.
    pub fn budget(mut self, ttl: Duration, min_per_sec: u32, retry_percent: f32) -> Self {
        let ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(60));
        let percent = if retry_percent.is_finite() {
            retry_percent.clamp(0.0, 1000.0)
        } else {
            0.0
        };
        let min_per_sec = min_per_sec.min(i32::MAX as u32 - 1);
        self.budget = Arc::new(TpsBudget::new(ttl, min_per_sec, percent));
        self
    }

    /// Retries non-idempotent requests (`POST`, `PATCH` without an
    /// `Idempotency-Key`) too: only when the service deduplicates them.
    pub fn retry_non_idempotent(mut self, yes: bool) -> Self {
        self.non_idempotent = yes;
        self
    }

    /// A random number in [0, 1), different for each call (each
    /// `RandomState` has keys of its own).
    fn random(&self) -> f64 {
        let x = RandomState::new().hash_one(self.attempts);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// How long to wait before the next retry, if it is to be made.
    fn wait_for(&mut self, hint: RetryHint) -> Option<Duration> {
        match hint {
            RetryHint::No => None,
            RetryHint::After(after) if after > self.max_wait => None,
            RetryHint::After(after) => {
                let extra = after.mul_f64(self.jitter * self.random());
                Some(after.saturating_add(extra))
            }
            RetryHint::Backoff => {
                let doubled = self
                    .base_backoff
                    .saturating_mul(1u32 << self.attempts.min(20));
                let cap = doubled.min(self.max_backoff);
                Some(cap.mul_f64(self.random()))
            }
        }
    }
}

impl<Req, Res, E> tower::retry::Policy<Req, Res, E> for RetryPolicy
where
    Req: RetryRequest,
    Res: RetryResponse,
    E: RetryError,
{
    type Future = tokio::time::Sleep;

    fn retry(&mut self, req: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        if self.attempts == 0 {
            // Every request counts once toward the budget.
            self.budget.deposit();
        }
        let hint = match result {
            Ok(response) => response.retry_hint(),
            Err(error) => error.retry_hint(),
        };
        if hint == RetryHint::No
            || self.attempts >= self.max_retries
            || !(self.non_idempotent || req.idempotent())
        {
            return None;
        }
        let wait = self.wait_for(hint)?;
        if !self.budget.withdraw() {
            tracing::debug!("brownout: retry budget spent, answer given back");
            return None;
        }
        self.attempts += 1;
        Some(tokio::time::sleep(wait))
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        req.try_clone()
    }
}

#[cfg(all(test, feature = "http"))]
mod tests {
    use std::time::Duration;

    use super::http_impls::retry_after;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        assert_eq!(retry_after(b"5"), Some(Duration::from_secs(5)));
        assert_eq!(retry_after(b" 0 "), Some(Duration::ZERO));
        assert_eq!(
            retry_after(b"Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO),
            "a date past is now"
        );
        let soon = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(120);
        let soon = jiff::fmt::rfc2822::DateTimePrinter::new()
            .timestamp_to_rfc9110_string(&soon)
            .unwrap();
        let left = retry_after(soon.as_bytes()).unwrap();
        assert!(
            left > Duration::from_secs(100) && left <= Duration::from_secs(120),
            "{soon}: {left:?}"
        );
        for bad in [&b"-1"[..], b"soon", b"1.5", b"\xff"] {
            assert_eq!(retry_after(bad), None, "{bad:?}");
        }
    }
}
