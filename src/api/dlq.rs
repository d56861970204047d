//! Dead letters (runs that ended `failed` or `timed_out`): `GET /dlq` lists them newest
//! first with the filters and paging of `GET /runs`; `POST /dlq/{id}/requeue` gives one
//! back to the queue and `POST /dlq/requeue` up to `limit` that match a filter. A requeued
//! run keeps its id, attempt log and events, gets `max_attempts` more attempts (default
//! `retry.max_attempts`), and is due at once (see `store::dead_letters`). Operator routes
//! once tenants are configured.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::{Body as ErrorBody, DatabaseErrors, NoSuchRun};
use super::listing::{RunItem, RunPage, bad_query, named, page_of, paging, time};
use super::openapi::{ClassName, StatusName};
use super::runs::{RunBody, RunPath, visible_run};
use super::{ApiError, AppState, Caller};
use crate::run::{Class, MAX_ATTEMPTS_RANGE, RunId, Status};
use crate::store::{DEAD_STATUSES, Requeue, RunFilter, RunView};

/// Most dead letters one bulk requeue takes.
pub const MAX_BULK_REQUEUE: usize = 1000;
/// Dead letters a bulk requeue takes when its body says no `limit`.
const DEFAULT_BULK_REQUEUE: usize = 100;

/// Which dead letters: the filters of `GET /runs`, with `status` one of the dead ones.
#[derive(Default, Deserialize, IntoParams, ToSchema)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct DeadFilter {
    /// `failed` or `timed_out` (both when absent).
    #[param(value_type = Option<StatusName>)]
    #[schema(value_type = Option<StatusName>)]
    status: Option<String>,
    #[param(value_type = Option<ClassName>)]
    #[schema(value_type = Option<ClassName>)]
    class: Option<String>,
    provider: Option<String>,
    batch: Option<String>,
    tenant: Option<String>,
    /// Only runs created after this RFC 3339 time.
    #[param(format = DateTime)]
    #[schema(format = DateTime)]
    created_after: Option<String>,
    /// Only runs created before this RFC 3339 time.
    #[param(format = DateTime)]
    #[schema(format = DateTime)]
    created_before: Option<String>,
}

/// Query parameters of `GET /dlq`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct DlqQuery {
    #[serde(flatten)]
    #[param(inline)]
    filter: DeadFilter,
    /// Rows per page, 1–500 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

impl DeadFilter {
    /// The store filter: `status` one of the dead ones when given (both otherwise).
    fn filter(&self, caller: &Caller) -> Result<RunFilter, ApiError> {
        let status = match self.status.as_deref() {
            None => None,
            Some(s) => {
                let status = named("status", s, Status::parse)?;
                if !DEAD_STATUSES.contains(&status) {
                    return Err(ApiError::invalid(
                        "status",
                        "a dead letter is `failed` or `timed_out`",
                    ));
                }
                Some(status)
            }
        };
        Ok(RunFilter {
            tenant: caller.tenant_filter(self.tenant.clone())?,
            status,
            class: self
                .class
                .as_deref()
                .map(|c| named("class", c, Class::parse))
                .transpose()?,
            provider: self.provider.clone(),
            batch: self.batch.clone(),
            created_after: time("created_after", self.created_after.as_deref())?,
            created_before: time("created_before", self.created_before.as_deref())?,
        })
    }
}

/// `GET /dlq`.
#[utoipa::path(
    get,
    path = "/dlq",
    tag = "operations",
    summary = "List dead letters",
    description = "Runs that ended `failed` or `timed_out`, newest first, with the filters \
        and paging of `GET /runs`. An operator route with tenants configured.",
    params(DlqQuery),
    responses(
        (status = 200, description = "A page of dead letters.", body = RunPage),
        (status = 400, description = "`invalid_request`: a bad filter, `limit` or `cursor`.",
            body = ErrorBody),
        DatabaseErrors,
    )
)]
pub(super) async fn list_dead(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<DlqQuery>, QueryRejection>,
) -> Result<Json<RunPage>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let filter = q.filter.filter(&caller)?;
    let (limit, after) = paging(q.limit.as_deref(), q.cursor.as_deref())?;
    let rows = state.store.list_dead(&filter, after, limit + 1).await?;
    let (items, next_cursor) = page_of::<RunView, RunItem>(rows, limit, |r| (r.created_at, r.id.0));
    Ok(Json(RunPage { items, next_cursor }))
}

/// The body of `POST /dlq/{id}/requeue` (optional).
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RequeueOne {
    /// Attempts the run gets on top of those it used, 1–50 (default `retry.max_attempts`).
    #[schema(minimum = 1, maximum = 50)]
    max_attempts: Option<i64>,
}

