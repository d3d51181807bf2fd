//! HTTP classification: a 5xx is the back end's failure; a 4xx is not
//! evidence either way.

use std::convert::Infallible;

use super::{Classified, Classify, Outcome, Unsettled};

/// Inner errors and HTTP responses with a status of 500 or more are
/// failures; a 4xx is [`Outcome::Ignored`]; everything else is a success.
///
/// A 4xx says something about the request (bad input, no such page, wrong
/// method, no credentials, too many requests from this client), not about
/// the back end's health, and most are answered before the back end is
/// called at all: axum's method router answers `405` inside a
/// `route_layer`, a validation or auth layer answers `400`/`401`. Counting
/// a 4xx as a failure would let a misbehaving client open the breaker for
/// everyone; counting it as a success would let it close a half-open
/// breaker on a dead back end (three `OPTIONS` to a `GET` route would do).
/// So a 4xx gives back the slot it held and teaches the breaker and the
/// limit nothing. A route whose healthy answers are all 4xx gives its
/// breaker nothing to judge by: classify it with
/// [`classify_fn`](super::classify_fn).
///
/// The response passes through untouched and the call is settled as soon
/// as its headers arrive; nothing is allocated.
///
/// ```
/// use brownout::classify::ServerErrorsAsFailures;
/// use brownout::{BreakerPolicy, CircuitBreakerLayer};
/// use tower::ServiceBuilder;
///
/// let svc = ServiceBuilder::new()
///     .layer(CircuitBreakerLayer::new(BreakerPolicy::default()).classify(ServerErrorsAsFailures))
///     .service_fn(|_req: http::Request<()>| async {
///         Ok::<_, std::io::Error>(http::Response::new(()))
///     });
/// # let _ = svc;
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerErrorsAsFailures;

impl ServerErrorsAsFailures {
    /// The classifier.
    pub const fn new() -> Self {
        Self
    }

    /// The outcome of an answer with HTTP status `status`.
    pub const fn outcome_of(status: http::StatusCode) -> Outcome {
        match status.as_u16() {
            // `>= 500` rather than `is_server_error()`: the nonstandard
            // 600..=999 a broken back end may send are failures too.
            500.. => Outcome::Failure,
            400..=499 => Outcome::Ignored,
            _ => Outcome::Success,
        }
    }
}

impl<B, E> Classify<http::Response<B>, E> for ServerErrorsAsFailures {
    type Response = http::Response<B>;
    type Eos = Infallible;

    #[inline]
    fn classify(&self, result: &Result<http::Response<B>, E>) -> Classified<Infallible> {
        Classified::Ready(match result {
            Ok(response) => Self::outcome_of(response.status()),
            Err(_) => Outcome::Failure,
        })
    }

    #[inline]
    fn respond(
        &self,
        response: http::Response<B>,
        _: Option<Unsettled<Infallible>>,
    ) -> http::Response<B> {
        response
    }
}
