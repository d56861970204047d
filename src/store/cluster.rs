//! The cluster's shared records: each process's beat (the replicas table, read by the
//! cluster view in `/health`) and the maintenance leader's lease (one row; whoever holds
//! an unexpired lease leads). Written once for both backends, like `reads`: the upserts
//! are SQL both databases take alike. On SQLite there is one process per file, so it
//! always wins the lease; the same rules still hold.
//!
//! Leases are compared with the caller's `now`, as run leases are: processes sharing a
//! database need clocks that agree to well within a lease (NTP does).

use std::marker::PhantomData;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};
use uuid::Uuid;

use super::Result;
use super::codec::StoredTime;
use crate::run::WorkerId;

/// What a process reports on each beat.
#[derive(Clone, Debug)]
pub struct ReplicaBeat {
    pub id: WorkerId,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub slots: u32,
    pub in_flight: u32,
}

/// A process as the cluster last heard of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Replica {
    pub id: WorkerId,
    pub version: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub slots: u32,
    pub in_flight: u32,
}

/// Who holds the maintenance lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leadership {
    pub holder: WorkerId,
    /// Grows by one at every change of holder.
    pub term: i64,
    /// When this holder took the lease.
    pub since: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

type LeaderRow<T> = (Uuid, i64, T, T);
type ReplicaRow<T> = (Uuid, String, T, T, i32, i32);

/// The cluster records of one backend's pool (its writer on SQLite); `T` is how it stores
/// a time.
pub(super) struct Cluster<'a, DB: Database, T> {
    pool: &'a Pool<DB>,
    time: PhantomData<T>,
}

impl<'a, DB: Database, T> Cluster<'a, DB, T> {
    pub(super) fn new(pool: &'a Pool<DB>) -> Self {
        Cluster {
            pool,
            time: PhantomData,
        }
    }
}

impl<DB, T> Cluster<'_, DB, T>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> Uuid: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i32: Encode<'q, DB> + Type<DB>,
    for<'r> (Uuid,): FromRow<'r, DB::Row>,
    for<'r> LeaderRow<T>: FromRow<'r, DB::Row>,
    for<'r> ReplicaRow<T>: FromRow<'r, DB::Row>,
    for<'q> T: StoredTime + Encode<'q, DB> + Type<DB> + Send + Unpin,
{
    /// Records `beat`, then takes or renews the leader lease for `beat.id` until `now +
    /// lease` when it is free, expired or already its own. Returns who leads now.
    pub(super) async fn beat(
        &self,
        beat: &ReplicaBeat,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<Leadership>> {
        sqlx::query(
            "INSERT INTO replicas (id, version, started_at, heartbeat_at, slots, in_flight)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET version = excluded.version,
                 heartbeat_at = excluded.heartbeat_at, slots = excluded.slots,
                 in_flight = excluded.in_flight",
        )
        .bind(beat.id.0)
        .bind(beat.version.clone())
        .bind(T::from_utc(beat.started_at))
        .bind(T::from_utc(now))
        .bind(clamp_i32(beat.slots))
        .bind(clamp_i32(beat.in_flight))
        .execute(self.pool)
        .await?;
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        // Every SET expression reads the row as it was, so `leader.holder` is the old one.
        let won: Option<LeaderRow<T>> = sqlx::query_as(
            "INSERT INTO leader (holder, term, since, lease_expires_at) VALUES ($1, 1, $2, $3)
             ON CONFLICT (singleton) DO UPDATE SET
                 term = CASE WHEN leader.holder = excluded.holder
                             THEN leader.term ELSE leader.term + 1 END,
                 since = CASE WHEN leader.holder = excluded.holder
                              THEN leader.since ELSE excluded.since END,
                 holder = excluded.holder,
                 lease_expires_at = excluded.lease_expires_at
             WHERE leader.holder = excluded.holder OR leader.lease_expires_at < excluded.since
             RETURNING holder, term, since, lease_expires_at",
        )
        .bind(beat.id.0)
        .bind(T::from_utc(now))
        .bind(T::from_utc(until))
        .fetch_optional(self.pool)
        .await?;
        match won {
            Some(row) => Ok(Some(leadership(row)?)),
            None => self.leader().await,
        }
    }

    /// The lease as it stands (possibly expired), if anyone ever took it.
    pub(super) async fn leader(&self) -> Result<Option<Leadership>> {
        let row: Option<LeaderRow<T>> =
            sqlx::query_as("SELECT holder, term, since, lease_expires_at FROM leader")
                .fetch_optional(self.pool)
                .await?;
        row.map(leadership).transpose()
    }

    /// The processes that beat at or after `since`, oldest first.
    pub(super) async fn replicas(&self, since: DateTime<Utc>) -> Result<Vec<Replica>> {
        let rows: Vec<ReplicaRow<T>> = sqlx::query_as(
            "SELECT id, version, started_at, heartbeat_at, slots, in_flight FROM replicas
             WHERE heartbeat_at >= $1 ORDER BY started_at, id",
        )
        .bind(T::from_utc(since))
        .fetch_all(self.pool)
        .await?;
        rows.into_iter()
            .map(
                |(id, version, started_at, heartbeat_at, slots, in_flight)| {
                    Ok(Replica {
                        id: WorkerId(id),
                        version,
                        started_at: started_at.into_utc()?,
                        heartbeat_at: heartbeat_at.into_utc()?,
                        slots: u32::try_from(slots).unwrap_or(0),
                        in_flight: u32::try_from(in_flight).unwrap_or(0),
                    })
                },
            )
            .collect()
    }

    /// A process leaving: its record goes, and the lease with it when it held it, so
    /// another process leads at its next beat instead of after the lease.
    pub(super) async fn resign(&self, id: WorkerId) -> Result<()> {
        sqlx::query("DELETE FROM leader WHERE holder = $1")
            .bind(id.0)
            .execute(self.pool)
            .await?;
        sqlx::query("DELETE FROM replicas WHERE id = $1")
            .bind(id.0)
            .execute(self.pool)
            .await?;
        Ok(())
    }

    /// Deletes the records of processes silent since before `before`; how many went.
    pub(super) async fn forget_replicas(&self, before: DateTime<Utc>) -> Result<u64> {
        let gone: Vec<(Uuid,)> =
            sqlx::query_as("DELETE FROM replicas WHERE heartbeat_at < $1 RETURNING id")
                .bind(T::from_utc(before))
                .fetch_all(self.pool)
                .await?;
        Ok(gone.len() as u64)
    }
}

fn leadership<T: StoredTime>((holder, term, since, expires): LeaderRow<T>) -> Result<Leadership> {
    Ok(Leadership {
        holder: WorkerId(holder),
        term,
        since: since.into_utc()?,
        expires_at: expires.into_utc()?,
    })
}

fn clamp_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}
