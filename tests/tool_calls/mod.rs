//! Provider fidelity end to end: the server runs tool-call round trips (a request with
//! tools, the `tool_calls` in `output`, the follow-up carrying the tool's result) against
//! a fake that speaks each wire format exactly, whole and streamed; Anthropic's
//! `max_tokens` is reported as `length`; a field the Anthropic conversion cannot carry is
//! refused at enqueue naming it; an OpenAI-compatible provider gets unknown fields as sent.

pub(crate) mod wire;

use std::collections::BTreeMap;

use crate::common::{SseReader, TestServer, enqueue, http, wait_run};
use serde_json::{Value, json};
use wire::{CITY_ARGUMENTS, FINAL_TEXT, PREAMBLE, TINY_LIMIT, TOOL_RESULT};

/// Both providers, one per wire format, on the same fake.
pub(crate) fn config(dir: &tempfile::TempDir, root: &str) -> String {
    format!(
        r#"
[database]
sqlite_path = {db:?}
[retry]
max_attempts = 1
[[providers]]
name = "openai"
kind = "openai"
base_url = "{root}/v1"
default_model = "gpt-fake"
[[providers]]
name = "anthropic"
kind = "anthropic"
base_url = "{root}"
default_model = "claude-fake"
"#,
        db = dir.path().join("sluice.db").display().to_string()
    )
}

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {"name": "weather", "description": "The weather now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

fn question() -> Value {
    json!({"role": "user", "content": "What is the weather in Oslo?"})
}

/// What the `delta` events of one run carried: the text, and each tool call's id, name and
/// joined arguments by index.
#[derive(Default)]
struct Streamed {
    text: String,
    calls: BTreeMap<u64, (String, String, String)>,
}

/// Enqueues `request` on `provider`, follows its events when streaming, and returns the
/// finished run and what its deltas carried.
async fn run(
    server: &TestServer,
    provider: &str,
    request: Value,
    stream: bool,
) -> (Value, Streamed) {
    let client = http();
    let id = enqueue(
        &client,
        server,
        json!({"provider": provider, "request": request, "stream": stream}),
    )
    .await;
    let mut streamed = Streamed::default();
    if stream {
        let url = server.url(&format!("/runs/{id}/events"));
        let mut events = SseReader::open(&client, &url, None).await;
        while let Some((_, event, data)) = events.next().await {
            if event != "delta" {
                continue;
            }
            streamed.text.push_str(data["content"].as_str().unwrap());
            for piece in data["tool_calls"].as_array().into_iter().flatten() {
                let call = streamed
                    .calls
                    .entry(piece["index"].as_u64().unwrap())
                    .or_default();
                if let Some(id) = piece["id"].as_str() {
                    assert_eq!(piece["type"], "function", "{piece}");
                    call.0.push_str(id);
                }
                call.1
                    .push_str(piece["function"]["name"].as_str().unwrap_or_default());
                call.2
                    .push_str(piece["function"]["arguments"].as_str().unwrap());
            }
        }
    }
    let run = wait_run(&client, server, &id, "finished", |r| {
        !matches!(r["status"].as_str(), Some("queued" | "running"))
    })
    .await;
    assert_eq!(run["status"], "completed", "{run}");
    (run, streamed)
}

async fn round_trip(provider: &str, stream: bool) {
    let (root, _) = wire::serve().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(&dir, &root), &[]).await;

    let ask = json!({"messages": [question()], "tools": weather_tool(), "tool_choice": "auto"});
    let (first, streamed) = run(&server, provider, ask, stream).await;
    let output = &first["output"];
    assert_eq!(output["finish_reason"], "tool_calls", "{first}");
    let raw = if provider == "anthropic" {
        "tool_use"
    } else {
        "tool_calls"
    };
    assert_eq!(output["raw_finish_reason"], raw);
    let calls = output["tool_calls"]
        .as_array()
        .expect("tool_calls in the output");
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "weather");
    assert_eq!(call["function"]["arguments"], CITY_ARGUMENTS);
    if provider == "anthropic" {
        assert_eq!(
            output["content"], PREAMBLE,
            "text beside a tool call is kept"
        );
    } else {
        assert!(
            output["content"].is_null(),
            "a tool-call-only answer has no text: {output}"
        );
    }
    if stream {
        let (id, name, arguments) = &streamed.calls[&0];
        assert_eq!(
            (id.as_str(), name.as_str()),
            (call["id"].as_str().unwrap(), "weather")
        );
        assert_eq!(
            arguments, CITY_ARGUMENTS,
            "argument deltas join into the arguments"
        );
        assert_eq!(
            output["content"].as_str().unwrap_or_default(),
            streamed.text
        );
    }

    let assistant = json!({"role": "assistant", "content": output["content"], "tool_calls": calls});
    let result = json!({"role": "tool", "tool_call_id": call["id"], "content": TOOL_RESULT});
    let follow_up = json!({"messages": [question(), assistant, result], "tools": weather_tool()});
    let (second, streamed) = run(&server, provider, follow_up, stream).await;
    assert_eq!(second["output"]["content"], FINAL_TEXT, "{second}");
    assert_eq!(second["output"]["finish_reason"], "stop");
    assert!(second["output"]["tool_calls"].is_null());
    if stream {
        assert_eq!(streamed.text, FINAL_TEXT);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_tool_call_round_trip() {
    round_trip("openai", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_streamed_tool_call_round_trip() {
    round_trip("openai", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_tool_call_round_trip() {
    round_trip("anthropic", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_streamed_tool_call_round_trip() {
    round_trip("anthropic", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_max_tokens_is_reported_as_length() {
    let (root, _) = wire::serve().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(&dir, &root), &[]).await;
    for stream in [false, true] {
        let request =
            json!({"messages": [question()], "tools": weather_tool(), "max_tokens": TINY_LIMIT});
        let (run, _) = run(&server, "anthropic", request, stream).await;
        assert_eq!(
            run["output"]["finish_reason"], "length",
            "stream {stream}: {run}"
        );
        assert_eq!(run["output"]["raw_finish_reason"], "max_tokens");
        assert_eq!(run["output"]["content"], "It is");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_refuses_unconvertible_fields_at_enqueue_and_openai_passes_them_through() {
    let (root, seen) = wire::serve().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(&dir, &root), &[]).await;
    let client = http();
    let extra = json!({"logit_bias": {"50256": -100}, "n": 2, "vendor_knob": {"depth": [1, 2, 3]}});
    for (field, value) in extra.as_object().unwrap() {
        let mut request = json!({"messages": [question()], "tools": weather_tool()});
        request[field] = value.clone();
        let resp = client
            .post(server.url("/enqueue"))
            .json(&json!({"provider": "anthropic", "request": request}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{field}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_request");
        assert_eq!(body["error"]["field"], format!("request.{field}"), "{body}");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "a refused run never reaches the provider"
    );

    let mut request = json!({"messages": [question()], "tools": weather_tool()});
    for (field, value) in extra.as_object().unwrap() {
        request[field] = value.clone();
    }
    run(&server, "openai", request.clone(), false).await;
    let (wire, sent) = seen.lock().unwrap()[0].clone();
    assert_eq!(wire, "openai");
    for (field, value) in extra.as_object().unwrap() {
        assert_eq!(&sent[field], value, "{field} passes through untouched");
    }
    assert_eq!(sent["tools"], request["tools"]);
    assert_eq!(sent["model"], "gpt-fake");
    server.stop().await;
}
