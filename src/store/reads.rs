//! The reads whose statements are the same on both backends, written once over either's
//! pool: a run with its attempt log, the event log, idempotency keys, queue depths and
//! backlogs, the busiest concurrency keys and the saved provider state.
//!
//! The statements keep to SQL both databases read alike: `$n` parameters, `CAST(… AS
//! TEXT)` for JSON columns, `IS NOT DISTINCT FROM`. A backend lends its read pool through
//! [`Reads`], naming how it stores a time (see `codec::StoredTime`).

use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};
use uuid::Uuid;

use super::Result;
use super::codec::{
    AttemptRecord, EventRecord, RunRecord, StoredTime, parse_class, parse_status, time_opt,
};
use super::model::*;
use crate::run::{Class, RunId, Status};

/// The columns [`RunRecord`] reads.
pub(super) const RUN_COLUMNS: &str = "id, status, provider, model, class, priority, tenant, concurrency_key, \
     session, batch, CAST(metadata AS TEXT) AS metadata, stream, attempts, max_attempts, \
     timeout_ms, queue_deadline_at, due_at, created_at, started_at, finished_at, timeout_origin, \
     drop_reason, output_content, finish_reason, prompt_tokens, completion_tokens, error_kind, \
     error_message, error_status, CAST(output_tool_calls AS TEXT) AS output_tool_calls, \
     output_refusal, raw_finish_reason";

/// The columns [`EventRecord`] reads.
pub(super) const EVENT_COLUMNS: &str =
    "id, run_id, kind, at, attempt, CAST(data AS TEXT) AS data, class, tenant, batch";

/// The reads of one backend's pool; `T` is how it stores a time.
pub(super) struct Reads<'a, DB: Database, T> {
    pub(super) pool: &'a Pool<DB>,
    time: PhantomData<T>,
}

impl<'a, DB: Database, T> Reads<'a, DB, T> {
    pub(super) fn new(pool: &'a Pool<DB>) -> Self {
        Reads {
            pool,
            time: PhantomData,
        }
    }
}

