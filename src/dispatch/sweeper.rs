//! The sweeper: ends runs whose queue deadline passed before they started, on its own
//! clock, so a deadline holds even while every worker slot is busy (the claim never starts
//! such a run either). A live run becomes `timed_out` (origin `queue_wait`), a background
//! run `dropped` (reason `stale`). A run whose provider's circuit breaker is open (or
//! half-open, its one probe out) when its deadline passes ends the same way, with error
//! kind `breaker_open`: that is why it never started.

use std::sync::Arc;

use super::Shared;
use super::endings::{self, Ending};
use super::ticker::{self, Service};
use crate::limits::BreakerState;
use crate::run::{Status, TimeoutOrigin};

/// Most runs ended by one statement.
const SWEEP_BATCH: usize = 1000;

pub(super) async fn run(shared: Arc<Shared>) {
    ticker::every(Service::Sweeper, &shared, || sweep(&shared)).await;
}

/// One pass: ends the runs whose queue deadline has passed, blaming the breaker for
/// those whose provider's breaker is not closed.
async fn sweep(shared: &Shared) {
    // Maintenance runs on the leader only (see `steward`).
    if !shared.leads() {
        return;
    }
    let now = shared.clock.now();
    let open_breakers: Vec<String> = shared
        .gates
        .status()
        .into_iter()
        .filter(|g| g.breaker != BreakerState::Closed)
        .map(|g| g.provider)
        .collect();
    match shared
        .store
        .expire_queued_blaming(now, SWEEP_BATCH, &open_breakers)
        .await
    {
        Ok(expired) => {
            for e in expired {
                let ending = Ending {
                    id: e.id,
                    class: e.class,
                    created_at: e.created_at,
                    status: e.status,
                    timeout_origin: (e.status == Status::TimedOut)
                        .then_some(TimeoutOrigin::QueueWait),
                    tenant: shared.tenants.label(e.tenant.as_deref()),
                };
                endings::record(&ending, now);
            }
        }
        Err(e) => tracing::warn!(error = %e, "sweep failed"),
    }
}
