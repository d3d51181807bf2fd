//! The `capacity` learner while failures do not depend on the load: a
//! climb on what the back end serves.
//!
//! An unload test that showed failures the same at a lower limit (a back
//! end eight times slower behind a timeout near its new latency fails
//! half its calls whatever the load) leaves them to the breaker. Latency
//! says nothing then: the calls that would show a queue are the ones the
//! timeout cuts short. What still tells "more room" from "too much" is
//! the rate of calls served: below the back end's slots, a fifth more
//! in flight serves a fifth more; past them, the calls added only queue,
//! and the queue pushes more of them past the timeout, so fewer are
//! served. (Calls answered, served or failed, would mislead: the timeout
//! answers every queued call by its deadline, so answers grow with any
//! limit.) So the limit climbs by steps while a step serves more by
//! clearly more than its rounds' chance, and goes back when it does not,
//! trying again later and later (as a step up that met failures does).
//!
//! The mode ends when its rounds run out (an unload test looks again, and
//! each test in a row that finds the same waits twice as long), or when a
//! round fails clearly more than the test saw (the back end changed: test
//! at once). A round that fails no more than noise meanwhile is judged by
//! the usual steps, and counts down the mode's rounds too.

use super::{Capacity, Step};
use crate::core::limit::algorithm::WindowSample;

/// Calls served and seconds, summed over rounds: a rate with its count.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Served {
    calls: f64,
    secs: f64,
    rounds: u32,
}

impl Served {
    fn add(&mut self, window: &WindowSample) {
        let served = window
            .samples
            .saturating_sub(window.dropped)
            .saturating_sub(window.censored);
        self.calls += f64::from(served);
        self.secs += window.duration;
        self.rounds += 1;
    }

    fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.calls / self.secs
        } else {
            0.0
        }
    }
}

/// What the climb is doing, beside the learner's `step`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Blind {
    /// Served at the estimate since it was last set (the step's base).
    base: Served,
    /// Served during the step up under way, after its first round.
    step: Served,
    /// The failure share the unload test saw at both limits.
    share: f64,
    /// Unload tests in a row that found failures independent of the load.
    tests: u32,
    /// The next round is the first at a new limit: not measured.
    settle: bool,
}

impl Capacity {
    /// A step of the climb: three tenths more.
    const CLIMB: f64 = 1.3;
    /// Most rounds a step of the climb is measured (after one to take
    /// effect): the calls past the back end's slots it may cost.
    const CLIMB_ROUNDS: u32 = 8;
    /// Rounds at the estimate measured before a step up, at least (twice
    /// as many after each step in a row that served no more), and at most
    /// (four times that: a back end that serves too few calls to tell a
    /// step's gain from chance is not climbed).
    const BASE_ROUNDS: u32 = 3;

    /// The variance of a served rate's relative error over `served`:
    /// given the calls answered, the served ones vary as a binomial
    /// (relative variance: the failure share over the count), and the
    /// answered count itself a little (a tenth, for a back end at its
    /// slots).
    fn served_noise(&self, served: Served) -> f64 {
        (self.blind.share + 0.1) / served.calls.max(1.0)
    }

    /// The variance within which a step's gain of `CLIMB` is told from
    /// none: half the gain at two standard errors.
    fn climb_budget() -> f64 {
        let half = (Self::CLIMB - 1.0) / 2.0;
        (half / 2.0).powi(2)
    }

    /// An unload test found failures the same at both limits (shares of
    /// `share` at most): the climb starts, for longer after each such test
    /// in a row.
    pub(super) fn start_blind(&mut self, share: f64) {
        self.blind.tests = (self.blind.tests + 1).min(4);
        self.blind.share = share;
        self.blind.base = Served::default();
        self.blind.settle = true;
        self.load_blind = Self::LOAD_BLIND_ROUNDS << (self.blind.tests - 1);
    }

    /// An unload test found overload: the next that finds none waits the
    /// shortest time again.
    pub(super) fn end_blind(&mut self) {
        self.blind.tests = 0;
        self.load_blind = 0;
    }

    /// A round that failed more than noise while the climb is on.
    pub(super) fn blind_round(
        &mut self,
        limit: f64,
        window: &WindowSample,
        share: f64,
        rate: f64,
    ) -> f64 {
        self.load_blind -= 1;
        if let Step::Up { from, to, rate: _ } = self.step {
            return self.climb_round(window, from, to);
        }
        // Failing clearly more than the test saw: the back end changed
        // (fewer slots, a queue): test again now.
        let calls = f64::from(window.samples);
        let seen = self.blind.share;
        let chance = (seen * (1.0 - seen) / calls).sqrt();
        if share > seen + 3.0 * chance + Self::OVERLOAD {
            self.load_blind = 0;
            return self.overloaded(limit, window, share, rate);
        }
        // (Followed slowly: a drift is for the next test to judge.)
        self.blind.share += (share - seen) * 0.1;
        self.step = Step::Cruise;
        let binds = window.blocked > 0 || f64::from(window.max_inflight) >= limit.floor();
        if !binds || std::mem::take(&mut self.blind.settle) {
            // Demand below the limit: no climb to judge. (Or the first
            // round at a new limit: its calls were admitted at another.)
            self.blind.base = Served::default();
            return self.estimate;
        }
        self.blind.base.add(window);
        // Each step in a row that served no more doubles the wait before
        // the next (and the base it is judged against grows as precise).
        let least = Self::BASE_ROUNDS << self.missed;
        let base = self.blind.base;
        if base.rounds < least {
            return self.estimate;
        }
        if self.served_noise(base) > Self::climb_budget() / 3.0 {
            if base.rounds >= least * 4 {
                // Too few calls served to tell a step's gain from chance.
                self.blind.base = Served::default();
            }
            return self.estimate;
        }
        let from = self.estimate;
        let to = from * Self::CLIMB;
        self.step = Step::Up {
            from,
            to,
            rate: base.rate(),
        };
        self.blind.step = Served::default();
        self.rounds = 0;
        to
    }

    /// A round of a step up of the climb.
    fn climb_round(&mut self, window: &WindowSample, from: f64, to: f64) -> f64 {
        self.rounds += 1;
        if self.rounds == 1 {
            // The step takes effect: its calls complete a round trip later.
            return to;
        }
        self.blind.step.add(window);
        let (base, step) = (self.blind.base, self.blind.step);
        let noise = self.served_noise(base) + self.served_noise(step);
        if noise > Self::climb_budget() && self.rounds <= Self::CLIMB_ROUNDS {
            return to;
        }
        self.rounds = 0;
        self.step = Step::Cruise;
        self.blind.base = Served::default();
        self.blind.settle = true;
        // The step must serve at least half the gain it offered, and by
        // more than twice the noise of the two rates' ratio.
        let gain = step.rate() / base.rate().max(f64::MIN_POSITIVE) - 1.0;
        let wanted = (0.5 * (to / from - 1.0)).max(2.0 * noise.sqrt());
        if gain > wanted {
            self.estimate = to;
            self.missed = 0;
            self.good = self.good.max(to);
        } else {
            self.estimate = from;
            self.missed = (self.missed + 1).min(4);
        }
        self.estimate
    }
}
