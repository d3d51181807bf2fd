//! `capacity`: a limit that learns how many calls the back end can serve at
//! once, by testing it, rather than reading latency against a baseline.
//!
//! Latency against a baseline cannot tell "the back end got slower" from "a
//! queue is forming": both raise it. What tells them apart is how latency
//! and throughput respond when the concurrency changes. Below its capacity
//! a back end answers more calls a second when given more at once, at the
//! same latency; past it, more calls at once only wait longer, and fewer
//! wait less at the same throughput. By Little's law the concurrency a
//! saturated back end can use is its delivery rate times its unloaded
//! latency (TCP BBR's bandwidth-delay product): a back end four times
//! slower delivers a quarter of the calls at four times the latency, and
//! the product stays; one cut to a quarter of its slots delivers a quarter
//! at the same unloaded latency, and the product falls to a quarter.
//!
//! The learner works in rounds (one learning window, about one round trip)
//! grouped in steps of two: a change of the limit shows in the calls that
//! complete a round trip later, so the first round of a step lets the
//! change take effect and the second measures it.
//!
//! - **Demand below the limit**: the limit stays well above what callers
//!   use (twice the most in flight at once), so a healthy back end never
//!   sheds, and the unloaded latency is learned. (Not while over a tenth
//!   of the calls are abandoned at their callers' deadlines: then the
//!   calls in flight measure the callers' patience, and the limit comes
//!   down towards what the succeeding calls use, by at most half a round.)
//! - **Demand presses on the limit, latency at the unloaded level**: there
//!   is headroom; the next step tries a fifth more (doubling while the
//!   limit has never met a queue: TCP slow start; in slow start a doubling
//!   that bought throughput in proportion is headroom whatever latency
//!   says). If latency holds there, the limit keeps it.
//! - **Latency above the unloaded level**: a queue, or a slower back end.
//!   The next step tests which: the limit drops to what the back end
//!   delivers times the unloaded latency, and at least a quarter below
//!   the calls in flight (a queue inside the back end keeps them far
//!   below a limit that never binds, and a step down to a limit they do
//!   not reach would test nothing). If latency falls (or the back end
//!   delivers as many calls a second at the lower limit, where the step
//!   is large enough for two rounds to tell), it was a queue and the new
//!   limit is the back end's capacity (a capacity cut is learned in one
//!   step). If it does not, the back end itself is slower:
//!   the unloaded latency is relearned and the limit goes back to where it
//!   was (a slowdown costs one step at a lower limit, and the limit holds).
//! - **Overload** (over a tenth of a round's calls failing, by more than
//!   the round's chance: errors, 5xx, timeouts, as the classifier says):
//!   the next step tests a lower limit; if failures fall with the load
//!   (by more than two rounds' chance) the back end was overloaded and
//!   the lower limit stays, otherwise they are left to the breaker, and
//!   the limit climbs on the calls served a second (`blind`: latency
//!   says nothing while a timeout cuts the slow calls short).
//!   Latency is not learned from calls that failure cut short. Failures
//!   that a step up brought send the limit back to where it was before
//!   it (which served without them), not to a test below it (the calls
//!   admitted above it, failing as they finish, are not judged against
//!   it: a round or two); and as each
//!   such step cost calls, the next one waits longer (twice as long for
//!   each in a row, up to 16 rounds).
//!
//! "Above the unloaded level" means by more than three times the noise of
//! a round's mean latency, which the learner estimates per call (a round
//! of 16 calls is twice as noisy as one of 64 from the same back end), and
//! a step down that answers more calls a second than the limit above it
//! did shows that limit held nothing back (a lull, or a back end that got
//! faster in between): the limit goes back.
//!
//! After an outage the gate asks for [`recovered`](Capacity::recovered):
//! the limit goes back to the last one that served well, rather than
//! regrowing from the minimum.

use super::algorithm::WindowSample;

/// What the current step is testing.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    /// Demand was below the limit at the last round.
    Idle,
    /// Holding the estimate.
    Cruise,
    /// Trying `to` (above `from`, where the back end delivered `rate`
    /// calls a second): does latency hold there, or does throughput grow
    /// with it?
    Up { from: f64, to: f64, rate: f64 },
    /// Trying `to` (below `from`) after latency rose to `rtt` at `from`,
    /// where the back end delivered `rate` calls a second and answered
    /// `answered` (served, failed or abandoned): does it fall?
    Down {
        from: f64,
        to: f64,
        rtt: f64,
        rate: f64,
        answered: f64,
    },
    /// Trying `to` (below `from`) after a share `share` of the `calls`
    /// of a round failed at `from`, where the back end delivered `rate`
    /// calls a second: do failures fall with the load?
    Unload {
        from: f64,
        to: f64,
        share: f64,
        calls: u32,
        rate: f64,
        /// Calls completed and failed in the rounds that ran at `to`.
        at_to: (u32, u32),
    },
}

