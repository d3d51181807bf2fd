//! The gRPC answer: a trailers-only response with `UNAVAILABLE` or
//! `RESOURCE_EXHAUSTED` and a retry pushback.

use std::future::{Ready, ready};

use http::{HeaderValue, Response};

use crate::classify::{GrpcBody, GrpcCode};
use crate::reject::{Reason, Rejected};

use super::Fallback;

/// Answers a rejection the gRPC way: HTTP 200 with `content-type:
/// application/grpc` and, in the headers (a trailers-only response),
/// `grpc-status` `UNAVAILABLE` (14) — or `RESOURCE_EXHAUSTED` (8) when the
/// request was shed — a `grpc-message` saying why, and
/// `grpc-retry-pushback-ms` when the retry hint is known, which gRPC
/// clients with retries honour. Inside a maintenance window, `grpc-message`
/// is the window's `message` ([`Rejected::message`]) when it has one.
///
/// The body is empty (`B::default()`), wrapped in [`GrpcBody`] so the answer
/// has the type of the classified inner responses.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcUnavailable;

impl GrpcUnavailable {
    /// The status code for `reason`.
    pub const fn code(reason: Reason) -> GrpcCode {
        match reason {
            Reason::Shed | Reason::Budget => GrpcCode::ResourceExhausted,
            Reason::Deadline => GrpcCode::DeadlineExceeded,
            _ => GrpcCode::Unavailable,
        }
    }

    /// The response for `rejected`.
    pub fn response<B: Default>(rejected: &Rejected) -> Response<B> {
        let mut response = Response::new(B::default());
        let headers = response.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/grpc"));
        headers.insert(
            "grpc-status",
            HeaderValue::from(Self::code(rejected.reason()).as_i32()),
        );
        let message = match rejected.message() {
            Some(message) => percent_encode(message),
            None => percent_encode(&rejected.to_string()),
        };
        if let Ok(message) = HeaderValue::from_str(&message) {
            headers.insert("grpc-message", message);
        }
        if let Some(after) = rejected.retry_after() {
            let millis = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
            headers.insert("grpc-retry-pushback-ms", HeaderValue::from(millis));
        }
        response
    }
}

/// gRPC's `grpc-message` encoding: printable ASCII but `%` as is, the rest
/// percent-encoded.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

impl<Req, B: Default, E> Fallback<Req, Response<GrpcBody<B>>, E> for GrpcUnavailable {
    type Error = E;
    type Future = Ready<Result<Response<GrpcBody<B>>, E>>;

    fn fallback(&self, rejected: Rejected, _: Option<Req>) -> Self::Future {
        ready(Ok(
            Self::response::<B>(&rejected).map(GrpcBody::unclassified)
        ))
    }

    fn inner_error(&self, error: E) -> E {
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_percent_encoded_as_grpc_wants() {
        assert_eq!(percent_encode("100% down é"), "100%25 down %C3%A9");
    }
}
