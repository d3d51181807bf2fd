//! The [`AdaptiveLimit`](super::AdaptiveLimit)'s response future.

crate::core::future::response_future! {
    /// The response future of [`AdaptiveLimit`](super::AdaptiveLimit): the
    /// inner call, settled with the classifier's verdict when it answers, or the
    /// limit's rejection (shed), ready at once.
    ///
    /// Dropping it while the call runs gives back what the call held (a
    /// slot in flight) and counts the call as cancelled.
    ResponseFuture
}
