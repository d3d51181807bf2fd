//! gRPC classification: the verdict is the `grpc-status`, which usually
//! comes in the trailers, after the whole body.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::{Classified, Classify, Outcome, Unsettled};

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// A gRPC status code, as carried by the `grpc-status` header or trailer.
///
/// The variants and their numbers are those of the [gRPC status codes].
///
/// ```
/// use brownout::classify::GrpcCode;
///
/// assert_eq!(GrpcCode::from_i32(14), Some(GrpcCode::Unavailable));
/// assert_eq!(GrpcCode::Unavailable.as_i32(), 14);
/// assert_eq!(GrpcCode::Unavailable.to_string(), "UNAVAILABLE");
/// assert_eq!(GrpcCode::from_i32(17), None);
/// ```
///
/// [gRPC status codes]: https://grpc.github.io/grpc/core/md_doc_statuscodes.html
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(i32)]
pub enum GrpcCode {
    /// `OK` (0): not an error.
    Ok = 0,
    /// `CANCELLED` (1): the operation was cancelled, typically by the caller.
    Cancelled = 1,
    /// `UNKNOWN` (2): an error with no better code, such as an exception
    /// on the server.
    Unknown = 2,
    /// `INVALID_ARGUMENT` (3): the caller sent a bad argument.
    InvalidArgument = 3,
    /// `DEADLINE_EXCEEDED` (4): the deadline expired before the operation
    /// completed.
    DeadlineExceeded = 4,
    /// `NOT_FOUND` (5): a requested entity was not found.
    NotFound = 5,
    /// `ALREADY_EXISTS` (6): the entity the caller tried to create exists.
    AlreadyExists = 6,
    /// `PERMISSION_DENIED` (7): the caller may not do this.
    PermissionDenied = 7,
    /// `RESOURCE_EXHAUSTED` (8): a quota or resource ran out.
    ResourceExhausted = 8,
    /// `FAILED_PRECONDITION` (9): the system is not in a state the
    /// operation requires.
    FailedPrecondition = 9,
    /// `ABORTED` (10): the operation was aborted, typically by a concurrency
    /// conflict.
    Aborted = 10,
    /// `OUT_OF_RANGE` (11): the operation went past the valid range.
    OutOfRange = 11,
    /// `UNIMPLEMENTED` (12): the method is not implemented or supported.
    Unimplemented = 12,
    /// `INTERNAL` (13): an invariant of the server broke.
    Internal = 13,
    /// `UNAVAILABLE` (14): the service is unavailable right now.
    Unavailable = 14,
    /// `DATA_LOSS` (15): unrecoverable data loss or corruption.
    DataLoss = 15,
    /// `UNAUTHENTICATED` (16): the caller has no valid credentials.
    Unauthenticated = 16,
}

impl GrpcCode {
    /// Every code, in numeric order.
    pub const ALL: [GrpcCode; 17] = [
        GrpcCode::Ok,
        GrpcCode::Cancelled,
        GrpcCode::Unknown,
        GrpcCode::InvalidArgument,
        GrpcCode::DeadlineExceeded,
        GrpcCode::NotFound,
        GrpcCode::AlreadyExists,
        GrpcCode::PermissionDenied,
        GrpcCode::ResourceExhausted,
        GrpcCode::FailedPrecondition,
        GrpcCode::Aborted,
        GrpcCode::OutOfRange,
        GrpcCode::Unimplemented,
        GrpcCode::Internal,
        GrpcCode::Unavailable,
        GrpcCode::DataLoss,
        GrpcCode::Unauthenticated,
    ];

    /// The code with this number, or `None` outside `0..=16`.
    pub const fn from_i32(code: i32) -> Option<Self> {
        if code >= 0 && code < Self::ALL.len() as i32 {
            Some(Self::ALL[code as usize])
        } else {
            None
        }
    }

    /// The code's number, as sent in `grpc-status`.
    pub const fn as_i32(self) -> i32 {
        self as i32
    }

