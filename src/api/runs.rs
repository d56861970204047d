//! `GET /runs/{id}` and `POST /runs/{id}/cancel`.

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use super::error::{Body as ApiErrorBody, DatabaseErrors, NoSuchRun};
use super::openapi::{ClassName, ErrorKindName, StatusName, TimeoutOriginName};
use super::{ApiError, AppState, Caller};
use crate::dispatch::Cancelled;
use crate::run::{RunId, Status};
use crate::store::{Output, RunError, RunView, rfc3339};

/// A run: one request to one provider, and the record of its whole life. Every field is
/// always present; absent values are `null`. Times are RFC 3339 in UTC with millisecond
/// precision.
#[derive(Serialize, ToSchema)]
#[schema(as = Run)]
pub(super) struct RunBody {
    #[schema(value_type = String, format = "uuid")]
    id: RunId,
    #[schema(value_type = StatusName)]
    status: &'static str,
    provider: String,
    #[schema(required = true)]
    model: Option<String>,
    #[schema(value_type = ClassName)]
    class: &'static str,
    /// 1 (most urgent) … 10.
    #[schema(minimum = 1, maximum = 10)]
    priority: i16,
    #[schema(required = true)]
    tenant: Option<String>,
    #[schema(required = true)]
    concurrency_key: Option<String>,
    #[schema(required = true)]
    session: Option<String>,
    #[schema(required = true)]
    batch: Option<String>,
    /// The `metadata` object given at enqueue, echoed back.
    #[schema(value_type = Option<Object>, required = true)]
    metadata: Option<Box<RawValue>>,
    /// Whether token deltas are streamed onto the run's event stream.
    stream: bool,
    /// Attempts started so far.
    attempts: u32,
    #[schema(minimum = 1, maximum = 50)]
    max_attempts: u32,
    /// The per-attempt generation timeout asked for at enqueue, in milliseconds.
    #[schema(required = true)]
    timeout_ms: Option<i32>,
    #[schema(format = DateTime)]
    created_at: String,
    /// When the first attempt started.
    #[schema(format = DateTime, required = true)]
    started_at: Option<String>,
    /// When the run reached its terminal status.
    #[schema(format = DateTime, required = true)]
    finished_at: Option<String>,
    /// While `queued`: when the run is next due (in the future while it waits out a
    /// backoff or its `run_at`).
    #[schema(format = DateTime, required = true)]
    next_attempt_at: Option<String>,
    /// The deadline for the run's first start.
    #[schema(format = DateTime, required = true)]
    queue_deadline_at: Option<String>,
    /// Only on `timed_out`.
    #[schema(value_type = Option<TimeoutOriginName>, required = true)]
    timeout_origin: Option<&'static str>,
    /// Only on `dropped` (e.g. `stale`).
    #[schema(required = true)]
    drop_reason: Option<String>,
    /// The generated output, when `completed`.
    #[schema(required = true)]
    output: Option<OutputBody>,
    /// Token usage, when the provider reported it.
    #[schema(required = true)]
    usage: Option<UsageBody>,
    /// The error that ended the run (or, while it retries, the last attempt's error).
    #[schema(required = true)]
    error: Option<ErrorBody>,
    /// Every attempt so far, oldest first.
    attempt_log: Vec<AttemptBody>,
}

/// The assistant message of a completed run, in the OpenAI shape whichever provider
/// answered.
#[derive(Serialize, ToSchema)]
#[schema(as = RunOutput)]
pub(super) struct OutputBody {
    /// The text; `null` when the model answered with tool calls (or a refusal) only.
    #[schema(required = true)]
    content: Option<String>,
    /// The tool calls the model made (Anthropic `tool_use` blocks included); `null` when
    /// none.
    #[schema(required = true, value_type = Option<Vec<ToolCallBody>>)]
    tool_calls: Option<serde_json::Value>,
    /// The model's refusal message, when it refused.
    #[schema(required = true)]
    refusal: Option<String>,
    /// Why the model stopped, the same for every provider: `stop`, `length`,
    /// `tool_calls` or `content_filter` (`null` for a value none of these fits).
    #[schema(required = true)]
    finish_reason: Option<String>,
    /// The provider's own finish value (`end_turn`, `max_tokens`, `stop`, …).
    #[schema(required = true)]
    raw_finish_reason: Option<String>,
}

