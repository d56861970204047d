//! The `anthropic` provider: the Messages API (`POST {base_url}/v1/messages`), fed from the
//! OpenAI chat shape every run is enqueued in, answered whole or streamed as SSE.

#![allow(
    clippy::result_large_err,
    reason = "ProviderError is the error type of the Provider trait; failures are the cold path"
)]

use std::pin::pin;

use futures::StreamExt;
use futures::future::BoxFuture;
use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::ProviderSetupError;
use super::http::{self, ApiKey};
use super::{AttemptRequest, DeltaSink, Provider, ProviderError, ProviderOutput};
use crate::config::ProviderConfig;
use crate::limits::RateLimitInfo;
use crate::run::ErrorKind;

pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// Anthropic requires `max_tokens`; used when the request sets no limit.
pub const DEFAULT_MAX_TOKENS: u64 = 1024;

pub struct AnthropicProvider {
    client: reqwest::Client,
    url: reqwest::Url,
    key: Option<ApiKey>,
    version: HeaderValue,
}

impl std::fmt::Debug for AnthropicProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicProvider")
            .field("url", &self.url.as_str())
            .field("version", &self.version)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl AnthropicProvider {
    pub fn new(config: &ProviderConfig) -> Result<Self, ProviderSetupError> {
        let version = HeaderValue::from_str(&config.anthropic_version).map_err(|_| {
            ProviderSetupError::InvalidSetting {
                name: config.name.clone(),
                setting: "anthropic_version",
                reason: "not valid header text".into(),
            }
        })?;
        Ok(AnthropicProvider {
            client: http::client(config)?,
            url: http::endpoint(config, DEFAULT_BASE_URL, "/v1/messages")?,
            key: ApiKey::from_env(config, "")?,
            version,
        })
    }

    async fn attempt(&self, attempt: AttemptRequest<'_>) -> Result<ProviderOutput, ProviderError> {
        let body = convert(
            attempt.request.get(),
            attempt.model,
            attempt.deltas.is_some(),
        )?;
        // `.json` sets `content-type: application/json`.
        let mut request = self
            .client
            .post(self.url.clone())
            .header("anthropic-version", self.version.clone())
            .json(&body);
        if let Some(key) = &self.key {
            request = key.apply(request, HeaderName::from_static("x-api-key"));
        }
        let response = http::send(request).await?;
        let rate_limits = http::rate_limits(&response);
        match &attempt.deltas {
            None => {
                let reply: Reply = http::json(response).await?;
                Ok(reply.into_output(rate_limits))
            }
            Some(sink) => stream(response, sink, rate_limits).await,
        }
    }
}

impl Provider for AnthropicProvider {
    fn call<'a>(
        &'a self,
        attempt: AttemptRequest<'a>,
    ) -> BoxFuture<'a, Result<ProviderOutput, ProviderError>> {
        Box::pin(async move { http::redact_with(self.key.as_ref(), self.attempt(attempt).await) })
    }
}

/// What is read of the OpenAI-shaped request.
#[derive(Deserialize)]
struct ChatRequest {
    messages: Vec<ChatMessage>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    temperature: Option<Value>,
    #[serde(default)]
    top_p: Option<Value>,
    #[serde(default)]
    stop: Option<Value>,
}

#[derive(Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Value,
}

fn client_error(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ErrorKind::Client, message)
}

