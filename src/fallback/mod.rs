//! Fallbacks: turn every rejection into a clear answer.
//!
//! A [`Fallback`] receives the [`Rejected`] (its [`Reason`](crate::Reason)
//! and retry hint) and, when the rejection happened before the inner call,
//! the request itself, handed back: it can read it, serve a cached answer,
//! or forward it to a secondary back end. It answers with a response of the
//! inner service's type, so the stack as a whole keeps the inner service's
//! error type: an axum router's `Infallible` stays `Infallible`.
//!
//! | fallback | answers | feature |
//! |---|---|---|
//! | [`RejectAsError`] | the rejection as the service's error (`BoxError`), for callers that handle it themselves | |
//! | [`fallback_fn`] | whatever your async closure answers | |
//! | [`ProblemJson`] | `503 Service Unavailable` with `Retry-After` and an RFC 9457 `application/problem+json` body | `http` |
//! | [`GrpcUnavailable`] | gRPC `UNAVAILABLE` (`RESOURCE_EXHAUSTED` when shed) with `grpc-retry-pushback-ms` | `grpc` |
//!
//! Inner errors pass through by default; [`FallbackExt::or_on_error`] answers
//! them too (a 502 rather than a dropped connection).
//!
//! In [`BrownoutLayer`](crate::BrownoutLayer) the fallback gets the request
//! back whenever the rejection came before the inner call (at admission, or
//! when a wait in the room ran out). The standalone [`FallbackLayer`] sits
//! in front of other layers, which consumed the request: it gets `None`.

mod layer;

#[cfg(feature = "grpc")]
mod grpc;
#[cfg(feature = "http")]
mod http;

use std::convert::Infallible;
use std::fmt;
use std::future::{Future, Ready, ready};
use std::marker::PhantomData;

use tower::BoxError;

use crate::reject::Rejected;

pub use self::layer::{FallbackLayer, FallbackService, ResponseFuture};

#[cfg(feature = "grpc")]
pub use self::grpc::GrpcUnavailable;
#[cfg(feature = "http")]
pub use self::http::{PROBLEM_JSON, ProblemJson};

/// Answers a rejected request.
///
/// `Resp` is the inner service's response type and `E` its error type;
/// [`Error`](Self::Error) is the error of the service the fallback sits in.
pub trait Fallback<Req, Resp, E> {
    /// The error of the service the fallback sits in.
    type Error;
    /// The answer, once ready.
    type Future: Future<Output = Result<Resp, Self::Error>>;

    /// Answers `rejected`; `request` is the rejected request when the
    /// rejection came before the inner call.
    fn fallback(&self, rejected: Rejected, request: Option<Req>) -> Self::Future;

    /// Passes an error of the inner service on.
    fn inner_error(&self, error: E) -> Self::Error;

    /// Answers an error of the inner service (its call failed, or it was
    /// not ready), or passes it on as [`inner_error`](Self::inner_error)
    /// does, which is the default. [`FallbackExt::or_on_error`] answers them.
    fn on_inner_error(&self, error: E) -> Result<Self::Future, Self::Error> {
        Err(self.inner_error(error))
    }
}

/// [`or_on_error`](Self::or_on_error) for every fallback.
pub trait FallbackExt: Sized {
    /// This fallback for rejections, and `on_error` for the inner service's
    /// errors too: every request then gets an answer of the inner
    /// service's type.
    ///
    /// ```
    /// # #[cfg(feature = "http")] {
    /// use brownout::fallback::{FallbackExt, ProblemJson};
    /// use brownout::{BrownoutLayer, Policy};
    /// use http::{Request, Response, StatusCode};
    /// use tower::{Layer, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // 503 for rejections, and a 502 rather than a dropped connection when
    /// // the back end's client fails.
    /// let layer = BrownoutLayer::from_policy(&Policy::default())
    ///     .http()
    ///     .fallback(ProblemJson.or_on_error(|err: std::io::Error| async move {
    ///         let mut response = Response::new(format!("bad gateway: {err}"));
    ///         *response.status_mut() = StatusCode::BAD_GATEWAY;
    ///         response
    ///     }));
    /// let svc = layer.layer(tower::service_fn(|_: Request<String>| async {
    ///     Err::<Response<String>, _>(std::io::Error::other("connection refused"))
    /// }));
    /// let response = svc.oneshot(Request::new(String::new())).await.unwrap();
    /// assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    /// # }
    /// # }
    /// ```
    fn or_on_error<G>(self, on_error: G) -> OrOnError<Self, G> {
        OrOnError {
            fallback: self,
            on_error,
        }
    }
}

impl<T> FallbackExt for T {}

/// A fallback that also answers the inner service's errors; see
/// [`FallbackExt::or_on_error`].
#[derive(Debug, Clone)]
pub struct OrOnError<F, G> {
    fallback: F,
    on_error: G,
}

