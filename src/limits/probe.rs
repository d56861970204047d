//! The header-less rate controller: how fast to go when a provider refuses without saying
//! why (a bare 429, or headers that claimed room). Such a provider can only be shown to
//! allow more by exceeding it, so the controller alternates between holding just under its
//! best estimate of the true limit and probing upwards until the next refusal.
//!
//! **Estimator.** A refusal that counts (see `rate_limiter/adapt.rs`) means the provider's
//! bucket was empty when that attempt started; so it was at the previous counting refusal.
//! Between the two, the provider accepted every start in between except the refused ones:
//! `A = starts between − refusals between`, over `Δ` = the time between the two starts. For
//! a token bucket that is `R·Δ` plus less than one unit, unless the bucket overflowed, which
//! only happens when we went well under `R` for longer than its depth lasts; so `R̂ = A/Δ` is
//! exact to `1/Δ` when the pace never fell below 90% of it. Starts are counted by sequence
//! number, not answer time: by answer time, the accepted half of the burst that emptied the
//! bucket would be counted and `R̂` would come out high.
//!
//! **Reaction.** On a counting refusal, at pace `r`:
//! - saturated (`A ≥ 10`, pace never under 90% of `R̂`): hold at `(1 − margin)·min(R̂, r)`,
//!   for `probe_every / R̂` when the estimate is good (`A ≥ 30` over 2 s or more), else 1 s;
//! - under-used (`A ≥ 10` but the pace fell below 90% of `R̂`): the bucket may have
//!   overflowed, so `R̂` is a lower bound; hold `(1 − margin)·R̂`, which is safe, for 1 s;
//! - otherwise (the first refusal, or the limit fell): `decrease_factor·r` for 1 s.
//!
//! **Probing.** After the hold the pace ramps. After a good estimate it first rises by 4% of
//! the held pace a second for 5 s, which finds an unchanged limit gently (the hold was a few
//! percent under it, more when the estimate came out low); then, and at once after any other reaction, it doubles every 2 s, which finds
//! a raised limit within seconds. Successes do not move the pace.
//!
//! **What a refusal costs.** The pause a refusal causes is not lost: the limiter's bucket
//! is emptied at the refusal and refills during the pause at the held pace, so what the
//! provider refilled meanwhile is spent when it ends, but only after an estimate (a pace known
//! to be under `R`). The starts in flight when the refusal is answered are charged again,
//! as they take the first of the provider's refill; those of them refused too (the burst that
//! tripped the limit is refused as a whole) took nothing, and their charge comes back as
//! their answers arrive. Without that, the refill after a burst of refusals (the first
//! seconds of a provider nobody configured) went unspent and the provider's bucket
//! overflowed: 77% of `R` over the first 10 s at 10/s in the simulation of
//! `rate_limiter/bare_sim.rs`, 103% with it, and 94.8% → 98.8% with 1.66% → 0.40% refused
//! from 5 s to 30 s.
//!
//! **Why this converges close to `R`.** During a hold of `H = N/R` at `(1 − μ)·R` the
//! provider's bucket gains `μ·N` units (3 at the defaults), less than any real bucket holds,
//! so nothing is lost; the ramp spends that surplus and ends in one refusal (more when the
//! answers are slow: what is in flight at the excess). So goodput is close to 100% of `R`
//! and about one attempt in `N + R·ramp` is refused: under 1% at `N` = 100. A fall of `R` is
//! found in two or three refusals; a rise within the hold plus a few seconds of ramp.

use std::time::{Duration, Instant};

/// Fewer accepted starts than this between two refusals say nothing about the rate.
const MIN_EVIDENCE: u64 = 10;
/// Accepted starts, and seconds between the refusals, for an estimate good enough to hold on.
const GOOD_EVIDENCE: u64 = 30;
const GOOD_SPAN: Duration = Duration::from_secs(2);
/// The pace since the last refusal must have stayed above this share of the estimate for the
/// provider's bucket to have been kept empty (no overflow, so the estimate is exact).
const SATURATED_SHARE: f64 = 0.9;
/// The hold after a refusal without a good estimate.
const SHORT_HOLD: Duration = Duration::from_secs(1);
/// The shortest and longest hold on a good estimate. The longest bounds how long a limit
/// that rose goes unnoticed at a low rate, where `probe_every` attempts take long.
const MIN_HOLD: Duration = Duration::from_secs(2);
const MAX_HOLD: Duration = Duration::from_secs(8);
/// The gentle part of the ramp after a good estimate: this share of the held pace per
/// second...
const RAMP_SLOPE: f64 = 0.04;
/// ...for this long (up to +20%, past the margin and an estimate a little low)...
const RAMP_GENTLE: Duration = Duration::from_secs(5);
/// ...then the pace doubles every this long.
const RAMP_DOUBLING: Duration = Duration::from_secs(2);
/// The ramp stops here (requests per minute); a provider this fast is unlimited to us.
const FASTEST: f64 = 1e9;

