//! The SQLite event log: appending an event inside the transaction of the state change it
//! reports, and reading the log back.

use sqlx::{Sqlite, Transaction};

use super::{SqliteStore, ms};
use crate::run::RunId;
use crate::store::Result;
use crate::store::codec::EventRecord;
use crate::store::model::*;

const EVENT_COLUMNS: &str = "id, run_id, kind, at, attempt, data, class, tenant, batch";

/// Appends `event` inside the transaction of the state change it reports; returns it with
/// the id the log gave it.
pub(super) async fn insert_event(
    tx: &mut Transaction<'static, Sqlite>,
    event: RunEvent,
) -> Result<RunEvent> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO run_events (run_id, kind, at, attempt, data, class, tenant, batch)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(event.run_id.0)
    .bind(event.kind.as_str())
    .bind(ms(event.at))
    .bind(event.attempt.map(i64::from))
    .bind(event.data.as_ref().map(|d| d.get()))
    .bind(event.class.rank())
    .bind(&event.tenant)
    .bind(&event.batch)
    .fetch_one(&mut **tx)
    .await?;
    Ok(RunEvent { id, ..event })
}

fn decode(rows: Vec<EventRecord<i64>>) -> Result<Vec<RunEvent>> {
    rows.into_iter().map(EventRecord::decode).collect()
}

impl SqliteStore {
    pub(in crate::store) async fn events_for_run(
        &self,
        run: RunId,
        after: i64,
    ) -> Result<Vec<RunEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM run_events WHERE run_id = ? AND id > ? ORDER BY id"
        );
        let rows = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(run.0)
            .bind(after)
            .fetch_all(&self.reader)
            .await?;
        decode(rows)
    }

    pub(in crate::store) async fn events_after(
        &self,
        after: i64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RunEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM run_events
             WHERE id > ?1 AND (?2 IS NULL OR class = ?2) AND (?3 IS NULL OR tenant = ?3)
               AND (?4 IS NULL OR batch = ?4)
             ORDER BY id LIMIT ?5"
        );
        let rows = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(after)
            .bind(filter.class.map(|c| c.rank()))
            .bind(filter.tenant.as_deref())
            .bind(filter.batch.as_deref())
            .bind(limit as i64)
            .fetch_all(&self.reader)
            .await?;
        decode(rows)
    }

    pub(in crate::store) async fn last_event_id(&self) -> Result<i64> {
        let id: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM run_events")
            .fetch_one(&self.reader)
            .await?;
        Ok(id.unwrap_or(0))
    }
}
