//! How the limiter follows what the provider says, and learns what it does not say.
//!
//! **Ceilings.** A dimension (requests or tokens per minute) is paced at `min(configured,
//! stated, learned)` over those known. A limit the provider states lowers a configured one
//! that is higher (configs carry wrong limits), and never raises it: the configured one is a
//! ceiling we choose. A stated limit is followed as soon as it changes, down and up.
//!
//! **Bucket semantics.** Providers refill continuously, and their `reset` is the time until
//! the bucket is *full* again, not until the next unit. So `remaining` is read as a level,
//! never as a budget to spread until the reset: a low remaining changes nothing, and a
//! remaining of 0 empties our bucket too, which then waits one unit at the full rate. With
//! `limiter.window = "fixed"` the provider is taken at its word instead: a spent budget
//! comes back at the reset, so nothing starts until then.
//!
//! **Refusals.** A 429 counts only when its attempt started after the last one that counted
//! was answered: later answers to earlier starts describe the same overload. One that
//! counts pauses starts for its `retry-after` and:
//! - when headers explain it (a budget with 0 remaining) empties that budget and keeps the
//!   rate: the bucket is empty, we are not too fast; without `retry-after` the pause is the
//!   time one unit takes to come back;
//! - otherwise feeds the probe (`probe.rs`), which estimates the true limit from the starts
//!   accepted between refusals, holds just under it and probes upwards. The pace it learns
//!   caps the request rate, is persisted, and survives a restart.
//!
//! **Slow start.** A provider with no configured `rpm` starts in slow start: attempts in
//! flight are capped by a window (`limiter.slow_start_window`, 8) that grows by one per
//! success, so it doubles per round trip, instead of the first backlog going out all at once
//! and coming back as a wall of 429s. Slow start ends at the first 429, when the provider
//! states its request limit, or when the window reaches [`SLOW_START_END`].

use std::time::{Duration, Instant};

use super::{LimiterSnapshot, Permit, RateLimitInfo, RateLimiter};
use crate::config::LimitWindow;
use crate::limits::SLOW_START_END;
use crate::limits::bucket::Bucket;
use crate::limits::pause_end;
use crate::limits::probe::{Probe, Start, Tuning};

/// The floor of a pace learned with no configured or stated limit, per minute.
const LEARNED_FLOOR: f64 = 1.0;
/// How long a restored learned pace holds before probing upwards again.
const RESTORED_HOLD: Duration = Duration::from_secs(1);

impl RateLimiter {
    /// The provider refused an attempt (the permit-less form, for callers that have none:
    /// the refusal counts unless starts are already paused). See the module doc.
    pub fn on_rate_limited(
        &mut self,
        now: Instant,
        retry_after: Option<Duration>,
        info: Option<&RateLimitInfo>,
    ) {
        let counts = !self.is_paused(now);
        let start = Start {
            seq: self.starts,
            at: now,
        };
        self.refused(now, start, counts, retry_after, info);
    }

    /// The provider refused the attempt holding `permit` with a 429. Hand the permit to
    /// [`release`](RateLimiter::release) afterwards as usual.
    pub fn on_refused(
        &mut self,
        now: Instant,
        permit: &Permit,
        retry_after: Option<Duration>,
        info: Option<&RateLimitInfo>,
    ) {
        let counts = self.epoch.is_none_or(|epoch| permit.start.at >= epoch);
        self.distrust_bursts_if_refused(now, permit);
        self.refused(now, permit.start, counts, retry_after, info);
    }

    fn refused(
        &mut self,
        now: Instant,
        start: Start,
        counts: bool,
        retry_after: Option<Duration>,
        info: Option<&RateLimitInfo>,
    ) {
        self.follow_headers(now, info);
        self.slow_start = None;
        if let Some(probe) = &mut self.probe {
            probe.note_unaccepted(start);
        }
        if !counts {
            // Charged again when the last refusal was learned from, as it would take the
            // provider's first refill; refused, it took nothing, so the charge comes back
            // (else the refill after a burst of refusals goes unspent).
            if self.charged_again.contains(&start.seq)
                && let Some(requests) = &mut self.requests
            {
                requests.give(now, 1.0);
            }
            return;
        }
        self.epoch = Some(now);
        if let Some(wait) = info.and_then(|i| self.explained_wait(i)) {
            self.pause(pause_end(now, retry_after.unwrap_or(wait)));
        } else {
            self.pause(pause_end(
                now,
                retry_after.unwrap_or(self.settings.default_pause),
            ));
            self.learn_from_refusal(now, start);
        }
        self.refresh(now);
    }

