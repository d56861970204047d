//! Requeueing dead letters on PostgreSQL: one statement for all the runs, which writes
//! their `requeued` events and wakes the producers (see `store::dead_letters`).

use super::*;
use crate::store::Requeue;

impl PgStore {
    pub(in crate::store) async fn requeue(
        &self,
        runs: &[RunId],
        how: Requeue,
    ) -> Result<Vec<RunEvent>> {
        let ids: Vec<Uuid> = runs.iter().map(|r| r.0).collect();
        let rows = sqlx::query(
            "WITH target AS (
                SELECT id FROM runs WHERE id = ANY($1) AND status IN ('failed', 'timed_out')
                FOR UPDATE
             ), requeued AS (
                UPDATE runs r
                SET status = 'queued', max_attempts = LEAST(r.attempts + $2, 32767),
                    due_at = $3,
                    queue_deadline_at = CASE r.class WHEN 0 THEN $4 ELSE $5 END,
                    finished_at = NULL, timeout_origin = NULL, drop_reason = NULL,
                    error_kind = NULL, error_message = NULL, error_status = NULL,
                    lease_owner = NULL, lease_expires_at = NULL
                FROM target t WHERE r.id = t.id
                RETURNING r.id, r.class, r.tenant, r.batch
             ), ev AS (
                INSERT INTO run_events (run_id, kind, at, attempt, data, class, tenant, batch)
                SELECT id, 'requeued', $3, NULL, NULL, class, tenant, batch FROM requeued
                RETURNING id, run_id, kind, at, attempt, data::text AS data, class, tenant, batch
             ), woken AS (
                SELECT pg_notify($6, '') WHERE EXISTS (SELECT 1 FROM requeued)
             )
             SELECT ev.* FROM ev LEFT JOIN woken ON TRUE",
        )
        .bind(&ids)
        .bind(i32::try_from(how.attempts).unwrap_or(i32::MAX))
        .bind(how.now)
        .bind(how.deadline(Class::Live))
        .bind(how.deadline(Class::Background))
        .bind(WAKE_CHANNEL)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }
}
