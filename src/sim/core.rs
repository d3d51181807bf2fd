//! The shared state of one simulated back end: capacity, FIFO queue,
//! condition, schedule and counters, all behind one std mutex (the
//! simulation is not a hot path).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::Waker;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::config::{Abandoned, Change, Condition, Sampler, fraction_of, scale};

/// Everything clones of one back end share.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Virtual time zero of [`SimHandle::at`](super::SimHandle::at).
    pub(crate) origin: Instant,
    pub(crate) base_capacity: usize,
    pub(crate) down_latency: Duration,
    pub(crate) abandoned: Abandoned,
    /// This back end, for starting the schedule driver from `&self`.
    me: Weak<Shared>,
    /// Wakes the schedule driver when a change is scheduled or the back end
    /// goes away.
    notify: Arc<Notify>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Lets the schedule driver, if any, see that the back end is gone.
        self.notify.notify_one();
    }
}

/// Where a queued call stands, as decided by [`State::pump`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Decision {
    /// Still in the queue.
    Waiting,
    /// Given a slot at `start`; serve with this slow factor.
    Serve { start: Instant, factor: f64 },
    /// The back end went down: answer an error `down_latency` after `at`.
    Fail { at: Instant },
    /// The back end went down hanging: never answer.
    Hang,
}

#[derive(Debug)]
struct Slot {
    decision: Decision,
    waker: Option<Waker>,
}

/// What the back end does with a call at a given moment.
enum Effect {
    Serve(f64),
    Fail,
    Hang,
}

/// A call's first stage, decided when it is made.
pub(crate) enum Arrival {
    /// Queued (and possibly already given a slot): ask
    /// [`Shared::decision`].
    Queued,
    /// Down: answer an error at this time.
    Fail(Instant),
    /// Down and hanging.
    Hang,
}

#[derive(Debug)]
pub(crate) struct State {
    sampler: Sampler,
    capacity: usize,
    condition: Condition,
    condition_since: Instant,
    next_seq: u64,
    /// Calls waiting for a slot, oldest first.
    queue: VecDeque<u64>,
    /// Queued calls and the decisions their futures have not read yet.
    slots: HashMap<u64, Slot>,
    /// Changes to apply at a virtual time, in time then scheduling order.
    schedule: BTreeMap<(Instant, u64), Change>,
    next_change: u64,
    driver: bool,
    /// Abandoned calls still queued ([`Abandoned::KeepWorking`]), with
    /// their base service time.
    abandoned_queued: HashMap<u64, Duration>,
    /// When the abandoned calls in service give their slots back, earliest
    /// first.
    abandoned_ends: BinaryHeap<Reverse<Instant>>,
    /// The driver must look at the schedule again (an abandoned call's end
    /// was added).
    wake_driver: bool,
    pub(crate) stats: super::SimStats,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic elsewhere while the lock was held leaves counters that are
    // still consistent enough for a simulation; never propagate it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn wake_all(wakers: Vec<Waker>) {
    for w in wakers {
        w.wake();
    }
}

impl Shared {
    pub(crate) fn new(
        sampler: Sampler,
        capacity: usize,
        condition: Condition,
        down_latency: Duration,
        abandoned: Abandoned,
    ) -> Arc<Self> {
        let origin = Instant::now();
        let stats = super::SimStats {
            capacity,
            ..super::SimStats::default()
        };
        Arc::new_cyclic(|me| Self {
            state: Mutex::new(State {
                sampler,
                capacity,
                condition,
                condition_since: origin,
                next_seq: 0,
                queue: VecDeque::new(),
                slots: HashMap::new(),
                schedule: BTreeMap::new(),
                next_change: 0,
                driver: false,
                abandoned_queued: HashMap::new(),
                abandoned_ends: BinaryHeap::new(),
                wake_driver: false,
                stats,
            }),
            origin,
            base_capacity: capacity,
            down_latency,
            abandoned,
            me: me.clone(),
            notify: Arc::new(Notify::new()),
        })
    }

