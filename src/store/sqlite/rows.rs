//! Mapping SQLite rows to the store's values, and the event log.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};

use super::{from_ms, from_ms_opt, ms};
use crate::run::{Class, ErrorKind, RunId, Status, TimeoutOrigin};
use crate::store::model::*;
use crate::store::postgres::{parse_class, parse_status, raw_json};
use crate::store::{Result, StoreError};

pub(super) fn claimed_from_row(row: &SqliteRow) -> Result<ClaimedRun> {
    Ok(ClaimedRun {
        id: RunId(row.try_get("id")?),
        attempt: row.try_get::<i64, _>("attempts")? as u32,
        max_attempts: row.try_get::<i64, _>("max_attempts")? as u32,
        provider: row.try_get("provider")?,
        model: row.try_get("model")?,
        request: raw_json(row.try_get("request")?)?,
        class: parse_class(row.try_get("class")?)?,
        priority: row.try_get("priority")?,
        tenant: row.try_get("tenant")?,
        concurrency_key: row.try_get("concurrency_key")?,
        stream: row.try_get("stream")?,
        timeout_ms: row.try_get("timeout_ms")?,
        created_at: from_ms(row.try_get("created_at")?)?,
        due_at: from_ms(row.try_get("due_at")?)?,
    })
}

pub(super) fn view_from_row(row: &SqliteRow) -> Result<RunView> {
    let status = parse_status(&row.try_get::<String, _>("status")?)?;
    let metadata: Option<String> = row.try_get("metadata")?;
    let error_kind: Option<String> = row.try_get("error_kind")?;
    let timeout_origin: Option<String> = row.try_get("timeout_origin")?;
    let output_content: Option<String> = row.try_get("output_content")?;
    let finish_reason: Option<String> = row.try_get("finish_reason")?;
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
        attempts: row.try_get::<i64, _>("attempts")? as u32,
        max_attempts: row.try_get::<i64, _>("max_attempts")? as u32,
        timeout_ms: row.try_get("timeout_ms")?,
        queue_deadline_at: from_ms_opt(row.try_get("queue_deadline_at")?)?,
        due_at: from_ms(row.try_get("due_at")?)?,
        created_at: from_ms(row.try_get("created_at")?)?,
        started_at: from_ms_opt(row.try_get("started_at")?)?,
        finished_at: from_ms_opt(row.try_get("finished_at")?)?,
        timeout_origin: timeout_origin.as_deref().and_then(TimeoutOrigin::parse),
        drop_reason: row.try_get("drop_reason")?,
        output: match status {
            Status::Completed => Some(Output::from_columns(
                output_content,
                row.try_get("output_tool_calls")?,
                row.try_get("output_refusal")?,
                finish_reason,
                row.try_get("raw_finish_reason")?,
            )?),
            _ => None,
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

pub(super) fn event_from_row(row: &SqliteRow) -> Result<RunEvent> {
    let kind: String = row.try_get("kind")?;
    let data: Option<String> = row.try_get("data")?;
    Ok(RunEvent {
        id: row.try_get("id")?,
        run_id: RunId(row.try_get("run_id")?),
        kind: EventKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown event kind {kind:?}")))?,
        at: from_ms(row.try_get("at")?)?,
        attempt: row.try_get::<Option<i64>, _>("attempt")?.map(|a| a as u32),
        data: data.map(raw_json).transpose()?,
        class: parse_class(row.try_get("class")?)?,
        tenant: row.try_get("tenant")?,
        batch: row.try_get("batch")?,
    })
}

/// Where an event belongs: the columns copied from its run.
pub(super) struct EventScope {
    pub class: Class,
    pub tenant: Option<String>,
    pub batch: Option<String>,
}

impl EventScope {
    pub(super) fn from_row(row: &SqliteRow) -> Result<EventScope> {
        Ok(EventScope {
            class: parse_class(row.try_get("class")?)?,
            tenant: row.try_get("tenant")?,
            batch: row.try_get("batch")?,
        })
    }
}

/// Appends one event inside the transaction of the state change it reports.
pub(super) async fn insert_event(
    tx: &mut Transaction<'static, Sqlite>,
    run_id: RunId,
    kind: EventKind,
    at: DateTime<Utc>,
    attempt: Option<u32>,
    data: Option<Box<RawValue>>,
    scope: &EventScope,
) -> Result<RunEvent> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO run_events (run_id, kind, at, attempt, data, class, tenant, batch)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(run_id.0)
    .bind(kind.as_str())
    .bind(ms(at))
    .bind(attempt.map(i64::from))
    .bind(data.as_ref().map(|d| d.get()))
    .bind(scope.class.rank())
    .bind(&scope.tenant)
    .bind(&scope.batch)
    .fetch_one(&mut **tx)
    .await?;
    Ok(RunEvent {
        id,
        run_id,
        kind,
        at,
        attempt,
        data,
        class: scope.class,
        tenant: scope.tenant.clone(),
        batch: scope.batch.clone(),
    })
}
