//! Reading stored rows back into the store's values, once for both backends.
//!
//! A backend fetches a record below with the `FromRow` derived here, and the record turns
//! its raw column values (status and event kind text, class ranks, error kinds, JSON
//! text) into [`RunView`]s, [`ClaimedRun`]s, [`AttemptView`]s and [`RunEvent`]s. The one
//! thing the backends store differently is a point in time, so the records are generic
//! over it ([`StoredTime`]): PostgreSQL keeps a `timestamptz`, SQLite integer milliseconds.
//! A value that does not decode is [`StoreError::Corrupt`].
//!
//! The JSON stored with events is built by `event_data`.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::run::{Class, ErrorKind, RunId, Status, TimeoutOrigin};
use crate::store::model::*;
use crate::store::{Result, StoreError};

/// How a backend stores a point in time, both ways.
pub(super) trait StoredTime: Sized {
    fn from_utc(t: DateTime<Utc>) -> Self;
    fn into_utc(self) -> Result<DateTime<Utc>>;
}

impl StoredTime for DateTime<Utc> {
    fn from_utc(t: DateTime<Utc>) -> Self {
        t
    }

    fn into_utc(self) -> Result<DateTime<Utc>> {
        Ok(self)
    }
}

pub(super) fn time_opt<T: StoredTime>(t: Option<T>) -> Result<Option<DateTime<Utc>>> {
    t.map(T::into_utc).transpose()
}

pub(super) fn parse_status(s: &str) -> Result<Status> {
    Status::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown status {s:?}")))
}

pub(super) fn parse_class(rank: i16) -> Result<Class> {
    Class::from_rank(rank).ok_or_else(|| StoreError::Corrupt(format!("unknown class {rank}")))
}

fn parse_event_kind(s: &str) -> Result<EventKind> {
    EventKind::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown event kind {s:?}")))
}

fn raw_json(text: String) -> Result<Box<RawValue>> {
    RawValue::from_string(text)
        .map_err(|e| StoreError::Corrupt(format!("stored JSON does not parse: {e}")))
}

/// The run an event is about, and the columns the event log copies from it so that
/// dashboards filter without a join.
#[derive(Clone, Debug)]
pub(super) struct EventScope {
    pub run_id: RunId,
    pub class: Class,
    pub tenant: Option<String>,
    pub batch: Option<String>,
}

impl EventScope {
    /// An event about this run. Its `id` is 0 until the event log assigns one.
    pub(super) fn event(
        &self,
        kind: EventKind,
        at: DateTime<Utc>,
        attempt: Option<u32>,
        data: Option<Box<RawValue>>,
    ) -> RunEvent {
        RunEvent {
            id: 0,
            run_id: self.run_id,
            kind,
            at,
            attempt,
            data,
            class: self.class,
            tenant: self.tenant.clone(),
            batch: self.batch.clone(),
        }
    }
}

/// `id, class, tenant, batch` of a run, as a statement that changed it returns them.
#[derive(sqlx::FromRow)]
pub(super) struct ScopeRecord {
    id: Uuid,
    class: i16,
    tenant: Option<String>,
    batch: Option<String>,
}

impl ScopeRecord {
    pub(super) fn decode(self) -> Result<EventScope> {
        Ok(EventScope {
            run_id: RunId(self.id),
            class: parse_class(self.class)?,
            tenant: self.tenant,
            batch: self.batch,
        })
    }
}

/// A row of the event log (`id, run_id, kind, at, attempt, data, class, tenant, batch`).
#[derive(sqlx::FromRow)]
pub(super) struct EventRecord<T> {
    id: i64,
    run_id: Uuid,
    kind: String,
    at: T,
    attempt: Option<i16>,
    data: Option<String>,
    class: i16,
    tenant: Option<String>,
    batch: Option<String>,
}

impl<T: StoredTime> EventRecord<T> {
    pub(super) fn decode(self) -> Result<RunEvent> {
        Ok(RunEvent {
            id: self.id,
            run_id: RunId(self.run_id),
            kind: parse_event_kind(&self.kind)?,
            at: self.at.into_utc()?,
            attempt: self.attempt.map(|a| a as u32),
            data: self.data.map(raw_json).transpose()?,
            class: parse_class(self.class)?,
            tenant: self.tenant,
            batch: self.batch,
        })
    }
}

/// The columns of a run's [`RunSpec`], read the same way wherever a run is read.
#[derive(sqlx::FromRow)]
pub(super) struct SpecRecord {
    provider: String,
    model: Option<String>,
    class: i16,
    priority: i16,
    tenant: Option<String>,
    concurrency_key: Option<String>,
    stream: bool,
    timeout_ms: Option<i32>,
}

