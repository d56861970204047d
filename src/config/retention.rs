//! `[retention]`: how long finished runs are kept, by how they ended, and how the leader
//! deletes the older ones (in bounded batches, so claims never wait on it).

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, duration, invalid};
use crate::run::Status;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Whether the leader deletes old finished runs at all.
    pub enabled: bool,
    /// Completed runs are kept this long after they finished.
    #[serde(with = "duration")]
    pub completed: Duration,
    /// Failed runs (the dead letters) are kept this long.
    #[serde(with = "duration")]
    pub failed: Duration,
    #[serde(with = "duration")]
    pub timed_out: Duration,
    #[serde(with = "duration")]
    pub cancelled: Duration,
    #[serde(with = "duration")]
    pub dropped: Duration,
    /// How often the leader looks for runs past their age.
    #[serde(with = "duration")]
    pub interval: Duration,
    /// Most runs deleted by one statement.
    pub batch: usize,
    /// Most batches one pass deletes; the rest waits for the next pass.
    pub max_batches_per_pass: usize,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            enabled: true,
            completed: 7 * DAY,
            failed: 30 * DAY,
            timed_out: 30 * DAY,
            cancelled: 7 * DAY,
            dropped: 7 * DAY,
            interval: Duration::from_secs(60),
            batch: 1000,
            max_batches_per_pass: 100,
        }
    }
}

impl RetentionConfig {
    /// Each terminal status with how long its runs are kept.
    pub fn ages(&self) -> [(Status, Duration); 5] {
        [
            (Status::Completed, self.completed),
            (Status::Failed, self.failed),
            (Status::TimedOut, self.timed_out),
            (Status::Cancelled, self.cancelled),
            (Status::Dropped, self.dropped),
        ]
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (status, age) in self.ages() {
            if age.is_zero() {
                return Err(invalid(
                    format!("retention.{}", status.as_str()),
                    "must be longer than zero (set retention.enabled = false to keep runs)",
                ));
            }
        }
        if self.interval.is_zero() {
            return Err(invalid("retention.interval", "must be longer than zero"));
        }
        if self.batch == 0 || self.max_batches_per_pass == 0 {
            return Err(invalid(
                "retention",
                "batch and max_batches_per_pass must be at least 1",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::load_for_test as load;

    #[test]
    fn ages_default_and_accept_days() {
        let c = load("[retention]\ncompleted = \"2days\"\n", &[]).unwrap();
        assert_eq!(c.retention.completed, Duration::from_secs(2 * 86_400));
        assert_eq!(c.retention.failed, Duration::from_secs(30 * 86_400));
        assert!(c.retention.enabled);
    }

    #[test]
    fn a_zero_age_is_named() {
        let msg = load("[retention]\ntimed_out = \"0s\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("retention.timed_out"), "{msg}");
    }
}
