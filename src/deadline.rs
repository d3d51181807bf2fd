//! Request deadlines: how long a caller is still willing to wait.
//!
//! A request may carry its own deadline: gRPC's `grpc-timeout` header
//! (`100m` for 100 ms, `2S` for two seconds), or for HTTP a header named in
//! the policy (`deadline_header`, holding milliseconds or a duration such as
//! `"2s"`). brownout never holds such a request past its deadline. A
//! malformed value is not an error for the caller: the request simply has
//! no deadline of its own (and a debug-level trace says why).
//!
//! A caller's deadline is the caller's business, never evidence against
//! the back end, so that one client's deadline cannot change what other
//! clients get:
//!
//! - A call abandoned at its caller's deadline (or whose caller hung up)
//!   is a censored latency, "it took at least this long": the breaker
//!   counts it as a slow call if it had already run for
//!   `slow_call_duration` (a back end that hangs while every caller gives
//!   up still opens the breaker), and otherwise learns nothing; the
//!   adaptive limit takes it as a latency of at least that long; it is
//!   never a failure. The caller gets [`Reason::Deadline`](crate::Reason).
//! - A request whose deadline leaves less than the back end's typical
//!   latency (the adaptive limit's mean response time, once it has one) is
//!   not seated in the waiting room, not let out of it, and not given a
//!   half-open probe: it is answered `Deadline` at once, with a retry hint
//!   of at least a second. It would most likely be abandoned at its
//!   deadline, having held a slot, or a probe whose verdict would then say
//!   nothing about the back end. Without a limit (or before its first
//!   latency sample) only a deadline already past is answered this way.

use std::time::Duration;

/// Finds how much time a request has left, and tells the back end what is
/// left of it after a wait.
pub trait DeadlineOf<Req> {
    /// The time `req` has left, if it says.
    fn deadline_of(&self, req: &Req) -> Option<Duration>;

    /// Rewrites `req`'s deadline to `left`, the time it has left now (after
    /// waiting in the room), before it goes to the back end. The default
    /// leaves the request as it is.
    fn propagate(&self, req: &mut Req, left: Duration) {
        let _ = (req, left);
    }
}

/// No request carries a deadline.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDeadline;

impl<Req> DeadlineOf<Req> for NoDeadline {
    #[inline]
    fn deadline_of(&self, _: &Req) -> Option<Duration> {
        None
    }
}

/// A deadline from a closure; see [`deadline_fn`].
#[derive(Clone)]
pub struct DeadlineFn<F>(F);

impl<F> std::fmt::Debug for DeadlineFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadlineFn").finish_non_exhaustive()
    }
}

/// Finds the time a request has left with `f(&request)`.
pub fn deadline_fn<F>(f: F) -> DeadlineFn<F> {
    DeadlineFn(f)
}

