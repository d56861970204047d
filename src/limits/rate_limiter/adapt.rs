//! How the limiter's rates adapt to what the provider says.
//!
//! Adaptation is AIMD between a floor (`limiter.min_share` of the ceiling) and the ceiling
//! (the configured `rpm`/`tpm`):
//! - a 429 multiplies the rate by `decrease_factor` and pauses all starts until the provider's
//!   `retry-after` (or the reset of the exhausted limit, or `default_pause`). The decrease is
//!   applied at most once per pause: 429s that arrive while paused answer attempts started
//!   before the first one, so they describe the same overload and must not collapse the rate
//!   to the floor at once;
//! - a success adds `increase_step` of the ceiling back, except while paused (answers to
//!   attempts started before the pause would otherwise undo the decrease);
//! - a success whose `x-ratelimit-remaining-*` is below `remaining_threshold` of the limit
//!   tightens before a 429 happens: the rate drops to what spreads the remaining budget
//!   evenly until the reset (`remaining / time to reset`, a minute when no reset is named),
//!   never below the floor and never raised by this rule; with nothing left it pauses until
//!   the reset and leaves the rate alone (the budget comes back whole then).
//!
//! A provider with no configured `rpm` starts in slow start: attempts in flight are capped
//! by a window (`limiter.slow_start_window`, 8) that grows by one per success, so it doubles
//! per round trip, instead of the first backlog going out all at once and coming back as a
//! wall of 429s. Slow start ends at the first 429 (a ceiling is learned, below), when the
//! provider states its request limit (that limit becomes the ceiling), or when the window
//! reaches [`SLOW_START_END`].
//!
//! A provider with no configured `rpm` that still refuses us learns a ceiling: the limit its
//! headers state, or else the pace of our starts over the last minute (it just refused that
//! pace, so that is an upper bound on what it accepts, and the decrease starts below it).
//! Each later bare 429 brings that learned ceiling down to 5% under the rate it refused, so
//! the additive increase levels off just below what was last too much. A learned
//! ceiling follows later headers and lasts for the life of the process. Tokens learn only
//! from a stated limit; without one the request rate carries the adaptation.

use std::time::{Duration, Instant};

use super::{RateLimitInfo, RateLimiter};
use crate::limits::SLOW_START_END;
use crate::limits::bucket::Bucket;
use crate::limits::pause_end;

/// A learned ceiling settles this share below the rate a bare 429 refused, so the additive
/// increase levels off under the provider's limit instead of running into it again and
/// again.
const LEARNED_CEILING_MARGIN: f64 = 0.05;

/// How long a per-minute budget takes to reset when the provider names no reset time.
const DEFAULT_RESET_WINDOW: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dimension {
    Requests,
    Tokens,
}

/// One dimension's part of the provider's rate-limit headers.
struct Reading {
    limit: Option<u64>,
    remaining: Option<u64>,
    reset: Option<Duration>,
}

impl Dimension {
    fn reading(self, info: &RateLimitInfo) -> Reading {
        match self {
            Dimension::Requests => Reading {
                limit: info.limit_requests,
                remaining: info.remaining_requests,
                reset: info.reset_requests,
            },
            Dimension::Tokens => Reading {
                limit: info.limit_tokens,
                remaining: info.remaining_tokens,
                reset: info.reset_tokens,
            },
        }
    }
}

impl RateLimiter {
    /// The provider refused an attempt with a 429. Decreases the rate of the exhausted
    /// limit (both when the headers do not say which) unless already paused, then pauses
    /// until `retry_after`, else the reset of the exhausted limit, else `default_pause`. A
    /// pause is only ever extended, never cut short.
    pub fn on_rate_limited(
        &mut self,
        now: Instant,
        retry_after: Option<Duration>,
        info: Option<&RateLimitInfo>,
    ) {
        self.follow_stated_limits(now, info);
        self.slow_start = None;
        let exhausted = |dim: Dimension| info.is_some_and(|i| dim.reading(i).remaining == Some(0));
        let named = exhausted(Dimension::Requests) || exhausted(Dimension::Tokens);
        if !self.is_paused(now) {
            let factor = self.settings.decrease_factor;
            for dim in [Dimension::Requests, Dimension::Tokens] {
                if named && !exhausted(dim) {
                    continue;
                }
                let stated = info.and_then(|i| dim.reading(i).limit).is_some();
                let learned = !self.configured(dim) && !stated;
                let fresh = self.bucket_mut(dim).is_none();
                self.learn_ceiling(dim, now, info);
                if let Some(bucket) = self.bucket_mut(dim) {
                    // A learned ceiling comes down to just under the rate just refused: the
                    // additive increase levels off below what was last too much, not at a
                    // first burst's pace, which would bring the next 429 within a second.
                    if learned && !fresh {
                        let refused = bucket.rate();
                        bucket.set_ceiling(now, refused * (1.0 - LEARNED_CEILING_MARGIN));
                    }
                    let decreased = bucket.rate() * factor;
                    bucket.set_rate(now, decreased);
                }
            }
        }
        let reset = info.and_then(|i| {
            [Dimension::Requests, Dimension::Tokens]
                .into_iter()
                .filter(|d| exhausted(*d))
                .filter_map(|d| d.reading(i).reset)
                .max()
        });
        let pause = retry_after.or(reset).unwrap_or(self.settings.default_pause);
        self.pause(pause_end(now, pause));
    }

