//! The embedded SQLite backend for a single node. SQLite allows one writer at a time, so
//! writes go through a one-connection pool (no lock upgrades, no `SQLITE_BUSY` between our
//! own statements) and reads through a separate pool; WAL mode lets them run side by side.
//! Times are stored as integer milliseconds since the Unix epoch.
//!
//! Layout: this file (state changes), `rows` (row mapping and event log).

mod pick;
mod rows;

use rows::{EventScope, claimed_from_row, event_from_row, insert_event, view_from_row};

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::value::RawValue;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use uuid::Uuid;

use super::model::*;
use super::postgres::{
    ABANDONED_MESSAGE, abandoned_data, abandoned_final_data, cancel_outcome, parse_class,
    parse_status,
};
use super::{OpenOptions, Result, StoreError};
use crate::run::{Class, RunId, Status, TimeoutOrigin, WorkerId};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

pub(super) fn db(e: sqlx::Error) -> StoreError {
    StoreError::from_sqlx(e)
}

pub(super) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(super) fn from_ms(v: i64) -> Result<DateTime<Utc>> {
    Utc.timestamp_millis_opt(v)
        .single()
        .ok_or_else(|| StoreError::Corrupt(format!("time {v} is out of range")))
}

pub(super) fn from_ms_opt(v: Option<i64>) -> Result<Option<DateTime<Utc>>> {
    v.map(from_ms).transpose()
}

const RUN_COLUMNS: &str = "id, status, provider, model, class, priority, tenant, concurrency_key, \
     session, batch, metadata, stream, attempts, max_attempts, timeout_ms, queue_deadline_at, \
     due_at, created_at, started_at, finished_at, timeout_origin, drop_reason, output_content, \
     finish_reason, prompt_tokens, completion_tokens, error_kind, error_message, error_status";

