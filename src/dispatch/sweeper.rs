//! The sweeper: ends runs whose queue deadline passed before they started, on its own
//! clock, so a deadline holds even while every worker slot is busy (the claim never starts
//! such a run either). A live run becomes `timed_out` (origin `queue_wait`), a background
//! run `dropped` (reason `stale`).

use std::sync::Arc;

use super::Shared;
use super::endings::{self, Ending};
use super::ticker::{self, Service};
use crate::run::{Status, TimeoutOrigin};

/// Most runs ended by one statement.
const SWEEP_BATCH: usize = 1000;

pub(super) async fn run(shared: Arc<Shared>) {
    ticker::every(Service::Sweeper, &shared, || sweep(&shared)).await;
}

/// One pass: ends the runs whose queue deadline has passed.
async fn sweep(shared: &Shared) {
    let now = shared.clock.now();
    match shared.store.expire_queued(now, SWEEP_BATCH).await {
        Ok(expired) => {
            for e in expired {
                let ending = Ending {
                    id: e.id,
                    class: e.class,
                    created_at: e.created_at,
                    status: e.status,
                    timeout_origin: (e.status == Status::TimedOut)
                        .then_some(TimeoutOrigin::QueueWait),
                };
                endings::record(&ending, now);
            }
        }
        Err(e) => tracing::warn!(error = %e, "sweep failed"),
    }
}
