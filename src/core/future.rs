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
            rejected: Option<Rejected>,
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
                rejected: Some(rejected),
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
            StateProj::Rejected { rejected } => Poll::Ready(Err(rejected
                .take()
                .expect("polled after completion")
                .into())),
        }
    }
}
