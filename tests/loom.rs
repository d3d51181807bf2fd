//! Model checks of the admission core with [loom]: every interleaving of a
//! few threads (up to a bound on preemptions), under loom's model of the
//! C11 memory orderings the code asks for, on the crate's own code (its
//! atomics and mutexes come from `src/sync.rs`, which swaps in loom's in
//! this build).
//!
//! - The limiter's packed word: concurrent admit / complete / cancel (and a
//!   window closing under them) never leak a slot nor count one twice, and
//!   never let more calls in than the limit.
//! - Half-open probe slots: exactly `half_open_probes` admitted under
//!   concurrent admits and cancels; one verdict per generation, outcomes of
//!   another generation ignored.
//! - The waiting room: no lost wake-up between a failed admission, seating
//!   in the room and a concurrent release; a waiter that leaves with a
//!   grant in hand passes it on.
//!
//! A lost wake-up shows as a deadlock (a thread blocked in `block_on` that
//! nothing wakes), which loom reports as a failure. Run with
//!
//! ```text
//! RUSTFLAGS="--cfg brownout_loom" CARGO_TARGET_DIR=target/loom \
//!     cargo test --release --test loom -- --nocapture
//! ```
//!
//! (`.ci/run` does). `LOOM_MAX_PREEMPTIONS` raises the bound (default here
//! 3); each test prints how many executions it explored.
//!
//! [loom]: https://docs.rs/loom

#![cfg(brownout_loom)]

use std::future::poll_fn;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize as StdCounter, Ordering::Relaxed as Std};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use brownout::classify::Outcome;
use brownout::clock::Clock;
use brownout::loom_model::{Breaker, Entry, Gate, Limit, Ticket};
use brownout::policy::Algorithm;
use brownout::{BreakerState, LimitPolicy, Policy, WaitingRoomPolicy};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering::AcqRel};
use loom::thread;

/// Runs `model` under loom with a preemption bound (`bound`, or
/// `LOOM_MAX_PREEMPTIONS`), and says how many executions it explored.
fn check(name: &str, bound: usize, model: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(bound);
    }
    let bound = builder.preemption_bound;
    let counted = std::sync::Arc::new(StdCounter::new(0));
    let count = counted.clone();
    let started = std::time::Instant::now();
    builder.check(move || {
        count.fetch_add(1, Std);
        model();
    });
    let explored = counted.load(Std);
    println!(
        "loom: {name}: {explored} executions explored (preemption bound {bound:?}) in {:.1?}",
        started.elapsed()
    );
    assert!(
        explored > 1,
        "loom explored a single execution: nothing was checked"
    );
}

/// A tokio runtime whose clock is paused, entered for the whole of each
/// execution, so that the gate's clock stands still and every execution
/// sees one time. (Loom runs its threads as coroutines on one OS thread, so
/// they share the entered context.)
fn paused() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a paused runtime")
    })
}

fn fixed_limit(limit: u32) -> LimitPolicy {
    LimitPolicy {
        algorithm: Algorithm::Fixed,
        initial: limit,
        min: limit,
        max: limit,
        reserve: 0.0,
        ..LimitPolicy::default()
    }
}

// ---- the limiter's packed word ---------------------------------------------

/// Three calls race for a limit of two; each ends by completing (a
/// sample) or by being cancelled (no sample).
#[test]
fn limit_slots_are_never_leaked_double_counted_or_exceeded() {
    check("limit admit/complete/cancel", 3, || {
        let limit = Arc::new(Limit::new(&fixed_limit(2)));
        let holders = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..3)
            .map(|i| {
                let (limit, holders) = (limit.clone(), holders.clone());
                thread::spawn(move || {
                    if !limit.acquire() {
                        return false;
                    }
                    let held = holders.fetch_add(1, AcqRel) + 1;
                    assert!(held <= 2, "{held} calls hold slots of a limit of 2");
                    assert!(limit.inflight() <= 2, "in flight {}", limit.inflight());
                    holders.fetch_sub(1, AcqRel);
                    if i == 1 {
                        limit.release();
                    } else {
                        limit.complete(1_000_000, false, 0);
                    }
                    true
                })
            })
            .collect();
        let admitted = threads
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .filter(|&admitted| admitted)
            .count();
        // At most one can be shed: by the other two holding both slots.
        assert!(admitted >= 2, "only {admitted} admitted");
        assert_idle(&limit);
    });
}

