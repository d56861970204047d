//! The adaptive attempt timeout: a run that names no timeout gets one worked out from its
//! provider's and model's recent successful latencies (their p95 times a factor), stretched
//! by attempts that timed out, plus a bounded penalty for queue pressure (attempts already
//! in flight against the provider), kept between a floor and its class's cap.
//!
//! Why timeouts stretch it: successes alone cannot raise the timeout past a provider that
//! slowed beyond it, since then nothing succeeds to show the new pace. So an attempt that
//! ran out of an adaptive timeout `T` stretches the next ones to at least `growth × T`
//! (default 2). Attempts that ran out of the same `T` at once stretch it once, not once
//! each, so a burst of timeouts cannot throw the timeout to its cap. The stretch is dropped
//! once the successes' p95 covers it, and steps down by `growth` after
//! [`STEP_DOWN_AFTER`] successes with no timeout, so a provider that only rarely hangs
//! keeps a timeout set by its real pace.
//!
//! The bound this gives: when a provider's latency jumps to at most `s` times its old p95
//! (and the class cap leaves room for it), an attempt's timeout starts at no less than
//! `factor × p95` and each timeout of a run multiplies the timeout of its next attempt by
//! at least `growth`, so every run completes after at most `ceil(log_growth(s / factor))`
//! generation timeouts: 3 for a tenfold slow-down with the defaults (factor 2, growth 2),
//! within the default 5 attempts.

mod window;

#[cfg(test)]
mod tests;

pub use window::{LatencyWindow, ModelWindows};

use std::time::Duration;

use crate::config::QueueConfig;
use crate::run::Class;

/// Successes with no timeout after which the stretch steps down by one growth. One timeout
/// in 20 attempts is the 5% the p95 leaves out: a provider timing out more often than that
/// keeps its stretch, one timing out less often loses it. It is more than the samples the
/// p95 of a full window needs to take in a new pace, and more than the p95 may go
/// unrefreshed, so a provider that truly slowed has its p95 cover the stretch first.
pub const STEP_DOWN_AFTER: u32 = 20;

/// The adaptive attempt timeout settings (from `[queue]`).
#[derive(Clone, Debug)]
pub struct TimeoutPolicy {
    pub default: Duration,
    pub floor: Duration,
    pub live_cap: Duration,
    pub background_cap: Duration,
    pub min_samples: u32,
    pub factor: f64,
    pub penalty: Duration,
    /// The most queue pressure may add.
    pub penalty_cap: Duration,
    /// How much a timeout stretches the next timeouts (above 1).
    pub growth: f64,
}

impl TimeoutPolicy {
    pub fn from_config(q: &QueueConfig) -> TimeoutPolicy {
        TimeoutPolicy {
            default: q.attempt_timeout,
            floor: q.attempt_timeout_floor,
            live_cap: q.live_attempt_timeout_cap,
            background_cap: q.background_attempt_timeout_cap,
            min_samples: q.adaptive_timeout_min_samples,
            factor: q.adaptive_timeout_factor,
            penalty: q.adaptive_timeout_penalty,
            penalty_cap: q.adaptive_timeout_penalty_cap,
            growth: q.adaptive_timeout_growth,
        }
    }

    /// The larger of the learned timeout (p95 × factor, or the configured default until
    /// there are enough samples) and the stretch left by timeouts, plus `penalty` per
    /// attempt in flight up to `penalty_cap`, between the floor and the class cap.
    pub fn timeout(&self, window: &mut LatencyWindow, in_flight: u32, class: Class) -> Duration {
        let cap = match class {
            Class::Live => self.live_cap,
            Class::Background => self.background_cap,
        };
        let learned = self.learned(window);
        let base = window.stretch.map_or(learned, |s| s.max(learned));
        let pressure = self.penalty.saturating_mul(in_flight).min(self.penalty_cap);
        base.saturating_add(pressure)
            .clamp(self.floor.min(cap), cap)
    }

    /// What the successes say: p95 × factor, or the default until there are enough.
    fn learned(&self, window: &mut LatencyWindow) -> Duration {
        if window.len() < self.min_samples.max(1) as usize {
            return self.default;
        }
        window.p95().mul_f64(self.factor)
    }

    /// An attempt succeeded after `took`: a sample of the pace, and a calm step towards
    /// letting the stretch go.
    pub fn record_success(&self, window: &mut LatencyWindow, took: Duration) {
        window.push(took);
        let Some(stretch) = window.stretch else {
            return;
        };
        let learned = self.learned(window);
        if learned >= stretch {
            window.stretch = None;
            return;
        }
        window.calm += 1;
        if window.calm >= STEP_DOWN_AFTER {
            window.calm = 0;
            let lower = stretch.div_f64(self.growth);
            window.stretch = (lower > learned).then_some(lower);
        }
    }

    /// An attempt ran out of its adaptive timeout `limit`: the next attempts get at least
    /// `growth × limit`. Returns the new stretch when this raised it.
    pub fn record_timeout(&self, window: &mut LatencyWindow, limit: Duration) -> Option<Duration> {
        let raised =
            Duration::try_from_secs_f64(limit.as_secs_f64() * self.growth).unwrap_or(Duration::MAX);
        window.calm = 0;
        if window.stretch.is_some_and(|s| s >= raised) {
            return None;
        }
        window.stretch = Some(raised);
        Some(raised)
    }
}