/// The Messages API body for an OpenAI chat request: system messages become `system`, the
/// rest `messages`; `max_tokens` is always set; `stop` becomes `stop_sequences`.
fn convert(request: &str, model: &str, stream: bool) -> Result<Value, ProviderError> {
    let chat: ChatRequest = serde_json::from_str(request)
        .map_err(|e| client_error(format!("invalid chat request: {e}")))?;
    let mut system = Vec::new();
    let mut messages = Vec::new();
    for (i, m) in chat.messages.iter().enumerate() {
        match m.role.as_str() {
            "system" | "developer" => system.push(system_text(i, &m.content)?),
            "user" | "assistant" => {
                messages.push(json!({ "role": m.role, "content": content(i, &m.content)? }))
            }
            other => {
                return Err(client_error(format!(
                    "messages[{i}]: role {other:?} is not supported by the anthropic provider"
                )));
            }
        }
    }
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert("messages".into(), messages.into());
    if !system.is_empty() {
        body.insert("system".into(), system.join("\n").into());
    }
    let max_tokens = chat
        .max_tokens
        .or(chat.max_completion_tokens)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    body.insert("max_tokens".into(), max_tokens.into());
    for (key, value) in [("temperature", chat.temperature), ("top_p", chat.top_p)] {
        if let Some(value) = value.filter(|v| !v.is_null()) {
            body.insert(key.into(), value);
        }
    }
    match chat.stop {
        Some(Value::String(s)) => {
            body.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(stops)) if !stops.is_empty() => {
            body.insert("stop_sequences".into(), stops.into());
        }
        _ => {}
    }
    if stream {
        body.insert("stream".into(), true.into());
    }
    Ok(body.into())
}

/// The text parts of a content value, as Anthropic content blocks.
fn text_parts(i: usize, parts: &[Value]) -> Result<Vec<Value>, ProviderError> {
    parts
        .iter()
        .map(|part| match part.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = part.get("text").and_then(Value::as_str).unwrap_or_default();
                Ok(json!({ "type": "text", "text": text }))
            }
            other => Err(client_error(format!(
                "messages[{i}]: content part type {:?} is not supported by the anthropic provider",
                other.unwrap_or("(none)")
            ))),
        })
        .collect()
}

fn content(i: usize, content: &Value) -> Result<Value, ProviderError> {
    match content {
        Value::String(s) => Ok(Value::String(s.clone())),
        Value::Array(parts) => Ok(Value::Array(text_parts(i, parts)?)),
        _ => Err(client_error(format!(
            "messages[{i}]: content must be a string or an array of text parts"
        ))),
    }
}

