//! Retention on SQLite: old finished runs go, a bounded batch per statement; their
//! attempts and events follow through the foreign keys' `ON DELETE CASCADE`. Each batch
//! is one short write, so the single writer is never held for long.

use chrono::{DateTime, Utc};

use super::{SqliteStore, ms};
use crate::run::Status;
use crate::store::Result;

impl SqliteStore {
    pub(in crate::store) async fn delete_finished(
        &self,
        status: Status,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM runs WHERE id IN (
                SELECT id FROM runs
                WHERE status = ?1 AND finished_at IS NOT NULL AND finished_at < ?2
                ORDER BY finished_at LIMIT ?3)",
        )
        .bind(status.as_str())
        .bind(ms(before))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }
}
