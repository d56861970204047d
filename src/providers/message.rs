//! The assistant message a provider answered, in the OpenAI shape every provider reports
//! it in: content, tool calls, refusal, and the finish reason normalised next to the
//! provider's own value; and its assembly from the pieces of a streamed answer.

#![allow(
    clippy::result_large_err,
    reason = "ProviderError is the error type of the Provider trait; failures are the cold path"
)]

use std::collections::BTreeMap;

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use super::{DeltaSink, ProviderError, StreamDelta};
use crate::limits::RateLimitInfo;
use crate::run::ErrorKind;
use crate::store::ToolCallDelta;

/// The `type` of every tool call: functions are the only tools both wire formats share.
pub const FUNCTION_TYPE: &str = "function";

fn function_type() -> String {
    FUNCTION_TYPE.to_string()
}

/// A tool call the model made, as OpenAI writes it (`{id, type, function:{name, arguments}}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as the model wrote them: JSON text, not necessarily valid.
    #[serde(default)]
    pub arguments: String,
}

/// Why the model stopped, the same for every provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::ContentFilter => "content_filter",
        }
    }

    /// An OpenAI-compatible `finish_reason`; `function_call` is the deprecated name of
    /// `tool_calls`. A value outside the four is kept raw only.
    pub fn from_openai(raw: &str) -> Option<FinishReason> {
        match raw {
            "stop" => Some(FinishReason::Stop),
            "length" => Some(FinishReason::Length),
            "tool_calls" | "function_call" => Some(FinishReason::ToolCalls),
            "content_filter" => Some(FinishReason::ContentFilter),
            _ => None,
        }
    }

    /// An Anthropic `stop_reason`. `pause_turn` (a server tool paused the turn) has no
    /// OpenAI equivalent and is kept raw only.
    pub fn from_anthropic(raw: &str) -> Option<FinishReason> {
        match raw {
            "end_turn" | "stop_sequence" => Some(FinishReason::Stop),
            "max_tokens" | "model_context_window_exceeded" => Some(FinishReason::Length),
            "tool_use" => Some(FinishReason::ToolCalls),
            "refusal" => Some(FinishReason::ContentFilter),
            _ => None,
        }
    }
}

/// A successful attempt: the whole assistant message, its usage and the rate-limit headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderOutput {
    /// The text; `None` when the model answered with tool calls (or a refusal) only.
    pub content: Option<String>,
    pub tool_calls: Vec<ToolCall>,
    pub refusal: Option<String>,
    pub finish_reason: Option<FinishReason>,
    /// The provider's own finish value (`end_turn`, `max_tokens`, `stop`, …).
    pub raw_finish_reason: Option<String>,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    /// Rate-limit headers of the response, when the provider sent any.
    pub rate_limits: Option<RateLimitInfo>,
}

impl ProviderOutput {
    pub fn new(rate_limits: Option<RateLimitInfo>) -> ProviderOutput {
        ProviderOutput {
            content: None,
            tool_calls: Vec::new(),
            refusal: None,
            finish_reason: None,
            raw_finish_reason: None,
            prompt_tokens: None,
            completion_tokens: None,
            rate_limits,
        }
    }

    /// Records the provider's finish value and its normalised form.
    pub fn finish(&mut self, raw: &str, normalise: fn(&str) -> Option<FinishReason>) {
        self.finish_reason = normalise(raw);
        self.raw_finish_reason = Some(raw.to_string());
    }
}

/// A tool call being streamed: its pieces so far.
#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// Builds the output of a streamed answer, reporting each piece to the sink as it comes.
pub struct StreamedMessage<'a> {
    out: ProviderOutput,
    calls: BTreeMap<u32, PartialCall>,
    sink: &'a DeltaSink,
}

impl<'a> StreamedMessage<'a> {
    pub fn new(sink: &'a DeltaSink, rate_limits: Option<RateLimitInfo>) -> Self {
        StreamedMessage {
            out: ProviderOutput::new(rate_limits),
            calls: BTreeMap::new(),
            sink,
        }
    }

    pub fn text(&mut self, text: &str) {
        if text.is_empty() {
            return;
        }
        (self.sink)(StreamDelta::Text(text));
        self.out.content.get_or_insert_default().push_str(text);
    }

    pub fn refusal(&mut self, text: &str) {
        self.out.refusal.get_or_insert_default().push_str(text);
    }

