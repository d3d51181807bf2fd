//! The room itself: one FIFO list per priority class over a slab of
//! fixed-size slots, behind one mutex that only waiting requests take.
//!
//! Every operation is O(1) but the search for the most important non-empty
//! class, which is O(classes) with at most 16 classes. Memory is one
//! [`Slot`] per place, allocated as the room first fills and never freed
//! below the peak. A waiter holds its slot from its arrival until it reads
//! its answer, so a room of capacity N holds at most N waiting slots plus
//! one per waiter that has been answered (granted or turned away) but not
//! yet polled: woken tasks, which read their answer when they next run. A
//! slot is reused under a new sequence number, so a stale key (a waiter
//! that already left) never touches its successor.

use std::sync::atomic::Ordering::*;
use std::task::Waker;

use crate::clock::{Nanos, saturating_nanos};
use crate::core::breaker::Ticket;
use crate::core::sync::{AtomicUsize, Mutex, fence};
use crate::policy::{Order, WaitingRoomPolicy};
use crate::priority::{MAX_CLASSES, Priority};
use crate::reject::{Reason, Rejected};

const NIL: u32 = u32::MAX;

/// Identifies one waiter: its slot and the slot's sequence number when the
/// waiter took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Key {
    index: u32,
    seq: u32,
}

/// What a granted waiter receives: the admission it would have had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) ticket: Ticket,
    pub(crate) at: Nanos,
}

#[derive(Debug)]
enum State {
    Free,
    Waiting,
    Granted(Grant),
    Rejected(Rejected),
}

#[derive(Debug)]
struct Slot {
    seq: u32,
    prev: u32,
    next: u32,
    priority: Priority,
    since: Nanos,
    /// When the waiter's wait runs out.
    until: Nanos,
    waker: Option<Waker>,
    state: State,
}

#[derive(Debug, Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
}

const EMPTY: List = List {
    head: NIL,
    tail: NIL,
};

/// Where a waiter stands, as seen when it polls.
#[derive(Debug)]
pub(crate) enum Standing {
    Waiting,
    Granted(Grant),
    Rejected(Rejected),
}

/// The room's lists and slots. Callers hold the room's mutex.
#[derive(Debug)]
pub(crate) struct Queues {
    lists: [List; MAX_CLASSES],
    slots: Vec<Slot>,
    free: u32,
    len: usize,
    capacity: usize,
    settings: RoomSettings,
    /// When the room last became non-empty (`None` while empty).
    busy_since: Option<Nanos>,
}

impl Queues {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            lists: [EMPTY; MAX_CLASSES],
            slots: Vec::new(),
            free: NIL,
            len: 0,
            capacity,
            settings: RoomSettings {
                max_wait: 0,
                order: Order::PriorityFifo,
                codel_interval: 0,
                codel_target: 0,
            },
            busy_since: None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// How long the room has been non-empty without a break.
    pub(crate) fn busy_for(&self, now: Nanos) -> Nanos {
        self.busy_since.map_or(0, |since| now.saturating_sub(since))
    }

    /// Waiters of class `priority` or more important.
    pub(crate) fn has_waiters_at_or_above(&self, priority: Priority) -> bool {
        let rank = usize::from(priority.rank()).min(MAX_CLASSES - 1);
        self.lists[..=rank].iter().any(|list| list.head != NIL)
    }

    /// Adds a waiter of class `priority` at the back of its class. A full
    /// room makes room for it by turning away the newest waiter of the
    /// least important class below it, who is told `QueueFull`; with no one
    /// below it, the newcomer is turned away instead.
    pub(crate) fn push(
        &mut self,
        priority: Priority,
        now: Nanos,
        until: Nanos,
    ) -> Result<Key, Rejected> {
        self.make_room(priority)?;
        let index = self.take_slot();
        let rank = usize::from(priority.rank()).min(MAX_CLASSES - 1);
        let tail = self.lists[rank].tail;
        let slot = &mut self.slots[index as usize];
        slot.prev = tail;
        slot.next = NIL;
        slot.priority = priority;
        slot.since = now;
        slot.until = until;
        slot.waker = None;
        slot.state = State::Waiting;
        let key = Key {
            index,
            seq: slot.seq,
        };
        match tail {
            NIL => self.lists[rank].head = index,
            tail => self.slots[tail as usize].next = index,
        }
        self.lists[rank].tail = index;
        if self.len == 0 {
            self.busy_since = Some(now);
        }
        self.len += 1;
        Ok(key)
    }