    /// An attempt succeeded: tighten where the provider says its budget runs low, otherwise
    /// climb back towards the ceiling (not while paused).
    pub fn on_success(&mut self, now: Instant, info: Option<&RateLimitInfo>) {
        self.follow_stated_limits(now, info);
        if let Some(window) = self.slow_start {
            let stated = info.and_then(|i| i.limit_requests);
            if let Some(limit) = stated.filter(|_| self.requests.is_none()) {
                // The provider says what it allows: that is the ceiling from now on.
                let min_share = self.settings.min_share;
                self.requests = Some(Bucket::full(limit as f64, min_share, now));
                self.slow_start = None;
            } else {
                let grown = window.saturating_add(1);
                self.slow_start = (grown < SLOW_START_END).then_some(grown);
            }
        }
        for dim in [Dimension::Requests, Dimension::Tokens] {
            let tightened = info.is_some_and(|i| self.tighten(dim, now, i));
            if tightened || self.is_paused(now) {
                continue;
            }
            let step = self.settings.increase_step;
            if let Some(bucket) = self.bucket_mut(dim) {
                let increased = bucket.rate() + step * bucket.ceiling();
                bucket.set_rate(now, increased);
            }
        }
    }

    fn bucket_mut(&mut self, dim: Dimension) -> Option<&mut Bucket> {
        match dim {
            Dimension::Requests => self.requests.as_mut(),
            Dimension::Tokens => self.tokens.as_mut(),
        }
    }

    fn configured(&self, dim: Dimension) -> bool {
        match dim {
            Dimension::Requests => self.configured_rpm.is_some(),
            Dimension::Tokens => self.configured_tpm.is_some(),
        }
    }

    /// Gives an unlimited dimension a ceiling before it adapts (see the module doc): the
    /// stated limit, or for requests the starts of the last minute. The new bucket is empty
    /// at that ceiling; the caller then moves its rate.
    fn learn_ceiling(&mut self, dim: Dimension, now: Instant, info: Option<&RateLimitInfo>) {
        let stated = info.and_then(|i| dim.reading(i).limit).map(|l| l as f64);
        let min_share = self.settings.min_share;
        match dim {
            Dimension::Requests if self.requests.is_none() => {
                let observed = self.recent_starts.per_minute(now).max(1.0);
                let ceiling = stated.unwrap_or(observed);
                self.requests = Some(Bucket::empty(ceiling, min_share, now));
            }
            Dimension::Tokens if self.tokens.is_none() => {
                self.tokens = stated.map(|ceiling| Bucket::empty(ceiling, min_share, now));
            }
            _ => {}
        }
    }

    /// A learned ceiling follows the limit the provider states; a configured one stays.
    fn follow_stated_limits(&mut self, now: Instant, info: Option<&RateLimitInfo>) {
        let Some(info) = info else { return };
        for dim in [Dimension::Requests, Dimension::Tokens] {
            if self.configured(dim) {
                continue;
            }
            if let (Some(limit), Some(bucket)) = (dim.reading(info).limit, self.bucket_mut(dim)) {
                bucket.set_ceiling(now, limit as f64);
            }
        }
    }

    /// The early tightening rule (see the module doc). Returns whether it applied.
    fn tighten(&mut self, dim: Dimension, now: Instant, info: &RateLimitInfo) -> bool {
        let reading = dim.reading(info);
        let (Some(limit), Some(remaining)) = (reading.limit, reading.remaining) else {
            return false;
        };
        let threshold = limit as f64 * self.settings.remaining_threshold;
        let window = reading.reset.unwrap_or(DEFAULT_RESET_WINDOW);
        // A budget that resets now needs no spreading.
        if limit == 0 || remaining as f64 >= threshold || window.is_zero() {
            return false;
        }
        self.learn_ceiling(dim, now, Some(info));
        if remaining == 0 {
            // Spent: wait for the reset. The rate stays: the budget comes back whole then,
            // and spreading nothing over the window would collapse it to the floor.
            let pause = reading.reset.unwrap_or(self.settings.default_pause);
            self.pause(pause_end(now, pause));
            return true;
        }
        let Some(bucket) = self.bucket_mut(dim) else {
            return false;
        };
        let spread = remaining as f64 / (window.as_secs_f64() / 60.0);
        if spread < bucket.rate() {
            bucket.set_rate(now, spread);
        }
        true
    }
}
