//! Retention on PostgreSQL: old finished runs go with their attempts and events, a bounded
//! batch per statement. The batch is locked with `SKIP LOCKED`, so a pass never waits on
//! (or holds up) anything else touching those rows, and short statements leave dead
//! tuples that autovacuum reclaims in step instead of one huge delete's bloat.

use chrono::{DateTime, Utc};

use super::PgStore;
use crate::run::Status;
use crate::store::Result;

impl PgStore {
    pub(in crate::store) async fn delete_finished(
        &self,
        status: Status,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64> {
        let gone: i64 = sqlx::query_scalar(
            "WITH doomed AS (
                SELECT id FROM runs
                WHERE status = $1 AND finished_at IS NOT NULL AND finished_at < $2
                ORDER BY finished_at LIMIT $3
                FOR UPDATE SKIP LOCKED
             ), gone AS (
                DELETE FROM runs r USING doomed d WHERE r.id = d.id RETURNING r.id
             ), events AS (
                DELETE FROM run_events e USING gone g WHERE e.run_id = g.id
             ), attempts AS (
                DELETE FROM run_attempts a USING gone g WHERE a.run_id = g.id
             )
             SELECT count(*) FROM gone",
        )
        .bind(status.as_str())
        .bind(before)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(gone).unwrap_or(0))
    }
}