/// A tool call: call the function `function.name` with `function.arguments`, and send the
/// result back in a `tool` message naming `id` as its `tool_call_id`.
#[derive(ToSchema)]
#[schema(as = RunToolCall)]
#[allow(
    dead_code,
    reason = "describes the stored tool-call JSON in the OpenAPI document"
)]
struct ToolCallBody {
    id: String,
    /// Always `function`.
    #[schema(rename = "type", pattern = "^function$")]
    kind: String,
    function: FunctionCallBody,
}

#[derive(ToSchema)]
#[schema(as = RunFunctionCall)]
#[allow(
    dead_code,
    reason = "describes the stored tool-call JSON in the OpenAPI document"
)]
struct FunctionCallBody {
    name: String,
    /// The arguments as JSON text, exactly as the model wrote them.
    arguments: String,
}

#[derive(Serialize, ToSchema)]
#[schema(as = RunUsage)]
pub(super) struct UsageBody {
    #[schema(required = true)]
    prompt_tokens: Option<i32>,
    #[schema(required = true)]
    completion_tokens: Option<i32>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = RunError)]
pub(super) struct ErrorBody {
    #[schema(value_type = ErrorKindName)]
    kind: &'static str,
    message: String,
    /// The provider's HTTP status, when it answered.
    #[schema(required = true)]
    status: Option<i32>,
}

/// One attempt of a run.
#[derive(Serialize, ToSchema)]
#[schema(as = Attempt)]
struct AttemptBody {
    /// 1-based.
    #[schema(minimum = 1)]
    attempt: u32,
    #[schema(format = DateTime)]
    started_at: String,
    #[schema(format = DateTime, required = true)]
    finished_at: Option<String>,
    /// `completed`, an error kind, `released` (given back at shutdown) or `abandoned`
    /// (its worker vanished); `null` while the attempt runs.
    #[schema(required = true)]
    outcome: Option<String>,
    /// The provider's HTTP status, when it answered.
    #[schema(required = true)]
    status: Option<i32>,
    /// The delay the provider asked for (retry-after), in milliseconds.
    #[schema(required = true)]
    retry_after_ms: Option<i64>,
    /// The attempt's error message, when it failed.
    #[schema(required = true)]
    error: Option<String>,
}

impl From<RunView> for RunBody {
    fn from(r: RunView) -> RunBody {
        RunBody {
            id: r.id,
            status: r.status.as_str(),
            provider: r.spec.provider,
            model: r.spec.model,
            class: r.spec.class.as_str(),
            priority: r.spec.priority,
            tenant: r.spec.tenant,
            concurrency_key: r.spec.concurrency_key,
            session: r.session,
            batch: r.batch,
            metadata: r.metadata,
            stream: r.spec.stream,
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            timeout_ms: r.spec.timeout_ms,
            created_at: rfc3339(r.created_at),
            started_at: r.started_at.map(rfc3339),
            finished_at: r.finished_at.map(rfc3339),
            next_attempt_at: (r.status == Status::Queued).then(|| rfc3339(r.due_at)),
            queue_deadline_at: r.queue_deadline_at.map(rfc3339),
            timeout_origin: r.timeout_origin.map(|o| o.as_str()),
            drop_reason: r.drop_reason,
            output: r.output.map(OutputBody::from),
            usage: UsageBody::of(r.prompt_tokens, r.completion_tokens),
            error: r.error.map(ErrorBody::from),
            attempt_log: r
                .attempt_log
                .into_iter()
                .map(|a| AttemptBody {
                    attempt: a.attempt,
                    started_at: rfc3339(a.started_at),
                    finished_at: a.finished_at.map(rfc3339),
                    outcome: a.outcome,
                    status: a.status,
                    retry_after_ms: a.retry_after_ms,
                    error: a.error_message,
                })
                .collect(),
        }
    }
}

impl From<Output> for OutputBody {
    fn from(o: Output) -> OutputBody {
        OutputBody {
            content: o.content,
            tool_calls: o.tool_calls,
            refusal: o.refusal,
            finish_reason: o.finish_reason,
            raw_finish_reason: o.raw_finish_reason,
        }
    }
}

