//! The windows a breaker judges the back end by, lock-free and of fixed size.
//!
//! Both record an outcome with a handful of atomic operations and never
//! allocate after they are built; memory is fixed by the policy (one byte
//! per outcome of a count window, 24 bytes per bucket of a time window),
//! whatever the traffic.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};

use crate::clock::Nanos;
use crate::policy::WindowPolicy;

/// What one call left in the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Sample {
    pub(crate) failed: bool,
    pub(crate) slow: bool,
}

/// What the window holds: calls, and how many of them failed or were slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Totals {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    pub(crate) fn new(policy: &WindowPolicy) -> Self {
        match *policy {
            WindowPolicy::Count { size } => Window::Count(CountWindow::new(size.max(1))),
            WindowPolicy::Time { size, buckets } => Window::Time(TimeWindow::new(
                crate::clock::saturating_nanos(size),
                buckets.max(1),
            )),
        }
    }

    /// Records one call's outcome; returns the window's totals when
    /// recording read them anyway (a count window full of successes that
    /// one more success leaves unchanged), so that the caller need not
    /// read them again.
    #[inline]
    pub(crate) fn record(&self, now: Nanos, sample: Sample) -> Option<Totals> {
        match self {
            Window::Count(w) => w.record(sample),
            Window::Time(w) => {
                w.record(now, sample);
                None
            }
        }
    }

    pub(crate) fn totals(&self, now: Nanos) -> Totals {
        match self {
            Window::Count(w) => w.totals(),
            Window::Time(w) => w.totals(now),
        }
    }

    /// Forgets every call. Called when the breaker closes, so that a
    /// recovered back end starts with a clean record.
    pub(crate) fn reset(&self) {
        match self {
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.reset(),
        }
    }
}

const FAILED: u8 = 1;
const SLOW: u8 = 2;

/// A true sliding window over the last `size` outcomes: a ring of one byte
/// per outcome plus running counts of failures and slow calls.
///
/// Recording swaps the new outcome into the ring and adjusts the running
/// counts by the difference with the outcome it pushed out, so the counts
/// are exact under any interleaving (every byte that enters is counted once
/// and uncounted once, when it leaves). An all-success stream costs two
/// atomic operations per call and never touches the counts.
#[derive(Debug)]
pub(crate) struct CountWindow {
    ring: Box<[AtomicU8]>,
    /// Calls recorded since the last reset; the next slot is `next % size`.
    next: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

impl CountWindow {
    fn new(size: u32) -> Self {
        Self {
            ring: (0..size).map(|_| AtomicU8::new(0)).collect(),
            next: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            slow: AtomicU64::new(0),
        }
    }

    /// Records `sample`; returns the totals if it read them: a full
    /// window of successes, which one more success leaves as it is.
    #[inline]
    fn record(&self, sample: Sample) -> Option<Totals> {
        let bits = (u8::from(sample.failed) * FAILED) | (u8::from(sample.slow) * SLOW);
        // A full window of successes is unchanged by one more success:
        // three shared loads instead of two writes to contended lines.
        if bits == 0
            && self.failures.load(Relaxed) == 0
            && self.slow.load(Relaxed) == 0
            && self.next.load(Relaxed) >= self.ring.len() as u64
        {
            return Some(Totals {
                calls: self.ring.len() as u64,
                failures: 0,
                slow: 0,
            });
        }
        let at = self.next.fetch_add(1, Relaxed) % self.ring.len() as u64;
        let old = self.ring[at as usize].swap(bits, Relaxed);
        if old != bits {
            adjust(&self.failures, old & FAILED != 0, bits & FAILED != 0);
            adjust(&self.slow, old & SLOW != 0, bits & SLOW != 0);
        }
        None
    }

    fn totals(&self) -> Totals {
        Totals {
            calls: self.next.load(Relaxed).min(self.ring.len() as u64),
            failures: self.failures.load(Relaxed),
            slow: self.slow.load(Relaxed),
        }
    }

    fn reset(&self) {
        for slot in self.ring.iter() {
            slot.store(0, Relaxed);
        }
        self.next.store(0, Relaxed);
        self.failures.store(0, Relaxed);
        self.slow.store(0, Relaxed);
    }
}

#[inline]
fn adjust(count: &AtomicU64, was: bool, is: bool) {
    match (was, is) {
        (false, true) => {
            count.fetch_add(1, Relaxed);
        }
        (true, false) => {
            count.fetch_sub(1, Relaxed);
        }
        _ => {}
    }
}

/// The calls of the last `size` of time, in `buckets` buckets of equal
/// width; the oldest bucket is reused when time moves past it.
///
/// Each count is one `AtomicU64` that carries the bucket period it belongs
/// to in its high half and the count in its low half, so a count that is
/// reused for a new period is reset and bumped by a single compare-exchange
/// and no sample is ever lost to a reset. Windows hold the current (partly
/// filled) bucket and the `buckets - 1` before it.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
    width: Nanos,
}

