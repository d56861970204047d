//! The share of a provider's recent attempts that timed out, which admission control reads
//! to turn background work away from a slow provider. The window decays with a half-life,
//! so old attempts fade rather than drop off a cliff.

use std::time::{Duration, Instant};

/// The decaying counts of attempts and of timeouts among them.
#[derive(Debug)]
pub struct TimeoutRate {
    half_life: Duration,
    timed_out: f64,
    total: f64,
    at: Instant,
}

impl TimeoutRate {
    /// An empty window that starts decaying at `now`.
    pub fn new(half_life: Duration, now: Instant) -> TimeoutRate {
        TimeoutRate {
            half_life,
            timed_out: 0.0,
            total: 0.0,
            at: now,
        }
    }

    fn decay(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        let keep = 0.5f64.powf(dt / self.half_life.as_secs_f64());
        self.timed_out *= keep;
        self.total *= keep;
        self.at = now;
    }

    pub fn record(&mut self, now: Instant, timed_out: bool) {
        self.decay(now);
        self.total += 1.0;
        if timed_out {
            self.timed_out += 1.0;
        }
    }

    /// The share, once the window holds at least `min_samples` (decayed) attempts.
    pub fn share(&mut self, now: Instant, min_samples: u32) -> Option<f64> {
        self.decay(now);
        (self.total >= f64::from(min_samples)).then(|| self.timed_out / self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HALF_LIFE: Duration = Duration::from_secs(60);

    #[test]
    fn the_share_waits_for_enough_attempts() {
        let t0 = Instant::now();
        let mut rate = TimeoutRate::new(HALF_LIFE, t0);
        rate.record(t0, true);
        rate.record(t0, false);
        assert_eq!(rate.share(t0, 3), None);
        rate.record(t0, false);
        rate.record(t0, false);
        assert_eq!(rate.share(t0, 3), Some(0.25));
    }

    #[test]
    fn old_attempts_fade_with_the_half_life() {
        let t0 = Instant::now();
        let mut rate = TimeoutRate::new(HALF_LIFE, t0);
        for _ in 0..4 {
            rate.record(t0, true);
        }
        // One half-life on, the four timeouts weigh as two: below a minimum of three.
        assert_eq!(rate.share(t0 + HALF_LIFE, 3), None);
        assert_eq!(rate.share(t0 + HALF_LIFE, 2), Some(1.0));
        // Four fresh successes now outweigh the faded timeouts two to one.
        for _ in 0..4 {
            rate.record(t0 + HALF_LIFE, false);
        }
        let share = rate.share(t0 + HALF_LIFE, 1).expect("enough attempts");
        assert!((share - 2.0 / 6.0).abs() < 1e-9, "{share}");
    }
}
