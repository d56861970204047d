//! Mapping SQLite rows to the store's values, and the event log.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};

use super::{db, from_ms, from_ms_opt, ms};
use crate::run::{Class, ErrorKind, RunId, Status, TimeoutOrigin};
use crate::store::model::*;
use crate::store::postgres::{parse_class, parse_status, raw_json};
use crate::store::{Result, StoreError};

pub(super) fn claimed_from_row(row: &SqliteRow) -> Result<ClaimedRun> {
    let g = db;
    Ok(ClaimedRun {
        id: RunId(row.try_get("id").map_err(g)?),
        attempt: row.try_get::<i64, _>("attempts").map_err(g)? as u32,
        max_attempts: row.try_get::<i64, _>("max_attempts").map_err(g)? as u32,
        provider: row.try_get("provider").map_err(g)?,
        model: row.try_get("model").map_err(g)?,
        request: raw_json(row.try_get("request").map_err(g)?)?,
        class: parse_class(row.try_get("class").map_err(g)?)?,
        priority: row.try_get("priority").map_err(g)?,
        tenant: row.try_get("tenant").map_err(g)?,
        concurrency_key: row.try_get("concurrency_key").map_err(g)?,
        stream: row.try_get("stream").map_err(g)?,
        timeout_ms: row.try_get("timeout_ms").map_err(g)?,
        created_at: from_ms(row.try_get("created_at").map_err(g)?)?,
        due_at: from_ms(row.try_get("due_at").map_err(g)?)?,
    })
}

pub(super) fn view_from_row(row: &SqliteRow) -> Result<RunView> {
    let g = db;
    let status = parse_status(&row.try_get::<String, _>("status").map_err(g)?)?;
    let metadata: Option<String> = row.try_get("metadata").map_err(g)?;
    let error_kind: Option<String> = row.try_get("error_kind").map_err(g)?;
    let timeout_origin: Option<String> = row.try_get("timeout_origin").map_err(g)?;
    let output_content: Option<String> = row.try_get("output_content").map_err(g)?;
    let finish_reason: Option<String> = row.try_get("finish_reason").map_err(g)?;
    Ok(RunView {
        id: RunId(row.try_get("id").map_err(g)?),
        status,
        provider: row.try_get("provider").map_err(g)?,
        model: row.try_get("model").map_err(g)?,
        class: parse_class(row.try_get("class").map_err(g)?)?,
        priority: row.try_get("priority").map_err(g)?,
        tenant: row.try_get("tenant").map_err(g)?,
        concurrency_key: row.try_get("concurrency_key").map_err(g)?,
        session: row.try_get("session").map_err(g)?,
        batch: row.try_get("batch").map_err(g)?,
        metadata: metadata.map(raw_json).transpose()?,
        stream: row.try_get("stream").map_err(g)?,
        attempts: row.try_get::<i64, _>("attempts").map_err(g)? as u32,
        max_attempts: row.try_get::<i64, _>("max_attempts").map_err(g)? as u32,
        timeout_ms: row.try_get("timeout_ms").map_err(g)?,
        queue_deadline_at: from_ms_opt(row.try_get("queue_deadline_at").map_err(g)?)?,
        due_at: from_ms(row.try_get("due_at").map_err(g)?)?,
        created_at: from_ms(row.try_get("created_at").map_err(g)?)?,
        started_at: from_ms_opt(row.try_get("started_at").map_err(g)?)?,
        finished_at: from_ms_opt(row.try_get("finished_at").map_err(g)?)?,
        timeout_origin: timeout_origin.as_deref().and_then(TimeoutOrigin::parse),
        drop_reason: row.try_get("drop_reason").map_err(g)?,
        output: match (status, output_content) {
            (Status::Completed, Some(content)) => Some(Output {
                content,
                finish_reason,
            }),
            _ => None,
        },
        prompt_tokens: row.try_get("prompt_tokens").map_err(g)?,
        completion_tokens: row.try_get("completion_tokens").map_err(g)?,
        error: match error_kind.as_deref().and_then(ErrorKind::parse) {
            Some(kind) => Some(RunError {
                kind,
                message: row
                    .try_get::<Option<String>, _>("error_message")
                    .map_err(g)?
                    .unwrap_or_default(),
                status: row.try_get("error_status").map_err(g)?,
            }),
            None => None,
        },
        attempt_log: Vec::new(),
    })
}

pub(super) fn event_from_row(row: &SqliteRow) -> Result<RunEvent> {
    let kind: String = row.try_get("kind").map_err(db)?;
    let data: Option<String> = row.try_get("data").map_err(db)?;
    Ok(RunEvent {
        id: row.try_get("id").map_err(db)?,
        run_id: RunId(row.try_get("run_id").map_err(db)?),
        kind: EventKind::parse(&kind)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown event kind {kind:?}")))?,
        at: from_ms(row.try_get("at").map_err(db)?)?,
        attempt: row
            .try_get::<Option<i64>, _>("attempt")
            .map_err(db)?
            .map(|a| a as u32),
        data: data.map(raw_json).transpose()?,
        class: parse_class(row.try_get("class").map_err(db)?)?,
        tenant: row.try_get("tenant").map_err(db)?,
        batch: row.try_get("batch").map_err(db)?,
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
            class: parse_class(row.try_get("class").map_err(db)?)?,
            tenant: row.try_get("tenant").map_err(db)?,
            batch: row.try_get("batch").map_err(db)?,
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
    .await
    .map_err(db)?;
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
