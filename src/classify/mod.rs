//! What counts as a failure: pluggable, with defaults for plain services,
//! HTTP and gRPC.
//!
//! Every admitted call hands its inner result and its [`Permit`] to a
//! [`Classify`] implementation, which settles the permit with an
//! [`Outcome`] and returns the result (possibly with a wrapped body). Slow
//! calls need no classifier: the breaker times every call itself and
//! compares with `slow_call_duration`.
//!
//! | classifier | failure when | feature |
//! |---|---|---|
//! | [`ErrorsAsFailures`] (default) | the inner service returns `Err` | |
//! | [`ClassifyFn`] / [`classify_fn`] | your closure says so | |
//! | `ServerErrorsAsFailures` | `Err`, or an HTTP status of 500 or more (4xx is the caller's fault, not the back end's) | `http` |
//! | `GrpcErrorsAsFailures` | `Err`, or a `grpc-status` of `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `INTERNAL` or `UNKNOWN`, in the headers or in the trailers (the body is wrapped in a `GrpcBody` to read them) | `grpc` |
//!
//! A closure:
//!
//! ```
//! use brownout::classify::{classify_fn, Outcome};
//!
//! // A back end that answers `Ok(-1)` when its database is gone.
//! let classifier = classify_fn(|result: &Result<i64, std::io::Error>| match result {
//!     Ok(n) if *n >= 0 => Outcome::Success,
//!     _ => Outcome::Failure,
//! });
//! # let _ = classifier;
//! ```

use std::fmt;
use std::sync::Arc;

pub use crate::core::permit::Permit;

#[cfg(feature = "grpc")]
mod grpc;
#[cfg(feature = "http")]
mod http;

#[cfg(feature = "grpc")]
pub use grpc::{GrpcBody, GrpcCode, GrpcErrorsAsFailures};
#[cfg(feature = "http")]
pub use http::ServerErrorsAsFailures;

/// How an admitted call went, as far as the back end's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The back end did its job (this includes a caller's mistake, such as
    /// an HTTP 4xx).
    Success,
    /// The back end failed.
    Failure,
}

/// Turns an inner service's result into an [`Outcome`] and settles the
/// call's [`Permit`].
///
/// Most classifiers settle at once and return the result untouched
/// (`Response = T`). One that needs the end of a streaming body (gRPC
/// trailers) moves the permit into a wrapper body and settles it there;
/// its `Response` is then the wrapped type.
pub trait Classify<T, E> {
    /// The response type once classified.
    type Response;

    /// Settles `permit` (now or later) and returns the result.
    fn classify(&self, result: Result<T, E>, permit: Permit) -> Result<Self::Response, E>;
}

/// The default: an inner `Err` is a failure, every `Ok` a success.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsAsFailures;

impl<T, E> Classify<T, E> for ErrorsAsFailures {
    type Response = T;

    #[inline]
    fn classify(&self, result: Result<T, E>, permit: Permit) -> Result<T, E> {
        permit.record(if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        });
        result
    }
}

/// A classifier from a closure over the inner result; see [`classify_fn`].
pub struct ClassifyFn<F> {
    f: Arc<F>,
}

/// Classifies with a closure `Fn(&Result<T, E>) -> Outcome`.
///
/// If the closure panics the call is settled as cancelled (its permit is
/// dropped during unwinding), so shared state stays consistent.
pub fn classify_fn<F>(f: F) -> ClassifyFn<F> {
    ClassifyFn { f: Arc::new(f) }
}

impl<F> Clone for ClassifyFn<F> {
    fn clone(&self) -> Self {
        Self { f: self.f.clone() }
    }
}

impl<F> fmt::Debug for ClassifyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifyFn").finish_non_exhaustive()
    }
}

impl<T, E, F> Classify<T, E> for ClassifyFn<F>
where
    F: Fn(&Result<T, E>) -> Outcome,
{
    type Response = T;

    fn classify(&self, result: Result<T, E>, permit: Permit) -> Result<T, E> {
        permit.record((self.f)(&result));
        result
    }
}
