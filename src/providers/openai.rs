//! The `openai` provider: any OpenAI-compatible `POST {base_url}/chat/completions`,
//! answered whole or streamed as server-sent events.

#![allow(
    clippy::result_large_err,
    reason = "ProviderError is the error type of the Provider trait; failures are the cold path"
)]

use std::pin::pin;

use futures::StreamExt;
use futures::future::BoxFuture;
use reqwest::header::AUTHORIZATION;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::ProviderSetupError;
use super::http::{self, ApiKey};
use super::message::{FinishReason, StreamedMessage, ToolCall};
use super::{AttemptRequest, DeltaSink, Provider, ProviderError, ProviderOutput};
use crate::config::ProviderConfig;
use crate::limits::RateLimitInfo;
use crate::run::ErrorKind;
use crate::store::ToolCallDelta;

pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

pub struct OpenAiProvider {
    client: reqwest::Client,
    url: reqwest::Url,
    key: Option<ApiKey>,
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("url", &self.url.as_str())
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl OpenAiProvider {
    pub fn new(config: &ProviderConfig) -> Result<Self, ProviderSetupError> {
        Ok(OpenAiProvider {
            client: http::client(config)?,
            url: http::endpoint(config, DEFAULT_BASE_URL, "/chat/completions")?,
            key: ApiKey::from_env(config, "Bearer ")?,
        })
    }

    async fn attempt(&self, attempt: AttemptRequest<'_>) -> Result<ProviderOutput, ProviderError> {
        let body = request_body(&attempt)?;
        let request = self.client.post(self.url.clone()).json(&body);
        let (response, rate_limits) =
            http::send_keyed(request, self.key.as_ref(), AUTHORIZATION).await?;
        match &attempt.deltas {
            None => http::json::<Reply>(response)
                .await?
                .into_output(rate_limits),
            Some(sink) => stream(response, sink, rate_limits).await,
        }
    }
}

impl Provider for OpenAiProvider {
    fn call<'a>(
        &'a self,
        attempt: AttemptRequest<'a>,
    ) -> BoxFuture<'a, Result<ProviderOutput, ProviderError>> {
        Box::pin(async move { http::redact_with(self.key.as_ref(), self.attempt(attempt).await) })
    }
}

/// The client's request with the attempt's model and the stream settings imposed.
fn request_body(attempt: &AttemptRequest<'_>) -> Result<Map<String, Value>, ProviderError> {
    let mut body: Map<String, Value> = serde_json::from_str(attempt.request.get())
        .map_err(|e| ProviderError::new(ErrorKind::Client, format!("invalid chat request: {e}")))?;
    body.insert("model".into(), attempt.model.into());
    if attempt.deltas.is_some() {
        body.insert("stream".into(), true.into());
        body.insert(
            "stream_options".into(),
            serde_json::json!({ "include_usage": true }),
        );
    } else {
        body.insert("stream".into(), false.into());
        body.remove("stream_options");
    }
    Ok(body)
}

#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
    /// Some compatible servers answer 200 with an error object.
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    message: Option<Message>,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

/// `choices[].message` of a whole answer.
#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCall>>,
    #[serde(default)]
    refusal: Option<String>,
}

/// `choices[].delta` of a stream chunk.
#[derive(Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallChunk>>,
}

/// A piece of a streamed tool call: `index` says which call it continues.
#[derive(Deserialize)]
struct ToolCallChunk {
    index: u32,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionChunk>,
}

#[derive(Deserialize)]
struct FunctionChunk {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Clone, Copy, Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: Option<u32>,
    #[serde(default)]
    completion_tokens: Option<u32>,
}

impl Reply {
    fn first(&self) -> Option<&Choice> {
        self.choices.iter().find(|c| c.index == 0)
    }

    fn into_output(
        mut self,
        rate_limits: Option<RateLimitInfo>,
    ) -> Result<ProviderOutput, ProviderError> {
        if let Some(error) = &self.error {
            return Err(embedded_error(error));
        }
        let at = self
            .choices
            .iter()
            .position(|c| c.index == 0)
            .ok_or_else(|| {
                http::invalid_output(reqwest::StatusCode::OK, "response holds no choices")
            })?;
        let choice = self.choices.swap_remove(at);
        let mut out = ProviderOutput::new(rate_limits);
        if let Some(message) = choice.message {
            out.content = message.content;
            out.tool_calls = message.tool_calls.unwrap_or_default();
            out.refusal = message.refusal;
        }
        if let Some(reason) = &choice.finish_reason {
            out.finish(reason, FinishReason::from_openai);
        }
        out.prompt_tokens = self.usage.and_then(|u| u.prompt_tokens);
        out.completion_tokens = self.usage.and_then(|u| u.completion_tokens);
        Ok(out)
    }
}

