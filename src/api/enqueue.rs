//! `POST /enqueue`: validate the body, build the run, hand it to `Dispatcher::submit`,
//! render the answer.

use std::fmt;
use std::ops::RangeInclusive;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::error::{Body as ErrorBody, InternalError};
use super::openapi::{ClassName, StatusName};
use super::{ApiError, AppState, Caller};
use crate::run::{
    Class, DEFAULT_PRIORITY, MAX_ATTEMPTS_RANGE, MAX_NAME_LEN, PRIORITY_RANGE, RunId,
};
use crate::store::{NewRun, RunSpec};

/// The body of `POST /enqueue`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = EnqueueRequest)]
struct EnqueueBody {
    /// A configured provider's name.
    #[schema(min_length = 1, example = "sim")]
    provider: String,
    /// The model; the provider's `default_model` when absent.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    model: Option<String>,
    /// An OpenAI chat request `{"messages":[{"role":…,"content":…}], "max_tokens"?,
    /// "temperature"?, …}`: `messages` must hold at least one message; the rest passes
    /// through to the provider.
    #[schema(value_type = Object, example = json!({"messages": [{"role": "user", "content": "Hello"}]}))]
    request: Box<RawValue>,
    /// `live` (a person is waiting) or `background`.
    #[serde(default)]
    #[schema(value_type = Option<ClassName>, default = "live")]
    class: Option<Class>,
    /// 1 (most urgent) … 10; ordering within a class.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 10, default = 5)]
    priority: Option<i64>,
    /// The tenant the run belongs to. With tenants configured it is the bearer token's
    /// tenant: leave it out, or give that same name (another is refused with 400); an
    /// admin may name any configured tenant.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    tenant: Option<String>,
    /// Caps the in-flight runs that share this key.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    concurrency_key: Option<String>,
    /// A session, used by background quotas.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    session: Option<String>,
    /// A repeat with the same key returns the first run (status 200, same id) instead of
    /// creating another.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    idempotency_key: Option<String>,
    /// How many attempts the run may make; defaults to the provider's `max_attempts`, or
    /// the server's `retry.max_attempts`.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 50)]
    max_attempts: Option<i64>,
    /// Per-attempt generation timeout in milliseconds, at most the class's cap; adaptive
    /// when absent.
    #[serde(default)]
    #[schema(minimum = 1)]
    timeout_ms: Option<i64>,
    /// Deadline for the run's first start, in milliseconds from when it becomes due;
    /// defaults per class from the server's configuration.
    #[serde(default)]
    #[schema(minimum = 1)]
    queue_timeout_ms: Option<i64>,
    /// RFC 3339 time before which the run does not start.
    #[serde(default)]
    #[schema(format = DateTime, example = "2030-01-01T12:00:00Z")]
    run_at: Option<String>,
    /// Stream the provider's token deltas onto the run's event stream (`delta` events).
    #[serde(default)]
    #[schema(default = false)]
    stream: Option<bool>,
    /// Groups runs for progress and fairness.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    batch: Option<String>,
    /// An opaque JSON object, echoed back on the run.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    metadata: Option<Box<RawValue>>,
}

/// What the server checks of the OpenAI chat shape; everything else passes through.
#[derive(Deserialize)]
struct ChatShape {
    messages: Vec<MessageShape>,
}

#[derive(Deserialize)]
struct MessageShape {
    #[allow(dead_code)]
    role: String,
}

/// The reply to `POST /enqueue`.
#[derive(Serialize, ToSchema)]
pub(super) struct EnqueueReply {
    #[schema(value_type = String, format = "uuid")]
    id: RunId,
    /// `queued` for a new run; a repeated idempotency key answers with the first run's
    /// current status.
    #[schema(value_type = StatusName)]
    status: &'static str,
    links: Links,
}

/// Where to follow the run.
#[derive(Serialize, ToSchema)]
#[schema(as = RunLinks)]
struct Links {
    /// `/runs/{id}`
    #[serde(rename = "self")]
    this: String,
    /// `/runs/{id}/events`
    events: String,
}

