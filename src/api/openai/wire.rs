//! What the front door answers, in OpenAI's own shapes: a chat completion, the chunks of
//! a streamed one (text and tool-call deltas, the final chunk, the usage chunk), the model
//! list and the error object, so an OpenAI client reads them as it reads OpenAI's.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};

use crate::api::ApiError;
use crate::store::{RunView, ToolCallDelta};

/// The `id` OpenAI clients see for a run: the run id with OpenAI's prefix.
pub(super) fn completion_id(view_id: &crate::run::RunId) -> String {
    format!("chatcmpl-{}", view_id.0.simple())
}

/// `usage` of a finished run; zeros where the provider reported nothing.
fn usage(run: &RunView) -> Value {
    let prompt = run.prompt_tokens.unwrap_or(0);
    let completion = run.completion_tokens.unwrap_or(0);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

/// The fields every completion and chunk of one run share.
pub(super) struct Header {
    pub id: String,
    pub created: i64,
    pub model: String,
}

impl Header {
    pub(super) fn of(run: &RunView) -> Header {
        Header {
            id: completion_id(&run.id),
            created: run.created_at.timestamp(),
            model: run.spec.model.clone().unwrap_or_default(),
        }
    }
}

/// `chat.completion` for a completed run.
pub(super) fn completion(run: &RunView) -> Value {
    let h = Header::of(run);
    let output = run.output.as_ref();
    let mut message = json!({
        "role": "assistant",
        "content": output.and_then(|o| o.content.clone()),
        "refusal": output.and_then(|o| o.refusal.clone()),
    });
    if let Some(calls) = output.and_then(|o| o.tool_calls.clone()) {
        message["tool_calls"] = calls;
    }
    json!({
        "id": h.id,
        "object": "chat.completion",
        "created": h.created,
        "model": h.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": output.and_then(|o| o.finish_reason.clone()).unwrap_or_else(|| "stop".into()),
        }],
        "usage": usage(run),
        "system_fingerprint": null,
    })
}

/// One `chat.completion.chunk` carrying `delta` (and `finish_reason` on the last).
pub(super) fn chunk(h: &Header, delta: Value, finish_reason: Option<&str>) -> Value {
    let mut chunk = chunk_of(h);
    chunk["choices"] = json!([{
        "index": 0,
        "delta": delta,
        "logprobs": null,
        "finish_reason": finish_reason,
    }]);
    chunk
}

/// The usage chunk of `stream_options.include_usage`: no choices, the run's usage.
pub(super) fn usage_chunk(h: &Header, run: &RunView) -> Value {
    let mut chunk = chunk_of(h);
    chunk["choices"] = json!([]);
    chunk["usage"] = usage(run);
    chunk
}

/// What every chunk of a stream says alike.
fn chunk_of(h: &Header) -> Value {
    json!({
        "id": h.id,
        "object": "chat.completion.chunk",
        "created": h.created,
        "model": h.model,
        "system_fingerprint": null,
    })
}

/// The delta of a piece of text.
pub(super) fn text_delta(content: &str) -> Value {
    json!({ "content": content })
}

/// The delta of a piece of a tool call: the call's id, type and name when it starts,
/// then its arguments bit by bit, told apart by `index`.
pub(super) fn tool_call_delta(piece: &ToolCallDelta) -> Value {
    let mut call = json!({
        "index": piece.index,
        "function": { "arguments": piece.arguments },
    });
    if let Some(id) = &piece.id {
        call["id"] = json!(id);
        call["type"] = json!("function");
    }
    if let Some(name) = &piece.name {
        call["function"]["name"] = json!(name);
    }
    json!({ "tool_calls": [call] })
}

/// The whole answer of a run as deltas, for a stream that saw none of its pieces (the
/// attempt ran in another process, or the provider answered whole): its text, then each
/// tool call whole.
pub(super) fn whole_answer_deltas(run: &RunView) -> Vec<Value> {
    let Some(output) = &run.output else {
        return Vec::new();
    };
    let mut deltas = Vec::new();
    if let Some(text) = output.content.as_deref().filter(|t| !t.is_empty()) {
        deltas.push(text_delta(text));
    }
    if let Some(refusal) = &output.refusal {
        deltas.push(json!({ "refusal": refusal }));
    }
    if let Some(Value::Array(calls)) = &output.tool_calls {
        for (index, call) in calls.iter().enumerate() {
            let mut call = call.clone();
            call["index"] = json!(index);
            deltas.push(json!({ "tool_calls": [call] }));
        }
    }
    deltas
}

/// OpenAI's error object with its status (and `Retry-After` where a retry helps).
#[derive(Debug)]
pub(super) struct OpenAiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's error `type`.
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<String>,
    pub retry_after_secs: Option<u64>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl OpenAiError {
    pub(super) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        OpenAiError {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after_secs: None,
        }
    }

    pub(super) fn invalid(param: &str, message: impl Into<String>) -> Self {
        OpenAiError {
            param: Some(param.to_string()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    pub(super) fn with_code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(code.into());
        self
    }

    pub(super) fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// The object a stream sends in place of the next chunk when the run fails after the
    /// answer began: OpenAI's clients raise it as an error.
    pub(super) fn body(&self) -> Value {
        serde_json::to_value(ErrorBody {
            error: ErrorDetail {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code.as_deref(),
            },
        })
        .unwrap_or(Value::Null)
    }
}

impl From<ApiError> for OpenAiError {
    fn from(e: ApiError) -> OpenAiError {
        let status = e.status();
        let kind = match status {
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        };
        let (param, retry_after) = match &e {
            ApiError::InvalidRequest { field, .. } => (field.clone(), None),
            ApiError::AdmissionRejected {
                retry_after_secs, ..
            } => (None, Some(*retry_after_secs)),
            _ => (None, None),
        };
        let message = match &e {
            ApiError::Internal(detail) => {
                tracing::error!(detail = %detail, "internal error");
                "internal error; the server log has the details".to_string()
            }
            other => other.to_string(),
        };
        let code = match &e {
            ApiError::AdmissionRejected { reason, .. } => reason.to_string(),
            other => other.code().to_string(),
        };
        OpenAiError {
            status,
            message,
            kind,
            param,
            code: Some(code),
            retry_after_secs: retry_after,
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        let retry = self
            .retry_after_secs
            .or((self.status == StatusCode::SERVICE_UNAVAILABLE).then_some(1));
        if let Some(secs) = retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