impl<Req, Resp, E, F, G, Fut> Fallback<Req, Resp, E> for OrOnError<F, G>
where
    F: Fallback<Req, Resp, E>,
    G: Fn(E) -> Fut,
    Fut: Future<Output = Resp>,
{
    type Error = F::Error;
    type Future = EitherAnswer<F::Future, Fut>;

    fn fallback(&self, rejected: Rejected, request: Option<Req>) -> Self::Future {
        EitherAnswer::Rejection {
            inner: self.fallback.fallback(rejected, request),
        }
    }

    fn inner_error(&self, error: E) -> Self::Error {
        self.fallback.inner_error(error)
    }

    fn on_inner_error(&self, error: E) -> Result<Self::Future, Self::Error> {
        Ok(EitherAnswer::Error {
            inner: (self.on_error)(error),
        })
    }
}

pin_project_lite::pin_project! {
    /// The answer of an [`OrOnError`]: to a rejection or to an inner error
    /// (`inner` is that answer's future).
    #[project = EitherProj]
    #[allow(missing_docs)]
    pub enum EitherAnswer<A, B> {
        /// Answering a rejection.
        Rejection { #[pin] inner: A },
        /// Answering an inner error.
        Error { #[pin] inner: B },
    }
}

impl<A, B> fmt::Debug for EitherAnswer<A, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EitherAnswer::Rejection { .. } => "EitherAnswer::Rejection",
            EitherAnswer::Error { .. } => "EitherAnswer::Error",
        })
    }
}

impl<A, B, T, E> Future for EitherAnswer<A, B>
where
    A: Future<Output = Result<T, E>>,
    B: Future<Output = T>,
{
    type Output = Result<T, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.project() {
            EitherProj::Rejection { inner } => inner.poll(cx),
            EitherProj::Error { inner } => inner.poll(cx).map(Ok),
        }
    }
}

/// No fallback: the rejection is the service's error, a `BoxError` that
/// callers find with `err.downcast_ref::<brownout::Rejected>()`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RejectAsError;

impl<Req, Resp, E: Into<BoxError>> Fallback<Req, Resp, E> for RejectAsError {
    type Error = BoxError;
    type Future = Ready<Result<Resp, BoxError>>;

    #[inline]
    fn fallback(&self, rejected: Rejected, _: Option<Req>) -> Self::Future {
        ready(Err(rejected.into()))
    }

    #[inline]
    fn inner_error(&self, error: E) -> BoxError {
        error.into()
    }
}

/// A fallback from an async closure; see [`fallback_fn`].
pub struct FallbackFn<F, E = Infallible> {
    f: F,
    _error: PhantomData<fn() -> E>,
}

/// Answers rejections with `f(rejected, request)`, an async closure whose
/// output is the inner service's response; inner errors pass through
/// untouched.
///
/// ```
/// use brownout::fallback::fallback_fn;
/// use brownout::Rejected;
///
/// // Serve yesterday's slot list when the back end cannot answer. The
/// // second type is the inner service's error, passed through untouched.
/// let cached = fallback_fn::<_, std::io::Error>(|rejected: Rejected, request: Option<String>| async move {
///     format!("cached slots ({}), for {:?}", rejected.reason(), request)
/// });
/// # let _ = cached;
/// ```
pub fn fallback_fn<F, E>(f: F) -> FallbackFn<F, E> {
    FallbackFn {
        f,
        _error: PhantomData,
    }
}

impl<F: Clone, E> Clone for FallbackFn<F, E> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            _error: PhantomData,
        }
    }
}

impl<F, E> fmt::Debug for FallbackFn<F, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackFn").finish_non_exhaustive()
    }
}

impl<Req, Resp, E, F, Fut> Fallback<Req, Resp, E> for FallbackFn<F, E>
where
    F: Fn(Rejected, Option<Req>) -> Fut,
    Fut: Future<Output = Resp>,
{
    type Error = E;
    type Future = Answered<Fut, E>;

    fn fallback(&self, rejected: Rejected, request: Option<Req>) -> Self::Future {
        Answered {
            inner: (self.f)(rejected, request),
            _error: PhantomData,
        }
    }

    fn inner_error(&self, error: E) -> E {
        error
    }
}

pin_project_lite::pin_project! {
    /// The future of a [`fallback_fn`]: its closure's answer, as `Ok`.
    pub struct Answered<Fut, E> {
        #[pin]
        inner: Fut,
        _error: PhantomData<fn() -> E>,
    }
}

impl<Fut, E> fmt::Debug for Answered<Fut, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Answered").finish_non_exhaustive()
    }
}

impl<Fut: Future, E> Future for Answered<Fut, E> {
    type Output = Result<Fut::Output, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.project().inner.poll(cx).map(Ok)
    }
}