    /// The code's canonical name, such as `UNAVAILABLE`.
    pub const fn as_str(self) -> &'static str {
        match self {
            GrpcCode::Ok => "OK",
            GrpcCode::Cancelled => "CANCELLED",
            GrpcCode::Unknown => "UNKNOWN",
            GrpcCode::InvalidArgument => "INVALID_ARGUMENT",
            GrpcCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            GrpcCode::NotFound => "NOT_FOUND",
            GrpcCode::AlreadyExists => "ALREADY_EXISTS",
            GrpcCode::PermissionDenied => "PERMISSION_DENIED",
            GrpcCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            GrpcCode::FailedPrecondition => "FAILED_PRECONDITION",
            GrpcCode::Aborted => "ABORTED",
            GrpcCode::OutOfRange => "OUT_OF_RANGE",
            GrpcCode::Unimplemented => "UNIMPLEMENTED",
            GrpcCode::Internal => "INTERNAL",
            GrpcCode::Unavailable => "UNAVAILABLE",
            GrpcCode::DataLoss => "DATA_LOSS",
            GrpcCode::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// The code a client derives from an HTTP status other than 2xx when
    /// the response carries no `grpc-status`, per gRPC's "HTTP to gRPC
    /// status code mapping".
    pub const fn from_http_status(status: StatusCode) -> Self {
        match status.as_u16() {
            400 => GrpcCode::Internal,
            401 => GrpcCode::Unauthenticated,
            403 => GrpcCode::PermissionDenied,
            404 => GrpcCode::Unimplemented,
            429 | 502 | 503 | 504 => GrpcCode::Unavailable,
            _ => GrpcCode::Unknown,
        }
    }

    const fn bit(self) -> u32 {
        1 << self as u32
    }
}

impl fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<GrpcCode> for i32 {
    fn from(code: GrpcCode) -> i32 {
        code.as_i32()
    }
}

/// The codes [`GrpcErrorsAsFailures::new`] counts as failures: the back
/// end is down, overloaded, too slow or broken.
const DEFAULT_FAILURES: u32 = GrpcCode::Unavailable.bit()
    | GrpcCode::DeadlineExceeded.bit()
    | GrpcCode::ResourceExhausted.bit()
    | GrpcCode::Internal.bit()
    | GrpcCode::Unknown.bit();

/// The codes [`GrpcErrorsAsFailures::new`] ignores (not evidence either
/// way): `UNIMPLEMENTED`, the answer of a router that has no such method,
/// given before any back end is called.
const DEFAULT_IGNORED: u32 = GrpcCode::Unimplemented.bit();

/// Classifies gRPC calls by their `grpc-status`, read from the response
/// headers or, as is usual, from the trailers at the end of the body.
///
/// By default a call fails when the inner service returns `Err` or its
/// status is `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`,
/// `INTERNAL` or `UNKNOWN`: the codes that say the back end is down,
/// overloaded, too slow or broken. The others (`NOT_FOUND`,
/// `INVALID_ARGUMENT`, `PERMISSION_DENIED`, …) are about the request and
/// count as successes, except `UNIMPLEMENTED`, which a router answers for
/// a method it does not know without calling the back end: it is
/// [`Outcome::Ignored`], not evidence either way.
/// [`with_failure`](Self::with_failure),
/// [`with_success`](Self::with_success) and
/// [`with_ignored`](Self::with_ignored) change the sets.
///
/// # When the call is settled
///
/// - `grpc-status` in the response headers (a trailers-only response, the
///   usual shape of an immediate error): at once, from that status.
/// - No `grpc-status` and an HTTP status other than 2xx (a proxy or load
///   balancer answered): at once, from the code gRPC clients derive from
///   the HTTP status ([`GrpcCode::from_http_status`]; `503` is
///   `UNAVAILABLE`, `404` is `UNIMPLEMENTED`).
/// - Otherwise the body is wrapped in a [`GrpcBody`] that settles the call
///   when its trailers arrive. The call's duration, for slow-call
///   detection, is the time to the response headers: a long stream is not
///   a slow call.
///
/// A stream that ends without trailers, whose trailers have no
/// `grpc-status` or one that is not a number, or whose body yields an error
/// is a failure: the gRPC protocol treats all of these as errors. A number
/// outside the known codes counts as `UNKNOWN`. A body dropped before its
/// end (the client went away) is cancelled, neither success nor failure.
///
/// Nothing is allocated per call.
///
/// ```
/// use brownout::classify::{GrpcCode, GrpcErrorsAsFailures};
/// use brownout::{BreakerPolicy, CircuitBreakerLayer};
/// use tower::ServiceBuilder;
///
/// // Also count CANCELLED, and not RESOURCE_EXHAUSTED (a per-user quota here).
/// let classifier = GrpcErrorsAsFailures::new()
///     .with_failure(GrpcCode::Cancelled)
///     .with_success(GrpcCode::ResourceExhausted);
/// assert!(classifier.is_failure(GrpcCode::Unavailable));
/// assert!(!classifier.is_failure(GrpcCode::ResourceExhausted));
///
/// let svc = ServiceBuilder::new()
///     .layer(CircuitBreakerLayer::new(BreakerPolicy::default()).classify(classifier))
///     .service_fn(|_req: http::Request<String>| async {
///         Ok::<_, std::io::Error>(http::Response::new(String::new()))
///     });
/// # let _ = svc;
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrpcErrorsAsFailures {
    /// Bit `n` set: code `n` is a failure.
    failures: u32,
    /// Bit `n` set: code `n` is not evidence (never also a failure).
    ignored: u32,
}

impl GrpcErrorsAsFailures {
    /// The default classifier: `UNAVAILABLE`, `DEADLINE_EXCEEDED`,
    /// `RESOURCE_EXHAUSTED`, `INTERNAL` and `UNKNOWN` are failures.
    pub const fn new() -> Self {
        Self {
            failures: DEFAULT_FAILURES,
            ignored: DEFAULT_IGNORED,
        }
    }

