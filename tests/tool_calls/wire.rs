//! A fake LLM provider that speaks both wire formats exactly: OpenAI chat completions and
//! Anthropic messages, whole and streamed. It answers a request that offers the `weather`
//! tool with a call to it, and the follow-up that carries the tool's result with the final
//! text, after checking that every turn arrived in its wire format's own shape; a request
//! in the wrong shape gets a 400 naming what was wrong, so the run fails with that message.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, post};
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{Value, json};

pub const CITY_ARGUMENTS: &str = r#"{"city":"Oslo"}"#;
pub const TOOL_RESULT: &str = "12 C";
pub const FINAL_TEXT: &str = "It is 12 C in Oslo.";
/// The text an Anthropic model writes before its tool call.
pub const PREAMBLE: &str = "Let me check.";
/// A request with `max_tokens` at most this is cut short (Anthropic `max_tokens`).
pub const TINY_LIMIT: u64 = 5;
const OPENAI_CALL_ID: &str = "call_w1";
const ANTHROPIC_CALL_ID: &str = "toolu_w1";
/// The argument text, in the pieces a stream sends it in.
const ARGUMENT_PIECES: [&str; 3] = [r#"{"ci"#, r#"ty":"Os"#, r#"lo"}"#];
/// The pause between streamed events, as a real provider has.
const EVENT_GAP: Duration = Duration::from_millis(10);

/// What the model answers.
enum Answer {
    Text {
        text: &'static str,
        stop: &'static str,
    },
    Tool {
        preamble: Option<&'static str>,
        id: &'static str,
        stop: &'static str,
    },
}

/// Every request body the fake received, by path.
pub type Seen = Arc<Mutex<Vec<(String, Value)>>>;

/// Serves both wire formats on 127.0.0.1; returns the root URL and what it receives.
pub async fn serve() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let router = Router::new()
        .route(
            "/v1/chat/completions",
            speak(seen.clone(), "openai", openai_decide, openai_render),
        )
        .route(
            "/v1/messages",
            speak(
                seen.clone(),
                "anthropic",
                anthropic_decide,
                anthropic_render,
            ),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}"), seen)
}

/// One wire format's route: record the body, decide the answer, render it whole or
/// streamed as the request asked; a request in the wrong shape is refused.
fn speak(
    seen: Seen,
    wire: &'static str,
    decide: fn(&Value) -> Result<Answer, String>,
    render: fn(&Answer, bool) -> Response,
) -> MethodRouter {
    post(move |Json(body): Json<Value>| async move {
        seen.lock().unwrap().push((wire.into(), body.clone()));
        match decide(&body) {
            Ok(answer) => render(&answer, is_stream(&body)),
            Err(problem) => refuse(&problem),
        }
    })
}

fn is_stream(body: &Value) -> bool {
    body["stream"].as_bool().unwrap_or(false)
}

fn refuse(problem: &str) -> Response {
    let error =
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": problem}});
    (StatusCode::BAD_REQUEST, Json(error)).into_response()
}

fn expect(ok: bool, problem: &str) -> Result<(), String> {
    if ok { Ok(()) } else { Err(problem.to_string()) }
}

fn openai_decide(body: &Value) -> Result<Answer, String> {
    let tool = &body["tools"][0];
    expect(
        tool["type"] == "function" && tool["function"]["name"] == "weather",
        "tools[0] is not the weather function",
    )?;
    expect(
        tool["function"]["parameters"]["type"] == "object",
        "tools[0].function.parameters missing",
    )?;
    let messages = body["messages"].as_array().ok_or("messages missing")?;
    let last = messages.last().ok_or("no messages")?;
    if last["role"] != "tool" {
        return Ok(Answer::Tool {
            preamble: None,
            id: OPENAI_CALL_ID,
            stop: "tool_calls",
        });
    }
    let call = &messages[messages.len() - 2]["tool_calls"][0];
    expect(
        call["id"] == OPENAI_CALL_ID && call["type"] == "function",
        "the assistant turn lacks the tool call",
    )?;
    expect(
        call["function"]["name"] == "weather" && call["function"]["arguments"] == CITY_ARGUMENTS,
        "the tool call changed",
    )?;
    expect(
        last["tool_call_id"] == OPENAI_CALL_ID && last["content"] == TOOL_RESULT,
        "the tool message is wrong",
    )?;
    Ok(Answer::Text {
        text: FINAL_TEXT,
        stop: "stop",
    })
}

