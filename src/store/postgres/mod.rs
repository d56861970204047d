//! The PostgreSQL backend: claims with `FOR UPDATE SKIP LOCKED`, batches through
//! `unnest` arrays, writes each state change and its events in one statement, and wakes
//! other processes' producers with `NOTIFY`.
//!
//! Layout: this file (state changes), `rows` (row mapping), `events` (event log reads and
//! the event pump).

mod events;
mod rows;

pub(super) use rows::{
    ABANDONED_MESSAGE, abandoned_data, abandoned_final_data, cancel_outcome, parse_class,
    parse_status, raw_json,
};
use rows::{claimed_from_row, event_from_row, view_from_row};

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Row, postgres::PgConnectOptions};
use std::str::FromStr;
use uuid::Uuid;

use super::model::*;
use super::{OpenOptions, Result, StoreError};
use crate::run::{Class, RunId, Status, TimeoutOrigin, WorkerId};

/// The channel a commit that makes runs due is announced on.
pub const WAKE_CHANNEL: &str = "sluice_runs_due";
/// The channel a cancelled running run's id is announced on, so the process running its
/// attempt aborts the provider call.
pub const CANCEL_CHANNEL: &str = "sluice_run_cancelled";

/// The advisory lock claims that count in-flight runs take turns on.
const CLAIM_LOCK: i64 = 0x5_11CE_0001;

/// The quota-aware pick (parameters: $1 now, $2 limit, $5 providers, $6 how many may start,
/// $7 live caps, $8 background caps, $9 live key cap, $10 background key cap). Live runs
/// first; a provider's background runs only while none of its live runs is due; a run
/// past its queue deadline is never started (the sweeper ends it); a key at its cap is
/// skipped, and candidates sharing a key are ranked so one batch cannot overshoot.
const QUOTA_PICK: &str = "picked AS (
    SELECT id FROM (
        SELECT cand.*,
            ROW_NUMBER() OVER (PARTITION BY cand.concurrency_key, cand.class
                               ORDER BY cand.priority, cand.due_at) AS key_rank
        FROM (
            SELECT r.* FROM unnest($5::text[], $6::int8[], $7::int8[], $8::int8[])
                AS q(provider, quota, live_cap, bg_cap)
            CROSS JOIN LATERAL (
                SELECT c.id, c.class, c.priority, c.due_at, c.concurrency_key FROM runs c
                WHERE c.status = 'queued' AND c.due_at <= $1 AND c.provider = q.provider
                  AND c.class = 0
                  AND (c.queue_deadline_at IS NULL OR c.queue_deadline_at > $1
                       OR c.started_at IS NOT NULL)
                  AND (c.concurrency_key IS NULL OR $9::int8 IS NULL
                       OR (SELECT count(*) FROM runs k WHERE k.concurrency_key = c.concurrency_key
                           AND k.class = 0 AND k.status = 'running') < $9)
                ORDER BY c.priority, c.due_at
                LIMIT GREATEST(0, LEAST(q.quota, COALESCE(q.live_cap - (
                    SELECT count(*) FROM runs l WHERE l.provider = q.provider AND l.class = 0
                      AND l.status = 'running'), q.quota)))
                FOR UPDATE SKIP LOCKED
            ) r
            UNION ALL
            SELECT r.* FROM unnest($5::text[], $6::int8[], $7::int8[], $8::int8[])
                AS q(provider, quota, live_cap, bg_cap)
            CROSS JOIN LATERAL (
                SELECT c.id, c.class, c.priority, c.due_at, c.concurrency_key FROM runs c
                WHERE c.status = 'queued' AND c.due_at <= $1 AND c.provider = q.provider
                  AND c.class = 1
                  AND (c.queue_deadline_at IS NULL OR c.queue_deadline_at > $1
                       OR c.started_at IS NOT NULL)
                  AND NOT EXISTS (
                      SELECT 1 FROM runs l WHERE l.provider = q.provider AND l.class = 0
                        AND l.status = 'queued' AND l.due_at <= $1)
                  AND (c.concurrency_key IS NULL OR $10::int8 IS NULL
                       OR (SELECT count(*) FROM runs k WHERE k.concurrency_key = c.concurrency_key
                           AND k.class = 1 AND k.status = 'running') < $10)
                ORDER BY c.priority, c.due_at
                LIMIT GREATEST(0, LEAST(q.quota, q.bg_cap - (
                    SELECT count(*) FROM runs b WHERE b.provider = q.provider AND b.class = 1
                      AND b.status = 'running')))
                FOR UPDATE SKIP LOCKED
            ) r
        ) cand
    ) ranked
    WHERE concurrency_key IS NULL
       OR (CASE WHEN class = 0 THEN $9::int8 ELSE $10::int8 END) IS NULL
       OR key_rank + (SELECT count(*) FROM runs k WHERE k.concurrency_key = ranked.concurrency_key
                      AND k.class = ranked.class AND k.status = 'running')
          <= (CASE WHEN class = 0 THEN $9::int8 ELSE $10::int8 END)
    ORDER BY class, priority, due_at
    LIMIT $2
)";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

