//! Spending a burst the provider states. OpenAI and Anthropic refill a bucket as deep as
//! the per-minute limit, and say how full it is (`remaining`) and how long it takes to be
//! full again (`reset`). When it holds more than our own bucket (one second of the rate),
//! the surplus may be spent at once: the provider said it would accept it.
//!
//! The statement is checked before it is believed: `remaining` plus what refills during
//! `reset` must come to the stated limit, within a second of the rate (Anthropic writes the
//! reset in whole seconds) and one unit. A limit stated per minute but enforced over each
//! second, with `remaining` scaled to the minute, fails that check; where it passes
//! nonetheless (at high rates the scaled numbers come close), the first refusal of an
//! attempt the stated burst admitted stops burst spending for good, so a provider whose
//! numbers mislead costs one round of refusals, not one per answer.
//!
//! What is spent is never more than stated: `remaining`, less what is in flight (each may
//! be counted after this answer), less one second of the rate kept back for answers that
//! arrive out of order.

use std::time::{Duration, Instant};

use super::{Permit, RateLimitInfo, RateLimiter};
use crate::config::LimitWindow;

/// How far a stated reset may be from the time the stated deficit takes to refill: Anthropic
/// rounds its reset instant to the whole second.
const RESET_RESOLUTION: Duration = Duration::from_secs(1);

/// Whether `remaining` and `reset` read as a continuously refilled bucket as deep as its
/// stated per-minute `limit`.
fn reads_as_a_minute_bucket(limit: f64, remaining: f64, reset: Duration) -> bool {
    let per_sec = limit / 60.0;
    let refilled_by_reset = reset.as_secs_f64() * per_sec;
    let slack = RESET_RESOLUTION.as_secs_f64() * per_sec + 1.0;
    (remaining + refilled_by_reset - limit).abs() <= slack
}

impl RateLimiter {
    /// Lifts each bucket to the burst an answer states, where the statement holds up (see
    /// the module doc).
    pub(super) fn spend_stated_bursts(&mut self, now: Instant, info: &RateLimitInfo) {
        if !self.bursts_trusted || self.settings.window != LimitWindow::Bucket {
            return;
        }
        let in_flight = f64::from(self.in_flight);
        let typical = self.typical_estimate.unwrap_or(1.0).max(1.0);
        for (limit, remaining, reset, bucket, unit) in [
            (
                info.limit_requests,
                info.remaining_requests,
                info.reset_requests,
                self.requests.as_mut(),
                1.0,
            ),
            (
                info.limit_tokens,
                info.remaining_tokens,
                info.reset_tokens,
                self.tokens.as_mut(),
                typical,
            ),
        ] {
            let (Some(limit), Some(remaining), Some(reset), Some(bucket)) =
                (limit, remaining, reset, bucket)
            else {
                continue;
            };
            let (limit, remaining) = (limit as f64, remaining as f64);
            if !reads_as_a_minute_bucket(limit, remaining, reset) {
                continue;
            }
            let kept_back = limit / 60.0;
            bucket.lift(now, remaining - in_flight * unit - kept_back);
        }
    }

    /// Whether a start now would spend a stated burst.
    pub(super) fn spends_stated_burst(&self) -> bool {
        [&self.requests, &self.tokens]
            .into_iter()
            .flatten()
            .any(|b| b.spends_stated_burst())
    }

    /// The provider refused an attempt a stated burst admitted: its statements are not
    /// to be spent, now or later.
    pub(super) fn distrust_bursts_if_refused(&mut self, now: Instant, permit: &Permit) {
        if !permit.from_stated_burst {
            return;
        }
        self.bursts_trusted = false;
        for bucket in [&mut self.requests, &mut self.tokens].into_iter().flatten() {
            bucket.drain(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{headers, provider, secs};
    use super::*;

    fn minute_bucket(limit: u64, remaining: u64) -> RateLimitInfo {
        // OpenAI: the reset is the time the deficit takes to refill.
        let deficit = (limit - remaining) as f64;
        let reset = Duration::from_secs_f64(deficit * 60.0 / limit as f64);
        headers(limit, remaining, Some(reset))
    }

    #[test]
    fn a_stated_minute_bucket_is_spent_at_once() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(&provider(None, None, None), t0);
        l.on_success(t0, Some(&minute_bucket(600, 599)));
        // 599 less one second of the rate kept back.
        assert_eq!(l.available(t0), 589);
        let p = l.acquire(t0, 0).unwrap();
        assert!(p.from_stated_burst);
        l.release(p, t0, None);
        // In flight answers are counted against what is stated.
        let held: Vec<Permit> = (0..100).map(|_| l.acquire(t0, 0).unwrap()).collect();
        l.on_success(t0, Some(&minute_bucket(600, 400)));
        assert_eq!(
            l.available(t0),
            488,
            "not lifted: 400 − 100 in flight − 10 is less"
        );
        for p in held {
            l.release(p, t0, None);
        }
    }

    #[test]
    fn a_per_second_limit_scaled_to_the_minute_is_not_spent() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(&provider(None, None, None), t0);
        // 9 of a 10-a-second bucket, written as 540 of 600 a minute, full in 0.1 s.
        l.on_success(
            t0,
            Some(&headers(600, 540, Some(Duration::from_millis(100)))),
        );
        assert_eq!(l.available(t0), 10, "one second of the rate");
        // Anthropic's whole-second reset still reads as a minute bucket.
        l.on_success(t0, Some(&headers(600, 540, Some(secs(7)))));
        assert_eq!(l.available(t0), 530);
    }

    #[test]
    fn a_refusal_of_what_a_stated_burst_admitted_stops_burst_spending() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(&provider(None, None, None), t0);
        l.on_success(t0, Some(&minute_bucket(600, 599)));
        let p = l.acquire(t0, 0).unwrap();
        l.on_refused(t0, &p, None, Some(&headers(600, 0, None)));
        l.release(p, t0, None);
        l.on_success(t0 + secs(60), Some(&minute_bucket(600, 599)));
        assert_eq!(
            l.available(t0 + secs(60)),
            10,
            "one second of the rate only"
        );
    }
}