/// The `capacity` learner's state.
#[derive(Debug, Clone)]
pub(crate) struct Capacity {
    step: Step,
    /// Rounds into the current step (it is judged at its second).
    rounds: u32,
    /// Rounds in a row that ran entirely at the step's limit.
    settled: u32,
    /// The back end's unloaded latency as last seen, seconds (0: unknown).
    unloaded: f64,
    /// The lowest unloaded latency seen, replaced once a step has shown
    /// the back end slower: a step down aims at what the back end
    /// would need if it were as fast as that, so that it gets below the
    /// knee even when the last unloaded latency came from a slower time.
    floor: f64,
    /// How much one call's latency varies, relative (smoothed), as the
    /// round means show it: the mean of a round of `n` calls is about
    /// `spread / √n` off. Kept per call rather than per round because a
    /// round's size follows the limit (about one round trip of calls): a
    /// round of 15 calls after the limit fell is twice as noisy as one of
    /// 64 from the same back end.
    spread: f64,
    /// The last round's mean latency, for the spread estimate.
    last_rtt: f64,
    /// The last round's calls: the spread estimate's and the queue
    /// tolerance's `n`.
    last_samples: u32,
    /// The limit the steps turn around.
    estimate: f64,
    /// Calls in flight on average as a share of the limit while demand
    /// presses on it (smoothed): below 1 when the less important classes
    /// may use only part of the limit, so the limit that puts a given
    /// number of calls in flight is that number over this share.
    utilization: f64,
    /// Whether a step up has ever met a queue (slow start doubles until
    /// then).
    met_queue: bool,
    /// Steps up in a row that found no queue: from the third on the steps
    /// are of half the limit (a back end that came back bigger is found
    /// fast).
    streak: u32,
    /// Steps up in a row that met failures and went back.
    missed: u32,
    /// Judgements left to hold the estimate before the next step up. A
    /// step up that only met a queue cost a little latency, and the next
    /// may follow at once; one that met failures (a back end with a
    /// timeout near its latency fails calls that queue) cost calls, and
    /// probing again at once, step after step, would cost them all the
    /// time: each such miss in a row doubles the wait (TCP and BBR probe
    /// for more only now and then, too).
    hold: u32,
    /// Rounds to wait, after a step up met failures and the limit went
    /// back, for the calls admitted above it to finish: failures among
    /// them belong to the step, not to the limit gone back to, and
    /// judging them as overload there would cut the limit for a test
    /// below one that served without them. `(rounds at the limit still
    /// to see, rounds waited)`; the wait ends after at most
    /// `MAX_STEP_ROUNDS`, so a back end that fails at the old limit too
    /// is judged a few rounds later.
    after_miss: Option<(u32, u32)>,
    /// The last limit that served without overload: where the limit goes
    /// back to after an outage.
    good: f64,
    /// Rounds left during which failures are left to the breaker: a step
    /// down showed they do not fall with the load.
    load_blind: u32,
    /// The lowest unloaded latency ever learned (0: none yet): what the
    /// back end is assumed to be once it is back from a long outage.
    fastest: f64,
    /// The climb on calls served while failures are left to the breaker.
    blind: blind::Blind,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            step: Step::Idle,
            rounds: 0,
            settled: 0,
            unloaded: 0.0,
            floor: 0.0,
            // Assume noisy rounds until they show otherwise: a queue
            // mistaken for noise costs a round trip of a little queue, noise
            // mistaken for a queue costs a step down.
            spread: Self::FIRST_SPREAD,
            last_rtt: 0.0,
            last_samples: 0,
            estimate: 0.0,
            utilization: 1.0,
            met_queue: false,
            streak: 0,
            missed: 0,
            hold: 0,
            after_miss: None,
            good: 0.0,
            load_blind: 0,
            fastest: 0.0,
            blind: blind::Blind::default(),
        }
    }
}

