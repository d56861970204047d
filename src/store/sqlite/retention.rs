//! Retention on SQLite: old finished runs go, a bounded batch per transaction, with their
//! events (the log has no foreign key: it also holds batch events) and their attempts
//! (through the foreign key's `ON DELETE CASCADE`). Each batch is one short write, so the
//! single writer is never held for long.

use chrono::{DateTime, Utc};

use super::{SqliteStore, ms};
use crate::run::Status;
use crate::store::Result;

/// The runs one batch deletes: the oldest finished with a status before a time.
macro_rules! doomed {
    () => {
        "SELECT id FROM runs WHERE status = ?1 AND finished_at IS NOT NULL AND finished_at < ?2
         ORDER BY finished_at LIMIT ?3"
    };
}
const DELETE_EVENTS: &str = concat!("DELETE FROM run_events WHERE run_id IN (", doomed!(), ")");
const DELETE_RUNS: &str = concat!("DELETE FROM runs WHERE id IN (", doomed!(), ")");

impl SqliteStore {
    pub(in crate::store) async fn delete_finished(
        &self,
        status: Status,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64> {
        // The single writer: nothing changes the batch between the two statements.
        let mut tx = self.writer.begin().await?;
        let mut deleted = 0;
        for table in [DELETE_EVENTS, DELETE_RUNS] {
            deleted = sqlx::query(table)
                .bind(status.as_str())
                .bind(ms(before))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(deleted)
    }
}
