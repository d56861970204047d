//! Live work first: `[queue]` (deadlines to first start, per-attempt timeouts and their
//! adaptive form, per-key caps, the sweep) and `[admission]` (when background work is
//! refused at enqueue).

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, duration, invalid};

/// The largest `queue.adaptive_timeout_growth` accepted.
const MAX_ADAPTIVE_TIMEOUT_GROWTH: f64 = 10.0;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Default deadline to first start for live runs (`queue_timeout_ms` overrides).
    #[serde(with = "duration")]
    pub live_queue_timeout: Duration,
    /// Default deadline to first start for background runs.
    #[serde(with = "duration")]
    pub background_queue_timeout: Duration,
    /// Per-attempt timeout when the request gives none, until the provider and model have
    /// enough successful samples for the adaptive timeout.
    #[serde(with = "duration")]
    pub attempt_timeout: Duration,
    /// The adaptive timeout never goes below this.
    #[serde(with = "duration")]
    pub attempt_timeout_floor: Duration,
    /// Successful attempts a provider and model need before their timeout adapts.
    pub adaptive_timeout_min_samples: u32,
    /// Adaptive timeout = recent p95 successful latency × this factor + the depth penalty.
    pub adaptive_timeout_factor: f64,
    /// Added to the adaptive timeout per attempt in flight against the provider: a busy
    /// provider answers slower.
    #[serde(with = "duration")]
    pub adaptive_timeout_penalty: Duration,
    /// The most the in-flight penalty adds: queue pressure lengthens the timeout, but a
    /// deep queue must not stretch it without bound.
    #[serde(with = "duration")]
    pub adaptive_timeout_penalty_cap: Duration,
    /// How much an attempt that ran out of its adaptive timeout stretches the next ones:
    /// a provider that slowed past the timeout raises it by this factor per timeout.
    pub adaptive_timeout_growth: f64,
    /// Longest per-attempt timeout a live run may ask for.
    #[serde(with = "duration")]
    pub live_attempt_timeout_cap: Duration,
    /// Longest per-attempt timeout a background run may ask for.
    #[serde(with = "duration")]
    pub background_attempt_timeout_cap: Duration,
    /// Most live runs sharing a `concurrency_key` in flight at once (none: unlimited).
    pub live_key_cap: Option<u32>,
    /// Most background runs sharing a `concurrency_key` in flight at once (none: unlimited).
    pub background_key_cap: Option<u32>,
    /// How often runs past their queue deadline are ended (timed out or dropped).
    #[serde(with = "duration")]
    pub sweep_interval: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            live_queue_timeout: Duration::from_secs(20),
            background_queue_timeout: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(60),
            attempt_timeout_floor: Duration::from_secs(5),
            adaptive_timeout_min_samples: 20,
            adaptive_timeout_factor: 2.0,
            adaptive_timeout_penalty: Duration::from_millis(50),
            adaptive_timeout_penalty_cap: Duration::from_secs(30),
            adaptive_timeout_growth: 2.0,
            live_attempt_timeout_cap: Duration::from_secs(120),
            background_attempt_timeout_cap: Duration::from_secs(300),
            live_key_cap: None,
            background_key_cap: Some(1),
            sweep_interval: Duration::from_millis(500),
        }
    }
}

impl QueueConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        // A factor below 1 would time attempts out faster than the provider usually answers.
        if self.adaptive_timeout_factor.is_nan() || self.adaptive_timeout_factor < 1.0 {
            return Err(invalid(
                "queue.adaptive_timeout_factor",
                "must be at least 1",
            ));
        }
        // Written so that NaN fails too. At 1 a timeout would not raise the next one, and
        // a provider that slowed past the timeout would time out for good; past the
        // maximum one timeout would leap over the pace it was looking for.
        if !(self.adaptive_timeout_growth > 1.0
            && self.adaptive_timeout_growth <= MAX_ADAPTIVE_TIMEOUT_GROWTH)
        {
            return Err(invalid(
                "queue.adaptive_timeout_growth",
                format!("must be above 1 and at most {MAX_ADAPTIVE_TIMEOUT_GROWTH}"),
            ));
        }
        if self.live_attempt_timeout_cap > self.background_attempt_timeout_cap {
            return Err(invalid(
                "queue.live_attempt_timeout_cap",
                "must not be longer than queue.background_attempt_timeout_cap",
            ));
        }
        if self.sweep_interval.is_zero() {
            return Err(invalid("queue.sweep_interval", "must be longer than zero"));
        }
        for (name, cap) in [
            ("queue.live_key_cap", self.live_key_cap),
            ("queue.background_key_cap", self.background_key_cap),
        ] {
            if cap == Some(0) {
                return Err(invalid(
                    name,
                    "must be at least 1 (leave it out for no cap)",
                ));
            }
        }
        if self.attempt_timeout.is_zero() {
            return Err(invalid("queue.attempt_timeout", "must be longer than zero"));
        }
        Ok(())
    }
}

/// Background admission control at `POST /enqueue` (live runs are never refused).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Background work is refused (`live_backlog`) while more live runs than this are due
    /// and waiting for the provider.
    pub live_backlog: u32,
    /// Background runs a session may enqueue per rolling hour and concurrency key
    /// (`quota`).
    pub session_hourly_quota: u32,
    /// Background work is refused (`provider_unhealthy`) while the provider's recent
    /// share of attempts that timed out is above this.
    pub timeout_rate_threshold: f64,
    /// Half-life of the decaying window the timeout share is measured over.
    #[serde(with = "duration")]
    pub timeout_rate_half_life: Duration,
    /// Attempts the window must hold before the timeout share is trusted.
    pub timeout_rate_min_samples: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            live_backlog: 0,
            session_hourly_quota: 100,
            timeout_rate_threshold: 0.25,
            timeout_rate_half_life: Duration::from_secs(60),
            timeout_rate_min_samples: 5,
        }
    }
}

impl AdmissionConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        // Written so that NaN fails too: a share above 0 and at most 1.
        if !(self.timeout_rate_threshold > 0.0 && self.timeout_rate_threshold <= 1.0) {
            return Err(invalid(
                "admission.timeout_rate_threshold",
                "must be above 0 and at most 1",
            ));
        }
        if self.timeout_rate_half_life.is_zero() {
            return Err(invalid(
                "admission.timeout_rate_half_life",
                "must be longer than zero",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load_for_test as load;

    #[test]
    fn a_growth_that_cannot_raise_the_timeout_is_refused() {
        for growth in ["1.0", "0.5", "nan", "11.0"] {
            let msg = load(
                &format!("[queue]\nadaptive_timeout_growth = {growth}\n"),
                &[],
            )
            .unwrap_err()
            .to_string();
            assert!(msg.contains("queue.adaptive_timeout_growth"), "{msg}");
        }
        let c = load("[queue]\nadaptive_timeout_growth = 1.5\n", &[]).unwrap();
        assert_eq!(c.queue.adaptive_timeout_growth, 1.5);
    }
}
