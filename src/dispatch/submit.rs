//! Taking a run in: `Dispatcher::submit` answers an idempotent repeat with the first run,
//! asks admission control, stores the run through the group-commit enqueuer and counts it.
//! The HTTP handler only parses the request and renders the answer.

use std::sync::Arc;

use super::Dispatcher;
use super::admission::Refusal;
use super::enqueuer::EnqueueError;
use crate::run::{Class, RunId, Status};
use crate::store::{Enqueued, NewRun, StoreError};

/// A submitted run, as the caller should see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Submitted {
    pub id: RunId,
    /// `queued` for a new run; a repeat answers with the first run's current status.
    pub status: Status,
    /// False when an idempotency key made this a repeat of an earlier run.
    pub created: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Admission control refused a background run, or a tenant limit refused a run;
    /// nothing was written.
    #[error("{}", .0.message)]
    Refused(Refusal),
    #[error("{0}")]
    Store(Arc<StoreError>),
    #[error("the server is shutting down")]
    Closed,
}

impl From<StoreError> for SubmitError {
    fn from(e: StoreError) -> SubmitError {
        SubmitError::Store(Arc::new(e))
    }
}

impl From<EnqueueError> for SubmitError {
    fn from(e: EnqueueError) -> SubmitError {
        match e {
            EnqueueError::Store(e) => SubmitError::Store(e),
            EnqueueError::Closed => SubmitError::Closed,
        }
    }
}

impl Dispatcher {
    /// Stores `run` (and, when it may start at once, starts it in the same commit), or
    /// answers with the run its idempotency key already names, or refuses it. Nothing is
    /// half-written: a refused or failed submit leaves no run behind.
    pub async fn submit(&self, run: NewRun) -> Result<Submitted, SubmitError> {
        let store = &self.shared.store;
        let class = run.spec.class;
        let limited_tenant = self.configured_tenant(&run).is_some();
        // A repeat of an admitted run answers with that run, whatever admission or the
        // tenant's limits say now.
        let repeat = (class == Class::Background || limited_tenant)
            && store.find_idempotent(&run).await?.is_some();
        if !repeat {
            // The rate goes last: a run refused for another reason takes nothing from it.
            if let Err(refusal) = self.within_budget(&run).await? {
                return Err(self.refused(&run, refusal));
            }
            if let Err(refusal) = self.admit(&run).await? {
                return Err(self.refused(&run, refusal));
            }
            if let Err(refusal) = self.within_rate(&run).await? {
                return Err(self.refused(&run, refusal));
            }
        }
        let tenant = self.configured_tenant(&run).map(str::to_string);
        match self.enqueuer.enqueue(run).await? {
            Enqueued::Created(id) => {
                crate::metrics::run_enqueued(class.as_str());
                if let Some(tenant) = tenant {
                    crate::metrics::tenant_enqueued(tenant);
                }
                Ok(Submitted {
                    id,
                    status: Status::Queued,
                    created: true,
                })
            }
            Enqueued::Existing(id) => {
                let status = store
                    .get_run(id)
                    .await?
                    .map_or(Status::Queued, |r| r.status);
                Ok(Submitted {
                    id,
                    status,
                    created: false,
                })
            }
        }
    }

    /// The run's tenant when it is configured (the tenants metrics may name).
    fn configured_tenant(&self, run: &NewRun) -> Option<&str> {
        self.limits_of(run).map(|t| t.name.as_str())
    }

    /// Counts and logs a refusal on its way to the caller.
    fn refused(&self, run: &NewRun, refusal: Refusal) -> SubmitError {
        let reason = refusal.reason.as_str();
        if refusal.reason.is_admission() {
            crate::metrics::admission_refused(reason);
        }
        if let Some(tenant) = self.configured_tenant(run) {
            crate::metrics::tenant_refused(tenant.to_string(), reason);
        }
        tracing::info!(
            provider = %run.spec.provider,
            class = run.spec.class.as_str(),
            tenant = run.spec.tenant.as_deref().unwrap_or(""),
            session = run.session.as_deref().unwrap_or(""),
            concurrency_key = run.spec.concurrency_key.as_deref().unwrap_or(""),
            reason,
            "run refused"
        );
        SubmitError::Refused(refusal)
    }
}
