//! The PostgreSQL backend: claims with `FOR UPDATE SKIP LOCKED`, batches through
//! `unnest` arrays, and wakes other processes' producers with `NOTIFY`.

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Row, postgres::PgConnectOptions};
use std::str::FromStr;
use uuid::Uuid;

use super::model::*;
use super::{OpenOptions, Result, StoreError};
use crate::run::{Class, ErrorKind, RunId, Status, TimeoutOrigin, WorkerId};

/// The channel a commit that makes runs due is announced on.
pub const WAKE_CHANNEL: &str = "sluice_runs_due";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

fn db(e: sqlx::Error) -> StoreError {
    StoreError::from_sqlx(e)
}

const RUN_COLUMNS: &str = "id, status, provider, model, class, priority, tenant, concurrency_key, \
     session, batch, metadata::text AS metadata, stream, attempts, max_attempts, timeout_ms, \
     queue_deadline_at, due_at, created_at, started_at, finished_at, timeout_origin, drop_reason, \
     output_content, finish_reason, prompt_tokens, completion_tokens, error_kind, error_message, \
     error_status";

impl PgStore {
    pub async fn connect(url: &str, options: &OpenOptions) -> Result<PgStore> {
        let connect = PgConnectOptions::from_str(url)
            .map_err(db)?
            .application_name("sluice");
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect)
            .await
            .map_err(db)?;
        Ok(PgStore { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(super) async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    pub(super) async fn enqueue(&self, runs: &[NewRun]) -> Result<Vec<Enqueued>> {
        let n = runs.len();
        let mut ids = Vec::with_capacity(n);
        let mut providers = Vec::with_capacity(n);
        let mut models = Vec::with_capacity(n);
        let mut requests = Vec::with_capacity(n);
        let mut classes = Vec::with_capacity(n);
        let mut priorities = Vec::with_capacity(n);
        let mut tenants = Vec::with_capacity(n);
        let mut keys = Vec::with_capacity(n);
        let mut sessions = Vec::with_capacity(n);
        let mut batches = Vec::with_capacity(n);
        let mut idem = Vec::with_capacity(n);
        let mut metadata = Vec::with_capacity(n);
        let mut streams = Vec::with_capacity(n);
        let mut max_attempts = Vec::with_capacity(n);
        let mut timeouts = Vec::with_capacity(n);
        let mut deadlines = Vec::with_capacity(n);
        let mut due = Vec::with_capacity(n);
        let mut created = Vec::with_capacity(n);
        for r in runs {
            ids.push(r.id.0);
            providers.push(r.provider.as_str());
            models.push(r.model.as_deref());
            requests.push(r.request.get());
            classes.push(r.class.rank());
            priorities.push(r.priority);
            tenants.push(r.tenant.as_deref());
            keys.push(r.concurrency_key.as_deref());
            sessions.push(r.session.as_deref());
            batches.push(r.batch.as_deref());
            idem.push(r.idem_key());
            metadata.push(r.metadata.as_ref().map(|m| m.get()));
            streams.push(r.stream);
            max_attempts.push(r.max_attempts);
            timeouts.push(r.timeout_ms);
            deadlines.push(r.queue_deadline_at);
            due.push(r.due_at);
            created.push(r.created_at);
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        let inserted: Vec<Uuid> = sqlx::query_scalar(
            "INSERT INTO runs (id, provider, model, request, class, priority, tenant, \
                concurrency_key, session, batch, idem_key, metadata, stream, max_attempts, \
                timeout_ms, queue_deadline_at, due_at, created_at, status, attempts)
             SELECT t.id, t.provider, t.model, t.request::json, t.class, t.priority, t.tenant,
                t.concurrency_key, t.session, t.batch, t.idem_key, t.metadata::json, t.stream,
                t.max_attempts, t.timeout_ms, t.queue_deadline_at, t.due_at, t.created_at,
                'queued', 0
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int2[], $6::int2[],
                $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                $13::bool[], $14::int2[], $15::int4[], $16::timestamptz[], $17::timestamptz[],
                $18::timestamptz[])
               AS t(id, provider, model, request, class, priority, tenant, concurrency_key,
                    session, batch, idem_key, metadata, stream, max_attempts, timeout_ms,
                    queue_deadline_at, due_at, created_at)
             ON CONFLICT DO NOTHING
             RETURNING id",
        )
        .bind(&ids)
        .bind(&providers)
        .bind(&models)
        .bind(&requests)
        .bind(&classes)
        .bind(&priorities)
        .bind(&tenants)
        .bind(&keys)
        .bind(&sessions)
        .bind(&batches)
        .bind(&idem)
        .bind(&metadata)
        .bind(&streams)
        .bind(&max_attempts)
        .bind(&timeouts)
        .bind(&deadlines)
        .bind(&due)
        .bind(&created)
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;

        let mut out = Vec::with_capacity(n);
        if inserted.len() == n {
            out.extend(runs.iter().map(|r| Enqueued::Created(r.id)));
        } else {
            // Some idempotency keys were taken (by an earlier run or by another row of this
            // very batch): answer those with the run that holds the key.
            let inserted: std::collections::HashSet<Uuid> = inserted.into_iter().collect();
            let missing: Vec<String> = runs
                .iter()
                .filter(|r| !inserted.contains(&r.id.0))
                .filter_map(|r| r.idem_key())
                .collect();
            let holders: Vec<(String, Uuid)> =
                sqlx::query_as("SELECT idem_key, id FROM runs WHERE idem_key = ANY($1)")
                    .bind(&missing)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db)?;
            let holders: std::collections::HashMap<String, Uuid> = holders.into_iter().collect();
            for r in runs {
                if inserted.contains(&r.id.0) {
                    out.push(Enqueued::Created(r.id));
                    continue;
                }
                let holder = r
                    .idem_key()
                    .and_then(|k| holders.get(&k).copied())
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "run {} was neither inserted nor found by idempotency key",
                            r.id
                        ))
                    })?;
                out.push(Enqueued::Existing(RunId(holder)));
            }
        }
        if out.iter().any(|e| matches!(e, Enqueued::Created(_))) {
            // Identical notifications in one transaction are folded into one by PostgreSQL,
            // so a batch wakes each listening producer once.
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(WAKE_CHANNEL)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
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
        let rows = sqlx::query(
            "WITH picked AS (
                SELECT id FROM runs
                WHERE status = 'queued' AND due_at <= $1
                ORDER BY class, priority, due_at
                LIMIT $2
                FOR UPDATE SKIP LOCKED
             ), claimed AS (
                UPDATE runs r
                SET status = 'running', attempts = r.attempts + 1, lease_owner = $3,
                    lease_expires_at = $4, started_at = COALESCE(r.started_at, $1)
                FROM picked WHERE r.id = picked.id
                RETURNING r.id, r.attempts, r.max_attempts, r.provider, r.model,
                    r.request::text AS request, r.class, r.priority, r.tenant,
                    r.concurrency_key, r.stream, r.timeout_ms, r.created_at, r.due_at
             ), opened AS (
                INSERT INTO run_attempts (run_id, attempt, worker, started_at)
                SELECT id, attempts, $3, $1 FROM claimed
             )
             SELECT * FROM claimed ORDER BY class, priority, due_at",
        )
        .bind(now)
        .bind(limit as i64)
        .bind(worker.0)
        .bind(lease_until)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(claimed_from_row).collect()
    }

    pub(super) async fn extend_leases(
        &self,
        worker: WorkerId,
        runs: &[RunId],
        lease_until: DateTime<Utc>,
    ) -> Result<u64> {
        let ids: Vec<Uuid> = runs.iter().map(|r| r.0).collect();
        let done = sqlx::query(
            "UPDATE runs SET lease_expires_at = $3
             WHERE id = ANY($1) AND status = 'running' AND lease_owner = $2",
        )
        .bind(&ids)
        .bind(worker.0)
        .bind(lease_until)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected())
    }

    pub(super) async fn mark_completed(
        &self,
        worker: WorkerId,
        done: &[Completion],
    ) -> Result<Vec<RunId>> {
        let ids: Vec<Uuid> = done.iter().map(|c| c.id.0).collect();
        let attempts: Vec<i16> = done.iter().map(|c| c.attempt as i16).collect();
        let finished: Vec<DateTime<Utc>> = done.iter().map(|c| c.finished_at).collect();
        let contents: Vec<&str> = done.iter().map(|c| c.content.as_str()).collect();
        let reasons: Vec<Option<&str>> = done.iter().map(|c| c.finish_reason.as_deref()).collect();
        let prompt: Vec<Option<i32>> = done.iter().map(|c| c.prompt_tokens).collect();
        let completion: Vec<Option<i32>> = done.iter().map(|c| c.completion_tokens).collect();
        let applied: Vec<Uuid> = sqlx::query_scalar(
            "WITH input AS (
                SELECT * FROM unnest($2::uuid[], $3::int2[], $4::timestamptz[], $5::text[],
                    $6::text[], $7::int4[], $8::int4[])
                  AS t(id, attempt, finished_at, content, finish_reason, prompt_tokens,
                       completion_tokens)
             ), done AS (
                UPDATE runs r
                SET status = 'completed', finished_at = i.finished_at, output_content = i.content,
                    finish_reason = i.finish_reason, prompt_tokens = i.prompt_tokens,
                    completion_tokens = i.completion_tokens, lease_owner = NULL,
                    lease_expires_at = NULL, error_kind = NULL, error_message = NULL,
                    error_status = NULL
                FROM input i
                WHERE r.id = i.id AND r.status = 'running' AND r.lease_owner = $1
                  AND r.attempts = i.attempt
                RETURNING r.id, r.attempts, i.finished_at
             ), closed AS (
                UPDATE run_attempts a SET finished_at = d.finished_at, outcome = 'completed'
                FROM done d
                WHERE a.run_id = d.id AND a.attempt = d.attempts AND a.finished_at IS NULL
             )
             SELECT id FROM done",
        )
        .bind(worker.0)
        .bind(&ids)
        .bind(&attempts)
        .bind(&finished)
        .bind(&contents)
        .bind(&reasons)
        .bind(&prompt)
        .bind(&completion)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(applied.into_iter().map(RunId).collect())
    }

    pub(super) async fn mark_failed(
        &self,
        worker: WorkerId,
        failed: &[Failure],
    ) -> Result<Vec<RunId>> {
        let n = failed.len();
        let mut ids = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut finished = Vec::with_capacity(n);
        let mut kinds = Vec::with_capacity(n);
        let mut messages = Vec::with_capacity(n);
        let mut statuses = Vec::with_capacity(n);
        let mut retry_after = Vec::with_capacity(n);
        let mut next_status = Vec::with_capacity(n);
        let mut due = Vec::with_capacity(n);
        let mut origins = Vec::with_capacity(n);
        for f in failed {
            ids.push(f.id.0);
            attempts.push(f.attempt as i16);
            finished.push(f.finished_at);
            kinds.push(f.error.kind.as_str());
            messages.push(f.error.message.as_str());
            statuses.push(f.error.status);
            retry_after.push(f.retry_after_ms);
            match f.next {
                FailureNext::RetryAt(at) => {
                    next_status.push(Status::Queued.as_str());
                    due.push(Some(at));
                    origins.push(None);
                }
                FailureNext::Finish {
                    status,
                    timeout_origin,
                } => {
                    next_status.push(status.as_str());
                    due.push(None);
                    origins.push(timeout_origin.map(TimeoutOrigin::as_str));
                }
            }
        }
        let applied: Vec<Uuid> = sqlx::query_scalar(
            "WITH input AS (
                SELECT * FROM unnest($2::uuid[], $3::int2[], $4::timestamptz[], $5::text[],
                    $6::text[], $7::int4[], $8::int8[], $9::text[], $10::timestamptz[],
                    $11::text[])
                  AS t(id, attempt, finished_at, kind, message, http_status, retry_after_ms,
                       next_status, due_at, timeout_origin)
             ), moved AS (
                UPDATE runs r
                SET status = i.next_status,
                    due_at = COALESCE(i.due_at, r.due_at),
                    finished_at = CASE WHEN i.next_status = 'queued' THEN NULL
                                       ELSE i.finished_at END,
                    timeout_origin = i.timeout_origin,
                    error_kind = i.kind, error_message = i.message, error_status = i.http_status,
                    lease_owner = NULL, lease_expires_at = NULL
                FROM input i
                WHERE r.id = i.id AND r.status = 'running' AND r.lease_owner = $1
                  AND r.attempts = i.attempt
                RETURNING r.id, r.attempts, (r.status = 'queued') AS retried
             ), closed AS (
                UPDATE run_attempts a
                SET finished_at = i.finished_at, outcome = i.kind, status = i.http_status,
                    retry_after_ms = i.retry_after_ms, error_message = i.message
                FROM moved m JOIN input i ON i.id = m.id
                WHERE a.run_id = m.id AND a.attempt = m.attempts AND a.finished_at IS NULL
             ), woken AS (
                SELECT pg_notify($12, '') FROM moved WHERE retried LIMIT 1
             )
             SELECT id FROM moved LEFT JOIN woken ON TRUE",
        )
        .bind(worker.0)
        .bind(&ids)
        .bind(&attempts)
        .bind(&finished)
        .bind(&kinds)
        .bind(&messages)
        .bind(&statuses)
        .bind(&retry_after)
        .bind(&next_status)
        .bind(&due)
        .bind(&origins)
        .bind(WAKE_CHANNEL)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(applied.into_iter().map(RunId).collect())
    }

    pub(super) async fn release(
        &self,
        worker: WorkerId,
        runs: &[(RunId, u32)],
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let ids: Vec<Uuid> = runs.iter().map(|(id, _)| id.0).collect();
        let attempts: Vec<i16> = runs.iter().map(|(_, a)| *a as i16).collect();
        let released: i64 = sqlx::query_scalar(
            "WITH input AS (
                SELECT * FROM unnest($2::uuid[], $3::int2[]) AS t(id, attempt)
             ), back AS (
                UPDATE runs r
                SET status = 'queued', attempts = r.attempts - 1, due_at = $4,
                    lease_owner = NULL, lease_expires_at = NULL
                FROM input i
                WHERE r.id = i.id AND r.status = 'running' AND r.lease_owner = $1
                  AND r.attempts = i.attempt
                RETURNING r.id, i.attempt
             ), closed AS (
                UPDATE run_attempts a SET finished_at = $4, outcome = 'released'
                FROM back b
                WHERE a.run_id = b.id AND a.attempt = b.attempt AND a.finished_at IS NULL
             ), woken AS (
                SELECT pg_notify($5, '') FROM back LIMIT 1
             )
             SELECT count(*) FROM back LEFT JOIN woken ON TRUE",
        )
        .bind(worker.0)
        .bind(&ids)
        .bind(&attempts)
        .bind(now)
        .bind(WAKE_CHANNEL)
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(released as u64)
    }

    pub(super) async fn cancel(&self, id: RunId, now: DateTime<Utc>) -> Result<CancelOutcome> {
        let row: Option<(String, i64)> = sqlx::query_as(
            "WITH target AS (
                SELECT id, status FROM runs WHERE id = $1 FOR UPDATE
             ), cancelled AS (
                UPDATE runs r
                SET status = 'cancelled', finished_at = $2, lease_owner = NULL,
                    lease_expires_at = NULL, error_kind = 'cancelled',
                    error_message = 'cancelled by request', error_status = NULL
                FROM target t
                WHERE r.id = t.id AND t.status IN ('queued', 'running')
                RETURNING r.id
             ), closed AS (
                UPDATE run_attempts a SET finished_at = $2, outcome = 'cancelled'
                FROM cancelled c WHERE a.run_id = c.id AND a.finished_at IS NULL
             )
             SELECT t.status, (SELECT count(*) FROM cancelled) FROM target t",
        )
        .bind(id.0)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        cancel_outcome(row)
    }

    pub(super) async fn rescue_expired(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(RunId, Status)>> {
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "WITH expired AS (
                SELECT id FROM runs
                WHERE status = 'running' AND lease_expires_at < $1
                ORDER BY lease_expires_at
                LIMIT $2
                FOR UPDATE SKIP LOCKED
             ), rescued AS (
                UPDATE runs r
                SET status = CASE WHEN r.attempts >= r.max_attempts THEN 'failed' ELSE 'queued' END,
                    finished_at = CASE WHEN r.attempts >= r.max_attempts THEN $1 ELSE NULL END,
                    due_at = $1, lease_owner = NULL, lease_expires_at = NULL,
                    error_kind = 'timeout', error_message = $3, error_status = NULL
                FROM expired e WHERE r.id = e.id
                RETURNING r.id, r.attempts, r.status
             ), closed AS (
                UPDATE run_attempts a SET finished_at = $1, outcome = 'abandoned',
                    error_message = $3
                FROM rescued x
                WHERE a.run_id = x.id AND a.attempt = x.attempts AND a.finished_at IS NULL
             ), woken AS (
                SELECT pg_notify($4, '') FROM rescued WHERE status = 'queued' LIMIT 1
             )
             SELECT id, status FROM rescued LEFT JOIN woken ON TRUE",
        )
        .bind(now)
        .bind(limit as i64)
        .bind(ABANDONED_MESSAGE)
        .bind(WAKE_CHANNEL)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.into_iter()
            .map(|(id, status)| Ok((RunId(id), parse_status(&status)?)))
            .collect()
    }

    pub(super) async fn get_run(&self, id: RunId) -> Result<Option<RunView>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1");
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
        else {
            return Ok(None);
        };
        let attempts = sqlx::query(
            "SELECT attempt, started_at, finished_at, outcome, status, retry_after_ms, error_message
             FROM run_attempts WHERE run_id = $1 ORDER BY id",
        )
        .bind(id.0)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut view = view_from_row(&row)?;
        view.attempt_log = attempts
            .iter()
            .map(|a| {
                Ok(AttemptView {
                    attempt: a.try_get::<i16, _>("attempt")? as u32,
                    started_at: a.try_get("started_at")?,
                    finished_at: a.try_get("finished_at")?,
                    outcome: a.try_get("outcome")?,
                    status: a.try_get("status")?,
                    retry_after_ms: a.try_get("retry_after_ms")?,
                    error_message: a.try_get("error_message")?,
                })
            })
            .collect::<std::result::Result<_, sqlx::Error>>()
            .map_err(db)?;
        Ok(Some(view))
    }

    pub(super) async fn count_active(&self) -> Result<Vec<(Class, Status, i64)>> {
        let rows: Vec<(i16, String, i64)> = sqlx::query_as(
            "SELECT class, status, count(*) FROM runs
             WHERE status IN ('queued', 'running') GROUP BY class, status",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.into_iter()
            .map(|(class, status, n)| Ok((parse_class(class)?, parse_status(&status)?, n)))
            .collect()
    }

    pub(super) async fn next_due_at(&self) -> Result<Option<DateTime<Utc>>> {
        sqlx::query_scalar("SELECT min(due_at) FROM runs WHERE status = 'queued'")
            .fetch_one(&self.pool)
            .await
            .map_err(db)
    }

    pub(super) async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    pub(super) async fn close(&self) {
        self.pool.close().await
    }
}

