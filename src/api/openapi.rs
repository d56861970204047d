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
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, Ref, ResponseBuilder};

use super::auth::{Access, access_of};
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
            With tenants configured, every route but `GET /livez` (and `GET /metrics` unless \
            `auth.metrics_open = false`) needs `Authorization: Bearer <token>`: a tenant's \
            token sees only that tenant's runs (another tenant's run is a 404), and operator \
            routes take the admin token only. Without tenants every route is open. \
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
        (name = "tenants", description = "Tenants' usage of the day and their limits."),
    )
)]
pub(super) struct ApiDoc;

/// The name of the bearer security scheme in the document.
const BEARER: &str = "bearer";

/// Adds the bearer security scheme, and to every operation the security and the 401/403
/// answers its access rule gives (read from the same rule the middleware applies, so the
/// document cannot drift from it). `/metrics` is documented open, as by default.
pub(super) fn document_access(doc: &mut utoipa::openapi::OpenApi) {
    let mut http = Http::new(HttpAuthScheme::Bearer);
    http.description = Some(
        "A tenant's token or the admin token, as configured in `[[tenants]]` and `[auth]`. \
         Not needed in open mode (no tenants configured)."
            .into(),
    );
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(BEARER, SecurityScheme::Http(http));
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                Content::new(Some(Ref::from_schema_name("Error"))),
            )
            .build()
    };
    for (path, item) in doc.paths.paths.iter_mut() {
        let access = access_of(path, true);
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            if access == Access::Open {
                op.security = Some(Vec::new());
                continue;
            }
            op.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
            op.responses.responses.insert(
                "401".into(),
                error(
                    "`unauthorized`: tenants are configured and the `Authorization: Bearer` \
                     header is missing, malformed or holds an unknown token.",
                )
                .into(),
            );
            if access == Access::Operator {
                op.responses.responses.insert(
                    "403".into(),
                    error("`forbidden`: an operator route, and the token is a tenant's.").into(),
                );
            }
        }
    }
}

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
