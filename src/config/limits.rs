//! A provider's protections: `[providers.limiter]` (how the adaptive rate limiter moves
//! between its floor and the configured ceiling) and `[providers.breaker]` (when the
//! circuit breaker opens and how long it stays open). The logic is in [`crate::limits`].

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, duration, invalid};

/// How the adaptive rate limiter reads the provider and learns what it allows.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimiterConfig {
    /// A refusal nobody explained, with no estimate of the true limit yet, multiplies the
    /// pace by this factor (0 < f < 1).
    pub decrease_factor: f64,
    /// No longer used (the pace rises with time, see `probe_every`); still accepted so
    /// existing configuration files load.
    pub increase_step: f64,
    /// The rate never adapts below this share of the configured or stated rate.
    pub min_share: f64,
    /// No longer used (a low remaining budget lowers the level, never the rate); still
    /// accepted so existing configuration files load.
    pub remaining_threshold: f64,
    /// Pause after a 429 that neither names a wait nor says which budget is spent.
    #[serde(with = "duration")]
    pub default_pause: Duration,
    /// How the provider's `remaining`/`reset` headers are read: `bucket` (it refills
    /// continuously; the reset is when it is full again) or `fixed` (a budget that comes
    /// back whole at the reset).
    pub window: LimitWindow,
    /// With refusals and no headers, the pace holds just under the estimated limit for
    /// about this many attempts before probing upwards again: more means fewer refusals,
    /// fewer means a raised limit is found sooner.
    pub probe_every: u32,
    /// How far under the estimated limit the pace holds (0 < m < 1).
    pub probe_margin: f64,
    /// With no `rpm` configured, attempts in flight start limited to this window, which
    /// grows by one per success (doubling per round trip) until the provider states its
    /// limit, refuses (a ceiling is learned) or the window reaches
    /// [`SLOW_START_END`](crate::limits::SLOW_START_END). 0 turns slow start off.
    pub slow_start_window: u32,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterConfig {
            decrease_factor: 0.5,
            increase_step: 0.02,
            min_share: 0.05,
            remaining_threshold: 0.1,
            default_pause: Duration::from_secs(1),
            window: LimitWindow::Bucket,
            probe_every: 100,
            probe_margin: 0.03,
            slow_start_window: 8,
        }
    }
}

impl LimiterConfig {
    /// `at` is the provider's key path, `providers[i]`.
    pub(super) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        // The comparisons are written so that NaN fails them too.
        if !(self.decrease_factor > 0.0 && self.decrease_factor < 1.0) {
            return Err(invalid(
                format!("{at}.limiter.decrease_factor"),
                "must be between 0 and 1 (exclusive)",
            ));
        }
        if self.probe_every == 0 {
            return Err(invalid(
                format!("{at}.limiter.probe_every"),
                "must be at least 1",
            ));
        }
        if !(self.probe_margin > 0.0 && self.probe_margin < 1.0) {
            return Err(invalid(
                format!("{at}.limiter.probe_margin"),
                "must be between 0 and 1 (exclusive)",
            ));
        }
        for (field, v) in [
            ("increase_step", self.increase_step),
            ("min_share", self.min_share),
            ("remaining_threshold", self.remaining_threshold),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(invalid(
                    format!("{at}.limiter.{field}"),
                    "must be above 0 and at most 1",
                ));
            }
        }
        Ok(())
    }
}

/// How a provider's limit refills, as its `remaining` and `reset` headers describe it.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LimitWindow {
    /// Continuous refill (OpenAI and Anthropic): the reset is the time until it is full.
    #[default]
    Bucket,
    /// A budget per window that comes back whole at the reset.
    Fixed,
}

/// The per-provider circuit breaker.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures (5xx, timeouts, connection errors) that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before one probe is let through.
    #[serde(with = "duration")]
    pub open_interval: Duration,
    /// Random extra share of `open_interval` (0.2 = up to 20% longer), so replicas do
    /// not probe in lockstep.
    pub open_jitter: f64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_interval: Duration::from_secs(15),
            open_jitter: 0.2,
        }
    }
}

impl BreakerConfig {
    /// `at` is the provider's key path, `providers[i]`.
    pub(super) fn validate(&self, at: &str) -> Result<(), ConfigError> {
        if self.failure_threshold == 0 {
            return Err(invalid(
                format!("{at}.breaker.failure_threshold"),
                "must be at least 1",
            ));
        }
        if !(0.0..=1.0).contains(&self.open_jitter) {
            return Err(invalid(
                format!("{at}.breaker.open_jitter"),
                "must be between 0 and 1",
            ));
        }
        Ok(())
    }
}
