//! Retry delays: exponential backoff with full jitter, and the provider's own word.

use std::time::Duration;

/// Exponential backoff parameters (`retry.backoff_base`, `retry.backoff_cap` in config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    /// The longest wait a provider may ask for (`retry.provider_delay_cap`): a garbled or
    /// hostile `retry-after` must not park a run for years.
    pub provider_cap: Duration,
}

impl Backoff {
    /// The ceiling of the jitter window after failed attempt `attempt` (1-based):
    /// `min(cap, base * 2^(attempt-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(32);
        let factor = 1u64 << exponent;
        let base_ms = self.base.as_millis() as u64;
        let ms = base_ms.saturating_mul(factor);
        Duration::from_millis(ms).min(self.cap)
    }

    /// Full jitter: a uniformly random delay in `[0, ceiling]`, where `unit_random` is a
    /// sample from `[0, 1)`. Full jitter spreads a burst of failures over the whole window,
    /// so they do not come back as a synchronised retry storm.
    pub fn delay(&self, attempt: u32, unit_random: f64) -> Duration {
        let r = unit_random.clamp(0.0, 1.0);
        self.ceiling(attempt).mul_f64(r)
    }
}

/// The delay before the next attempt: our jittered backoff, unless the provider asked for
/// a longer wait, in which case the provider wins (it knows when its window resets), up to
/// `provider_cap`.
pub fn retry_delay(
    backoff: &Backoff,
    attempt: u32,
    provider_delay: Option<Duration>,
    unit_random: f64,
) -> Duration {
    let ours = backoff.delay(attempt, unit_random);
    match provider_delay.map(|d| d.min(backoff.provider_cap)) {
        Some(theirs) if theirs > ours => theirs,
        _ => ours,
    }
}

#[cfg(test)]
impl Backoff {
    /// The configuration's defaults, for the tests of the retry arithmetic.
    pub(super) fn example() -> Backoff {
        Backoff {
            base: Duration::from_millis(300),
            cap: Duration::from_secs(30),
            provider_cap: Duration::from_secs(600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn backoff() -> Backoff {
        Backoff::example()
    }

    #[test]
    fn ceiling_doubles_from_the_base_then_stops_at_the_cap() {
        let b = backoff();
        assert_eq!(b.ceiling(1), Duration::from_millis(300));
        assert_eq!(b.ceiling(2), Duration::from_millis(600));
        assert_eq!(b.ceiling(3), Duration::from_millis(1200));
        assert_eq!(b.ceiling(8), Duration::from_secs(30));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
    }

    proptest! {
        #[test]
        fn delay_stays_within_the_jitter_window(attempt in 1u32..200, r in 0.0f64..1.0) {
            let b = backoff();
            let d = b.delay(attempt, r);
            prop_assert!(d <= b.ceiling(attempt));
            prop_assert!(d <= b.cap);
        }

        #[test]
        fn ceiling_never_decreases(attempt in 1u32..100) {
            let b = backoff();
            prop_assert!(b.ceiling(attempt) <= b.ceiling(attempt + 1));
        }

        #[test]
        fn delay_is_monotonic_in_the_random_sample(attempt in 1u32..50, a in 0.0f64..1.0, c in 0.0f64..1.0) {
            let b = backoff();
            let (lo, hi) = if a <= c { (a, c) } else { (c, a) };
            prop_assert!(b.delay(attempt, lo) <= b.delay(attempt, hi));
        }

        #[test]
        fn provider_delay_wins_only_when_longer(attempt in 1u32..20, r in 0.0f64..1.0, theirs_ms in 0u64..1_200_000) {
            let b = backoff();
            let theirs = Duration::from_millis(theirs_ms);
            let ours = b.delay(attempt, r);
            let got = retry_delay(&b, attempt, Some(theirs), r);
            prop_assert_eq!(got, ours.max(theirs.min(b.provider_cap)));
            prop_assert_eq!(retry_delay(&b, attempt, None, r), ours);
        }
    }
}