/// `POST /enqueue`.
#[utoipa::path(
    post,
    path = "/enqueue",
    tag = "runs",
    summary = "Enqueue a run",
    description = "Validates the body and stores a new `queued` run. Nothing is half-written: \
        a rejected request leaves no run behind.",
    request_body(content = EnqueueBody, content_type = "application/json"),
    responses(
        (status = 202, description = "The run was created.", body = EnqueueReply,
            headers(("Location" = String, description = "`/runs/{id}`"))),
        (status = 200, description = "A run with this `idempotency_key` already exists: \
            the first run, as it stands now.", body = EnqueueReply,
            headers(("Location" = String, description = "`/runs/{id}`"))),
        (status = 400, description = "`invalid_request`: unknown provider, bad or unknown \
            field (named in `field`), malformed JSON.", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body exceeds the server's \
            limit.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: the body is not \
            `application/json`.", body = ErrorBody),
        (status = 429, description = "`admission_rejected`: refused by background admission \
            control or a quota (`reason` says which); `rate_limited`: the tenant enqueues \
            faster than its `enqueue_rate`; `budget_exhausted`: the tenant spent today's \
            `daily_tokens` or `daily_spend` (`reason` says which; `Retry-After` reaches the \
            next UTC midnight).", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
        (status = 503, description = "`unavailable`: the server is shutting down or the \
            database is unreachable.", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
        InternalError,
    )
)]
pub(super) async fn enqueue(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: state.config.http.body_limit,
            }
        } else {
            ApiError::InvalidRequest {
                message: format!("cannot read the request body: {rejection}"),
                field: None,
            }
        }
    })?;
    let parsed = parse_body(&body)?;
    let run = build_run(&state, &caller, parsed)?;
    let submitted = state.dispatcher.submit(run).await?;
    let (id, status) = (submitted.id, submitted.status.as_str());
    let code = if submitted.created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let reply = EnqueueReply {
        id,
        status,
        links: Links {
            this: format!("/runs/{id}"),
            events: format!("/runs/{id}/events"),
        },
    };
    let mut response = (code, Json(reply)).into_response();
    if let Ok(location) = format!("/runs/{id}").parse() {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "expected Content-Type: application/json, got {:?}",
            content_type
        )))
    }
}

fn parse_body(body: &[u8]) -> Result<EnqueueBody, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: EnqueueBody = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.to_string();
        let field = field_of(&path, &message);
        ApiError::InvalidRequest {
            message: format!("invalid JSON body: {message}"),
            field,
        }
    })?;
    de.end().map_err(|e| ApiError::InvalidRequest {
        message: format!("invalid JSON body: {e}"),
        field: None,
    })?;
    Ok(parsed)
}

/// The field an error is about: the path serde reached (which for an unknown field already
/// ends with its name), or, for a missing field, the parent path plus the name in the
/// "missing field `x`" message.
fn field_of(path: &str, message: &str) -> Option<String> {
    let at_root = path == "." || path.is_empty();
    if let Some(rest) = message.strip_prefix("missing field `")
        && let Some(end) = rest.find('`')
    {
        let name = &rest[..end];
        return Some(if at_root {
            name.to_string()
        } else {
            format!("{path}.{name}")
        });
    }
    (!at_root).then(|| path.to_string())
}

fn check_name(field: &str, value: &Option<String>) -> Result<(), ApiError> {
    if let Some(v) = value {
        if v.is_empty() {
            return Err(ApiError::invalid(
                field,
                format!("{field} must not be empty"),
            ));
        }
        if v.len() > MAX_NAME_LEN {
            return Err(ApiError::invalid(
                field,
                format!("{field} is longer than {MAX_NAME_LEN} bytes"),
            ));
        }
    }
    Ok(())
}

/// `value` as a `T` within `range`, or a 400 naming `field`. `low_note` says what the
/// lowest value means, where the message should tell.
fn within<T>(
    field: &str,
    value: i64,
    range: &RangeInclusive<T>,
    low_note: &str,
) -> Result<T, ApiError>
where
    T: TryFrom<i64> + PartialOrd + fmt::Display,
{
    T::try_from(value)
        .ok()
        .filter(|v| range.contains(v))
        .ok_or_else(|| {
            ApiError::invalid(
                field,
                format!(
                    "{field} must be between {}{low_note} and {}",
                    range.start(),
                    range.end()
                ),
            )
        })
}