/// A completing call closes a window (it takes the window's samples out of
/// the packed word with a compare-exchange, keeping the in-flight count)
/// while another call is admitted and cancelled.
#[test]
fn a_window_closing_under_traffic_keeps_the_in_flight_count() {
    check("limit window close", 3, || {
        let limit = Arc::new(Limit::new(&fixed_limit(2)));
        // 63 samples: the next one, at 1 s, closes the window.
        for _ in 0..63 {
            assert!(limit.acquire());
            assert_eq!(limit.complete(1_000_000, false, 0), None);
        }
        assert!(limit.acquire());
        let closer = {
            let limit = limit.clone();
            thread::spawn(move || limit.complete(1_000_000, false, 1_000_000_000))
        };
        let other = {
            let limit = limit.clone();
            thread::spawn(move || {
                if limit.acquire() {
                    assert!(limit.inflight() <= 2);
                    limit.release();
                }
            })
        };
        // A fixed limit does not move when its window closes.
        assert_eq!(closer.join().unwrap(), None);
        other.join().unwrap();
        assert_idle(&limit);
    });
}

/// Every slot came back, once: the whole limit of two is free, no more.
fn assert_idle(limit: &Limit) {
    assert_eq!(limit.inflight(), 0);
    assert_eq!(limit.limit(), 2);
    assert!(limit.acquire() && limit.acquire());
    assert!(!limit.acquire(), "a third slot in a limit of 2");
}

// ---- half-open probe slots --------------------------------------------------

/// A breaker that opens on its first failure for exactly 1 s, then lets
/// two probes through; one failed probe of the two reopens it.
fn probing_breaker() -> Breaker {
    probing_breaker_tripping("open")
}

/// [`probing_breaker`] with `trip = "{trip}"`.
fn probing_breaker_tripping(trip: &str) -> Breaker {
    let policy = Policy::from_toml(&format!(
        r#"
        [breaker]
        window = {{ kind = "count", size = 4 }}
        minimum_calls = 1
        failure_rate = 0.5
        open_for = "1s"
        open_backoff = {{ jitter = 0.0 }}
        half_open_probes = 2
        trip = "{trip}"
        "#
    ))
    .expect("the model's policy loads");
    let breaker = Breaker::new(&policy.breaker);
    let call = breaker.admit(0).expect("closed");
    assert_eq!(
        breaker.complete(call, true, 0),
        Some((BreakerState::Closed, BreakerState::Open))
    );
    breaker
}

/// Past the open period.
const PROBE_TIME: u64 = 2_000_000_000;

/// Admits at `PROBE_TIME` until refused; how many got in (at most 10).
fn admit_all(breaker: &Breaker) -> Vec<Ticket> {
    let mut tickets = Vec::new();
    while let Some(ticket) = breaker.admit(PROBE_TIME) {
        tickets.push(ticket);
        assert!(tickets.len() <= 10, "the probe slots never run out");
    }
    tickets
}

/// Three calls race for two probe slots, each giving its slot back
/// (cancelled): never more than two held at once, and afterwards exactly
/// two slots are free again, in the same half-open generation.
#[test]
fn exactly_half_open_probes_are_admitted_under_concurrent_admits_and_cancels() {
    check("probe slots admit/cancel", 3, || {
        let breaker = Arc::new(probing_breaker());
        let holders = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (breaker, holders) = (breaker.clone(), holders.clone());
                thread::spawn(move || {
                    let Some(ticket) = breaker.admit(PROBE_TIME) else {
                        return false;
                    };
                    let held = holders.fetch_add(1, AcqRel) + 1;
                    assert!(held <= 2, "{held} probes out of 2");
                    holders.fetch_sub(1, AcqRel);
                    breaker.cancel(ticket);
                    true
                })
            })
            .collect();
        let admitted = threads
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .filter(|&admitted| admitted)
            .count();
        // The first two admissions cannot both fail: someone opened the
        // half-open state and at most one other was refused.
        assert!(admitted >= 2, "only {admitted} probes admitted");
        assert_eq!(breaker.state(PROBE_TIME), BreakerState::HalfOpen);
        let again = admit_all(&breaker);
        assert_eq!(again.len(), 2, "cancelled probe slots are free again");
        // ... and they are of the live generation: two successes close it.
        let mut closed = 0;
        for ticket in again {
            if breaker.complete(ticket, false, PROBE_TIME)
                == Some((BreakerState::HalfOpen, BreakerState::Closed))
            {
                closed += 1;
            }
        }
        assert_eq!(closed, 1);
        assert_eq!(breaker.state(PROBE_TIME), BreakerState::Closed);
    });
}

