//! The `capacity` learner's steps: how a round ends one, and which comes
//! next.

use super::{Capacity, Step};
use crate::core::limit::algorithm::WindowSample;

impl Capacity {
    /// Whether this round's failures may still be those of a step up that
    /// met failures (calls admitted above the limit gone back to, or
    /// completing a round trip after it): the wait of `after_miss`.
    pub(super) fn after_missed_step(&mut self, limit: f64, window: &WindowSample) -> bool {
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
    pub(super) fn missed_up(&mut self) {
        self.missed = (self.missed + 1).min(4);
        self.hold = 1 << (self.missed - 1);
    }

    /// The limit the current step runs at.
    pub(super) fn current(&self) -> f64 {
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
    pub(super) fn overloaded(
        &mut self,
        limit: f64,
        window: &WindowSample,
        share: f64,
        rate: f64,
    ) -> f64 {
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
            at_to: (0, 0),
        };
        self.rounds = 0;
        self.settled = 0;
        to
    }

    /// A round of an [`Step::Unload`] test.
    pub(super) fn unload_round(
        &mut self,
        window: &WindowSample,
        (from, to, delivered): (f64, f64, f64),
        (before, calls): (f64, u32),
        (mut completed, mut failed): (u32, u32),
        rate: f64,
    ) -> f64 {
        self.rounds += 1;
        self.settled = if f64::from(window.max_inflight) > to.ceil() + 1.0 {
            (completed, failed) = (0, 0);
            0
        } else {
            self.settled + 1
        };
        if self.settled > 0 {
            // Rounds at the lower limit are judged together: at a tenth
            // of the limit a round may hold a handful of calls.
            completed += window.samples;
            failed += window.dropped;
        }
        if self.settled < Self::STEP_ROUNDS && self.rounds < Self::MAX_STEP_ROUNDS {
            if let Step::Unload { at_to, .. } = &mut self.step {
                *at_to = (completed, failed);
            }
            return to;
        }
        let last = (
            window.samples,
            f64::from(window.dropped) / f64::from(window.samples.max(1)),
        );
        self.rounds = 0;
        self.settled = 0;
        self.step = Step::Cruise;
        self.met_queue = true;
        // Overload shows as failures that fall with the load: to at most
        // half (or a tenth), and by more than two rounds' chance (the
        // standard error of the difference of two shares), so that a share
        // that is the same at both loads is not read as falling because
        // the rounds were small.
        let fell_in = |(samples, share): (u32, f64)| {
            let pooled = (before * f64::from(calls) + share * f64::from(samples))
                / f64::from(calls + samples);
            let chance =
                (pooled * (1.0 - pooled) * (1.0 / f64::from(calls) + 1.0 / f64::from(samples)))
                    .sqrt();
            share <= Self::OVERLOAD.max(before * 0.5) && before - share > 2.0 * chance
        };
        // Judged on the last round, and on all the rounds at the lower
        // limit together as well: at a tenth of the limit a round may hold
        // a handful of calls, and one lucky round is no fall. (The rounds
        // together alone would not do either: the round above was picked
        // for failing more than its share, and more calls below make a
        // fall of chance look like a fall.)
        let together =
            (completed > 0).then(|| (completed, f64::from(failed) / f64::from(completed)));
        let fell = fell_in(last) && together.is_none_or(fell_in);
        if fell {
            // Failures fell with the load: it was overload. What the back
            // end delivered at the higher limit, at the latency it shows
            // at the lower (Little's law, as a step down reads it), is what
            // it can serve: the lower limit's own delivery is capped by
            // that limit, and would keep a test that went too far too low
            // (a back end that slowed down times out the calls it had
            // already started, which looks like overload for a round).
            // At most four fifths of the higher limit, though: it was
            // shown to overload the back end, and the latency at the lower
            // limit may still hold the queue it built (a back end at its
            // slots' edge, twice slower, read 370 of 426 and ran away).
            let serves = if window.rtt > 0.0 {
                delivered.max(rate) * window.rtt / self.utilization
            } else {
                to
            };
            self.estimate = serves.clamp(to, (from * Self::PAST_OVERLOAD).max(to));
            if window.rtt > 0.0 {
                self.unloaded = window.rtt;
            }
            self.good = self.good.min(self.estimate.max(self.good * 0.5));
            self.end_blind();
        } else {
            // Failures do not depend on the load: go back, and leave them
            // to the breaker for a while.
            self.estimate = from;
            self.good = self.good.max(from);
            self.start_blind(before.max(together.map_or(last.1, |(_, share)| share)));
        }
        self.estimate
    }

    /// Demand is below the limit and latency shows no queue: keep the
    /// limit ahead of demand, and learn the unloaded latency.
    pub(super) fn idle(&mut self, limit: f64, window: &WindowSample) -> f64 {
        self.step = Step::Idle;
        self.rounds = 0;
        self.settled = 0;
        self.unloaded = if self.unloaded == 0.0 {
            window.rtt
        } else {
            // At most twice the tolerance above the lowest learned: a
            // queue that forms a little each round inside the tolerance
            // would otherwise be learned as the back end's own latency,
            // round after round (a back end at its slots' edge grows one
            // while demand stays below the limit). A back end that is
            // really slower shows past that, and a step down tells it from
            // a queue (and moves the lowest).
            let learned = self.unloaded + (window.rtt - self.unloaded) * 0.2;
            if self.floor > 0.0 {
                learned.min(self.floor * (1.0 + 2.0 * self.tolerance()))
            } else {
                learned
            }
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
    pub(super) fn judge(&mut self, rtt: f64, rate: f64, answered: f64, binds: bool) -> f64 {
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
        // (An unload test's finding that failures do not depend on the
        // load is kept, with its rounds: a breaker that opened for seconds
        // over a slow back end closes onto the same one, and testing it
        // afresh at a tenth of the limit each time cost up to 7 points of
        // slow ×8's goodput. Failures that rise past the finding still
        // end it at once, in `blind_round`.)
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