fn build_run(state: &AppState, caller: &Caller, b: EnqueueBody) -> Result<NewRun, ApiError> {
    let config = &state.config;
    let Some(provider) = state.providers.get(&b.provider) else {
        let mut known: Vec<&str> = state.providers.names().collect();
        known.sort_unstable();
        return Err(ApiError::invalid(
            "provider",
            format!(
                "unknown provider {:?}; configured providers: {}",
                b.provider,
                known.join(", ")
            ),
        ));
    };
    let configured_default = config
        .provider(&b.provider)
        .and_then(|p| p.default_model.clone());
    let model = match (b.model.clone(), configured_default) {
        (Some(m), _) => m,
        (None, Some(m)) => m,
        (None, None) => {
            return Err(ApiError::invalid(
                "model",
                format!(
                    "provider {:?} has no default_model configured; name a model",
                    provider.name
                ),
            ));
        }
    };
    for (field, value) in [
        ("model", &b.model),
        ("tenant", &b.tenant),
        ("concurrency_key", &b.concurrency_key),
        ("session", &b.session),
        ("idempotency_key", &b.idempotency_key),
        ("batch", &b.batch),
    ] {
        check_name(field, value)?;
    }
    let tenant = caller.owner_of_new(b.tenant, config)?;
    match serde_json::from_str::<ChatShape>(b.request.get()) {
        Ok(chat) if chat.messages.is_empty() => {
            return Err(ApiError::invalid(
                "request.messages",
                "request.messages must hold at least one message",
            ));
        }
        Ok(_) => {}
        Err(e) => {
            return Err(ApiError::invalid(
                "request",
                format!(
                    "request must be an OpenAI chat request {{\"messages\":[{{\"role\":…,\"content\":…}}]}}: {e}"
                ),
            ));
        }
    }
    provider
        .check_request(&b.request)
        .map_err(|e| ApiError::invalid(e.field, e.message))?;
    if let Some(m) = &b.metadata
        && !m.get().trim_start().starts_with('{')
    {
        return Err(ApiError::invalid(
            "metadata",
            "metadata must be a JSON object",
        ));
    }
    let class = b.class.unwrap_or_default();
    let priority = match b.priority {
        None => DEFAULT_PRIORITY,
        Some(p) => within("priority", p, &PRIORITY_RANGE, " (most urgent)")?,
    };
    let max_attempts = match b.max_attempts {
        None => config
            .provider(&b.provider)
            .map_or(config.retry.max_attempts, |p| {
                p.retry(&config.retry).max_attempts
            }),
        Some(n) => within("max_attempts", n, &MAX_ATTEMPTS_RANGE, "")?,
    };
    let cap = match class {
        Class::Live => config.queue.live_attempt_timeout_cap,
        Class::Background => config.queue.background_attempt_timeout_cap,
    };
    if let Some(t) = b.timeout_ms
        && (t < 1 || t as u128 > cap.as_millis())
    {
        return Err(ApiError::invalid(
            "timeout_ms",
            format!(
                "timeout_ms must be between 1 and {} for {} runs",
                cap.as_millis(),
                class.as_str()
            ),
        ));
    }
    let now = state.clock.now();
    let due_at = match &b.run_at {
        None => now,
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map_err(|e| {
                ApiError::invalid(
                    "run_at",
                    format!("run_at must be an RFC 3339 time like 2030-01-01T12:00:00Z: {e}"),
                )
            })?
            .with_timezone(&Utc)
            .max(now),
    };
    let queue_timeout = match b.queue_timeout_ms {
        Some(ms) if ms < 1 => {
            return Err(ApiError::invalid(
                "queue_timeout_ms",
                "queue_timeout_ms must be at least 1",
            ));
        }
        Some(ms) => chrono::Duration::milliseconds(ms),
        None => chrono::Duration::from_std(match class {
            Class::Live => config.queue.live_queue_timeout,
            Class::Background => config.queue.background_queue_timeout,
        })
        .unwrap_or(chrono::Duration::MAX),
    };
    Ok(NewRun {
        id: RunId::new(),
        spec: RunSpec {
            provider: b.provider,
            model: Some(model),
            class,
            priority,
            tenant,
            concurrency_key: b.concurrency_key,
            stream: b.stream.unwrap_or(false),
            timeout_ms: b.timeout_ms.map(|t| t as i32),
        },
        request: b.request,
        session: b.session,
        batch: b.batch,
        idempotency_key: b.idempotency_key,
        metadata: b.metadata,
        max_attempts: max_attempts as i16,
        // The deadline counts from when the run becomes due, so a scheduled run is not
        // dropped for waiting until its own start time.
        queue_deadline_at: due_at.checked_add_signed(queue_timeout),
        due_at,
        created_at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_payloads_survive_path_tracking() {
        let body = br#"{"provider":"sim","request":{"messages":[{"role":"user","content":"hi"}]},"metadata":{"a":1}}"#;
        let parsed = parse_body(body).unwrap();
        assert_eq!(
            parsed.request.get(),
            r#"{"messages":[{"role":"user","content":"hi"}]}"#
        );
        assert_eq!(parsed.metadata.unwrap().get(), r#"{"a":1}"#);
    }

    #[test]
    fn errors_name_the_field() {
        let missing = parse_body(br#"{"request":{"messages":[]}}"#).unwrap_err();
        assert!(
            matches!(missing, ApiError::InvalidRequest { field: Some(ref f), .. } if f == "provider"),
            "{missing:?}"
        );
        let unknown = parse_body(br#"{"provider":"sim","request":{},"colour":1}"#).unwrap_err();
        assert!(
            matches!(unknown, ApiError::InvalidRequest { field: Some(ref f), .. } if f == "colour"),
            "{unknown:?}"
        );
        let wrong =
            parse_body(br#"{"provider":"sim","request":{},"priority":"high"}"#).unwrap_err();
        assert!(
            matches!(wrong, ApiError::InvalidRequest { field: Some(ref f), .. } if f == "priority"),
            "{wrong:?}"
        );
        let trailing = parse_body(br#"{"provider":"sim","request":{}} x"#).unwrap_err();
        assert!(matches!(trailing, ApiError::InvalidRequest { .. }));
    }
}
