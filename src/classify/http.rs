//! HTTP classification: a 5xx is the back end's failure, a 4xx the caller's
//! mistake.

use super::{Classify, Outcome, Permit};

/// Inner errors and HTTP responses with a status of 500 or more are
/// failures; everything else, 4xx included, is a success.
///
/// A 4xx says the request was wrong (bad input, missing page, no
/// credentials), not that the back end is unwell: counting it would let a
/// misbehaving client open the breaker for everyone. The response passes
/// through untouched and the call is settled as soon as its headers arrive;
/// nothing is allocated.
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
}

impl<B, E> Classify<http::Response<B>, E> for ServerErrorsAsFailures {
    type Response = http::Response<B>;

    #[inline]
    fn classify(
        &self,
        result: Result<http::Response<B>, E>,
        permit: Permit,
    ) -> Result<http::Response<B>, E> {
        permit.record(match &result {
            // `>= 500` rather than `is_server_error()`: the nonstandard
            // 600..=999 a broken back end may send are failures too.
            Ok(response) if response.status().as_u16() < 500 => Outcome::Success,
            _ => Outcome::Failure,
        });
        result
    }
}
