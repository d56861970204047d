//! The completer: writes finished attempts in batches. Whatever finished while the previous
//! batch was being written goes into the next one, so under load one statement carries many
//! results and when idle a result is written at once. A slot comes free only once its
//! result is written.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Shared;
use super::endings::{self, Ending};
use super::worker::{AttemptResult, Finished};
use crate::run::{RunId, Status};
use crate::store::{Completion, Failure, FailureNext};

/// Backoff between attempts to write a batch while the database is unreachable.
const WRITE_RETRY_MIN: Duration = Duration::from_millis(200);
const WRITE_RETRY_MAX: Duration = Duration::from_secs(5);

pub(super) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Finished>) {
    let max = shared.settings.complete_batch;
    let mut batch = Vec::with_capacity(max);
    loop {
        tokio::select! {
            got = rx.recv_many(&mut batch, max) => {
                if got == 0 {
                    break;
                }
            }
            _ = shared.stop_services.cancelled() => {
                // Shutdown waits for every lease to be let go before stopping us, so only
                // stragglers from a failed write can be left; take what is there.
                while let Ok(f) = rx.try_recv() {
                    batch.push(f);
                }
                if batch.is_empty() {
                    break;
                }
            }
        }
        write(&shared, &mut batch).await;
        if shared.stop_services.is_cancelled() && rx.is_empty() {
            break;
        }
    }
    tracing::debug!("completer stopped");
}

/// Writes one batch, retrying while the database is unavailable, then lets go of the
/// leases. A write whose lease was lost meanwhile is ignored by the store.
async fn write(shared: &Shared, batch: &mut Vec<Finished>) {
    let mut completed: Vec<Completion> = Vec::new();
    let mut failed: Vec<Failure> = Vec::new();
    let mut released: Vec<(RunId, u32)> = Vec::new();
    let mut ids: Vec<(RunId, u32)> = Vec::with_capacity(batch.len());
    // What each run becomes if the write applies, for the metrics.
    let mut endings: HashMap<RunId, Ending> = HashMap::new();
    let mut retried = false;
    let mut slots = Vec::with_capacity(batch.len());
    for f in batch.drain(..) {
        ids.push((f.id, f.attempt));
        slots.extend(f.slot);
        let ending = |status, timeout_origin| Ending {
            id: f.id,
            class: f.class,
            created_at: f.created_at,
            status,
            timeout_origin,
            tenant: f.tenant.clone(),
        };
        match f.result {
            AttemptResult::Completed(c) => {
                endings.insert(f.id, ending(Status::Completed, None));
                completed.push(c);
            }
            AttemptResult::Failed(failure) => {
                match failure.next {
                    FailureNext::RetryAt(_) => retried = true,
                    FailureNext::Finish {
                        status,
                        timeout_origin,
                    } => {
                        endings.insert(f.id, ending(status, timeout_origin));
                    }
                }
                failed.push(failure);
            }
            AttemptResult::Released { attempt } => released.push((f.id, attempt)),
            AttemptResult::Forget => {}
        }
    }
    let mut wait = WRITE_RETRY_MIN;
    loop {
        match write_once(shared, &completed, &failed, &released).await {
            Ok(applied) => {
                let now = shared.clock.now();
                for id in applied {
                    if let Some(ending) = endings.get(&id) {
                        endings::record(ending, now);
                    }
                }
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, results = ids.len(), "could not record finished attempts; retrying");
                // Hold on to the results: once the database is back they are written, and
                // if our leases expired meanwhile the store ignores them.
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(WRITE_RETRY_MAX);
                if shared.stop_services.is_cancelled() && wait >= WRITE_RETRY_MAX {
                    tracing::error!(
                        results = ids.len(),
                        "giving up on finished attempts at shutdown; their leases will expire and be rescued"
                    );
                    break;
                }
            }
        }
    }
    {
        let mut held = shared.held.lock().expect("held lock");
        for (id, attempt) in &ids {
            if held.get(id).is_some_and(|h| h.attempt == *attempt) {
                held.remove(id);
            }
        }
    }
    shared.released.notify_waiters();
    if !slots.is_empty() {
        drop(slots);
        shared.slot_freed.notify_one();
    }
    if retried || !released.is_empty() {
        // A retry may be due soon, a released run is due now: let the producer look.
        shared.wake.notify_one();
    }
}

async fn write_once(
    shared: &Shared,
    completed: &[Completion],
    failed: &[Failure],
    released: &[(RunId, u32)],
) -> crate::store::Result<Vec<RunId>> {
    let store = &shared.store;
    let worker = shared.worker;
    let mut applied = Vec::new();
    if !completed.is_empty() {
        applied.extend(store.mark_completed(worker, completed).await?);
    }
    if !failed.is_empty() {
        applied.extend(store.mark_failed(worker, failed).await?);
    }
    if !released.is_empty() {
        store.release(worker, released, shared.clock.now()).await?;
    }
    Ok(applied)
}
