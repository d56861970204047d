//! The HTTP API (axum). Handlers validate input, call the store, the enqueuer and the
//! dispatcher, and render JSON; they never write SQL.
//!
//! Layout: `error` (the error contract), `enqueue` (`POST /enqueue`), `runs`
//! (`GET /runs/{id}`, cancel), `events` (SSE streams), `health` (`GET /health`),
//! `metrics` (`GET /metrics` and request counting).

mod enqueue;
mod error;
mod events;
mod health;
mod metrics;
mod runs;

pub use error::ApiError;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::routing::{get, post};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::clock::Clock;
use crate::config::Config;
use crate::dispatch::{Dispatcher, Enqueuer};
use crate::providers::Providers;
use crate::store::Store;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub enqueuer: Enqueuer,
    pub dispatcher: Dispatcher,
    pub providers: Providers,
    pub clock: Arc<dyn Clock>,
    /// Renders `/metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Fires when the server begins to shut down: open event streams end.
    pub stopping: tokio_util::sync::CancellationToken,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: AppState) -> Router {
    let body_limit = state.config.http.body_limit;
    Router::new()
        .route("/enqueue", post(enqueue::enqueue).fallback(method_not_allowed))
        .route("/runs/{id}", get(runs::get_run).fallback(method_not_allowed))
        .route(
            "/runs/{id}/cancel",
            post(runs::cancel_run).fallback(method_not_allowed),
        )
        .route(
            "/runs/{id}/events",
            get(events::run_events).fallback(method_not_allowed),
        )
        .route("/events", get(events::feed).fallback(method_not_allowed))
        .route("/health", get(health::health).fallback(method_not_allowed))
        .route("/metrics", get(metrics::metrics).fallback(method_not_allowed))
        .fallback(not_found)
        .route_layer(axum::middleware::from_fn(metrics::track))
        .layer(axum::middleware::from_fn_with_state(
            state.config.http.request_timeout,
            deadline,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req
                    .headers()
                    .get(&REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

/// Bounds how long a handler may take to produce its response (a slow client's body
/// upload included); an event stream's body is not bounded, only its start.
async fn deadline(
    axum::extract::State(limit): axum::extract::State<std::time::Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable(format!(
            "the request did not complete within {} ms",
            limit.as_millis()
        ))
        .into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("method not allowed on this route".into())
}

/// RFC 3339, UTC, millisecond precision: the one time format of the API.
pub(crate) fn time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
