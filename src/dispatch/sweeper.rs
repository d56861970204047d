//! The sweeper: ends runs whose queue deadline passed before they started, on its own
//! clock, so a deadline holds even while every worker slot is busy (the claim never starts
//! such a run either). A live run becomes `timed_out` (origin `queue_wait`), a background
//! run `dropped` (reason `stale`).

use std::sync::Arc;

use super::Shared;
use crate::run::Status;

/// Most runs ended by one statement.
const SWEEP_BATCH: usize = 1000;

pub(super) async fn run(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.settings.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.stop_claiming.cancelled() => break,
        }
        let now = shared.clock.now();
        match shared.store.expire_queued(now, SWEEP_BATCH).await {
            Ok(expired) => {
                for e in &expired {
                    let waited = (now - e.created_at).to_std().unwrap_or_default();
                    crate::metrics::run_finished(e.class.as_str(), e.status.as_str(), waited);
                    if e.status == Status::TimedOut {
                        crate::metrics::timed_out("queue_wait");
                        tracing::warn!(run_id = %e.id, class = e.class.as_str(), timeout_origin = "queue_wait", "run timed out in the queue");
                    } else {
                        crate::metrics::dropped("stale");
                        tracing::info!(run_id = %e.id, class = e.class.as_str(), drop_reason = "stale", "background run dropped");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "sweep failed"),
        }
    }
    tracing::debug!("sweeper stopped");
}
