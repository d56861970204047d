//! The worker pool, `[dispatch]` (slots, batches, leases and their heartbeat, the leader's
//! lease), and what happens to a failed attempt, `[retry]` (how many attempts, how long
//! between them).

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, duration, invalid};
use crate::run::{Backoff, MAX_ATTEMPTS_RANGE};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// Worker slots: attempts that may run at once in this process.
    pub slots: usize,
    /// Most runs claimed by one statement.
    pub claim_batch: usize,
    /// How long a claim is valid without a heartbeat; an expired lease is rescued.
    #[serde(with = "duration")]
    pub lease: Duration,
    /// How often in-flight leases are extended (one statement for all of them).
    #[serde(with = "duration")]
    pub heartbeat_interval: Duration,
    /// How often the rescuer looks for expired leases.
    #[serde(with = "duration")]
    pub rescue_interval: Duration,
    /// Longest the producer sleeps with nothing due, as a safety net for a lost wake-up.
    #[serde(with = "duration")]
    pub idle_poll: Duration,
    /// On SIGTERM, how long in-flight attempts may run before they are released.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Most finished attempts written by one statement.
    pub complete_batch: usize,
    /// Most rows one enqueue transaction groups from concurrent requests.
    pub enqueue_batch: usize,
    /// The maintenance leader's lease (rescuer, sweeper, retention run on one process):
    /// renewed every third of it, taken over by another process once it expires.
    #[serde(with = "duration")]
    pub leader_lease: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            slots: 20,
            claim_batch: 100,
            lease: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            rescue_interval: Duration::from_secs(5),
            idle_poll: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(20),
            complete_batch: 256,
            enqueue_batch: 256,
            leader_lease: Duration::from_secs(15),
        }
    }
}

impl DispatchConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.slots == 0 {
            return Err(invalid("dispatch.slots", "must be at least 1"));
        }
        if self.claim_batch == 0 || self.complete_batch == 0 || self.enqueue_batch == 0 {
            return Err(invalid(
                "dispatch",
                "claim_batch, complete_batch and enqueue_batch must be at least 1",
            ));
        }
        if self.heartbeat_interval >= self.lease {
            return Err(invalid(
                "dispatch.heartbeat_interval",
                format!(
                    "must be shorter than dispatch.lease ({}), or leases expire between heartbeats",
                    humantime::format_duration(self.lease)
                ),
            ));
        }
        for (name, v) in [
            ("dispatch.rescue_interval", self.rescue_interval),
            ("dispatch.idle_poll", self.idle_poll),
            ("dispatch.lease", self.lease),
            ("dispatch.leader_lease", self.leader_lease),
        ] {
            if v.is_zero() {
                return Err(invalid(name, "must be longer than zero"));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts a run gets when the request does not say (within
    /// [`MAX_ATTEMPTS_RANGE`](crate::run::MAX_ATTEMPTS_RANGE)).
    pub max_attempts: u32,
    /// First backoff window; doubles per attempt (full jitter).
    #[serde(with = "duration")]
    pub backoff_base: Duration,
    /// Longest backoff window.
    #[serde(with = "duration")]
    pub backoff_cap: Duration,
    /// Longest wait a provider's `retry-after` (or reset header) is honoured for.
    #[serde(with = "duration")]
    pub provider_delay_cap: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 5,
            backoff_base: Duration::from_millis(300),
            backoff_cap: Duration::from_secs(30),
            provider_delay_cap: Duration::from_secs(600),
        }
    }
}

impl RetryConfig {
    /// The backoff these settings describe.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            base: self.backoff_base,
            cap: self.backoff_cap,
            provider_cap: self.provider_delay_cap,
        }
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.validate_at("retry")
    }

    /// Checks the settings as written under `at` (`retry`, or `providers[i]` for a
    /// provider's own, which take `[retry]`'s where they are left out).
    pub(super) fn validate_at(&self, at: &str) -> Result<(), ConfigError> {
        if !MAX_ATTEMPTS_RANGE.contains(&self.max_attempts) {
            return Err(invalid(
                format!("{at}.max_attempts"),
                format!(
                    "must be between {} and {}",
                    MAX_ATTEMPTS_RANGE.start(),
                    MAX_ATTEMPTS_RANGE.end()
                ),
            ));
        }
        if self.backoff_base > self.backoff_cap {
            return Err(invalid(
                format!("{at}.backoff_base"),
                format!("must not be longer than {at}.backoff_cap"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load_for_test as load;

    #[test]
    fn zero_slots_are_refused() {
        let msg = load("[dispatch]\nslots = 0\n", &[])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("dispatch.slots"), "{msg}");
    }

    #[test]
    fn backoff_base_longer_than_its_cap_is_refused() {
        let msg = load(
            "[retry]\nbackoff_base = \"1m\"\nbackoff_cap = \"1s\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("retry.backoff_base"), "{msg}");
    }
}
