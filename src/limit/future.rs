//! The [`AdaptiveLimit`](super::AdaptiveLimit)'s response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower::BoxError;

use crate::classify::Classify;
use crate::core::future::AdmitOrReject;
use crate::core::permit::Permit;
use crate::reject::Rejected;

pin_project! {
    /// The response future of [`AdaptiveLimit`](super::AdaptiveLimit): the
    /// inner call, settled with the classifier's verdict when it answers, or the
    /// limit's rejection (shed), ready at once.
    ///
    /// Dropping it while the call runs gives back what the call held (a
    /// slot in flight) and counts the call as cancelled.
    #[derive(Debug)]
    pub struct ResponseFuture<F, C> {
        #[pin]
        inner: AdmitOrReject<F, C>,
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn admitted(inner: F, permit: Permit, classifier: C) -> Self {
        Self {
            inner: AdmitOrReject::admitted(inner, permit, classifier),
        }
    }

    pub(crate) fn rejected(rejected: Rejected) -> Self {
        Self {
            inner: AdmitOrReject::rejected(rejected),
        }
    }
}

impl<F, T, E, C> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<C::Response, BoxError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}