    /// Runs `f` on the state after applying every change due by now; wakes
    /// the calls that got a decision once the lock is released.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut State, Instant, &mut Vec<Waker>) -> T) -> T {
        let now = Instant::now();
        let mut wakers = Vec::new();
        let (out, driver) = {
            let mut st = lock(&self.state);
            st.apply_due(now, self.base_capacity, &mut wakers);
            let out = f(&mut st, now, &mut wakers);
            (out, st.driver_wanted())
        };
        wake_all(wakers);
        match driver {
            Driver::Start(rt) => {
                rt.spawn(drive(self.me.clone(), Arc::clone(&self.notify)));
            }
            Driver::Notify => self.notify.notify_one(),
            Driver::None => {}
        }
        out
    }

    /// A new call: its number, its base service time and its first stage.
    pub(crate) fn arrive(&self) -> (u64, Instant, Duration, Arrival) {
        let down_latency = self.down_latency;
        self.with(|st, now, wakers| {
            let seq = st.next_seq;
            st.next_seq += 1;
            st.stats.started += 1;
            let base = st.sampler.sample();
            let arrival = match st.effect(now) {
                Effect::Fail => Arrival::Fail(now.checked_add(down_latency).unwrap_or(now)),
                Effect::Hang => {
                    st.stats.hanging += 1;
                    Arrival::Hang
                }
                Effect::Serve(_) => {
                    st.queue.push_back(seq);
                    st.slots.insert(
                        seq,
                        Slot {
                            decision: Decision::Waiting,
                            waker: None,
                        },
                    );
                    st.note_peaks();
                    st.pump(now, wakers);
                    Arrival::Queued
                }
            };
            (seq, now, base, arrival)
        })
    }

    /// The decision for queued call `seq`; registers `waker` while it is
    /// still waiting. A final decision is handed over once: the slot is
    /// forgotten.
    pub(crate) fn decision(&self, seq: u64, waker: &Waker) -> Decision {
        self.with(|st, _, _| match st.slots.get_mut(&seq) {
            Some(slot) => match slot.decision {
                Decision::Waiting => {
                    match &mut slot.waker {
                        Some(w) if w.will_wake(waker) => {}
                        w => *w = Some(waker.clone()),
                    }
                    Decision::Waiting
                }
                d => {
                    st.slots.remove(&seq);
                    d
                }
            },
            // Not reachable: a queued call's slot lives until its decision
            // is read. Waiting forever is the harmless answer.
            None => Decision::Waiting,
        })
    }

    /// A call in service answered.
    pub(crate) fn served(&self) {
        self.with(|st, now, wakers| {
            st.stats.in_service = st.stats.in_service.saturating_sub(1);
            st.stats.served += 1;
            st.pump(now, wakers);
        });
    }

    /// A call answered an error.
    pub(crate) fn failed(&self) {
        self.with(|st, _, _| st.stats.failed += 1);
    }

    /// A call's future was dropped before it answered. `stage` says what it
    /// held; `base` is its base service time.
    pub(crate) fn cancel(&self, seq: u64, base: Duration, stage: Held) {
        // Working on after the caller left needs a timer to give the slot
        // back: without a runtime, free it now.
        let keep = self.abandoned == Abandoned::KeepWorking
            && tokio::runtime::Handle::try_current().is_ok();
        self.with(|st, now, wakers| {
            st.stats.cancelled += 1;
            let held = match stage {
                Held::Queued => match st.slots.remove(&seq).map(|s| s.decision) {
                    Some(Decision::Waiting) if keep => {
                        // Stays in the queue; served for nobody in its turn.
                        st.abandoned_queued.insert(seq, base);
                        st.stats.abandoned_working += 1;
                        Held::Nothing
                    }
                    Some(Decision::Waiting) => {
                        if let Some(pos) = st.queue.iter().position(|&s| s == seq) {
                            st.queue.remove(pos);
                        }
                        Held::Nothing
                    }
                    Some(Decision::Serve { start, factor }) => Held::Service {
                        until: start.checked_add(scale(base, factor)),
                    },
                    Some(Decision::Hang) => Held::Hang,
                    Some(Decision::Fail { .. }) | None => Held::Nothing,
                },
                other => other,
            };
            match held {
                Held::Service { until } if keep => {
                    st.stats.abandoned_working += 1;
                    // A service time too long for the clock keeps its slot
                    // for ever, as the call would have.
                    if let Some(until) = until {
                        st.abandoned_ends.push(Reverse(until));
                        st.wake_driver = true;
                    }
                }
                Held::Service { .. } => {
                    st.stats.in_service = st.stats.in_service.saturating_sub(1);
                    st.pump(now, wakers);
                }
                Held::Hang => st.stats.hanging = st.stats.hanging.saturating_sub(1),
                Held::Queued | Held::Nothing => {}
            }
            st.note_peaks();
        });
    }

    /// Applies `change` now.
    pub(crate) fn apply(&self, change: Change) {
        let base = self.base_capacity;
        self.with(|st, now, wakers| st.apply_change(change, now, base, wakers));
    }

    /// Schedules `change` at `when`; starts the driver task that applies it
    /// on time if it is not running yet.
    pub(crate) fn schedule(
        self: &Arc<Self>,
        when: Instant,
        change: Change,
    ) -> Result<(), super::SimConfigError> {
        let base = self.base_capacity;
        let start_driver = self.with(|st, now, wakers| {
            if when <= now {
                st.apply_change_since(change, when, now, base, wakers);
                return Ok(None);
            }
            if st.driver {
                st.add_change(when, change);
                return Ok(None);
            }
            let rt = tokio::runtime::Handle::try_current()
                .map_err(|_| super::SimConfigError::NoRuntime)?;
            st.add_change(when, change);
            st.driver = true;
            Ok(Some(rt))
        })?;
        if let Some(rt) = start_driver {
            rt.spawn(drive(self.me.clone(), Arc::clone(&self.notify)));
        } else {
            self.notify.notify_one();
        }
        Ok(())
    }

    /// Applies due changes and gives back the slots of abandoned calls
    /// whose service ended; the next such moment.
    fn tick(&self) -> Option<Instant> {
        self.with(|st, _, _| {
            let change = st.schedule.keys().next().map(|&(t, _)| t);
            let end = st.abandoned_ends.peek().map(|&Reverse(t)| t);
            match (change, end) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        })
    }

    pub(crate) fn snapshot(&self) -> (super::SimStats, Condition, usize) {
        self.with(|st, _, _| (st.stats, st.condition, st.schedule.len()))
    }

    pub(crate) fn reset_peaks(&self) {
        self.with(|st, _, _| {
            st.stats.peak_in_service = st.stats.in_service;
            st.stats.peak_concurrent = st.stats.in_service + st.stats.queued;
        });
    }
}

