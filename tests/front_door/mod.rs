//! The OpenAI-compatible front door, driven by the official OpenAI Python SDK
//! (`client.py`, run with the test venv's Python that scripts/test.sh provides): answers
//! whole and streamed, usage, routes, class and idempotency headers, OpenAI's errors, and
//! tool-call round trips through both wire formats. Then a client that goes away
//! mid-answer: its run is cancelled, or finishes when its route says so.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

use crate::common::{TestServer, get_run, http, run_script, wait_run};
use crate::tool_calls::wire::{self, CITY_ARGUMENTS, FINAL_TEXT};

/// The tool-call fake's two providers, the simulator, and the routes the tests call.
fn config(dir: &tempfile::TempDir, fake: &str) -> String {
    format!(
        r#"{providers}
[[providers]]
name = "sim"
kind = "sim"
default_model = "sim-1"
[providers.sim]
latency = "20ms"
latency_jitter = "0ms"
delta_interval = "30ms"
[[providers]]
name = "slow"
kind = "sim"
default_model = "sim-1"
[providers.sim]
latency = "2500ms"
latency_jitter = "0ms"
[[providers]]
name = "full"
kind = "sim"
default_model = "sim-1"
background_queue_max = 0
[[routes]]
model = "fast"
provider = "sim"
[[routes]]
model = "patient"
provider = "sim"
on_disconnect = "finish"
[[routes]]
model = "weather-openai"
provider = "openai"
[[routes]]
model = "weather-anthropic"
provider = "anthropic"
"#,
        providers = crate::tool_calls::config(dir, fake)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_sdk_works_against_the_front_door() {
    let (fake, _) = wire::serve().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(&dir, &fake), &[]).await;
    let base_url = server.url("/v1");
    let saw = run_script("front_door/client.py", vec![base_url]).await;
    let client = http();

    let models: Vec<&str> = saw["models"]
        .as_array()
        .unwrap_or_else(|| panic!("models: {}", saw["models"]))
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    for expected in [
        "fast",
        "patient",
        "weather-openai",
        "weather-anthropic",
        "sim/sim-1",
    ] {
        assert!(models.contains(&expected), "{expected} in {models:?}");
    }

    let whole = &saw["whole"];
    assert_eq!(whole["object"], "chat.completion", "{whole}");
    assert_eq!(whole["content"], "[sim-1] hello front door", "{whole}");
    assert_eq!(whole["finish_reason"], "stop");
    assert_eq!(whole["model"], "sim-1");
    let usage = &whole["usage"];
    assert!(usage["completion_tokens"].as_u64().unwrap() > 0, "{usage}");
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(
            usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
        )
    );
    let run_id = whole["run_id"].as_str().expect("x-sluice-run-id");
    assert_eq!(whole["id"], format!("chatcmpl-{}", run_id.replace('-', "")));
    let run = get_run(&client, &server, run_id).await;
    assert_eq!(run["status"], "completed");
    assert_eq!(run["class"], "live", "live by default");
    assert_eq!(run["output"]["content"], whole["content"]);

    let streamed = &saw["streamed"];
    assert_eq!(
        streamed["content"], "[sim-1] hello front door",
        "{streamed}"
    );
    assert_eq!(streamed["finish_reason"], "stop");
    assert_eq!(
        streamed["objects"],
        serde_json::json!(["chat.completion.chunk"])
    );
    assert!(
        streamed["usage"]["total_tokens"].as_u64().unwrap() > 0,
        "include_usage sends a usage chunk: {streamed}"
    );
    let run = get_run(&client, &server, streamed["run_id"].as_str().unwrap()).await;
    assert_eq!(run["stream"], true, "{run}");

    let background = get_run(
        &client,
        &server,
        saw["background"]["run_id"].as_str().unwrap(),
    )
    .await;
    assert_eq!(background["class"], "background");
    let keyed = saw["same_key"].as_array().unwrap();
    assert_eq!(
        keyed[0]["run_id"], keyed[1]["run_id"],
        "one Idempotency-Key, one run: {keyed:?}"
    );

    for (scenario, class, status, code, param) in [
        (
            "unknown_model",
            "NotFoundError",
            404,
            Some("model_not_found"),
            None,
        ),
        (
            "no_messages",
            "BadRequestError",
            400,
            Some("invalid_request"),
            Some("messages"),
        ),
        ("two_choices", "BadRequestError", 400, None, Some("n")),
        (
            "bad_priority",
            "BadRequestError",
            400,
            None,
            Some("x-sluice-priority"),
        ),
    ] {
        let e = &saw[scenario];
        assert_eq!(e["error"], class, "{scenario}: {e}");
        assert_eq!(e["status"], status, "{scenario}: {e}");
        assert_eq!(e["type"], "invalid_request_error", "{scenario}: {e}");
        if let Some(code) = code {
            assert_eq!(e["code"], code, "{scenario}: {e}");
        }
        assert_eq!(e["param"].as_str(), param, "{scenario}: {e}");
    }

    let refused = &saw["refused"];
    assert_eq!(refused["error"], "RateLimitError", "{refused}");
    assert_eq!(refused["status"], 429);
    assert_eq!(refused["code"], "background_queue_full");
    assert!(
        refused["retry_after"]
            .as_str()
            .is_some_and(|s| s.parse::<u64>().is_ok()),
        "the refusal carries Retry-After: {refused}"
    );

    let retried = &saw["retried"];
    assert_eq!(retried["content"], "[sim-1] hello front door", "{retried}");
    let run = get_run(&client, &server, retried["run_id"].as_str().unwrap()).await;
    assert_eq!(
        run["attempt_log"].as_array().unwrap().len(),
        1,
        "the SDK's retries followed one run, which called the provider once: {run}"
    );

    for scenario in [
        "weather-openai",
        "weather-openai-streamed",
        "weather-anthropic",
        "weather-anthropic-streamed",
    ] {
        let trip = &saw[scenario];
        let first = &trip["first"];
        assert_eq!(first["finish_reason"], "tool_calls", "{scenario}: {trip}");
        let call = &first["tool_calls"][0];
        assert_eq!(call["type"], "function", "{scenario}: {call}");
        assert_eq!(call["name"], "weather", "{scenario}: {call}");
        assert_eq!(call["arguments"], CITY_ARGUMENTS, "{scenario}: {call}");
        assert!(
            !call["id"].as_str().unwrap().is_empty(),
            "{scenario}: {call}"
        );
        let second = &trip["second"];
        assert_eq!(second["content"], FINAL_TEXT, "{scenario}: {trip}");
        assert_eq!(second["finish_reason"], "stop", "{scenario}: {trip}");
    }
    server.stop().await;
}

