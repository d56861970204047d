//! Mapping PostgreSQL rows to the store's values.

use sqlx::Row;
use sqlx::postgres::PgRow;

use crate::run::{Class, ErrorKind, RunId, Status, TimeoutOrigin};
use crate::store::model::*;
use crate::store::{Result, StoreError};

/// The error recorded on a run whose worker stopped renewing its lease.
pub(crate) const ABANDONED_MESSAGE: &str = "the worker running this attempt stopped renewing its lease (process stopped or lost the database)";

pub(crate) fn cancel_outcome(row: Option<(String, i64)>) -> Result<CancelOutcome> {
    Ok(match row {
        None => CancelOutcome::NotFound,
        Some((status, n)) => {
            let was = parse_status(&status)?;
            if n > 0 {
                CancelOutcome::Cancelled { was }
            } else {
                CancelOutcome::AlreadyTerminal(was)
            }
        }
    })
}

pub(crate) fn parse_status(s: &str) -> Result<Status> {
    Status::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown status {s:?}")))
}

pub(crate) fn parse_class(rank: i16) -> Result<Class> {
    Class::from_rank(rank).ok_or_else(|| StoreError::Corrupt(format!("unknown class {rank}")))
}

pub(crate) fn raw_json(text: String) -> Result<Box<serde_json::value::RawValue>> {
    serde_json::value::RawValue::from_string(text)
        .map_err(|e| StoreError::Corrupt(format!("stored JSON does not parse: {e}")))
}

pub(super) fn claimed_from_row(row: &PgRow) -> Result<ClaimedRun> {
    let get = || -> std::result::Result<ClaimedRun, sqlx::Error> {
        Ok(ClaimedRun {
            id: RunId(row.try_get("id")?),
            attempt: row.try_get::<i16, _>("attempts")? as u32,
            max_attempts: row.try_get::<i16, _>("max_attempts")? as u32,
            provider: row.try_get("provider")?,
            model: row.try_get("model")?,
            request: Default::default(),
            class: Class::Live,
            priority: row.try_get("priority")?,
            tenant: row.try_get("tenant")?,
            concurrency_key: row.try_get("concurrency_key")?,
            stream: row.try_get("stream")?,
            timeout_ms: row.try_get("timeout_ms")?,
            created_at: row.try_get("created_at")?,
            due_at: row.try_get("due_at")?,
        })
    };
    let mut claimed = get()?;
    claimed.class = parse_class(row.try_get("class")?)?;
    claimed.request = raw_json(row.try_get("request")?)?;
    Ok(claimed)
}

pub(super) fn view_from_row(row: &PgRow) -> Result<RunView> {
    let status = parse_status(&row.try_get::<String, _>("status")?)?;
    let metadata: Option<String> = row.try_get("metadata")?;
    let error_kind: Option<String> = row.try_get("error_kind")?;
    let timeout_origin: Option<String> = row.try_get("timeout_origin")?;
    let output_content: Option<String> = row.try_get("output_content")?;
    Ok(RunView {
        id: RunId(row.try_get("id")?),
        status,
        provider: row.try_get("provider")?,
        model: row.try_get("model")?,
        class: parse_class(row.try_get("class")?)?,
        priority: row.try_get("priority")?,
        tenant: row.try_get("tenant")?,
        concurrency_key: row.try_get("concurrency_key")?,
        session: row.try_get("session")?,
        batch: row.try_get("batch")?,
        metadata: metadata.map(raw_json).transpose()?,
        stream: row.try_get("stream")?,
        attempts: row.try_get::<i16, _>("attempts")? as u32,
        max_attempts: row.try_get::<i16, _>("max_attempts")? as u32,
        timeout_ms: row.try_get("timeout_ms")?,
        queue_deadline_at: row.try_get("queue_deadline_at")?,
        due_at: row.try_get("due_at")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        timeout_origin: timeout_origin.as_deref().and_then(TimeoutOrigin::parse),
        drop_reason: row.try_get("drop_reason")?,
        output: if status == Status::Completed {
            Some(Output::from_columns(
                output_content,
                row.try_get("output_tool_calls")?,
                row.try_get("output_refusal")?,
                row.try_get("finish_reason").unwrap_or(None),
                row.try_get("raw_finish_reason")?,
            )?)
        } else {
            None
        },
        prompt_tokens: row.try_get("prompt_tokens")?,
        completion_tokens: row.try_get("completion_tokens")?,
        error: match error_kind.as_deref().and_then(ErrorKind::parse) {
            Some(kind) => Some(RunError {
                kind,
                message: row
                    .try_get::<Option<String>, _>("error_message")?
                    .unwrap_or_default(),
                status: row.try_get("error_status")?,
            }),
            None => None,
        },
        attempt_log: Vec::new(),
    })
}

pub(super) fn event_from_row(row: &PgRow) -> Result<RunEvent> {
    let kind: String = row.try_get("kind")?;
    let data: Option<String> = row.try_get("data")?;
    Ok(RunEvent {
        id: row.try_get("id")?,
        run_id: RunId(row.try_get("run_id")?),
        kind: EventKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown event kind {kind:?}")))?,
        at: row.try_get("at")?,
        attempt: row.try_get::<Option<i16>, _>("attempt")?.map(|a| a as u32),
        data: data.map(raw_json).transpose()?,
        class: parse_class(row.try_get("class")?)?,
        tenant: row.try_get("tenant")?,
        batch: row.try_get("batch")?,
    })
}

/// Event data for an attempt whose worker vanished (`retry_at` when it will run again).
pub(crate) fn abandoned_data(
    retry_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Box<serde_json::value::RawValue> {
    attempt_failed_data(&abandoned_error(), retry_at)
}

pub(crate) fn abandoned_final_data() -> Box<serde_json::value::RawValue> {
    final_failure_data(&abandoned_error(), None)
}

fn abandoned_error() -> RunError {
    RunError {
        kind: ErrorKind::Timeout,
        message: ABANDONED_MESSAGE.to_string(),
        status: None,
    }
}

/// The busiest-keys query, shared by both backends; each appends its own `LIMIT` placeholder.
pub(crate) const BUSIEST_KEYS_SQL: &str = "SELECT concurrency_key, class,
        SUM(CASE WHEN status = 'running' THEN 1 ELSE 0 END) AS running,
        SUM(CASE WHEN status = 'queued' THEN 1 ELSE 0 END) AS queued
     FROM runs
     WHERE status IN ('queued', 'running') AND concurrency_key IS NOT NULL
     GROUP BY concurrency_key, class
     ORDER BY 3 DESC, 4 DESC, 1
     LIMIT ";

/// Rows of [`BUSIEST_KEYS_SQL`] as key loads.
pub(crate) fn key_loads(rows: Vec<(String, i16, i64, i64)>) -> Result<Vec<KeyLoad>> {
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
