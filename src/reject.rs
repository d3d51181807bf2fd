//! The one rejection type every brownout layer answers with.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Why brownout answered a request itself instead of calling the back end.
///
/// The names are stable: they are the `reason` label of
/// `brownout_requests_total` (see [`Reason::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Reason {
    /// The circuit breaker is open (or half-open with every probe in use).
    Open,
    /// The adaptive limit is full and the request could not wait.
    Shed,
    /// The waiting room is full.
    QueueFull,
    /// The request waited as long as the waiting room allows.
    QueueTimeout,
    /// The back end is inside a planned maintenance window, or forced open.
    Maintenance,
    /// The request's own deadline passed before it could be served, or
    /// left less time than the back end typically takes.
    Deadline,
    /// The declared capacity budget (`[budget]`) has no unit left for the
    /// request's class in this period; the retry hint says when the next
    /// unit frees.
    Budget,
}

impl Reason {
    /// Every reason, in declaration order.
    pub const ALL: [Reason; 7] = [
        Reason::Open,
        Reason::Shed,
        Reason::QueueFull,
        Reason::QueueTimeout,
        Reason::Maintenance,
        Reason::Deadline,
        Reason::Budget,
    ];

    /// The reason as it appears in metrics labels and logs: `open`, `shed`,
    /// `queue_full`, `queue_timeout`, `maintenance`, `deadline`, `budget`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Open => "open",
            Reason::Shed => "shed",
            Reason::QueueFull => "queue_full",
            Reason::QueueTimeout => "queue_timeout",
            Reason::Maintenance => "maintenance",
            Reason::Deadline => "deadline",
            Reason::Budget => "budget",
        }
    }

    /// What a person reading the answer should understand.
    const fn explain(self) -> &'static str {
        match self {
            Reason::Open => "the back end is failing and its circuit breaker is open",
            Reason::Shed => "the back end is at its capacity and this request was shed",
            Reason::QueueFull => "the back end is busy and its waiting room is full",
            Reason::QueueTimeout => "the back end stayed busy for as long as a request may wait",
            Reason::Maintenance => "the back end is in planned maintenance",
            Reason::Deadline => "the request's deadline passed before the back end could serve it",
            Reason::Budget => "the declared capacity for this period is used up",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request brownout answered itself: the breaker was open, the limit full,
/// the waiting room full or timed out, a maintenance window, or a deadline.
///
/// Layers return it boxed, as tower's `BoxError`; find it with
/// `err.downcast_ref::<brownout::Rejected>()`. It carries the [`Reason`] and,
/// when known, how long the caller should wait before trying again.
///
/// ```
/// use std::time::Duration;
/// use brownout::{Reason, Rejected};
///
/// let err: tower::BoxError = Rejected::new(Reason::Open)
///     .with_retry_after(Duration::from_millis(2500))
///     .into();
/// let rejected = err.downcast_ref::<Rejected>().expect("a brownout rejection");
/// assert_eq!(rejected.reason(), Reason::Open);
/// assert_eq!(rejected.retry_after(), Some(Duration::from_millis(2500)));
/// assert_eq!(rejected.retry_after_secs(), Some(3)); // what `Retry-After` says
/// ```
///
/// A rejection inside a maintenance window also carries the window's
/// [`message`](Self::message), written by ops for the people affected.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub struct Rejected {
    // Every field is a whole word (no `u8` next to padding), so that moving
    // a rejection, or an enum that holds one beside a permit, copies whole
    // words: a fast-fail moves one several times on its way out.
    /// [`Reason`] as its index in [`Reason::ALL`].
    reason: usize,
    /// The retry hint in nanoseconds, [`NO_HINT`] for none.
    retry_after: u64,
    /// Shared with the maintenance window it comes from: cloning a
    /// rejection allocates nothing.
    message: Option<Arc<str>>,
}

/// The `retry_after` of a rejection with no retry hint.
const NO_HINT: u64 = u64::MAX;

impl Rejected {
    /// A rejection with no retry hint.
    pub const fn new(reason: Reason) -> Self {
        Self {
            reason: reason as usize,
            retry_after: NO_HINT,
            message: None,
        }
    }

    /// Sets the retry hint (kept to the nanosecond, up to about 584
    /// years).
    pub const fn with_retry_after(mut self, retry_after: Duration) -> Self {
        let nanos = retry_after.as_nanos();
        self.retry_after = if nanos < NO_HINT as u128 {
            nanos as u64
        } else {
            NO_HINT - 1
        };
        self
    }

    /// Sets the message for the people affected (a maintenance window's
    /// `message`). Pass an `Arc<str>` to share one message between
    /// rejections without copying it.
    ///
    /// ```
    /// use brownout::{Reason, Rejected};
    ///
    /// let rejected = Rejected::new(Reason::Maintenance)
    ///     .with_message("Planned upgrade. Urgent files: use e-mail.");
    /// assert_eq!(rejected.message(), Some("Planned upgrade. Urgent files: use e-mail."));
    /// assert!(rejected.to_string().ends_with("Planned upgrade. Urgent files: use e-mail."));
    /// ```
    pub fn with_message(mut self, message: impl Into<Arc<str>>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// Why the request was rejected.
    pub const fn reason(&self) -> Reason {
        Reason::ALL[self.reason]
    }

    /// How long the caller should wait before trying again, when known (an
    /// open breaker knows when it will next probe).
    ///
    /// The layers' hints: the time to the breaker's next probe or to the
    /// end of a maintenance window; otherwise the time the waiting room
    /// takes to drain at the limit's mean response time, or one second
    /// while the limit has no latency sample yet (the first burst of
    /// rejections is not invited to come straight back). A `Deadline`
    /// rejection's hint is never under one second.
    pub const fn retry_after(&self) -> Option<Duration> {
        match self.retry_after {
            NO_HINT => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// The message ops wrote for the people affected, when there is one:
    /// a maintenance window's `message`. HTTP answers put it in the problem
    /// document's `detail`, gRPC answers in `grpc-message`.
    pub fn message(&self) -> Option<&str> {
        self.message.as_deref()
    }

    /// The retry hint in whole seconds, rounded up, as HTTP's `Retry-After`
    /// header wants it; never 0 when a hint is known.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after().map(|d| {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            secs.max(1)
        })
    }
}

impl fmt::Debug for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejected")
            .field("reason", &self.reason())
            .field("retry_after", &self.retry_after())
            .field("message", &self.message)
            .finish()
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request rejected ({}): {}",
            self.reason(),
            self.reason().explain()
        )?;
        if let Some(after) = self.retry_after() {
            write!(f, "; retry after {:.3}s", after.as_secs_f64())?;
        }
        if let Some(message) = &self.message {
            write!(f, " — {message}")?;
        }
        Ok(())
    }
}
