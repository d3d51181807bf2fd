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
//!   the lower limit stays, otherwise they are left to the breaker.
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
    /// Rounds during which failures shown not to depend on the load are
    /// left to the breaker.
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
        } = self.step
        {
            return self.unload_round(window, (from, to, delivered), (before, calls), share, rate);
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
            if self.load_blind > 0 {
                // Failures that do not depend on the load: the breaker's
                // business; latencies they cut short teach nothing.
                self.load_blind -= 1;
                return limit;
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
            Step::Down { to, .. } if f64::from(window.max_inflight) > to.ceil() + 1.0 => 0,
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

    /// Whether this round's failures may still be those of a step up that
    /// met failures (calls admitted above the limit gone back to, or
    /// completing a round trip after it): the wait of `after_miss`.
    fn after_missed_step(&mut self, limit: f64, window: &WindowSample) -> bool {
        let Some((left, waited)) = self.after_miss else {
            return false;
        };
        let at_limit = f64::from(window.max_inflight) <= limit.ceil() + 1.0;
        let left = if at_limit { left - 1 } else { left };
        let waited = waited + 1;
        self.after_miss = (left > 0 && waited < Self::MAX_STEP_ROUNDS).then_some((left, waited));
        true
    }

    /// A step up met failures: wait before the next, the longer the more
    /// steps in a row have (1, 2, 4, then 8 judgements: up to 16 rounds).
    fn missed_up(&mut self) {
        self.missed = (self.missed + 1).min(4);
        self.hold = 1 << (self.missed - 1);
    }

    /// The limit the current step runs at.
    fn current(&self) -> f64 {
        match self.step {
            Step::Up { to, .. } | Step::Down { to, .. } | Step::Unload { to, .. } => to,
            Step::Idle | Step::Cruise => self.estimate,
        }
    }

    /// Over a tenth of the round's calls failed: the back end says "too
    /// much" (errors, 503s, timeouts), or it is failing whatever the load.
    /// Step down to what it delivered times its fastest unloaded latency
    /// (well under its capacity if the failures are overload) and see
    /// whether failures fall.
    fn overloaded(&mut self, limit: f64, window: &WindowSample, share: f64, rate: f64) -> f64 {
        let from = match self.step {
            Step::Up { from, .. } | Step::Down { from, .. } => from,
            _ => limit,
        };
        let floor = if self.floor > 0.0 {
            self.floor
        } else {
            self.unloaded
        };
        let to = (rate * floor / self.utilization)
            .clamp(from * 0.1, from * 0.5)
            .max(1.0);
        if self.unloaded > 0.0 && window.rtt > self.unloaded * 2.0 {
            // Slow failures (timeouts, a queue): the limit that led here is
            // no limit to come back to after an outage.
            self.good = self.good.min(to.max(from * 0.5));
        }
        self.step = Step::Unload {
            from,
            to,
            share,
            calls: window.samples,
            rate,
        };
        self.rounds = 0;
        self.settled = 0;
        to
    }

    /// A round of an [`Step::Unload`] test.
    fn unload_round(
        &mut self,
        window: &WindowSample,
        (from, to, delivered): (f64, f64, f64),
        (before, calls): (f64, u32),
        share: f64,
        rate: f64,
    ) -> f64 {
        self.rounds += 1;
        self.settled = if f64::from(window.max_inflight) > to.ceil() + 1.0 {
            0
        } else {
            self.settled + 1
        };
        if self.settled < Self::STEP_ROUNDS && self.rounds < Self::MAX_STEP_ROUNDS {
            return to;
        }
        self.rounds = 0;
        self.settled = 0;
        self.step = Step::Cruise;
        self.met_queue = true;
        // Overload shows as failures that fall with the load: to at most
        // half (or a tenth), and by more than two rounds' chance (the
        // standard error of the difference of two shares), so that a share
        // that is the same at both loads is not read as falling because
        // the rounds were small.
        let pooled = (before * f64::from(calls) + share * f64::from(window.samples))
            / f64::from(calls + window.samples);
        let chance =
            (pooled * (1.0 - pooled) * (1.0 / f64::from(calls) + 1.0 / f64::from(window.samples)))
                .sqrt();
        let fell = share <= Self::OVERLOAD.max(before * 0.5) && before - share > 2.0 * chance;
        if fell {
            // Failures fell with the load: it was overload. What the back
            // end delivered at the higher limit, at the latency it shows
            // at the lower (Little's law, as a step down reads it), is what
            // it can serve: the lower limit's own delivery is capped by
            // that limit, and would keep a test that went too far too low
            // (a back end that slowed down times out the calls it had
            // already started, which looks like overload for a round).
            let serves = if window.rtt > 0.0 {
                delivered.max(rate) * window.rtt / self.utilization
            } else {
                to
            };
            self.estimate = serves.clamp(to, from);
            if window.rtt > 0.0 {
                self.unloaded = window.rtt;
            }
            self.good = self.good.min(self.estimate.max(self.good * 0.5));
        } else {
            // Failures do not depend on the load: go back, and leave them
            // to the breaker for a while.
            self.estimate = from;
            self.good = self.good.max(from);
            self.load_blind = Self::LOAD_BLIND_ROUNDS;
        }
        self.estimate
    }

    /// Demand is below the limit and latency shows no queue: keep the
    /// limit ahead of demand, and learn the unloaded latency.
    fn idle(&mut self, limit: f64, window: &WindowSample) -> f64 {
        self.step = Step::Idle;
        self.rounds = 0;
        self.settled = 0;
        self.unloaded = if self.unloaded == 0.0 {
            window.rtt
        } else {
            self.unloaded + (window.rtt - self.unloaded) * 0.2
        };
        if self.floor == 0.0 || self.unloaded < self.floor {
            self.floor = self.unloaded;
        }
        let next = limit.max(f64::from(window.max_inflight) * Self::HEADROOM);
        if window.dropped == 0 {
            self.good = next;
        }
        next
    }

    /// The end of a step: what it showed, and the next step.
    fn judge(&mut self, rtt: f64, rate: f64, answered: f64, binds: bool) -> f64 {
        if self.unloaded == 0.0 {
            self.unloaded = rtt;
        }
        if self.floor == 0.0 || self.unloaded < self.floor {
            self.floor = self.unloaded;
        }
        match self.step {
            Step::Down {
                from,
                to,
                rtt: before,
                rate: delivered,
                answered: calls,
            } => {
                let n = f64::from(self.last_samples.max(1));
                if answered > calls * (1.0 + 3.0 / n.sqrt()).max(1.3) {
                    // More calls answered at the lower limit than at the
                    // higher, by more than a round's chance: the higher
                    // limit was not what held the back end back. Demand
                    // was below it (a round that spanned a lull), or the
                    // back end changed in between (back from a slow spell).
                    // No queue of ours shows in that: go back, and take the
                    // back end as it is now. (Calls answered, not served: a
                    // queue whose calls time out at their deadlines also
                    // serves more at the lower limit, but it answers no
                    // more.)
                    self.unloaded = rtt;
                    self.floor = self.floor.min(rtt);
                    self.estimate = from;
                    self.step = Step::Cruise;
                    return self.estimate;
                }
                // What the back end delivered at the higher limit, at the
                // latency it shows now, is the concurrency it can serve
                // (Little's law): a quarter of the slots, or the same slots
                // at a quarter of the speed. (The latency measured at the
                // higher limit is not used for it: its calls were admitted
                // a round trip before, at another limit.)
                let serves = (delivered * rtt / self.utilization).clamp(to, from);
                // Throughput that held at the lower limit says the same
                // from the other side, even while latency falls slowly (the
                // calls that finish in the round were admitted above it):
                // the calls the step kept out were a queue, where a back
                // end that got slower, with room to spare, delivers less
                // in proportion. It counts only where demand pressed on
                // the lower limit (below it, throughput is the callers'
                // at any limit) and where the step was large enough for
                // two rounds to tell "held" from "fell in proportion"
                // (three times the noise of the difference of two round
                // counts): small rounds leave it to latency.
                let drop = 1.0 - to / from;
                let noise = (2.0 / f64::from(self.last_samples.max(1))).sqrt();
                let held = binds && drop > 3.0 * noise && rate >= delivered * (1.0 - drop / 2.0);
                self.estimate = if rtt < before / (1.0 + self.tolerance()) {
                    // Latency fell with the limit: there was a queue. The
                    // unloaded latency is at most what shows now (this
                    // limit may still hold some queue: the next step looks
                    // again).
                    self.unloaded = self.unloaded.min(rtt);
                    serves
                } else if held {
                    // A queue, and nothing new of the unloaded latency:
                    // the lower limit served as much, and its latency is
                    // still the queue's, which Little's law would read as
                    // the back end's own and keep: stay at the lower
                    // limit, and the next round looks again.
                    to
                } else {
                    // Latency did not fall: the back end itself is slower.
                    self.unloaded = rtt;
                    self.floor = rtt;
                    serves
                };
                self.met_queue = true;
                self.step = Step::Cruise;
                self.estimate
            }
            Step::Up {
                from,
                to,
                rate: before,
            } => {
                // A queue raises latency and adds no throughput. Latency
                // alone can mislead in slow start: while the calls of a
                // heavy-tailed back end are still coming in after a cold
                // start, each round sees longer ones than the last. So a
                // doubling that also delivered at least half again as many
                // calls a second found no queue, whatever latency says.
                // (Later steps are too small for a round's throughput to
                // tell them from noise.)
                let grew = !self.met_queue && rate >= before * (1.0 + 0.5 * (to / from - 1.0));
                if self.queued(rtt) && !grew {
                    // More in flight only queued: stay below.
                    self.met_queue = true;
                    self.streak = 0;
                    self.estimate = from;
                } else {
                    self.streak += 1;
                    self.missed = 0;
                    self.estimate = to;
                    self.unloaded = if self.queued(rtt) {
                        // Throughput grew at this latency: it is no queue,
                        // and the baseline was learned too low.
                        rtt
                    } else {
                        self.unloaded.min(rtt).max(self.unloaded * 0.9)
                    };
                    if !self.met_queue {
                        // Slow start: no queue met yet, double again at once.
                        let to = self.estimate * 2.0;
                        self.step = Step::Up {
                            from: self.estimate,
                            to,
                            rate,
                        };
                        return to;
                    }
                }
                self.step = Step::Cruise;
                self.estimate
            }
            // (An unload test is judged in `unload_round`.)
            Step::Idle | Step::Cruise | Step::Unload { .. } => {
                let from = self.estimate;
                if self.queued(rtt) {
                    // A queue or a slower back end: test with the limit
                    // the back end would need if it were a queue (at
                    // least a quarter below what is in flight, so that
                    // the test shows something: a limit far above the
                    // calls in flight, which a queue inside the back end
                    // never lets reach it, would test nothing, and
                    // latency that did not fall there would be read as a
                    // slower back end).
                    self.streak = 0;
                    // (Calls in flight on average, by Little's law, over the share
                    // of the limit they use.)
                    let busy = (answered * rtt / self.utilization).min(from);
                    let to = (rate * self.floor.min(self.unloaded) / self.utilization)
                        .min(busy * 0.75)
                        .max(from * 0.1)
                        .max(1.0);
                    self.step = Step::Down {
                        from,
                        to,
                        rtt,
                        rate,
                        answered,
                    };
                    to
                } else if self.hold > 0 {
                    // Headroom, but the last steps up found none: wait.
                    self.hold -= 1;
                    self.step = Step::Cruise;
                    from
                } else {
                    // Headroom: try more.
                    let gain = if !self.met_queue {
                        2.0
                    } else if self.streak >= 3 {
                        1.5
                    } else {
                        Self::PROBE
                    };
                    let to = from * gain;
                    self.step = Step::Up { from, to, rate };
                    to
                }
            }
        }
    }

    /// The back end is back after an outage (the breaker closed, a
    /// maintenance window ended): the limit to start again from, the last
    /// one that served well if higher than `limit`.
    ///
    /// After a `long` outage (over a minute: a restart, a redeploy, a
    /// resize may have happened) the unloaded latency learned before it
    /// says little about the back end that came back: it is assumed as
    /// fast as it has ever been. If it is slower now, the first round that
    /// presses on the limit shows latency above that and a step down tells
    /// a queue from a slower back end, as ever; a baseline kept from a slow
    /// spell before the outage would instead read a queue as the back
    /// end's own latency. After a short one (a flap, a breaker that opened
    /// for seconds) the back end is the same and keeps its baseline.
    pub(crate) fn recovered(&mut self, limit: f64, long: bool) -> f64 {
        // (A test under way is abandoned: the outage cut it short.)
        self.step = Step::Idle;
        // What the last steps up found says little of the back end now.
        self.missed = 0;
        self.hold = 0;
        if long && self.fastest > 0.0 {
            self.unloaded = self.fastest;
            self.floor = self.fastest;
        }
        self.rounds = 0;
        self.settled = 0;
        limit.max(self.good)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle_round(rtt: f64) -> WindowSample {
        WindowSample {
            samples: 40,
            rtt,
            duration: rtt,
            max_inflight: 10,
            ..WindowSample::default()
        }
    }

    #[test]
    fn a_long_outage_forgets_a_slow_spells_baseline_and_a_short_one_keeps_it() {
        let mut capacity = Capacity::default();
        // Unloaded at 400 ms, then a slow spell teaches 1.6 s.
        capacity.update(100.0, &idle_round(0.4));
        assert_eq!(capacity.unloaded, 0.4);
        for _ in 0..40 {
            capacity.update(100.0, &idle_round(1.6));
        }
        assert!(capacity.unloaded > 1.5, "{}", capacity.unloaded);

        // A breaker that opened for seconds: the same back end.
        capacity.recovered(100.0, false);
        assert!(capacity.unloaded > 1.5, "{}", capacity.unloaded);
        // Back after an hour: as fast as it has ever been.
        capacity.recovered(100.0, true);
        assert_eq!(capacity.unloaded, 0.4);
        assert_eq!(capacity.floor, 0.4);
    }

    /// A round that presses on `limit`: `samples` calls of mean `rtt`
    /// over `duration`, `failed` of them failed.
    fn pressed(limit: f64, samples: u32, rtt: f64, duration: f64, failed: u32) -> WindowSample {
        WindowSample {
            samples,
            rtt,
            duration,
            dropped: failed,
            max_inflight: limit.ceil() as u32,
            blocked: 20,
            ..WindowSample::default()
        }
    }

    #[test]
    fn failures_of_a_step_up_that_went_back_do_not_start_a_test_below_it() {
        let mut capacity = Capacity::default();
        capacity.update(100.0, &idle_round(0.4));
        // Demand presses on the limit at the unloaded latency: a step up.
        let mut limit = 100.0;
        for _ in 0..10 {
            limit = capacity.update(limit, &pressed(limit, 100, 0.4, 0.4, 0));
            if limit > 100.0 {
                break;
            }
        }
        let above = limit;
        assert!(above > 100.0, "a step up: {above}");
        // It meets failures: back to the limit below it.
        limit = capacity.update(limit, &pressed(above, 100, 0.6, 0.6, 30));
        assert_eq!(limit, 100.0);
        // The calls admitted above it finish a round later, failing too:
        // they say nothing of the limit below, which served without them.
        limit = capacity.update(limit, &pressed(above, 100, 0.6, 0.6, 30));
        assert_eq!(limit, 100.0, "no test below the limit that served");
        for _ in 0..4 {
            limit = capacity.update(limit, &pressed(limit, 100, 0.4, 0.4, 0));
            assert!(limit >= 100.0, "{limit}");
        }
    }

    #[test]
    fn failures_that_outlast_a_step_up_that_went_back_are_judged() {
        let mut capacity = Capacity::default();
        capacity.update(100.0, &idle_round(0.4));
        let mut limit = 100.0;
        for _ in 0..10 {
            limit = capacity.update(limit, &pressed(limit, 100, 0.4, 0.4, 0));
            if limit > 100.0 {
                break;
            }
        }
        // The back end fails a third of the calls from the step on, at
        // the limit below it too: after the calls from above have
        // finished, a test below begins.
        let mut lowest = limit;
        for _ in 0..8 {
            limit = capacity.update(limit, &pressed(limit, 100, 0.6, 0.6, 30));
            lowest = lowest.min(limit);
        }
        assert!(lowest <= 50.0, "a test below: {lowest}");
    }

    #[test]
    fn a_step_down_goes_below_the_calls_in_flight() {
        let mut capacity = Capacity::default();
        for _ in 0..5 {
            capacity.update(400.0, &idle_round(1.0));
        }
        // The less important classes use part of the limit, and rounds
        // are quiet enough that a quarter more latency is a queue.
        capacity.utilization = 0.6;
        capacity.spread = 0.2;
        // A queue inside the back end: 125 calls in flight on average
        // (100 a second at 1.25 s), far below the limit, none turned
        // away. A step down to a limit that lets as many through would
        // show nothing, and latency that did not fall there would be
        // read as a slower back end.
        let queued = WindowSample {
            samples: 100,
            rtt: 1.25,
            duration: 1.0,
            max_inflight: 140,
            ..WindowSample::default()
        };
        let mut limit = 400.0;
        for _ in 0..4 {
            limit = capacity.update(limit, &queued);
            if limit < 400.0 {
                break;
            }
        }
        let busy = 100.0 * 1.25 / capacity.utilization;
        assert!(limit <= busy * 0.75 + 1e-9, "{limit} against {busy}");
    }

    #[test]
    fn throughput_that_holds_at_a_lower_limit_is_a_queue_even_if_latency_is_slow_to_fall() {
        let mut capacity = Capacity::default();
        for _ in 0..5 {
            capacity.update(200.0, &idle_round(0.4));
        }
        capacity.spread = 0.2;
        // Demand presses on a limit of 200 at twice the unloaded latency:
        // 250 calls a second, 200 in flight.
        let mut limit = 200.0;
        for _ in 0..4 {
            limit = capacity.update(limit, &pressed(limit, 200, 0.8, 0.8, 0));
            if limit < 200.0 {
                break;
            }
        }
        assert!(limit <= 150.0, "a step down: {limit}");
        // At the lower limit the back end delivers as many calls a second,
        // while latency falls only a little in the rounds it takes for the
        // calls admitted above to drain: the calls kept out were a queue,
        // not a slower back end.
        for _ in 0..3 {
            limit = capacity.update(limit, &pressed(limit, 200, 0.75, 0.8, 0));
        }
        assert!(capacity.unloaded < 0.5, "{}", capacity.unloaded);
        assert!(capacity.floor < 0.5, "{}", capacity.floor);
    }

    #[test]
    fn a_step_down_that_answers_more_than_the_limit_above_goes_back() {
        let mut capacity = Capacity::default();
        // A healthy back end at 200 ms, demand below the limit of 100.
        for _ in 0..5 {
            capacity.update(100.0, &idle_round(0.2));
        }
        // A round that spans a lull: few calls answered, slow ones, and
        // some that found the limit full.
        let mut limit = 100.0;
        let mut lowest = limit;
        for _ in 0..3 {
            limit = capacity.update(limit, &pressed(limit, 20, 0.6, 2.0, 0));
            lowest = f64::min(lowest, limit);
        }
        assert!(lowest < 50.0, "a step down to test for a queue: {lowest}");
        // The back end is fast again and the lower limit answers several
        // times the calls a second: the higher limit held nothing back.
        for _ in 0..3 {
            limit = capacity.update(limit, &pressed(limit, limit as u32, 0.2, 0.2, 0));
        }
        assert!(limit >= 100.0, "back to the limit above: {limit}");
    }

    /// Rounds of 30 calls at 2 s pressing on the limit, with failures in
    /// `pattern` whatever the limit (a tail of service times past a
    /// timeout); the limits.
    fn failing_rounds(pattern: &[u32]) -> Vec<f64> {
        let mut capacity = Capacity::default();
        capacity.update(60.0, &idle_round(2.0));
        let mut limit = 60.0;
        (0..60)
            .map(|round| {
                let failed = pattern[round % pattern.len()];
                limit = capacity.update(limit, &pressed(limit, 30, 2.0, 2.0, failed));
                limit
            })
            .collect()
    }

    #[test]
    fn a_failure_share_within_a_rounds_chance_of_a_tenth_is_no_overload() {
        // 4 of 30 is over a tenth, but not by a round's chance.
        let limits = failing_rounds(&[4, 1, 1]);
        let lowest = limits.iter().copied().fold(f64::INFINITY, f64::min);
        assert!(lowest >= 60.0, "{limits:?}");
    }

    #[test]
    fn failures_that_do_not_fall_with_the_load_by_more_than_chance_leave_the_limit() {
        // 5 of 30 is overload by a round's chance; the step down sees 1 of
        // 30, a fall within the chance of two rounds of 30, and goes back.
        let limits = failing_rounds(&[5, 1, 1]);
        let last = limits[limits.len() - 1];
        assert!(last >= 60.0, "{limits:?}");
    }

    #[test]
    fn small_rounds_are_judged_with_their_own_noise() {
        let mut capacity = Capacity::default();
        // Rounds of 64 calls whose means wander by 5% learn a spread of
        // about 0.3 a call...
        let mut limit = 100.0;
        for i in 0..80 {
            let rtt = if i % 2 == 0 { 0.2 } else { 0.21 };
            limit = capacity.update(
                limit,
                &WindowSample {
                    max_inflight: 40,
                    ..pressed(100.0, 64, rtt, rtt, 0)
                },
            );
        }
        let at_64 = capacity.tolerance();
        // ...and a round of 16 calls from the same back end is twice as
        // noisy: its tolerance is twice as wide.
        capacity.update(
            limit,
            &WindowSample {
                max_inflight: 8,
                ..pressed(100.0, 16, 0.2, 0.2, 0)
            },
        );
        let at_16 = capacity.tolerance();
        assert!(at_16 > at_64 * 1.8, "{at_64} at 64 calls, {at_16} at 16");
    }

    #[test]
    fn rounds_of_calls_too_fast_to_measure_keep_the_limit() {
        // An in-process service that answers in a microsecond, called from
        // two threads: rounds of 16,384 calls whose latencies round to
        // nothing but for one to four descheduled ones, so that the mean is
        // a few units of the latency sum over all of them.
        let unit = super::super::state::RTT_UNIT as f64 / 1e9;
        let mut capacity = Capacity::default();
        let mut limit = 1000.0;
        for round in 0..200 {
            let stray = f64::from(1 + round % 4);
            let window = WindowSample {
                samples: 16_384,
                rtt: stray * unit / 16_384.0,
                duration: 0.003,
                max_inflight: 2,
                ..WindowSample::default()
            };
            limit = capacity.update(limit, &window);
            assert!(limit >= 1000.0, "round {round}: {limit}");
        }
    }

    /// A back end of 100 slots at 2 s whose timeout is near its latency:
    /// past its slots, calls queue and a fifth of them time out; within
    /// them, a few in a hundred do (the tail). `rounds` rounds pressing on
    /// the limit from 100; the limits.
    fn timeout_near_latency(rounds: usize) -> Vec<f64> {
        let mut capacity = Capacity::default();
        capacity.update(100.0, &idle_round(2.0));
        let mut limit: f64 = 100.0;
        (0..rounds)
            .map(|_| {
                let busy = limit.min(130.0);
                let rtt = 2.0 * (busy / 100.0).max(1.0);
                let samples = (busy.min(100.0) * rtt / 2.0) as u32;
                let failed = if busy > 105.0 {
                    samples / 5
                } else {
                    samples / 50
                };
                let round = WindowSample {
                    max_inflight: busy.ceil() as u32,
                    ..pressed(limit, samples, rtt, rtt, failed)
                };
                limit = capacity.update(limit, &round);
                limit
            })
            .collect()
    }

    #[test]
    fn failures_a_step_up_brought_send_the_limit_back_where_it_was_not_below() {
        let limits = timeout_near_latency(150);
        let lowest = limits[20..].iter().copied().fold(f64::INFINITY, f64::min);
        assert!(lowest >= 90.0, "a test at half the limit: {limits:?}");
    }

    #[test]
    fn steps_up_that_meet_failures_come_less_and_less_often() {
        let limits = timeout_near_latency(150);
        let over = limits[20..].iter().filter(|&&limit| limit > 105.0).count();
        assert!(
            over * 5 < limits.len() - 20,
            "{over} rounds past the slots: {limits:?}"
        );
    }

    #[test]
    fn an_unload_test_that_went_too_far_is_read_with_the_rate_above_it() {
        // Cruising at 134 over a back end of 100 slots at 1.2 s, which
        // slows to 2 s: the calls it had started time out for a round
        // (30 of 115), and the test at a lower limit sees them stop.
        let mut capacity = Capacity {
            step: Step::Cruise,
            estimate: 134.0,
            unloaded: 1.2,
            floor: 1.2,
            met_queue: true,
            good: 134.0,
            ..Capacity::default()
        };
        let mut limit = capacity.update(134.0, &pressed(134.0, 115, 2.33, 2.19, 30));
        assert!(limit < 67.0, "a test at a lower limit: {limit}");
        for _ in 0..3 {
            let busy = limit.min(100.0);
            limit = capacity.update(
                limit,
                &pressed(limit, (busy / 2.0 * 1.9) as u32, 2.0, 1.9, 1),
            );
        }
        // The lower limit delivers only what it lets through; at the limit
        // above, the back end delivered 39 calls a second, at 2 s: 78.
        assert!(limit >= 70.0, "{limit}");
    }

    #[test]
    fn rounds_whose_callers_leave_bring_the_limit_to_what_succeeding_calls_use() {
        let mut capacity = Capacity::default();
        capacity.update(100.0, &idle_round(0.4));
        // Half the calls abandoned at a 1 s deadline, nobody refused a
        // slot: calls in flight are set by the callers' patience.
        let leaving = WindowSample {
            samples: 40,
            rtt: 0.45,
            duration: 0.5,
            max_inflight: 80,
            censored: 20,
            ..WindowSample::default()
        };
        let mut limit = 100.0;
        let mut limits = Vec::new();
        for _ in 0..10 {
            // Callers leave before the limit fills: four fifths of it.
            let round = WindowSample {
                max_inflight: (limit * 0.8) as u32,
                ..leaving
            };
            limit = capacity.update(limit, &round);
            limits.push(limit);
        }
        // 20 of 40 calls in 0.5 s succeed: 40 a second at 0.45 s is 18 in
        // flight that help. Not grown to twice the 80 in flight; down by
        // at most half a round, to 18 and no lower.
        assert_eq!(limits[..3], [50.0, 25.0, 18.0], "{limits:?}");
        assert!(limits.iter().all(|&l| l >= 18.0), "{limits:?}");
        assert_eq!(capacity.unloaded, 0.4, "no baseline from abandoned calls");
    }
}
