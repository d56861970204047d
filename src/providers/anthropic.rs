//! The `anthropic` provider: the Messages API (`POST {base_url}/v1/messages`), fed from the
//! OpenAI chat shape every run is enqueued in, answered whole or streamed as SSE.

#![allow(
    clippy::result_large_err,
    reason = "ProviderError is the error type of the Provider trait; failures are the cold path"
)]

use std::collections::HashMap;
use std::pin::pin;

use futures::StreamExt;
use futures::future::BoxFuture;
use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use super::ProviderSetupError;
use super::anthropic_request::{Converted, convert};
use super::http::{self, ApiKey};
use super::message::{FUNCTION_TYPE, FinishReason, FunctionCall, StreamedMessage, ToolCall};
use super::{AttemptRequest, DeltaSink, Provider, ProviderError, ProviderOutput};
use crate::config::ProviderConfig;
use crate::limits::RateLimitInfo;
use crate::run::ErrorKind;
use crate::store::ToolCallDelta;

pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// The arguments of a tool called without input.
const EMPTY_INPUT: &str = "{}";

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
        // Refused at enqueue already; a run stored before that check lands here.
        let Converted { body, json_tool } = convert(
            attempt.request.get(),
            attempt.model,
            attempt.deltas.is_some(),
        )
        .map_err(|e| ProviderError {
            status: Some(400),
            ..ProviderError::new(ErrorKind::Client, e.to_string())
        })?;
        // `.json` sets `content-type: application/json`.
        let request = self
            .client
            .post(self.url.clone())
            .header("anthropic-version", self.version.clone())
            .json(&body);
        let key_header = HeaderName::from_static("x-api-key");
        let (response, rate_limits) =
            http::send_keyed(request, self.key.as_ref(), key_header).await?;
        match &attempt.deltas {
            None => Ok(http::json::<Reply>(response)
                .await?
                .into_output(rate_limits, json_tool)),
            Some(sink) => stream(response, sink, rate_limits, json_tool).await,
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
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    /// Kept as sent, so the arguments keep the model's key order and text.
    #[serde(default)]
    input: Option<Box<RawValue>>,
}

#[derive(Clone, Copy, Default, Deserialize)]
struct Usage {
    #[serde(default)]
    input_tokens: Option<u32>,
    #[serde(default)]
    output_tokens: Option<u32>,
}

/// A `tool_use` block's input as JSON text.
fn input_text(input: Option<&RawValue>) -> &str {
    input.map_or(EMPTY_INPUT, RawValue::get)
}

/// The finish of a JSON-output answer: the forced tool call is the answer, so it stopped.
fn finish(out: &mut ProviderOutput, raw: &str, json_tool: Option<&str>) {
    out.finish(raw, FinishReason::from_anthropic);
    if json_tool.is_some() && out.finish_reason == Some(FinishReason::ToolCalls) {
        out.finish_reason = Some(FinishReason::Stop);
    }
}

