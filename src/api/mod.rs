//! The HTTP API (axum). Handlers parse input, call the dispatcher (which owns every
//! step of taking in and cancelling a run) or read the store, and render JSON; they never
//! write SQL.
//!
//! Layout: `auth` (bearer tokens, the [`Caller`] and each route's access rule), `error`
//! (the error contract), `enqueue` (`POST /enqueue`), `run_body` (one run's fields and
//! their validation, for enqueue and batches), `runs` (`GET /runs/{id}`, cancel), `events`
//! (SSE streams), `event_format` (what an event stream sends and the `Last-Event-ID` it
//! reads back), `batches` (`POST /batches`, a batch, its pause, resume and cancel),
//! `batch_body` (the batch body), `batch_results` (`GET /batches/{id}/results`), `listing`
//! (`GET /runs`, `GET /batches`), `health` (`GET /health`, `GET /livez`), `metrics`
//! (`GET /metrics` and request counting), `dlq` (dead letters: list and requeue), `tenants` (`GET /tenants/me`,
//! `GET /tenants/{name}`), `stream_tokens` (short-lived keys for browser streams), `openapi` (`GET /openapi.json`), `openai` (the
//! OpenAI-compatible front door, `/v1/…`), `follow` (following one run as it happens, for
//! event streams and the front door), `ui` (the status page at `/ui`).
//!
//! Every route is registered in `endpoints` through `utoipa_axum::routes!`, which takes
//! the method and path from the handler's `#[utoipa::path]` annotation and adds the route
//! and its OpenAPI operation in one step, so the router and `GET /openapi.json` cannot
//! drift apart; `tests/openapi.rs` checks the served document against `route_table`.

pub mod auth;
mod batch_body;
mod batch_results;
mod batches;
mod browser;
mod dlq;
mod enqueue;
mod error;
mod event_format;
mod events;
mod follow;
mod health;
mod listing;
mod metrics;
mod openai;
mod openapi;
mod run_body;
mod runs;
mod stream_tokens;
mod tenants;
mod ui;

pub use auth::Caller;

/// A run as `GET /runs/{id}` shows it, for tools outside the HTTP surface (the `sluice
/// dlq` commands print runs in this shape).
pub fn run_document(view: crate::store::RunView) -> serde_json::Value {
    serde_json::to_value(runs::RunBody::from(view)).unwrap_or(serde_json::Value::Null)
}
pub use error::ApiError;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Method, Request};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter, UtoipaMethodRouterExt};
use utoipa_axum::routes;

use crate::clock::Clock;
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::providers::Providers;
use crate::store::Store;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub dispatcher: Dispatcher,
    pub providers: Providers,
    pub clock: Arc<dyn Clock>,
    /// Renders `/metrics`.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Fires when the server begins to shut down: open event streams end.
    pub stopping: tokio_util::sync::CancellationToken,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every route of the API with its OpenAPI operation, added to `base`. Add routes here
/// and only here, each with `endpoint(routes!(handler))`.
fn endpoints(base: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    base.routes(endpoint(routes!(enqueue::enqueue)))
        .routes(endpoint(routes!(listing::list_runs)))
        .routes(endpoint(routes!(runs::get_run)))
        .routes(endpoint(routes!(runs::cancel_run)))
        .routes(endpoint(routes!(events::run_events)))
        .routes(endpoint(routes!(events::feed)))
        .routes(endpoint(routes!(stream_tokens::run_stream_token)))
        .routes(endpoint(routes!(stream_tokens::batch_stream_token)))
        .routes(endpoint(routes!(
            batches::create_batch,
            listing::list_batches
        )))
        .routes(endpoint(routes!(batches::get_batch)))
        .routes(endpoint(routes!(batches::pause_batch)))
        .routes(endpoint(routes!(batches::resume_batch)))
        .routes(endpoint(routes!(batches::cancel_batch)))
        .routes(endpoint(routes!(batch_results::batch_results)))
        .routes(endpoint(routes!(dlq::list_dead)))
        .routes(endpoint(routes!(dlq::requeue_one)))
        .routes(endpoint(routes!(dlq::requeue_many)))
        .routes(endpoint(routes!(health::health)))
        .routes(endpoint(routes!(health::livez)))
        .routes(endpoint(routes!(tenants::me)))
        .routes(endpoint(routes!(tenants::by_name)))
        .routes(endpoint(routes!(metrics::metrics)))
        .routes(endpoint(routes!(openapi::openapi_json)))
        .routes(endpoint(routes!(openai::chat_completions)))
        .routes(endpoint(routes!(openai::models)))
        .routes(endpoint(routes!(ui::page)))
        .routes(endpoint(routes!(ui::script)))
        .routes(endpoint(routes!(ui::style)))
}

/// A route answers other methods with 405 and the error contract's body.
fn endpoint(route: UtoipaMethodRouter<AppState>) -> UtoipaMethodRouter<AppState> {
    route.map(|methods| methods.fallback(method_not_allowed))
}

/// The OpenAPI document served at `GET /openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = endpoints(OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())).into_openapi();
    openapi::document_access(&mut doc);
    doc
}

/// Every (method, path template) the router serves, sorted: read from the routes
/// [`router`] mounts (not from the served document), so a test can compare the two.
/// Path templates use OpenAPI's (and axum's) `{param}` syntax.
pub fn route_table() -> Vec<(Method, String)> {
    let mounted = endpoints(OpenApiRouter::default()).into_openapi();
    let mut table = Vec::new();
    for (path, item) in mounted.paths.paths {
        for (method, operation) in [
            (Method::GET, &item.get),
            (Method::PUT, &item.put),
            (Method::POST, &item.post),
            (Method::DELETE, &item.delete),
            (Method::OPTIONS, &item.options),
            (Method::HEAD, &item.head),
            (Method::PATCH, &item.patch),
            (Method::TRACE, &item.trace),
        ] {
            if operation.is_some() {
                table.push((method, path.clone()));
            }
        }
    }
    table.sort_by(|a, b| (&a.1, a.0.as_str()).cmp(&(&b.1, b.0.as_str())));
    table
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.config.http.body_limit;
    let keys = Arc::new(auth::Keys::from_config(&state.config, state.clock.clone()));
    // Routes come from `endpoints` only: one added here with `.route` would go undocumented.
    let (routes, _) = endpoints(OpenApiRouter::default()).split_for_parts();
    routes
        .fallback(not_found)
        // Every route is authenticated; the request counter sees the refusals too.
        .route_layer(axum::middleware::from_fn_with_state(
            keys,
            auth::authenticate,
        ))
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
                // `tenant` is filled in once the bearer token is checked.
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id = %id, tenant = tracing::field::Empty)
            }),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(axum::middleware::map_response(browser::unbuffered_streams))
        // Outermost: a preflight is answered before authentication, which it cannot pass.
        .layer(tower::util::option_layer(browser::cors(&state.config.http.cors)))
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
    // The front door waits for its run, which is bounded by the run's own deadlines.
    if request.uri().path().starts_with(openai::PATH_PREFIX) {
        return next.run(request).await;
    }
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
