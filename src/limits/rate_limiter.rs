//! The per-provider adaptive rate limiter: token buckets for requests and tokens per minute,
//! a concurrency cap, and a pause after a refusal. How the rates adapt to what the provider
//! says is in `rate_limiter/adapt.rs`; the pace learned from refusals alone in `probe.rs`.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::UNLIMITED;
use super::bucket::{Bucket, RecentStarts};
use super::probe::{Probe, Start};
use crate::config::{LimiterConfig, ProviderConfig};

/// Weight of the newest estimate in the running average `available` uses to turn a token
/// balance into a number of attempts.
const ESTIMATE_SMOOTHING: f64 = 0.2;

/// Proof that an attempt was counted by [`RateLimiter::acquire`]; hand it back to
/// [`RateLimiter::release`] when the attempt ends, however it ends. A plain value (no
/// `Drop`), so it can travel with the attempt across tasks.
#[must_use = "a permit must be handed back to RateLimiter::release"]
#[derive(Debug, PartialEq, Eq)]
pub struct Permit {
    estimated_tokens: u32,
    /// Whether the estimate was charged to a token bucket (there may be none).
    charged: bool,
    /// When it started and how many starts came before: how a refusal is placed.
    start: Start,
    /// Whether a burst the provider stated admitted it (see `rate_limiter/burst.rs`).
    from_stated_burst: bool,
}

impl Permit {
    pub fn estimated_tokens(&self) -> u32 {
        self.estimated_tokens
    }
}

/// Why an attempt may not start yet, and when it could.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wait {
    /// The earliest instant a start could succeed; `None` when that takes an in-flight
    /// attempt being released (the concurrency cap is full).
    pub until: Option<Instant>,
    /// The limit that holds longest.
    pub reason: WaitReason,
}

impl Wait {
    /// How long from `now`, when that is known.
    pub fn delay(&self, now: Instant) -> Option<Duration> {
        self.until.map(|u| u.saturating_duration_since(now))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitReason {
    /// Paused after a refusal, or because the provider said the budget is spent.
    Paused,
    Requests,
    Tokens,
    Concurrency,
}

/// What a provider said about its rate limits on one response (from
/// `x-ratelimit-*` or `anthropic-ratelimit-*` headers). Resets are durations from the
/// moment the response was received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RateLimitInfo {
    pub limit_requests: Option<u64>,
    pub remaining_requests: Option<u64>,
    pub reset_requests: Option<Duration>,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub reset_tokens: Option<Duration>,
}

/// What the limiter learned, persisted so a restart neither begins at a ceiling the
/// provider refused nor forgets the limits it stated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LimiterSnapshot {
    pub current_rpm: Option<f64>,
    pub current_tpm: Option<f64>,
    /// The pace learned from refusals, requests per minute.
    #[serde(default)]
    pub learned_rpm: Option<f64>,
    /// The limits the provider last stated, per minute.
    #[serde(default)]
    pub stated_rpm: Option<f64>,
    #[serde(default)]
    pub stated_tpm: Option<f64>,
}

#[derive(Clone, Debug)]
pub struct RateLimiter {
    settings: LimiterConfig,
    configured_rpm: Option<u32>,
    configured_tpm: Option<u32>,
    max_concurrency: Option<u32>,
    /// `None` while requests are unlimited (no `rpm` configured and none learned yet).
    requests: Option<Bucket>,
    /// `None` while tokens are unlimited.
    tokens: Option<Bucket>,
    in_flight: u32,
    paused_until: Option<Instant>,
    /// Attempts started so far: the sequence number of the next start.
    starts: u64,
    /// When the last refusal that counted was answered: refusals of attempts started
    /// before it describe the same overload and are not counted again.
    epoch: Option<Instant>,
    /// The per-minute limits the provider last stated.
    stated_rpm: Option<f64>,
    stated_tpm: Option<f64>,
    /// The pace learned from refusals nobody explained (`None` until the first).
    probe: Option<Probe>,
    /// The pace of the recent starts: where the first refusal of an unlimited provider
    /// starts the probe from.
    recent_starts: RecentStarts,
    /// Running average of token estimates, to tell how many attempts a token balance covers.
    typical_estimate: Option<f64>,
    /// The slow-start window on attempts in flight while requests have no limit yet (see
    /// `adapt.rs`); `None` once it ended or when it is off.
    slow_start: Option<u32>,
    /// Whether bursts the provider states are spent: until one misled us.
    bursts_trusted: bool,
    /// The starts charged to the request bucket a second time when a refusal was learned
    /// from (those in flight when it was answered; see `adapt.rs`).
    charged_again: std::ops::Range<u64>,
}

