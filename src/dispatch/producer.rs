//! The producer: claims due runs into free worker slots. It claims only as many runs as
//! there are free slots, so a run never waits inside the process for a slot, and it never
//! busy-polls: with nothing due it sleeps until woken or until the next due time.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use super::{Shared, worker};

/// How long to back off after the database refused a claim.
const CLAIM_ERROR_BACKOFF: Duration = Duration::from_millis(500);
/// How soon to look again when due runs were skipped because another process was
/// claiming them at the same moment.
const CONTENDED_RETRY: Duration = Duration::from_millis(20);

pub(super) async fn run(shared: Arc<Shared>, tasks: TaskTracker) {
    let settings = &shared.settings;
    loop {
        if shared.stop_claiming.is_cancelled() {
            break;
        }
        let free = shared.slots.available_permits();
        if free == 0 {
            tokio::select! {
                _ = shared.slot_freed.notified() => continue,
                _ = shared.stop_claiming.cancelled() => break,
            }
        }
        let want = free.min(settings.claim_batch);
        let now = shared.clock.now();
        let claimed = match shared
            .store
            .claim_due(shared.worker, want, now, settings.lease)
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(error = %e, "claim failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(CLAIM_ERROR_BACKOFF) => continue,
                    _ = shared.stop_claiming.cancelled() => break,
                }
            }
        };
        let got = claimed.len();
        for run in claimed {
            let wait = (now - run.due_at).to_std().unwrap_or_default();
            crate::metrics::queue_wait(run.class.as_str(), wait);
            let permit = shared
                .slots
                .clone()
                .try_acquire_owned()
                .expect("the producer is the only one taking slots");
            let (abort, reason) = worker::hold(&shared, &run);
            tasks.spawn(worker::execute(shared.clone(), run, permit, abort, reason));
        }
        if got == want {
            // There may be more due: go round again (the slot check throttles us).
            continue;
        }
        let sleep_for = match shared.store.next_due_at().await {
            Ok(Some(due)) => (due - shared.clock.now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(settings.idle_poll),
            Ok(None) => settings.idle_poll,
            Err(e) => {
                tracing::warn!(error = %e, "next due time unknown");
                CLAIM_ERROR_BACKOFF
            }
        };
        // Due now yet not claimed: another process holds those rows for the moment.
        let sleep_for = if sleep_for.is_zero() {
            CONTENDED_RETRY
        } else {
            sleep_for
        };
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(sleep_for) => {}
            _ = shared.stop_claiming.cancelled() => break,
        }
    }
    tracing::debug!("producer stopped");
}