fn system_text(i: usize, value: &Value) -> Result<String, ProviderError> {
    match content(i, value)? {
        Value::String(s) => Ok(s),
        Value::Array(parts) => Ok(parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n")),
        _ => unreachable!("content() returns a string or an array"),
    }
}

#[derive(Deserialize)]
struct Reply {
    content: Vec<Block>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Block {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Clone, Copy, Default, Deserialize)]
struct Usage {
    #[serde(default)]
    input_tokens: Option<u32>,
    #[serde(default)]
    output_tokens: Option<u32>,
}

impl Reply {
    fn into_output(self, rate_limits: Option<RateLimitInfo>) -> ProviderOutput {
        let usage = self.usage.unwrap_or_default();
        ProviderOutput {
            content: self
                .content
                .iter()
                .filter(|b| b.kind == "text")
                .filter_map(|b| b.text.as_deref())
                .collect(),
            finish_reason: self.stop_reason,
            prompt_tokens: usage.input_tokens,
            completion_tokens: usage.output_tokens,
            rate_limits,
        }
    }
}

/// An `error` event: the provider failed after answering 200.
fn stream_error(kind: &str, message: &str) -> ProviderError {
    let (class, status) = match kind {
        "overloaded_error" => (ErrorKind::Server, 529),
        "rate_limit_error" => (ErrorKind::RateLimited, 429),
        "invalid_request_error" => (ErrorKind::Client, 400),
        "authentication_error" => (ErrorKind::Client, 401),
        "permission_error" => (ErrorKind::Client, 403),
        "not_found_error" => (ErrorKind::Client, 404),
        "request_too_large" => (ErrorKind::Client, 413),
        "timeout_error" => (ErrorKind::Server, 504),
        _ => (ErrorKind::Server, 500),
    };
    ProviderError {
        status: Some(status),
        ..ProviderError::new(class, format!("stream error: {kind}: {message}"))
    }
}

/// Reads the event stream until `message_stop`, reporting each text delta as it arrives.
async fn stream(
    response: reqwest::Response,
    sink: &DeltaSink,
    rate_limits: Option<RateLimitInfo>,
) -> Result<ProviderOutput, ProviderError> {
    let status = response.status();
    let mut events = pin!(http::events(response));
    let mut out = http::empty_output(rate_limits);
    let mut done = false;
    while let Some(event) = events.next().await {
        let event = event?;
        let data: Value = serde_json::from_str(&event.data).map_err(|e| {
            http::invalid_output(
                status,
                format!("unexpected stream event ({e}): {}", event.data),
            )
        })?;
        let text_at = |pointer: &str| data.pointer(pointer).and_then(Value::as_str);
        // message_start carries input tokens, message_delta the running output tokens.
        if let Some(usage) = data.get("usage").or_else(|| data.pointer("/message/usage")) {
            let tokens = |k: &str| usage.get(k).and_then(Value::as_u64).map(|n| n as u32);
            out.prompt_tokens = tokens("input_tokens").or(out.prompt_tokens);
            out.completion_tokens = tokens("output_tokens").or(out.completion_tokens);
        }
        match text_at("/type").unwrap_or(&event.event) {
            "content_block_delta" if text_at("/delta/type") == Some("text_delta") => {
                if let Some(text) = text_at("/delta/text").filter(|t| !t.is_empty()) {
                    sink(text);
                    out.content.push_str(text);
                }
            }
            "message_delta" => {
                if let Some(reason) = text_at("/delta/stop_reason") {
                    out.finish_reason = Some(reason.to_string());
                }
            }
            "message_stop" => {
                done = true;
                break;
            }
            "error" => {
                return Err(stream_error(
                    text_at("/error/type").unwrap_or("error"),
                    text_at("/error/message").unwrap_or(&event.data),
                ));
            }
            // message_start, content_block_start/stop, ping, and whatever comes later.
            _ => {}
        }
    }
    http::finish_stream(out, done, status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_request_is_converted() {
        let body = convert(
            r#"{"model":"ignored","messages":[
                {"role":"system","content":"Be brief."},
                {"role":"system","content":[{"type":"text","text":"Be kind."}]},
                {"role":"user","content":"Hi"},
                {"role":"assistant","content":"Hello!"},
                {"role":"user","content":[{"type":"text","text":"Again"}]}],
              "max_completion_tokens":50,"temperature":0.5,"top_p":0.9,"stop":"END"}"#,
            "claude-test",
            false,
        )
        .unwrap();
        assert_eq!(
            body,
            json!({
                "model": "claude-test",
                "system": "Be brief.\nBe kind.",
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": [{"type": "text", "text": "Again"}]},
                ],
                "max_tokens": 50,
                "temperature": 0.5,
                "top_p": 0.9,
                "stop_sequences": ["END"],
            })
        );
    }

    #[test]
    fn max_tokens_defaults_and_stream_flag() {
        let body = convert(
            r#"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":7,"max_completion_tokens":9,"stop":["a","b"]}"#,
            "m",
            true,
        )
        .unwrap();
        assert_eq!(body["max_tokens"], 7);
        assert_eq!(body["stream"], true);
        assert_eq!(body["stop_sequences"], json!(["a", "b"]));
        assert!(body.get("system").is_none());
        let body = convert(
            r#"{"messages":[{"role":"user","content":"Hi"}]}"#,
            "m",
            false,
        )
        .unwrap();
        assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS);
        assert!(body.get("stream").is_none());
    }

    #[test]
    fn unsupported_shapes_are_client_errors() {
        for request in [
            r#"{"messages":[{"role":"tool","content":"x"}]}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
            r#"{"messages":[{"role":"user","content":null}]}"#,
            r#"{"nope":1}"#,
        ] {
            let e = convert(request, "m", false).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Client, "{request}");
        }
    }

    #[test]
    fn reply_and_stream_errors_are_read() {
        let reply: Reply = serde_json::from_str(
            r#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"Hel"},{"type":"tool_use","id":"t","name":"f","input":{}},{"type":"text","text":"lo"}],"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":3}}"#,
        )
        .unwrap();
        let out = reply.into_output(None);
        assert_eq!(out.content, "Hello");
        assert_eq!(out.finish_reason.as_deref(), Some("end_turn"));
        assert_eq!(
            (out.prompt_tokens, out.completion_tokens),
            (Some(12), Some(3))
        );

        let e = stream_error("overloaded_error", "Overloaded");
        assert_eq!((e.kind, e.status), (ErrorKind::Server, Some(529)));
    }
}