/// What the schedule driver needs after a change to the state.
enum Driver {
    None,
    Notify,
    Start(tokio::runtime::Handle),
}

/// What a dropped call was holding.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Held {
    /// It was (or had been) queued: look up its decision.
    Queued,
    /// A service slot, until its service would have ended (never if
    /// `None`).
    Service { until: Option<Instant> },
    /// A hanging call.
    Hang,
    /// Nothing (a pending error).
    Nothing,
}

/// Applies scheduled changes on time, in their own task, until the back
/// end is dropped.
async fn drive(shared: Weak<Shared>, notify: Arc<Notify>) {
    loop {
        let next = match shared.upgrade() {
            Some(shared) => shared.tick(),
            None => return,
        };
        match next {
            Some(t) => {
                // Woken early by a new change or the back end's drop; either
                // way, look again.
                let _ = tokio::time::timeout_at(t, notify.notified()).await;
            }
            None => notify.notified().await,
        }
    }
}

impl State {
    fn add_change(&mut self, when: Instant, change: Change) {
        let n = self.next_change;
        self.next_change += 1;
        self.schedule.insert((when, n), change);
    }

    fn apply_due(&mut self, now: Instant, base: usize, wakers: &mut Vec<Waker>) {
        loop {
            let change = self.schedule.keys().next().map(|&(t, _)| t);
            let end = self.abandoned_ends.peek().map(|&Reverse(t)| t);
            match (change, end) {
                // An abandoned call's service ends first (or with the change).
                (c, Some(end)) if end <= now && c.is_none_or(|c| end <= c) => {
                    self.abandoned_ends.pop();
                    self.stats.in_service = self.stats.in_service.saturating_sub(1);
                    self.stats.abandoned_working = self.stats.abandoned_working.saturating_sub(1);
                    self.pump(now, wakers);
                }
                (Some(when), _) if when <= now => {
                    let Some(entry) = self.schedule.first_entry() else {
                        break;
                    };
                    let change = entry.remove();
                    self.apply_change_since(change, when, now, base, wakers);
                }
                _ => break,
            }
        }
    }

