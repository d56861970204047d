//! `POST /batches`, `GET /batches/{id}` and the batch's pause, resume and cancel. The
//! body is read and validated by `batch_body`; its finished runs stream from
//! `batch_results`; listing batches is `listing`'s.
//!
//! Tenant scope: every store call here takes the caller's tenant ([`Caller::scope`];
//! `None` for the admin and in open mode: every tenant); a batch outside the caller's
//! scope is a 404, like one that does not exist.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use super::batch_body::{BatchBody, parse_batch};
use super::error::{Body as ErrorBody, DatabaseErrors};
use super::run_body::require_json;
use super::runs::UsageBody;
use super::{ApiError, AppState, Caller};
use crate::store::{
    BatchCancelOutcome, BatchClosed, BatchCreated, BatchId, BatchProgress, BatchToggle, BatchView,
    ToggleOutcome, rfc3339,
};

/// A batch, with where its runs stand. `counts` holds every status and adds up to
/// `run_count` (read in one snapshot).
#[derive(Serialize, ToSchema)]
#[schema(as = Batch)]
pub(super) struct BatchReply {
    #[schema(value_type = String, format = "uuid")]
    id: String,
    #[schema(required = true)]
    tenant: Option<String>,
    #[schema(value_type = Option<Object>, required = true)]
    metadata: Option<Box<RawValue>>,
    run_count: i64,
    /// Runs per status (`queued`, `running`, `completed`, `failed`, `timed_out`,
    /// `cancelled`, `dropped`), every one listed.
    #[schema(value_type = Object)]
    counts: BTreeMap<&'static str, i64>,
    /// Tokens the batch's runs used so far.
    usage: UsageBody,
    /// `true` while paused: its queued runs are not started.
    paused: bool,
    #[schema(format = DateTime)]
    created_at: String,
    /// When the first run started.
    #[schema(format = DateTime, required = true)]
    started_at: Option<String>,
    /// When the last run ended, once every run has.
    #[schema(format = DateTime, required = true)]
    finished_at: Option<String>,
    #[schema(format = DateTime, required = true)]
    cancelled_at: Option<String>,
    links: BatchLinks,
}

/// Where to follow a batch.
#[derive(Serialize, ToSchema)]
struct BatchLinks {
    /// `/batches/{id}`
    #[serde(rename = "self")]
    this: String,
    /// `/batches/{id}/results`
    results: String,
    /// `/events?batch={id}`
    events: String,
}

impl BatchReply {
    pub(super) fn new(batch: BatchView, progress: &BatchProgress) -> BatchReply {
        let id = batch.id.text();
        BatchReply {
            links: BatchLinks {
                this: format!("/batches/{id}"),
                results: format!("/batches/{id}/results"),
                events: format!("/events?batch={id}"),
            },
            id,
            tenant: batch.tenant,
            metadata: batch.metadata,
            run_count: batch.run_count,
            counts: progress
                .counts
                .iter()
                .map(|(s, n)| (s.as_str(), *n))
                .collect(),
            usage: UsageBody::of(
                Some(saturate(progress.prompt_tokens)),
                Some(saturate(progress.completion_tokens)),
            )
            .expect("usage given"),
            paused: batch.paused,
            created_at: rfc3339(batch.created_at),
            started_at: progress.first_started_at.map(rfc3339),
            finished_at: progress
                .all_ended()
                .then_some(progress.last_finished_at)
                .flatten()
                .map(rfc3339),
            cancelled_at: batch.cancelled_at.map(rfc3339),
        }
    }
}

/// Token sums beyond `i32` (a very large batch) are shown at its ceiling.
fn saturate(n: i64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The batch id of a `/batches/{id}…` path; a malformed id names no batch (404).
#[derive(IntoParams)]
#[into_params(names("id"), parameter_in = Path)]
pub(super) struct BatchPath(
    /// The batch's id.
    #[param(value_type = String, format = "uuid")]
    pub(super) BatchId,
);

impl<S: Send + Sync> FromRequestParts<S> for BatchPath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        super::runs::id_in_path(parts, state, |raw| no_such_batch(&raw))
            .await
            .map(BatchPath)
    }
}

