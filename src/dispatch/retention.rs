//! Retention: the leader deletes finished runs older than their status's age
//! (`[retention]`), with their attempts and events. Each statement deletes one bounded
//! batch and a pass stops after `max_batches_per_pass`, yielding between batches, so a
//! backlog of old runs is worked off over several passes while claims and completions go
//! on; queued and running runs are never touched.

use std::sync::Arc;

use super::Shared;
use super::ticker::{self, Service};

pub(super) async fn run(shared: Arc<Shared>) {
    if !shared.retention.enabled {
        return;
    }
    ticker::every(Service::Retention, &shared, || pass(&shared)).await;
}

/// One pass: for each terminal status, batches of runs past its age, until a batch comes
/// back short or the pass's batch budget is spent.
async fn pass(shared: &Shared) {
    if !shared.leads() {
        return;
    }
    let config = &shared.retention;
    let mut batches = 0;
    for (status, age) in config.ages() {
        let before =
            shared.clock.now() - chrono::Duration::from_std(age).unwrap_or(chrono::Duration::MAX);
        loop {
            if batches >= config.max_batches_per_pass || !shared.leads() {
                return;
            }
            batches += 1;
            match shared
                .store
                .delete_finished(status, before, config.batch)
                .await
            {
                Ok(n) => {
                    if n > 0 {
                        crate::metrics::retained_away(status.as_str(), n);
                        tracing::debug!(status = status.as_str(), deleted = n, "retention");
                    }
                    if (n as usize) < config.batch {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention pass failed");
                    return;
                }
            }
            tokio::task::yield_now().await;
        }
    }
}
