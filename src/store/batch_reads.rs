//! The reads of batches and listings, written once for both backends over either's read
//! pool (as `reads` does for runs): a batch and its progress, its finished runs page by
//! page, the newest-first pages of runs and batches, and the batches whose runs all ended.
//!
//! Pages are keyset pages on `(created_at, id)`: a page is an index range of `limit`
//! entries (see migrations 0005/0004 for the indexes), and rows arriving meanwhile can
//! neither push a row onto the next page twice nor make one skip a page.

use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};
use uuid::Uuid;

use super::batch_model::*;
use super::codec::{RunRecord, StoredTime, parse_status, time_opt};
use super::model::RunView;
use super::reads::RUN_COLUMNS;
use super::{Result, StoreError};
use crate::run::Status;

/// The columns [`BatchRecord`] reads.
pub(super) const BATCH_COLUMNS: &str = "id, tenant, CAST(metadata AS TEXT) AS metadata, run_count, \
     created_at, paused, cancelled_at, finished_at, toggled_at";

/// The statuses a run ends in, as SQL text: `'completed', 'failed', …`.
fn terminal_statuses() -> String {
    Status::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A row of `batches`.
#[derive(sqlx::FromRow)]
pub(super) struct BatchRecord<T> {
    id: String,
    tenant: Option<String>,
    metadata: Option<String>,
    run_count: i32,
    created_at: T,
    paused: bool,
    cancelled_at: Option<T>,
    finished_at: Option<T>,
    toggled_at: Option<T>,
}

impl<T: StoredTime> BatchRecord<T> {
    pub(super) fn decode(self) -> Result<BatchView> {
        Ok(BatchView {
            id: self
                .id
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("batch id {:?}: {e}", self.id)))?,
            tenant: self.tenant,
            metadata: self
                .metadata
                .map(serde_json::value::RawValue::from_string)
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("batch metadata: {e}")))?,
            run_count: i64::from(self.run_count),
            created_at: self.created_at.into_utc()?,
            paused: self.paused,
            cancelled_at: time_opt(self.cancelled_at)?,
            finished_at: time_opt(self.finished_at)?,
            toggled_at: time_opt(self.toggled_at)?,
        })
    }
}

/// One status's share of a batch.
#[derive(sqlx::FromRow)]
pub(super) struct ProgressRecord<T> {
    status: String,
    runs: i64,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    first_started_at: Option<T>,
    last_finished_at: Option<T>,
}

/// A parameter of a statement built from the filters given.
enum Param<T> {
    Text(String),
    Time(T),
    Id(Uuid),
}

/// The reads of one backend's pool; `T` is how it stores a time.
pub(super) struct BatchReads<'a, DB: Database, T> {
    pool: &'a Pool<DB>,
    time: PhantomData<T>,
}

impl<'a, DB: Database, T> BatchReads<'a, DB, T> {
    pub(super) fn new(pool: &'a Pool<DB>) -> Self {
        BatchReads {
            pool,
            time: PhantomData,
        }
    }
}