impl Capacity {
    /// The latency sum's unit, seconds: a round's mean below it says the
    /// calls were faster than can be measured.
    const RESOLUTION: f64 = super::state::RTT_UNIT as f64 / 1e9;
    /// Headroom over the most calls in flight while demand is below the
    /// limit.
    const HEADROOM: f64 = 2.0;
    /// The calls' spread assumed before any is measured: a round of 64
    /// calls is taken to be a fifth off.
    const FIRST_SPREAD: f64 = 1.6;
    /// A step up, once a queue has been met.
    const PROBE: f64 = 1.2;
    /// Share of failed calls in a round that signals overload.
    const OVERLOAD: f64 = 0.1;
    /// The most of a limit shown to overload the back end that a test
    /// below it may come back to.
    const PAST_OVERLOAD: f64 = 0.8;
    /// Rounds during which failures shown not to depend on the load are
    /// left to the breaker (twice as many after each such test in a row,
    /// up to eight times).
    const LOAD_BLIND_ROUNDS: u32 = 20;
    /// Rounds in a step: one to take effect, one to measure.
    const STEP_ROUNDS: u32 = 2;
    /// Most rounds a step waits for calls above its limit to drain.
    const MAX_STEP_ROUNDS: u32 = 6;

    /// Latency within this share above the unloaded latency is no queue:
    /// three times the noise of the last round's mean, at least a tenth.
    fn tolerance(&self) -> f64 {
        let n = f64::from(self.last_samples.max(1));
        (3.0 * self.spread / n.sqrt()).clamp(0.1, 0.6)
    }

    fn queued(&self, rtt: f64) -> bool {
        self.unloaded > 0.0 && rtt > self.unloaded * (1.0 + self.tolerance())
    }

    /// The next limit after `window`.
    pub(crate) fn update(&mut self, limit: f64, window: &WindowSample) -> f64 {
        let next = self.update_inner(limit, window);
        if self.unloaded > 0.0 && (self.fastest == 0.0 || self.unloaded < self.fastest) {
            self.fastest = self.unloaded;
        }
        tracing::trace!(
            limit,
            next,
            samples = window.samples,
            rtt = window.rtt,
            duration = window.duration,
            failed = window.dropped,
            max_inflight = window.max_inflight,
            blocked = window.blocked,
            step = ?self.step,
            estimate = self.estimate,
            unloaded = self.unloaded,
            spread = self.spread,
            tolerance = self.tolerance(),
            "brownout: capacity round"
        );
        next
    }

