//! The fields of one run as a client sends them, and their validation, shared by
//! `POST /enqueue` (one run) and `POST /batches` (each run over the batch's defaults):
//! reading a JSON body, parsing it with errors naming the field, and building the
//! [`NewRun`] the dispatcher stores.

use std::fmt;
use std::ops::RangeInclusive;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::openapi::ClassName;
use super::{ApiError, AppState, Caller};
use crate::run::{
    Class, DEFAULT_PRIORITY, MAX_ATTEMPTS_RANGE, MAX_NAME_LEN, PRIORITY_RANGE, RunId,
};
use crate::store::{NewRun, RunSpec};

/// The body of `POST /enqueue`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = EnqueueRequest)]
pub(super) struct EnqueueBody {
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

impl EnqueueBody {
    /// The run as one of a batch: the batch's tenant, and the batch's id as its `batch`.
    pub(super) fn in_batch(self, tenant: Option<String>, batch: String) -> EnqueueBody {
        EnqueueBody {
            tenant,
            batch: Some(batch),
            ..self
        }
    }
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

/// The body of a JSON request, or the error for a body that is not JSON or too large
/// (`limit` is the limit that applied).
pub(super) fn json_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    require_json(headers)?;
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::InvalidRequest {
                message: format!("cannot read the request body: {rejection}"),
                field: None,
            }
        }
    })
}

pub(super) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
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

pub(super) fn parse_body(body: &[u8]) -> Result<EnqueueBody, ApiError> {
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
pub(super) fn field_of(path: &str, message: &str) -> Option<String> {
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

pub(super) fn check_name(field: &str, value: &Option<String>) -> Result<(), ApiError> {
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

/// The run an enqueue body written as JSON describes, checked as `POST /enqueue` checks it
/// (the front door builds its runs so).
pub(super) fn run_from_json(
    state: &AppState,
    caller: &Caller,
    body: &serde_json::Value,
) -> Result<NewRun, ApiError> {
    let bytes = serde_json::to_vec(body).map_err(|e| ApiError::Internal(e.to_string()))?;
    build_run(state, caller, parse_body(&bytes)?)
}

/// The run `b` describes for `caller`, whose token decides the run's tenant (see
/// [`Caller::owner_of_new`]).
pub(super) fn build_run(
    state: &AppState,
    caller: &Caller,
    b: EnqueueBody,
) -> Result<NewRun, ApiError> {
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
