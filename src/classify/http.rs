//! HTTP classification: 5xx is a failure, 4xx is not.
//!
//! Filled in by the HTTP classification work.

/// Inner errors and HTTP 5xx responses are failures; 4xx are the caller's
/// mistakes and count as successes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerErrorsAsFailures;
