//! The breaker's state machine: closed → open → half-open → closed, packed
//! into one atomic word so that the admitted path is a single load.
//!
//! ```text
//!            window says trip                    open_for elapsed
//!  Closed ───────────────────────► Open ────────────────────────► HalfOpen
//!    ▲                              ▲   (first call becomes probe 1)  │
//!    │                              └──────── probes fail ────────────┤
//!    └──────────────────── all probes pass ───────────────────────────┘
//! ```
//!
//! The word holds the state, a generation (bumped by every transition, so
//! that an outcome admitted under an earlier state is recognised and
//! ignored) and, in half-open, the probe counts. Transitions that need more
//! than the word (the open period with its backoff and jitter, the window
//! reset) run under a mutex that only transitions take; the admitted path
//! and the fast-fail never touch it.

use std::sync::atomic::Ordering::*;
use std::time::Duration;

use crate::clock::Nanos;
use crate::core::sync::{AtomicI64, AtomicU8, AtomicU32, AtomicU64, Mutex};
use crate::policy::{BreakerPolicy, Mode};

use super::BreakerState;
use super::thresholds::{Thresholds, Verdict};
use super::window::{Sample, Totals, Window};

use super::ticket::{Ticket, TicketKind};
use super::word::{TAG_CLOSED, TAG_HALF_OPEN, TAG_OPEN, Word};

/// A state change, for metrics and tracing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) from: BreakerState,
    pub(crate) to: BreakerState,
    /// How long the breaker will stay open, when `to` is `Open`.
    pub(crate) open_for: Option<Duration>,
}

/// What `admit` decided: small and `Copy`, so that the fast-fail of an
/// open breaker passes it in registers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Admission {
    /// The ticket, or an open breaker's rejection with its retry hint in
    /// nanoseconds (the time to the next probe; none when forced open).
    pub(crate) verdict: Result<Ticket, Option<Nanos>>,
    /// In shadow mode: enforce mode would have rejected the call (`Open`).
    pub(crate) would_reject: bool,
    /// The open period was over: this call is the first probe.
    pub(crate) half_opened: bool,
}

/// State that only transitions read and write.
#[derive(Debug)]
struct Cold {
    /// Consecutive open periods without a lasting recovery.
    level: u32,
    /// When the breaker last closed after being open, if it has.
    closed_at: Option<Nanos>,
    /// splitmix64 state for the jitter.
    seed: u64,
}