impl<Req, F> DeadlineOf<Req> for DeadlineFn<F>
where
    F: Fn(&Req) -> Option<Duration>,
{
    #[inline]
    fn deadline_of(&self, req: &Req) -> Option<Duration> {
        (self.0)(req)
    }
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`,
/// `S`, `m`, `u`, `n`), as the gRPC over HTTP/2 specification says.
///
/// ```
/// use std::time::Duration;
/// use brownout::deadline::parse_grpc_timeout;
///
/// assert_eq!(parse_grpc_timeout(b"250m"), Some(Duration::from_millis(250)));
/// assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
/// assert_eq!(parse_grpc_timeout(b"123456789S"), None); // 9 digits
/// assert_eq!(parse_grpc_timeout(b"5x"), None);
/// ```
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let amount: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Encodes a remaining budget as a `grpc-timeout` value, in the finest
/// unit that fits in 8 digits.
///
/// ```
/// use std::time::Duration;
/// use brownout::deadline::{encode_grpc_timeout, parse_grpc_timeout};
///
/// let budget = Duration::from_millis(1500);
/// assert_eq!(encode_grpc_timeout(budget), "1500000u");
/// assert_eq!(parse_grpc_timeout(encode_grpc_timeout(budget).as_bytes()), Some(budget));
/// ```
pub fn encode_grpc_timeout(budget: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = budget.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    for (scale, unit) in units {
        // Round up, so the budget is never understated to zero.
        let amount = nanos.div_ceil(scale);
        if amount <= MAX {
            return format!("{amount}{unit}");
        }
    }
    format!("{MAX}H")
}

/// Parses an HTTP deadline header value: whole milliseconds (`"2500"`) or
/// a human duration (`"2.5s"`, `"2s 500ms"`).
pub fn parse_http_deadline(value: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if let Ok(millis) = text.parse::<u64>() {
        return Some(Duration::from_millis(millis));
    }
    humantime::parse_duration(text).ok()
}

#[cfg(feature = "http")]
pub use self::http_header::HeaderDeadline;

#[cfg(feature = "http")]
mod http_header {
    use std::time::Duration;

    use super::{DeadlineOf, parse_grpc_timeout, parse_http_deadline};

    /// The deadline of an HTTP request: `grpc-timeout` if present, else the
    /// policy's `deadline_header`.
    #[derive(Debug, Clone, Default)]
    pub struct HeaderDeadline {
        header: Option<http::HeaderName>,
    }

    impl HeaderDeadline {
        /// Reads `grpc-timeout`, and `header` if given (an invalid header
        /// name reads nothing; policy validation reports it).
        pub fn new(header: Option<&str>) -> Self {
            Self {
                header: header.and_then(|name| http::HeaderName::from_bytes(name.as_bytes()).ok()),
            }
        }
    }

    impl<B> DeadlineOf<http::Request<B>> for HeaderDeadline {
        /// Re-encodes `grpc-timeout`, or the policy's header in milliseconds
        /// (rounded up), whichever the request carried.
        fn propagate(&self, req: &mut http::Request<B>, left: Duration) {
            let headers = req.headers_mut();
            if headers.contains_key("grpc-timeout") {
                if let Ok(value) = http::HeaderValue::from_str(&super::encode_grpc_timeout(left)) {
                    headers.insert("grpc-timeout", value);
                }
                return;
            }
            if let Some(header) = &self.header {
                if headers.contains_key(header) {
                    let millis = left.as_nanos().div_ceil(1_000_000);
                    let millis = u64::try_from(millis).unwrap_or(u64::MAX);
                    headers.insert(header.clone(), http::HeaderValue::from(millis));
                }
            }
        }

        fn deadline_of(&self, req: &http::Request<B>) -> Option<Duration> {
            let headers = req.headers();
            if let Some(value) = headers.get("grpc-timeout") {
                let parsed = parse_grpc_timeout(value.as_bytes());
                if parsed.is_none() {
                    tracing::debug!(value = ?value, "brownout: malformed grpc-timeout, ignored");
                }
                return parsed;
            }
            let value = headers.get(self.header.as_ref()?)?;
            let parsed = parse_http_deadline(value.as_bytes());
            if parsed.is_none() {
                tracing::debug!(value = ?value, "brownout: malformed deadline header, ignored");
            }
            parsed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_and_reject_garbage() {
        assert_eq!(parse_grpc_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout(b"3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_grpc_timeout(b"99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in [&b""[..], b"S", b"-1S", b"1.5S", b"12", b"\xff\xfeS", b" 1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn encoding_round_trips_within_a_unit() {
        for millis in [0u64, 1, 999, 1_000, 86_400_000, 100_000_000_000] {
            let budget = Duration::from_millis(millis);
            let decoded = parse_grpc_timeout(encode_grpc_timeout(budget).as_bytes()).unwrap();
            assert!(decoded >= budget, "{millis} ms encoded as {decoded:?}");
        }
    }

    #[test]
    fn http_deadlines_take_millis_or_human_durations() {
        assert_eq!(
            parse_http_deadline(b"2500"),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(parse_http_deadline(b" 2s "), Some(Duration::from_secs(2)));
        assert_eq!(parse_http_deadline(b"soon"), None);
        assert_eq!(parse_http_deadline(b"-5"), None);
    }
}
