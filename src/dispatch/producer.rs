//! The producer: claims due runs into free worker slots. It claims only as many runs as
//! there are free slots, so a run never waits inside the process for a slot, and it never
//! busy-polls: with nothing due it sleeps until woken or until the next due time.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use super::reservation::Reservation;
use super::{AWAKE, Shared, worker};
use crate::store::ClaimBounds;

/// How long to back off after the database refused a claim.
const CLAIM_ERROR_BACKOFF: Duration = Duration::from_millis(500);
/// How soon to look again when due runs were skipped because another process was
/// claiming them at the same moment.
const CONTENDED_RETRY: Duration = Duration::from_millis(20);
/// How soon to look again when due runs wait for their providers' limits (a slot frees,
/// an enqueue or a retry wakes the producer sooner).
const LIMITED_RETRY: Duration = Duration::from_millis(50);

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
        // The slots are set aside before the claim: an enqueue may take one for a run it
        // starts itself meanwhile.
        let Ok(mut slots) = shared.slots.clone().try_acquire_many_owned(want as u32) else {
            continue;
        };
        let now = shared.clock.now();
        // Looked at again after the time is taken: once claiming has stopped, no claim
        // carries a later start time.
        if shared.stop_claiming.is_cancelled() {
            break;
        }
        let quotas = shared.gates.quotas(want);
        let allowed: usize = quotas.iter().map(|q| q.max).sum();
        let claimed = match shared
            .store
            .claim_due_shared(
                shared.worker,
                want,
                ClaimBounds {
                    quotas: &quotas,
                    key_caps: settings.key_caps,
                    shares: &settings.tenant_shares,
                },
                now,
                settings.lease,
            )
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
        tracing::trace!(want, allowed, got, "claimed");
        for run in claimed {
            let wait = (now - run.due_at).to_std().unwrap_or_default();
            crate::metrics::queue_wait(run.spec.class.as_str(), wait);
            let permit = slots
                .split(1)
                .expect("no more runs are claimed than slots set aside");
            let Some(reservation) = Reservation::take(
                &shared,
                run.id,
                run.attempt,
                &run.spec.provider,
                &run.request,
                permit,
            ) else {
                // The provider cannot take it after all: back to the queue, no attempt spent.
                worker::give_back(&shared, run).await;
                continue;
            };
            tasks.spawn(worker::execute(shared.clone(), run, reservation));
        }
        // Slots set aside and not used go back at once (an enqueue may want one).
        drop(slots);
        if got == want && got > 0 {
            // There may be more due: go round again (the slot check throttles us).
            continue;
        }
        // Something is due but its providers are at their limits: look again soon, as
        // capacity comes back with time (a limiter refills, a breaker half-opens).
        let held_back = allowed < want;
        if got > 0 && !held_back {
            // Fewer than asked: the due runs may have run out. The next claim tells, and
            // costs less than asking for the next due time (whose index, right after a
            // burst of claims, is mostly entries of rows that just left the queue).
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
        // Due now yet not claimed: another process holds those rows for the moment, or the
        // providers' limits hold them back.
        let sleep_for = if sleep_for.is_zero() {
            if held_back {
                LIMITED_RETRY
            } else {
                CONTENDED_RETRY
            }
        } else {
            sleep_for
        };
        // Enqueues of runs due after this wake-up need not wake us (see `Shared::sleeping_until`).
        let until = shared.clock.now()
            + chrono::Duration::from_std(sleep_for).unwrap_or(chrono::Duration::zero());
        shared
            .sleeping_until
            .store(until.timestamp_micros(), Ordering::SeqCst);
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(sleep_for) => {}
            _ = shared.stop_claiming.cancelled() => break,
        }
        shared.sleeping_until.store(AWAKE, Ordering::SeqCst);
    }
    tracing::debug!("producer stopped");
}
