//! What browsers on other origins need: CORS for the configured origins
//! (`http.cors.allowed_origins`; preflights answered, the API's own methods and headers
//! allowed, the answer headers a client reads exposed), and event streams that proxies
//! pass on as they come (`X-Accel-Buffering: no`, so nginx does not buffer them).
//! An origin not allowed gets no CORS header at all, so its browser refuses the answer;
//! nothing else about the request changes.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::response::Response;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::CorsConfig;

/// How long a browser may keep a preflight's answer.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(600);

/// The request headers the API reads.
const REQUEST_HEADERS: [HeaderName; 7] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    HeaderName::from_static("last-event-id"),
    HeaderName::from_static("idempotency-key"),
    HeaderName::from_static("x-sluice-class"),
    HeaderName::from_static("x-sluice-priority"),
    HeaderName::from_static("x-request-id"),
];

/// The answer headers a client reads.
const EXPOSED_HEADERS: [HeaderName; 4] = [
    header::RETRY_AFTER,
    header::LOCATION,
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("x-sluice-run-id"),
];

/// The CORS layer for `config`; `None` when no origin is allowed.
pub(super) fn cors(config: &CorsConfig) -> Option<CorsLayer> {
    if config.allowed_origins.is_empty() {
        return None;
    }
    let origins = if config.any() {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            config
                .allowed_origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers(REQUEST_HEADERS)
            .expose_headers(EXPOSED_HEADERS)
            .max_age(PREFLIGHT_MAX_AGE),
    )
}

/// Marks event streams unbuffered for proxies.
pub(super) async fn unbuffered_streams(response: Response) -> Response {
    let mut response = response;
    let is_stream = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if is_stream {
        response.headers_mut().insert(
            HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        );
    }
    response
}
