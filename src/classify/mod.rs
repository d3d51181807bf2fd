//! What counts as a failure: pluggable, with defaults for plain services,
//! HTTP and gRPC.
//!
//! A [`Classify`] implementation looks at an admitted call's inner result
//! and says what it means: an [`Outcome`] now, or, for a verdict that comes
//! in a stream's trailers, what reads it there ([`Classified`]). The
//! layer's response future settles the call with that verdict; a
//! classifier never touches the call's [`Permit`]. Slow calls need no
//! classifier: the breaker times every call itself and compares with
//! `slow_call_duration`.
//!
//! | classifier | failure when | feature |
//! |---|---|---|
//! | [`ErrorsAsFailures`] (default) | the inner service returns `Err` | |
//! | [`ClassifyFn`] / [`classify_fn`] | your closure says so | |
//! | `ServerErrorsAsFailures` | `Err`, or an HTTP status of 500 or more; a 4xx is [`Outcome::Ignored`] (it says nothing about the back end) | `http` |
//! | `TowerHttp` | whatever the tower-http classifier it wraps says (`ClassifyResponse`, trailers included) | `tower-http` |
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

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;

pub use crate::core::permit::Permit;

#[cfg(feature = "grpc")]
mod grpc;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "tower-http")]
mod tower_http;

#[cfg(feature = "grpc")]
pub use grpc::{GrpcBody, GrpcCode, GrpcErrorsAsFailures};
#[cfg(feature = "http")]
pub use http::ServerErrorsAsFailures;
#[cfg(feature = "tower-http")]
pub use tower_http::{TowerHttp, TowerHttpBody};

/// How an admitted call went, as far as the back end's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The back end did its job.
    Success,
    /// The back end failed.
    Failure,
    /// Not evidence about the back end either way: the answer came from
    /// somewhere in front of it (a router's `405`, a validation layer's
    /// `400`) or says only that the request was wrong. The call gives back
    /// what it held (a half-open probe slot, an in-flight slot) and teaches
    /// neither the breaker nor the limit anything; it still counts as
    /// served.
    Ignored,
}

/// A classifier's verdict on an inner result: known now, or only at the end
/// of the response's stream (gRPC's trailers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classified<Eos> {
    /// The verdict, known from the result alone.
    Ready(Outcome),
    /// The verdict comes at the end of the stream; `Eos` reads it there.
    /// For an inner `Err` this counts as [`Outcome::Failure`].
    RequiresEos(Eos),
}

/// Says what an inner service's result means for the back end's health.
///
/// A classifier is pure: it looks at the result and returns a verdict; the
/// layer's response future settles the call with it. Slow calls need no
/// classifier: the breaker times every call itself and compares with
/// `slow_call_duration`.
///
/// A classifier whose verdict may come at the end of a streaming body
/// returns [`Classified::RequiresEos`] with what reads the verdict there
/// (its `Eos`); its [`respond`](Classify::respond) then puts the
/// [`Unsettled`] call into the response (a wrapped body, such as
/// gRPC's `GrpcBody`), which settles it when the
/// stream ends. A classifier that always knows at once uses
/// [`Infallible`] as its `Eos` and returns the response untouched:
///
/// ```
/// use std::convert::Infallible;
/// use brownout::classify::{Classified, Classify, Outcome, Unsettled};
///
/// /// A back end that answers `Ok(None)` when its database is gone.
/// #[derive(Clone)]
/// struct NoneIsFailure;
///
/// impl<T, E> Classify<Option<T>, E> for NoneIsFailure {
///     type Response = Option<T>;
///     type Eos = Infallible;
///
///     fn classify(&self, result: &Result<Option<T>, E>) -> Classified<Infallible> {
///         Classified::Ready(match result {
///             Ok(Some(_)) => Outcome::Success,
///             _ => Outcome::Failure,
///         })
///     }
///
///     fn respond(&self, response: Option<T>, _: Option<Unsettled<Infallible>>) -> Option<T> {
///         response
///     }
/// }
/// ```
pub trait Classify<T, E> {
    /// The response type once classified (`T`, or `T` with its body
    /// wrapped to read the verdict at its end).
    type Response;
    /// What reads the verdict at the end of the stream; [`Infallible`]
    /// for a classifier that always knows at once.
    type Eos;

    /// The verdict on `result`.
    fn classify(&self, result: &Result<T, E>) -> Classified<Self::Eos>;

    /// The response to return: `unsettled` is `Some` when
    /// [`classify`](Classify::classify) asked for the end of the stream;
    /// the response must then carry it to the stream's end and
    /// [settle](Unsettled::settle) it there (dropped unsettled, the call
    /// counts as cancelled).
    fn respond(&self, response: T, unsettled: Option<Unsettled<Self::Eos>>) -> Self::Response;
}

/// An admitted call whose verdict comes at the end of its response's
/// stream, with what reads the verdict there (`Eos`).
///
/// Dropped without [`settle`](Unsettled::settle) (the client went away
/// before the end of the stream), the call is cancelled: not a sample, and
/// whatever it held is given back.
#[derive(Debug)]
pub struct Unsettled<Eos> {
    permit: Permit,
    eos: Eos,
}

impl<Eos> Unsettled<Eos> {
    /// What reads the verdict at the end of the stream.
    pub fn eos(&self) -> &Eos {
        &self.eos
    }

    /// Settles the call with `outcome`.
    pub fn settle(self, outcome: Outcome) {
        self.permit.record(outcome);
    }

    /// Settles the call with the outcome `verdict` reads with the `Eos`
    /// (for an `Eos` that is used up reading it, as tower-http's is).
    pub fn settle_with(self, verdict: impl FnOnce(Eos) -> Outcome) {
        let Self { permit, eos } = self;
        permit.record(verdict(eos));
    }
}

/// Classifies `result` with `classifier` and settles `permit` with the
/// verdict, now or (for a verdict at the end of the stream) through the
/// response: what every response future does with an inner result.
#[inline(always)]
pub(crate) fn settle<C, T, E>(
    classifier: &C,
    result: Result<T, E>,
    mut permit: Permit,
) -> Result<C::Response, E>
where
    C: Classify<T, E>,
{
    match classifier.classify(&result) {
        Classified::Ready(outcome) => {
            permit.record(outcome);
            result.map(|response| classifier.respond(response, None))
        }
        Classified::RequiresEos(eos) => match result {
            Ok(response) => {
                // The call's duration, for slow-call detection, is the time
                // to the response's start: a long stream is not a slow call.
                permit.responded();
                Ok(classifier.respond(response, Some(Unsettled { permit, eos })))
            }
            Err(error) => {
                permit.record(Outcome::Failure);
                Err(error)
            }
        },
    }
}

/// The default: an inner `Err` is a failure, every `Ok` a success.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsAsFailures;

impl<T, E> Classify<T, E> for ErrorsAsFailures {
    type Response = T;
    type Eos = Infallible;

    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Classified<Infallible> {
        Classified::Ready(if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        })
    }

    #[inline]
    fn respond(&self, response: T, _: Option<Unsettled<Infallible>>) -> T {
        response
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
    type Eos = Infallible;

    #[inline]
    fn classify(&self, result: &Result<T, E>) -> Classified<Infallible> {
        Classified::Ready((self.f)(result))
    }

    #[inline]
    fn respond(&self, response: T, _: Option<Unsettled<Infallible>>) -> T {
        response
    }
}