/// Opens a streamed completion on `model`, reads its run id and first chunk, then hangs
/// up; returns the run id.
async fn hang_up_mid_answer(server: &TestServer, model: &str) -> String {
    let long = "one two three four five six seven eight nine ten eleven twelve thirteen \
                fourteen fifteen sixteen seventeen eighteen nineteen twenty";
    let response = http()
        .post(server.url("/v1/chat/completions"))
        .json(&serde_json::json!({
            "model": model,
            "stream": true,
            "messages": [{"role": "user", "content": long}],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.headers()["x-sluice-run-id"]
        .to_str()
        .unwrap()
        .to_string();
    let mut body = response.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), body.next())
        .await
        .expect("a first chunk")
        .expect("the stream is open")
        .unwrap();
    assert!(first.starts_with(b"data: "), "{first:?}");
    drop(body);
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_cancels_its_run_unless_its_route_finishes() {
    let (fake, _) = wire::serve().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(&dir, &fake), &[]).await;
    let client = http();

    let cancelled = hang_up_mid_answer(&server, "fast").await;
    let run = wait_run(&client, &server, &cancelled, "cancelled", |r| {
        !matches!(r["status"].as_str(), Some("queued" | "running"))
    })
    .await;
    assert_eq!(
        run["status"], "cancelled",
        "nobody waits for it any more: {run}"
    );

    let finished = hang_up_mid_answer(&server, "patient").await;
    let run = wait_run(&client, &server, &finished, "completed", |r| {
        !matches!(r["status"].as_str(), Some("queued" | "running"))
    })
    .await;
    assert_eq!(run["status"], "completed", "its route finishes it: {run}");
    server.stop().await;
}

/// What is wrong, the body, and extra headers.
type HostileCase = (&'static str, Vec<u8>, Vec<(&'static str, &'static str)>);

/// Hostile input to `/v1/*`: every refusal is a 4xx in OpenAI's error shape, never a 5xx,
/// and leaves no run behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_gets_openai_shaped_client_errors() {
    let (fake, _) = wire::serve().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(&dir, &fake), &[]).await;
    let client = http();
    let hello = serde_json::json!([{"role": "user", "content": "hi"}]);
    let huge = "x".repeat(2 * 1024 * 1024);
    let cases: Vec<HostileCase> = vec![
        ("malformed JSON", b"{\"model\": ".to_vec(), vec![]),
        ("not an object", b"[1, 2, 3]".to_vec(), vec![]),
        ("no model", serde_json::to_vec(&serde_json::json!({"messages": hello})).unwrap(), vec![]),
        ("a model that is a number", serde_json::to_vec(&serde_json::json!({"model": 7, "messages": hello})).unwrap(), vec![]),
        ("an unknown model", serde_json::to_vec(&serde_json::json!({"model": "nope", "messages": hello})).unwrap(), vec![]),
        ("messages not a list", serde_json::to_vec(&serde_json::json!({"model": "sim", "messages": "hi"})).unwrap(), vec![]),
        ("stream not a boolean", serde_json::to_vec(&serde_json::json!({"model": "sim", "messages": hello, "stream": "yes"})).unwrap(), vec![]),
        ("a huge body", serde_json::to_vec(&serde_json::json!({"model": "sim", "messages": [{"role": "user", "content": huge}]})).unwrap(), vec![]),
        ("a bad class header", serde_json::to_vec(&serde_json::json!({"model": "sim", "messages": hello})).unwrap(), vec![("x-sluice-class", "urgent")]),
    ];
    for (what, body, headers) in cases {
        let mut request = client
            .post(server.url("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        assert!(status.is_client_error(), "{what}: {status}");
        let error: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e})"));
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
                && error["error"]["type"].is_string(),
            "{what}: not OpenAI's error object: {error}"
        );
    }
    let listed: Value = client
        .get(server.url("/runs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["items"],
        serde_json::json!([]),
        "no run was left behind"
    );
    server.stop().await;
}
