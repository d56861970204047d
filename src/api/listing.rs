//! `GET /runs` and `GET /batches`: newest first, one page at a time, with an opaque cursor.
//!
//! Pages are keyset pages on `(created_at, id)`: the cursor is the last row's key, and the
//! next page is what is strictly older, so runs arriving while a client pages through
//! neither shift a row onto two pages nor make one skip a page. Every query value is
//! checked here and a bad one is a 400 naming the parameter.
//!
//! Tenant scope: a tenant's token lists only its own runs and batches (naming another
//! tenant is a 404); the admin lists every tenant's, or one with `tenant`.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};

use super::error::{Body as ErrorBody, DatabaseErrors};
use super::openapi::{ClassName, StatusName};
use super::runs::{ErrorBody as RunErrorBody, UsageBody};
use super::{ApiError, AppState, Caller};
use crate::run::{Class, RunId, Status};
use crate::store::{BatchFilter, BatchView, PageAfter, RunFilter, RunView, rfc3339};

/// Rows per page when `limit` is not given.
pub(super) const DEFAULT_PAGE_LIMIT: usize = 50;
/// The most rows one page may hold.
pub(super) const MAX_PAGE_LIMIT: usize = 500;
/// Longer than any cursor this server writes (hex of a µs time and a simple UUID).
const MAX_CURSOR_LEN: usize = 128;

/// Query parameters of `GET /runs`. Values arrive as text and are checked one by one, so
/// an error names its parameter.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct RunsQuery {
    #[param(value_type = Option<StatusName>)]
    status: Option<String>,
    #[param(value_type = Option<ClassName>)]
    class: Option<String>,
    /// A provider's name.
    provider: Option<String>,
    /// A batch id (or the free-text `batch` given at enqueue).
    batch: Option<String>,
    /// Only runs of this tenant.
    tenant: Option<String>,
    /// Only runs created after this RFC 3339 time.
    #[param(format = DateTime)]
    created_after: Option<String>,
    /// Only runs created before this RFC 3339 time.
    #[param(format = DateTime)]
    created_before: Option<String>,
    /// Rows per page, 1–500 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Query parameters of `GET /batches`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct BatchesQuery {
    /// Only batches of this tenant.
    tenant: Option<String>,
    /// Only batches created after this RFC 3339 time.
    #[param(format = DateTime)]
    created_after: Option<String>,
    /// Only batches created before this RFC 3339 time.
    #[param(format = DateTime)]
    created_before: Option<String>,
    /// Rows per page, 1–500 (default 50).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A run in a listing: `GET /runs/{id}` has the whole record, attempt log included.
#[derive(Serialize, ToSchema)]
#[schema(as = RunSummary)]
pub(super) struct RunItem {
    #[schema(value_type = String, format = "uuid")]
    id: RunId,
    #[schema(value_type = StatusName)]
    status: &'static str,
    provider: String,
    #[schema(required = true)]
    model: Option<String>,
    #[schema(value_type = ClassName)]
    class: &'static str,
    priority: i16,
    #[schema(required = true)]
    tenant: Option<String>,
    #[schema(required = true)]
    batch: Option<String>,
    #[schema(value_type = Option<Object>, required = true)]
    metadata: Option<Box<RawValue>>,
    attempts: u32,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime, required = true)]
    started_at: Option<String>,
    #[schema(format = DateTime, required = true)]
    finished_at: Option<String>,
    #[schema(required = true)]
    usage: Option<UsageBody>,
    #[schema(required = true)]
    error: Option<RunErrorBody>,
}

impl From<RunView> for RunItem {
    fn from(r: RunView) -> RunItem {
        RunItem {
            id: r.id,
            status: r.status.as_str(),
            provider: r.spec.provider,
            model: r.spec.model,
            class: r.spec.class.as_str(),
            priority: r.spec.priority,
            tenant: r.spec.tenant,
            batch: r.batch,
            metadata: r.metadata,
            attempts: r.attempts,
            created_at: rfc3339(r.created_at),
            started_at: r.started_at.map(rfc3339),
            finished_at: r.finished_at.map(rfc3339),
            usage: UsageBody::of(r.prompt_tokens, r.completion_tokens),
            error: r.error.map(RunErrorBody::from),
        }
    }
}