    /// A failed answer that was not a refusal (a server error) but carried rate-limit
    /// headers: they are followed, and nothing else changes.
    pub fn on_headers(&mut self, now: Instant, info: &RateLimitInfo) {
        self.follow_headers(now, Some(info));
    }

    /// A successful answer, with whatever limits it states.
    pub fn on_success(&mut self, now: Instant, info: Option<&RateLimitInfo>) {
        self.follow_headers(now, info);
        if let Some(window) = self.slow_start {
            if self.stated_rpm.is_some() {
                self.slow_start = None;
            } else {
                let grown = window.saturating_add(1);
                self.slow_start = (grown < SLOW_START_END).then_some(grown);
            }
        }
        self.refresh(now);
    }

    /// Resumes from a snapshot: the stated limits, and the learned pace, which then holds
    /// briefly before probing upwards. Values that are not finite and positive are ignored;
    /// so is a learned pace at or above the ceiling (nothing to remember).
    pub fn restore(&mut self, snapshot: LimiterSnapshot, now: Instant) {
        let usable = |v: Option<f64>| v.filter(|v| v.is_finite() && *v > 0.0);
        if let Some(rpm) = usable(snapshot.stated_rpm) {
            self.stated_rpm = Some(rpm);
            self.slow_start = None;
        }
        self.stated_tpm = usable(snapshot.stated_tpm).or(self.stated_tpm);
        let ceiling = self.rpm_ceiling();
        if let Some(learned) = usable(snapshot.learned_rpm)
            && ceiling.is_none_or(|c| learned < c)
        {
            let floor = self.request_floor();
            let hold = now + RESTORED_HOLD;
            self.probe = Some(Probe::new(self.tuning(), learned.max(floor), hold));
            self.slow_start = None;
        }
        self.refresh(now);
    }

    /// Brings both buckets in line with the ceilings and the learned pace at `now`.
    pub fn refresh(&mut self, now: Instant) {
        let min_share = self.settings.min_share;
        let hard = self.rpm_ceiling();
        let learned = self.probe.as_ref().map(|p| p.rate(now));
        if hard.is_some() || learned.is_some() {
            let ceiling = hard.unwrap_or(f64::INFINITY);
            let pace = learned.map_or(ceiling, |l| l.min(ceiling));
            let floor = self.request_floor();
            // A configured limit is kept in every sliding minute, even while the pace learned
            // under it; a stated one is the provider's bucket.
            let strict = self.stated_rpm.is_none() && self.configured_rpm.is_some();
            let requests = self
                .requests
                .get_or_insert_with(|| Bucket::full(pace, min_share, now));
            requests.set_bounds(now, floor, ceiling);
            requests.set_rate(now, pace);
            requests.set_strict_minute(now, strict);
        }
        if let Some(ceiling) = self.tpm_ceiling() {
            let strict = self.stated_tpm.is_none();
            let tokens = self
                .tokens
                .get_or_insert_with(|| Bucket::full(ceiling, min_share, now));
            tokens.set_bounds(now, ceiling * min_share, ceiling);
            tokens.set_rate(now, ceiling);
            tokens.set_strict_minute(now, strict);
        }
    }

    /// Takes in the limits an answer states, spends a burst it states, and empties a
    /// budget it says is spent.
    fn follow_headers(&mut self, now: Instant, info: Option<&RateLimitInfo>) {
        let Some(info) = info else { return };
        let stated = |limit: Option<u64>| limit.map(|l| (l as f64).max(1.0));
        self.stated_rpm = stated(info.limit_requests).or(self.stated_rpm);
        self.stated_tpm = stated(info.limit_tokens).or(self.stated_tpm);
        self.refresh(now);
        self.spend_stated_bursts(now, info);
        let fixed = self.settings.window == LimitWindow::Fixed;
        let spent = self.spent_budgets(info);
        let mut until_reset = None;
        for (spent, reset, bucket) in [
            (spent[0], info.reset_requests, self.requests.as_mut()),
            (spent[1], info.reset_tokens, self.tokens.as_mut()),
        ] {
            if !spent {
                continue;
            }
            if let Some(bucket) = bucket {
                bucket.drain(now);
            }
            if fixed {
                until_reset = until_reset.max(reset);
            }
        }
        if let Some(reset) = until_reset {
            self.pause(pause_end(now, reset));
        }
    }

