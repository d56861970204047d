//! The fast path from enqueue to a free slot: a live run due now is started by the very
//! commit that stores it, when that overtakes nothing and breaks no limit, so it does not
//! wait for the producer's next claim. The enqueuer makes one call before its write
//! ([`FastPath::reserve`]) and one after it ([`FastPath::settle`]); everything between
//! the two belongs to the store (it starts a flagged run only if no live run of its
//! provider is due ahead of it).

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio_util::task::TaskTracker;

use super::reservation::Reservation;
use super::{AWAKE, Shared, worker};
use crate::run::{Class, RunId};
use crate::store::{ClaimedRun, Enqueued, NewRun, StartNow};

/// What was set aside for one batch of enqueued runs, between the two calls.
pub(super) struct FastPath {
    now: DateTime<Utc>,
    /// One entry per run of the batch: the reservation of a run that may start now.
    reserved: Vec<Option<Reservation>>,
    /// `reserved[i].is_some()`, in the shape the store takes.
    flags: Vec<bool>,
}

impl FastPath {
    /// Sets a slot, a provider start and a lease aside for each run of `runs` that may
    /// start in its enqueue's commit: a live run due now, of a provider with no live cap,
    /// without a concurrency key while live keys are capped, of no batch, with a slot free and its
    /// provider's limiter and breaker letting an attempt start.
    pub(super) fn reserve(shared: &Shared, runs: &[NewRun]) -> FastPath {
        let now = shared.clock.now();
        let reserved: Vec<Option<Reservation>> = runs
            .iter()
            .map(|run| reserve_one(shared, run, now))
            .collect();
        let flags = reserved.iter().map(Option::is_some).collect();
        FastPath {
            now,
            reserved,
            flags,
        }
    }

    /// The store's instruction to start the flagged runs, when any is flagged.
    pub(super) fn start_now(&self, shared: &Shared) -> Option<StartNow<'_>> {
        self.flags.contains(&true).then(|| {
            let lease = chrono::Duration::from_std(shared.settings.lease)
                .unwrap_or(chrono::Duration::minutes(5));
            StartNow {
                worker: shared.worker,
                now: self.now,
                lease_until: self.now + lease,
                runs: &self.flags,
            }
        })
    }

    /// How far ahead a run queued now must be due for other processes' producers to be
    /// told at once; later ones they find by their own periodic look.
    pub(super) fn notify_horizon(&self, shared: &Shared) -> DateTime<Utc> {
        self.now
            + chrono::Duration::from_std(shared.settings.idle_poll)
                .unwrap_or(chrono::Duration::seconds(5))
    }

    /// After the write: runs the first attempt of each run the commit started, gives back
    /// what was set aside for the others, and wakes the local producer for the runs left
    /// queued. `written` is what the store answered, `None` when the write failed.
    pub(super) fn settle(
        self,
        shared: &Arc<Shared>,
        tasks: &TaskTracker,
        runs: Vec<NewRun>,
        written: Option<(&[Enqueued], &[RunId])>,
    ) {
        let (results, started): (&[Enqueued], HashSet<RunId>) = match written {
            Some((results, started)) => (results, started.iter().copied().collect()),
            None => (&[], HashSet::new()),
        };
        // The earliest due time of the runs left queued.
        let queued = runs
            .iter()
            .zip(results)
            .filter(|(_, r)| matches!(r, Enqueued::Created(id) if !started.contains(id)))
            .map(|(run, _)| run.due_at)
            .min();
        for (run, reserved) in runs.into_iter().zip(self.reserved) {
            let Some(reservation) = reserved else {
                continue;
            };
            if started.contains(&run.id) {
                launch(shared, tasks, run, reservation, self.now);
            } else {
                reservation.give_back(shared, run.id, 1, &run.spec.provider);
            }
        }
        if let Some(due) = queued {
            wake_for(shared, due);
        }
    }
}

fn reserve_one(shared: &Shared, run: &NewRun, now: DateTime<Utc>) -> Option<Reservation> {
    if shared.stop_claiming.is_cancelled()
        || run.spec.class != Class::Live
        || run.due_at > now
        || (run.spec.concurrency_key.is_some() && shared.settings.key_caps.live.is_some())
        // Its batch may be paused, which only the claim looks at.
        || run.batch.is_some()
        || !shared.gates.uncapped_live(&run.spec.provider)
    {
        return None;
    }
    let slot = shared.slots.clone().try_acquire_owned().ok()?;
    Reservation::take(shared, run.id, 1, &run.spec.provider, &run.request, slot)
}

/// Runs the first attempt of a run its enqueue started, in the slot set aside for it.
fn launch(
    shared: &Arc<Shared>,
    tasks: &TaskTracker,
    run: NewRun,
    reservation: Reservation,
    now: DateTime<Utc>,
) {
    let wait = (now - run.due_at).to_std().unwrap_or_default();
    crate::metrics::queue_wait(run.spec.class.as_str(), wait);
    let claimed = ClaimedRun {
        id: run.id,
        attempt: 1,
        max_attempts: u32::try_from(run.max_attempts).unwrap_or(1),
        spec: run.spec,
        request: run.request,
        created_at: run.created_at,
        due_at: run.due_at,
    };
    tasks.spawn(worker::execute(shared.clone(), claimed, reservation));
}

/// Tells the producer about runs just queued here that become due at `due`, unless it
/// will look by itself before then.
fn wake_for(shared: &Shared, due: DateTime<Utc>) {
    let until = shared
        .sleeping_until
        .load(std::sync::atomic::Ordering::SeqCst);
    if until == AWAKE || due.timestamp_micros() <= until {
        shared.wake.notify_one();
    }
}