/// A batch in a listing, without its progress (`GET /batches/{id}` counts its runs).
#[derive(Serialize, ToSchema)]
#[schema(as = BatchSummary)]
pub(super) struct BatchItem {
    #[schema(value_type = String, format = "uuid")]
    id: String,
    #[schema(required = true)]
    tenant: Option<String>,
    #[schema(value_type = Option<Object>, required = true)]
    metadata: Option<Box<RawValue>>,
    run_count: i64,
    paused: bool,
    #[schema(format = DateTime)]
    created_at: String,
    /// When the batch was found finished (every run ended).
    #[schema(format = DateTime, required = true)]
    finished_at: Option<String>,
    #[schema(format = DateTime, required = true)]
    cancelled_at: Option<String>,
}

impl From<BatchView> for BatchItem {
    fn from(b: BatchView) -> BatchItem {
        BatchItem {
            id: b.id.text(),
            tenant: b.tenant,
            metadata: b.metadata,
            run_count: b.run_count,
            paused: b.paused,
            created_at: rfc3339(b.created_at),
            finished_at: b.finished_at.map(rfc3339),
            cancelled_at: b.cancelled_at.map(rfc3339),
        }
    }
}

/// A page of a listing.
#[derive(Serialize, ToSchema)]
#[schema(as = RunPage)]
pub(super) struct RunPage {
    pub(super) items: Vec<RunItem>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(required = true)]
    pub(super) next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = BatchPage)]
pub(super) struct BatchPage {
    items: Vec<BatchItem>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

/// `GET /runs`.
#[utoipa::path(
    get,
    path = "/runs",
    tag = "runs",
    summary = "List runs, newest first",
    description = "One page of the runs matching every filter given, newest first (by \
        creation time, then id). Follow `next_cursor` for the next page; paging neither \
        skips nor repeats a run while new runs arrive. An admin may filter by `tenant`.",
    params(RunsQuery),
    responses(
        (status = 200, description = "A page of runs.", body = RunPage),
        (status = 400, description = "`invalid_request`: a bad filter, `limit` or \
            `cursor` (named in `field`), or an unknown parameter.", body = ErrorBody),
        DatabaseErrors,
    )
)]
pub(super) async fn list_runs(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Json<RunPage>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let filter = RunFilter {
        tenant: caller.tenant_filter(q.tenant)?,
        status: q
            .status
            .as_deref()
            .map(|s| named("status", s, Status::parse))
            .transpose()?,
        class: q
            .class
            .as_deref()
            .map(|c| named("class", c, Class::parse))
            .transpose()?,
        provider: q.provider,
        batch: q.batch,
        created_after: time("created_after", q.created_after.as_deref())?,
        created_before: time("created_before", q.created_before.as_deref())?,
    };
    let (limit, after) = paging(q.limit.as_deref(), q.cursor.as_deref())?;
    let rows = state.store.list_runs(&filter, after, limit + 1).await?;
    let (items, next_cursor) = page_of(rows, limit, |r| (r.created_at, r.id.0));
    Ok(Json(RunPage { items, next_cursor }))
}

/// `GET /batches`.
#[utoipa::path(
    get,
    path = "/batches",
    tag = "batches",
    summary = "List batches, newest first",
    description = "One page of batches, newest first; follow `next_cursor` for the next. \
        An admin may filter by `tenant`.",
    params(BatchesQuery),
    responses(
        (status = 200, description = "A page of batches.", body = BatchPage),
        (status = 400, description = "`invalid_request`: a bad filter, `limit` or \
            `cursor` (named in `field`), or an unknown parameter.", body = ErrorBody),
        DatabaseErrors,
    )
)]
pub(super) async fn list_batches(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<BatchesQuery>, QueryRejection>,
) -> Result<Json<BatchPage>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let filter = BatchFilter {
        tenant: caller.tenant_filter(q.tenant)?,
        created_after: time("created_after", q.created_after.as_deref())?,
        created_before: time("created_before", q.created_before.as_deref())?,
    };
    let (limit, after) = paging(q.limit.as_deref(), q.cursor.as_deref())?;
    let rows = state.store.list_batches(&filter, after, limit + 1).await?;
    let (items, next_cursor) = page_of(rows, limit, |b| (b.created_at, b.id.0));
    Ok(Json(BatchPage { items, next_cursor }))
}

