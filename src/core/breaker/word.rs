//! The breaker's state word: tag, generation and half-open probe counts
//! in one `u64`, so that admission is a single atomic load.

use super::window::Sample;

// Layout:
//
//  63..62  tag: 0 closed, 1 open, 2 half-open
//  61..40  generation (22 bits, wrapping)
//  39..30  half-open: probes admitted and not cancelled
//  29..20  half-open: probes completed
//  19..10  half-open: probes failed
//   9..0   half-open: probes slow
//
// `half_open_probes` is validated to at most `MAX_PROBES`, so the 10-bit
// fields never overflow.

/// Most probes a half-open breaker may admit (10 bits in the state word).
pub const MAX_PROBES: u32 = 1023;

pub(super) const TAG_CLOSED: u64 = 0;
pub(super) const TAG_OPEN: u64 = 1;
pub(super) const TAG_HALF_OPEN: u64 = 2;
pub(super) const GEN_BITS: u32 = 22;
pub(super) const FIELD: u64 = 0x3ff;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Word(pub(super) u64);

impl Word {
    pub(super) const fn new(tag: u64, generation: u32) -> Self {
        Word(tag << 62 | ((generation as u64) & ((1 << GEN_BITS) - 1)) << 40)
    }
    pub(super) const fn tag(self) -> u64 {
        self.0 >> 62
    }
    pub(super) const fn generation(self) -> u32 {
        ((self.0 >> 40) & ((1 << GEN_BITS) - 1)) as u32
    }
    pub(super) const fn next_generation(self) -> u32 {
        self.generation().wrapping_add(1)
    }
    pub(super) const fn admitted(self) -> u32 {
        ((self.0 >> 30) & FIELD) as u32
    }
    pub(super) const fn completed(self) -> u32 {
        ((self.0 >> 20) & FIELD) as u32
    }
    pub(super) const fn failed(self) -> u32 {
        ((self.0 >> 10) & FIELD) as u32
    }
    pub(super) const fn slow(self) -> u32 {
        (self.0 & FIELD) as u32
    }
    pub(super) const fn with_admitted(self, n: u32) -> Self {
        Word(self.0 & !(FIELD << 30) | (n as u64 & FIELD) << 30)
    }
    pub(super) const fn with_probe_done(self, sample: Sample) -> Self {
        Word(self.0 + (1 << 20) + ((sample.failed as u64) << 10) + sample.slow as u64)
    }
}