fn anthropic_decide(body: &Value) -> Result<Answer, String> {
    let tool = &body["tools"][0];
    expect(
        tool["name"] == "weather" && tool["input_schema"]["type"] == "object",
        "tools[0] is not the weather tool",
    )?;
    expect(
        tool.get("type").is_none() && tool.get("function").is_none(),
        "tools[0] is in the OpenAI shape",
    )?;
    expect(body["max_tokens"].is_u64(), "max_tokens is required")?;
    if body["max_tokens"].as_u64() <= Some(TINY_LIMIT) {
        return Ok(Answer::Text {
            text: "It is",
            stop: "max_tokens",
        });
    }
    let messages = body["messages"].as_array().ok_or("messages missing")?;
    let last = messages.last().ok_or("no messages")?;
    expect(last["role"] == "user", "the last turn must be the user's")?;
    let result = &last["content"][0];
    if result["type"] != "tool_result" {
        return Ok(Answer::Tool {
            preamble: Some(PREAMBLE),
            id: ANTHROPIC_CALL_ID,
            stop: "tool_use",
        });
    }
    expect(
        result["tool_use_id"] == ANTHROPIC_CALL_ID && result["content"] == TOOL_RESULT,
        "the tool_result block is wrong",
    )?;
    let turn = &messages[messages.len() - 2];
    expect(
        turn["role"] == "assistant",
        "the tool call turn must be the assistant's",
    )?;
    let blocks = turn["content"]
        .as_array()
        .ok_or("assistant content must be blocks")?;
    expect(
        blocks
            .iter()
            .any(|b| b["type"] == "text" && b["text"] == PREAMBLE),
        "the assistant text was lost",
    )?;
    let call = blocks
        .iter()
        .find(|b| b["type"] == "tool_use")
        .ok_or("the tool_use block is missing")?;
    expect(
        call["id"] == ANTHROPIC_CALL_ID && call["name"] == "weather",
        "the tool_use block changed",
    )?;
    expect(
        call["input"] == json!({"city": "Oslo"}),
        "tool_use.input must be the arguments as an object",
    )?;
    Ok(Answer::Text {
        text: FINAL_TEXT,
        stop: "end_turn",
    })
}

fn openai_render(answer: &Answer, stream: bool) -> Response {
    let usage = json!({"prompt_tokens": 20, "completion_tokens": 6, "total_tokens": 26});
    let (message, stop) = match answer {
        Answer::Text { text, stop } => (
            json!({"role": "assistant", "content": text, "refusal": null}),
            *stop,
        ),
        Answer::Tool { id, stop, .. } => (
            json!({"role": "assistant", "content": null, "refusal": null, "tool_calls": [
                {"id": id, "type": "function", "function": {"name": "weather", "arguments": CITY_ARGUMENTS}}]}),
            *stop,
        ),
    };
    if !stream {
        return Json(
            json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": stop}],
            "usage": usage}),
        )
        .into_response();
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    };
    let mut chunks = vec![chunk(
        json!({"role": "assistant", "content": "", "refusal": null}),
        Value::Null,
    )];
    match answer {
        Answer::Text { text, .. } => {
            for word in text.split_inclusive(' ') {
                chunks.push(chunk(json!({"content": word}), Value::Null));
            }
        }
        Answer::Tool { id, .. } => {
            chunks.push(chunk(
                json!({"tool_calls": [{"index": 0, "id": id, "type": "function",
                "function": {"name": "weather", "arguments": ""}}]}),
                Value::Null,
            ));
            for piece in ARGUMENT_PIECES {
                chunks.push(chunk(
                    json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                    Value::Null,
                ));
            }
        }
    }
    chunks.push(chunk(json!({}), stop.into()));
    chunks.push(
        json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                       "choices": [], "usage": usage}),
    );
    let mut events: Vec<String> = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    events.push("data: [DONE]\n\n".into());
    event_stream(events)
}

fn anthropic_render(answer: &Answer, stream: bool) -> Response {
    let (blocks, stop): (Vec<Value>, &str) = match answer {
        Answer::Text { text, stop } => (vec![json!({"type": "text", "text": text})], stop),
        Answer::Tool { preamble, id, stop } => {
            let mut blocks: Vec<Value> = preamble
                .iter()
                .map(|t| json!({"type": "text", "text": t}))
                .collect();
            blocks.push(
                json!({"type": "tool_use", "id": id, "name": "weather", "input": {"city": "Oslo"}}),
            );
            (blocks, stop)
        }
    };
    if !stream {
        return Json(
            json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
            "content": blocks, "stop_reason": stop, "stop_sequence": null,
            "usage": {"input_tokens": 20, "output_tokens": 6}}),
        )
        .into_response();
    }
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let mut events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
            "role": "assistant", "model": "m", "content": [], "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": 20, "output_tokens": 1}}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    for (index, block) in blocks.iter().enumerate() {
        let delta = |delta: Value| {
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": index, "delta": delta}),
            )
        };
        if block["type"] == "text" {
            events.push(event(
                "content_block_start",
                json!({"type": "content_block_start", "index": index,
                "content_block": {"type": "text", "text": ""}}),
            ));
            for word in block["text"].as_str().unwrap().split_inclusive(' ') {
                events.push(delta(json!({"type": "text_delta", "text": word})));
            }
        } else {
            events.push(event("content_block_start", json!({"type": "content_block_start", "index": index,
                "content_block": {"type": "tool_use", "id": block["id"], "name": "weather", "input": {}}})));
            events.push(delta(
                json!({"type": "input_json_delta", "partial_json": ""}),
            ));
            for piece in ARGUMENT_PIECES {
                events.push(delta(
                    json!({"type": "input_json_delta", "partial_json": piece}),
                ));
            }
        }
        events.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": index}),
        ));
    }
    events.push(event(
        "message_delta",
        json!({"type": "message_delta",
        "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 6}}),
    ));
    events.push(event("message_stop", json!({"type": "message_stop"})));
    event_stream(events)
}

fn event_stream(events: Vec<String>) -> Response {
    let body = futures::stream::iter(events).then(|e| async move {
        tokio::time::sleep(EVENT_GAP).await;
        Ok::<_, std::convert::Infallible>(e)
    });
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(body),
    )
        .into_response()
}