impl Reply {
    /// Text blocks become the content, `tool_use` blocks OpenAI tool calls (or, for the
    /// JSON-output tool, the content); other blocks carry nothing to report.
    fn into_output(
        self,
        rate_limits: Option<RateLimitInfo>,
        json_tool: Option<&str>,
    ) -> ProviderOutput {
        let usage = self.usage.unwrap_or_default();
        let mut out = ProviderOutput::new(rate_limits);
        for block in self.content {
            match block.kind.as_str() {
                "text" => out
                    .content
                    .get_or_insert_default()
                    .push_str(block.text.as_deref().unwrap_or_default()),
                "tool_use" if json_tool.is_some() && block.name.as_deref() == json_tool => {
                    out.content
                        .get_or_insert_default()
                        .push_str(input_text(block.input.as_deref()));
                }
                "tool_use" => out.tool_calls.push(ToolCall {
                    id: block.id.unwrap_or_default(),
                    kind: FUNCTION_TYPE.to_string(),
                    function: FunctionCall {
                        name: block.name.unwrap_or_default(),
                        arguments: input_text(block.input.as_deref()).to_string(),
                    },
                }),
                _ => {}
            }
        }
        if let Some(reason) = &self.stop_reason {
            finish(&mut out, reason, json_tool);
        }
        out.prompt_tokens = usage.input_tokens;
        out.completion_tokens = usage.output_tokens;
        out
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

/// What a streamed content block is, by the block's index.
enum StreamedBlock {
    /// A tool call: the OpenAI tool-call index it is reported under.
    Tool(u32),
    /// The JSON-output tool: its input is the answer's text.
    Json,
}

/// Reads the event stream until `message_stop`, reporting each piece of text and of a
/// tool call as it arrives.
async fn stream(
    response: reqwest::Response,
    sink: &DeltaSink,
    rate_limits: Option<RateLimitInfo>,
    json_tool: Option<&str>,
) -> Result<ProviderOutput, ProviderError> {
    let status = response.status();
    let mut events = pin!(http::events(response));
    let mut message = StreamedMessage::new(sink, rate_limits);
    let mut blocks: HashMap<u64, StreamedBlock> = HashMap::new();
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
            message.usage(tokens("input_tokens"), tokens("output_tokens"));
        }
        let index = data
            .get("index")
            .and_then(Value::as_u64)
            .unwrap_or_default();
        match text_at("/type").unwrap_or(&event.event) {
            "content_block_start" if text_at("/content_block/type") == Some("tool_use") => {
                let name = text_at("/content_block/name");
                if json_tool.is_some() && name == json_tool {
                    blocks.insert(index, StreamedBlock::Json);
                    continue;
                }
                let tool_index = blocks
                    .values()
                    .filter(|b| matches!(b, StreamedBlock::Tool(_)))
                    .count() as u32;
                blocks.insert(index, StreamedBlock::Tool(tool_index));
                message.tool_call(ToolCallDelta {
                    index: tool_index,
                    id: text_at("/content_block/id").map(Into::into),
                    name: name.map(Into::into),
                    arguments: String::new(),
                });
            }
            "content_block_delta" => match (text_at("/delta/type"), blocks.get(&index)) {
                (Some("text_delta"), _) => message.text(text_at("/delta/text").unwrap_or_default()),
                (Some("input_json_delta"), Some(StreamedBlock::Json)) => {
                    message.text(text_at("/delta/partial_json").unwrap_or_default())
                }
                (Some("input_json_delta"), Some(StreamedBlock::Tool(tool))) => {
                    let piece = text_at("/delta/partial_json").unwrap_or_default();
                    if !piece.is_empty() {
                        message.tool_call(ToolCallDelta {
                            index: *tool,
                            id: None,
                            name: None,
                            arguments: piece.to_string(),
                        });
                    }
                }
                _ => {}
            },
            // A tool called without input streams no JSON; its input is the empty object.
            "content_block_stop" => match blocks.get(&index) {
                Some(StreamedBlock::Tool(tool)) if message.arguments_empty(*tool) => {
                    message.tool_call(ToolCallDelta {
                        index: *tool,
                        id: None,
                        name: None,
                        arguments: EMPTY_INPUT.to_string(),
                    });
                }
                _ => {}
            },
            "message_delta" => {
                if let Some(reason) = text_at("/delta/stop_reason") {
                    finish(message.output(), reason, json_tool);
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
            // message_start, ping, thinking blocks, and whatever comes later.
            _ => {}
        }
    }
    message.end(done, status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_blocks_become_content_and_tool_calls() {
        let reply: Reply = serde_json::from_str(
            r#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"Hel"},{"type":"tool_use","id":"toolu_1","name":"weather","input":{"city":"Oslo"}},{"type":"text","text":"lo"}],"stop_reason":"tool_use","usage":{"input_tokens":12,"output_tokens":3}}"#,
        )
        .unwrap();
        let out = reply.into_output(None, None);
        let weather = ToolCall {
            id: "toolu_1".into(),
            kind: FUNCTION_TYPE.into(),
            function: FunctionCall {
                name: "weather".into(),
                arguments: r#"{"city":"Oslo"}"#.into(),
            },
        };
        assert_eq!(
            (out.content.as_deref(), out.tool_calls, out.finish_reason),
            (Some("Hello"), vec![weather], Some(FinishReason::ToolCalls))
        );
        assert_eq!(out.raw_finish_reason.as_deref(), Some("tool_use"));
        assert_eq!(out.prompt_tokens.zip(out.completion_tokens), Some((12, 3)));

        let tools_only: Reply = serde_json::from_str(
            r#"{"content":[{"type":"tool_use","id":"t","name":"f","input":{}}],"stop_reason":"tool_use"}"#,
        )
        .unwrap();
        assert_eq!(tools_only.into_output(None, None).content, None);

        let json_answer: Reply = serde_json::from_str(
            r#"{"content":[{"type":"tool_use","id":"t","name":"json_output","input":{"ok":true}}],"stop_reason":"tool_use"}"#,
        )
        .unwrap();
        let out = json_answer.into_output(
            None,
            Some(super::super::anthropic_request::JSON_OUTPUT_TOOL),
        );
        assert_eq!(out.content.as_deref(), Some(r#"{"ok":true}"#));
        assert!(out.tool_calls.is_empty());
        assert_eq!(out.finish_reason, Some(FinishReason::Stop));
    }

    #[test]
    fn stream_errors_are_classified() {
        let e = stream_error("overloaded_error", "Overloaded");
        assert_eq!((e.kind, e.status), (ErrorKind::Server, Some(529)));
        let e = stream_error("rate_limit_error", "slow down");
        assert_eq!((e.kind, e.status), (ErrorKind::RateLimited, Some(429)));
    }
}
