//! The ticket an admitted call holds until it ends: the breaker's
//! generation it was admitted under, and how it was admitted.

/// What an admitted call holds until it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub(super) generation: u32,
    pub(super) kind: TicketKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum TicketKind {
    /// Admitted by a closed breaker: the outcome goes into the window.
    Closed,
    /// One of half-open's probes.
    Probe,
    /// Admitted whatever the state (forced closed, or shadow mode in place
    /// of a rejection): the outcome is not a sample.
    Untracked,
}

impl Ticket {
    /// The ticket of a call no breaker tracks.
    pub(crate) const UNTRACKED: Ticket = Ticket {
        generation: 0,
        kind: TicketKind::Untracked,
    };

    /// Whether the call is one of half-open's probes.
    pub(crate) fn is_probe(self) -> bool {
        self.kind == TicketKind::Probe
    }

    /// The ticket in the low 40 bits of a word, and back with `from_bits`
    /// (a permit keeps whole words).
    pub(crate) const fn to_bits(self) -> u64 {
        self.generation as u64 | (self.kind as u64) << 32
    }

    pub(crate) const fn from_bits(bits: u64) -> Self {
        let kind = match (bits >> 32) & 0xff {
            0 => TicketKind::Closed,
            1 => TicketKind::Probe,
            _ => TicketKind::Untracked,
        };
        Ticket {
            generation: bits as u32,
            kind,
        }
    }
}