/// The error recorded on a run whose worker stopped renewing its lease.
pub(super) const ABANDONED_MESSAGE: &str = "the worker running this attempt stopped renewing its lease (process stopped or lost the database)";

pub(super) fn cancel_outcome(row: Option<(String, i64)>) -> Result<CancelOutcome> {
    Ok(match row {
        None => CancelOutcome::NotFound,
        Some((status, n)) => {
            let was = parse_status(&status)?;
            if n > 0 {
                CancelOutcome::Cancelled { was }
            } else {
                CancelOutcome::AlreadyTerminal(was)
            }
        }
    })
}

pub(super) fn parse_status(s: &str) -> Result<Status> {
    Status::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown status {s:?}")))
}

pub(super) fn parse_class(rank: i16) -> Result<Class> {
    Class::from_rank(rank).ok_or_else(|| StoreError::Corrupt(format!("unknown class {rank}")))
}

pub(super) fn raw_json(text: String) -> Result<Box<serde_json::value::RawValue>> {
    serde_json::value::RawValue::from_string(text)
        .map_err(|e| StoreError::Corrupt(format!("stored JSON does not parse: {e}")))
}

fn claimed_from_row(row: &PgRow) -> Result<ClaimedRun> {
    let get = || -> std::result::Result<ClaimedRun, sqlx::Error> {
        Ok(ClaimedRun {
            id: RunId(row.try_get("id")?),
            attempt: row.try_get::<i16, _>("attempts")? as u32,
            max_attempts: row.try_get::<i16, _>("max_attempts")? as u32,
            provider: row.try_get("provider")?,
            model: row.try_get("model")?,
            request: Default::default(),
            class: Class::Live,
            priority: row.try_get("priority")?,
            tenant: row.try_get("tenant")?,
            concurrency_key: row.try_get("concurrency_key")?,
            stream: row.try_get("stream")?,
            timeout_ms: row.try_get("timeout_ms")?,
            created_at: row.try_get("created_at")?,
        })
    };
    let mut claimed = get().map_err(db)?;
    claimed.class = parse_class(row.try_get("class").map_err(db)?)?;
    claimed.request = raw_json(row.try_get("request").map_err(db)?)?;
    Ok(claimed)
}

