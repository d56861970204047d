//! Leases: the heartbeater keeps this process's claims alive while their attempts run (and
//! saves the providers' adapted rates on the same beat), stops the attempts whose lease is
//! gone (a cancel whose notice was missed is caught within one beat), and
//! the rescuer returns the claims of a process that stopped heartbeating (crashed, killed,
//! cut off from the database) to the queue.

use std::collections::HashSet;
use std::sync::Arc;

use super::ticker::{self, Service};
use super::{AbortReason, Shared, abort};
use crate::run::{RunId, Status};

/// Most expired leases rescued by one statement.
const RESCUE_BATCH: usize = 1000;

pub(super) async fn heartbeat(shared: Arc<Shared>) {
    ticker::every(Service::Heartbeater, &shared, || beat(&shared)).await;
}

/// One beat: saves the adapted provider rates and extends every lease this process holds.
async fn beat(shared: &Shared) {
    let now = shared.clock.now();
    // The adapted provider rates, so a restart resumes from them.
    if let Err(e) = shared
        .store
        .save_provider_state(&shared.gates.snapshots(), now)
        .await
    {
        tracing::warn!(error = %e, "could not save provider state");
    }
    // Leases the store has written: a fast-path lease is held before its enqueue commits.
    let ids: Vec<RunId> = shared
        .held
        .lock()
        .expect("held lock")
        .iter()
        .filter(|(_, h)| h.committed)
        .map(|(id, _)| *id)
        .collect();
    if ids.is_empty() {
        return;
    }
    match shared
        .store
        .extend_leases(shared.worker, &ids, now, shared.settings.lease)
        .await
    {
        Ok(renewed) if renewed.len() < ids.len() => {
            let renewed: HashSet<RunId> = renewed.into_iter().collect();
            let lost: Vec<RunId> = ids.into_iter().filter(|id| !renewed.contains(id)).collect();
            // A run whose lease is gone is cancelled (its notice may have been lost), rescued
            // after this process was cut off, or ended while this beat ran: its attempt
            // stops, whatever it would answer is ignored. An attempt that already ended
            // has nothing left to stop.
            let stopped = lost
                .iter()
                .filter(|id| abort(shared, **id, AbortReason::LeaseLost))
                .count();
            tracing::debug!(
                lost = lost.len(),
                stopped,
                "leases not renewed: their attempts are stopped"
            );
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, held = ids.len(), "could not renew leases"),
    }
}

pub(super) async fn rescue(shared: Arc<Shared>) {
    ticker::every(Service::Rescuer, &shared, || rescue_pass(&shared)).await;
}

/// One pass: requeues (or fails, on their last attempt) the runs whose lease expired.
async fn rescue_pass(shared: &Shared) {
    // Maintenance runs on the leader only (see `steward`).
    if !shared.leads() {
        return;
    }
    match shared
        .store
        .rescue_expired(shared.clock.now(), RESCUE_BATCH)
        .await
    {
        Ok(rescued) if !rescued.is_empty() => {
            let requeued = rescued.iter().filter(|(_, s)| *s == Status::Queued).count();
            let failed = rescued.len() - requeued;
            tracing::warn!(requeued, failed, "rescued runs whose lease expired");
            crate::metrics::rescued("queued", requeued as u64);
            crate::metrics::rescued("failed", failed as u64);
            for (id, status) in &rescued {
                tracing::info!(run_id = %id, status = status.as_str(), "rescued");
            }
            if requeued > 0 {
                shared.wake.notify_one();
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "rescue pass failed"),
    }
}