    /// Counts `code` as a failure too.
    pub const fn with_failure(mut self, code: GrpcCode) -> Self {
        self.failures |= code.bit();
        self.ignored &= !code.bit();
        self
    }

    /// Counts `code` as a success.
    pub const fn with_success(mut self, code: GrpcCode) -> Self {
        self.failures &= !code.bit();
        self.ignored &= !code.bit();
        self
    }

    /// Counts `code` as [`Outcome::Ignored`]: not evidence either way.
    pub const fn with_ignored(mut self, code: GrpcCode) -> Self {
        self.failures &= !code.bit();
        self.ignored |= code.bit();
        self
    }

    /// Whether a call ending with `code` is a failure.
    pub const fn is_failure(&self, code: GrpcCode) -> bool {
        self.failures & code.bit() != 0
    }

    /// The outcome of a call ending with `code`.
    pub const fn outcome_of(&self, code: GrpcCode) -> Outcome {
        if self.is_failure(code) {
            Outcome::Failure
        } else if self.ignored & code.bit() != 0 {
            Outcome::Ignored
        } else {
            Outcome::Success
        }
    }

    /// The outcome a `grpc-status` value says; see the type's docs.
    fn outcome_of_status(&self, value: &HeaderValue) -> Outcome {
        match parse_status(value.as_bytes()) {
            Some(n) => self.outcome_of(GrpcCode::from_i32(n).unwrap_or(GrpcCode::Unknown)),
            None => Outcome::Failure,
        }
    }