    /// Whether the driver must start or look again, once the lock is
    /// released.
    fn driver_wanted(&mut self) -> Driver {
        if !std::mem::take(&mut self.wake_driver) {
            return Driver::None;
        }
        if self.driver {
            return Driver::Notify;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                self.driver = true;
                Driver::Start(rt)
            }
            // Applied at the next use of the back end instead.
            Err(_) => Driver::None,
        }
    }

    fn apply_change(&mut self, change: Change, now: Instant, base: usize, w: &mut Vec<Waker>) {
        self.apply_change_since(change, now, now, base, w);
    }

    /// Applies `change`, as made at `since` (a flapping cycle starts then).
    fn apply_change_since(
        &mut self,
        change: Change,
        since: Instant,
        now: Instant,
        base: usize,
        wakers: &mut Vec<Waker>,
    ) {
        match change {
            Change::Condition(c) => {
                self.condition = c;
                self.condition_since = since;
            }
            Change::Capacity(c) => self.capacity = c,
            Change::CapacityFraction(f) => self.capacity = fraction_of(base, f),
            // Checked by `Change::validate` before it got here.
            Change::ServiceTime(st) => {
                let _ = self.sampler.set(st);
            }
        }
        self.stats.capacity = self.capacity;
        self.pump(now, wakers);
    }

    fn effect(&self, now: Instant) -> Effect {
        match self.condition {
            Condition::Up => Effect::Serve(1.0),
            Condition::Slow { factor } => Effect::Serve(factor),
            Condition::DownFast => Effect::Fail,
            Condition::DownHang => Effect::Hang,
            Condition::Flapping { period } => {
                let elapsed = now
                    .saturating_duration_since(self.condition_since)
                    .as_nanos();
                let half = (period.as_nanos() / 2).max(1);
                if (elapsed / half) % 2 == 0 {
                    Effect::Serve(1.0)
                } else {
                    Effect::Fail
                }
            }
        }
    }

    /// Moves calls from the front of the queue into service while there is
    /// a free slot, or out of the queue as errors (or hangs) while the back
    /// end is down.
    fn pump(&mut self, now: Instant, wakers: &mut Vec<Waker>) {
        while let Some(&seq) = self.queue.front() {
            if let Some(&base) = self.abandoned_queued.get(&seq) {
                // Nobody waits for this one: serve it for nothing, or drop
                // it if the back end went down.
                match self.effect(now) {
                    Effect::Serve(factor) => {
                        if self.stats.in_service >= self.capacity {
                            break;
                        }
                        self.stats.in_service += 1;
                        // A service time too long for the clock keeps the
                        // slot for ever, as it would have.
                        if let Some(end) = now.checked_add(scale(base, factor)) {
                            self.abandoned_ends.push(Reverse(end));
                            self.wake_driver = true;
                        }
                    }
                    Effect::Fail | Effect::Hang => {
                        self.stats.abandoned_working =
                            self.stats.abandoned_working.saturating_sub(1);
                    }
                }
                self.abandoned_queued.remove(&seq);
                self.queue.pop_front();
                continue;
            }
            let decision = match self.effect(now) {
                Effect::Fail => Decision::Fail { at: now },
                Effect::Hang => {
                    self.stats.hanging += 1;
                    Decision::Hang
                }
                Effect::Serve(factor) => {
                    if self.stats.in_service >= self.capacity {
                        break;
                    }
                    self.stats.in_service += 1;
                    Decision::Serve { start: now, factor }
                }
            };
            self.queue.pop_front();
            if let Some(slot) = self.slots.get_mut(&seq) {
                slot.decision = decision;
                if let Some(w) = slot.waker.take() {
                    wakers.push(w);
                }
            }
        }
        self.note_peaks();
    }

    fn note_peaks(&mut self) {
        let s = &mut self.stats;
        s.queued = self.queue.len();
        s.peak_in_service = s.peak_in_service.max(s.in_service);
        s.peak_concurrent = s.peak_concurrent.max(s.in_service + s.queued);
    }
}
