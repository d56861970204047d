//! The embedded SQLite backend for a single node. SQLite allows one writer at a time, so
//! writes go through a one-connection pool (no lock upgrades, no `SQLITE_BUSY` between our
//! own statements) and reads through a separate pool; WAL mode lets them run side by side.
//! Times are stored as integer milliseconds since the Unix epoch.
//!
//! Layout: this file (connection, enqueue, claim, heartbeat, event log writes, provider
//! state), `pick` (the quota-aware, fair claim), `finish` (ending attempts and runs),
//! `retention` (deleting old finished runs), `tenants` (enqueue buckets). Reads are
//! the store's `reads`, rows are decoded by its `codec`.

mod batches;
mod finish;
mod pick;
mod requeue;
mod retention;
mod tenants;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{FromRow, Sqlite, Transaction};
use uuid::Uuid;

use super::cluster::Cluster;
use super::codec::{ClaimedRecord, EventScope, StoredTime};
use super::event_data::*;
use super::model::*;
use super::reads::Reads;
use super::tenant_usage::EnqueueBucket;
use super::{OpenOptions, Result, StoreError};
use crate::run::{RunId, Status, TimeoutOrigin, WorkerId};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Each tenant's enqueue bucket: one process per file, so memory is where it lives.
    buckets: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, EnqueueBucket>>>,
}

pub(super) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(super) fn from_ms(v: i64) -> Result<DateTime<Utc>> {
    Utc.timestamp_millis_opt(v)
        .single()
        .ok_or_else(|| StoreError::Corrupt(format!("time {v} is out of range")))
}

/// SQLite stores a time as milliseconds since the Unix epoch.
impl StoredTime for i64 {
    fn from_utc(t: DateTime<Utc>) -> Self {
        ms(t)
    }

    fn into_utc(self) -> Result<DateTime<Utc>> {
        from_ms(self)
    }
}