    /// Makes a place for a waiter of class `priority` if the room is full,
    /// by turning away the newest waiter of the least important class below
    /// it, who is told `QueueFull`; returns that waiter's class, so that the
    /// caller can count it out. With no one below it, the newcomer is
    /// turned away instead.
    pub(crate) fn make_room(&mut self, priority: Priority) -> Result<Option<Priority>, Rejected> {
        if self.len < self.capacity {
            return Ok(None);
        }
        let lowest = self
            .lists
            .iter()
            .rposition(|list| list.head != NIL)
            .filter(|&rank| rank > usize::from(priority.rank()));
        match lowest {
            Some(rank) => {
                let victim = self.lists[rank].tail;
                let displaced = self.slots[victim as usize].priority;
                self.finish(victim, State::Rejected(Rejected::new(Reason::QueueFull)));
                Ok(Some(displaced))
            }
            None => Err(Rejected::new(Reason::QueueFull)),
        }
    }

    /// The waiter that leaves next: the most important class's oldest, or
    /// its newest when `newest_first`.
    pub(crate) fn next_out(&self, newest_first: bool) -> Option<(Priority, Nanos)> {
        let list = self.lists.iter().find(|list| list.head != NIL)?;
        let index = if newest_first { list.tail } else { list.head };
        let slot = &self.slots[index as usize];
        Some((slot.priority, slot.since))
    }

    /// Lets out the waiter `next_out` named, with `grant`, and wakes it.
    pub(crate) fn grant_next(&mut self, newest_first: bool, grant: Grant) {
        if let Some(list) = self.lists.iter().find(|list| list.head != NIL) {
            let index = if newest_first { list.tail } else { list.head };
            self.finish(index, State::Granted(grant));
            if self.len == 0 {
                self.busy_since = None;
            }
        }
    }

    /// Turns away every waiter for which `reject(priority, until)` returns
    /// a rejection; returns how many left.
    pub(crate) fn reject_where(
        &mut self,
        mut reject: impl FnMut(Priority, Nanos) -> Option<Rejected>,
    ) -> usize {
        let mut turned_away = 0;
        for rank in 0..MAX_CLASSES {
            let mut index = self.lists[rank].head;
            while index != NIL {
                let slot = &self.slots[index as usize];
                let next = slot.next;
                if let Some(rejected) = reject(slot.priority, slot.until) {
                    self.finish(index, State::Rejected(rejected));
                    turned_away += 1;
                }
                index = next;
            }
        }
        if self.len == 0 {
            self.busy_since = None;
        }
        turned_away
    }

    /// Wakes every waiter that is still waiting, so that each looks again
    /// at when it must next be polled (the breaker opened under them, and
    /// its next probe may come before their wait runs out).
    pub(crate) fn wake_waiting(&mut self) {
        for rank in 0..MAX_CLASSES {
            let mut index = self.lists[rank].head;
            while index != NIL {
                let slot = &mut self.slots[index as usize];
                if let Some(waker) = slot.waker.take() {
                    waker.wake();
                }
                index = slot.next;
            }
        }
    }

    /// Turns away the newest waiters of the least important classes until
    /// at most `keep` remain (a smaller room after a policy reload); returns
    /// the classes of those turned away.
    pub(crate) fn shrink_to(&mut self, keep: usize) -> Vec<Priority> {
        let mut turned_away = Vec::new();
        while self.len > keep {
            let Some(rank) = self.lists.iter().rposition(|list| list.head != NIL) else {
                break;
            };
            let victim = self.lists[rank].tail;
            turned_away.push(self.slots[victim as usize].priority);
            self.finish(victim, State::Rejected(Rejected::new(Reason::QueueFull)));
        }
        if self.len == 0 {
            self.busy_since = None;
        }
        turned_away
    }

