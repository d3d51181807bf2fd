//! The future of a call that is admitted or rejected at once, with no
//! waiting: what the breaker's and the limit's response futures run.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tower::BoxError;

use crate::classify::Classify;
use crate::core::permit::Permit;
use crate::reject::Rejected;

pin_project! {
    /// Either the inner call, holding its [`Permit`] until it answers, or a
    /// rejection ready at once.
    ///
    /// Dropping the future drops the permit, which gives back whatever it
    /// held (a half-open probe slot) and counts the call as cancelled.
    #[derive(Debug)]
    pub(crate) struct AdmitOrReject<F, C> {
        #[pin]
        state: State<F, C>,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F, C> {
        Admitted {
            #[pin]
            inner: F,
            permit: Option<Permit>,
            classifier: C,
        },
        Rejected {
            // Boxed at once: the box is the `BoxError` the caller gets (one
            // allocation either way), and the future keeps one word, read
            // back whole when polled.
            rejected: Option<Box<Rejected>>,
        },
    }
}

impl<F, C> AdmitOrReject<F, C> {
    pub(crate) fn admitted(inner: F, permit: Permit, classifier: C) -> Self {
        Self {
            state: State::Admitted {
                inner,
                permit: Some(permit),
                classifier,
            },
        }
    }

    pub(crate) fn rejected(rejected: Rejected) -> Self {
        Self {
            state: State::Rejected {
                rejected: Some(Box::new(rejected)),
            },
        }
    }
}

impl<F, T, E, C> Future for AdmitOrReject<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<C::Response, BoxError>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Admitted {
                inner,
                permit,
                classifier,
            } => {
                let result = ready!(inner.poll(cx));
                let permit = permit.take().expect("polled after completion");
                Poll::Ready(
                    crate::classify::settle(&*classifier, result, permit).map_err(Into::into),
                )
            }
            StateProj::Rejected { rejected } => {
                Poll::Ready(Err(rejected.take().expect("polled after completion")))
            }
        }
    }
}

/// A layer's own response future over [`AdmitOrReject`]: one public type
/// per middleware (so that each names its own future), one implementation.
/// `$name` gets `admitted`/`rejected` constructors and delegates `poll`.
macro_rules! response_future {
    ($(#[$doc:meta])* $name:ident) => {
        pin_project_lite::pin_project! {
            $(#[$doc])*
            #[derive(Debug)]
            pub struct $name<F, C> {
                #[pin]
                inner: $crate::core::future::AdmitOrReject<F, C>,
            }
        }

        impl<F, C> $name<F, C> {
            pub(crate) fn admitted(
                inner: F,
                permit: $crate::core::permit::Permit,
                classifier: C,
            ) -> Self {
                Self {
                    inner: $crate::core::future::AdmitOrReject::admitted(inner, permit, classifier),
                }
            }

            pub(crate) fn rejected(rejected: $crate::reject::Rejected) -> Self {
                Self {
                    inner: $crate::core::future::AdmitOrReject::rejected(rejected),
                }
            }
        }

        impl<F, T, E, C> std::future::Future for $name<F, C>
        where
            F: std::future::Future<Output = Result<T, E>>,
            E: Into<tower::BoxError>,
            C: $crate::classify::Classify<T, E>,
        {
            type Output = Result<C::Response, tower::BoxError>;

            #[inline(always)]
            fn poll(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Self::Output> {
                self.project().inner.poll(cx)
            }
        }
    };
}
pub(crate) use response_future;