/// Where and when an attempt started: its sequence number among the limiter's starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    pub seq: u64,
    pub at: Instant,
}

/// The controller's tuning, from `[providers.limiter]`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Tuning {
    pub margin: f64,
    pub every: u32,
    pub decrease_factor: f64,
}

#[derive(Clone, Debug)]
pub(super) struct Probe {
    tuning: Tuning,
    /// The held pace, requests per minute.
    base: f64,
    hold_until: Instant,
    /// Whether the ramp after the hold starts gently (the held pace is a good estimate).
    gentle: bool,
    /// The last counting refusal's start.
    last: Option<Start>,
    /// Refusals of attempts started after `last`.
    refused_since: u64,
}

impl Probe {
    pub fn new(tuning: Tuning, base: f64, hold_until: Instant) -> Probe {
        Probe {
            tuning,
            base,
            hold_until,
            gentle: false,
            last: None,
            refused_since: 0,
        }
    }

    /// The pace held after the last refusal, requests per minute: the learned limit.
    pub fn held(&self) -> f64 {
        self.base
    }

    /// The pace at `now`, requests per minute.
    pub fn rate(&self, now: Instant) -> f64 {
        let Some(ramping) = now.checked_duration_since(self.hold_until) else {
            return self.base;
        };
        let gentle_for = if self.gentle {
            RAMP_GENTLE
        } else {
            Duration::ZERO
        };
        let gentle = ramping.min(gentle_for).as_secs_f64();
        let doubling = ramping.saturating_sub(gentle_for).as_secs_f64();
        let rate = self.base
            * (1.0 + RAMP_SLOPE * gentle)
            * 2f64.powf(doubling / RAMP_DOUBLING.as_secs_f64());
        rate.min(FASTEST)
    }

    /// A start the provider did not accept: any refusal, counting or not, or a start taken
    /// back before it was sent. The estimate counts only accepted starts.
    pub fn note_unaccepted(&mut self, start: Start) {
        if self.last.is_none_or(|last| start.seq > last.seq) {
            self.refused_since += 1;
        }
    }

