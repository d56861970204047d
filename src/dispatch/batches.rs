//! Batches in the worker pool: `Dispatcher::submit_batch` stores a batch with all its runs
//! and wakes the producer; pauses and resumes go through the store's cooldown rule (a
//! resume wakes the producer, its runs being claimable again); `cancel_batch` ends every
//! unfinished run of the batch and aborts the attempts in flight here (other processes
//! abort theirs on the store's cancel notice); and the batch finisher marks batches whose
//! runs all ended finished, with their `batch_finished` event.
//!
//! `batch_finished` is found by a periodic pass rather than by the transaction that ends
//! a batch's last run: the completer, the sweeper, the rescuer and cancels all end runs,
//! concurrently and in several processes, and none of them can see the others' uncommitted
//! endings, so "was this the last one?" has no answer inside them without serialising
//! every ending of a batch on its row. The pass asks it after the fact, of committed rows,
//! and a conditional update makes its mark (and event) happen once across processes.

use std::sync::Arc;
use std::time::Duration;

use super::endings::{self, Ending};
use super::ticker::{self, Service};
use super::{AbortReason, Dispatcher, Shared, abort};
use crate::run::Status;
use crate::store::{
    BatchCancelOutcome, BatchCreated, BatchId, BatchToggle, NewBatch, StoreError, ToggleOutcome,
};

/// Most batches one finisher pass marks.
const FINISH_BATCH: usize = 100;

impl Dispatcher {
    /// Stores the batch and every run of it in one transaction (nothing when it fails),
    /// or answers with the batch its idempotency key already names. Batch runs bypass
    /// admission control: a batch is the way to submit a large body of background work,
    /// which the per-provider background queue bound would refuse run by run.
    pub async fn submit_batch(&self, batch: &NewBatch) -> Result<BatchCreated, StoreError> {
        let s = &self.shared;
        let created = s.store.create_batch(batch).await?;
        if let BatchCreated::Created(id) = created {
            for run in &batch.runs {
                crate::metrics::run_enqueued(run.spec.class.as_str());
            }
            tracing::info!(batch_id = %id, runs = batch.runs.len(), "batch created");
            s.wake.notify_one();
        }
        Ok(created)
    }

    /// Pauses or resumes the batch, unless `cooldown` has not passed since its last
    /// toggle (see `ToggleOutcome`).
    pub async fn toggle_batch(
        &self,
        id: BatchId,
        tenant: Option<&str>,
        toggle: BatchToggle,
        cooldown: Duration,
    ) -> Result<ToggleOutcome, StoreError> {
        let s = &self.shared;
        let outcome = s
            .store
            .toggle_batch(id, tenant, toggle, s.clock.now(), cooldown)
            .await?;
        if let ToggleOutcome::Applied(_) = &outcome {
            tracing::info!(batch_id = %id, ?toggle, "batch toggled");
            if toggle == BatchToggle::Resume {
                s.wake.notify_one();
            }
        }
        Ok(outcome)
    }

    /// Cancels every queued and running run of the batch; attempts in flight here are
    /// aborted, those of other processes by the store's notice.
    pub async fn cancel_batch(
        &self,
        id: BatchId,
        tenant: Option<&str>,
    ) -> Result<BatchCancelOutcome, StoreError> {
        let s = &self.shared;
        let now = s.clock.now();
        let outcome = s.store.cancel_batch(id, tenant, now).await?;
        if let BatchCancelOutcome::Cancelled { ended, running } = &outcome {
            for run in running {
                abort(s, *run, AbortReason::Cancelled);
            }
            // A batch's runs are all created with it.
            let created_at = s
                .store
                .get_batch(id, tenant)
                .await?
                .map_or(now, |b| b.created_at);
            // A batch's runs all belong to its tenant.
            let tenant = s.tenants.label(tenant);
            for (run, class) in ended {
                let ending = Ending {
                    id: *run,
                    class: *class,
                    created_at,
                    status: Status::Cancelled,
                    timeout_origin: None,
                    tenant: tenant.clone(),
                };
                endings::record(&ending, now);
            }
            tracing::info!(batch_id = %id, runs = ended.len(), in_flight = running.len(), "batch cancelled");
        }
        Ok(outcome)
    }
}

/// The batch finisher: every `batches.finish_interval`, marks the batches whose runs
/// have all ended finished. Maintenance: on the leader only (see `steward`).
pub(super) async fn finish(shared: Arc<Shared>) {
    ticker::every(Service::BatchFinisher, &shared, || async {
        if !shared.leads() {
            return;
        }
        match shared.store.finish_ended_batches(FINISH_BATCH).await {
            Ok(marked) => {
                for id in marked {
                    tracing::info!(batch_id = %id, "batch finished");
                }
            }
            Err(e) => tracing::warn!(error = %e, "batch finisher pass failed"),
        }
    })
    .await;
}
