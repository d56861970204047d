//! `[batches]`: how large one `POST /batches` may be, how often a batch may be paused and
//! resumed, and how soon a batch whose runs all ended is announced finished.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, duration, invalid};

/// The largest `batches.max_runs` accepted: one batch is one transaction and one request
/// body, and a bigger one would hold the database and the server's memory for too long.
const MAX_MAX_RUNS: usize = 100_000;
/// The smallest `batches.body_limit` accepted (as for `http.body_limit`).
const MIN_BODY_LIMIT: usize = 1024;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchesConfig {
    /// Most runs one `POST /batches` may hold.
    pub max_runs: usize,
    /// Least time between two pauses, resumes or a cancel of one batch: a toggle sooner
    /// answers 409 with `Retry-After`.
    #[serde(with = "duration")]
    pub toggle_cooldown: Duration,
    /// Largest `POST /batches` body, bytes (`http.body_limit` bounds the other routes).
    pub body_limit: usize,
    /// How often batches whose runs have all ended are looked for, to mark them finished
    /// and send their `batch_finished` event.
    #[serde(with = "duration")]
    pub finish_interval: Duration,
}

impl Default for BatchesConfig {
    fn default() -> Self {
        BatchesConfig {
            max_runs: 10_000,
            toggle_cooldown: Duration::from_secs(5),
            body_limit: 64 * 1024 * 1024,
            finish_interval: Duration::from_secs(1),
        }
    }
}

impl BatchesConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_MAX_RUNS).contains(&self.max_runs) {
            return Err(invalid(
                "batches.max_runs",
                format!("must be between 1 and {MAX_MAX_RUNS}"),
            ));
        }
        if self.body_limit < MIN_BODY_LIMIT {
            return Err(invalid(
                "batches.body_limit",
                format!("must be at least {MIN_BODY_LIMIT} bytes"),
            ));
        }
        if self.finish_interval.is_zero() {
            return Err(invalid("batches.finish_interval", "must be above zero"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::load_for_test as load;

    #[test]
    fn batches_defaults_and_bounds() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.batches.max_runs, 10_000);
        assert_eq!(c.batches.toggle_cooldown, std::time::Duration::from_secs(5));
        let msg = load("[batches]\nmax_runs = 0\n", &[])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("batches.max_runs"), "{msg}");
        let msg = load("", &[("SLUICE_BATCHES__FINISH_INTERVAL", "0s")])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("batches.finish_interval"), "{msg}");
    }
}