    /// The room's settings.
    pub(crate) fn settings(&self) -> RoomSettings {
        self.settings
    }

    /// Where `key`'s waiter stands; a waiter still waiting leaves `waker`
    /// to be woken.
    pub(crate) fn poll(&mut self, key: Key, waker: &Waker) -> Standing {
        let Some(slot) = self.slot_mut(key) else {
            // Cannot happen for a live key; answer rather than hang.
            return Standing::Rejected(Rejected::new(Reason::QueueTimeout));
        };
        match &slot.state {
            State::Waiting => {
                match &mut slot.waker {
                    Some(w) if w.will_wake(waker) => {}
                    w => *w = Some(waker.clone()),
                }
                Standing::Waiting
            }
            State::Granted(_) | State::Rejected(_) | State::Free => {
                let standing = match std::mem::replace(&mut slot.state, State::Free) {
                    State::Granted(grant) => Standing::Granted(grant),
                    State::Rejected(rejected) => Standing::Rejected(rejected),
                    _ => Standing::Rejected(Rejected::new(Reason::QueueTimeout)),
                };
                self.release_slot(key.index);
                standing
            }
        }
    }

    /// The waiter of `key` leaves (its time is up, or its future was
    /// dropped). Returns a grant it had received but not yet taken, which
    /// the caller must give back.
    pub(crate) fn leave(&mut self, key: Key) -> Option<Grant> {
        let state = match self.slot_mut(key) {
            Some(slot) => std::mem::replace(&mut slot.state, State::Free),
            None => return None,
        };
        match state {
            State::Waiting => {
                self.unlink(key.index);
                self.release_slot(key.index);
                if self.len == 0 {
                    self.busy_since = None;
                }
                None
            }
            State::Granted(grant) => {
                self.release_slot(key.index);
                Some(grant)
            }
            State::Rejected(_) => {
                self.release_slot(key.index);
                None
            }
            State::Free => None,
        }
    }

    /// Whether `key`'s waiter still holds its place: waiting, or answered
    /// (granted or turned away) but not yet told.
    pub(crate) fn holds(&self, key: Key) -> bool {
        self.slots
            .get(key.index as usize)
            .is_some_and(|slot| slot.seq == key.seq && !matches!(slot.state, State::Free))
    }

    /// The class of `key`'s waiter, if it is still waiting.
    pub(crate) fn waiting_priority(&self, key: Key) -> Option<Priority> {
        let slot = self.slots.get(key.index as usize)?;
        (slot.seq == key.seq && matches!(slot.state, State::Waiting)).then_some(slot.priority)
    }

    fn slot_mut(&mut self, key: Key) -> Option<&mut Slot> {
        self.slots
            .get_mut(key.index as usize)
            .filter(|slot| slot.seq == key.seq)
    }

    /// Unlinks a waiting slot, sets its final state and wakes its waiter.
    /// The slot stays taken until the waiter reads its state.
    fn finish(&mut self, index: u32, state: State) {
        self.unlink(index);
        let slot = &mut self.slots[index as usize];
        slot.state = state;
        if let Some(waker) = slot.waker.take() {
            waker.wake();
        }
    }

    fn unlink(&mut self, index: u32) {
        let (prev, next, rank) = {
            let slot = &self.slots[index as usize];
            (
                slot.prev,
                slot.next,
                usize::from(slot.priority.rank()).min(MAX_CLASSES - 1),
            )
        };
        match prev {
            NIL => self.lists[rank].head = next,
            prev => self.slots[prev as usize].next = next,
        }
        match next {
            NIL => self.lists[rank].tail = prev,
            next => self.slots[next as usize].prev = prev,
        }
        let slot = &mut self.slots[index as usize];
        slot.prev = NIL;
        slot.next = NIL;
        self.len -= 1;
    }

    fn take_slot(&mut self) -> u32 {
        if self.free != NIL {
            let index = self.free;
            self.free = self.slots[index as usize].next;
            return index;
        }
        self.slots.push(Slot {
            seq: 0,
            prev: NIL,
            next: NIL,
            priority: Priority::HIGHEST,
            since: 0,
            until: 0,
            waker: None,
            state: State::Free,
        });
        (self.slots.len() - 1) as u32
    }

