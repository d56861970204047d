//! The completer: writes finished attempts in batches. Whatever finished while the previous
//! batch was being written goes into the next one, so under load one statement carries many
//! results and when idle a result is written at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Shared;
use super::worker::Finished;
use crate::run::RunId;
use crate::store::{Completion, Failure};

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
    let mut ids: Vec<RunId> = Vec::with_capacity(batch.len());
    let mut retried = false;
    for f in batch.drain(..) {
        ids.push(f.id());
        match f {
            Finished::Completed(c) => completed.push(c),
            Finished::Failed(f) => {
                retried |= matches!(f.next, crate::store::FailureNext::RetryAt(_));
                failed.push(f);
            }
            Finished::Released { id, attempt } => released.push((id, attempt)),
            Finished::Forget { .. } => {}
        }
    }
    let mut wait = WRITE_RETRY_MIN;
    loop {
        match write_once(shared, &completed, &failed, &released).await {
            Ok(()) => break,
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
        for id in &ids {
            held.remove(id);
        }
    }
    shared.released.notify_waiters();
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
) -> crate::store::Result<()> {
    let store = &shared.store;
    let worker = shared.worker;
    if !completed.is_empty() {
        store.mark_completed(worker, completed).await?;
    }
    if !failed.is_empty() {
        store.mark_failed(worker, failed).await?;
    }
    if !released.is_empty() {
        store.release(worker, released, shared.clock.now()).await?;
    }
    Ok(())
}