impl Cold {
    /// A uniform draw in [-1, 1).
    fn spread(&mut self) -> f64 {
        self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

/// One circuit breaker's shared state.
#[derive(Debug)]
pub(crate) struct BreakerCore {
    word: AtomicU64,
    /// The share of new calls a closed breaker rejects, in units of 2^-32
    /// (`trip = "throttle"`; 0 almost always). Next to the word: the
    /// admitted path reads both.
    throttle: AtomicU32,
    /// The share last told to the gauge (see `throttle_news`).
    reported: AtomicU32,
    /// Closed-state calls that failed in a row (see `failing_now`).
    failing: AtomicU32,
    /// When the current open period ends; written only while the word is
    /// not `Open`, under `cold`, before the word is published.
    open_until: AtomicU64,
    mode: AtomicU8,
    /// Calls still to turn away in this open period before its probes go
    /// early (`probe_after`); [`NEVER_EARLY`] for a period that ends only
    /// at its end (set by hand or by the fleet, or `probe_after = 0`).
    early: AtomicI64,
    window: Window,
    limits: Thresholds,
    /// The running sum of the throttled shares drawn: a call is rejected
    /// when its share carries the sum past a multiple of 2^32, so that
    /// exactly the share is rejected, evenly spread, with no randomness.
    /// Written only while throttling.
    credit: AtomicU64,
    cold: Mutex<Cold>,
}

impl BreakerCore {
    pub(crate) fn new(policy: &BreakerPolicy, seed: u64) -> Self {
        Self {
            word: AtomicU64::new(Word::new(TAG_CLOSED, 0).0),
            throttle: AtomicU32::new(0),
            reported: AtomicU32::new(0),
            failing: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            mode: AtomicU8::new(mode_to_u8(policy.mode)),
            early: AtomicI64::new(NEVER_EARLY),
            window: Window::new(&policy.window),
            limits: Thresholds::new(policy),
            credit: AtomicU64::new(0),
            cold: Mutex::new(Cold {
                level: 0,
                closed_at: None,
                seed,
            }),
        }
    }

    #[inline]
    pub(crate) fn mode(&self) -> Mode {
        mode_from_u8(self.mode.load(Relaxed))
    }

    pub(crate) fn set_mode(&self, mode: Mode) {
        self.mode.store(mode_to_u8(mode), Relaxed);
    }

    /// Takes the thresholds and mode of `policy`, keeping the window, the
    /// state and the backoff level. The window's own shape (`kind`, `size`,
    /// `buckets`) is fixed when the breaker is built.
    pub(crate) fn reconfigure(&self, policy: &BreakerPolicy) {
        self.limits.store(policy);
        self.set_mode(policy.mode);
        if !self.limits.throttles() {
            // Reloaded to `trip = "open"`: nothing is throttled from now on
            // (the next outcome judges the window the classic way).
            self.set_throttle(0);
        }
    }

    /// The state as seen by a caller at `now` (an open breaker whose period
    /// has ended reads as half-open: the next call will probe).
    pub(crate) fn state(&self, now: Nanos) -> BreakerState {
        match self.mode() {
            Mode::ForcedOpen => return BreakerState::ForcedOpen,
            Mode::ForcedClosed => return BreakerState::ForcedClosed,
            Mode::Enforce | Mode::Shadow => {}
        }
        let word = Word(self.word.load(Acquire));
        match word.tag() {
            TAG_CLOSED => BreakerState::Closed,
            TAG_OPEN if now < self.open_until.load(Relaxed) => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Whether the state word is closed (the mode aside).
    pub(crate) fn is_closed(&self) -> bool {
        Word(self.word.load(Acquire)).tag() == TAG_CLOSED
    }

    /// When an open breaker lets its next probe through; `None` unless the
    /// breaker is open (by its own verdict, not forced) at `now`.
    pub(crate) fn next_probe_at(&self, now: Nanos) -> Option<Nanos> {
        if !matches!(self.mode(), Mode::Enforce) {
            return None;
        }
        let word = Word(self.word.load(Acquire));
        let until = self.open_until.load(Relaxed);
        (word.tag() == TAG_OPEN && now < until).then_some(until)
    }

    /// Decides whether a call may go to the back end now.
    #[inline]
    pub(crate) fn admit(&self, now: Nanos) -> Admission {
        let mode = self.mode();
        let (verdict, half_opened) = match mode {
            Mode::ForcedClosed => (Ok(Ticket::UNTRACKED), false),
            Mode::ForcedOpen => (Err(None), false),
            Mode::Enforce | Mode::Shadow => self.decide(now),
        };
        match verdict {
            Err(_) if mode == Mode::Shadow => Admission {
                verdict: Ok(Ticket::UNTRACKED),
                would_reject: true,
                half_opened,
            },
            verdict => Admission {
                verdict,
                would_reject: false,
                half_opened,
            },
        }
    }

    /// The ticket, or the retry hint of an open breaker; and whether this
    /// call turned an ended open period into half-open.
    #[inline]
    fn decide(&self, now: Nanos) -> (Result<Ticket, Option<Nanos>>, bool) {
        let mut current = self.word.load(Acquire);
        loop {
            let word = Word(current);
            let next = match word.tag() {
                TAG_CLOSED => {
                    let ticket = Ticket {
                        generation: word.generation(),
                        kind: TicketKind::Closed,
                    };
                    return (Ok(ticket), false);
                }
                TAG_OPEN => {
                    let until = self.open_until.load(Relaxed);
                    if now < until && !self.probe_early() {
                        return (Err(Some(until - now)), false);
                    }
                    // The open period is over: this call is the first probe.
                    Word::new(TAG_HALF_OPEN, word.next_generation()).with_admitted(1)
                }
                _ => {
                    if word.admitted() >= self.limits.probes() {
                        // Every probe is out; the breaker closes or reopens
                        // as soon as they answer.
                        return (Err(Some(self.limits.open_for())), false);
                    }
                    word.with_admitted(word.admitted() + 1)
                }
            };
            match self
                .word
                .compare_exchange_weak(current, next.0, AcqRel, Acquire)
            {
                Ok(_) => {
                    let ticket = Ticket {
                        generation: next.generation(),
                        kind: TicketKind::Probe,
                    };
                    return (Ok(ticket), word.tag() == TAG_OPEN);
                }
                Err(seen) => current = seen,
            }
        }
    }

    /// Counts a call the open breaker turns away; whether it is the one
    /// after which the period's probes go early (`probe_after`). One
    /// relaxed load while the period ends only at its end, else one
    /// read-modify-write (a rejection's metrics cost as much).
    #[inline]
    fn probe_early(&self) -> bool {
        if self.early.load(Relaxed) == NEVER_EARLY {
            return false;
        }
        self.early.fetch_sub(1, Relaxed) <= 1
    }

    /// Arms the early probe of an open period the breaker's own verdict
    /// set (`probe_after`).
    fn arm_early(&self) {
        let early = match self.limits.probe_after.load(Relaxed) {
            0 => NEVER_EARLY,
            // The call after `after` turned away probes.
            after => i64::from(after) + 1,
        };
        self.early.store(early, Relaxed);
    }

    /// Moves the breaker to half-open with no probe out, whatever its state
    /// (a maintenance window has just ended): the next calls are probes, and
    /// their verdict closes or reopens it as usual. Calls admitted before
    /// are of an earlier generation, so their outcomes are ignored. Returns
    /// the transition, `None` if the breaker was already half-open.
    pub(crate) fn half_open(&self, now: Nanos) -> Option<Transition> {
        let _cold = self.cold.lock().unwrap_or_else(|e| e.into_inner());
        let word = Word(self.word.load(Acquire));
        let from = match word.tag() {
            TAG_CLOSED => BreakerState::Closed,
            TAG_OPEN if now < self.open_until.load(Relaxed) => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        };
        // Under the cold lock only `decide`'s and `cancel`'s compare-exchanges
        // race with this store; a half-open or open word they would have
        // moved is of the old generation, so a plain store is safe (their
        // exchange fails and they look again).
        self.word
            .store(Word::new(TAG_HALF_OPEN, word.next_generation()).0, Release);
        (from != BreakerState::HalfOpen).then_some(Transition {
            from,
            to: BreakerState::HalfOpen,
            open_for: None,
        })
    }

    /// Records how an admitted call ended; `elapsed` is its duration.
    #[inline(always)]
    pub(crate) fn complete(
        &self,
        ticket: Ticket,
        failed: bool,
        elapsed: Nanos,
        now: Nanos,
    ) -> Option<Transition> {
        let sample = Sample {
            failed,
            slow: elapsed >= self.limits.slow_call(),
        };
        match ticket.kind {
            TicketKind::Untracked => None,
            TicketKind::Closed => {
                let word = Word(self.word.load(Acquire));
                if word.tag() != TAG_CLOSED || word.generation() != ticket.generation {
                    return None; // admitted before the breaker last moved
                }
                let recorded = self.window.record(now, sample);
                // Judged after every outcome, successes included: the
                // success that brings the window to `minimum_calls`, or
                // one recorded after a time window dropped older
                // successes, can be the one that makes the rates count.
                let totals = match recorded {
                    Some(totals) => totals,
                    None => self.window.totals(now),
                };
                let verdict = if self.failing_now(failed, &totals) {
                    Verdict::Open
                } else if totals.calls >= self.limits.minimum_calls() {
                    self.limits
                        .verdict(totals.calls, totals.failures, totals.slow)
                } else {
                    Verdict::Throttle(0)
                };
                match verdict {
                    Verdict::Open => self.trip(ticket.generation, now),
                    Verdict::Throttle(share) => {
                        self.set_throttle(share);
                        None
                    }
                }
            }
            TicketKind::Probe => self.probe_done(ticket.generation, sample, now),
        }
    }

    /// An admitted call ended with no verdict after running `elapsed`: its
    /// caller's deadline passed or its caller went away. Its latency is
    /// censored ("at least `elapsed`"): a slow call if it had already run
    /// for `slow_call_duration` (a back end that hangs while every caller
    /// gives up still opens the breaker), otherwise no evidence at all (the
    /// slot is given back, as by [`cancel`](Self::cancel)). Never a
    /// failure: a caller's impatience says nothing about the back end.
    pub(crate) fn abandoned(
        &self,
        ticket: Ticket,
        elapsed: Nanos,
        now: Nanos,
    ) -> Option<Transition> {
        if elapsed >= self.limits.slow_call() {
            self.complete(ticket, false, elapsed, now)
        } else {
            self.cancel(ticket);
            None
        }
    }

    /// Whether a new call to a closed breaker is one of the share it
    /// throttles (`trip = "throttle"`). A read of the share, and while it is
    /// not 0 one read-modify-write of the credit.
    #[inline]
    pub(crate) fn throttles(&self) -> bool {
        let share = u64::from(self.throttle.load(Relaxed));
        if share == 0 || !matches!(self.mode(), Mode::Enforce | Mode::Shadow) {
            return false;
        }
        let before = self.credit.fetch_add(share, Relaxed);
        (before.wrapping_add(share) >> 32) != (before >> 32)
    }

    /// The share throttled, if it moved since it was last asked: for the
    /// gauge. Two loads of the state word's line while it stays put.
    #[inline]
    pub(crate) fn throttle_news(&self) -> Option<f64> {
        let share = self.throttle.load(Relaxed);
        if share == self.reported.load(Relaxed) {
            return None;
        }
        self.reported.store(share, Relaxed);
        Some(f64::from(share) / 4_294_967_295.0)
    }

    /// The share of new calls a closed breaker rejects now, in [0, 1].
    pub(crate) fn throttled_share(&self) -> f64 {
        f64::from(self.throttle.load(Relaxed)) / 4_294_967_295.0
    }

    /// Counts a failure into the run of failures in a row (a success ends
    /// it); whether the run says the back end fails every call now, with
    /// `trip = "throttle"`: twice `minimum_calls` failures in a row, and a
    /// run that the window's own failure share would make less often than
    /// once in 2^20 calls.
    ///
    /// A throttling breaker opens when no call in its window went well,
    /// and a back end that goes down at once would otherwise pass failing
    /// calls until the successes before it leave the window. One that
    /// fails a steady share of its calls makes runs of its own: at half,
    /// forty in a row about once in 2^40 calls; at five in six (a back end
    /// ten times slower behind a timeout that still serves a sixth), one
    /// in 1,700, which busy traffic meets every minute. Such a run is no
    /// news; the throttle's share already answers it.
    #[inline]
    fn failing_now(&self, failed: bool, window: &Totals) -> bool {
        if !failed {
            // Healthy traffic only reads the line.
            if self.failing.load(Relaxed) != 0 {
                self.failing.store(0, Relaxed);
            }
            return false;
        }
        let run = u64::from(self.failing.fetch_add(1, Relaxed)) + 1;
        self.limits.throttles()
            && run >= 2 * self.limits.minimum_calls()
            && Self::unlikely_run(run, window)
    }

    /// Whether `run` failures in a row are rarer than once in 2^20 calls
    /// at the window's failure share.
    #[cold]
    fn unlikely_run(run: u64, window: &Totals) -> bool {
        if window.calls == 0 || window.failures >= window.calls {
            return true;
        }
        let share = window.failures as f64 / window.calls as f64;
        // share^run < 2^-20, in logarithms.
        run as f64 * share.log2() < -20.0
    }

    #[inline]
    fn set_throttle(&self, share: u32) {
        // A store only when it changes: a healthy back end's completions
        // only read the line.
        if self.throttle.load(Relaxed) != share {
            self.throttle.store(share, Relaxed);
        }
    }

    /// A read-modify-write of the state word that changes nothing: a
    /// waiter has just been seated (see `Gate::after_seating`).
    pub(crate) fn touch(&self) {
        self.word.fetch_add(0, AcqRel);
    }

    /// Gives back the slot of an admitted call that ended without an
    /// outcome (its future was dropped): a probe slot is reopened for
    /// another call; a closed-state call leaves no trace.
    #[inline]
    pub(crate) fn cancel(&self, ticket: Ticket) {
        if ticket.kind != TicketKind::Probe {
            return;
        }
        let mut current = self.word.load(Acquire);
        loop {
            let word = Word(current);
            if word.tag() != TAG_HALF_OPEN || word.generation() != ticket.generation {
                return;
            }
            let next = word.with_admitted(word.admitted().saturating_sub(1));
            match self
                .word
                .compare_exchange_weak(current, next.0, AcqRel, Acquire)
            {
                Ok(_) => return,
                Err(seen) => current = seen,
            }
        }
    }

    #[inline(never)]
    fn probe_done(&self, generation: u32, sample: Sample, now: Nanos) -> Option<Transition> {
        let probes = self.limits.probes();
        let mut current = self.word.load(Acquire);
        loop {
            let word = Word(current);
            if word.tag() != TAG_HALF_OPEN || word.generation() != generation {
                return None;
            }
            let next = word.with_probe_done(sample);
            // Judge against the whole planned probe set: once the failures
            // alone reach the threshold no later probe can save it.
            let p = u64::from(probes);
            if self.limits.probes_reopen(
                p,
                u64::from(next.completed()),
                u64::from(next.failed()),
                u64::from(next.slow()),
            ) {
                return self.reopen(word, now);
            }
            if next.completed() >= probes {
                return self.close(word, now);
            }
            match self
                .word
                .compare_exchange_weak(current, next.0, AcqRel, Acquire)
            {
                Ok(_) => return None,
                Err(seen) => current = seen,
            }
        }
    }

    /// Closed → open, if the word is still the closed state of `generation`.
    #[cold]
    fn trip(&self, generation: u32, now: Nanos) -> Option<Transition> {
        let mut cold = self.cold.lock().unwrap_or_else(|e| e.into_inner());
        let word = Word(self.word.load(Acquire));
        if word.tag() != TAG_CLOSED || word.generation() != generation {
            return None; // another call tripped it first
        }
        cold.level = match cold.closed_at {
            Some(closed_at)
                if now.saturating_sub(closed_at) < self.limits.reset_after.load(Relaxed) =>
            {
                cold.level.saturating_add(1)
            }
            _ => 0,
        };
        let period = self.open_period(&mut cold);
        self.open_until.store(now.saturating_add(period), Relaxed);
        self.throttle.store(0, Relaxed);
        self.failing.store(0, Relaxed);
        self.arm_early();
        // The closed word only changes under this lock, so a plain store is
        // safe: admit never writes a closed word.
        self.word
            .store(Word::new(TAG_OPEN, word.next_generation()).0, Release);
        Some(Transition {
            from: BreakerState::Closed,
            to: BreakerState::Open,
            open_for: Some(Duration::from_nanos(period)),
        })
    }

    /// Half-open → open with a longer period; `seen` is the word the probe
    /// judged. Gives up if the word moved to another generation.
    fn reopen(&self, seen: Word, now: Nanos) -> Option<Transition> {
        let mut cold = self.cold.lock().unwrap_or_else(|e| e.into_inner());
        if !self.is_half_open(seen.generation()) {
            return None; // another probe's verdict came first
        }
        cold.level = cold.level.saturating_add(1);
        let period = self.open_period(&mut cold);
        self.open_until.store(now.saturating_add(period), Relaxed);
        self.arm_early();
        let next = Word::new(TAG_OPEN, seen.next_generation());
        self.replace_half_open(seen.generation(), next)
            .then_some(Transition {
                from: BreakerState::HalfOpen,
                to: BreakerState::Open,
                open_for: Some(Duration::from_nanos(period)),
            })
    }

    /// Half-open → closed with a clean window.
    fn close(&self, seen: Word, now: Nanos) -> Option<Transition> {
        let mut cold = self.cold.lock().unwrap_or_else(|e| e.into_inner());
        if !self.is_half_open(seen.generation()) {
            return None;
        }
        self.window.reset();
        self.throttle.store(0, Relaxed);
        self.failing.store(0, Relaxed);
        let next = Word::new(TAG_CLOSED, seen.next_generation());
        if !self.replace_half_open(seen.generation(), next) {
            return None;
        }
        cold.closed_at = Some(now);
        Some(Transition {
            from: BreakerState::HalfOpen,
            to: BreakerState::Closed,
            open_for: None,
        })
    }

    /// Whether the word is still the half-open state of `generation`. Under
    /// the cold lock the answer holds until the lock is released: only
    /// transitions, which take the lock, change a half-open word's tag or
    /// generation.
    fn is_half_open(&self, generation: u32) -> bool {
        let word = Word(self.word.load(Acquire));
        word.tag() == TAG_HALF_OPEN && word.generation() == generation
    }

    /// Swaps the half-open word of `generation` for `next`, whatever its
    /// probe counts have become meanwhile (probes admitted or cancelled
    /// concurrently no longer matter once the verdict is in).
    fn replace_half_open(&self, generation: u32, next: Word) -> bool {
        let mut current = self.word.load(Acquire);
        loop {
            let word = Word(current);
            if word.tag() != TAG_HALF_OPEN || word.generation() != generation {
                return false;
            }
            match self
                .word
                .compare_exchange_weak(current, next.0, AcqRel, Acquire)
            {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }

    /// The length of the next open period at the cold state's level.
    fn open_period(&self, cold: &mut Cold) -> Nanos {
        let l = &self.limits;
        let (open_for, max_open) = (l.open_for(), l.max_open.load(Relaxed));
        let grown = open_for as f64 * l.multiplier.load().powi(cold.level.min(1_000) as i32);
        let capped = grown
            .min(max_open as f64)
            .max(open_for.min(max_open) as f64);
        let jittered = capped * (1.0 + l.jitter.load() * cold.spread());
        // Saturating float-to-int conversion.
        (jittered.min(max_open as f64) as Nanos).max(1)
    }
}

/// `early` of an open period that ends only at its end.
const NEVER_EARLY: i64 = i64::MAX;

const fn mode_to_u8(mode: Mode) -> u8 {
    match mode {
        Mode::Enforce => 0,
        Mode::Shadow => 1,
        Mode::ForcedOpen => 2,
        Mode::ForcedClosed => 3,
    }
}

const fn mode_from_u8(value: u8) -> Mode {
    match value {
        1 => Mode::Shadow,
        2 => Mode::ForcedOpen,
        3 => Mode::ForcedClosed,
        _ => Mode::Enforce,
    }
}

// ---- the hook of manual control (`control.rs`) ------------------------------

impl BreakerCore {
    /// Puts the word in `to` (closed, open until `open_until`, or half-open
    /// with no probe out) in a new generation, whatever it was: calls
    /// admitted before are then ignored, as after any transition. `clear`
    /// also empties the window and forgets the backoff. Returns the state
    /// before, as the word said it at `now` (the mode aside).
    ///
    /// Under the cold lock, as every transition. An open word may be
    /// replaced by another: `decide` reading the old word with the new
    /// `open_until` rejects with the new hint, and one that moved it to
    /// half-open meanwhile made a word of the old generation, which this
    /// exchange replaces.
    pub(super) fn put(
        &self,
        to: BreakerState,
        open_until: Nanos,
        clear: bool,
        now: Nanos,
    ) -> BreakerState {
        let mut cold = self.cold.lock().unwrap_or_else(|e| e.into_inner());
        let tag = match to {
            BreakerState::Closed | BreakerState::ForcedClosed => TAG_CLOSED,
            BreakerState::Open | BreakerState::ForcedOpen => TAG_OPEN,
            BreakerState::HalfOpen => TAG_HALF_OPEN,
        };
        let was_open_until = self.open_until.load(Relaxed);
        if clear {
            self.window.reset();
            self.throttle.store(0, Relaxed);
            self.failing.store(0, Relaxed);
            cold.level = 0;
            cold.closed_at = None;
        }
        if tag == TAG_OPEN {
            self.open_until.store(open_until, Relaxed);
            // A period set by hand (or by the fleet) ends at its end.
            self.early.store(NEVER_EARLY, Relaxed);
        }
        let mut current = self.word.load(Acquire);
        loop {
            let word = Word(current);
            let next = Word::new(tag, word.next_generation());
            match self
                .word
                .compare_exchange_weak(current, next.0, AcqRel, Acquire)
            {
                Ok(_) => {
                    return match word.tag() {
                        TAG_CLOSED => BreakerState::Closed,
                        TAG_OPEN if now < was_open_until => BreakerState::Open,
                        _ => BreakerState::HalfOpen,
                    };
                }
                Err(seen) => current = seen,
            }
        }
    }
}