impl RateLimiter {
    pub fn new(config: &ProviderConfig, now: Instant) -> Self {
        let settings = config.limiter.clone();
        let bucket =
            |limit: Option<u32>| limit.map(|l| Bucket::full(f64::from(l), settings.min_share, now));
        RateLimiter {
            requests: bucket(config.rpm),
            tokens: bucket(config.tpm),
            settings,
            configured_rpm: config.rpm,
            configured_tpm: config.tpm,
            max_concurrency: config.max_concurrency,
            in_flight: 0,
            paused_until: None,
            starts: 0,
            epoch: None,
            stated_rpm: None,
            stated_tpm: None,
            probe: None,
            recent_starts: RecentStarts::new(now),
            typical_estimate: None,
            slow_start: Some(config.limiter.slow_start_window)
                .filter(|w| config.rpm.is_none() && *w > 0),
            bursts_trusted: true,
            charged_again: 0..0,
        }
    }

    /// How many attempts may start now: the whole request tokens, the concurrency headroom
    /// and what the token balance covers at the typical estimate, whichever is least; 0 while
    /// paused; at most [`UNLIMITED`].
    pub fn available(&self, now: Instant) -> u32 {
        if self.is_paused(now) {
            return 0;
        }
        let mut n = UNLIMITED;
        if let Some(requests) = &self.requests {
            n = n.min(requests.whole(now, UNLIMITED));
        }
        if let Some(max) = self.concurrency_limit() {
            n = n.min(max.saturating_sub(self.in_flight));
        }
        if let Some(tokens) = &self.tokens {
            let level = tokens.level_at(now);
            if !tokens.has(now, 0.0) {
                n = 0;
            } else if let Some(typical) = self.typical_estimate.filter(|t| *t >= 1.0) {
                // A start needs a balance that is not negative and is then charged in full.
                let covered = 1.0 + (level.max(0.0) / typical).floor();
                n = n.min(covered.min(f64::from(UNLIMITED)) as u32);
            }
        }
        n
    }

    /// Why an attempt could not start now, or `None` when it could.
    pub fn wait(&self, now: Instant) -> Option<Wait> {
        if let Some(max) = self.concurrency_limit()
            && self.in_flight >= max
        {
            return Some(Wait {
                until: None,
                reason: WaitReason::Concurrency,
            });
        }
        let mut blockers = Vec::new();
        if let Some(until) = self.paused_until.filter(|u| now < *u) {
            blockers.push((until, WaitReason::Paused));
        }
        if let Some(requests) = self.requests.as_ref().filter(|b| !b.has(now, 1.0)) {
            blockers.push((requests.ready_at(now, 1.0), WaitReason::Requests));
        }
        if let Some(tokens) = self.tokens.as_ref().filter(|b| !b.has(now, 0.0)) {
            blockers.push((tokens.ready_at(now, 0.0), WaitReason::Tokens));
        }
        blockers
            .into_iter()
            .max_by_key(|(until, _)| *until)
            .map(|(until, reason)| Wait {
                until: Some(until),
                reason,
            })
    }

    /// Counts one attempt start: one request, `estimated_tokens` (prompt plus `max_tokens`,
    /// computed by the caller) and one in-flight slot. A start needs a token balance that is
    /// not negative and is then charged its whole estimate, possibly into debt, so one large
    /// request is never starved by a small burst capacity.
    pub fn acquire(&mut self, now: Instant, estimated_tokens: u32) -> Result<Permit, Wait> {
        self.refresh(now);
        if let Some(wait) = self.wait(now) {
            return Err(wait);
        }
        let from_stated_burst = self.spends_stated_burst();
        if let Some(requests) = &mut self.requests {
            requests.take(now, 1.0);
        }
        self.recent_starts.record(now);
        let start = Start {
            seq: self.starts,
            at: now,
        };
        self.starts += 1;
        let estimate = f64::from(estimated_tokens);
        let charged = match &mut self.tokens {
            Some(tokens) => {
                tokens.take(now, estimate);
                true
            }
            None => false,
        };
        self.typical_estimate = Some(match self.typical_estimate {
            Some(t) => t + (estimate - t) * ESTIMATE_SMOOTHING,
            None => estimate,
        });
        self.in_flight = self.in_flight.saturating_add(1);
        Ok(Permit {
            estimated_tokens,
            charged,
            start,
            from_stated_burst,
        })
    }