/// Three calls race for the probes: one succeeds, one fails, one is
/// cancelled. At most one verdict leaves the half-open state; when it does
/// the state agrees with it and late outcomes (of the old generation) are
/// ignored; when it does not, the slots still free are exactly those no
/// kept probe holds.
#[test]
fn one_verdict_per_half_open_generation_and_stale_outcomes_are_ignored() {
    // (The classic verdict, `trip = "open"`: one failure of two planned
    // probes reopens whatever the other did.)
    check("probe verdicts and generations", 3, || {
        let breaker = Arc::new(probing_breaker());
        let verdicts = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = [Some(false), Some(true), None]
            .into_iter()
            .map(|fate| {
                let (breaker, verdicts) = (breaker.clone(), verdicts.clone());
                thread::spawn(move || {
                    let ticket = breaker.admit(PROBE_TIME)?;
                    match fate {
                        Some(failed) => {
                            let transition = breaker.complete(ticket, failed, PROBE_TIME);
                            if let Some((from, _)) = transition {
                                assert_eq!(from, BreakerState::HalfOpen);
                                verdicts.fetch_add(1, AcqRel);
                            }
                            Some((fate, ticket, transition.map(|(_, to)| to)))
                        }
                        None => {
                            breaker.cancel(ticket);
                            Some((fate, ticket, None))
                        }
                    }
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let verdicts = verdicts.load(AcqRel);
        assert!(
            verdicts <= 1,
            "{verdicts} verdicts in one half-open generation"
        );
        // The failing probe, if it got a slot, decides: one failure of two
        // planned probes already reaches the failure rate. Nothing else can
        // (one success of two cannot close it).
        let failing_probe = results
            .iter()
            .flatten()
            .any(|(fate, _, _)| *fate == Some(true));
        let kept = results
            .iter()
            .flatten()
            .filter(|(fate, _, _)| fate.is_some())
            .count();
        match results.iter().flatten().find_map(|(_, _, to)| *to) {
            Some(to) => {
                assert_eq!(to, BreakerState::Open);
                assert!(failing_probe);
                assert_eq!(breaker.state(PROBE_TIME), BreakerState::Open);
                // Late outcomes of the old generation change nothing.
                for (_, ticket, _) in results.iter().flatten() {
                    assert_eq!(breaker.complete(*ticket, true, PROBE_TIME), None);
                    breaker.cancel(*ticket);
                }
                assert_eq!(breaker.state(PROBE_TIME), BreakerState::Open);
                assert!(breaker.admit(PROBE_TIME).is_none());
            }
            None => {
                assert!(!failing_probe, "a failed probe gave no verdict");
                assert_eq!(breaker.state(PROBE_TIME), BreakerState::HalfOpen);
                // The slots no kept probe holds are free.
                assert_eq!(admit_all(&breaker).len(), 2 - kept);
            }
        }
    });
}

/// `trip = "throttle"`: two probes, one succeeding and one failing, race
/// each other and a third call that gives its slot back. A failing probe
/// back before any that went well reopens the breaker; otherwise the set,
/// once back, closes it. Whatever the interleaving: at most one verdict,
/// the state agrees with it, and two probes back always give one.
#[test]
fn throttling_probes_reopen_only_while_none_went_well() {
    // Interleavings in which the set closed the breaker (a classic one
    // never does here: one failure of two reopens it).
    static CLOSED: StdCounter = StdCounter::new(0);
    check("throttling probe verdicts", 3, || {
        let breaker = Arc::new(probing_breaker_tripping("throttle"));
        let threads: Vec<_> = [Some(false), Some(true), None]
            .into_iter()
            .map(|fate| {
                let breaker = breaker.clone();
                thread::spawn(move || {
                    let ticket = breaker.admit(PROBE_TIME)?;
                    let Some(failed) = fate else {
                        breaker.cancel(ticket);
                        return None;
                    };
                    let transition = breaker.complete(ticket, failed, PROBE_TIME);
                    Some((failed, transition.map(|(_, to)| to)))
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let back = results.iter().flatten().count();
        let verdicts: Vec<_> = results
            .iter()
            .flatten()
            .filter_map(|&(failed, to)| to.map(|to| (failed, to)))
            .collect();
        assert!(verdicts.len() <= 1, "{verdicts:?}");
        match verdicts.first() {
            Some(&(failed, BreakerState::Open)) => {
                // Only the failing probe reopens, and only as the first back.
                assert!(failed, "{results:?}");
                assert_eq!(breaker.state(PROBE_TIME), BreakerState::Open);
            }
            Some(&(_, to)) => {
                // The set came back with a probe gone well: it closes.
                assert_eq!(to, BreakerState::Closed);
                assert_eq!(back, 2, "{results:?}");
                assert_eq!(breaker.state(PROBE_TIME), BreakerState::Closed);
                CLOSED.fetch_add(1, Std);
            }
            None => {
                // No verdict: the set is not back, and what is back went
                // well (a failure alone, back first, would have reopened).
                assert!(back < 2, "{results:?}");
                assert!(
                    results.iter().flatten().all(|&(failed, _)| !failed),
                    "{results:?}"
                );
                assert_eq!(breaker.state(PROBE_TIME), BreakerState::HalfOpen);
            }
        }
    });
    assert!(CLOSED.load(Std) > 0, "no interleaving closed the breaker");
}

// ---- the waiting room -------------------------------------------------------

/// A gate with a limit of one and a room of `capacity`, on a clock that
/// stands still (waits never run out: only a wake-up can end one).
fn gate(capacity: u32) -> Gate {
    let _entered = paused().enter();
    let room = WaitingRoomPolicy {
        capacity,
        max_wait: Duration::from_secs(10),
        ..WaitingRoomPolicy::default()
    };
    Gate::new(fixed_limit(1), room, None, Clock::tokio())
}

/// Enters the gate and waits (blocking the loom thread) for a permit.
fn enter_and_wait(gate: &Gate) -> brownout::classify::Permit {
    match gate.enter().expect("the room has space") {
        Entry::Now(permit) => permit,
        Entry::Wait(waiter) => loom::future::block_on(poll_fn(|cx| gate.poll_waiter(&waiter, cx)))
            .expect("a waiter in a room whose wait never runs out is granted"),
    }
}

/// The slot is held; one call fails to get it and is seated while the
/// holder releases it concurrently. The seated call must be granted and
/// woken, whatever the interleaving.
#[test]
fn a_release_racing_a_seating_never_loses_the_wake_up() {
    check("room: seat vs release", 5, || {
        let _entered = paused().enter();
        let gate = Arc::new(gate(4));
        let held = gate.admit().expect("the first call gets the slot");
        let waiter = {
            let gate = gate.clone();
            thread::spawn(move || {
                enter_and_wait(&gate).record(Outcome::Success);
            })
        };
        let releaser = thread::spawn(move || held.record(Outcome::Success));
        releaser.join().unwrap();
        waiter.join().unwrap();
        assert_eq!(gate.inflight(), 0);
        assert_eq!(gate.waiting(), 0);
    });
}

/// Two calls are seated while the slot's holder gives it back: each is
/// woken in turn, the second by the first's release.
#[test]
fn two_waiters_are_each_woken_in_turn() {
    check("room: two waiters, one release", 2, || {
        let _entered = paused().enter();
        let gate = Arc::new(gate(4));
        let held = gate.admit().expect("the first call gets the slot");
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let gate = gate.clone();
                thread::spawn(move || enter_and_wait(&gate).record(Outcome::Success))
            })
            .collect();
        let releaser = thread::spawn(move || held.record(Outcome::Failure));
        releaser.join().unwrap();
        for waiter in waiters {
            waiter.join().unwrap();
        }
        assert_eq!(gate.inflight(), 0);
        assert_eq!(gate.waiting(), 0);
    });
}

/// Two calls wait for the one slot while its holder drops it (cancelled):
/// one waiter gives up after a single look (its future dropped), perhaps
/// with a grant in hand, which must pass to the other; the other must be
/// granted and woken.
#[test]
fn a_waiter_leaving_with_a_grant_passes_it_on() {
    check("room: leave vs grant", 3, || {
        let _entered = paused().enter();
        let gate = Arc::new(gate(4));
        let held = gate.admit().expect("the first call gets the slot");
        let quitter = {
            let gate = gate.clone();
            thread::spawn(move || match gate.enter().expect("the room has space") {
                Entry::Now(permit) => drop(permit),
                Entry::Wait(waiter) => {
                    let mut cx = Context::from_waker(Waker::noop());
                    match gate.poll_waiter(&waiter, &mut cx) {
                        Poll::Ready(permit) => drop(permit.expect("granted")),
                        Poll::Pending => gate.leave(&waiter),
                    }
                }
            })
        };
        let patient = {
            let gate = gate.clone();
            thread::spawn(move || drop(enter_and_wait(&gate)))
        };
        drop(held);
        quitter.join().unwrap();
        patient.join().unwrap();
        assert_eq!(gate.inflight(), 0);
        assert_eq!(gate.waiting(), 0);
    });
}