    /// How long a refusal that headers explain (a spent budget) takes to clear when the
    /// provider names no wait: one unit of the spent budget at its rate, or in fixed-window
    /// mode its reset. `None` when the headers do not say a budget is spent.
    fn explained_wait(&self, info: &RateLimitInfo) -> Option<Duration> {
        let per_unit = |rate: Option<f64>, units: f64| {
            rate.map(|r| Duration::from_secs_f64(60.0 * units / r.max(1.0)))
        };
        let typical = self.typical_estimate.unwrap_or(1.0).max(1.0);
        let spent = self.spent_budgets(info);
        [
            (
                spent[0],
                info.reset_requests,
                per_unit(self.current_rpm(), 1.0),
            ),
            (
                spent[1],
                info.reset_tokens,
                per_unit(self.current_tpm(), typical),
            ),
        ]
        .into_iter()
        .filter(|(spent, _, _)| *spent)
        .map(|(_, reset, unit)| match self.settings.window {
            LimitWindow::Fixed => reset.or(unit),
            LimitWindow::Bucket => unit.or(reset.map(|r| r.min(self.settings.default_pause))),
        })
        .map(|wait| wait.unwrap_or(self.settings.default_pause))
        .max()
    }

    /// Which budgets, requests and tokens, the headers say are spent: none remaining, or
    /// for tokens fewer than a typical request needs (a provider refuses a request larger
    /// than what remains, as OpenAI does).
    fn spent_budgets(&self, info: &RateLimitInfo) -> [bool; 2] {
        let typical = self.typical_estimate.unwrap_or(1.0).max(1.0);
        [
            info.remaining_requests == Some(0),
            info.remaining_tokens.is_some_and(|r| (r as f64) < typical),
        ]
    }

    /// A refusal nobody explained: the probe learns from it (see `probe.rs`).
    fn learn_from_refusal(&mut self, now: Instant, start: Start) {
        let pace = match &self.requests {
            Some(requests) => requests.rate(),
            None => self.recent_starts.per_minute(now).max(LEARNED_FLOOR),
        };
        let pace = self.rpm_ceiling().map_or(pace, |c| pace.min(c));
        let floor = self.request_floor();
        let resume = self.paused_until.unwrap_or(now).max(now);
        let tuning = self.tuning();
        let probe = self.probe.get_or_insert_with(|| {
            let mut fresh = Probe::new(tuning, pace, now);
            fresh.note_unaccepted(start);
            fresh
        });
        let estimated = probe.refused(start, pace, resume, floor);
        let held = probe.held();
        let requests = self
            .requests
            .get_or_insert_with(|| Bucket::empty(held, self.settings.min_share, now));
        // The provider's bucket is empty, and what was started after the refused attempt
        // will take the first of its refill. What it refills during the pause may be spent
        // after it only at a pace known to be under its limit; any other pace starts
        // empty when the pause ends, or the burst would be refused.
        requests.set_rate(now, held);
        if estimated {
            requests.drain(now);
        } else {
            requests.empty_until(now, resume);
        }
        let started_since = self.starts.saturating_sub(start.seq + 1);
        requests.take(now, started_since as f64);
        self.charged_again = start.seq + 1..self.starts;
    }

    fn request_floor(&self) -> f64 {
        self.rpm_ceiling()
            .map_or(LEARNED_FLOOR, |c| c * self.settings.min_share)
    }

    fn tuning(&self) -> Tuning {
        Tuning {
            margin: self.settings.probe_margin,
            every: self.settings.probe_every,
            decrease_factor: self.settings.decrease_factor,
        }
    }
}

#[cfg(test)]
mod tests;
