//! The built-in simulator's `[providers.sim]`: how long it takes to answer and which share
//! of attempts it fails, refuses or never answers. The simulator is in
//! [`crate::providers`].

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, duration, invalid};

/// The built-in `sim` provider: latency uniformly in `latency ± latency_jitter`, and the
/// given shares of attempts answered as a server error, a rate limit, or never.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    #[serde(with = "duration")]
    pub latency: Duration,
    #[serde(with = "duration")]
    pub latency_jitter: Duration,
    /// Share of attempts that fail like a 500.
    pub error_rate: f64,
    /// Share of attempts refused like a 429.
    pub rate_limit_rate: f64,
    /// `retry-after` the simulated 429 asks for.
    #[serde(with = "duration")]
    pub rate_limit_retry_after: Duration,
    /// Share of attempts that never answer (they end by the attempt timeout).
    pub hang_rate: f64,
    /// Pause between streamed deltas (`stream: true` runs), after the latency.
    #[serde(with = "duration")]
    pub delta_interval: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            latency: Duration::from_millis(200),
            latency_jitter: Duration::from_millis(100),
            error_rate: 0.0,
            rate_limit_rate: 0.0,
            rate_limit_retry_after: Duration::from_secs(1),
            hang_rate: 0.0,
            delta_interval: Duration::ZERO,
        }
    }
}

impl SimConfig {
    /// `at` is the provider's key path, `providers[i]`. Checked for every kind: the section
    /// is accepted (and ignored) by the others, but never with nonsense in it.
    pub(super) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        for (field, rate) in [
            ("error_rate", self.error_rate),
            ("rate_limit_rate", self.rate_limit_rate),
            ("hang_rate", self.hang_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(invalid(
                    format!("{at}.sim.{field}"),
                    "must be between 0 and 1",
                ));
            }
        }
        // The shares pick disjoint outcomes of one draw, so together they cannot exceed all.
        if self.error_rate + self.rate_limit_rate + self.hang_rate > 1.0 {
            return Err(invalid(
                format!("{at}.sim"),
                "error_rate + rate_limit_rate + hang_rate must not exceed 1",
            ));
        }
        Ok(())
    }
}
