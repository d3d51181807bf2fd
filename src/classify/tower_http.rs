//! A bridge from tower-http's classifiers: any
//! [`ClassifyResponse`](tower_http::classify::ClassifyResponse) used as a
//! brownout [`Classify`].

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_http::classify::{ClassifiedResponse, ClassifyEos, ClassifyResponse};

use super::{Classified, Classify, Outcome, Unsettled};

/// A tower-http response classifier, used to settle brownout's calls.
///
/// A response tower-http classifies as a failure is a failure; one it
/// accepts is a success; one whose verdict comes at the end of the stream
/// (`ClassifiedResponse::RequiresEos`) has its body wrapped in a
/// [`TowerHttpBody`], which settles the call with the classifier's
/// `classify_eos` when the trailers arrive or the stream ends. An inner
/// error is a failure. tower-http has no "not evidence" class: a 4xx is
/// whatever the wrapped classifier says (tower-http's own
/// `ServerErrorsAsFailures` accepts it), where brownout's
/// [`ServerErrorsAsFailures`](super::ServerErrorsAsFailures) ignores it.
///
/// ```
/// use brownout::classify::TowerHttp;
/// use brownout::{BreakerPolicy, CircuitBreakerLayer};
/// use tower::ServiceBuilder;
/// use tower_http::classify::StatusInRangeAsFailures;
///
/// // 400..=599 are failures.
/// let classifier = TowerHttp(StatusInRangeAsFailures::new(400..=599));
/// let svc = ServiceBuilder::new()
///     .layer(CircuitBreakerLayer::new(BreakerPolicy::default()).classify(classifier))
///     .service_fn(|_req: http::Request<String>| async {
///         Ok::<_, std::io::Error>(http::Response::new(String::new()))
///     });
/// # let _ = svc;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct TowerHttp<C>(pub C);

impl<C, B, E> Classify<Response<B>, E> for TowerHttp<C>
where
    C: ClassifyResponse + Clone,
    B: Body,
{
    type Response = Response<TowerHttpBody<B, C::ClassifyEos>>;
    type Eos = C::ClassifyEos;

    fn classify(&self, result: &Result<Response<B>, E>) -> Classified<C::ClassifyEos> {
        match result {
            Ok(response) => match self.0.clone().classify_response(response) {
                ClassifiedResponse::Ready(Ok(())) => Classified::Ready(Outcome::Success),
                ClassifiedResponse::Ready(Err(_)) => Classified::Ready(Outcome::Failure),
                ClassifiedResponse::RequiresEos(eos) => Classified::RequiresEos(eos),
            },
            Err(_) => Classified::Ready(Outcome::Failure),
        }
    }

    fn respond(
        &self,
        response: Response<B>,
        unsettled: Option<Unsettled<C::ClassifyEos>>,
    ) -> Self::Response {
        response.map(|inner| TowerHttpBody { inner, unsettled })
    }
}

pin_project! {
    /// A response body that settles its call with a tower-http
    /// [`ClassifyEos`] when the stream ends; made by [`TowerHttp`].
    ///
    /// Frames, [`size_hint`](Body::size_hint) and
    /// [`is_end_stream`](Body::is_end_stream) pass through unchanged. The
    /// call is settled by `classify_eos` with the trailers (or none, if the
    /// stream ends without), or as a failure if the body yields an error.
    /// Dropped before then, the body cancels the call.
    pub struct TowerHttpBody<B, Eos> {
        #[pin]
        inner: B,
        unsettled: Option<Unsettled<Eos>>,
    }
}

impl<B, Eos> TowerHttpBody<B, Eos> {
    /// A body with no call to settle (an answer brownout made itself).
    pub fn unclassified(inner: B) -> Self {
        Self {
            inner,
            unsettled: None,
        }
    }
}

impl<B: fmt::Debug, Eos> fmt::Debug for TowerHttpBody<B, Eos> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TowerHttpBody")
            .field("inner", &self.inner)
            .field("settled", &self.unsettled.is_none())
            .finish()
    }
}

/// An answer brownout makes itself (a fallback's problem document).
impl<B: From<String>, Eos> From<String> for TowerHttpBody<B, Eos> {
    fn from(text: String) -> Self {
        Self::unclassified(B::from(text))
    }
}

impl<B: Default, Eos> Default for TowerHttpBody<B, Eos> {
    fn default() -> Self {
        Self::unclassified(B::default())
    }
}

/// The outcome tower-http's `classify_eos` gives.
fn outcome_of<F>(verdict: Result<(), F>) -> Outcome {
    match verdict {
        Ok(()) => Outcome::Success,
        Err(_) => Outcome::Failure,
    }
}

impl<B: Body, Eos: ClassifyEos> Body for TowerHttpBody<B, Eos> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if this.unsettled.is_some() {
            let ended = match &frame {
                Some(Ok(frame)) => match frame.trailers_ref() {
                    Some(trailers) => Some(Some(trailers)),
                    None if this.inner.is_end_stream() => Some(None),
                    None => None,
                },
                None => Some(None),
                Some(Err(_)) => {
                    if let Some(unsettled) = this.unsettled.take() {
                        unsettled.settle(Outcome::Failure);
                    }
                    None
                }
            };
            if let Some(trailers) = ended {
                if let Some(unsettled) = this.unsettled.take() {
                    unsettled.settle_with(|eos| outcome_of(eos.classify_eos(trailers)));
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
