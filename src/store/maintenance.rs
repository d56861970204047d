//! The store calls of maintenance and the cluster record: each process's beat and the
//! leader's lease (the statements are `cluster`'s, written once for both backends), and
//! retention's deletes of old finished runs.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Backend, Leadership, Replica, ReplicaBeat, Result, Store, StoreError};
use crate::run::{Status, WorkerId};

impl Store {
    /// Records this process's beat and takes or renews the maintenance leader's lease for
    /// it (until `now + lease`) when the lease is free, expired or its own. Returns who
    /// leads now.
    pub async fn beat_cluster(
        &self,
        beat: &ReplicaBeat,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<Leadership>> {
        delegate!(self, s => s.cluster().beat(beat, now, lease).await)
    }

    /// The leader's lease as it stands (possibly expired).
    pub async fn leader(&self) -> Result<Option<Leadership>> {
        delegate!(self, s => s.cluster().leader().await)
    }

    /// The processes that beat at or after `since`, oldest first.
    pub async fn replicas(&self, since: DateTime<Utc>) -> Result<Vec<Replica>> {
        delegate!(self, s => s.cluster().replicas(since).await)
    }

    /// A process leaving: its record goes, and the leader's lease when it held it.
    pub async fn resign(&self, id: WorkerId) -> Result<()> {
        delegate!(self, s => s.cluster().resign(id).await)
    }

    /// Deletes the records of processes silent since before `before`.
    pub async fn forget_replicas(&self, before: DateTime<Utc>) -> Result<u64> {
        delegate!(self, s => s.cluster().forget_replicas(before).await)
    }

    /// Retention: deletes up to `limit` runs that ended with `status` before `before`,
    /// oldest first, with their attempts and events. Returns how many went. Only terminal
    /// statuses are accepted.
    pub async fn delete_finished(
        &self,
        status: Status,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64> {
        if !status.is_terminal() {
            return Err(StoreError::Misuse("retention deletes finished runs only"));
        }
        if limit == 0 {
            return Ok(0);
        }
        delegate!(self, s => s.delete_finished(status, before, limit).await)
    }
}
