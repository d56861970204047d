//! What is recorded when a run reaches a terminal status, whoever ended it: the completer
//! (its last attempt), the sweeper (its queue deadline passed) or a cancel. One place, so
//! the run metrics count every ending the same way.

use chrono::{DateTime, Utc};

use crate::run::{Class, RunId, Status, TimeoutOrigin};

/// A run that just ended, as far as the metrics and logs need it.
pub(super) struct Ending {
    pub id: RunId,
    pub class: Class,
    pub created_at: DateTime<Utc>,
    pub status: Status,
    /// Why a `timed_out` run timed out.
    pub timeout_origin: Option<TimeoutOrigin>,
    /// The run's tenant when it is configured (see `TenantBook::label`).
    pub tenant: Option<String>,
}

/// The only reason the server drops a run: a background run's queue deadline passed.
const STALE: &str = "stale";

/// Counts the ending (and its duration since enqueue) in the metrics. Endings in the
/// queue, which no attempt log shows, are also logged here.
pub(super) fn record(ending: &Ending, now: DateTime<Utc>) {
    let took = (now - ending.created_at).to_std().unwrap_or_default();
    let class = ending.class.as_str();
    crate::metrics::run_finished(class, ending.status.as_str(), took);
    if let Some(tenant) = &ending.tenant {
        crate::metrics::tenant_run_finished(tenant.clone(), ending.status.as_str());
    }
    match ending.status {
        Status::TimedOut => {
            let origin = ending.timeout_origin.unwrap_or(TimeoutOrigin::Generation);
            crate::metrics::timed_out(origin.as_str());
            if origin == TimeoutOrigin::QueueWait {
                tracing::warn!(run_id = %ending.id, class, timeout_origin = origin.as_str(), "run timed out in the queue");
            }
        }
        Status::Dropped => {
            crate::metrics::dropped(STALE);
            tracing::info!(run_id = %ending.id, class, drop_reason = STALE, "background run dropped");
        }
        _ => {}
    }
}
