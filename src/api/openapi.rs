//! The OpenAPI 3.1 document of the API, served at `GET /openapi.json`.
//!
//! Operations come from the `#[utoipa::path]` annotations on the handlers, registered
//! together with their routes in [`super::router`]; this module holds the document's
//! header and the string enumerations whose values are read from the code's own types
//! (declared with [`string_enum`], which the error contract uses for its codes too).

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::OpenApi;

use super::error::Body as ErrorBody;
use super::event_format::EventStream;
use crate::run::{Class, ErrorKind, Status, TimeoutOrigin};
use crate::store::EventKind;

/// The document's header; the operations and their schemas come from the routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Sluice",
        version = env!("CARGO_PKG_VERSION"),
        description = "Sluice is an HTTP job-orchestration server for LLM workloads. A client \
            enqueues a run (one chat request to one configured provider) and Sluice stores it \
            durably, dispatches it under per-provider adaptive rate limits, concurrency caps \
            and circuit breakers, retries failed attempts with backoff, and always serves live \
            work before background work. Clients follow a run by polling `GET /runs/{id}` or \
            by subscribing to its server-sent event stream; dashboards subscribe to `GET /events`. \
            Errors are JSON `{\"error\":{\"code\",\"message\",\"field\"?,\"reason\"?}}`, and \
            times are RFC 3339 strings in UTC with millisecond precision.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    // The bodies of the answers routes list by type (`IntoResponses`), which do not bring
    // their schemas into the document themselves.
    components(schemas(EventStream, ErrorBody)),
    tags(
        (name = "runs", description = "Enqueue runs, read them, cancel them."),
        (name = "batches", description = "Submit runs in batches; watch, pause, resume, cancel and export them."),
        (name = "events", description = "Server-sent event streams of run lifecycle events."),
        (name = "operations", description = "Health, metrics and this document."),
        (name = "openai", description = "The OpenAI-compatible front door: chat completions \
            and the model list, in OpenAI's own shapes."),
        (name = "ui", description = "The status page, served from the binary."),
    )
)]
pub(super) struct ApiDoc;

/// `GET /openapi.json`: this document, generated once from the code.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    summary = "This OpenAPI document",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document describing every route.",
            content_type = "application/json", body = Object),
    )
)]
pub(super) async fn openapi_json() -> axum::response::Response {
    static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
        serde_json::to_string(&super::openapi()).expect("the OpenAPI document serialises")
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
        .into_response()
}

/// Declares string schemas whose allowed values (`&str`s, in order) come from the code:
/// each entry is `/// description`, `TypeName = "SchemaName", values;`.
macro_rules! string_enum {
    ($($(#[doc = $doc:literal])+ $ty:ident = $name:literal, $values:expr;)+) => {$(
        $(#[doc = $doc])+
        pub(super) struct $ty;

        impl ::utoipa::PartialSchema for $ty {
            fn schema() -> ::utoipa::openapi::RefOr<::utoipa::openapi::schema::Schema> {
                let values: Vec<String> = $values.into_iter().map(String::from).collect();
                ::utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(::utoipa::openapi::schema::Type::String)
                    .description(Some([$($doc),+].map(str::trim).join(" ")))
                    .enum_values(Some(values))
                    .into()
            }
        }

        impl ::utoipa::ToSchema for $ty {
            fn name() -> ::std::borrow::Cow<'static, str> {
                ::std::borrow::Cow::Borrowed($name)
            }
        }
    )+};
}
pub(super) use string_enum;

string_enum! {
    /// `live`: a person is waiting; `background`: opportunistic work that may be refused
    /// or dropped and never delays live work.
    ClassName = "Class", Class::ALL.map(Class::as_str);

    /// A run's status: `queued` → `running` → one terminal status.
    StatusName = "RunStatus", Status::ALL.map(Status::as_str);

    /// Why a run timed out: `queue_wait` (never started within its queue deadline) or
    /// `generation` (its last attempt exceeded the per-attempt timeout).
    TimeoutOriginName = "TimeoutOrigin", TimeoutOrigin::ALL.map(TimeoutOrigin::as_str);

    /// How an attempt failed.
    ErrorKindName = "ErrorKind", ErrorKind::ALL.map(ErrorKind::as_str);

    /// `ok`; `degraded` (working, but something needs attention); `unavailable` (the
    /// database is unreachable: the response status is then 503).
    HealthStatusName = "HealthStatus", ["ok", "degraded", "unavailable"];

    /// The storage backend.
    BackendName = "DatabaseBackend", ["postgres", "sqlite"];

    /// The kind of a provider: any OpenAI-compatible chat-completions endpoint, Anthropic,
    /// or the built-in simulator.
    ProviderKindName = "ProviderKind", ["openai", "anthropic", "sim"];

    /// The type of a run lifecycle event (also the SSE `event:` name).
    EventTypeName = "EventType",
    {
        let mut types = EventKind::ALL.map(EventKind::as_str).to_vec();
        // Token deltas go only to the live stream (never the log) of runs enqueued with
        // `stream: true`.
        types.insert(2, "delta");
        types
    };
}