/// `POST /dlq/{id}/requeue`.
#[utoipa::path(
    post,
    path = "/dlq/{id}/requeue",
    tag = "operations",
    summary = "Requeue a dead letter",
    description = "The run goes back to `queued`, due at once, with `max_attempts` more \
        attempts; its attempt log and events are kept and a `requeued` event is written.",
    params(RunPath),
    request_body(content = Option<RequeueOne>, description = "Optional."),
    responses(
        (status = 200, description = "The run, queued again.", body = RunBody),
        (status = 400, description = "`invalid_request`: a bad `max_attempts`.", body = ErrorBody),
        NoSuchRun,
        (status = 409, description = "`conflict`: the run is not a dead letter.", body = ErrorBody),
        DatabaseErrors,
    )
)]
pub(super) async fn requeue_one(
    State(state): State<AppState>,
    caller: Caller,
    RunPath(id): RunPath,
    body: Option<Json<RequeueOne>>,
) -> Result<Json<RunBody>, ApiError> {
    let run = visible_run(&state, &caller, id).await?;
    if !DEAD_STATUSES.contains(&run.status) {
        return Err(ApiError::Conflict(format!(
            "run {id} is {}, not a dead letter (failed or timed_out)",
            run.status.as_str()
        )));
    }
    let asked = body.map(|Json(b)| b).unwrap_or_default();
    let how = requeue_settings(&state, asked.max_attempts)?;
    state.store.requeue(&[id], how).await?;
    Ok(Json(visible_run(&state, &caller, id).await?.into()))
}

/// The body of `POST /dlq/requeue`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RequeueMany {
    #[serde(flatten)]
    filter: DeadFilter,
    /// Most runs requeued, 1–1000 (default 100): the newest matching first.
    #[schema(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Attempts each run gets on top of those it used, 1–50 (default `retry.max_attempts`).
    #[schema(minimum = 1, maximum = 50)]
    max_attempts: Option<i64>,
}

/// What a bulk requeue did.
#[derive(Serialize, ToSchema)]
pub(super) struct Requeued {
    requeued: usize,
    #[schema(value_type = Vec<String>)]
    ids: Vec<RunId>,
}

/// `POST /dlq/requeue`.
#[utoipa::path(
    post,
    path = "/dlq/requeue",
    tag = "operations",
    summary = "Requeue dead letters by filter",
    description = "Requeues up to `limit` (at most 1000) dead letters matching the filter, \
        newest first, as `POST /dlq/{id}/requeue` does each.",
    request_body = RequeueMany,
    responses(
        (status = 200, description = "The runs requeued.", body = Requeued),
        (status = 400, description = "`invalid_request`: a bad filter, `limit` or \
            `max_attempts`.", body = ErrorBody),
        DatabaseErrors,
    )
)]
pub(super) async fn requeue_many(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<RequeueMany>, JsonRejection>,
) -> Result<Json<Requeued>, ApiError> {
    let Json(body) = body.map_err(|e| ApiError::InvalidRequest {
        message: format!("invalid JSON body: {}", e.body_text()),
        field: None,
    })?;
    let limit = match body.limit {
        None => DEFAULT_BULK_REQUEUE,
        Some(n) => usize::try_from(n)
            .ok()
            .filter(|n| (1..=MAX_BULK_REQUEUE).contains(n))
            .ok_or_else(|| {
                ApiError::invalid(
                    "limit",
                    format!("limit must be between 1 and {MAX_BULK_REQUEUE}"),
                )
            })?,
    };
    let how = requeue_settings(&state, body.max_attempts)?;
    let filter = body.filter.filter(&caller)?;
    let ids: Vec<RunId> = state
        .store
        .list_dead(&filter, None, limit)
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect();
    let ids = state.store.requeue(&ids, how).await?;
    Ok(Json(Requeued {
        requeued: ids.len(),
        ids,
    }))
}

/// The requeue of this moment: `max_attempts` more attempts (checked, or the server's
/// default), the classes' queue deadlines.
fn requeue_settings(state: &AppState, max_attempts: Option<i64>) -> Result<Requeue, ApiError> {
    let attempts = max_attempts
        .map(|n| {
            u32::try_from(n)
                .ok()
                .filter(|n| MAX_ATTEMPTS_RANGE.contains(n))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "max_attempts",
                        format!(
                            "max_attempts must be between {} and {}",
                            MAX_ATTEMPTS_RANGE.start(),
                            MAX_ATTEMPTS_RANGE.end()
                        ),
                    )
                })
        })
        .transpose()?;
    Ok(Requeue::configured(
        &state.config,
        attempts,
        state.clock.now(),
    ))
}
