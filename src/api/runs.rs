//! `GET /runs/{id}` and `POST /runs/{id}/cancel`.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use serde_json::value::RawValue;

use super::{ApiError, AppState, time};
use crate::run::{RunId, Status};
use crate::store::{CancelOutcome, RunView};

#[derive(Serialize)]
pub(super) struct RunBody {
    id: RunId,
    status: &'static str,
    provider: String,
    model: Option<String>,
    class: &'static str,
    priority: i16,
    tenant: Option<String>,
    concurrency_key: Option<String>,
    session: Option<String>,
    batch: Option<String>,
    metadata: Option<Box<RawValue>>,
    stream: bool,
    attempts: u32,
    max_attempts: u32,
    timeout_ms: Option<i32>,
    created_at: String,
    started_at: Option<String>,
    finished_at: Option<String>,
    next_attempt_at: Option<String>,
    queue_deadline_at: Option<String>,
    timeout_origin: Option<&'static str>,
    drop_reason: Option<String>,
    output: Option<OutputBody>,
    usage: Option<UsageBody>,
    error: Option<ErrorBody>,
    attempt_log: Vec<AttemptBody>,
}

#[derive(Serialize)]
struct OutputBody {
    content: String,
    finish_reason: Option<String>,
}

#[derive(Serialize)]
struct UsageBody {
    prompt_tokens: Option<i32>,
    completion_tokens: Option<i32>,
}

#[derive(Serialize)]
struct ErrorBody {
    kind: &'static str,
    message: String,
    status: Option<i32>,
}

#[derive(Serialize)]
struct AttemptBody {
    attempt: u32,
    started_at: String,
    finished_at: Option<String>,
    outcome: Option<String>,
    status: Option<i32>,
    retry_after_ms: Option<i64>,
    error: Option<String>,
}

impl From<RunView> for RunBody {
    fn from(r: RunView) -> RunBody {
        RunBody {
            id: r.id,
            status: r.status.as_str(),
            provider: r.provider,
            model: r.model,
            class: r.class.as_str(),
            priority: r.priority,
            tenant: r.tenant,
            concurrency_key: r.concurrency_key,
            session: r.session,
            batch: r.batch,
            metadata: r.metadata,
            stream: r.stream,
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            timeout_ms: r.timeout_ms,
            created_at: time(r.created_at),
            started_at: r.started_at.map(time),
            finished_at: r.finished_at.map(time),
            next_attempt_at: (r.status == Status::Queued).then(|| time(r.due_at)),
            queue_deadline_at: r.queue_deadline_at.map(time),
            timeout_origin: r.timeout_origin.map(|o| o.as_str()),
            drop_reason: r.drop_reason,
            output: r.output.map(|o| OutputBody {
                content: o.content,
                finish_reason: o.finish_reason,
            }),
            usage: (r.prompt_tokens.is_some() || r.completion_tokens.is_some()).then_some(
                UsageBody {
                    prompt_tokens: r.prompt_tokens,
                    completion_tokens: r.completion_tokens,
                },
            ),
            error: r.error.map(|e| ErrorBody {
                kind: e.kind.as_str(),
                message: e.message,
                status: e.status,
            }),
            attempt_log: r
                .attempt_log
                .into_iter()
                .map(|a| AttemptBody {
                    attempt: a.attempt,
                    started_at: time(a.started_at),
                    finished_at: a.finished_at.map(time),
                    outcome: a.outcome,
                    status: a.status,
                    retry_after_ms: a.retry_after_ms,
                    error: a.error_message,
                })
                .collect(),
        }
    }
}

fn parse_id(raw: &str) -> Result<RunId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound(format!("no run with id {raw:?}")))
}

pub(super) async fn get_run(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<RunBody>, ApiError> {
    let id = parse_id(&raw)?;
    match state.store.get_run(id).await? {
        Some(run) => Ok(Json(run.into())),
        None => Err(ApiError::NotFound(format!("no run with id {id}"))),
    }
}

pub(super) async fn cancel_run(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<RunBody>, ApiError> {
    let id = parse_id(&raw)?;
    match state.store.cancel(id, state.clock.now()).await? {
        CancelOutcome::NotFound => Err(ApiError::NotFound(format!("no run with id {id}"))),
        CancelOutcome::AlreadyTerminal(status) => Err(ApiError::Conflict(format!(
            "run {id} is already {status}; only queued or running runs can be cancelled"
        ))),
        CancelOutcome::Cancelled { was } => {
            if was == Status::Running {
                state.dispatcher.abort_cancelled(id);
            }
            tracing::info!(run_id = %id, was = was.as_str(), "run cancelled");
            let run = state
                .store
                .get_run(id)
                .await?
                .ok_or_else(|| ApiError::Internal(format!("run {id} vanished after cancel")))?;
            let took = (state.clock.now() - run.created_at)
                .to_std()
                .unwrap_or_default();
            crate::metrics::run_finished(run.class.as_str(), Status::Cancelled.as_str(), took);
            Ok(Json(run.into()))
        }
    }
}
