//! How a run event goes on the wire, both ways: the SSE `id:`, `event:` and `data:` the
//! streams send, and the `Last-Event-ID` a reconnecting client sends back.
//!
//! The `data:` of every event is serialised from [`EventData`] (or [`LaggedEvent`]), and
//! the OpenAPI schemas of the same names are derived from those types, so the document
//! describes exactly what is sent.

use std::borrow::Cow;

use axum::http::HeaderMap;
use axum::response::sse::Event;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{IntoResponses, PartialSchema, ToSchema};

use super::ApiError;
use super::openapi::{ClassName, ErrorKindName, EventTypeName, TimeoutOriginName};
use crate::providers::FUNCTION_TYPE;
use crate::run::RunId;
use crate::store::{Delta, RunEvent, rfc3339};

/// The SSE `event:` name and `type` of a streamed piece of content.
const DELTA_TYPE: &str = "delta";
/// The SSE `event:` name and `type` of the event that closes a lagging dashboard stream.
const LAGGED_TYPE: &str = "lagged";
const LAGGED_MESSAGE: &str = "this subscriber fell behind; reconnect with Last-Event-ID to resume";

/// The JSON in the `data:` field of a run event: a lifecycle event (the SSE `id:` equals
/// its `id`) or, on runs enqueued with `stream: true`, a delta of generated text. The SSE
/// `event:` equals `type`.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub(super) enum EventData<'a> {
    Lifecycle(LifecycleEvent),
    Delta(DeltaEvent<'a>),
    Batch(BatchEvent),
}

/// An event about a batch rather than one run (`batch_paused`, `batch_resumed`,
/// `batch_finished`), on `GET /events` streams that the batch's filters let through.
#[derive(Serialize, ToSchema)]
pub(super) struct BatchEvent {
    /// The event's id, in the same sequence as run events.
    id: i64,
    #[schema(value_type = String, format = "uuid")]
    batch_id: String,
    #[serde(rename = "type")]
    #[schema(value_type = EventTypeName)]
    event_type: &'static str,
    #[schema(format = DateTime)]
    at: String,
    /// `batch_finished`: the batch's runs, their final counts by status (every status
    /// listed) and the tokens they used.
    #[serde(flatten)]
    #[schema(value_type = Option<BatchFinishedDetail>)]
    detail: Option<serde_json::Value>,
}

/// What `batch_finished` adds to a batch event.
#[derive(ToSchema)]
#[allow(
    dead_code,
    reason = "describes the stored batch_finished data in the OpenAPI document"
)]
pub(super) struct BatchFinishedDetail {
    run_count: i64,
    /// Runs per status, every status listed.
    #[schema(value_type = Object)]
    counts: serde_json::Value,
    prompt_tokens: i64,
    completion_tokens: i64,
}

/// A lifecycle event, as written to the event log. Every one carries `id`, `run_id`,
/// `type`, `at` and `class`; the other fields depend on the type.
#[derive(Serialize, ToSchema)]
pub(super) struct LifecycleEvent {
    /// The event's id, increasing in commit order; resume after it with `Last-Event-ID`.
    id: i64,
    #[schema(value_type = String, format = "uuid")]
    run_id: RunId,
    #[serde(rename = "type")]
    #[schema(value_type = EventTypeName)]
    event_type: &'static str,
    #[schema(format = DateTime)]
    at: String,
    /// The attempt (1-based) the event is about: on `started`, `attempt_failed` and the
    /// terminal event of a run that started.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    attempt: Option<u32>,
    #[schema(value_type = ClassName)]
    class: &'static str,
    #[serde(flatten)]
    detail: EventDetail,
}

