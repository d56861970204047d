//! The cluster view of `GET /health`: every process sharing the database that beat
//! recently and which one leads maintenance, read from the database, so any replica shows
//! the whole cluster.

use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::store::rfc3339;

#[derive(Serialize, ToSchema)]
#[schema(as = HealthCluster)]
pub(super) struct ClusterBody {
    /// The id of the process that answered.
    this_replica: String,
    /// The maintenance leader's lease; null before any process took it.
    #[schema(required = true)]
    leader: Option<LeaderBody>,
    /// Processes that beat recently, oldest first.
    replicas: Vec<ReplicaBody>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = HealthLeader)]
struct LeaderBody {
    id: String,
    /// Grows by one at every change of leader.
    term: i64,
    since: String,
    lease_expires_at: String,
    /// False once the lease has run out without being renewed (the leader is gone; the
    /// next process to beat takes over).
    live: bool,
}

#[derive(Serialize, ToSchema)]
#[schema(as = HealthReplica)]
struct ReplicaBody {
    id: String,
    version: String,
    started_at: String,
    heartbeat_at: String,
    slots: u32,
    in_flight: u32,
    leader: bool,
}

/// The cluster as the database has it; `None` (logged) when it could not be read.
pub(super) async fn read(state: &AppState) -> Option<ClusterBody> {
    let now = state.clock.now();
    let silence =
        chrono::Duration::from_std(state.dispatcher.replica_silence()).unwrap_or_default();
    let (leader, replicas) =
        match tokio::try_join!(state.store.leader(), state.store.replicas(now - silence)) {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(error = %e, "health: cluster view unavailable");
                return None;
            }
        };
    let live_leader = leader.filter(|l| l.expires_at >= now).map(|l| l.holder);
    Some(ClusterBody {
        this_replica: state.dispatcher.status().worker_id.to_string(),
        leader: leader.map(|l| LeaderBody {
            id: l.holder.to_string(),
            term: l.term,
            since: rfc3339(l.since),
            lease_expires_at: rfc3339(l.expires_at),
            live: l.expires_at >= now,
        }),
        replicas: replicas
            .into_iter()
            .map(|r| ReplicaBody {
                id: r.id.to_string(),
                version: r.version,
                started_at: rfc3339(r.started_at),
                heartbeat_at: rfc3339(r.heartbeat_at),
                slots: r.slots,
                in_flight: r.in_flight,
                leader: live_leader == Some(r.id),
            })
            .collect(),
    })
}