impl SqliteStore {
    /// Opens (creating when missing) the database file and its folder.
    pub async fn open(path: &Path, options: &OpenOptions) -> Result<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let connect = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit survives power loss, as the enqueue reply promises.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.acquire_timeout.max(Duration::from_secs(30)))
            .connect_with(connect.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(options.max_connections.clamp(1, 8))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.read_only(true))
            .await?;
        Ok(SqliteStore {
            writer,
            reader,
            buckets: Default::default(),
        })
    }

    pub(in crate::store) async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.writer).await?;
        Ok(())
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin().await?)
    }

    /// The reads written once for both backends; times are milliseconds.
    pub(in crate::store) fn reads(&self) -> Reads<'_, Sqlite, i64> {
        Reads::new(&self.reader)
    }

    /// The replica and leader records, on the writer (they are mostly writes).
    pub(in crate::store) fn cluster(&self) -> Cluster<'_, Sqlite, i64> {
        Cluster::new(&self.writer)
    }

    pub(in crate::store) async fn enqueue(
        &self,
        runs: &[NewRun],
        start: Option<StartNow<'_>>,
        // One process per file: there is nobody else to notify.
        _notify_until: Option<DateTime<Utc>>,
    ) -> Result<(Vec<Enqueued>, Vec<RunEvent>)> {
        let mut tx = self.begin().await?;
        let written = insert_runs(&mut tx, runs, start).await?;
        tx.commit().await?;
        Ok(written)
    }

    pub(in crate::store) async fn claim_due(
        &self,
        worker: WorkerId,
        limit: usize,
        bounds: Option<ClaimBounds<'_>>,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<(Vec<ClaimedRun>, Vec<RunEvent>)> {
        let mut tx = self.begin().await?;
        // With quotas: the rules of the PostgreSQL pick, applied here (one writer, so nothing
        // can claim meanwhile).
        let ids: Option<Vec<Uuid>> = match bounds {
            None => None,
            Some(bounds) => Some(pick::pick(&mut tx, bounds, now, limit).await?),
        };
        let rows = match ids {
            None => {
                sqlx::query(
                    "UPDATE runs
                     SET status = 'running', attempts = attempts + 1, lease_owner = ?1,
                         lease_expires_at = ?2, started_at = COALESCE(started_at, ?3)
                     WHERE id IN (
                        SELECT id FROM runs
                        WHERE status = 'queued' AND due_at <= ?3
                          AND (queue_deadline_at IS NULL OR queue_deadline_at > ?3
                               OR started_at IS NOT NULL)
                          AND (batch IS NULL OR NOT EXISTS (
                               SELECT 1 FROM batches pb WHERE pb.id = runs.batch AND pb.paused))
                        ORDER BY class, priority, due_at
                        LIMIT ?4)
                     RETURNING id, attempts, max_attempts, provider, model, request, class,
                        priority, tenant, batch, concurrency_key, stream, timeout_ms, created_at,
                        due_at",
                )
                .bind(worker.0)
                .bind(ms(lease_until))
                .bind(ms(now))
                .bind(limit as i64)
                .fetch_all(&mut *tx)
                .await?
            }
            Some(ids) if ids.is_empty() => Vec::new(),
            Some(ids) => {
                let marks = vec!["?"; ids.len()].join(", ");
                let sql = format!(
                    "UPDATE runs
                     SET status = 'running', attempts = attempts + 1, lease_owner = ?,
                         lease_expires_at = ?, started_at = COALESCE(started_at, ?)
                     WHERE id IN ({marks})
                     RETURNING id, attempts, max_attempts, provider, model, request, class,
                        priority, tenant, batch, concurrency_key, stream, timeout_ms, created_at,
                        due_at"
                );
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(worker.0)
                    .bind(ms(lease_until))
                    .bind(ms(now));
                for id in ids {
                    query = query.bind(id);
                }
                query.fetch_all(&mut *tx).await?
            }
        };
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let (run, scope) = ClaimedRecord::<i64>::from_row(row)?.decode()?;
            sqlx::query(
                "INSERT INTO run_attempts (run_id, attempt, worker, started_at) VALUES (?, ?, ?, ?)",
            )
            .bind(run.id.0)
            .bind(run.attempt as i64)
            .bind(worker.0)
            .bind(ms(now))
            .execute(&mut *tx)
            .await?;
            claimed.push((run, scope));
        }
        // The events in dispatch order, as the claim's result is.
        claimed.sort_by_key(|(run, _)| (run.spec.class, run.spec.priority, run.due_at));
        let mut events = Vec::with_capacity(claimed.len());
        for (run, scope) in &claimed {
            let started = scope.event(EventKind::Started, now, Some(run.attempt), None);
            events.push(insert_event(&mut tx, started).await?);
        }
        tx.commit().await?;
        Ok((claimed.into_iter().map(|(run, _)| run).collect(), events))
    }

    pub(in crate::store) async fn extend_leases(
        &self,
        worker: WorkerId,
        runs: &[RunId],
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<RunId>> {
        let mut tx = self.begin().await?;
        let mut held = Vec::with_capacity(runs.len());
        for id in runs {
            let renewed = sqlx::query(
                "UPDATE runs SET lease_expires_at = ?
                 WHERE id = ? AND status = 'running' AND lease_owner = ?",
            )
            .bind(ms(lease_until))
            .bind(id.0)
            .bind(worker.0)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if renewed > 0 {
                held.push(*id);
            }
        }
        tx.commit().await?;
        Ok(held)
    }

    pub(in crate::store) async fn save_provider_state(
        &self,
        states: &[(String, String)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut tx = self.begin().await?;
        for (name, value) in states {
            sqlx::query(
                "INSERT INTO provider_state (provider, limiter, updated_at) VALUES (?, ?, ?)
                 ON CONFLICT (provider) DO UPDATE
                 SET limiter = excluded.limiter, updated_at = excluded.updated_at",
            )
            .bind(name)
            .bind(value)
            .bind(ms(now))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(in crate::store) async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

/// Inserts `runs` (with their events, starting the flagged ones: see [`StartNow`]) in
/// `tx`, the transaction of an enqueue or of a whole batch.
pub(super) async fn insert_runs(
    tx: &mut Transaction<'static, Sqlite>,
    runs: &[NewRun],
    start: Option<StartNow<'_>>,
) -> Result<(Vec<Enqueued>, Vec<RunEvent>)> {
    let mut out = Vec::with_capacity(runs.len());
    let mut events = Vec::with_capacity(runs.len());
    // Whether each run may start at once, decided before any of this batch is written
    // (as on PostgreSQL, where the batch is one statement).
    let mut go = vec![false; runs.len()];
    if let Some(s) = &start {
        for (i, r) in runs.iter().enumerate() {
            if !s.runs[i] || r.due_at > s.now {
                continue;
            }
            let ahead: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM runs WHERE status = 'queued' AND provider = ?
                    AND class = 0 AND due_at <= ?)",
            )
            .bind(&r.spec.provider)
            .bind(ms(s.now))
            .fetch_one(&mut **tx)
            .await?;
            go[i] = !ahead;
        }
    }
    for (i, r) in runs.iter().enumerate() {
        let idem = r.idem_key();
        let inserted = sqlx::query(
            "INSERT INTO runs (id, provider, model, request, class, priority, tenant,
                concurrency_key, session, batch, idem_key, metadata, stream, max_attempts,
                timeout_ms, queue_deadline_at, due_at, created_at, status, attempts)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', 0)
             ON CONFLICT DO NOTHING",
        )
        .bind(r.id.0)
        .bind(&r.spec.provider)
        .bind(&r.spec.model)
        .bind(r.request.get())
        .bind(r.spec.class.rank())
        .bind(r.spec.priority)
        .bind(&r.spec.tenant)
        .bind(&r.spec.concurrency_key)
        .bind(&r.session)
        .bind(&r.batch)
        .bind(&idem)
        .bind(r.metadata.as_ref().map(|m| m.get()))
        .bind(r.spec.stream)
        .bind(r.max_attempts)
        .bind(r.spec.timeout_ms)
        .bind(r.queue_deadline_at.map(ms))
        .bind(ms(r.due_at))
        .bind(ms(r.created_at))
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            let scope = EventScope {
                run_id: r.id,
                class: r.spec.class,
                tenant: r.spec.tenant.clone(),
                batch: r.batch.clone(),
            };
            let queued = scope.event(EventKind::Queued, r.created_at, None, None);
            events.push(insert_event(tx, queued).await?);
            out.push(Enqueued::Created(r.id));
            if let (Some(s), true) = (&start, go[i]) {
                events.push(start_now(tx, s, &scope).await?);
            }
            continue;
        }
        let holder: Option<Uuid> = sqlx::query_scalar("SELECT id FROM runs WHERE idem_key = ?")
            .bind(&idem)
            .fetch_optional(&mut **tx)
            .await?;
        let holder = holder.ok_or_else(|| {
            StoreError::Corrupt(format!(
                "run {} was neither inserted nor found by idempotency key",
                r.id
            ))
        })?;
        out.push(Enqueued::Existing(RunId(holder)));
    }
    Ok((out, events))
}

