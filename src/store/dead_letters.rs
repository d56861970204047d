//! Dead letters: runs that ended `failed` or `timed_out`. Listing them is `listing`'s
//! (filtered by status); here they are given back to the queue: a requeued run keeps its
//! id, its attempt log and its events, gets a fresh budget of attempts on top of those it
//! used, is due at once with its class's queue deadline, and says so with a `requeued`
//! event.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::batch_model::{PageAfter, RunFilter};
use super::{Backend, Result, RunView, Store};
use crate::run::{Class, RunId, Status};

/// The statuses of dead letters.
pub const DEAD_STATUSES: [Status; 2] = [Status::Failed, Status::TimedOut];

/// How a requeue treats each run.
#[derive(Clone, Copy, Debug)]
pub struct Requeue {
    /// Attempts the run gets on top of those it used.
    pub attempts: u32,
    pub now: DateTime<Utc>,
    /// The queue deadline of a requeued live run, from now.
    pub live_queue_timeout: Duration,
    /// The queue deadline of a requeued background run, from now.
    pub background_queue_timeout: Duration,
}

impl Requeue {
    /// A requeue now with `attempts` more attempts (`retry.max_attempts` when `None`) and
    /// the configured queue deadlines.
    pub fn configured(
        config: &crate::config::Config,
        attempts: Option<u32>,
        now: DateTime<Utc>,
    ) -> Requeue {
        Requeue {
            attempts: attempts.unwrap_or(config.retry.max_attempts),
            now,
            live_queue_timeout: config.queue.live_queue_timeout,
            background_queue_timeout: config.queue.background_queue_timeout,
        }
    }

    /// The queue deadline of a requeued run of `class`.
    pub(super) fn deadline(&self, class: Class) -> DateTime<Utc> {
        let timeout = match class {
            Class::Live => self.live_queue_timeout,
            Class::Background => self.background_queue_timeout,
        };
        self.now + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX)
    }
}

impl Store {
    /// Dead letters matching `filter` (its `status`, when set, must be a dead one; unset
    /// means both), newest first, strictly after `after`, at most `limit`: one keyset read
    /// per status, merged.
    pub async fn list_dead(
        &self,
        filter: &RunFilter,
        after: Option<PageAfter>,
        limit: usize,
    ) -> Result<Vec<RunView>> {
        let statuses = match filter.status {
            Some(status) if DEAD_STATUSES.contains(&status) => vec![status],
            Some(_) => return Ok(Vec::new()),
            None => DEAD_STATUSES.to_vec(),
        };
        let mut rows = Vec::new();
        for status in statuses {
            let one = RunFilter {
                status: Some(status),
                ..filter.clone()
            };
            rows.extend(self.list_runs(&one, after, limit).await?);
        }
        rows.sort_by_key(|r| std::cmp::Reverse((r.created_at, r.id.0)));
        rows.truncate(limit);
        Ok(rows)
    }

    /// Gives the dead letters among `runs` back to the queue (see the module doc); runs
    /// that are not dead letters are left alone. Returns the runs requeued.
    pub async fn requeue(&self, runs: &[RunId], how: Requeue) -> Result<Vec<RunId>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let events = delegate!(self, s => s.requeue(runs, how).await)?;
        let requeued = events.iter().map(|e| e.run_id).collect();
        Ok(self.published((requeued, events)))
    }
}