pub(super) fn db(e: sqlx::Error) -> StoreError {
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

    pub(in crate::store) async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    pub(in crate::store) async fn enqueue(
        &self,
        runs: &[NewRun],
    ) -> Result<(Vec<Enqueued>, Vec<RunEvent>)> {
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
        let event_rows = sqlx::query(
            "WITH ins AS (
             INSERT INTO runs (id, provider, model, request, class, priority, tenant, \
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
             RETURNING id, class, tenant, batch, created_at
             ), ev AS (
                INSERT INTO run_events (run_id, kind, at, class, tenant, batch)
                SELECT id, 'queued', created_at, class, tenant, batch FROM ins
                RETURNING id, run_id, kind, at, attempt, data::text AS data, class, tenant, batch
             )
             SELECT * FROM ev ORDER BY id",
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
        let events: Vec<RunEvent> = event_rows
            .iter()
            .map(event_from_row)
            .collect::<Result<_>>()?;
        let inserted: Vec<Uuid> = events.iter().map(|e| e.run_id.0).collect();

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
        // Without quotas, one index scan in dispatch order. With quotas, a bounded scan per
        // provider and class (each its own index range) that honours the class and key caps,
        // merged in dispatch order.
        let picked = if quotas.is_some() {
            QUOTA_PICK
        } else {
            "picked AS (
                SELECT id FROM runs
                WHERE status = 'queued' AND due_at <= $1
                  AND (queue_deadline_at IS NULL OR queue_deadline_at > $1
                       OR started_at IS NOT NULL)
                ORDER BY class, priority, due_at
                LIMIT $2
                FOR UPDATE SKIP LOCKED
             )"
        };
        let quotas = quotas.unwrap_or_default();
        let names: Vec<&str> = quotas.iter().map(|q| q.provider.as_str()).collect();
        let maxes: Vec<i64> = quotas.iter().map(|q| q.max as i64).collect();
        let live_caps: Vec<Option<i64>> =
            quotas.iter().map(|q| q.live_cap.map(i64::from)).collect();
        let bg_caps: Vec<i64> = quotas.iter().map(|q| i64::from(q.background_cap)).collect();
        let sql = format!(
            "WITH {picked}, claimed AS (
                UPDATE runs r
                SET status = 'running', attempts = r.attempts + 1, lease_owner = $3,
                    lease_expires_at = $4, started_at = COALESCE(r.started_at, $1)
                FROM picked WHERE r.id = picked.id
                RETURNING r.id, r.attempts, r.max_attempts, r.provider, r.model,
                    r.request::text AS request, r.class, r.priority, r.tenant, r.batch,
                    r.concurrency_key, r.stream, r.timeout_ms, r.created_at, r.due_at
             ), opened AS (
                INSERT INTO run_attempts (run_id, attempt, worker, started_at)
                SELECT id, attempts, $3, $1 FROM claimed
             ), ev AS (
                INSERT INTO run_events (run_id, kind, at, attempt, class, tenant, batch)
                SELECT id, 'started', $1, attempts, class, tenant, batch FROM claimed
                RETURNING id AS event_id, run_id
             )
             SELECT claimed.*, ev.event_id FROM claimed JOIN ev ON ev.run_id = claimed.id
             ORDER BY class, priority, due_at"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(limit as i64)
            .bind(worker.0)
            .bind(lease_until);
        let rows = if quotas.is_empty() {
            query.fetch_all(&self.pool).await.map_err(db)?
        } else {
            query = query
                .bind(&names)
                .bind(&maxes)
                .bind(&live_caps)
                .bind(&bg_caps)
                .bind(key_caps.live.map(i64::from))
                .bind(key_caps.background.map(i64::from));
            // Caps count runs in flight across every process: claims that count take turns,
            // so two processes cannot both see room for the last slot.
            let mut tx = self.pool.begin().await.map_err(db)?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(CLAIM_LOCK)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            let rows = query.fetch_all(&mut *tx).await.map_err(db)?;
            tx.commit().await.map_err(db)?;
            rows
        };
        let mut claimed = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let run = claimed_from_row(row)?;
            events.push(RunEvent {
                id: row.try_get("event_id").map_err(db)?,
                run_id: run.id,
                kind: EventKind::Started,
                at: now,
                attempt: Some(run.attempt),
                data: None,
                class: run.class,
                tenant: run.tenant.clone(),
                batch: row.try_get("batch").map_err(db)?,
            });
            claimed.push(run);
        }
        Ok((claimed, events))
    }

    pub(in crate::store) async fn extend_leases(
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

    pub(in crate::store) async fn mark_completed(
        &self,
        worker: WorkerId,
        done: &[Completion],
    ) -> Result<Vec<RunEvent>> {
        let ids: Vec<Uuid> = done.iter().map(|c| c.id.0).collect();
        let attempts: Vec<i16> = done.iter().map(|c| c.attempt as i16).collect();
        let finished: Vec<DateTime<Utc>> = done.iter().map(|c| c.finished_at).collect();
        let contents: Vec<&str> = done.iter().map(|c| c.content.as_str()).collect();
        let reasons: Vec<Option<&str>> = done.iter().map(|c| c.finish_reason.as_deref()).collect();
        let prompt: Vec<Option<i32>> = done.iter().map(|c| c.prompt_tokens).collect();
        let completion: Vec<Option<i32>> = done.iter().map(|c| c.completion_tokens).collect();
        let rows = sqlx::query(
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
                RETURNING r.id, r.attempts, i.finished_at, r.class, r.tenant, r.batch
             ), closed AS (
                UPDATE run_attempts a SET finished_at = d.finished_at, outcome = 'completed'
                FROM done d
                WHERE a.run_id = d.id AND a.attempt = d.attempts AND a.finished_at IS NULL
             ), ev AS (
                INSERT INTO run_events (run_id, kind, at, attempt, class, tenant, batch)
                SELECT id, 'completed', finished_at, attempts, class, tenant, batch FROM done
                RETURNING id, run_id, kind, at, attempt, data::text AS data, class, tenant, batch
             )
             SELECT * FROM ev ORDER BY id",
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
        rows.iter().map(event_from_row).collect()
    }

    pub(in crate::store) async fn mark_failed(
        &self,
        worker: WorkerId,
        failed: &[Failure],
    ) -> Result<Vec<RunEvent>> {
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
        let mut failed_data = Vec::with_capacity(n);
        let mut final_kinds = Vec::with_capacity(n);
        let mut final_data = Vec::with_capacity(n);
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
                    failed_data.push(attempt_failed_data(&f.error, Some(at)).get().to_string());
                    final_kinds.push(None);
                    final_data.push(None);
                }
                FailureNext::Finish {
                    status,
                    timeout_origin,
                } => {
                    next_status.push(status.as_str());
                    due.push(None);
                    origins.push(timeout_origin.map(TimeoutOrigin::as_str));
                    failed_data.push(attempt_failed_data(&f.error, None).get().to_string());
                    final_kinds.push(EventKind::terminal_for(status).map(EventKind::as_str));
                    final_data.push(Some(
                        final_failure_data(&f.error, timeout_origin)
                            .get()
                            .to_string(),
                    ));
                }
            }
        }
        let rows = sqlx::query(
            "WITH input AS (
                SELECT * FROM unnest($2::uuid[], $3::int2[], $4::timestamptz[], $5::text[],
                    $6::text[], $7::int4[], $8::int8[], $9::text[], $10::timestamptz[],
                    $11::text[], $13::text[], $14::text[], $15::text[])
                  AS t(id, attempt, finished_at, kind, message, http_status, retry_after_ms,
                       next_status, due_at, timeout_origin, failed_data, final_kind,
                       final_data)
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
                RETURNING r.id, r.attempts, (r.status = 'queued') AS retried, r.class,
                    r.tenant, r.batch
             ), closed AS (
                UPDATE run_attempts a
                SET finished_at = i.finished_at, outcome = i.kind, status = i.http_status,
                    retry_after_ms = i.retry_after_ms, error_message = i.message
                FROM moved m JOIN input i ON i.id = m.id
                WHERE a.run_id = m.id AND a.attempt = m.attempts AND a.finished_at IS NULL
             ), woken AS (
                SELECT pg_notify($12, '') FROM moved WHERE retried LIMIT 1
             ), ev AS (
                INSERT INTO run_events (run_id, kind, at, attempt, data, class, tenant, batch)
                SELECT m.id, e.kind, i.finished_at, m.attempts, e.data::json, m.class,
                    m.tenant, m.batch
                FROM moved m JOIN input i ON i.id = m.id
                CROSS JOIN LATERAL (VALUES (1, 'attempt_failed', i.failed_data),
                                           (2, i.final_kind, i.final_data)) AS e(ord, kind, data)
                WHERE e.kind IS NOT NULL
                ORDER BY m.id, e.ord
                RETURNING id, run_id, kind, at, attempt, data::text AS data, class, tenant, batch
             )
             SELECT ev.* FROM ev LEFT JOIN woken ON TRUE ORDER BY ev.id",
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
        .bind(&failed_data)
        .bind(&final_kinds)
        .bind(&final_data)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(event_from_row).collect()
    }

    pub(in crate::store) async fn release(
        &self,
        worker: WorkerId,
        runs: &[(RunId, u32)],
        now: DateTime<Utc>,
    ) -> Result<(u64, Vec<RunEvent>)> {
        let ids: Vec<Uuid> = runs.iter().map(|(id, _)| id.0).collect();
        let attempts: Vec<i16> = runs.iter().map(|(_, a)| *a as i16).collect();
        let rows = sqlx::query(
            "WITH input AS (
                SELECT * FROM unnest($2::uuid[], $3::int2[]) AS t(id, attempt)
             ), back AS (
                UPDATE runs r
                SET status = 'queued', attempts = r.attempts - 1, due_at = $4,
                    lease_owner = NULL, lease_expires_at = NULL
                FROM input i
                WHERE r.id = i.id AND r.status = 'running' AND r.lease_owner = $1
                  AND r.attempts = i.attempt
                RETURNING r.id, i.attempt, r.class, r.tenant, r.batch
             ), closed AS (
                UPDATE run_attempts a SET finished_at = $4, outcome = 'released'
                FROM back b
                WHERE a.run_id = b.id AND a.attempt = b.attempt AND a.finished_at IS NULL
             ), woken AS (
                SELECT pg_notify($5, '') FROM back LIMIT 1
             ), ev AS (
                INSERT INTO run_events (run_id, kind, at, attempt, data, class, tenant, batch)
                SELECT id, 'queued', $4, attempt, '{\"reason\":\"released\"}'::json, class,
                    tenant, batch
                FROM back
                RETURNING id, run_id, kind, at, attempt, data::text AS data, class, tenant, batch
             )
             SELECT ev.* FROM ev LEFT JOIN woken ON TRUE ORDER BY ev.id",
        )
        .bind(worker.0)
        .bind(&ids)
        .bind(&attempts)
        .bind(now)
        .bind(WAKE_CHANNEL)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let events: Vec<RunEvent> = rows.iter().map(event_from_row).collect::<Result<_>>()?;
        Ok((events.len() as u64, events))
    }

    pub(in crate::store) async fn cancel(
        &self,
        id: RunId,
        now: DateTime<Utc>,
    ) -> Result<(CancelOutcome, Vec<RunEvent>)> {
        let row = sqlx::query(
            "WITH target AS (
                SELECT id, status FROM runs WHERE id = $1 FOR UPDATE
             ), cancelled AS (
                UPDATE runs r
                SET status = 'cancelled', finished_at = $2, lease_owner = NULL,
                    lease_expires_at = NULL, error_kind = 'cancelled',
                    error_message = 'cancelled by request', error_status = NULL
                FROM target t
                WHERE r.id = t.id AND t.status IN ('queued', 'running')
                RETURNING r.id, r.attempts, r.class, r.tenant, r.batch
             ), closed AS (
                UPDATE run_attempts a SET finished_at = $2, outcome = 'cancelled'
                FROM cancelled c WHERE a.run_id = c.id AND a.finished_at IS NULL
             ), ev AS (
                INSERT INTO run_events (run_id, kind, at, attempt, data, class, tenant, batch)
                SELECT id, 'cancelled', $2, NULLIF(attempts, 0),
                    '{\"kind\":\"cancelled\",\"message\":\"cancelled by request\"}'::json,
                    class, tenant, batch
                FROM cancelled
                RETURNING id, run_id, kind, at, attempt, data::text AS data, class, tenant, batch
             ), told AS (
                -- Whichever process runs the attempt aborts its provider call.
                SELECT pg_notify($3, t.id::text) FROM target t
                WHERE t.status = 'running' AND EXISTS (SELECT 1 FROM cancelled)
             )
             SELECT t.status AS previous, ev.* FROM target t LEFT JOIN ev ON TRUE
             LEFT JOIN told ON TRUE",
        )
        .bind(id.0)
        .bind(now)
        .bind(CANCEL_CHANNEL)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        let Some(row) = row else {
            return Ok((cancel_outcome(None)?, Vec::new()));
        };
        let previous: String = row.try_get("previous").map_err(db)?;
        let event_id: Option<i64> = row.try_get("id").map_err(db)?;
        let events = match event_id {
            Some(_) => vec![event_from_row(&row)?],
            None => Vec::new(),
        };
        Ok((
            cancel_outcome(Some((previous, events.len() as i64)))?,
            events,
        ))
    }

    pub(in crate::store) async fn rescue_expired(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<(Vec<(RunId, Status)>, Vec<RunEvent>)> {
        let rows = sqlx::query(
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
                RETURNING r.id, r.attempts, r.status, r.class, r.tenant, r.batch
             ), closed AS (
                UPDATE run_attempts a SET finished_at = $1, outcome = 'abandoned',
                    error_message = $3
                FROM rescued x
                WHERE a.run_id = x.id AND a.attempt = x.attempts AND a.finished_at IS NULL
             ), woken AS (
                SELECT pg_notify($4, '') FROM rescued WHERE status = 'queued' LIMIT 1
             ), ev AS (
                INSERT INTO run_events (run_id, kind, at, attempt, data, class, tenant, batch)
                SELECT x.id, e.kind, $1, x.attempts, e.data::json, x.class, x.tenant, x.batch
                FROM rescued x
                CROSS JOIN LATERAL (VALUES
                    (1, 'attempt_failed', CASE WHEN x.status = 'queued' THEN $5 ELSE $6 END),
                    (2, CASE WHEN x.status = 'failed' THEN 'failed' END, $7)
                ) AS e(ord, kind, data)
                WHERE e.kind IS NOT NULL
                ORDER BY x.id, e.ord
                RETURNING id, run_id, kind, at, attempt, data::text AS data, class, tenant, batch
             )
             SELECT ev.*, x.status AS run_status
             FROM ev JOIN rescued x ON x.id = ev.run_id LEFT JOIN woken ON TRUE
             ORDER BY ev.id",
        )
        .bind(now)
        .bind(limit as i64)
        .bind(ABANDONED_MESSAGE)
        .bind(WAKE_CHANNEL)
        .bind(abandoned_data(Some(now)).get())
        .bind(abandoned_data(None).get())
        .bind(abandoned_final_data().get())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut outcome = Vec::new();
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let event = event_from_row(row)?;
            if event.kind == EventKind::AttemptFailed {
                let status: String = row.try_get("run_status").map_err(db)?;
                outcome.push((event.run_id, parse_status(&status)?));
            }
            events.push(event);
        }
        Ok((outcome, events))
    }

    pub(in crate::store) async fn get_run(&self, id: RunId) -> Result<Option<RunView>> {
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

    pub(in crate::store) async fn expire_queued(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<(Vec<Expired>, Vec<RunEvent>)> {
        let rows = sqlx::query(
            "WITH expired AS (
                SELECT id FROM runs
                WHERE status = 'queued' AND started_at IS NULL AND queue_deadline_at <= $1
                ORDER BY queue_deadline_at
                LIMIT $2
                FOR UPDATE SKIP LOCKED
             ), ended AS (
                UPDATE runs r
                SET status = CASE WHEN r.class = 0 THEN 'timed_out' ELSE 'dropped' END,
                    finished_at = $1,
                    timeout_origin = CASE WHEN r.class = 0 THEN 'queue_wait' END,
                    drop_reason = CASE WHEN r.class = 1 THEN 'stale' END,
                    error_kind = CASE WHEN r.class = 0 THEN 'timeout' END,
                    error_message = CASE WHEN r.class = 0 THEN $3 END,
                    error_status = NULL
                FROM expired e WHERE r.id = e.id
                RETURNING r.id, r.status, r.class, r.tenant, r.batch, r.created_at
             ), ev AS (
                INSERT INTO run_events (run_id, kind, at, data, class, tenant, batch)
                SELECT id, status, $1,
                    CASE WHEN class = 0 THEN $4::json ELSE $5::json END, class, tenant, batch
                FROM ended
                RETURNING id, run_id, kind, at, attempt, data::text AS data, class, tenant, batch
             )
             SELECT ev.*, x.created_at AS run_created_at
             FROM ev JOIN ended x ON x.id = ev.run_id ORDER BY ev.id",
        )
        .bind(now)
        .bind(limit as i64)
        .bind(QUEUE_WAIT_MESSAGE)
        .bind(queue_wait_data().get())
        .bind(stale_data().get())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut expired = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let e = event_from_row(row)?;
            expired.push(Expired {
                id: e.run_id,
                class: e.class,
                status: if e.kind == EventKind::TimedOut {
                    Status::TimedOut
                } else {
                    Status::Dropped
                },
                created_at: row.try_get("run_created_at").map_err(db)?,
            });
            events.push(e);
        }
        Ok((expired, events))
    }

    pub(in crate::store) async fn provider_backlog(
        &self,
        provider: &str,
        now: DateTime<Utc>,
    ) -> Result<(i64, i64)> {
        sqlx::query_as(
            "SELECT
                (SELECT count(*) FROM runs WHERE provider = $1 AND class = 0
                   AND status = 'queued' AND due_at <= $2),
                (SELECT count(*) FROM runs WHERE provider = $1 AND class = 1
                   AND status = 'queued')",
        )
        .bind(provider)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(db)
    }

    pub(in crate::store) async fn session_background_since(
        &self,
        session: &str,
        key: Option<&str>,
        since: DateTime<Utc>,
    ) -> Result<(i64, Option<DateTime<Utc>>)> {
        sqlx::query_as(
            "SELECT count(*), min(created_at) FROM runs
             WHERE session = $1 AND class = 1 AND concurrency_key IS NOT DISTINCT FROM $2
               AND created_at > $3",
        )
        .bind(session)
        .bind(key)
        .bind(since)
        .fetch_one(&self.pool)
        .await
        .map_err(db)
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
             LIMIT $1",
        )
        .bind(limit as i64)
        .fetch_all(&self.pool)
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
        let id: Option<Uuid> = sqlx::query_scalar("SELECT id FROM runs WHERE idem_key = $1")
            .bind(idem_key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        Ok(id.map(RunId))
    }

    pub(in crate::store) async fn save_provider_state(
        &self,
        states: &[(String, String)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let (names, values): (Vec<&str>, Vec<&str>) =
            states.iter().map(|(n, v)| (n.as_str(), v.as_str())).unzip();
        sqlx::query(
            "INSERT INTO provider_state (provider, limiter, updated_at)
             SELECT p, l::json, $3 FROM unnest($1::text[], $2::text[]) AS t(p, l)
             ON CONFLICT (provider) DO UPDATE
             SET limiter = EXCLUDED.limiter, updated_at = EXCLUDED.updated_at",
        )
        .bind(&names)
        .bind(&values)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    pub(in crate::store) async fn load_provider_state(&self) -> Result<Vec<(String, String)>> {
        sqlx::query_as("SELECT provider, limiter::text FROM provider_state")
            .fetch_all(&self.pool)
            .await
            .map_err(db)
    }

    pub(in crate::store) async fn count_active(&self) -> Result<Vec<(Class, Status, i64)>> {
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

    pub(in crate::store) async fn next_due_at(&self) -> Result<Option<DateTime<Utc>>> {
        sqlx::query_scalar("SELECT min(due_at) FROM runs WHERE status = 'queued'")
            .fetch_one(&self.pool)
            .await
            .map_err(db)
    }

    pub(in crate::store) async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    pub(in crate::store) async fn close(&self) {
        self.pool.close().await
    }
}