    /// Ends an attempt: frees its in-flight slot and settles its token estimate against the
    /// actual usage (refunding or charging the difference). Without an actual count the
    /// estimate stands. The request itself is never refunded: the provider counted it.
    pub fn release(&mut self, permit: Permit, now: Instant, actual_tokens: Option<u32>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let (Some(tokens), Some(actual), true) = (&mut self.tokens, actual_tokens, permit.charged)
        else {
            return;
        };
        let over_estimate = f64::from(permit.estimated_tokens) - f64::from(actual);
        if over_estimate > 0.0 {
            tokens.give(now, over_estimate);
        } else {
            tokens.take(now, -over_estimate);
        }
    }

    /// Takes back a start that never reached the provider: its request, its token
    /// estimate and its in-flight slot are returned as if it had not been acquired.
    pub fn cancel(&mut self, permit: Permit, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(probe) = &mut self.probe {
            probe.note_unaccepted(permit.start);
        }
        if let Some(requests) = &mut self.requests {
            requests.give(now, 1.0);
        }
        if let (Some(tokens), true) = (&mut self.tokens, permit.charged) {
            tokens.give(now, f64::from(permit.estimated_tokens));
        }
    }

    /// What was learned, for persisting.
    pub fn snapshot(&self) -> LimiterSnapshot {
        LimiterSnapshot {
            current_rpm: self.current_rpm(),
            current_tpm: self.current_tpm(),
            learned_rpm: self.probe.as_ref().map(Probe::held),
            stated_rpm: self.stated_rpm,
            stated_tpm: self.stated_tpm,
        }
    }

    /// The adapted requests per minute; `None` while unlimited.
    pub fn current_rpm(&self) -> Option<f64> {
        self.requests.as_ref().map(Bucket::rate)
    }

    pub fn configured_rpm(&self) -> Option<u32> {
        self.configured_rpm
    }

    /// The highest the request rate goes: the configured or the stated rpm, whichever is
    /// lower; `None` when neither is known.
    pub fn rpm_ceiling(&self) -> Option<f64> {
        self.hard_ceiling(self.configured_rpm, self.stated_rpm)
    }

    /// The requests-per-minute limit the provider last stated in its headers.
    pub fn stated_rpm(&self) -> Option<f64> {
        self.stated_rpm
    }

    /// The pace learned from refusals nobody explained, requests per minute.
    pub fn learned_rpm(&self) -> Option<f64> {
        self.probe.as_ref().map(Probe::held)
    }

    /// The adapted tokens per minute; `None` while unlimited.
    pub fn current_tpm(&self) -> Option<f64> {
        self.tokens.as_ref().map(Bucket::rate)
    }

    pub fn configured_tpm(&self) -> Option<u32> {
        self.configured_tpm
    }

    pub fn tpm_ceiling(&self) -> Option<f64> {
        self.hard_ceiling(self.configured_tpm, self.stated_tpm)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    pub fn max_concurrency(&self) -> Option<u32> {
        self.max_concurrency
    }

    /// The end of the latest pause (possibly already past).
    pub fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }

    pub fn is_paused(&self, now: Instant) -> bool {
        self.paused_until.is_some_and(|until| now < until)
    }

    /// The cap on attempts in flight: the configured one, or the slow-start window while
    /// it lasts, whichever is less.
    fn concurrency_limit(&self) -> Option<u32> {
        match (self.max_concurrency, self.slow_start) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The slow-start window while it lasts.
    pub fn slow_start_window(&self) -> Option<u32> {
        self.slow_start
    }

    fn pause(&mut self, until: Instant) {
        self.paused_until = Some(self.paused_until.map_or(until, |u| u.max(until)));
    }

    /// The lower of a configured and a stated limit.
    fn hard_ceiling(&self, configured: Option<u32>, stated: Option<f64>) -> Option<f64> {
        match (configured.map(f64::from), stated) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

mod adapt;
mod burst;

#[cfg(test)]
mod bare_sim;
#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