#[derive(Debug, Default)]
struct Bucket {
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

impl TimeWindow {
    fn new(size: Nanos, buckets: u32) -> Self {
        Self {
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
            width: (size / u64::from(buckets)).max(1),
        }
    }

    /// The period number of `now`, truncated to the 32 bits a count keeps.
    #[inline]
    fn period(&self, now: Nanos) -> u32 {
        (now / self.width) as u32
    }

    #[inline]
    fn record(&self, now: Nanos, sample: Sample) {
        let period = self.period(now);
        let bucket = &self.buckets[period as usize % self.buckets.len()];
        bump(&bucket.calls, period);
        if sample.failed {
            bump(&bucket.failures, period);
        }
        if sample.slow {
            bump(&bucket.slow, period);
        }
    }

    fn totals(&self, now: Nanos) -> Totals {
        let period = self.period(now);
        let span = self.buckets.len() as u32;
        let mut totals = Totals::default();
        for bucket in self.buckets.iter() {
            totals.calls += count_in(&bucket.calls, period, span);
            totals.failures += count_in(&bucket.failures, period, span);
            totals.slow += count_in(&bucket.slow, period, span);
        }
        totals
    }

    fn reset(&self) {
        for bucket in self.buckets.iter() {
            bucket.calls.store(0, Relaxed);
            bucket.failures.store(0, Relaxed);
            bucket.slow.store(0, Relaxed);
        }
    }
}

const COUNT_BITS: u32 = 32;

#[inline]
fn bump(word: &AtomicU64, period: u32) {
    let mut current = word.load(Relaxed);
    loop {
        if (current >> COUNT_BITS) as u32 == period {
            word.fetch_add(1, Relaxed);
            return;
        }
        let fresh = (u64::from(period) << COUNT_BITS) | 1;
        match word.compare_exchange_weak(current, fresh, Relaxed, Relaxed) {
            Ok(_) => return,
            Err(seen) => current = seen,
        }
    }
}

/// The count of `word` if it belongs to one of the `span` periods ending at
/// `period` (a reset word, 0, counts nothing either way).
#[inline]
fn count_in(word: &AtomicU64, period: u32, span: u32) -> u64 {
    let value = word.load(Relaxed);
    let age = period.wrapping_sub((value >> COUNT_BITS) as u32);
    if age < span {
        value & u64::from(u32::MAX)
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Sample = Sample {
        failed: false,
        slow: false,
    };
    const FAIL: Sample = Sample {
        failed: true,
        slow: false,
    };
    const SLOW_OK: Sample = Sample {
        failed: false,
        slow: true,
    };

    #[test]
    fn count_window_slides_over_the_last_n() {
        let w = CountWindow::new(3);
        w.record(FAIL);
        w.record(SLOW_OK);
        assert_eq!(
            w.totals(),
            Totals {
                calls: 2,
                failures: 1,
                slow: 1
            }
        );
        w.record(OK);
        w.record(OK); // pushes the failure out
        assert_eq!(
            w.totals(),
            Totals {
                calls: 3,
                failures: 0,
                slow: 1
            }
        );
        w.record(OK); // pushes the slow call out
        assert_eq!(
            w.totals(),
            Totals {
                calls: 3,
                failures: 0,
                slow: 0
            }
        );
        // A full window of successes: one more success changes nothing,
        // and recording it says what the totals are.
        assert_eq!(w.record(OK), Some(w.totals()));
        assert_eq!(w.record(FAIL), None);
        w.reset();
        assert_eq!(w.totals(), Totals::default());
    }

    #[test]
    fn time_window_forgets_buckets_older_than_its_size() {
        // 10 s in 10 buckets of 1 s.
        let w = TimeWindow::new(10_000_000_000, 10);
        let s = 1_000_000_000;
        w.record(5 * s, FAIL);
        w.record(5 * s + 1, OK);
        w.record(9 * s, SLOW_OK);
        assert_eq!(
            w.totals(9 * s),
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        // At 14.x s the window covers periods 5..=14: all still in.
        assert_eq!(w.totals(14 * s + 5).calls, 3);
        // At 15 s period 5 has left.
        assert_eq!(
            w.totals(15 * s),
            Totals {
                calls: 1,
                failures: 0,
                slow: 1
            }
        );
        // Reusing bucket 5's slot for period 15 resets it in the same step.
        w.record(15 * s, OK);
        assert_eq!(
            w.totals(15 * s),
            Totals {
                calls: 2,
                failures: 0,
                slow: 1
            }
        );
        // Long after, nothing is left.
        assert_eq!(w.totals(1_000 * s), Totals::default());
    }

    #[test]
    fn concurrent_recording_keeps_exact_counts() {
        let w = std::sync::Arc::new(CountWindow::new(64));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        w.record(if (i + t) % 3 == 0 { FAIL } else { OK });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Whatever the interleaving, the counts match the ring's contents.
        let in_ring = w
            .ring
            .iter()
            .filter(|b| b.load(Relaxed) & FAILED != 0)
            .count();
        assert_eq!(w.totals().failures, in_ring as u64);
        assert_eq!(w.totals().calls, 64);
    }
}