impl UsageBody {
    /// The usage, when the provider reported any.
    pub(super) fn of(prompt_tokens: Option<i32>, completion_tokens: Option<i32>) -> Option<Self> {
        (prompt_tokens.is_some() || completion_tokens.is_some()).then_some(UsageBody {
            prompt_tokens,
            completion_tokens,
        })
    }
}

impl From<RunError> for ErrorBody {
    fn from(e: RunError) -> ErrorBody {
        ErrorBody {
            kind: e.kind.as_str(),
            message: e.message,
            status: e.status,
        }
    }
}

/// The run id of a `/runs/{id}…` path. A malformed id names no run, so it is a 404
/// rather than a 400.
#[derive(IntoParams)]
#[into_params(names("id"), parameter_in = Path)]
pub(super) struct RunPath(
    /// The run's id.
    #[param(value_type = String, format = "uuid")]
    pub(super) RunId,
);

impl<S: Send + Sync> FromRequestParts<S> for RunPath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        id_in_path(parts, state, |raw| {
            ApiError::NotFound(format!("no run with id {raw:?}"))
        })
        .await
        .map(RunPath)
    }
}

/// The id of the path's `{id}`; one that does not parse names nothing, so it is `missing`
/// (a 404) rather than a 400.
pub(super) async fn id_in_path<T: std::str::FromStr, S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
    missing: impl FnOnce(&str) -> ApiError,
) -> Result<T, Response> {
    let Path(raw) = Path::<String>::from_request_parts(parts, state)
        .await
        .map_err(IntoResponse::into_response)?;
    raw.parse().map_err(|_| missing(&raw).into_response())
}

/// The answer for a well-formed id that names no run.
pub(super) fn no_such_run(id: RunId) -> ApiError {
    ApiError::NotFound(format!("no run with id {id}"))
}

/// The run `id` when `caller` may see it; another tenant's run is a 404 like a missing
/// one, so its existence does not leak.
pub(super) async fn visible_run(
    state: &AppState,
    caller: &Caller,
    id: RunId,
) -> Result<RunView, ApiError> {
    match state.store.get_run(id).await? {
        Some(run) if caller.sees(run.spec.tenant.as_deref()) => Ok(run),
        _ => Err(no_such_run(id)),
    }
}

/// `GET /runs/{id}`.
#[utoipa::path(
    get,
    path = "/runs/{id}",
    tag = "runs",
    summary = "Read a run",
    params(RunPath),
    responses(
        (status = 200, description = "The run.", body = RunBody),
        NoSuchRun,
        DatabaseErrors,
    )
)]
pub(super) async fn get_run(
    State(state): State<AppState>,
    caller: Caller,
    RunPath(id): RunPath,
) -> Result<Json<RunBody>, ApiError> {
    Ok(Json(visible_run(&state, &caller, id).await?.into()))
}

/// `POST /runs/{id}/cancel`.
#[utoipa::path(
    post,
    path = "/runs/{id}/cancel",
    tag = "runs",
    summary = "Cancel a run",
    description = "Cancels a `queued` or `running` run; an in-flight provider call is aborted.",
    params(RunPath),
    responses(
        (status = 200, description = "The run, now `cancelled`.", body = RunBody),
        NoSuchRun,
        (status = 409, description = "`conflict`: the run is already in a terminal status.",
            body = ApiErrorBody),
        DatabaseErrors,
    )
)]
pub(super) async fn cancel_run(
    State(state): State<AppState>,
    caller: Caller,
    RunPath(id): RunPath,
) -> Result<Json<RunBody>, ApiError> {
    // A run's tenant never changes, so checking it before the cancel is enough.
    visible_run(&state, &caller, id).await?;
    match state.dispatcher.cancel(id).await? {
        Cancelled::NotFound => Err(no_such_run(id)),
        Cancelled::AlreadyTerminal(status) => Err(ApiError::Conflict(format!(
            "run {id} is already {status}; only queued or running runs can be cancelled"
        ))),
        Cancelled::Done(run) => Ok(Json((*run).into())),
    }
}