fn view_from_row(row: &PgRow) -> Result<RunView> {
    let g = |e: sqlx::Error| db(e);
    let status = parse_status(&row.try_get::<String, _>("status").map_err(g)?)?;
    let metadata: Option<String> = row.try_get("metadata").map_err(g)?;
    let error_kind: Option<String> = row.try_get("error_kind").map_err(g)?;
    let timeout_origin: Option<String> = row.try_get("timeout_origin").map_err(g)?;
    let output_content: Option<String> = row.try_get("output_content").map_err(g)?;
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
        attempts: row.try_get::<i16, _>("attempts").map_err(g)? as u32,
        max_attempts: row.try_get::<i16, _>("max_attempts").map_err(g)? as u32,
        timeout_ms: row.try_get("timeout_ms").map_err(g)?,
        queue_deadline_at: row.try_get("queue_deadline_at").map_err(g)?,
        due_at: row.try_get("due_at").map_err(g)?,
        created_at: row.try_get("created_at").map_err(g)?,
        started_at: row.try_get("started_at").map_err(g)?,
        finished_at: row.try_get("finished_at").map_err(g)?,
        timeout_origin: timeout_origin.as_deref().and_then(TimeoutOrigin::parse),
        drop_reason: row.try_get("drop_reason").map_err(g)?,
        output: if status == Status::Completed {
            output_content.map(|content| Output {
                content,
                finish_reason: row.try_get("finish_reason").unwrap_or(None),
            })
        } else {
            None
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
