//! The steward: this process's place in the cluster. Every third of
//! `dispatch.leader_lease` it records its beat (version, slots, attempts in flight) for the
//! cluster view and takes or renews the maintenance leader's lease. The rescuer, the
//! sweeper and retention make their passes only while this process leads, so one process
//! does maintenance however many share the database; when the leader dies, another takes
//! the lease once it expires.
//!
//! One leader at a time: a process believes it leads only until two thirds of the lease
//! after it *sent* the statement that renewed it (on its monotonic clock), while another
//! may take the lease only once it has expired in the database, a whole lease after it
//! was written. A leader cut off from the database stops believing a third of a lease
//! before anyone else can take over; process clocks need only agree within that third.
//!
//! On shutdown the steward resigns: the lease is released at once, so another process
//! leads at its next beat rather than after the lease.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Shared;
use super::ticker::{self, Service};
use crate::store::ReplicaBeat;

/// A process silent for this many beat periods is gone from the cluster view.
const SILENT_BEATS: u32 = 3;
/// The leader deletes the records of processes silent for this many periods.
const FORGOTTEN_BEATS: u32 = 100;

/// How often the steward beats: a third of the lease, so two renewals may fail before
/// the lease is lost.
pub(super) fn period(lease: Duration) -> Duration {
    lease / 3
}

/// Until when a lease renewed by a statement sent at `sent` may be believed held.
fn believed_until(sent: Instant, lease: Duration) -> Instant {
    sent + lease * 2 / 3
}

pub(super) async fn run(shared: Arc<Shared>) {
    let started_at = shared.clock.now();
    ticker::every(Service::Steward, &shared, || beat(&shared, started_at)).await;
    // Stops leading at once: maintenance stops with claiming.
    *shared.leading_until.lock().expect("leading lock") = None;
    crate::metrics::leader(false);
    if let Err(e) = shared.store.resign(shared.worker).await {
        tracing::warn!(error = %e, "could not resign from the cluster record");
    }
}

async fn beat(shared: &Shared, started_at: chrono::DateTime<chrono::Utc>) {
    let lease = shared.settings.leader_lease;
    let report = ReplicaBeat {
        id: shared.worker,
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_at,
        slots: u32::try_from(shared.settings.slots).unwrap_or(u32::MAX),
        in_flight: u32::try_from(shared.slots_busy()).unwrap_or(u32::MAX),
    };
    let sent = Instant::now();
    let now = shared.clock.now();
    let leader = match shared.store.beat_cluster(&report, now, lease).await {
        Ok(leader) => leader,
        Err(e) => {
            // Belief runs out by itself; nothing else to undo.
            tracing::warn!(error = %e, "cluster beat failed");
            return;
        }
    };
    let mine = leader.is_some_and(|l| l.holder == shared.worker);
    let was = {
        let mut until = shared.leading_until.lock().expect("leading lock");
        let was = until.is_some_and(|u| u > sent);
        *until = mine.then(|| believed_until(sent, lease));
        was
    };
    crate::metrics::leader(mine);
    if mine && !was {
        tracing::info!(
            term = leader.map(|l| l.term),
            "this process now leads maintenance"
        );
    } else if !mine && was {
        tracing::warn!("this process no longer leads maintenance");
    }
    let beat = period(lease);
    match shared
        .store
        .replicas(now - scaled(beat, SILENT_BEATS))
        .await
    {
        Ok(replicas) => crate::metrics::replicas(replicas.len()),
        Err(e) => tracing::debug!(error = %e, "could not count replicas"),
    }
    if mine
        && let Err(e) = shared
            .store
            .forget_replicas(now - scaled(beat, FORGOTTEN_BEATS))
            .await
    {
        tracing::debug!(error = %e, "could not forget silent replicas");
    }
}

fn scaled(d: Duration, n: u32) -> chrono::Duration {
    chrono::Duration::from_std(d * n).unwrap_or(chrono::Duration::MAX)
}

impl super::Dispatcher {
    /// How long a process may go without a beat and still count as part of the cluster.
    pub fn replica_silence(&self) -> Duration {
        period(self.shared.settings.leader_lease) * SILENT_BEATS
    }
}

impl Shared {
    /// Whether this process leads maintenance now.
    pub(super) fn leads(&self) -> bool {
        self.leading_until
            .lock()
            .expect("leading lock")
            .is_some_and(|until| until > Instant::now())
    }

    fn slots_busy(&self) -> usize {
        self.settings.slots - self.slots.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn belief_ends_a_third_of_a_lease_before_the_lease() {
        let lease = Duration::from_secs(15);
        let sent = Instant::now();
        assert_eq!(believed_until(sent, lease), sent + Duration::from_secs(10));
        assert_eq!(period(lease), Duration::from_secs(5));
        // Two renewals may fail and the belief still covers until the third.
        assert!(believed_until(sent, lease) >= sent + period(lease) * 2);
    }
}
