//! Ending attempts and runs: completions, failures, releases, cancellations, rescues and queue-deadline expiry, each with its events.

use super::*;
use crate::store::codec::parse_status;
use crate::store::tenant_usage::utc_day;

impl PgStore {
    pub(in crate::store) async fn mark_completed(
        &self,
        worker: WorkerId,
        done: &[Completion],
    ) -> Result<Vec<RunEvent>> {
        let ids: Vec<Uuid> = done.iter().map(|c| c.id.0).collect();
        let attempts: Vec<i16> = done.iter().map(|c| c.attempt as i16).collect();
        let finished: Vec<DateTime<Utc>> = done.iter().map(|c| c.finished_at).collect();
        let contents: Vec<Option<&str>> = done.iter().map(|c| c.content.as_deref()).collect();
        let reasons: Vec<Option<&str>> = done.iter().map(|c| c.finish_reason.as_deref()).collect();
        let tool_calls: Vec<Option<String>> = done
            .iter()
            .map(|c| c.tool_calls.as_ref().map(|v| v.to_string()))
            .collect();
        let refusals: Vec<Option<&str>> = done.iter().map(|c| c.refusal.as_deref()).collect();
        let raw_reasons: Vec<Option<&str>> = done
            .iter()
            .map(|c| c.raw_finish_reason.as_deref())
            .collect();
        let prompt: Vec<Option<i32>> = done.iter().map(|c| c.prompt_tokens).collect();
        let completion: Vec<Option<i32>> = done.iter().map(|c| c.completion_tokens).collect();
        let days: Vec<i64> = done.iter().map(|c| utc_day(c.finished_at)).collect();
        let rows = sqlx::query(
            "WITH input AS (
                SELECT * FROM unnest($2::uuid[], $3::int2[], $4::timestamptz[], $5::text[],
                    $6::text[], $7::int4[], $8::int4[], $9::text[], $10::text[], $11::text[],
                    $12::int8[])
                  AS t(id, attempt, finished_at, content, finish_reason, prompt_tokens,
                       completion_tokens, tool_calls, refusal, raw_finish_reason, day)
             ), done AS (
                UPDATE runs r
                SET status = 'completed', finished_at = i.finished_at, output_content = i.content,
                    finish_reason = i.finish_reason, prompt_tokens = i.prompt_tokens,
                    completion_tokens = i.completion_tokens,
                    output_tool_calls = i.tool_calls::jsonb, output_refusal = i.refusal,
                    raw_finish_reason = i.raw_finish_reason, lease_owner = NULL,
                    lease_expires_at = NULL, error_kind = NULL, error_message = NULL,
                    error_status = NULL
                FROM input i
                WHERE r.id = i.id AND r.status = 'running' AND r.lease_owner = $1
                  AND r.attempts = i.attempt
                RETURNING r.id, r.attempts, i.finished_at, r.class, r.tenant, r.batch,
                    r.provider, r.model, i.day, i.prompt_tokens, i.completion_tokens
             ), closed AS (
                UPDATE run_attempts a SET finished_at = d.finished_at, outcome = 'completed'
                FROM done d
                WHERE a.run_id = d.id AND a.attempt = d.attempts AND a.finished_at IS NULL
             ), used AS (
                INSERT INTO tenant_usage AS u
                    (tenant, day, provider, model, prompt_tokens, completion_tokens)
                SELECT tenant, day, provider, COALESCE(model, ''),
                    SUM(COALESCE(prompt_tokens, 0)), SUM(COALESCE(completion_tokens, 0))
                FROM done
                WHERE tenant IS NOT NULL
                  AND (prompt_tokens IS NOT NULL OR completion_tokens IS NOT NULL)
                GROUP BY tenant, day, provider, COALESCE(model, '')
                -- One order for every process, so two batches never wait on each other.
                ORDER BY tenant, day, provider, COALESCE(model, '')
                ON CONFLICT (tenant, day, provider, model) DO UPDATE
                SET prompt_tokens = u.prompt_tokens + EXCLUDED.prompt_tokens,
                    completion_tokens = u.completion_tokens + EXCLUDED.completion_tokens
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
        .bind(&tool_calls)
        .bind(&refusals)
        .bind(&raw_reasons)
        .bind(&days)
        .fetch_all(&self.pool)
        .await?;
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
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    pub(in crate::store) async fn release(
        &self,
        worker: WorkerId,
        runs: &[(RunId, u32)],
        now: DateTime<Utc>,
    ) -> Result<Vec<RunEvent>> {
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
                SELECT id, 'queued', $4, attempt, $6::json, class, tenant, batch
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
        .bind(released_data().get())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    pub(in crate::store) async fn cancel(
        &self,
        id: RunId,
        now: DateTime<Utc>,
    ) -> Result<(Option<Status>, Vec<RunEvent>)> {
        let row = sqlx::query(
            "WITH target AS (
                SELECT id, status FROM runs WHERE id = $1 FOR UPDATE
             ), cancelled AS (
                UPDATE runs r
                SET status = 'cancelled', finished_at = $2, lease_owner = NULL,
                    lease_expires_at = NULL, error_kind = 'cancelled', error_message = $4,
                    error_status = NULL
                FROM target t
                WHERE r.id = t.id AND t.status IN ('queued', 'running')
                RETURNING r.id, r.attempts, r.class, r.tenant, r.batch
             ), closed AS (
                UPDATE run_attempts a SET finished_at = $2, outcome = 'cancelled'
                FROM cancelled c WHERE a.run_id = c.id AND a.finished_at IS NULL
             ), ev AS (
                INSERT INTO run_events (run_id, kind, at, attempt, data, class, tenant, batch)
                SELECT id, 'cancelled', $2, NULLIF(attempts, 0), $5::json, class, tenant, batch
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
        .bind(CANCEL_MESSAGE)
        .bind(cancelled_data().get())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok((None, Vec::new()));
        };
        let previous = parse_status(&row.try_get::<String, _>("previous")?)?;
        let event_id: Option<i64> = row.try_get("id")?;
        let events = match event_id {
            Some(_) => vec![event_from_row(&row)?],
            None => Vec::new(),
        };
        Ok((Some(previous), events))
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
        .await?;
        let mut outcome = Vec::new();
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let event = event_from_row(row)?;
            if event.kind == EventKind::AttemptFailed {
                let status: String = row.try_get("run_status")?;
                outcome.push((event.run_id, parse_status(&status)?));
            }
            events.push(event);
        }
        Ok((outcome, events))
    }

    pub(in crate::store) async fn expire_queued(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        open_breakers: &[String],
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
                    error_kind = CASE WHEN r.provider = ANY($6)
                        THEN 'breaker_open' WHEN r.class = 0 THEN 'timeout' END,
                    error_message = CASE WHEN r.provider = ANY($6)
                        THEN $7 WHEN r.class = 0 THEN $3 END,
                    error_status = NULL
                FROM expired e WHERE r.id = e.id
                RETURNING r.id, r.status, r.class, r.tenant, r.batch, r.created_at, r.error_kind
             ), ev AS (
                INSERT INTO run_events (run_id, kind, at, data, class, tenant, batch)
                SELECT id, status, $1,
                    CASE WHEN error_kind = 'breaker_open'
                        THEN (CASE WHEN class = 0 THEN $8::json ELSE $9::json END)
                        WHEN class = 0 THEN $4::json ELSE $5::json END,
                    class, tenant, batch
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
        .bind(open_breakers)
        .bind(BREAKER_OPEN_MESSAGE)
        .bind(breaker_open_data(Class::Live).get())
        .bind(breaker_open_data(Class::Background).get())
        .fetch_all(&self.pool)
        .await?;
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
                created_at: row.try_get("run_created_at")?,
                tenant: e.tenant.clone(),
            });
            events.push(e);
        }
        Ok((expired, events))
    }
}
