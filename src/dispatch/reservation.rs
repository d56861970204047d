//! Reservations: what an attempt needs before it may start, taken in one place for both
//! ways a run starts (claimed by the producer, or started by the commit of its own
//! enqueue): a worker slot, a ticket from its provider's limiter and breaker, and the
//! lease this process holds, with the handles that abort the attempt.

use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::gates::Ticket;
use super::{AbortReason, Held, Shared};
use crate::run::RunId;

/// Everything one attempt holds while it runs; handed to [`super::worker::execute`].
pub(super) struct Reservation {
    /// Held until the attempt's result is written (see `worker::Finished::slot`).
    pub slot: OwnedSemaphorePermit,
    /// The provider's start, reported back when the attempt ends.
    pub ticket: Ticket,
    /// Fires to stop the attempt (cancelled run, or shutdown past its grace).
    pub abort: CancellationToken,
    /// Why `abort` fired: the first reason given wins.
    pub reason: Arc<Mutex<Option<AbortReason>>>,
}

impl Reservation {
    /// Takes a start from the provider's gates for attempt `attempt` of run `id`, in
    /// `slot`, and records the lease as held by this process. `None` (the slot goes back)
    /// when the provider cannot take the attempt now.
    pub(super) fn take(
        shared: &Shared,
        id: RunId,
        attempt: u32,
        provider: &str,
        request: &RawValue,
        slot: OwnedSemaphorePermit,
    ) -> Option<Reservation> {
        Self::take_lease(shared, (id, attempt), provider, request, slot, true)
    }

    /// [`Reservation::take`] for a run whose lease the store has not written yet (the
    /// fast path, before its enqueue commits); [`confirm`] marks it written.
    pub(super) fn take_before_commit(
        shared: &Shared,
        id: RunId,
        provider: &str,
        request: &RawValue,
        slot: OwnedSemaphorePermit,
    ) -> Option<Reservation> {
        Self::take_lease(shared, (id, 1), provider, request, slot, false)
    }

    fn take_lease(
        shared: &Shared,
        (id, attempt): (RunId, u32),
        provider: &str,
        request: &RawValue,
        slot: OwnedSemaphorePermit,
        committed: bool,
    ) -> Option<Reservation> {
        let ticket = shared.gates.admit(provider, request)?;
        let (abort, reason) = hold(shared, id, attempt, committed);
        Some(Reservation {
            slot,
            ticket,
            abort,
            reason,
        })
    }

    /// Gives back a reservation whose run did not start after all: the lease it recorded,
    /// the provider's start and the slot.
    pub(super) fn give_back(self, shared: &Shared, id: RunId, attempt: u32, provider: &str) {
        {
            let mut held = shared.held.lock().expect("held lock");
            if held.get(&id).is_some_and(|h| h.attempt == attempt) {
                held.remove(&id);
            }
        }
        shared.gates.unused(provider, self.ticket);
        drop(self.slot);
        shared.slot_freed.notify_one();
        shared.released.notify_waiters();
    }
}

/// Records the lease of a run about to start and returns its abort handles.
fn hold(
    shared: &Shared,
    id: RunId,
    attempt: u32,
    committed: bool,
) -> (CancellationToken, Arc<Mutex<Option<AbortReason>>>) {
    let abort = CancellationToken::new();
    let reason = Arc::new(Mutex::new(None));
    let stale = shared.held.lock().expect("held lock").insert(
        id,
        Held {
            attempt,
            abort: abort.clone(),
            reason: reason.clone(),
            committed,
        },
    );
    if let Some(stale) = stale {
        // Our own earlier attempt lost its lease (rescued while this process was cut off
        // from the database) and is still going: stop it, its result would be ignored.
        stale
            .reason
            .lock()
            .expect("reason lock")
            .get_or_insert(AbortReason::Cancelled);
        stale.abort.cancel();
    }
    (abort, reason)
}

/// Marks the lease of attempt `attempt` of `id` as written by the store.
pub(super) fn confirm(shared: &Shared, id: RunId, attempt: u32) {
    if let Some(h) = shared
        .held
        .lock()
        .expect("held lock")
        .get_mut(&id)
        .filter(|h| h.attempt == attempt)
    {
        h.committed = true;
    }
}
