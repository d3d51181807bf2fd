//! The standalone fallback layer, in front of other brownout layers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::{BoxError, Layer, Service};

use crate::reject::Rejected;

use super::Fallback;

/// Turns the [`Rejected`] errors of the layers below it into answers, with
/// a [`Fallback`]; other errors pass through.
///
/// ```
/// use brownout::fallback::{fallback_fn, FallbackLayer};
/// use brownout::{BreakerPolicy, CircuitBreakerLayer, Mode, Rejected};
/// use tower::{BoxError, ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = ServiceBuilder::new()
///     .layer(FallbackLayer::new(fallback_fn(|rejected: Rejected, _req: Option<u32>| async move {
///         format!("come back in {:?}", rejected.retry_after())
///     })))
///     .layer(CircuitBreakerLayer::new(BreakerPolicy { mode: Mode::ForcedOpen, ..Default::default() }))
///     .service_fn(|day: u32| async move { Ok::<_, BoxError>(format!("slots for day {day}")) });
/// assert_eq!(svc.oneshot(3).await.unwrap(), "come back in None");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct FallbackLayer<F> {
    fallback: F,
}

impl<F> FallbackLayer<F> {
    /// Answers rejections with `fallback`.
    pub const fn new(fallback: F) -> Self {
        Self { fallback }
    }
}

impl<S, F: Clone> Layer<S> for FallbackLayer<F> {
    type Service = FallbackService<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        FallbackService {
            inner,
            fallback: self.fallback.clone(),
        }
    }
}

/// A service whose rejections a [`Fallback`] answers; see [`FallbackLayer`].
#[derive(Debug, Clone)]
pub struct FallbackService<S, F> {
    inner: S,
    fallback: F,
}

impl<S, F, Req> Service<Req> for FallbackService<S, F>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    F: Fallback<Req, S::Response, BoxError> + Clone,
{
    type Response = S::Response;
    type Error = F::Error;
    type Future = ResponseFuture<S::Future, F, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(|e| self.fallback.inner_error(e.into()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        ResponseFuture {
            state: State::Inner {
                inner: self.inner.call(req),
                fallback: Some(self.fallback.clone()),
            },
        }
    }
}

pin_project! {
    /// The response future of [`FallbackService`].
    pub struct ResponseFuture<Fut, F, Req>
    where
        F: Fallback<Req, <Fut as OkOf>::Ok, BoxError>,
        Fut: OkOf,
    {
        #[pin]
        state: State<Fut, F, Req>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<Fut, F, Req>
    where
        F: Fallback<Req, <Fut as OkOf>::Ok, BoxError>,
        Fut: OkOf,
    {
        Inner { #[pin] inner: Fut, fallback: Option<F> },
        Fallback { #[pin] answer: F::Future },
    }
}

/// The success type of a response future (a helper for naming types).
pub trait OkOf {
    /// The `T` of `Result<T, E>`.
    type Ok;
}

impl<Fut, T, E> OkOf for Fut
where
    Fut: Future<Output = Result<T, E>>,
{
    type Ok = T;
}

impl<Fut, F, Req> std::fmt::Debug for ResponseFuture<Fut, F, Req>
where
    F: Fallback<Req, <Fut as OkOf>::Ok, BoxError>,
    Fut: OkOf,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<Fut, T, E, F, Req> Future for ResponseFuture<Fut, F, Req>
where
    Fut: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    F: Fallback<Req, T, BoxError>,
{
    type Output = Result<T, F::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let answer = match this.state.as_mut().project() {
                StateProj::Fallback { answer } => return answer.poll(cx),
                StateProj::Inner { inner, fallback } => {
                    let result = ready!(inner.poll(cx));
                    let fallback = fallback.take().expect("polled after completion");
                    match result {
                        Ok(response) => return Poll::Ready(Ok(response)),
                        Err(error) => match error.into().downcast::<Rejected>() {
                            Ok(rejected) => fallback.fallback(*rejected, None),
                            Err(error) => match fallback.on_inner_error(error) {
                                Ok(answer) => answer,
                                Err(error) => return Poll::Ready(Err(error)),
                            },
                        },
                    }
                }
            };
            this.state.set(State::Fallback { answer });
        }
    }
}