impl<DB, T> BatchReads<'_, DB, T>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Uuid: Encode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'r> (String,): FromRow<'r, DB::Row>,
    for<'r> RunRecord<T>: FromRow<'r, DB::Row>,
    for<'r> BatchRecord<T>: FromRow<'r, DB::Row>,
    for<'r> ProgressRecord<T>: FromRow<'r, DB::Row>,
    for<'q> T: StoredTime + Encode<'q, DB> + Type<DB> + Send + Unpin,
{
    /// The batch, if it exists within the tenant scope (`None`: every tenant).
    pub(super) async fn batch(
        &self,
        id: BatchId,
        tenant: Option<&str>,
    ) -> Result<Option<BatchView>> {
        let sql = format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1 AND ($2 IS NULL OR tenant = $2)"
        );
        let row: Option<BatchRecord<T>> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id.text())
            .bind(tenant.map(str::to_string))
            .fetch_optional(self.pool)
            .await?;
        row.map(BatchRecord::decode).transpose()
    }

    /// The batch holding an idempotency key (see [`NewBatch::idem_key`]).
    pub(super) async fn batch_by_idem(&self, idem_key: String) -> Result<Option<BatchId>> {
        let id: Option<(String,)> = sqlx::query_as("SELECT id FROM batches WHERE idem_key = $1")
            .bind(idem_key)
            .fetch_optional(self.pool)
            .await?;
        id.map(|(id,)| {
            id.parse()
                .map_err(|e| StoreError::Corrupt(format!("batch id {id:?}: {e}")))
        })
        .transpose()
    }

    /// Counts by status, tokens and times of a batch's runs: one statement, one snapshot.
    pub(super) async fn progress(&self, id: BatchId) -> Result<BatchProgress> {
        let rows: Vec<ProgressRecord<T>> = sqlx::query_as(
            "SELECT status, count(*) AS runs, sum(prompt_tokens) AS prompt_tokens,
                sum(completion_tokens) AS completion_tokens,
                min(started_at) AS first_started_at, max(finished_at) AS last_finished_at
             FROM runs WHERE batch = $1 GROUP BY status",
        )
        .bind(id.text())
        .fetch_all(self.pool)
        .await?;
        let mut progress = BatchProgress {
            counts: Status::ALL.into_iter().map(|s| (s, 0)).collect(),
            ..BatchProgress::default()
        };
        for row in rows {
            let status = parse_status(&row.status)?;
            if let Some(entry) = progress.counts.iter_mut().find(|(s, _)| *s == status) {
                entry.1 = row.runs;
            }
            progress.prompt_tokens += row.prompt_tokens.unwrap_or(0);
            progress.completion_tokens += row.completion_tokens.unwrap_or(0);
            let started = time_opt(row.first_started_at)?;
            progress.first_started_at = earliest(progress.first_started_at, started);
            let finished = time_opt(row.last_finished_at)?;
            progress.last_finished_at = progress.last_finished_at.max(finished);
        }
        Ok(progress)
    }

    /// The batch's ended runs after run `after` (in id order), at most `limit`.
    pub(super) async fn results(
        &self,
        id: BatchId,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<RunView>> {
        let after_clause = if after.is_some() { "AND id > $3" } else { "" };
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs
             WHERE batch = $1 AND status IN ({}) {after_clause}
             ORDER BY id LIMIT $2",
            terminal_statuses()
        );
        let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id.text())
            .bind(limit as i64);
        if let Some(after) = after {
            query = query.bind(after);
        }
        let rows: Vec<RunRecord<T>> = query.fetch_all(self.pool).await?;
        rows.into_iter().map(|r| r.decode(Vec::new())).collect()
    }

    /// Runs matching `filter`, newest first, after `after`, at most `limit`.
    pub(super) async fn list_runs(
        &self,
        filter: &RunFilter,
        after: Option<PageAfter>,
        limit: usize,
    ) -> Result<Vec<RunView>> {
        let mut conditions = Vec::new();
        let mut params = Vec::new();
        let mut text = |column: &str, value: &Option<String>, conditions: &mut Vec<String>| {
            if let Some(v) = value {
                params.push(Param::Text(v.clone()));
                conditions.push(format!("{column} = ${}", params.len()));
            }
        };
        text("tenant", &filter.tenant, &mut conditions);
        text("provider", &filter.provider, &mut conditions);
        text("batch", &filter.batch, &mut conditions);
        // Status and class are inlined from their fixed names, so both databases can prove
        // a partial index's predicate from them (a bound value cannot).
        if let Some(status) = filter.status {
            conditions.push(format!("status = '{}'", status.as_str()));
            if status != Status::Completed {
                conditions.push(format!("status <> '{}'", Status::Completed.as_str()));
            }
        }
        if let Some(class) = filter.class {
            conditions.push(format!("class = {}", class.rank()));
        }
        self.page(
            &format!("SELECT {RUN_COLUMNS} FROM runs"),
            conditions,
            params,
            (filter.created_after, filter.created_before),
            after.map(|a| (a.created_at, Param::Id(a.id))),
            limit,
        )
        .await?
        .into_iter()
        .map(|r: RunRecord<T>| r.decode(Vec::new()))
        .collect()
    }

    /// Batches matching `filter`, newest first, after `after`, at most `limit`.
    pub(super) async fn list_batches(
        &self,
        filter: &BatchFilter,
        after: Option<PageAfter>,
        limit: usize,
    ) -> Result<Vec<BatchView>> {
        let mut conditions = Vec::new();
        let mut params = Vec::new();
        if let Some(tenant) = &filter.tenant {
            params.push(Param::Text(tenant.clone()));
            conditions.push("tenant = $1".to_string());
        }
        // A batch id is stored as its text.
        self.page(
            &format!("SELECT {BATCH_COLUMNS} FROM batches"),
            conditions,
            params,
            (filter.created_after, filter.created_before),
            after.map(|a| (a.created_at, Param::Text(BatchId(a.id).text()))),
            limit,
        )
        .await?
        .into_iter()
        .map(|b: BatchRecord<T>| b.decode())
        .collect()
    }

    /// One newest-first keyset page of `select` under `conditions` (whose parameters are
    /// `params`, numbered from 1), within the creation window, after `after` (a creation
    /// time and an id, as the table stores it).
    async fn page<R>(
        &self,
        select: &str,
        mut conditions: Vec<String>,
        mut params: Vec<Param<T>>,
        (created_after, created_before): (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
        after: Option<(DateTime<Utc>, Param<T>)>,
        limit: usize,
    ) -> Result<Vec<R>>
    where
        for<'r> R: FromRow<'r, DB::Row> + Send + Unpin,
    {
        if let Some(t) = created_after {
            params.push(Param::Time(T::from_utc(t)));
            conditions.push(format!("created_at > ${}", params.len()));
        }
        if let Some(t) = created_before {
            params.push(Param::Time(T::from_utc(t)));
            conditions.push(format!("created_at < ${}", params.len()));
        }
        if let Some((created_at, id)) = after {
            params.push(Param::Time(T::from_utc(created_at)));
            params.push(id);
            let n = params.len();
            conditions.push(format!("(created_at, id) < (${}, ${n})", n - 1));
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "{select} {filter} ORDER BY created_at DESC, id DESC LIMIT {}",
            limit as i64
        );
        let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql));
        for p in params {
            query = match p {
                Param::Text(v) => query.bind(v),
                Param::Time(v) => query.bind(v),
                Param::Id(v) => query.bind(v),
            };
        }
        Ok(query.fetch_all(self.pool).await?)
    }

    /// Batches not yet marked finished whose runs have all ended, oldest first.
    pub(super) async fn ended_unfinished(&self, limit: usize) -> Result<Vec<BatchId>> {
        let ids: Vec<(String,)> = sqlx::query_as(
            "SELECT b.id FROM batches b
             WHERE b.finished_at IS NULL
               AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.batch = b.id
                               AND r.status IN ('queued', 'running'))
             ORDER BY b.created_at LIMIT $1",
        )
        .bind(limit as i64)
        .fetch_all(self.pool)
        .await?;
        ids.into_iter()
            .map(|(id,)| {
                id.parse()
                    .map_err(|e| StoreError::Corrupt(format!("batch id {id:?}: {e}")))
            })
            .collect()
    }
}

fn earliest(a: Option<DateTime<Utc>>, b: Option<DateTime<Utc>>) -> Option<DateTime<Utc>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
