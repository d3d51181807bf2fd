//! What a limit algorithm learns from ([`WindowSample`], in one place) and
//! the trait through which an application brings its own
//! ([`LimitAlgorithm`], [`CustomAlgorithm`]); re-exported as
//! `brownout::limit`.

use std::fmt;
use std::sync::Arc;

/// What one learning window of completed calls says about the back end:
/// everything a [`LimitAlgorithm`] learns from, in one place.
///
/// A window lasts about one round trip (for `capacity` and custom
/// algorithms: the smoothed mean latency, with at least
/// `clamp(limit / 2, 1, 64)` completions) or two round trips and 64
/// completions (the latency learners `aimd`, `vegas`, `gradient`).
/// Cancelled calls (the caller went away before the back end answered,
/// without a deadline running out) and calls the classifier says are not
/// evidence (4xx, gRPC `UNIMPLEMENTED`) are not samples at all.
///
/// The fields are public to read; build one with [`Default`] and set the
/// fields (the struct is `#[non_exhaustive]`: fields may be added).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub struct WindowSample {
    // (See `has_failures`: a window with failures says "too much", not how
    // fast the back end is.)
    /// Calls completed in the window, successes and failures alike.
    pub samples: u32,
    /// Their mean round-trip time, in seconds (0 when faster than the
    /// latency sum's resolution of 64 µs).
    pub rtt: f64,
    /// Of `samples`, calls that signalled overload: classified as
    /// failures (inner errors, 5xx, timeouts, gRPC `UNAVAILABLE`,
    /// `RESOURCE_EXHAUSTED`, as the classifier says).
    pub dropped: u32,
    /// Most calls in flight at once during the window.
    pub max_inflight: u32,
    /// How long the window lasted, in seconds.
    pub duration: f64,
    /// Calls refused a slot during the window (shed, or left waiting)
    /// because the limit was full: demand pressed on the limit.
    pub blocked: u32,
    /// Of `samples`, calls abandoned at their caller's deadline: their
    /// latency is a lower bound ("took at least this long") and they
    /// delivered nothing. Never failures.
    pub censored: u32,
}

impl WindowSample {
    /// Whether failures are more than noise in this window (over a tenth of
    /// its calls). Failed calls often end fast (a refused connection, a
    /// down back end answering at once), so their latency would pull the
    /// learned unloaded latency down and leave the limit pinned at its
    /// minimum once the back end recovers: such a window is an overload
    /// signal only, and latency is not learned from it.
    pub fn has_failures(&self) -> bool {
        u64::from(self.dropped) * 10 > u64::from(self.samples)
    }

    /// Successful completions a second: the back end's delivery rate in
    /// this window (failed and deadline-abandoned calls delivered nothing).
    pub fn throughput(&self) -> f64 {
        if self.duration <= 0.0 {
            return 0.0;
        }
        let delivered = self
            .samples
            .saturating_sub(self.dropped)
            .saturating_sub(self.censored);
        f64::from(delivered) / self.duration
    }
}

/// A way of learning the limit, for an application that brings its own
/// (the policy's `algorithm = "custom"`, with the algorithm given to the
/// layer: [`AdaptiveLimitLayer::algorithm`](crate::AdaptiveLimitLayer::algorithm),
/// [`BrownoutLayer::limit_algorithm`](crate::BrownoutLayer::limit_algorithm)).
///
/// Each route gets its own instance. [`update`](Self::update) runs once
/// per learning window, on the thread of the call that closed it, under a
/// lock no admission waits for: it is off the per-call path, so a boxed
/// algorithm costs nothing there, and it may take its time (but not block).
///
/// ```
/// use brownout::limit::{LimitAlgorithm, WindowSample};
///
/// /// Halves on overload, else grows by one while demand presses on it.
/// #[derive(Debug, Default)]
/// struct HalveOnFailure;
///
/// impl LimitAlgorithm for HalveOnFailure {
///     fn update(&mut self, limit: f64, window: &WindowSample) -> f64 {
///         if window.has_failures() {
///             limit / 2.0
///         } else if window.blocked > 0 {
///             limit + 1.0
///         } else {
///             limit
///         }
///     }
/// }
///
/// let mut window = WindowSample::default();
/// window.samples = 10;
/// window.dropped = 5;
/// assert_eq!(HalveOnFailure.update(40.0, &window), 20.0);
/// ```
pub trait LimitAlgorithm: Send + fmt::Debug + 'static {
    /// The next limit after `window`, given the current one. The gate
    /// clamps it to the policy's `[min, max]` and publishes its integer
    /// part; the fraction is kept, so small steps accumulate.
    fn update(&mut self, limit: f64, window: &WindowSample) -> f64;

    /// Where the limit starts again after an outage: the breaker closed
    /// again after its probes succeeded (`maintenance` false), or a
    /// maintenance window ended (`maintenance` true). The default keeps
    /// `limit`.
    fn recovered(&mut self, limit: f64, maintenance: bool) -> f64 {
        let _ = maintenance;
        limit
    }
}

/// Makes each route's instance of a custom [`LimitAlgorithm`]; cheap to
/// clone (one `Arc`).
#[derive(Clone)]
pub struct CustomAlgorithm {
    make: Arc<dyn Fn() -> Box<dyn LimitAlgorithm> + Send + Sync>,
}

impl CustomAlgorithm {
    /// An algorithm `make` builds, once per route (and again when a reload
    /// switches a route to `algorithm = "custom"`).
    pub fn new<A, F>(make: F) -> Self
    where
        A: LimitAlgorithm,
        F: Fn() -> A + Send + Sync + 'static,
    {
        Self {
            make: Arc::new(move || Box::new(make())),
        }
    }

    pub(crate) fn build(&self) -> Box<dyn LimitAlgorithm> {
        (self.make)()
    }
}

impl fmt::Debug for CustomAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CustomAlgorithm(..)")
    }
}