/// The fields of a lifecycle event that depend on its type.
// Read from the event's stored `data` and sent in the order and with the presence they
// were stored with: `status` and `retry_at` are sometimes present as `null`, sometimes
// absent.
#[derive(Default, Deserialize, Serialize, ToSchema)]
pub(super) struct EventDetail {
    /// `attempt_failed`, `failed`, `timed_out`: how the attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<ErrorKindName>, nullable = false)]
    kind: Option<String>,
    /// `attempt_failed`, `failed`, `timed_out`: the provider's HTTP status, if it answered.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<i32>)]
    status: Option<Option<i32>>,
    /// `attempt_failed`: when the next attempt is due (`null` when none follows).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, format = DateTime)]
    retry_at: Option<Option<String>>,
    /// `attempt_failed`, `failed`, `timed_out`: a human-readable error message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    message: Option<String>,
    /// `timed_out`: why the run timed out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<TimeoutOriginName>, nullable = false)]
    timeout_origin: Option<String>,
    /// `queued` after a shutdown gave the attempt back (`released`), `dropped` (`stale`),
    /// and similar: why the event happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    reason: Option<String>,
}

/// A field that was present (possibly `null`) is `Some`; serde's `default` leaves an
/// absent one `None`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// The next piece of text, or of a tool call, a streaming attempt generated: live only,
/// never in the event log. Its SSE `id:` is `N-S`: the S-th delta of the attempt that
/// event `N` started.
// The fields are in alphabetical order, the order deltas have always been sent in.
#[derive(Serialize, ToSchema)]
pub(super) struct DeltaEvent<'a> {
    #[schema(format = DateTime)]
    at: String,
    /// The attempt (1-based) that generated the text.
    attempt: u32,
    /// The next piece of generated text (empty on a piece of a tool call).
    content: &'a str,
    #[schema(value_type = String, format = "uuid")]
    run_id: RunId,
    /// 1, 2, 3… within the attempt.
    seq: u64,
    /// On a piece of a tool call only: that piece, as OpenAI streams it (one item).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    tool_calls: Option<[ToolCallPiece<'a>; 1]>,
    /// Always `delta`.
    #[serde(rename = "type")]
    #[schema(example = "delta", pattern = "^delta$")]
    event_type: &'static str,
}

/// A piece of a streamed tool call: the call's `id`, `type` and function `name` come with
/// its first piece, then `arguments` text arrives piece by piece. `index` tells the calls
/// of one answer apart; joining the `arguments` of one index gives the call's arguments.
#[derive(Serialize, ToSchema)]
#[schema(as = DeltaToolCall)]
pub(super) struct ToolCallPiece<'a> {
    index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    id: Option<&'a str>,
    /// `function`, on the first piece.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, pattern = "^function$")]
    kind: Option<&'static str>,
    function: FunctionPiece<'a>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = DeltaFunctionCall)]
pub(super) struct FunctionPiece<'a> {
    /// On the first piece.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    name: Option<&'a str>,
    /// The next piece of the arguments' JSON text (possibly empty).
    arguments: &'a str,
}

/// The last event of a `GET /events` stream whose subscriber fell behind the live buffer;
/// the stream closes after it. Reconnect with `Last-Event-ID: <last_event_id>` to resume
/// without a gap.
#[derive(Serialize, ToSchema)]
pub(super) struct LaggedEvent {
    /// Always `lagged`.
    #[serde(rename = "type")]
    #[schema(example = "lagged", pattern = "^lagged$")]
    event_type: &'static str,
    /// How many live events this subscriber missed.
    missed: u64,
    /// The id of the last event sent on this stream (0 when none was).
    last_event_id: i64,
    message: &'static str,
}

/// A lifecycle event from the log or the hub.
pub(super) fn render(e: &RunEvent) -> Event {
    let detail = match &e.data {
        None => EventDetail::default(),
        Some(data) => serde_json::from_str(data.get()).unwrap_or_else(|error| {
            tracing::warn!(event_id = e.id, %error, "unreadable event data; sent without it");
            EventDetail::default()
        }),
    };
    if e.kind.is_batch() {
        return render_batch(e);
    }
    let data = EventData::Lifecycle(LifecycleEvent {
        id: e.id,
        run_id: e.run_id,
        event_type: e.kind.as_str(),
        at: rfc3339(e.at),
        attempt: e.attempt,
        class: e.class.as_str(),
        detail,
    });
    logged_event(e, data)
}

/// An event of the log on the wire: its id, its type as the SSE `event:`, and `data`.
fn logged_event(e: &RunEvent, data: EventData<'_>) -> Event {
    Event::default()
        .id(e.id.to_string())
        .event(e.kind.as_str())
        .json_data(data)
        .expect("event data serialises")
}