/// Appends `event` inside the transaction of the state change it reports; returns it with
/// the id the log gave it.
pub(super) async fn insert_event(
    tx: &mut Transaction<'static, Sqlite>,
    event: RunEvent,
) -> Result<RunEvent> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO run_events (run_id, kind, at, attempt, data, class, tenant, batch)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(event.run_id.0)
    .bind(event.kind.as_str())
    .bind(ms(event.at))
    .bind(event.attempt.map(i64::from))
    .bind(event.data.as_ref().map(|d| d.get()))
    .bind(event.class.rank())
    .bind(&event.tenant)
    .bind(&event.batch)
    .fetch_one(&mut **tx)
    .await?;
    Ok(RunEvent { id, ..event })
}

async fn close_attempt(
    tx: &mut Transaction<'static, Sqlite>,
    id: RunId,
    attempt: u32,
    at: DateTime<Utc>,
    outcome: &str,
    message: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE run_attempts SET finished_at = ?, outcome = ?, error_message = COALESCE(?, error_message)
         WHERE run_id = ? AND attempt = ? AND finished_at IS NULL",
    )
    .bind(ms(at))
    .bind(outcome)
    .bind(message)
    .bind(id.0)
    .bind(attempt as i64)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Starts a run just inserted by the same transaction: attempt 1 under the lease.
async fn start_now(
    tx: &mut Transaction<'static, Sqlite>,
    s: &StartNow<'_>,
    scope: &EventScope,
) -> Result<RunEvent> {
    sqlx::query(
        "UPDATE runs SET status = 'running', attempts = 1, lease_owner = ?, lease_expires_at = ?,
            started_at = ? WHERE id = ?",
    )
    .bind(s.worker.0)
    .bind(ms(s.lease_until))
    .bind(ms(s.now))
    .bind(scope.run_id.0)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO run_attempts (run_id, attempt, worker, started_at) VALUES (?, 1, ?, ?)",
    )
    .bind(scope.run_id.0)
    .bind(s.worker.0)
    .bind(ms(s.now))
    .execute(&mut **tx)
    .await?;
    insert_event(tx, scope.event(EventKind::Started, s.now, Some(1), None)).await
}
