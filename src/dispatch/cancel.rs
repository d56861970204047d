//! Cancelling a run: `Dispatcher::cancel` ends it in the store, stops its in-flight
//! attempt wherever it runs (here at once; in another process through the store's
//! cancel notification) and records the ending.

use super::endings::{self, Ending};
use super::{AbortReason, Dispatcher, abort};
use crate::run::{RunId, Status};
use crate::store::{CancelOutcome, RunView, StoreError};

/// What a cancel did.
#[derive(Debug)]
pub enum Cancelled {
    NotFound,
    /// The run had already ended with this status; nothing changed.
    AlreadyTerminal(Status),
    /// The run is now `cancelled`; here it is as it stands.
    Done(Box<RunView>),
}

impl Dispatcher {
    pub async fn cancel(&self, id: RunId) -> Result<Cancelled, StoreError> {
        let s = &self.shared;
        let was = match s.store.cancel(id, s.clock.now()).await? {
            CancelOutcome::NotFound => return Ok(Cancelled::NotFound),
            CancelOutcome::AlreadyTerminal(status) => {
                return Ok(Cancelled::AlreadyTerminal(status));
            }
            CancelOutcome::Cancelled { was } => was,
        };
        if was == Status::Running {
            abort(s, id, AbortReason::Cancelled);
        }
        tracing::info!(run_id = %id, was = was.as_str(), "run cancelled");
        let run = s
            .store
            .get_run(id)
            .await?
            .ok_or(StoreError::Corrupt(format!(
                "run {id} vanished after cancel"
            )))?;
        let ending = Ending {
            id,
            class: run.spec.class,
            created_at: run.created_at,
            status: Status::Cancelled,
            timeout_origin: None,
            tenant: s.tenants.label(run.spec.tenant.as_deref()),
        };
        endings::record(&ending, s.clock.now());
        Ok(Cancelled::Done(Box::new(run)))
    }
}