    fn update_inner(&mut self, limit: f64, window: &WindowSample) -> f64 {
        if window.samples == 0 || window.duration <= 0.0 {
            return limit;
        }
        let failed = f64::from(window.dropped);
        let completed = f64::from(window.samples);
        let share = failed / completed;
        // Successful completions a second: failed and abandoned calls
        // delivered nothing.
        let rate = (completed - failed - f64::from(window.censored)).max(0.0) / window.duration;
        if let Step::Unload {
            from,
            to,
            share: before,
            calls,
            rate: delivered,
            at_to,
        } = self.step
        {
            // (At `limit`, where the limit's minimum kept it above `to`.)
            let to = to.max(limit);
            return self.unload_round(window, (from, to, delivered), (before, calls), at_to, rate);
        }
        // Over a tenth failing, by more than a round's chance: a back end
        // that fails a twentieth of its calls whatever the load (a tail of
        // service times past a timeout) shows a tenth in some small rounds,
        // and each false alarm halves the limit for a test.
        let chance = (Self::OVERLOAD * (1.0 - Self::OVERLOAD) / completed).sqrt();
        // Over a tenth of the calls abandoned at their callers' deadlines
        // (by more than the round's chance): calls take longer than callers
        // wait, and the calls in flight are bounded by their patience, not
        // by their demand.
        let callers_leave = f64::from(window.censored) / completed > Self::OVERLOAD + chance;
        let step_failures = self.after_missed_step(limit, window);
        if share > Self::OVERLOAD + chance {
            if step_failures {
                // Failures of the step that went back: nothing to learn
                // of the limit, nor of latency they cut short.
                return limit;
            }
            if self.load_blind > 0 {
                // Failures that do not depend on the load: the breaker's
                // business; what the back end serves still says whether
                // it has room for more (`blind`).
                return self.blind_round(limit, window, share, rate);
            }
            if let Step::Up { from, .. } = self.step {
                // The step up brought the failures (whether or not they
                // have been seen to depend on the load): the limit below
                // it was judged to serve without them, so it is where to
                // go back to. A test at half of it would cost half the
                // back end for a round trip to learn what the step already
                // showed. (If the back end changed meanwhile, failures at
                // that limit start a test of their own a round later.)
                self.step = Step::Cruise;
                self.estimate = from;
                self.met_queue = true;
                self.streak = 0;
                self.missed_up();
                self.after_miss = Some((Self::STEP_ROUNDS, 0));
                self.rounds = 0;
                self.settled = 0;
                return from;
            }
            return self.overloaded(limit, window, share, rate);
        }
        self.load_blind = self.load_blind.saturating_sub(1);
        let rtt = window.rtt;
        if rtt < Self::RESOLUTION {
            // Faster than the latency sum's unit (64 µs): most calls
            // rounded to nothing, and the mean is the few that did not (a
            // thread descheduled mid-call, in an in-process service that
            // answers in a microsecond): no queue shows, and no latency is
            // learned from it (an unloaded latency of "nothing" would make
            // every later round look queued; one of a few stray calls would
            // read every other stray call as a queue). Keep the limit ahead
            // of demand: double while demand presses on it.
            let binds = window.blocked > 0 || f64::from(window.max_inflight) >= limit.floor();
            return if binds {
                limit * 2.0
            } else {
                limit.max(f64::from(window.max_inflight) * Self::HEADROOM)
            };
        }
        if self.last_rtt > 0.0 && window.samples >= 8 && self.last_samples >= 8 {
            let change = ((rtt - self.last_rtt) / self.last_rtt).abs();
            // The difference of two round means of n1 and n2 calls varies
            // by spread × √(1/n1 + 1/n2).
            let scale =
                (1.0 / f64::from(self.last_samples) + 1.0 / f64::from(window.samples)).sqrt();
            // A jump far past the spread may be a shift (a step, a slower
            // back end) rather than noise: it counts only up to twice the
            // spread, so that one shift moves the estimate a little while a
            // back end whose rounds keep jumping (heavy-tailed service
            // times) is learned as noisy within a few rounds.
            let seen = (change / scale).min(2.0 * self.spread.max(0.15));
            self.spread += (seen - self.spread) * 0.1;
        }
        self.last_rtt = rtt;
        self.last_samples = window.samples;
        let binds = window.blocked > 0 || f64::from(window.max_inflight) >= limit.floor();
        if !binds && !self.queued(rtt) {
            if callers_leave {
                // Not demand below the limit. Growing the limit with the
                // calls in flight would let in more calls that callers
                // leave, and an abandoned call's latency is only "at
                // least this long": no unloaded latency to learn. The
                // calls that help are the ones that succeed (Little's law:
                // their rate times the round's latency); a back end that
                // keeps working on abandoned calls queues far past its
                // slots while the limit lets in more than that. Come down
                // towards it, by at most half a round.
                let useful = rate * window.rtt / self.utilization;
                return limit.min(useful.max(limit * 0.5)).max(1.0);
            }
            return self.idle(limit, window);
        }
        if self.step == Step::Idle {
            self.step = Step::Cruise;
            self.rounds = 0;
            self.estimate = limit;
        }
        let inflight = rate * rtt;
        if self.settled > 0 || matches!(self.step, Step::Cruise) {
            let share = (inflight / limit).clamp(0.3, 1.0);
            self.utilization += (share - self.utilization) * 0.2;
        }
        self.rounds += 1;
        // A step is judged on a round that ran entirely at its limit: after
        // a drop, calls admitted before it must first drain.
        // (Its calls were admitted a round trip before they complete, so
        // two such rounds in a row.)
        self.settled = match self.step {
            // (`limit`, not `to`, where the limit's minimum kept it above.)
            Step::Down { to, .. }
                if f64::from(window.max_inflight) > to.max(limit).ceil() + 1.0 =>
            {
                0
            }
            _ => self.settled + 1,
        };
        // A step up is judged one round later still: its first rounds
        // complete calls admitted while the in-flight count was climbing,
        // which would hide the queue it builds.
        let needed = match self.step {
            Step::Up { .. } => Self::STEP_ROUNDS + 1,
            _ => Self::STEP_ROUNDS,
        };
        if self.settled < needed && self.rounds < Self::MAX_STEP_ROUNDS {
            return self.current();
        }
        self.rounds = 0;
        self.settled = 0;
        let next = self.judge(rtt, rate, completed / window.duration, binds);
        if window.dropped == 0 && !matches!(self.step, Step::Down { .. }) {
            self.good = self.estimate;
        }
        next
    }
}

mod blind;
mod steps;
#[cfg(test)]
mod tests;