    /// A piece of tool call `delta.index`: its id and name when it starts, then argument
    /// text. The pieces are joined by index, as the provider numbered them.
    pub fn tool_call(&mut self, delta: ToolCallDelta) {
        let call = self.calls.entry(delta.index).or_default();
        if let Some(id) = &delta.id {
            call.id.push_str(id);
        }
        if let Some(name) = &delta.name {
            call.name.push_str(name);
        }
        call.arguments.push_str(&delta.arguments);
        (self.sink)(StreamDelta::ToolCall(&delta));
    }

    /// Whether tool call `index` has received no argument text yet.
    pub fn arguments_empty(&self, index: u32) -> bool {
        self.calls
            .get(&index)
            .is_none_or(|c| c.arguments.is_empty())
    }

    pub fn usage(&mut self, prompt: Option<u32>, completion: Option<u32>) {
        self.out.prompt_tokens = prompt.or(self.out.prompt_tokens);
        self.out.completion_tokens = completion.or(self.out.completion_tokens);
    }

    pub fn finish(&mut self, raw: &str, normalise: fn(&str) -> Option<FinishReason>) {
        self.out.finish(raw, normalise);
    }

    /// The output so far, for what the pieces above do not cover.
    pub fn output(&mut self) -> &mut ProviderOutput {
        &mut self.out
    }

    /// The assembled output. A stream is complete when the provider sent its end marker
    /// (`done`) or, as some compatible servers close without one, a finish reason;
    /// otherwise it was cut short.
    pub fn end(mut self, done: bool, status: StatusCode) -> Result<ProviderOutput, ProviderError> {
        if !done && self.out.raw_finish_reason.is_none() {
            return Err(ProviderError {
                status: Some(status.as_u16()),
                ..ProviderError::new(
                    ErrorKind::Connection,
                    "the response stream ended before the provider finished",
                )
            });
        }
        self.out.tool_calls = std::mem::take(&mut self.calls)
            .into_values()
            .map(|c| ToolCall {
                id: c.id,
                kind: function_type(),
                function: FunctionCall {
                    name: c.name,
                    arguments: c.arguments,
                },
            })
            .collect();
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn every_anthropic_stop_reason_is_normalised() {
        for (raw, want) in [
            ("end_turn", Some("stop")),
            ("stop_sequence", Some("stop")),
            ("max_tokens", Some("length")),
            ("model_context_window_exceeded", Some("length")),
            ("tool_use", Some("tool_calls")),
            ("refusal", Some("content_filter")),
            ("pause_turn", None),
        ] {
            let got = FinishReason::from_anthropic(raw).map(FinishReason::as_str);
            assert_eq!(got, want, "{raw}");
        }
        for raw in ["stop", "length", "tool_calls", "content_filter"] {
            assert_eq!(
                FinishReason::from_openai(raw).map(FinishReason::as_str),
                Some(raw)
            );
        }
        assert_eq!(
            FinishReason::from_openai("function_call"),
            Some(FinishReason::ToolCalls)
        );
        assert_eq!(FinishReason::from_openai("eos"), None);
    }

    #[test]
    fn streamed_pieces_are_joined_by_index_and_reported() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let sink: DeltaSink = Arc::new(move |d: StreamDelta<'_>| {
            record.lock().unwrap().push(match d {
                StreamDelta::Text(t) => format!("text {t}"),
                StreamDelta::ToolCall(c) => format!("call {} {}", c.index, c.arguments),
            })
        });
        let mut m = StreamedMessage::new(&sink, None);
        let piece = |index, id: Option<&str>, name: Option<&str>, arguments: &str| ToolCallDelta {
            index,
            id: id.map(Into::into),
            name: name.map(Into::into),
            arguments: arguments.into(),
        };
        m.text("Let me look.");
        m.tool_call(piece(1, Some("b"), Some("time"), ""));
        m.tool_call(piece(0, Some("a"), Some("weather"), "{\"city\""));
        m.tool_call(piece(0, None, None, ":\"Oslo\"}"));
        assert!(m.arguments_empty(1));
        m.finish("tool_calls", FinishReason::from_openai);
        let out = m.end(false, StatusCode::OK).unwrap();
        assert_eq!(out.content.as_deref(), Some("Let me look."));
        assert_eq!(out.tool_calls.len(), 2);
        assert_eq!(out.tool_calls[0].id, "a");
        assert_eq!(out.tool_calls[0].function.arguments, r#"{"city":"Oslo"}"#);
        assert_eq!(out.tool_calls[1].function.name, "time");
        assert_eq!(out.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(seen.lock().unwrap().len(), 4);

        let cut = StreamedMessage::new(&sink, None);
        let e = cut.end(false, StatusCode::OK).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Connection);
    }
}