impl<DB, T> Reads<'_, DB, T>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Uuid: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i16>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'r> (Uuid,): FromRow<'r, DB::Row>,
    for<'r> (Option<i64>,): FromRow<'r, DB::Row>,
    for<'r> (Option<T>,): FromRow<'r, DB::Row>,
    for<'r> (i64, i64): FromRow<'r, DB::Row>,
    for<'r> (i64, Option<T>): FromRow<'r, DB::Row>,
    for<'r> (String, String): FromRow<'r, DB::Row>,
    for<'r> (i16, String, i64): FromRow<'r, DB::Row>,
    for<'r> (String, i16, i64, i64): FromRow<'r, DB::Row>,
    for<'r> RunRecord<T>: FromRow<'r, DB::Row>,
    for<'r> AttemptRecord<T>: FromRow<'r, DB::Row>,
    for<'r> EventRecord<T>: FromRow<'r, DB::Row>,
    for<'q> T: StoredTime + Encode<'q, DB> + Type<DB> + Send + Unpin,
{
    pub(super) async fn get_run(&self, id: RunId) -> Result<Option<RunView>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1");
        let run: Option<RunRecord<T>> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id.0)
            .fetch_optional(self.pool)
            .await?;
        let Some(run) = run else {
            return Ok(None);
        };
        let attempts = sqlx::query_as(
            "SELECT attempt, started_at, finished_at, outcome, status, retry_after_ms,
                error_message
             FROM run_attempts WHERE run_id = $1 ORDER BY id",
        )
        .bind(id.0)
        .fetch_all(self.pool)
        .await?;
        Ok(Some(run.decode(attempts)?))
    }

    /// The events of one run after the event id `after`, in order.
    pub(super) async fn events_for_run(&self, run: RunId, after: i64) -> Result<Vec<RunEvent>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM run_events WHERE run_id = $1 AND id > $2 ORDER BY id"
        );
        let rows: Vec<EventRecord<T>> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(run.0)
            .bind(after)
            .fetch_all(self.pool)
            .await?;
        rows.into_iter().map(EventRecord::decode).collect()
    }

    /// Events of all runs after `after` that `filter` wants, oldest first, at most `limit`.
    pub(super) async fn events_after(
        &self,
        after: i64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RunEvent>> {
        // A batch event has no class: a class filter lets it through.
        let batch_kinds = EventKind::BATCH
            .map(|k| format!("'{}'", k.as_str()))
            .join(", ");
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM run_events
             WHERE id > $1
               AND ($2 IS NULL OR class = $2
                    OR kind IN ({batch_kinds}))
               AND ($3 IS NULL OR tenant = $3)
               AND ($4 IS NULL OR batch = $4)
             ORDER BY id LIMIT $5"
        );
        let rows: Vec<EventRecord<T>> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(after)
            .bind(filter.class.map(|c| c.rank()))
            .bind(filter.tenant.as_deref())
            .bind(filter.batch.as_deref())
            .bind(limit as i64)
            .fetch_all(self.pool)
            .await?;
        rows.into_iter().map(EventRecord::decode).collect()
    }

    /// The newest event id (0 when the log is empty).
    pub(super) async fn last_event_id(&self) -> Result<i64> {
        let id: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM run_events")
            .fetch_one(self.pool)
            .await?;
        Ok(id.unwrap_or(0))
    }

    /// The run holding an idempotency key.
    pub(super) async fn find_idempotent(&self, idem_key: &str) -> Result<Option<RunId>> {
        let id: Option<Uuid> = sqlx::query_scalar("SELECT id FROM runs WHERE idem_key = $1")
            .bind(idem_key)
            .fetch_optional(self.pool)
            .await?;
        Ok(id.map(RunId))
    }

    /// Queued and running runs by class and status.
    pub(super) async fn count_active(&self) -> Result<Vec<(Class, Status, i64)>> {
        let rows: Vec<(i16, String, i64)> = sqlx::query_as(
            "SELECT class, status, count(*) FROM runs
             WHERE status IN ('queued', 'running') GROUP BY class, status",
        )
        .fetch_all(self.pool)
        .await?;
        rows.into_iter()
            .map(|(class, status, n)| Ok((parse_class(class)?, parse_status(&status)?, n)))
            .collect()
    }

    /// The concurrency keys with the most runs queued or running, busiest first.
    pub(super) async fn busiest_keys(&self, limit: usize) -> Result<Vec<KeyLoad>> {
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
        .fetch_all(self.pool)
        .await?;
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

    /// For admission control: live runs of `provider` due at `now`, and its background
    /// runs waiting (due or not).
    pub(super) async fn provider_backlog(
        &self,
        provider: &str,
        now: DateTime<Utc>,
    ) -> Result<(i64, i64)> {
        Ok(sqlx::query_as(
            "SELECT
                (SELECT count(*) FROM runs WHERE provider = $1 AND class = 0
                   AND status = 'queued' AND due_at <= $2),
                (SELECT count(*) FROM runs WHERE provider = $1 AND class = 1
                   AND status = 'queued')",
        )
        .bind(provider)
        .bind(T::from_utc(now))
        .fetch_one(self.pool)
        .await?)
    }

    /// Background runs of `session` with concurrency key `key` created after `since`: how
    /// many, and when the oldest was.
    pub(super) async fn session_background_since(
        &self,
        session: &str,
        key: Option<&str>,
        since: DateTime<Utc>,
    ) -> Result<(i64, Option<DateTime<Utc>>)> {
        let (n, oldest): (i64, Option<T>) = sqlx::query_as(
            "SELECT count(*), min(created_at) FROM runs
             WHERE session = $1 AND class = 1 AND concurrency_key IS NOT DISTINCT FROM $2
               AND created_at > $3",
        )
        .bind(session)
        .bind(key)
        .bind(T::from_utc(since))
        .fetch_one(self.pool)
        .await?;
        Ok((n, time_opt(oldest)?))
    }

    /// The earliest due time of a queued run.
    pub(super) async fn next_due_at(&self) -> Result<Option<DateTime<Utc>>> {
        let due: Option<T> =
            sqlx::query_scalar("SELECT min(due_at) FROM runs WHERE status = 'queued'")
                .fetch_one(self.pool)
                .await?;
        time_opt(due)
    }

    /// Every provider's saved limiter state (JSON).
    pub(super) async fn load_provider_state(&self) -> Result<Vec<(String, String)>> {
        Ok(
            sqlx::query_as("SELECT provider, CAST(limiter AS TEXT) FROM provider_state")
                .fetch_all(self.pool)
                .await?,
        )
    }

    /// A round trip to the database.
    pub(super) async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(self.pool).await?;
        Ok(())
    }
}