impl SqliteStore {
    /// Opens (creating when missing) the database file and its folder.
    pub async fn open(path: &Path, options: &OpenOptions) -> Result<SqliteStore> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let connect = SqliteConnectOptions::from_str("sqlite://")
            .map_err(db)?
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
            .await
            .map_err(db)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(options.max_connections.clamp(1, 8))
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.read_only(true))
            .await
            .map_err(db)?;
        Ok(SqliteStore { writer, reader })
    }

    pub(in crate::store) async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.writer).await?;
        Ok(())
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>> {
        self.writer.begin().await.map_err(db)
    }

    pub(in crate::store) async fn enqueue(
        &self,
        runs: &[NewRun],
    ) -> Result<(Vec<Enqueued>, Vec<RunEvent>)> {
        let mut tx = self.begin().await?;
        let mut out = Vec::with_capacity(runs.len());
        let mut events = Vec::with_capacity(runs.len());
        for r in runs {
            let idem = r.idem_key();
            let inserted = sqlx::query(
                "INSERT INTO runs (id, provider, model, request, class, priority, tenant,
                    concurrency_key, session, batch, idem_key, metadata, stream, max_attempts,
                    timeout_ms, queue_deadline_at, due_at, created_at, status, attempts)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', 0)
                 ON CONFLICT DO NOTHING",
            )
            .bind(r.id.0)
            .bind(&r.provider)
            .bind(&r.model)
            .bind(r.request.get())
            .bind(r.class.rank())
            .bind(r.priority)
            .bind(&r.tenant)
            .bind(&r.concurrency_key)
            .bind(&r.session)
            .bind(&r.batch)
            .bind(&idem)
            .bind(r.metadata.as_ref().map(|m| m.get()))
            .bind(r.stream)
            .bind(r.max_attempts)
            .bind(r.timeout_ms)
            .bind(r.queue_deadline_at.map(ms))
            .bind(ms(r.due_at))
            .bind(ms(r.created_at))
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
            if inserted == 1 {
                let scope = EventScope {
                    class: r.class,
                    tenant: r.tenant.clone(),
                    batch: r.batch.clone(),
                };
                let e = insert_event(
                    &mut tx,
                    r.id,
                    EventKind::Queued,
                    r.created_at,
                    None,
                    None,
                    &scope,
                )
                .await?;
                events.push(e);
                out.push(Enqueued::Created(r.id));
                continue;
            }
            let holder: Option<Uuid> = sqlx::query_scalar("SELECT id FROM runs WHERE idem_key = ?")
                .bind(&idem)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
            let holder = holder.ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "run {} was neither inserted nor found by idempotency key",
                    r.id
                ))
            })?;
            out.push(Enqueued::Existing(RunId(holder)));
        }
        tx.commit().await.map_err(db)?;
        Ok((out, events))
    }

    pub(in crate::store) async fn claim_due(
        &self,
        worker: WorkerId,
        limit: usize,
        quotas: Option<&[ProviderQuota]>,
        key_caps: KeyCaps,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<(Vec<ClaimedRun>, Vec<RunEvent>)> {
        let mut tx = self.begin().await?;
        // With quotas: the rules of the PostgreSQL pick, applied here (one writer, so nothing
        // can claim meanwhile).
        let ids: Option<Vec<Uuid>> = match quotas {
            None => None,
            Some(quotas) => Some(pick::pick(&mut tx, quotas, key_caps, now, limit).await?),
        };
        let rows = match ids {
            None => sqlx::query(
                "UPDATE runs
                     SET status = 'running', attempts = attempts + 1, lease_owner = ?1,
                         lease_expires_at = ?2, started_at = COALESCE(started_at, ?3)
                     WHERE id IN (
                        SELECT id FROM runs
                        WHERE status = 'queued' AND due_at <= ?3
                          AND (queue_deadline_at IS NULL OR queue_deadline_at > ?3
                               OR started_at IS NOT NULL)
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
            .await
            .map_err(db)?,
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
                query.fetch_all(&mut *tx).await.map_err(db)?
            }
        };
        let mut claimed = Vec::with_capacity(rows.len());
        for row in &rows {
            let run = claimed_from_row(row)?;
            sqlx::query(
                "INSERT INTO run_attempts (run_id, attempt, worker, started_at) VALUES (?, ?, ?, ?)",
            )
            .bind(run.id.0)
            .bind(run.attempt as i64)
            .bind(worker.0)
            .bind(ms(now))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            let order = (
                run.class,
                run.priority,
                row.try_get::<i64, _>("due_at").map_err(db)?,
            );
            claimed.push((order, EventScope::from_row(row)?, run));
        }
        claimed.sort_by_key(|(order, _, _)| *order);
        let mut events = Vec::with_capacity(claimed.len());
        for (_, scope, run) in &claimed {
            let e = insert_event(
                &mut tx,
                run.id,
                EventKind::Started,
                now,
                Some(run.attempt),
                None,
                scope,
            )
            .await?;
            events.push(e);
        }
        tx.commit().await.map_err(db)?;
        Ok((claimed.into_iter().map(|(_, _, run)| run).collect(), events))
    }

    pub(in crate::store) async fn extend_leases(
        &self,
        worker: WorkerId,
        runs: &[RunId],
        lease_until: DateTime<Utc>,
    ) -> Result<u64> {
        let mut tx = self.begin().await?;
        let mut n = 0;
        for id in runs {
            n += sqlx::query(
                "UPDATE runs SET lease_expires_at = ?
                 WHERE id = ? AND status = 'running' AND lease_owner = ?",
            )
            .bind(ms(lease_until))
            .bind(id.0)
            .bind(worker.0)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        }
        tx.commit().await.map_err(db)?;
        Ok(n)
    }

    pub(in crate::store) async fn mark_completed(
        &self,
        worker: WorkerId,
        done: &[Completion],
    ) -> Result<Vec<RunEvent>> {
        let mut tx = self.begin().await?;
        let mut events = Vec::with_capacity(done.len());
        for c in done {
            let hit = sqlx::query(
                "UPDATE runs
                 SET status = 'completed', finished_at = ?, output_content = ?, finish_reason = ?,
                     prompt_tokens = ?, completion_tokens = ?, lease_owner = NULL,
                     lease_expires_at = NULL, error_kind = NULL, error_message = NULL,
                     error_status = NULL
                 WHERE id = ? AND status = 'running' AND lease_owner = ? AND attempts = ?
                 RETURNING class, tenant, batch",
            )
            .bind(ms(c.finished_at))
            .bind(&c.content)
            .bind(&c.finish_reason)
            .bind(c.prompt_tokens)
            .bind(c.completion_tokens)
            .bind(c.id.0)
            .bind(worker.0)
            .bind(c.attempt as i64)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
            let Some(row) = hit else {
                continue;
            };
            close_attempt(
                &mut tx,
                c.id,
                c.attempt,
                c.finished_at,
                OUTCOME_COMPLETED,
                None,
            )
            .await?;
            let scope = EventScope::from_row(&row)?;
            let e = insert_event(
                &mut tx,
                c.id,
                EventKind::Completed,
                c.finished_at,
                Some(c.attempt),
                None,
                &scope,
            )
            .await?;
            events.push(e);
        }
        tx.commit().await.map_err(db)?;
        Ok(events)
    }

    pub(in crate::store) async fn mark_failed(
        &self,
        worker: WorkerId,
        failed: &[Failure],
    ) -> Result<Vec<RunEvent>> {
        let mut tx = self.begin().await?;
        let mut events = Vec::with_capacity(failed.len());
        for f in failed {
            let (status, due, finished, origin) = match f.next {
                FailureNext::RetryAt(at) => (Status::Queued, Some(ms(at)), None, None),
                FailureNext::Finish {
                    status,
                    timeout_origin,
                } => (status, None, Some(ms(f.finished_at)), timeout_origin),
            };
            let hit = sqlx::query(
                "UPDATE runs
                 SET status = ?, due_at = COALESCE(?, due_at), finished_at = ?, timeout_origin = ?,
                     error_kind = ?, error_message = ?, error_status = ?, lease_owner = NULL,
                     lease_expires_at = NULL
                 WHERE id = ? AND status = 'running' AND lease_owner = ? AND attempts = ?
                 RETURNING class, tenant, batch",
            )
            .bind(status.as_str())
            .bind(due)
            .bind(finished)
            .bind(origin.map(TimeoutOrigin::as_str))
            .bind(f.error.kind.as_str())
            .bind(&f.error.message)
            .bind(f.error.status)
            .bind(f.id.0)
            .bind(worker.0)
            .bind(f.attempt as i64)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
            let Some(row) = hit else {
                continue;
            };
            sqlx::query(
                "UPDATE run_attempts
                 SET finished_at = ?, outcome = ?, status = ?, retry_after_ms = ?, error_message = ?
                 WHERE run_id = ? AND attempt = ? AND finished_at IS NULL",
            )
            .bind(ms(f.finished_at))
            .bind(f.error.kind.as_str())
            .bind(f.error.status)
            .bind(f.retry_after_ms)
            .bind(&f.error.message)
            .bind(f.id.0)
            .bind(f.attempt as i64)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            let scope = EventScope::from_row(&row)?;
            let retry_at = match f.next {
                FailureNext::RetryAt(at) => Some(at),
                FailureNext::Finish { .. } => None,
            };
            let e = insert_event(
                &mut tx,
                f.id,
                EventKind::AttemptFailed,
                f.finished_at,
                Some(f.attempt),
                Some(attempt_failed_data(&f.error, retry_at)),
                &scope,
            )
            .await?;
            events.push(e);
            if let Some(kind) = EventKind::terminal_for(status) {
                let e = insert_event(
                    &mut tx,
                    f.id,
                    kind,
                    f.finished_at,
                    Some(f.attempt),
                    Some(final_failure_data(&f.error, origin)),
                    &scope,
                )
                .await?;
                events.push(e);
            }
        }
        tx.commit().await.map_err(db)?;
        Ok(events)
    }

    pub(in crate::store) async fn release(
        &self,
        worker: WorkerId,
        runs: &[(RunId, u32)],
        now: DateTime<Utc>,
    ) -> Result<(u64, Vec<RunEvent>)> {
        let mut tx = self.begin().await?;
        let mut events = Vec::with_capacity(runs.len());
        for (id, attempt) in runs {
            let hit = sqlx::query(
                "UPDATE runs
                 SET status = 'queued', attempts = attempts - 1, due_at = ?, lease_owner = NULL,
                     lease_expires_at = NULL
                 WHERE id = ? AND status = 'running' AND lease_owner = ? AND attempts = ?
                 RETURNING class, tenant, batch",
            )
            .bind(ms(now))
            .bind(id.0)
            .bind(worker.0)
            .bind(*attempt as i64)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
            let Some(row) = hit else {
                continue;
            };
            close_attempt(&mut tx, *id, *attempt, now, OUTCOME_RELEASED, None).await?;
            let data = RawValue::from_string(r#"{"reason":"released"}"#.to_string())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let scope = EventScope::from_row(&row)?;
            let e = insert_event(
                &mut tx,
                *id,
                EventKind::Queued,
                now,
                Some(*attempt),
                Some(data),
                &scope,
            )
            .await?;
            events.push(e);
        }
        tx.commit().await.map_err(db)?;
        Ok((events.len() as u64, events))
    }

    pub(in crate::store) async fn cancel(
        &self,
        id: RunId,
        now: DateTime<Utc>,
    ) -> Result<(CancelOutcome, Vec<RunEvent>)> {
        let mut tx = self.begin().await?;
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM runs WHERE id = ?")
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        let Some(status) = status else {
            return Ok((cancel_outcome(None)?, Vec::new()));
        };
        let hit = sqlx::query(
            "UPDATE runs
             SET status = 'cancelled', finished_at = ?, lease_owner = NULL, lease_expires_at = NULL,
                 error_kind = 'cancelled', error_message = 'cancelled by request',
                 error_status = NULL
             WHERE id = ? AND status IN ('queued', 'running')
             RETURNING attempts, class, tenant, batch",
        )
        .bind(ms(now))
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let mut events = Vec::new();
        if let Some(row) = hit {
            sqlx::query(
                "UPDATE run_attempts SET finished_at = ?, outcome = 'cancelled'
                 WHERE run_id = ? AND finished_at IS NULL",
            )
            .bind(ms(now))
            .bind(id.0)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            let attempts: i64 = row.try_get("attempts").map_err(db)?;
            let data = RawValue::from_string(
                r#"{"kind":"cancelled","message":"cancelled by request"}"#.to_string(),
            )
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let scope = EventScope::from_row(&row)?;
            let attempt = (attempts > 0).then_some(attempts as u32);
            events.push(
                insert_event(
                    &mut tx,
                    id,
                    EventKind::Cancelled,
                    now,
                    attempt,
                    Some(data),
                    &scope,
                )
                .await?,
            );
        }
        tx.commit().await.map_err(db)?;
        let applied = events.len() as i64;
        Ok((cancel_outcome(Some((status, applied)))?, events))
    }

    pub(in crate::store) async fn rescue_expired(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<(Vec<(RunId, Status)>, Vec<RunEvent>)> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(
            "UPDATE runs
             SET status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
                 finished_at = CASE WHEN attempts >= max_attempts THEN ?1 ELSE NULL END,
                 due_at = ?1, lease_owner = NULL, lease_expires_at = NULL,
                 error_kind = 'timeout', error_message = ?2, error_status = NULL
             WHERE id IN (
                SELECT id FROM runs WHERE status = 'running' AND lease_expires_at < ?1
                ORDER BY lease_expires_at LIMIT ?3)
             RETURNING id, attempts, status, class, tenant, batch",
        )
        .bind(ms(now))
        .bind(ABANDONED_MESSAGE)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let id = RunId(row.try_get("id").map_err(db)?);
            let attempt = row.try_get::<i64, _>("attempts").map_err(db)? as u32;
            let status = parse_status(&row.try_get::<String, _>("status").map_err(db)?)?;
            close_attempt(
                &mut tx,
                id,
                attempt,
                now,
                OUTCOME_ABANDONED,
                Some(ABANDONED_MESSAGE),
            )
            .await?;
            let scope = EventScope::from_row(row)?;
            let requeued = status == Status::Queued;
            events.push(
                insert_event(
                    &mut tx,
                    id,
                    EventKind::AttemptFailed,
                    now,
                    Some(attempt),
                    Some(abandoned_data(requeued.then_some(now))),
                    &scope,
                )
                .await?,
            );
            if !requeued {
                events.push(
                    insert_event(
                        &mut tx,
                        id,
                        EventKind::Failed,
                        now,
                        Some(attempt),
                        Some(abandoned_final_data()),
                        &scope,
                    )
                    .await?,
                );
            }
            out.push((id, status));
        }
        tx.commit().await.map_err(db)?;
        Ok((out, events))
    }

    pub(in crate::store) async fn events_for_run(
        &self,
        run: RunId,
        after: i64,
    ) -> Result<Vec<RunEvent>> {
        let rows = sqlx::query(
            "SELECT id, run_id, kind, at, attempt, data, class, tenant, batch
             FROM run_events WHERE run_id = ? AND id > ? ORDER BY id",
        )
        .bind(run.0)
        .bind(after)
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        rows.iter().map(event_from_row).collect()
    }

    pub(in crate::store) async fn events_after(
        &self,
        after: i64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RunEvent>> {
        let rows = sqlx::query(
            "SELECT id, run_id, kind, at, attempt, data, class, tenant, batch
             FROM run_events
             WHERE id > ?1 AND (?2 IS NULL OR class = ?2) AND (?3 IS NULL OR tenant = ?3)
               AND (?4 IS NULL OR batch = ?4)
             ORDER BY id LIMIT ?5",
        )
        .bind(after)
        .bind(filter.class.map(|c| c.rank()))
        .bind(filter.tenant.as_deref())
        .bind(filter.batch.as_deref())
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        rows.iter().map(event_from_row).collect()
    }

    pub(in crate::store) async fn last_event_id(&self) -> Result<i64> {
        let id: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM run_events")
            .fetch_one(&self.reader)
            .await
            .map_err(db)?;
        Ok(id.unwrap_or(0))
    }

    pub(in crate::store) async fn get_run(&self, id: RunId) -> Result<Option<RunView>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?");
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.0)
            .fetch_optional(&self.reader)
            .await
            .map_err(db)?
        else {
            return Ok(None);
        };
        let attempts = sqlx::query(
            "SELECT attempt, started_at, finished_at, outcome, status, retry_after_ms, error_message
             FROM run_attempts WHERE run_id = ? ORDER BY id",
        )
        .bind(id.0)
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        let mut view = view_from_row(&row)?;
        for a in &attempts {
            view.attempt_log.push(AttemptView {
                attempt: a.try_get::<i64, _>("attempt").map_err(db)? as u32,
                started_at: from_ms(a.try_get("started_at").map_err(db)?)?,
                finished_at: from_ms_opt(a.try_get("finished_at").map_err(db)?)?,
                outcome: a.try_get("outcome").map_err(db)?,
                status: a.try_get("status").map_err(db)?,
                retry_after_ms: a.try_get("retry_after_ms").map_err(db)?,
                error_message: a.try_get("error_message").map_err(db)?,
            });
        }
        Ok(Some(view))
    }

    pub(in crate::store) async fn expire_queued(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<(Vec<Expired>, Vec<RunEvent>)> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(
            "UPDATE runs
             SET status = CASE WHEN class = 0 THEN 'timed_out' ELSE 'dropped' END,
                 finished_at = ?1,
                 timeout_origin = CASE WHEN class = 0 THEN 'queue_wait' END,
                 drop_reason = CASE WHEN class = 1 THEN 'stale' END,
                 error_kind = CASE WHEN class = 0 THEN 'timeout' END,
                 error_message = CASE WHEN class = 0 THEN ?3 END,
                 error_status = NULL
             WHERE id IN (
                SELECT id FROM runs
                WHERE status = 'queued' AND started_at IS NULL AND queue_deadline_at <= ?1
                ORDER BY queue_deadline_at LIMIT ?2)
             RETURNING id, class, tenant, batch, created_at",
        )
        .bind(ms(now))
        .bind(limit as i64)
        .bind(QUEUE_WAIT_MESSAGE)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let mut expired = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let id = RunId(row.try_get("id").map_err(db)?);
            let scope = EventScope::from_row(row)?;
            let (status, kind, data) = match scope.class {
                Class::Live => (Status::TimedOut, EventKind::TimedOut, queue_wait_data()),
                Class::Background => (Status::Dropped, EventKind::Dropped, stale_data()),
            };
            events.push(insert_event(&mut tx, id, kind, now, None, Some(data), &scope).await?);
            expired.push(Expired {
                id,
                class: scope.class,
                status,
                created_at: from_ms(row.try_get("created_at").map_err(db)?)?,
            });
        }
        tx.commit().await.map_err(db)?;
        Ok((expired, events))
    }

    pub(in crate::store) async fn provider_backlog(
        &self,
        provider: &str,
        now: DateTime<Utc>,
    ) -> Result<(i64, i64)> {
        sqlx::query_as(
            "SELECT
                (SELECT count(*) FROM runs WHERE provider = ?1 AND class = 0
                   AND status = 'queued' AND due_at <= ?2),
                (SELECT count(*) FROM runs WHERE provider = ?1 AND class = 1
                   AND status = 'queued')",
        )
        .bind(provider)
        .bind(ms(now))
        .fetch_one(&self.reader)
        .await
        .map_err(db)
    }

    pub(in crate::store) async fn session_background_since(
        &self,
        session: &str,
        key: Option<&str>,
        since: DateTime<Utc>,
    ) -> Result<(i64, Option<DateTime<Utc>>)> {
        let (n, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), min(created_at) FROM runs
             WHERE session = ? AND class = 1 AND concurrency_key IS ? AND created_at > ?",
        )
        .bind(session)
        .bind(key)
        .bind(ms(since))
        .fetch_one(&self.reader)
        .await
        .map_err(db)?;
        Ok((n, from_ms_opt(oldest)?))
    }

    pub(in crate::store) async fn busiest_keys(&self, limit: usize) -> Result<Vec<KeyLoad>> {
        let rows: Vec<(String, i16, i64, i64)> = sqlx::query_as(
            "SELECT concurrency_key, class,
                    SUM(CASE WHEN status = 'running' THEN 1 ELSE 0 END) AS running,
                    SUM(CASE WHEN status = 'queued' THEN 1 ELSE 0 END) AS queued
             FROM runs
             WHERE status IN ('queued', 'running') AND concurrency_key IS NOT NULL
             GROUP BY concurrency_key, class
             ORDER BY 3 DESC, 4 DESC, 1
             LIMIT ?",
        )
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        rows.into_iter()
            .map(|(key, class, running, queued)| {
                Ok(KeyLoad {
                    key,
                    class: parse_class(class)?,
                    running,
                    queued,
                })
            })
            .collect()
    }

    pub(in crate::store) async fn find_idempotent(&self, idem_key: &str) -> Result<Option<RunId>> {
        let id: Option<Uuid> = sqlx::query_scalar("SELECT id FROM runs WHERE idem_key = ?")
            .bind(idem_key)
            .fetch_optional(&self.reader)
            .await
            .map_err(db)?;
        Ok(id.map(RunId))
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
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    pub(in crate::store) async fn load_provider_state(&self) -> Result<Vec<(String, String)>> {
        sqlx::query_as("SELECT provider, limiter FROM provider_state")
            .fetch_all(&self.reader)
            .await
            .map_err(db)
    }

    pub(in crate::store) async fn count_active(&self) -> Result<Vec<(Class, Status, i64)>> {
        let rows: Vec<(i16, String, i64)> = sqlx::query_as(
            "SELECT class, status, count(*) FROM runs
             WHERE status IN ('queued', 'running') GROUP BY class, status",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        rows.into_iter()
            .map(|(class, status, n)| Ok((parse_class(class)?, parse_status(&status)?, n)))
            .collect()
    }

    pub(in crate::store) async fn next_due_at(&self) -> Result<Option<DateTime<Utc>>> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT min(due_at) FROM runs WHERE status = 'queued'")
                .fetch_one(&self.reader)
                .await
                .map_err(db)?;
        from_ms_opt(v)
    }

    pub(in crate::store) async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(db)?;
        Ok(())
    }

    pub(in crate::store) async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
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
    .await
    .map_err(db)?;
    Ok(())
}