/// An error object inside a 200 answer or a stream: the provider failed after answering.
fn embedded_error(error: &Value) -> ProviderError {
    let body = serde_json::json!({ "error": error }).to_string();
    let message = http::error_message(body.as_bytes()).unwrap_or(body);
    ProviderError {
        status: Some(200),
        ..ProviderError::new(ErrorKind::Server, format!("provider error: {message}"))
    }
}

/// Reads `data:` chunks until `[DONE]`, reporting each piece of text and of a tool call
/// as it arrives.
async fn stream(
    response: reqwest::Response,
    sink: &DeltaSink,
    rate_limits: Option<RateLimitInfo>,
) -> Result<ProviderOutput, ProviderError> {
    let status = response.status();
    let mut events = pin!(http::events(response));
    let mut message = StreamedMessage::new(sink, rate_limits);
    let mut done = false;
    while let Some(event) = events.next().await {
        let event = event?;
        let data = event.data.trim();
        if data == "[DONE]" {
            done = true;
            break;
        }
        if data.is_empty() {
            continue;
        }
        let chunk: Reply = serde_json::from_str(data).map_err(|e| {
            http::invalid_output(status, format!("unexpected stream chunk ({e}): {data}"))
        })?;
        if let Some(error) = &chunk.error {
            return Err(embedded_error(error));
        }
        if let Some(usage) = chunk.usage {
            message.usage(usage.prompt_tokens, usage.completion_tokens);
        }
        let Some(choice) = chunk.first() else {
            continue;
        };
        if let Some(delta) = &choice.delta {
            message.text(delta.content.as_deref().unwrap_or_default());
            if let Some(refusal) = &delta.refusal {
                message.refusal(refusal);
            }
            for call in delta.tool_calls.iter().flatten() {
                let function = call.function.as_ref();
                message.tool_call(ToolCallDelta {
                    index: call.index,
                    id: call.id.clone(),
                    name: function.and_then(|f| f.name.clone()),
                    arguments: function
                        .and_then(|f| f.arguments.clone())
                        .unwrap_or_default(),
                });
            }
        }
        if let Some(reason) = &choice.finish_reason {
            message.finish(reason, FinishReason::from_openai);
        }
    }
    message.end(done, status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::RunId;
    use serde_json::value::RawValue;
    use std::sync::Arc;

    fn attempt<'a>(raw: &'a RawValue, deltas: Option<DeltaSink>) -> AttemptRequest<'a> {
        AttemptRequest {
            run_id: RunId::new(),
            attempt: 1,
            model: "gpt-test",
            request: raw,
            deltas,
        }
    }

    #[test]
    fn body_overrides_model_and_sets_stream() {
        let raw = RawValue::from_string(
            r#"{"model":"other","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":false},"temperature":0.2}"#.into(),
        )
        .unwrap();
        let body = request_body(&attempt(&raw, None)).unwrap();
        assert_eq!(body["model"], "gpt-test");
        assert_eq!(body["stream"], false);
        assert!(!body.contains_key("stream_options"));
        assert_eq!(body["temperature"], 0.2);

        let sink: DeltaSink = Arc::new(|_| {});
        let body = request_body(&attempt(&raw, Some(sink))).unwrap();
        assert_eq!(body["stream"], true);
        assert_eq!(body["stream_options"]["include_usage"], true);
    }

    #[test]
    fn reply_is_parsed() {
        let reply: Reply = serde_json::from_str(
            r#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"Hello"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#,
        )
        .unwrap();
        let out = reply.into_output(None).unwrap();
        assert_eq!(out.content.as_deref(), Some("Hello"));
        assert_eq!(out.finish_reason, Some(FinishReason::Stop));
        assert_eq!(out.raw_finish_reason.as_deref(), Some("stop"));
        assert_eq!(
            (out.prompt_tokens, out.completion_tokens),
            (Some(5), Some(2))
        );

        let tools: Reply = serde_json::from_str(
            r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"weather","arguments":"{\"city\":\"Oslo\"}"}}]},"finish_reason":"tool_calls"}]}"#,
        )
        .unwrap();
        let out = tools.into_output(None).unwrap();
        assert_eq!(out.content, None);
        assert_eq!(out.tool_calls[0].id, "call_1");
        assert_eq!(out.tool_calls[0].function.arguments, r#"{"city":"Oslo"}"#);
        assert_eq!(out.finish_reason, Some(FinishReason::ToolCalls));

        let refused: Reply = serde_json::from_str(
            r#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":"I can't help with that."},"finish_reason":"stop"}]}"#,
        )
        .unwrap();
        let out = refused.into_output(None).unwrap();
        assert_eq!(out.refusal.as_deref(), Some("I can't help with that."));

        let empty: Reply = serde_json::from_str(r#"{"choices":[]}"#).unwrap();
        assert_eq!(
            empty.into_output(None).unwrap_err().kind,
            ErrorKind::InvalidOutput
        );
        let error: Reply = serde_json::from_str(r#"{"error":{"message":"boom"}}"#).unwrap();
        let e = error.into_output(None).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Server);
        assert!(e.message.contains("boom"));
    }
}