pub(super) fn bad_query(e: QueryRejection) -> ApiError {
    ApiError::InvalidRequest {
        message: format!("invalid query: {}", e.body_text()),
        field: None,
    }
}

pub(super) fn named<T>(
    field: &str,
    value: &str,
    parse: fn(&str) -> Option<T>,
) -> Result<T, ApiError> {
    parse(value).ok_or_else(|| ApiError::invalid(field, format!("unknown {field} {value:?}")))
}

pub(super) fn time(field: &str, value: Option<&str>) -> Result<Option<DateTime<Utc>>, ApiError> {
    value
        .map(|text| {
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    ApiError::invalid(
                        field,
                        format!("{field} must be an RFC 3339 time like 2030-01-01T12:00:00Z: {e}"),
                    )
                })
        })
        .transpose()
}

fn limit(value: Option<&str>) -> Result<usize, ApiError> {
    let Some(text) = value else {
        return Ok(DEFAULT_PAGE_LIMIT);
    };
    text.parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_PAGE_LIMIT).contains(n))
        .ok_or_else(|| {
            ApiError::invalid(
                "limit",
                format!("limit must be between 1 and {MAX_PAGE_LIMIT}"),
            )
        })
}

/// Cursor text: the hex of `<created_at in µs since the epoch>:<id>`. Opaque to clients.
fn cursor(value: Option<&str>) -> Result<Option<PageAfter>, ApiError> {
    value
        .map(|text| {
            decode_cursor(text).ok_or_else(|| {
                ApiError::invalid(
                    "cursor",
                    "cursor is not a next_cursor this server gave; start again without it",
                )
            })
        })
        .transpose()
}

fn decode_cursor(text: &str) -> Option<PageAfter> {
    if !text.len().is_multiple_of(2) || text.len() > MAX_CURSOR_LEN {
        return None;
    }
    let bytes: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    let plain = String::from_utf8(bytes).ok()?;
    let (micros, id) = plain.split_once(':')?;
    Some(PageAfter {
        created_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        id: id.parse().ok()?,
    })
}

fn encode_cursor(created_at: DateTime<Utc>, id: uuid::Uuid) -> String {
    let plain = format!("{}:{}", created_at.timestamp_micros(), id.simple());
    plain.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The page size and where the page starts, from the `limit` and `cursor` parameters.
pub(super) fn paging(
    limit_text: Option<&str>,
    cursor_text: Option<&str>,
) -> Result<(usize, Option<PageAfter>), ApiError> {
    Ok((limit(limit_text)?, cursor(cursor_text)?))
}

/// The items of `rows` (read with one extra) up to `limit`, and the cursor of the last one
/// kept when more follow.
pub(super) fn page_of<T, I: From<T>>(
    mut rows: Vec<T>,
    limit: usize,
    key: impl Fn(&T) -> (DateTime<Utc>, uuid::Uuid),
) -> (Vec<I>, Option<String>) {
    let next = (rows.len() > limit).then(|| {
        rows.truncate(limit);
        let (at, id) = key(rows.last().expect("limit is at least 1"));
        encode_cursor(at, id)
    });
    (rows.into_iter().map(I::from).collect(), next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let at = DateTime::from_timestamp_micros(1_900_000_000_123_456).unwrap();
        let id = uuid::Uuid::now_v7();
        let text = encode_cursor(at, id);
        assert_eq!(decode_cursor(&text), Some(PageAfter { created_at: at, id }));
        for bad in [
            "",
            "zz",
            "abc",
            "3a",
            &"00".repeat(MAX_CURSOR_LEN),
            "313a32",
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad:?}");
        }
    }
}
