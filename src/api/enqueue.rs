//! `POST /enqueue`: validate the body (see `run_body`), hand the run to
//! `Dispatcher::submit`, render the answer.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{Body as ErrorBody, InternalError};
use super::openapi::StatusName;
use super::run_body::{EnqueueBody, build_run, json_body, parse_body};
use super::{ApiError, AppState, Caller};
use crate::run::RunId;
use crate::store::BatchId;

/// The reply to `POST /enqueue`.
#[derive(Serialize, ToSchema)]
pub(super) struct EnqueueReply {
    #[schema(value_type = String, format = "uuid")]
    id: RunId,
    /// `queued` for a new run; a repeated idempotency key answers with the first run's
    /// current status.
    #[schema(value_type = StatusName)]
    status: &'static str,
    links: Links,
}

/// Where to follow the run.
#[derive(Serialize, ToSchema)]
#[schema(as = RunLinks)]
struct Links {
    /// `/runs/{id}`
    #[serde(rename = "self")]
    this: String,
    /// `/runs/{id}/events`
    events: String,
}

/// `POST /enqueue`.
#[utoipa::path(
    post,
    path = "/enqueue",
    tag = "runs",
    summary = "Enqueue a run",
    description = "Validates the body and stores a new `queued` run. Nothing is half-written: \
        a rejected request leaves no run behind.",
    request_body(content = EnqueueBody, content_type = "application/json"),
    responses(
        (status = 202, description = "The run was created.", body = EnqueueReply,
            headers(("Location" = String, description = "`/runs/{id}`"))),
        (status = 200, description = "A run with this `idempotency_key` already exists: \
            the first run, as it stands now.", body = EnqueueReply,
            headers(("Location" = String, description = "`/runs/{id}`"))),
        (status = 400, description = "`invalid_request`: unknown provider, bad or unknown \
            field (named in `field`), malformed JSON.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body exceeds the server's \
            limit.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not \
            `application/json`.", body = ErrorBody),
        (status = 429, description = "`admission_rejected`: refused by background admission \
            control or a quota (`reason` says which); `rate_limited`: the tenant enqueues \
            faster than its `enqueue_rate`; `budget_exhausted`: the tenant spent today's \
            `daily_tokens` or `daily_spend` (`reason` says which; `Retry-After` reaches the \
            next UTC midnight).", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
        (status = 503, description = "`unavailable`: the server is shutting down or the \
            database is unreachable.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
        InternalError,
    )
)]
pub(super) async fn enqueue(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(&headers, body, state.config.http.body_limit)?;
    let parsed = parse_body(&body)?;
    let run = build_run(&state, &caller, parsed)?;
    refuse_joining_a_batch(&state, &run).await?;
    let submitted = state.dispatcher.submit(run).await?;
    let (id, status) = (submitted.id, submitted.status.as_str());
    let code = if submitted.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let reply = EnqueueReply {
        id,
        status,
        links: Links {
            this: format!("/runs/{id}"),
            events: format!("/runs/{id}/events"),
        },
    };
    let mut response = (code, Json(reply)).into_response();
    if let Ok(location) = format!("/runs/{id}").parse() {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// A run may not join a batch made by `POST /batches` through `/enqueue`: the batch's runs
/// are all written with it (its counts add up to its `run_count`, its pause and cancel
/// cover exactly them). A free-text `batch` that names no such batch only groups runs.
async fn refuse_joining_a_batch(
    state: &AppState,
    run: &crate::store::NewRun,
) -> Result<(), ApiError> {
    let Some(id) = run.batch.as_deref().and_then(|b| b.parse::<BatchId>().ok()) else {
        return Ok(());
    };
    if state.store.get_batch(id, None).await?.is_some() {
        return Err(ApiError::invalid(
            "batch",
            format!(
                "batch {id} was made by POST /batches; its runs are all written with it, so a run cannot join it here"
            ),
        ));
    }
    Ok(())
}
