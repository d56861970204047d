//! Cross-process signals, as the store hears them on PostgreSQL: every commit that makes
//! runs due is announced, which this task turns into a producer wake-up, so an enqueue on
//! one replica starts work on another without polling; and a cancelled running run's id,
//! which aborts the attempt here if this process is the one running it. On SQLite nothing
//! is ever announced.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::Shared;
use super::{AbortReason, abort};
use crate::store::Notice;

pub(super) async fn listen(shared: Arc<Shared>, mut notices: broadcast::Receiver<Notice>) {
    loop {
        tokio::select! {
            notice = notices.recv() => match notice {
                Ok(Notice::RunsDue) => shared.wake.notify_one(),
                Ok(Notice::Cancelled(id)) => {
                    if abort(&shared, id, AbortReason::Cancelled) {
                        tracing::info!(run_id = %id, "aborting attempt of a run cancelled elsewhere");
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    // Fell behind: due runs are looked for; an attempt whose cancellation
                    // was missed runs on, and its result is ignored (its lease is gone).
                    tracing::warn!(missed, "wake-up notices missed");
                    shared.wake.notify_one();
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = shared.stop_claiming.cancelled() => return,
        }
    }
}
