//! Requeueing dead letters on SQLite: each run in turn inside the writer's transaction,
//! with its `requeued` event (see `store::dead_letters`).

use super::finish::changed;
use super::*;
use crate::store::Requeue;
use crate::store::codec::parse_class;

impl SqliteStore {
    pub(in crate::store) async fn requeue(
        &self,
        runs: &[RunId],
        how: Requeue,
    ) -> Result<Vec<RunEvent>> {
        let mut tx = self.begin().await?;
        let mut events = Vec::with_capacity(runs.len());
        for id in runs {
            let class: Option<i16> = sqlx::query_scalar(
                "SELECT class FROM runs WHERE id = ? AND status IN ('failed', 'timed_out')",
            )
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(class) = class else {
                continue;
            };
            let hit = sqlx::query(
                "UPDATE runs
                 SET status = 'queued', max_attempts = min(attempts + ?, 32767), due_at = ?,
                     queue_deadline_at = ?, finished_at = NULL, timeout_origin = NULL,
                     drop_reason = NULL, error_kind = NULL, error_message = NULL,
                     error_status = NULL, lease_owner = NULL, lease_expires_at = NULL
                 WHERE id = ? AND status IN ('failed', 'timed_out')
                 RETURNING id, class, tenant, batch",
            )
            .bind(i64::from(how.attempts))
            .bind(ms(how.now))
            .bind(ms(how.deadline(parse_class(class)?)))
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(scope) = changed(hit)? else {
                continue;
            };
            let requeued = scope.event(EventKind::Requeued, how.now, None, None);
            events.push(insert_event(&mut tx, requeued).await?);
        }
        tx.commit().await?;
        Ok(events)
    }
}