pub(super) fn no_such_batch(id: &dyn std::fmt::Display) -> ApiError {
    ApiError::NotFound(format!("no batch with id {id}"))
}

/// The batch as it stands, or 404.
pub(super) async fn read_batch(
    state: &AppState,
    caller: &Caller,
    id: BatchId,
) -> Result<BatchReply, ApiError> {
    let batch = state
        .store
        .get_batch(id, caller.scope())
        .await?
        .ok_or_else(|| no_such_batch(&id))?;
    let progress = state.store.batch_progress(id).await?;
    Ok(BatchReply::new(batch, &progress))
}

/// `POST /batches`.
#[utoipa::path(
    post,
    path = "/batches",
    tag = "batches",
    summary = "Submit a batch of runs",
    description = "Stores up to `batches.max_runs` runs (default 10,000) in one transaction: \
        all of them, or none when any is invalid (the error names it, e.g. \
        `\"field\":\"runs[17].provider\"`). Top-level run fields are defaults each run may \
        override. Runs are validated like `POST /enqueue` bodies, but skip background \
        admission control. The body may be up to `batches.body_limit` bytes (64 MiB).",
    request_body(content = BatchBody, content_type = "application/json"),
    responses(
        (status = 202, description = "The batch was created; its runs are queued.",
            body = BatchReply, headers(("Location" = String, description = "`/batches/{id}`"))),
        (status = 200, description = "A batch with this `idempotency_key` already exists: \
            that batch, as it stands.", body = BatchReply),
        (status = 400, description = "`invalid_request`: malformed JSON, too many runs, or \
            a bad field (named in `field`, with the run's index).", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body exceeds \
            `batches.body_limit`.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not \
            `application/json`.", body = ErrorBody),
        DatabaseErrors,
    )
)]
pub(super) async fn create_batch(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    let limit = state.config.batches.body_limit;
    let too_large = ApiError::PayloadTooLarge { limit };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large);
    }
    // Past the declared length, the only way to fail reading is to overrun the limit (or
    // a client gone, who reads no answer).
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large)?;
    let id = BatchId::new();
    let batch = parse_batch(
        &state,
        &caller,
        &bytes,
        state.config.batches.max_runs,
        id,
        state.clock.now(),
    )?;
    let (id, code) = match state.dispatcher.submit_batch(&batch).await? {
        BatchCreated::Created(id) => (id, StatusCode::ACCEPTED),
        BatchCreated::Existing(id) => (id, StatusCode::OK),
    };
    let reply = read_batch(&state, &caller, id).await?;
    let mut response = (code, Json(reply)).into_response();
    if let Ok(location) = format!("/batches/{id}").parse() {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /batches/{id}`.
#[utoipa::path(
    get,
    path = "/batches/{id}",
    tag = "batches",
    summary = "Read a batch and its progress",
    params(BatchPath),
    responses(
        (status = 200, description = "The batch.", body = BatchReply),
        (status = 404, description = "`not_found`: no batch has this id.", body = ErrorBody),
        DatabaseErrors,
    )
)]
pub(super) async fn get_batch(
    State(state): State<AppState>,
    caller: Caller,
    BatchPath(id): BatchPath,
) -> Result<Json<BatchReply>, ApiError> {
    Ok(Json(read_batch(&state, &caller, id).await?))
}

/// `POST /batches/{id}/pause`.
#[utoipa::path(
    post,
    path = "/batches/{id}/pause",
    tag = "batches",
    summary = "Pause a batch",
    description = "Its queued runs are not started from the next claim on; runs in flight \
        finish. Pausing a paused batch changes nothing. Sends `batch_paused`.",
    params(BatchPath),
    responses(
        (status = 200, description = "The batch, now paused.", body = BatchReply),
        (status = 404, description = "`not_found`: no batch has this id.", body = ErrorBody),
        (status = 409, description = "`conflict`: the batch is cancelled or finished, or \
            was paused, resumed or cancelled less than `batches.toggle_cooldown` ago \
            (then `Retry-After` says when to try again).", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until the cooldown ends."))),
        DatabaseErrors,
    )
)]
pub(super) async fn pause_batch(
    State(state): State<AppState>,
    caller: Caller,
    BatchPath(id): BatchPath,
) -> Result<Response, ApiError> {
    toggle(state, caller, id, BatchToggle::Pause).await
}

/// `POST /batches/{id}/resume`.
#[utoipa::path(
    post,
    path = "/batches/{id}/resume",
    tag = "batches",
    summary = "Resume a paused batch",
    description = "Its queued runs may start again. Resuming a running batch changes \
        nothing. Sends `batch_resumed`.",
    params(BatchPath),
    responses(
        (status = 200, description = "The batch, no longer paused.", body = BatchReply),
        (status = 404, description = "`not_found`: no batch has this id.", body = ErrorBody),
        (status = 409, description = "`conflict`: the batch is cancelled or finished, or \
            was toggled less than `batches.toggle_cooldown` ago (see `Retry-After`).",
            body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until the cooldown ends."))),
        DatabaseErrors,
    )
)]
pub(super) async fn resume_batch(
    State(state): State<AppState>,
    caller: Caller,
    BatchPath(id): BatchPath,
) -> Result<Response, ApiError> {
    toggle(state, caller, id, BatchToggle::Resume).await
}

async fn toggle(
    state: AppState,
    caller: Caller,
    id: BatchId,
    toggle: BatchToggle,
) -> Result<Response, ApiError> {
    let cooldown = state.config.batches.toggle_cooldown;
    match state
        .dispatcher
        .toggle_batch(id, caller.scope(), toggle, cooldown)
        .await?
    {
        ToggleOutcome::NotFound => Err(no_such_batch(&id)),
        ToggleOutcome::Closed(why) => Err(closed(id, why)),
        ToggleOutcome::TooSoon(wait) => Ok(too_soon(id, wait)),
        ToggleOutcome::Applied(_) | ToggleOutcome::Unchanged(_) => {
            Ok(Json(read_batch(&state, &caller, id).await?).into_response())
        }
    }
}

/// `POST /batches/{id}/cancel`.
#[utoipa::path(
    post,
    path = "/batches/{id}/cancel",
    tag = "batches",
    summary = "Cancel a batch",
    description = "Every queued or running run of the batch ends `cancelled` (attempts in \
        flight are aborted, in whichever process runs them). Final, so the toggle cooldown \
        does not hold it back.",
    params(BatchPath),
    responses(
        (status = 200, description = "The batch, cancelled.", body = BatchReply),
        (status = 404, description = "`not_found`: no batch has this id.", body = ErrorBody),
        (status = 409, description = "`conflict`: the batch is already cancelled or \
            finished.", body = ErrorBody),
        DatabaseErrors,
    )
)]
pub(super) async fn cancel_batch(
    State(state): State<AppState>,
    caller: Caller,
    BatchPath(id): BatchPath,
) -> Result<Json<BatchReply>, ApiError> {
    match state.dispatcher.cancel_batch(id, caller.scope()).await? {
        BatchCancelOutcome::NotFound => Err(no_such_batch(&id)),
        BatchCancelOutcome::Closed(why) => Err(closed(id, why)),
        BatchCancelOutcome::Cancelled { .. } => Ok(Json(read_batch(&state, &caller, id).await?)),
    }
}

fn closed(id: BatchId, why: BatchClosed) -> ApiError {
    ApiError::Conflict(match why {
        BatchClosed::Cancelled => format!("batch {id} is cancelled"),
        BatchClosed::Finished => format!("batch {id} is finished: every run has ended"),
    })
}

/// 409 with `Retry-After`: toggled too recently.
fn too_soon(id: BatchId, wait: Duration) -> Response {
    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut response = ApiError::Conflict(format!(
        "batch {id} was paused, resumed or cancelled too recently; try again in {secs} s \
         (batches.toggle_cooldown)"
    ))
    .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    response
}
