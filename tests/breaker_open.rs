//! `breaker_open` where it applies: a live run whose queue deadline passes while its
//! provider's circuit breaker is open ends `timed_out` (origin `queue_wait`) with error
//! kind `breaker_open`, over HTTP and through the sweeper.

use serde_json::{Value, json};

use crate::common::{TestServer, enqueue, http, wait_run};

/// A provider that fails every attempt, whose breaker opens at the first failure and
/// stays open for the whole test.
const CONFIG: &str = r#"
[queue]
sweep_interval = "50ms"
[[providers]]
name = "down"
kind = "sim"
[providers.sim]
latency = "1ms"
latency_jitter = "0ms"
error_rate = 1.0
[providers.breaker]
failure_threshold = 1
open_interval = "1h"
"#;

/// Enqueues a run of `down` with the request's further fields `extra`.
async fn enqueue_down(client: &reqwest::Client, server: &TestServer, extra: Value) -> String {
    let mut body = json!({
        "provider": "down",
        "request": {"messages": [{"role": "user", "content": "hi"}]}
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    enqueue(client, server, body).await
}

#[tokio::test]
async fn a_queue_deadline_passing_under_an_open_breaker_blames_the_breaker() {
    let server = TestServer::start_on_sqlite(CONFIG).await;
    let client = http();

    // One failure opens the breaker for an hour.
    let first = enqueue_down(&client, &server, json!({"max_attempts": 1})).await;
    let run = wait_run(&client, &server, &first, "failed", |r| {
        r["status"] == "failed"
    })
    .await;
    assert_eq!(run["error"]["kind"], "server", "{run}");

    let waiting = enqueue_down(&client, &server, json!({"queue_timeout_ms": 200})).await;
    let run = wait_run(&client, &server, &waiting, "timed out", |r| {
        r["status"] == "timed_out"
    })
    .await;
    assert_eq!(run["timeout_origin"], "queue_wait", "{run}");
    assert_eq!(run["error"]["kind"], "breaker_open", "{run}");
    assert_eq!(run["attempts"], 0, "it never started: {run}");
    server.stop().await;
}
