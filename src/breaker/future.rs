//! The [`CircuitBreaker`](super::CircuitBreaker)'s response future.

crate::core::future::response_future! {
    /// The response future of [`CircuitBreaker`](super::CircuitBreaker) and
    /// [`KeyedCircuitBreaker`](super::KeyedCircuitBreaker): the inner call,
    /// settled with the classifier's verdict when it answers, or the
    /// breaker's rejection, ready at once.
    ///
    /// Dropping it while the call runs gives back what the call held (a
    /// half-open probe slot) and counts the call as cancelled.
    ResponseFuture
}
