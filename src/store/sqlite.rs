//! The embedded SQLite backend for a single node. SQLite allows one writer at a time, so
//! writes go through a one-connection pool (no lock upgrades, no `SQLITE_BUSY` between our
//! own statements) and reads through a separate pool; WAL mode lets them run side by side.
//! Times are stored as integer milliseconds since the Unix epoch.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use uuid::Uuid;

use super::model::*;
use super::postgres::{ABANDONED_MESSAGE, cancel_outcome, parse_class, parse_status, raw_json};
use super::{OpenOptions, Result, StoreError};
use crate::run::{Class, ErrorKind, RunId, Status, TimeoutOrigin, WorkerId};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

#[derive(Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

fn db(e: sqlx::Error) -> StoreError {
    StoreError::from_sqlx(e)
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn from_ms(v: i64) -> Result<DateTime<Utc>> {
    Utc.timestamp_millis_opt(v)
        .single()
        .ok_or_else(|| StoreError::Corrupt(format!("time {v} is out of range")))
}

fn from_ms_opt(v: Option<i64>) -> Result<Option<DateTime<Utc>>> {
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

    pub(super) async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.writer).await?;
        Ok(())
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>> {
        self.writer.begin().await.map_err(db)
    }

    pub(super) async fn enqueue(&self, runs: &[NewRun]) -> Result<Vec<Enqueued>> {
        let mut tx = self.begin().await?;
        let mut out = Vec::with_capacity(runs.len());
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
        Ok(out)
    }

    pub(super) async fn claim_due(
        &self,
        worker: WorkerId,
        limit: usize,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<ClaimedRun>> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(
            "UPDATE runs
             SET status = 'running', attempts = attempts + 1, lease_owner = ?1,
                 lease_expires_at = ?2, started_at = COALESCE(started_at, ?3)
             WHERE id IN (
                SELECT id FROM runs
                WHERE status = 'queued' AND due_at <= ?3
                ORDER BY class, priority, due_at
                LIMIT ?4)
             RETURNING id, attempts, max_attempts, provider, model, request, class, priority,
                tenant, concurrency_key, stream, timeout_ms, created_at, due_at",
        )
        .bind(worker.0)
        .bind(ms(lease_until))
        .bind(ms(now))
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let mut claimed = Vec::with_capacity(rows.len());
        let mut order = Vec::with_capacity(rows.len());
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
            order.push((
                run.class,
                run.priority,
                row.try_get::<i64, _>("due_at").map_err(db)?,
            ));
            claimed.push(run);
        }
        tx.commit().await.map_err(db)?;
        let mut paired: Vec<_> = order.into_iter().zip(claimed).collect();
        paired.sort_by_key(|(key, _)| *key);
        Ok(paired.into_iter().map(|(_, run)| run).collect())
    }

    pub(super) async fn extend_leases(
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

    pub(super) async fn mark_completed(
        &self,
        worker: WorkerId,
        done: &[Completion],
    ) -> Result<Vec<RunId>> {
        let mut tx = self.begin().await?;
        let mut applied = Vec::with_capacity(done.len());
        for c in done {
            let hit = sqlx::query(
                "UPDATE runs
                 SET status = 'completed', finished_at = ?, output_content = ?, finish_reason = ?,
                     prompt_tokens = ?, completion_tokens = ?, lease_owner = NULL,
                     lease_expires_at = NULL, error_kind = NULL, error_message = NULL,
                     error_status = NULL
                 WHERE id = ? AND status = 'running' AND lease_owner = ? AND attempts = ?",
            )
            .bind(ms(c.finished_at))
            .bind(&c.content)
            .bind(&c.finish_reason)
            .bind(c.prompt_tokens)
            .bind(c.completion_tokens)
            .bind(c.id.0)
            .bind(worker.0)
            .bind(c.attempt as i64)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
            if hit == 0 {
                continue;
            }
            close_attempt(
                &mut tx,
                c.id,
                c.attempt,
                c.finished_at,
                OUTCOME_COMPLETED,
                None,
            )
            .await?;
            applied.push(c.id);
        }
        tx.commit().await.map_err(db)?;
        Ok(applied)
    }

    pub(super) async fn mark_failed(
        &self,
        worker: WorkerId,
        failed: &[Failure],
    ) -> Result<Vec<RunId>> {
        let mut tx = self.begin().await?;
        let mut applied = Vec::with_capacity(failed.len());
        for f in failed {
            let (status, due, finished, origin) = match f.next {
                FailureNext::RetryAt(at) => (Status::Queued, Some(ms(at)), None, None),
                FailureNext::Finish {
                    status,
                    timeout_origin,
                } => (
                    status,
                    None,
                    Some(ms(f.finished_at)),
                    timeout_origin.map(TimeoutOrigin::as_str),
                ),
            };
            let hit = sqlx::query(
                "UPDATE runs
                 SET status = ?, due_at = COALESCE(?, due_at), finished_at = ?, timeout_origin = ?,
                     error_kind = ?, error_message = ?, error_status = ?, lease_owner = NULL,
                     lease_expires_at = NULL
                 WHERE id = ? AND status = 'running' AND lease_owner = ? AND attempts = ?",
            )
            .bind(status.as_str())
            .bind(due)
            .bind(finished)
            .bind(origin)
            .bind(f.error.kind.as_str())
            .bind(&f.error.message)
            .bind(f.error.status)
            .bind(f.id.0)
            .bind(worker.0)
            .bind(f.attempt as i64)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
            if hit == 0 {
                continue;
            }
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
            applied.push(f.id);
        }
        tx.commit().await.map_err(db)?;
        Ok(applied)
    }

    pub(super) async fn release(
        &self,
        worker: WorkerId,
        runs: &[(RunId, u32)],
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let mut tx = self.begin().await?;
        let mut n = 0;
        for (id, attempt) in runs {
            let hit = sqlx::query(
                "UPDATE runs
                 SET status = 'queued', attempts = attempts - 1, due_at = ?, lease_owner = NULL,
                     lease_expires_at = NULL
                 WHERE id = ? AND status = 'running' AND lease_owner = ? AND attempts = ?",
            )
            .bind(ms(now))
            .bind(id.0)
            .bind(worker.0)
            .bind(*attempt as i64)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
            if hit == 1 {
                close_attempt(&mut tx, *id, *attempt, now, OUTCOME_RELEASED, None).await?;
                n += 1;
            }
        }
        tx.commit().await.map_err(db)?;
        Ok(n)
    }

    pub(super) async fn cancel(&self, id: RunId, now: DateTime<Utc>) -> Result<CancelOutcome> {
        let mut tx = self.begin().await?;
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM runs WHERE id = ?")
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        let Some(status) = status else {
            return cancel_outcome(None);
        };
        let hit = sqlx::query(
            "UPDATE runs
             SET status = 'cancelled', finished_at = ?, lease_owner = NULL, lease_expires_at = NULL,
                 error_kind = 'cancelled', error_message = 'cancelled by request',
                 error_status = NULL
             WHERE id = ? AND status IN ('queued', 'running')",
        )
        .bind(ms(now))
        .bind(id.0)
        .execute(&mut *tx)
        .await
        .map_err(db)?
        .rows_affected();
        if hit == 1 {
            sqlx::query(
                "UPDATE run_attempts SET finished_at = ?, outcome = 'cancelled'
                 WHERE run_id = ? AND finished_at IS NULL",
            )
            .bind(ms(now))
            .bind(id.0)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        cancel_outcome(Some((status, hit as i64)))
    }

    pub(super) async fn rescue_expired(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(RunId, Status)>> {
        let mut tx = self.begin().await?;
        let rows: Vec<(Uuid, i64, String)> = sqlx::query_as(
            "UPDATE runs
             SET status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
                 finished_at = CASE WHEN attempts >= max_attempts THEN ?1 ELSE NULL END,
                 due_at = ?1, lease_owner = NULL, lease_expires_at = NULL,
                 error_kind = 'timeout', error_message = ?2, error_status = NULL
             WHERE id IN (
                SELECT id FROM runs WHERE status = 'running' AND lease_expires_at < ?1
                ORDER BY lease_expires_at LIMIT ?3)
             RETURNING id, attempts, status",
        )
        .bind(ms(now))
        .bind(ABANDONED_MESSAGE)
        .bind(limit as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, attempt, status) in rows {
            close_attempt(
                &mut tx,
                RunId(id),
                attempt as u32,
                now,
                OUTCOME_ABANDONED,
                Some(ABANDONED_MESSAGE),
            )
            .await?;
            out.push((RunId(id), parse_status(&status)?));
        }
        tx.commit().await.map_err(db)?;
        Ok(out)
    }

    pub(super) async fn get_run(&self, id: RunId) -> Result<Option<RunView>> {
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

    pub(super) async fn count_active(&self) -> Result<Vec<(Class, Status, i64)>> {
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

    pub(super) async fn next_due_at(&self) -> Result<Option<DateTime<Utc>>> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT min(due_at) FROM runs WHERE status = 'queued'")
                .fetch_one(&self.reader)
                .await
                .map_err(db)?;
        from_ms_opt(v)
    }

    pub(super) async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(db)?;
        Ok(())
    }

    pub(super) async fn close(&self) {
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

fn claimed_from_row(row: &SqliteRow) -> Result<ClaimedRun> {
    let g = db;
    Ok(ClaimedRun {
        id: RunId(row.try_get("id").map_err(g)?),
        attempt: row.try_get::<i64, _>("attempts").map_err(g)? as u32,
        max_attempts: row.try_get::<i64, _>("max_attempts").map_err(g)? as u32,
        provider: row.try_get("provider").map_err(g)?,
        model: row.try_get("model").map_err(g)?,
        request: raw_json(row.try_get("request").map_err(g)?)?,
        class: parse_class(row.try_get("class").map_err(g)?)?,
        priority: row.try_get("priority").map_err(g)?,
        tenant: row.try_get("tenant").map_err(g)?,
        concurrency_key: row.try_get("concurrency_key").map_err(g)?,
        stream: row.try_get("stream").map_err(g)?,
        timeout_ms: row.try_get("timeout_ms").map_err(g)?,
        created_at: from_ms(row.try_get("created_at").map_err(g)?)?,
    })
}

fn view_from_row(row: &SqliteRow) -> Result<RunView> {
    let g = db;
    let status = parse_status(&row.try_get::<String, _>("status").map_err(g)?)?;
    let metadata: Option<String> = row.try_get("metadata").map_err(g)?;
    let error_kind: Option<String> = row.try_get("error_kind").map_err(g)?;
    let timeout_origin: Option<String> = row.try_get("timeout_origin").map_err(g)?;
    let output_content: Option<String> = row.try_get("output_content").map_err(g)?;
    let finish_reason: Option<String> = row.try_get("finish_reason").map_err(g)?;
    Ok(RunView {
        id: RunId(row.try_get("id").map_err(g)?),
        status,
        provider: row.try_get("provider").map_err(g)?,
        model: row.try_get("model").map_err(g)?,
        class: parse_class(row.try_get("class").map_err(g)?)?,
        priority: row.try_get("priority").map_err(g)?,
        tenant: row.try_get("tenant").map_err(g)?,
        concurrency_key: row.try_get("concurrency_key").map_err(g)?,
        session: row.try_get("session").map_err(g)?,
        batch: row.try_get("batch").map_err(g)?,
        metadata: metadata.map(raw_json).transpose()?,
        stream: row.try_get("stream").map_err(g)?,
        attempts: row.try_get::<i64, _>("attempts").map_err(g)? as u32,
        max_attempts: row.try_get::<i64, _>("max_attempts").map_err(g)? as u32,
        timeout_ms: row.try_get("timeout_ms").map_err(g)?,
        queue_deadline_at: from_ms_opt(row.try_get("queue_deadline_at").map_err(g)?)?,
        due_at: from_ms(row.try_get("due_at").map_err(g)?)?,
        created_at: from_ms(row.try_get("created_at").map_err(g)?)?,
        started_at: from_ms_opt(row.try_get("started_at").map_err(g)?)?,
        finished_at: from_ms_opt(row.try_get("finished_at").map_err(g)?)?,
        timeout_origin: timeout_origin.as_deref().and_then(TimeoutOrigin::parse),
        drop_reason: row.try_get("drop_reason").map_err(g)?,
        output: match (status, output_content) {
            (Status::Completed, Some(content)) => Some(Output {
                content,
                finish_reason,
            }),
            _ => None,
        },
        prompt_tokens: row.try_get("prompt_tokens").map_err(g)?,
        completion_tokens: row.try_get("completion_tokens").map_err(g)?,
        error: match error_kind.as_deref().and_then(ErrorKind::parse) {
            Some(kind) => Some(RunError {
                kind,
                message: row
                    .try_get::<Option<String>, _>("error_message")
                    .map_err(g)?
                    .unwrap_or_default(),
                status: row.try_get("error_status").map_err(g)?,
            }),
            None => None,
        },
        attempt_log: Vec::new(),
    })
}