/// A batch event from the log or the hub.
fn render_batch(e: &RunEvent) -> Event {
    let detail = e.data.as_ref().and_then(|data| {
        serde_json::from_str(data.get())
            .inspect_err(|error| {
                tracing::warn!(event_id = e.id, %error, "unreadable batch event data; sent without it");
            })
            .ok()
    });
    let data = EventData::Batch(BatchEvent {
        id: e.id,
        batch_id: e.batch.clone().unwrap_or_default(),
        event_type: e.kind.as_str(),
        at: rfc3339(e.at),
        detail,
    });
    logged_event(e, data)
}

/// A delta of the attempt that lifecycle event `event_id` started.
pub(super) fn render_delta(run: RunId, event_id: i64, d: &Delta) -> Event {
    let data = EventData::Delta(DeltaEvent {
        at: rfc3339(d.at),
        attempt: d.attempt,
        content: &d.content,
        run_id: run,
        seq: d.seq,
        tool_calls: d.tool_call.as_ref().map(|c| {
            [ToolCallPiece {
                index: c.index,
                id: c.id.as_deref(),
                kind: c.id.is_some().then_some(FUNCTION_TYPE),
                function: FunctionPiece {
                    name: c.name.as_deref(),
                    arguments: &c.arguments,
                },
            }]
        }),
        event_type: DELTA_TYPE,
    });
    Event::default()
        .id(format!("{event_id}-{}", d.seq))
        .event(DELTA_TYPE)
        .json_data(data)
        .expect("event data serialises")
}

/// The event that closes a dashboard stream which fell `missed` events behind after
/// sending event `last_event_id`. It has no `id:`: it is not in the log.
pub(super) fn render_lagged(missed: u64, last_event_id: i64) -> Event {
    let data = LaggedEvent {
        event_type: LAGGED_TYPE,
        missed,
        last_event_id,
        message: LAGGED_MESSAGE,
    };
    Event::default()
        .event(LAGGED_TYPE)
        .json_data(data)
        .expect("event data serialises")
}

/// Where a reconnecting client resumes: after lifecycle event `event`, and, when `delta`
/// is set, after that delta of the attempt `event` started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ResumePoint {
    pub event: i64,
    pub delta: Option<u64>,
}

/// The `Last-Event-ID` header, if the client sent one: an SSE `id:` this server wrote,
/// `N` (see [`render`]) or `N-S` (see [`render_delta`]).
pub(super) fn last_event_id(headers: &HeaderMap) -> Result<Option<ResumePoint>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = value.to_str().map_err(|_| not_an_event_id())?.trim();
    let (event, delta) = match text.split_once('-') {
        Some((event, delta)) => (
            event,
            Some(delta.parse::<u64>().map_err(|_| not_an_event_id())?),
        ),
        None => (text, None),
    };
    let event = event
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(not_an_event_id)?;
    Ok(Some(ResumePoint { event, delta }))
}

/// The answer to a `Last-Event-ID` this stream cannot resume from.
pub(super) fn not_an_event_id() -> ApiError {
    ApiError::invalid(
        "Last-Event-ID",
        "Last-Event-ID must be an event id received from this stream",
    )
}

/// Describes an event-stream response body (the schema of each event's `data:` lies in
/// the description, since OpenAPI 3.1 has no keyword for it). Its dependencies bring the
/// `EventData` and `LaggedEvent` schemas into the document.
pub(super) struct EventStream;

/// The `200` of an event-stream route, documented once. Never built: the field's type
/// names the body's schema, which `openapi::ApiDoc` registers.
#[derive(IntoResponses)]
#[response(
    status = 200,
    description = "The event stream.",
    content_type = "text/event-stream"
)]
pub(super) struct StreamOpened(EventStream);

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
            (EventData::name(), EventData::schema()),
            (LaggedEvent::name(), LaggedEvent::schema()),
            (EventTypeName::name(), EventTypeName::schema()),
        ] {
            schemas.push((name.into_owned(), schema));
        }
        EventData::schemas(schemas);
        LaggedEvent::schemas(schemas);
    }
}

#[cfg(test)]
mod tests;