    fn release_slot(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        slot.seq = slot.seq.wrapping_add(1);
        slot.state = State::Free;
        slot.waker = None;
        slot.next = self.free;
        self.free = index;
    }

    /// Waiters of each class, by rank: walks every waiter (for a health
    /// snapshot, not for the request path).
    pub(crate) fn waiting_by_class(&self) -> [usize; MAX_CLASSES] {
        let mut counts = [0; MAX_CLASSES];
        for (count, list) in counts.iter_mut().zip(&self.lists) {
            let mut index = list.head;
            while index != NIL {
                *count += 1;
                index = self.slots[index as usize].next;
            }
        }
        counts
    }

    /// Slots allocated: the room's peak size, its memory high-water mark.
    pub(crate) fn slots_allocated(&self) -> usize {
        self.slots.len()
    }
}

/// A route's waiting room: its settings, its queues behind a mutex, and a
/// count of waiters readable without the mutex, so that the admitted path
/// of an empty room never takes the lock.
#[derive(Debug)]
pub(crate) struct Room {
    waiting: AtomicUsize,
    queues: Mutex<Queues>,
}

/// How long requests may wait and in which order they leave; read and
/// changed (by a policy reload) under the room's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RoomSettings {
    pub(crate) max_wait: Nanos,
    pub(crate) order: Order,
    pub(crate) codel_interval: Nanos,
    pub(crate) codel_target: Nanos,
}

impl RoomSettings {
    fn new(policy: &WaitingRoomPolicy) -> Self {
        Self {
            max_wait: saturating_nanos(policy.max_wait),
            order: policy.order,
            codel_interval: saturating_nanos(policy.codel_interval),
            codel_target: saturating_nanos(policy.codel_target),
        }
    }
}

impl Room {
    pub(crate) fn new(policy: &WaitingRoomPolicy) -> Self {
        let mut queues = Queues::new(policy.capacity as usize);
        queues.settings = RoomSettings::new(policy);
        Self {
            waiting: AtomicUsize::new(0),
            queues: Mutex::new(queues),
        }
    }

    /// Takes the settings and capacity of `policy`, keeping the waiters; a
    /// smaller room turns away its excess waiters, least important and
    /// newest first, with `QueueFull`. Returns their classes.
    pub(crate) fn reconfigure(&self, policy: &WaitingRoomPolicy) -> Vec<Priority> {
        self.with(|queues| {
            queues.settings = RoomSettings::new(policy);
            queues.capacity = policy.capacity as usize;
            queues.shrink_to(queues.capacity)
        })
    }

    /// Waiters now, without the lock.
    #[inline]
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Acquire)
    }

    /// Runs `f` on the queues under the room's lock, then publishes the
    /// new waiter count.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut Queues) -> R) -> R {
        // A panic cannot leave the queues half-updated (no user code runs
        // under this lock), so a poisoned lock is safe to reuse.
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let result = f(&mut queues);
        self.waiting.store(queues.len(), Release);
        // Pairs with the fence in `waiting_after_release`: a waiter seated
        // here, whose next look at the gate (under this lock) comes after
        // this fence, either sees the capacity a concurrent change gives
        // back, or that change sees it waiting and hands it over. Without
        // both fences each side may read the other's old value (the
        // store-buffering pattern) and the waiter sleeps through its
        // wake-up until its wait runs out. (A finished call, the common
        // change, needs no fence: see `Gate::wake_room_after_release`.)
        fence(SeqCst);
        result
    }

    /// Waiters now, as seen by a call that has just given capacity back
    /// (see the fence in [`with`](Self::with)).
    #[inline]
    pub(crate) fn waiting_after_release(&self) -> usize {
        fence(SeqCst);
        self.waiting.load(Acquire)
    }

    /// Whether a standing queue is to be served newest first now.
    pub(crate) fn newest_first(&self, queues: &Queues, now: Nanos) -> bool {
        let settings = queues.settings;
        settings.order == Order::AdaptiveLifo && queues.busy_for(now) >= settings.codel_interval
    }
}

#[cfg(test)]
mod tests;