impl SpecRecord {
    fn decode(self) -> Result<RunSpec> {
        Ok(RunSpec {
            provider: self.provider,
            model: self.model,
            class: parse_class(self.class)?,
            priority: self.priority,
            tenant: self.tenant,
            concurrency_key: self.concurrency_key,
            stream: self.stream,
            timeout_ms: self.timeout_ms,
        })
    }
}

/// A run just claimed, as the claim statement returns it (with `batch`, for its event).
#[derive(sqlx::FromRow)]
pub(super) struct ClaimedRecord<T> {
    id: Uuid,
    attempts: i16,
    max_attempts: i16,
    #[sqlx(flatten)]
    spec: SpecRecord,
    request: String,
    batch: Option<String>,
    created_at: T,
    due_at: T,
}

impl<T: StoredTime> ClaimedRecord<T> {
    /// The claimed run, and the scope of the events written about it.
    pub(super) fn decode(self) -> Result<(ClaimedRun, EventScope)> {
        let run = ClaimedRun {
            id: RunId(self.id),
            attempt: self.attempts as u32,
            max_attempts: self.max_attempts as u32,
            spec: self.spec.decode()?,
            request: raw_json(self.request)?,
            created_at: self.created_at.into_utc()?,
            due_at: self.due_at.into_utc()?,
        };
        let scope = EventScope {
            run_id: run.id,
            class: run.spec.class,
            tenant: run.spec.tenant.clone(),
            batch: self.batch,
        };
        Ok((run, scope))
    }
}

/// A row of `runs` as `GET /runs/{id}` reads it (the columns `reads` selects).
#[derive(sqlx::FromRow)]
pub(super) struct RunRecord<T> {
    id: Uuid,
    status: String,
    #[sqlx(flatten)]
    spec: SpecRecord,
    session: Option<String>,
    batch: Option<String>,
    metadata: Option<String>,
    attempts: i16,
    max_attempts: i16,
    queue_deadline_at: Option<T>,
    due_at: T,
    created_at: T,
    started_at: Option<T>,
    finished_at: Option<T>,
    timeout_origin: Option<String>,
    drop_reason: Option<String>,
    output_content: Option<String>,
    finish_reason: Option<String>,
    /// JSON text (see [`Output::from_columns`]).
    output_tool_calls: Option<String>,
    output_refusal: Option<String>,
    raw_finish_reason: Option<String>,
    prompt_tokens: Option<i32>,
    completion_tokens: Option<i32>,
    error_kind: Option<String>,
    error_message: Option<String>,
    error_status: Option<i32>,
}

impl<T: StoredTime> RunRecord<T> {
    /// The run with its attempts, oldest first.
    pub(super) fn decode(self, attempts: Vec<AttemptRecord<T>>) -> Result<RunView> {
        let status = parse_status(&self.status)?;
        Ok(RunView {
            id: RunId(self.id),
            status,
            spec: self.spec.decode()?,
            session: self.session,
            batch: self.batch,
            metadata: self.metadata.map(raw_json).transpose()?,
            attempts: self.attempts as u32,
            max_attempts: self.max_attempts as u32,
            queue_deadline_at: time_opt(self.queue_deadline_at)?,
            due_at: self.due_at.into_utc()?,
            created_at: self.created_at.into_utc()?,
            started_at: time_opt(self.started_at)?,
            finished_at: time_opt(self.finished_at)?,
            timeout_origin: self
                .timeout_origin
                .as_deref()
                .and_then(TimeoutOrigin::parse),
            drop_reason: self.drop_reason,
            output: match status {
                Status::Completed => Some(Output::from_columns(
                    self.output_content,
                    self.output_tool_calls,
                    self.output_refusal,
                    self.finish_reason,
                    self.raw_finish_reason,
                )?),
                _ => None,
            },
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            error: self
                .error_kind
                .as_deref()
                .and_then(ErrorKind::parse)
                .map(|kind| RunError {
                    kind,
                    message: self.error_message.unwrap_or_default(),
                    status: self.error_status,
                }),
            attempt_log: attempts
                .into_iter()
                .map(AttemptRecord::decode)
                .collect::<Result<_>>()?,
        })
    }
}

/// A row of `run_attempts`.
#[derive(sqlx::FromRow)]
pub(super) struct AttemptRecord<T> {
    attempt: i16,
    started_at: T,
    finished_at: Option<T>,
    outcome: Option<String>,
    status: Option<i32>,
    retry_after_ms: Option<i64>,
    error_message: Option<String>,
}

impl<T: StoredTime> AttemptRecord<T> {
    fn decode(self) -> Result<AttemptView> {
        Ok(AttemptView {
            attempt: self.attempt as u32,
            started_at: self.started_at.into_utc()?,
            finished_at: time_opt(self.finished_at)?,
            outcome: self.outcome,
            status: self.status,
            retry_after_ms: self.retry_after_ms,
            error_message: self.error_message,
        })
    }
}
