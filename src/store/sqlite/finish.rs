//! Ending attempts and runs: completions, failures, releases, cancellations, rescues and queue-deadline expiry, each with its events.

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::*;
use crate::run::Class;
use crate::store::codec::{ScopeRecord, parse_status};
use crate::store::tenant_usage::utc_day;

/// The run a finishing statement changed, as it returns it (`RETURNING id, class, tenant,
/// batch`), or none when it changed nothing.
pub(super) fn changed(row: Option<SqliteRow>) -> Result<Option<EventScope>> {
    row.map(|row| ScopeRecord::from_row(&row)?.decode())
        .transpose()
}

impl SqliteStore {
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
                     prompt_tokens = ?, completion_tokens = ?, output_tool_calls = ?,
                     output_refusal = ?, raw_finish_reason = ?, lease_owner = NULL,
                     lease_expires_at = NULL, error_kind = NULL, error_message = NULL,
                     error_status = NULL
                 WHERE id = ? AND status = 'running' AND lease_owner = ? AND attempts = ?
                 RETURNING id, class, tenant, batch, provider, model",
            )
            .bind(ms(c.finished_at))
            .bind(&c.content)
            .bind(&c.finish_reason)
            .bind(c.prompt_tokens)
            .bind(c.completion_tokens)
            .bind(c.tool_calls.as_ref().map(|v| v.to_string()))
            .bind(&c.refusal)
            .bind(&c.raw_finish_reason)
            .bind(c.id.0)
            .bind(worker.0)
            .bind(c.attempt as i64)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = hit else {
                continue;
            };
            let scope = ScopeRecord::from_row(&row)?.decode()?;
            close_attempt(
                &mut tx,
                c.id,
                c.attempt,
                c.finished_at,
                OUTCOME_COMPLETED,
                None,
            )
            .await?;
            if let Some(tenant) = &scope.tenant
                && (c.prompt_tokens.is_some() || c.completion_tokens.is_some())
            {
                sqlx::query(
                    "INSERT INTO tenant_usage
                        (tenant, day, provider, model, prompt_tokens, completion_tokens)
                     VALUES (?, ?, ?, COALESCE(?, ''), ?, ?)
                     ON CONFLICT (tenant, day, provider, model) DO UPDATE
                     SET prompt_tokens = prompt_tokens + excluded.prompt_tokens,
                         completion_tokens = completion_tokens + excluded.completion_tokens",
                )
                .bind(tenant)
                .bind(utc_day(c.finished_at))
                .bind(row.try_get::<String, _>("provider")?)
                .bind(row.try_get::<Option<String>, _>("model")?)
                .bind(i64::from(c.prompt_tokens.unwrap_or(0)))
                .bind(i64::from(c.completion_tokens.unwrap_or(0)))
                .execute(&mut *tx)
                .await?;
            }
            let completed = scope.event(EventKind::Completed, c.finished_at, Some(c.attempt), None);
            events.push(insert_event(&mut tx, completed).await?);
        }
        tx.commit().await?;
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
                 RETURNING id, class, tenant, batch",
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
            .await?;
            let Some(scope) = changed(hit)? else {
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
            .await?;
            let retry_at = match f.next {
                FailureNext::RetryAt(at) => Some(at),
                FailureNext::Finish { .. } => None,
            };
            let (at, attempt) = (f.finished_at, Some(f.attempt));
            let data = attempt_failed_data(&f.error, retry_at);
            let failed = scope.event(EventKind::AttemptFailed, at, attempt, Some(data));
            events.push(insert_event(&mut tx, failed).await?);
            if let Some(kind) = EventKind::terminal_for(status) {
                let data = final_failure_data(&f.error, origin);
                events
                    .push(insert_event(&mut tx, scope.event(kind, at, attempt, Some(data))).await?);
            }
        }
        tx.commit().await?;
        Ok(events)
    }

    pub(in crate::store) async fn release(
        &self,
        worker: WorkerId,
        runs: &[(RunId, u32)],
        now: DateTime<Utc>,
    ) -> Result<Vec<RunEvent>> {
        let mut tx = self.begin().await?;
        let mut events = Vec::with_capacity(runs.len());
        for (id, attempt) in runs {
            let hit = sqlx::query(
                "UPDATE runs
                 SET status = 'queued', attempts = attempts - 1, due_at = ?, lease_owner = NULL,
                     lease_expires_at = NULL
                 WHERE id = ? AND status = 'running' AND lease_owner = ? AND attempts = ?
                 RETURNING id, class, tenant, batch",
            )
            .bind(ms(now))
            .bind(id.0)
            .bind(worker.0)
            .bind(*attempt as i64)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(scope) = changed(hit)? else {
                continue;
            };
            close_attempt(&mut tx, *id, *attempt, now, OUTCOME_RELEASED, None).await?;
            let queued = scope.event(
                EventKind::Queued,
                now,
                Some(*attempt),
                Some(released_data()),
            );
            events.push(insert_event(&mut tx, queued).await?);
        }
        tx.commit().await?;
        Ok(events)
    }

    pub(in crate::store) async fn cancel(
        &self,
        id: RunId,
        now: DateTime<Utc>,
    ) -> Result<(Option<Status>, Vec<RunEvent>)> {
        let mut tx = self.begin().await?;
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM runs WHERE id = ?")
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(status) = status else {
            return Ok((None, Vec::new()));
        };
        let hit = sqlx::query(
            "UPDATE runs
             SET status = 'cancelled', finished_at = ?, lease_owner = NULL, lease_expires_at = NULL,
                 error_kind = 'cancelled', error_message = ?, error_status = NULL
             WHERE id = ? AND status IN ('queued', 'running')
             RETURNING id, attempts, class, tenant, batch",
        )
        .bind(ms(now))
        .bind(CANCEL_MESSAGE)
        .bind(id.0)
        .fetch_optional(&mut *tx)
        .await?;
        let mut events = Vec::new();
        if let Some(row) = hit {
            sqlx::query(
                "UPDATE run_attempts SET finished_at = ?, outcome = 'cancelled'
                 WHERE run_id = ? AND finished_at IS NULL",
            )
            .bind(ms(now))
            .bind(id.0)
            .execute(&mut *tx)
            .await?;
            let attempts: i64 = row.try_get("attempts")?;
            let attempt = (attempts > 0).then_some(attempts as u32);
            let scope = ScopeRecord::from_row(&row)?.decode()?;
            let cancelled = scope.event(EventKind::Cancelled, now, attempt, Some(cancelled_data()));
            events.push(insert_event(&mut tx, cancelled).await?);
        }
        tx.commit().await?;
        Ok((Some(parse_status(&status)?), events))
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
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let scope = ScopeRecord::from_row(row)?.decode()?;
            let attempt = row.try_get::<i64, _>("attempts")? as u32;
            let status = parse_status(&row.try_get::<String, _>("status")?)?;
            let message = Some(ABANDONED_MESSAGE);
            close_attempt(
                &mut tx,
                scope.run_id,
                attempt,
                now,
                OUTCOME_ABANDONED,
                message,
            )
            .await?;
            let requeued = status == Status::Queued;
            let data = abandoned_data(requeued.then_some(now));
            let failed = scope.event(EventKind::AttemptFailed, now, Some(attempt), Some(data));
            events.push(insert_event(&mut tx, failed).await?);
            if !requeued {
                let data = abandoned_final_data();
                let ended = scope.event(EventKind::Failed, now, Some(attempt), Some(data));
                events.push(insert_event(&mut tx, ended).await?);
            }
            out.push((scope.run_id, status));
        }
        tx.commit().await?;
        Ok((out, events))
    }

    pub(in crate::store) async fn expire_queued(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        open_breakers: &[String],
    ) -> Result<(Vec<Expired>, Vec<RunEvent>)> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(
            "UPDATE runs
             SET status = CASE WHEN class = 0 THEN 'timed_out' ELSE 'dropped' END,
                 finished_at = ?1,
                 timeout_origin = CASE WHEN class = 0 THEN 'queue_wait' END,
                 drop_reason = CASE WHEN class = 1 THEN 'stale' END,
                 error_kind = CASE WHEN provider IN (SELECT value FROM json_each(?4))
                     THEN 'breaker_open' WHEN class = 0 THEN 'timeout' END,
                 error_message = CASE WHEN provider IN (SELECT value FROM json_each(?4))
                     THEN ?5 WHEN class = 0 THEN ?3 END,
                 error_status = NULL
             WHERE id IN (
                SELECT id FROM runs
                WHERE status = 'queued' AND started_at IS NULL AND queue_deadline_at <= ?1
                ORDER BY queue_deadline_at LIMIT ?2)
             RETURNING id, class, tenant, batch, created_at, error_kind",
        )
        .bind(ms(now))
        .bind(limit as i64)
        .bind(QUEUE_WAIT_MESSAGE)
        .bind(serde_json::to_string(open_breakers).expect("names serialise"))
        .bind(BREAKER_OPEN_MESSAGE)
        .fetch_all(&mut *tx)
        .await?;
        let mut expired = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let scope = ScopeRecord::from_row(row)?.decode()?;
            let blamed = row.try_get::<Option<String>, _>("error_kind")?.as_deref()
                == Some(crate::run::ErrorKind::BreakerOpen.as_str());
            let (status, kind, data) = match scope.class {
                Class::Live => (Status::TimedOut, EventKind::TimedOut, queue_wait_data()),
                Class::Background => (Status::Dropped, EventKind::Dropped, stale_data()),
            };
            let data = if blamed {
                breaker_open_data(scope.class)
            } else {
                data
            };
            events.push(insert_event(&mut tx, scope.event(kind, now, None, Some(data))).await?);
            expired.push(Expired {
                id: scope.run_id,
                class: scope.class,
                status,
                created_at: from_ms(row.try_get("created_at")?)?,
                tenant: scope.tenant.clone(),
            });
        }
        tx.commit().await?;
        Ok((expired, events))
    }
}
