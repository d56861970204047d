//! `GET /metrics` (Prometheus text) and the middleware that counts HTTP requests.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;

/// How many of the busiest keys the keys-at-cap gauge looks at.
const KEYS_SAMPLED: usize = 100;
use crate::run::{Class, Status};

/// `GET /metrics`.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    description = "Every metric in the Prometheus text exposition format, each with HELP \
        text, names prefixed `sluice_`.",
    responses(
        (status = 200, description = "The metrics.",
            content_type = "text/plain; version=0.0.4; charset=utf-8", body = String),
    )
)]
/// Samples the gauges that are cheaper to read at scrape time than to maintain, then
/// renders every metric.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    match state.store.count_active().await {
        Ok(rows) => {
            crate::metrics::database_up(true);
            for class in Class::ALL {
                for status in [Status::Queued, Status::Running] {
                    let n = rows
                        .iter()
                        .find(|(c, s, _)| *c == class && *s == status)
                        .map(|(_, _, n)| *n)
                        .unwrap_or(0);
                    crate::metrics::queue_depth(class.as_str(), status.as_str(), n);
                }
            }
        }
        Err(e) => {
            crate::metrics::database_up(false);
            tracing::warn!(error = %e, "metrics: queue depth unavailable");
        }
    }
    if let Ok(keys) = state.store.busiest_keys(KEYS_SAMPLED).await {
        for class in Class::ALL {
            let cap = match class {
                Class::Live => state.config.queue.live_key_cap,
                Class::Background => state.config.queue.background_key_cap,
            };
            let at_cap = cap.map_or(0, |cap| {
                keys.iter()
                    .filter(|k| k.class == class && k.running >= i64::from(cap))
                    .count()
            });
            crate::metrics::keys_at_cap(class.as_str(), at_cap);
        }
    }
    if !state.config.tenants.is_empty()
        && let Ok(activity) = state.store.tenant_activity().await
    {
        for tenant in &state.config.tenants {
            let mine = activity.iter().find(|a| a.tenant == tenant.name);
            let (queued, running) = mine.map_or((0, 0), |a| (a.queued, a.running));
            crate::metrics::tenant_runs(&tenant.name, queued, running);
        }
    }
    let pool = state.dispatcher.status();
    crate::metrics::worker_slots(pool.slots_busy, pool.slots_total);
    for g in state.dispatcher.providers() {
        crate::metrics::provider_state(&g);
    }
    crate::metrics::sse_subscribers(state.store.hub().subscribers());
    state.metrics.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Counts every request by its route template (never the raw path, so ids do not become
/// labels), method and status.
pub(super) async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = request.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    crate::metrics::http_request(route, method, response.status().as_u16(), started.elapsed());
    response
}