    /// The outcome of a stream's trailers.
    fn outcome_of_trailers(&self, trailers: &HeaderMap) -> Outcome {
        match trailers.get(GRPC_STATUS) {
            Some(value) => self.outcome_of_status(value),
            None => Outcome::Failure,
        }
    }
}

impl Default for GrpcErrorsAsFailures {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for GrpcErrorsAsFailures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Failures(u32);
        impl fmt::Debug for Failures {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_set()
                    .entries(GrpcCode::ALL.iter().filter(|c| self.0 & c.bit() != 0))
                    .finish()
            }
        }
        f.debug_struct("GrpcErrorsAsFailures")
            .field("failures", &Failures(self.failures))
            .field("ignored", &Failures(self.ignored))
            .finish()
    }
}

/// A `grpc-status` value: one or more ASCII digits (the gRPC protocol's
/// grammar), at most `i32::MAX`.
fn parse_status(bytes: &[u8]) -> Option<i32> {
    if bytes.is_empty() {
        return None;
    }
    let mut n: i32 = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(i32::from(b - b'0'))?;
    }
    Some(n)
}

impl<B, E> Classify<Response<B>, E> for GrpcErrorsAsFailures
where
    B: Body,
{
    type Response = Response<GrpcBody<B>>;
    type Eos = GrpcErrorsAsFailures;

    fn classify(&self, result: &Result<Response<B>, E>) -> Classified<Self> {
        let Ok(response) = result else {
            return Classified::Ready(Outcome::Failure);
        };
        if let Some(status) = response.headers().get(GRPC_STATUS) {
            Classified::Ready(self.outcome_of_status(status))
        } else if !response.status().is_success() {
            Classified::Ready(self.outcome_of(GrpcCode::from_http_status(response.status())))
        } else if response.body().is_end_stream() {
            // No status in the headers and no trailers to come.
            Classified::Ready(Outcome::Failure)
        } else {
            Classified::RequiresEos(*self)
        }
    }

    fn respond(
        &self,
        response: Response<B>,
        unsettled: Option<Unsettled<Self>>,
    ) -> Response<GrpcBody<B>> {
        response.map(|inner| GrpcBody { inner, unsettled })
    }
}

pin_project! {
    /// A gRPC response body that settles its call when the trailers arrive;
    /// made by [`GrpcErrorsAsFailures`].
    ///
    /// Frames pass through unchanged, as do
    /// [`size_hint`](Body::size_hint) and
    /// [`is_end_stream`](Body::is_end_stream). The call is settled by the
    /// trailers' `grpc-status`, or as a failure if the body yields an error
    /// or ends without trailers. Dropped before then (the client went
    /// away), the body cancels the call: it is not counted, and a half-open
    /// probe slot it held is given back. A call already settled from the
    /// response headers leaves the body nothing to do.
    #[derive(Debug)]
    pub struct GrpcBody<B> {
        #[pin]
        inner: B,
        unsettled: Option<Unsettled<GrpcErrorsAsFailures>>,
    }
}

impl<B> GrpcBody<B> {
    /// A body with no call to settle: an answer brownout made itself (a
    /// fallback), given the type of the classified responses.
    pub fn unclassified(inner: B) -> Self {
        Self {
            inner,
            unsettled: None,
        }
    }
}

impl<B: Default> Default for GrpcBody<B> {
    fn default() -> Self {
        Self::unclassified(B::default())
    }
}

impl<B: Body> Body for GrpcBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if let Some(unsettled) = this.unsettled.as_ref() {
            let verdict = match &frame {
                Some(Ok(frame)) => match frame.trailers_ref() {
                    Some(trailers) => Some(unsettled.eos().outcome_of_trailers(trailers)),
                    // A data frame, and nothing after it: no trailers.
                    None if this.inner.is_end_stream() => Some(Outcome::Failure),
                    None => None,
                },
                Some(Err(_)) | None => Some(Outcome::Failure),
            };
            if let Some(outcome) = verdict {
                if let Some(unsettled) = this.unsettled.take() {
                    unsettled.settle(outcome);
                }
            }
        }
        Poll::Ready(frame)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
