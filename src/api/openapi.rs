//! The OpenAPI 3.1 document of the API, served at `GET /openapi.json`.
//!
//! Operations come from the `#[utoipa::path]` annotations on the handlers, registered
//! together with their routes in [`super::router`]; this module holds the document's
//! header, the schemas of what the handlers render by hand (event streams), and the
//! string enumerations whose values are read from the code's own types.

use std::borrow::Cow;
use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{OpenApi, PartialSchema, ToSchema};

use crate::run::{Class, ErrorKind, Status, TimeoutOrigin};
use crate::store::EventKind;

/// The document's header and the components that no operation reaches by itself.
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
    tags(
        (name = "runs", description = "Enqueue runs, read them, cancel them."),
        (name = "events", description = "Server-sent event streams of run lifecycle events."),
        (name = "operations", description = "Health, metrics and this document."),
    ),
    components(schemas(EventData, LaggedEvent))
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

/// Declares a string schema whose allowed values come from the code.
macro_rules! string_enum {
    ($(#[doc = $doc:literal])+ $ty:ident = $name:literal, $values:expr) => {
        $(#[doc = $doc])+
        pub(super) struct $ty;

        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                let values: Vec<String> = $values;
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some([$($doc),+].map(str::trim).join(" ")))
                    .enum_values(Some(values))
                    .into()
            }
        }

        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

string_enum!(
    /// `live`: a person is waiting; `background`: opportunistic work that may be refused
    /// or dropped and never delays live work.
    ClassName = "Class",
    Class::ALL.iter().map(|c| c.as_str().to_string()).collect()
);

string_enum!(
    /// A run's status: `queued` → `running` → one terminal status.
    StatusName = "RunStatus",
    Status::ALL.iter().map(|s| s.as_str().to_string()).collect()
);

string_enum!(
    /// Why a run timed out: `queue_wait` (never started within its queue deadline) or
    /// `generation` (its last attempt exceeded the per-attempt timeout).
    TimeoutOriginName = "TimeoutOrigin",
    [TimeoutOrigin::QueueWait, TimeoutOrigin::Generation]
        .iter()
        .map(|o| o.as_str().to_string())
        .collect()
);

string_enum!(
    /// How an attempt failed.
    ErrorKindName = "ErrorKind",
    ErrorKind::ALL.iter().map(|k| k.as_str().to_string()).collect()
);

string_enum!(
    /// The stable machine-readable code of an API error.
    ErrorCodeName = "ErrorCode",
    super::error::CODES.iter().map(|c| c.to_string()).collect()
);

string_enum!(
    /// `ok`; `degraded` (working, but something needs attention); `unavailable` (the
    /// database is unreachable: the response status is then 503).
    HealthStatusName = "HealthStatus",
    ["ok", "degraded", "unavailable"].map(String::from).to_vec()
);

string_enum!(
    /// The storage backend.
    BackendName = "DatabaseBackend",
    ["postgres", "sqlite"].map(String::from).to_vec()
);

string_enum!(
    /// The kind of a provider: any OpenAI-compatible chat-completions endpoint, Anthropic,
    /// or the built-in simulator.
    ProviderKindName = "ProviderKind",
    ["openai", "anthropic", "sim"].map(String::from).to_vec()
);

string_enum!(
    /// The type of a run lifecycle event (also the SSE `event:` name).
    EventTypeName = "EventType",
    {
        let mut types: Vec<String> = EventKind::ALL
            .iter()
            .map(|k| k.as_str().to_string())
            .collect();
        // Token deltas go only to the live stream (never the log) of runs enqueued with
        // `stream: true`.
        types.insert(2, "delta".to_string());
        types
    }
);

/// The JSON in the `data:` field of a run lifecycle event. Every event carries `id`,
/// `run_id`, `type`, `at` and `class`; the other fields depend on the type. The SSE
/// `id:` equals `id` and the SSE `event:` equals `type`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub(super) struct EventData {
    /// The event's id, increasing in commit order; resume after it with `Last-Event-ID`.
    id: i64,
    #[schema(value_type = String, format = "uuid")]
    run_id: String,
    #[serde(rename = "type")]
    #[schema(value_type = EventTypeName)]
    event_type: String,
    #[schema(format = DateTime)]
    at: String,
    #[schema(value_type = ClassName)]
    class: String,
    /// The attempt (1-based) the event is about: on `started`, `delta`, `attempt_failed`
    /// and the terminal event of a run that started.
    #[schema(nullable = false)]
    attempt: Option<u32>,
    /// `attempt_failed`, `failed`, `timed_out`: how the attempt failed.
    #[schema(value_type = Option<ErrorKindName>, nullable = false)]
    kind: Option<String>,
    /// `attempt_failed`, `failed`, `timed_out`: the provider's HTTP status, if it answered.
    status: Option<i32>,
    /// `attempt_failed`: when the next attempt is due (`null` when none follows).
    #[schema(format = DateTime)]
    retry_at: Option<String>,
    /// `attempt_failed`, `failed`, `timed_out`: a human-readable error message.
    #[schema(nullable = false)]
    message: Option<String>,
    /// `timed_out`: why the run timed out.
    #[schema(value_type = Option<TimeoutOriginName>, nullable = false)]
    timeout_origin: Option<String>,
    /// `queued` after a shutdown gave the attempt back (`released`), `dropped` (`stale`),
    /// and similar: why the event happened.
    #[schema(nullable = false)]
    reason: Option<String>,
    /// `delta`: the next piece of generated text.
    #[schema(nullable = false)]
    content: Option<String>,
}

/// The last event of a `GET /events` stream whose subscriber fell behind the live buffer;
/// the stream closes after it. Reconnect with `Last-Event-ID: <last_event_id>` to resume
/// without a gap.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub(super) struct LaggedEvent {
    /// Always `lagged`.
    #[serde(rename = "type")]
    #[schema(example = "lagged", pattern = "^lagged$")]
    event_type: String,
    /// How many live events this subscriber missed.
    missed: u64,
    /// The id of the last event sent on this stream (0 when none was).
    last_event_id: i64,
    message: String,
}

/// Describes an event-stream response body (the schema of each event's `data:` lies in
/// the description, since OpenAPI 3.1 has no keyword for it).
pub(super) struct EventStream;

impl PartialSchema for EventStream {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("text/event-stream")
            .description(Some(
                "A `text/event-stream` of run lifecycle events. Each event has `id:` (the \
                 event id, increasing), `event:` (the event type: see the `EventType` schema) \
                 and `data:` (one line of JSON: see the `EventData` schema). Keep-alive \
                 comments arrive at least every 15 s.",
            ))
            .into()
    }
}

impl ToSchema for EventStream {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("EventStream")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        for (name, schema) in [
            (EventTypeName::name(), EventTypeName::schema()),
            (ErrorKindName::name(), ErrorKindName::schema()),
            (TimeoutOriginName::name(), TimeoutOriginName::schema()),
            (ClassName::name(), ClassName::schema()),
        ] {
            schemas.push((name.into_owned(), schema));
        }
    }
}