    /// A counting refusal of `start` at pace `pace` (see the module doc). The new hold
    /// begins at `resume` (the end of the pause the refusal causes); the pace is never set
    /// below `floor`. Returns whether the new pace comes from an estimate, under the true
    /// limit: only then may what the provider refills during the pause be spent after it.
    pub fn refused(&mut self, start: Start, pace: f64, resume: Instant, floor: f64) -> bool {
        // `note_unaccepted` already counted this one.
        let refused_between = self.refused_since.saturating_sub(1);
        let estimate = self.last.and_then(|last| {
            let span = start.at.checked_duration_since(last.at)?;
            let between = start.seq.checked_sub(last.seq)?.checked_sub(1)?;
            let accepted = between.saturating_sub(refused_between);
            (accepted >= MIN_EVIDENCE && !span.is_zero())
                .then(|| (accepted, span, accepted as f64 * 60.0 / span.as_secs_f64()))
        });
        let (base, hold, gentle) = match estimate {
            Some((accepted, span, limit)) if self.base >= SATURATED_SHARE * limit => {
                let good = accepted >= GOOD_EVIDENCE && span >= GOOD_SPAN;
                let hold = if good {
                    let per_sec = limit / 60.0;
                    Duration::from_secs_f64(f64::from(self.tuning.every) / per_sec)
                        .clamp(MIN_HOLD, MAX_HOLD)
                } else {
                    SHORT_HOLD
                };
                ((1.0 - self.tuning.margin) * limit.min(pace), hold, true)
            }
            Some((_, _, limit)) => ((1.0 - self.tuning.margin) * limit, SHORT_HOLD, false),
            None => (self.tuning.decrease_factor * pace, SHORT_HOLD, false),
        };
        self.base = base.max(floor);
        self.gentle = gentle;
        self.hold_until = resume + hold;
        self.last = Some(start);
        self.refused_since = 0;
        estimate.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TUNING: Tuning = Tuning {
        margin: 0.03,
        every: 100,
        decrease_factor: 0.5,
    };

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn the_pace_holds_then_doubles() {
        let t0 = Instant::now();
        let p = Probe::new(TUNING, 600.0, t0 + secs(1.0));
        assert_eq!(p.rate(t0), 600.0);
        assert_eq!(p.rate(t0 + secs(1.0)), 600.0);
        assert!((p.rate(t0 + secs(3.0)) - 1200.0).abs() < 1e-6);
        assert_eq!(p.rate(t0 + secs(1e6)), FASTEST);
    }

    /// Plays a provider that accepts `limit` a minute against a pace of `pace`, refusing
    /// the start after `accepted` ones; returns the probe after that refusal.
    fn refuse_after(p: &mut Probe, from: Start, accepted: u64, pace: f64) -> Start {
        let span = secs(accepted as f64 * 60.0 / pace);
        let next = Start {
            seq: from.seq + accepted + 1,
            at: from.at + span,
        };
        p.note_unaccepted(next);
        p.refused(next, pace, next.at, 1.0);
        next
    }

    /// A probe after its first refusal, at t0 and sequence number 0, at `pace`.
    fn after_a_first_refusal(pace: f64) -> (Instant, Probe, Start) {
        let t0 = Instant::now();
        let mut p = Probe::new(TUNING, pace, t0);
        let first = Start { seq: 0, at: t0 };
        p.note_unaccepted(first);
        p.refused(first, pace, t0, 1.0);
        (t0, p, first)
    }

    #[test]
    fn the_first_refusal_cuts_by_the_decrease_factor() {
        let (t0, p, _) = after_a_first_refusal(1200.0);
        assert_eq!(p.rate(t0), 600.0);
        assert_eq!(p.rate(t0 + SHORT_HOLD), 600.0);
    }

    #[test]
    fn a_saturated_span_holds_just_under_the_estimate() {
        let (_, mut p, first) = after_a_first_refusal(1200.0);
        // 60 accepted in 6 s at 600 a minute: the provider allows 600 a minute.
        let now = refuse_after(&mut p, first, 60, 600.0);
        assert!((p.rate(now.at) - 582.0).abs() < 1e-6, "{}", p.rate(now.at));
        // A good estimate holds for probe_every attempts at that rate, 10 s, cut to 8 s;
        // then the pace rises 4% a second for 5 s before it doubles.
        let held = p.rate(now.at);
        assert_eq!(p.rate(now.at + secs(7.9)), held);
        assert!((p.rate(now.at + secs(13.0)) - 1.2 * held).abs() < 1e-6);
        assert!((p.rate(now.at + secs(15.0)) - 2.4 * held).abs() < 1e-6);
    }

    #[test]
    fn refusals_in_between_are_not_counted_as_accepted() {
        let (t0, mut p, _) = after_a_first_refusal(1000.0);
        // 40 starts over 4 s, 10 of them refused: 30 accepted, 450 a minute.
        for seq in 10..20 {
            p.note_unaccepted(Start {
                seq,
                at: t0 + secs(1.0),
            });
        }
        let last = Start {
            seq: 41,
            at: t0 + secs(4.0),
        };
        p.note_unaccepted(last);
        p.refused(last, 600.0, last.at, 1.0);
        assert!((p.rate(last.at) - 0.97 * 450.0).abs() < 1e-6);
    }

    #[test]
    fn an_under_used_span_holds_under_its_lower_bound() {
        let (_, mut p, first) = after_a_first_refusal(200.0);
        // The held pace was 100 a minute but 400 were accepted in a minute: the limit rose,
        // and is at least that.
        let now = refuse_after(&mut p, first, 400, 400.0);
        assert!((p.rate(now.at) - 0.97 * 400.0).abs() < 1e-6);
    }
}
