//! `GET /ui`: the status page, served from the binary (its three files are compiled in:
//! no build step, no CDN). It reads the same API as every client, with the bearer token a
//! person enters once for the tab: queue depths over time, providers (breaker, current
//! against configured and stated rate, in flight), slots per replica, recent runs live
//! over `/events`, and a run's detail with its attempts and live deltas.
//!
//! The page needs no token to load; everything it shows comes from routes that do. Its
//! answers forbid framing and any script or style not its own (Content-Security-Policy).

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

/// Only the page's own files; the API on the same origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
    img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // The files change with the binary; a reload checks again.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        body,
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    response
}

/// Declares the handler serving one of the page's files, with its OpenAPI operation.
macro_rules! ui_file {
    ($(#[$doc:meta])* $name:ident, $path:literal, $summary:literal, $media:literal, $body:expr) => {
        $(#[$doc])*
        #[utoipa::path(
            get,
            path = $path,
            tag = "ui",
            summary = $summary,
            responses((status = 200, description = $summary, content_type = $media))
        )]
        pub(super) async fn $name() -> Response {
            asset(concat!($media, "; charset=utf-8"), $body)
        }
    };
}

ui_file!(
    /// `GET /ui`.
    page, "/ui", "The status page", "text/html", INDEX
);
ui_file!(
    /// `GET /ui/app.js`.
    script, "/ui/app.js", "The status page's script", "text/javascript", APP_JS
);
ui_file!(
    /// `GET /ui/style.css`.
    style, "/ui/style.css", "The status page's style sheet", "text/css", STYLE
);
