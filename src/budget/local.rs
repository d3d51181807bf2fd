//! The budget's counts in this process: lock-free pools of units counted in
//! time slots.
//!
//! A pool holds `size` units. Its admissions are counted per slot, in a ring
//! of `ring` entries, each one atomic word packing the slot's number (its
//! low 32 bits) and its count; `total` is the sum of the live entries plus
//! admissions being recorded. An admission adds one to `total` first and
//! gives it back if that went past `size`: two racing admissions can never
//! both take the last unit. Entries that leave the window are swept once
//! per slot (the first admission of a slot does it), subtracting their
//! counts from `total`.

use std::sync::atomic::{AtomicU64, Ordering};

/// How the budget's time line is cut into slots.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slots {
    /// Slot width in nanoseconds.
    pub(crate) width: u64,
    /// Live slots: a unit taken in slot `s` frees at slot `s + ring`.
    pub(crate) ring: u64,
}

/// One pool of units: the unreserved pool or one class's reserve.
#[derive(Debug)]
pub(crate) struct Pool {
    size: AtomicU64,
    total: AtomicU64,
    swept: AtomicU64,
    entries: Box<[AtomicU64]>,
}

const COUNT_MASK: u64 = u32::MAX as u64;

fn pack(slot: u64, count: u64) -> u64 {
    (slot << 32) | (count & COUNT_MASK)
}

fn unpack(word: u64) -> (u32, u64) {
    ((word >> 32) as u32, word & COUNT_MASK)
}

/// Where an entry stands from `slot`'s point of view.
#[derive(Debug, PartialEq, Eq)]
enum Age {
    /// Taken `d` slots ago, still in the window.
    Live(u64),
    /// Out of the window.
    Stale,
    /// From a slot after `slot` (a racing reader of a later clock).
    Newer,
}

fn age(entry_slot: u32, slot: u64, ring: u64) -> Age {
    let d = (slot as u32).wrapping_sub(entry_slot);
    if d > u32::MAX / 2 {
        Age::Newer
    } else if u64::from(d) < ring {
        Age::Live(u64::from(d))
    } else {
        Age::Stale
    }
}

impl Pool {
    pub(crate) fn new(size: u64, ring: u64) -> Self {
        Self {
            size: AtomicU64::new(size),
            total: AtomicU64::new(0),
            swept: AtomicU64::new(0),
            entries: (0..ring).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(crate) fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    #[cfg_attr(not(feature = "fleet"), allow(dead_code))]
    pub(crate) fn set_size(&self, size: u64) {
        self.size.store(size, Ordering::Relaxed);
    }

    /// Units taken in the window (after sweeping for `slot`).
    pub(crate) fn used(&self, slot: u64) -> u64 {
        self.sweep(slot);
        self.total.load(Ordering::Acquire)
    }

    /// Takes one unit in `slot`, if the pool has one.
    #[inline]
    pub(crate) fn take(&self, slot: u64) -> bool {
        self.sweep(slot);
        let size = self.size.load(Ordering::Relaxed);
        let before = self.total.fetch_add(1, Ordering::AcqRel);
        if before >= size {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        self.record(slot, 1);
        true
    }

    /// Counts `n` units as taken in `slot` whatever the size (the share of
    /// the fleet's use a replica assumes when Redis goes away).
    #[cfg_attr(not(feature = "fleet"), allow(dead_code))]
    pub(crate) fn seed(&self, slot: u64, n: u64) {
        if n > 0 {
            self.sweep(slot);
            self.total.fetch_add(n, Ordering::AcqRel);
            self.record(slot, n);
        }
    }

    /// Adds `n` to the entry of `slot`; `total` already counts them.
    fn record(&self, slot: u64, n: u64) {
        let ring = self.entries.len() as u64;
        let entry = &self.entries[(slot % ring) as usize];
        let mut word = entry.load(Ordering::Acquire);
        loop {
            let (at, count) = unpack(word);
            let (next, expired) = match age(at, slot, ring) {
                Age::Live(0) | Age::Newer => (pack(u64::from(at), count + n), 0),
                // The entry's slot left the window (same ring position).
                Age::Live(_) | Age::Stale => (pack(slot, n), count),
            };
            match entry.compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    if expired > 0 {
                        self.total.fetch_sub(expired, Ordering::AcqRel);
                    }
                    return;
                }
                Err(seen) => word = seen,
            }
        }
    }

    /// Gives back one unit taken in `slot` (a request the budget admitted
    /// that went no further); nothing if that slot has left the window.
    pub(crate) fn give_back(&self, slot: u64) {
        let ring = self.entries.len() as u64;
        let entry = &self.entries[(slot % ring) as usize];
        let mut word = entry.load(Ordering::Acquire);
        loop {
            let (at, count) = unpack(word);
            if at != slot as u32 || count == 0 {
                return;
            }
            match entry.compare_exchange_weak(
                word,
                pack(u64::from(at), count - 1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    self.total.fetch_sub(1, Ordering::AcqRel);
                    return;
                }
                Err(seen) => word = seen,
            }
        }
    }

    /// Empties the entries that left the window by `slot`; once per slot.
    #[inline]
    fn sweep(&self, slot: u64) {
        if self.swept.load(Ordering::Relaxed) >= slot
            || self.swept.fetch_max(slot, Ordering::AcqRel) >= slot
        {
            return;
        }
        let ring = self.entries.len() as u64;
        for entry in self.entries.iter() {
            let mut word = entry.load(Ordering::Acquire);
            loop {
                let (at, count) = unpack(word);
                if count == 0 || age(at, slot, ring) != Age::Stale {
                    break;
                }
                match entry.compare_exchange_weak(
                    word,
                    pack(u64::from(at), 0),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        self.total.fetch_sub(count, Ordering::AcqRel);
                        break;
                    }
                    Err(seen) => word = seen,
                }
            }
        }
    }

    /// The slot at which this pool's next unit frees, seen from `slot`:
    /// the oldest live entry's slot plus the ring; `None` if nothing is
    /// taken.
    pub(crate) fn frees_at(&self, slot: u64) -> Option<u64> {
        let ring = self.entries.len() as u64;
        self.entries
            .iter()
            .filter_map(|entry| {
                let (at, count) = unpack(entry.load(Ordering::Acquire));
                match age(at, slot, ring) {
                    Age::Live(d) if count > 0 => Some(slot - d + ring),
                    _ => None,
                }
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_holds_its_size_per_window_and_frees_by_slot() {
        let pool = Pool::new(3, 4);
        assert!(pool.take(10));
        assert!(pool.take(11));
        assert!(pool.take(11));
        assert!(!pool.take(12));
        assert_eq!(pool.frees_at(12), Some(14));
        assert!(!pool.take(13));
        // Slot 10 leaves the window at 14.
        assert!(pool.take(14));
        assert!(!pool.take(14));
        assert_eq!(pool.used(14), 3);
        assert_eq!(pool.used(100), 0);
        pool.give_back(100);
        assert!(pool.take(100));
        pool.give_back(100);
        assert_eq!(pool.used(100), 0);
    }

    #[test]
    fn racing_threads_never_take_more_than_the_size() {
        let pool = std::sync::Arc::new(Pool::new(1000, 61));
        let taken: u64 = (0..4)
            .map(|_| {
                let pool = pool.clone();
                std::thread::spawn(move || (0..5000).filter(|_| pool.take(7)).count() as u64)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(taken, 1000);
        assert_eq!(pool.used(7), 1000);
    }
}
