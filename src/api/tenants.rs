//! `GET /tenants/me` (the calling tenant) and `GET /tenants/{name}` (an operator route):
//! a tenant's usage of the UTC day, what it cost, its runs in flight and its limits.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{Body as ErrorBody, DatabaseErrors};
use super::{ApiError, AppState, Caller};
use crate::dispatch::TenantDay;
use crate::store::rfc3339;

/// A tenant's day: usage, spend and limits. Daily budgets count the tokens providers
/// reported for the tenant's completed runs since midnight UTC.
#[derive(Serialize, ToSchema)]
#[schema(as = TenantDay)]
pub(super) struct TenantBody {
    tenant: String,
    /// The UTC date the usage is of (`YYYY-MM-DD`).
    #[schema(format = Date)]
    day: String,
    /// When the daily budgets start again: the next midnight UTC.
    #[schema(format = DateTime)]
    resets_at: String,
    usage: UsageBody,
    /// Runs of the tenant queued now.
    queued: i64,
    /// Runs of the tenant running now (in flight), across every process.
    running: i64,
    /// The configured limits; `null` for a tenant that is not configured (open mode).
    #[schema(required = true)]
    limits: Option<LimitsBody>,
}

/// Tokens reported today, and what they cost at the configured `[[prices]]` (models
/// without a price cost nothing).
#[derive(Serialize, ToSchema)]
#[schema(as = TenantUsage)]
struct UsageBody {
    prompt_tokens: i64,
    completion_tokens: i64,
    total_tokens: i64,
    spend: f64,
}

/// A tenant's configured limits; `null` means unlimited.
#[derive(Serialize, ToSchema)]
#[schema(as = TenantLimits)]
struct LimitsBody {
    weight: u32,
    #[schema(required = true)]
    max_in_flight: Option<u32>,
    /// Runs per second.
    #[schema(required = true)]
    enqueue_rate: Option<f64>,
    /// Runs that may be enqueued at once above the rate.
    #[schema(required = true)]
    enqueue_burst: Option<f64>,
    #[schema(required = true)]
    daily_tokens: Option<u64>,
    #[schema(required = true)]
    daily_spend: Option<f64>,
}

impl From<TenantDay> for TenantBody {
    fn from(d: TenantDay) -> TenantBody {
        TenantBody {
            usage: UsageBody {
                prompt_tokens: d.prompt_tokens,
                completion_tokens: d.completion_tokens,
                total_tokens: d.total_tokens(),
                spend: d.spend,
            },
            tenant: d.tenant,
            day: d.day.to_string(),
            resets_at: rfc3339(d.resets_at),
            queued: d.queued,
            running: d.running,
            limits: d.limits.map(|t| LimitsBody {
                weight: t.weight,
                max_in_flight: t.max_in_flight,
                enqueue_rate: t.enqueue_rate,
                enqueue_burst: t.enqueue_capacity(),
                daily_tokens: t.daily_tokens,
                daily_spend: t.daily_spend,
            }),
        }
    }
}

/// `GET /tenants/me`.
#[utoipa::path(
    get,
    path = "/tenants/me",
    tag = "tenants",
    summary = "The calling tenant's day",
    description = "The bearer token's tenant: today's usage (UTC), its spend, its runs in \
        flight and its limits.",
    responses(
        (status = 200, description = "The tenant's day.", body = TenantBody),
        (status = 404, description = "`not_found`: the caller is no tenant (the admin token, \
            or open mode).", body = ErrorBody),
        DatabaseErrors,
    )
)]
pub(super) async fn me(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<TenantBody>, ApiError> {
    let Some(tenant) = caller.scope() else {
        return Err(ApiError::NotFound(
            "this token belongs to no tenant; an operator reads /tenants/{name}".into(),
        ));
    };
    Ok(Json(state.dispatcher.tenant_day(tenant).await?.into()))
}

/// `GET /tenants/{name}`.
#[utoipa::path(
    get,
    path = "/tenants/{name}",
    tag = "tenants",
    summary = "A tenant's day",
    description = "Any tenant's usage of the day (UTC), spend, runs in flight and limits. \
        An operator route: with tenants configured it takes the admin token only. In open \
        mode it shows the usage recorded under any `tenant` runs were enqueued with.",
    params(("name" = String, Path, description = "The tenant's name.")),
    responses(
        (status = 200, description = "The tenant's day.", body = TenantBody),
        (status = 404, description = "`not_found`: no tenant of this name is configured.",
            body = ErrorBody),
        DatabaseErrors,
    )
)]
pub(super) async fn by_name(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<TenantBody>, ApiError> {
    let configured = state.config.tenant(&name).is_some();
    if !state.config.tenants.is_empty() && !configured {
        return Err(ApiError::NotFound(format!(
            "no tenant named {name:?} is configured"
        )));
    }
    Ok(Json(state.dispatcher.tenant_day(&name).await?.into()))
}
