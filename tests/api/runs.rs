//! Runs over HTTP from enqueue to a terminal status: the full completed record (on SQLite
//! and on PostgreSQL), retries into the dead-letter state and attempt timeouts.

use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use super::*;

/// Everything a completed run of `round_trip` must show, but its model (see
/// [`assert_default_model`]).
fn assert_completed_round_trip(run: &Value, id: &str, metadata: &Value) {
    assert_eq!(run["status"], "completed", "run: {run:#}");
    assert_eq!(run["id"], json!(id), "run: {run:#}");
    assert_eq!(run["provider"], "sim", "run: {run:#}");
    assert_eq!(run["class"], "live", "default class: {run:#}");
    assert_eq!(run["priority"], 5, "default priority: {run:#}");
    assert_eq!(run["metadata"], *metadata, "metadata echoed: {run:#}");
    assert_eq!(run["attempts"], 1, "run: {run:#}");
    assert_eq!(run["max_attempts"], 5, "default max_attempts: {run:#}");

    let content = run["output"]["content"].as_str().unwrap_or("");
    assert!(!content.is_empty(), "output.content: {run:#}");
    assert!(
        content.contains("round trip"),
        "the sim answers with the prompt: {run:#}"
    );
    for key in ["prompt_tokens", "completion_tokens"] {
        assert!(
            run["usage"][key].as_i64().is_some_and(|n| n > 0),
            "usage.{key}: {run:#}"
        );
    }

    for key in ["created_at", "started_at", "finished_at"] {
        assert_time(&run[key], key);
    }
    // Absent values are present as null.
    for key in [
        "tenant",
        "concurrency_key",
        "batch",
        "next_attempt_at",
        "timeout_origin",
        "drop_reason",
        "error",
    ] {
        assert_eq!(
            run.get(key),
            Some(&Value::Null),
            "{key} should be null: {run:#}"
        );
    }

    let log = run["attempt_log"]
        .as_array()
        .unwrap_or_else(|| panic!("attempt_log is not an array: {run:#}"));
    assert_eq!(log.len(), 1, "attempt_log: {run:#}");
    assert_eq!(log[0]["attempt"], 1, "attempt_log: {run:#}");
    assert_eq!(log[0]["outcome"], "completed", "attempt_log: {run:#}");
    assert_time(&log[0]["started_at"], "attempt_log[0].started_at");
    assert_time(&log[0]["finished_at"], "attempt_log[0].finished_at");
}

/// A run naming no model gets its provider's default model; the built-in `sim` provider's
/// is `sim-1`. Checked at the end of a test, so the rest of the test reports first.
fn assert_default_model(run: &Value) {
    assert_eq!(
        run["model"], "sim-1",
        "a run naming no model gets the sim provider's default model: {run:#}"
    );
}

/// Enqueues a live run with metadata and no model/class/priority, waits for it, checks
/// the whole completed record (but the model) and returns it.
async fn round_trip(server: &TestServer, backend: &str) -> Value {
    let metadata = json!({
        "user": {"id": 42, "tags": ["a", "b"]},
        "note": "héllo \"quoted\"",
        "n": 1.5,
        "empty": {}
    });
    let id = server
        .enqueue_ok(&json!({
            "provider": "sim",
            "request": chat("a round trip"),
            "metadata": metadata,
        }))
        .await;
    let health = server.health().await;
    assert_eq!(health["database"]["backend"], backend, "{health:#}");
    let run = server.wait_terminal(&id, FAST_RUN_WITHIN).await;
    assert_completed_round_trip(&run, &id, &metadata);
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueued_run_completes_with_the_full_record() {
    let server = start_sim(FAST_SIM).await;
    let first = round_trip(&server, "sqlite").await;

    // Explicit model, class and priority are kept; a JSON content type with parameters is
    // JSON.
    let body = json!({
        "provider": "sim",
        "model": "sim-big",
        "class": "background",
        "priority": 2,
        "max_attempts": 7,
        "request": chat("explicit"),
    });
    let reply = server
        .send(
            "POST /enqueue with charset",
            server
                .request(Method::POST, "/enqueue")
                .header(CONTENT_TYPE, "application/json; charset=utf-8")
                .body(body.to_string()),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_enqueue_reply(&reply.body);
    assert_eq!(reply.body["status"], "queued", "{}", reply.body);
    let id = reply.body["id"].as_str().unwrap().to_string();
    let run = server.wait_terminal(&id, FAST_RUN_WITHIN).await;
    assert_eq!(run["status"], "completed", "{run:#}");
    assert_eq!(run["model"], "sim-big", "{run:#}");
    assert_eq!(run["class"], "background", "{run:#}");
    assert_eq!(run["priority"], 2, "{run:#}");
    assert_eq!(run["max_attempts"], 7, "{run:#}");
    assert_eq!(run["metadata"], Value::Null, "{run:#}");
    assert!(
        run["output"]["content"]
            .as_str()
            .is_some_and(|c| c.contains("[sim-big]")),
        "the sim answers as the model asked for: {run:#}"
    );

    server.shutdown().await;
    assert_default_model(&first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueued_run_completes_on_postgres() {
    let url = crate::common::fresh_pg_database().await;
    let server = start_sim_on(FAST_SIM, Some(url)).await;
    let run = round_trip(&server, "postgres").await;
    server.shutdown().await;
    assert_default_model(&run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_provider_retries_then_dead_letters() {
    let server = start_sim(&format!("{FAST_SIM}error_rate = 1.0\n")).await;
    let id = server
        .enqueue_ok(&json!({"provider": "sim", "request": chat("doomed"), "max_attempts": 3}))
        .await;
    let run = server.wait_terminal(&id, FAST_RUN_WITHIN).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["attempts"], 3, "{run:#}");
    assert_eq!(run["max_attempts"], 3, "{run:#}");
    assert_eq!(run["error"]["kind"], "server", "{run:#}");
    assert_eq!(run["error"]["status"], 500, "{run:#}");
    assert!(run["error"]["message"].is_string(), "{run:#}");
    assert_eq!(run["output"], Value::Null, "{run:#}");
    assert_eq!(run["timeout_origin"], Value::Null, "{run:#}");
    assert_eq!(run["next_attempt_at"], Value::Null, "{run:#}");
    assert_time(&run["finished_at"], "finished_at");
    let log = run["attempt_log"].as_array().expect("attempt_log array");
    assert_eq!(log.len(), 3, "{run:#}");
    for (i, a) in log.iter().enumerate() {
        assert_eq!(a["attempt"], i + 1, "{run:#}");
        assert_eq!(a["outcome"], "server", "{run:#}");
        assert_eq!(a["status"], 500, "{run:#}");
        assert_time(&a["started_at"], "attempt started_at");
        assert_time(&a["finished_at"], "attempt finished_at");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_attempts_end_timed_out() {
    let server = start_sim(&format!("{FAST_SIM}hang_rate = 1.0\n")).await;
    let id = server
        .enqueue_ok(&json!({
            "provider": "sim",
            "request": chat("never answered"),
            "timeout_ms": 100,
            "max_attempts": 2,
        }))
        .await;
    let run = server.wait_terminal(&id, FAST_RUN_WITHIN).await;
    assert_eq!(run["status"], "timed_out", "{run:#}");
    assert_eq!(run["timeout_origin"], "generation", "{run:#}");
    assert_eq!(run["error"]["kind"], "timeout", "{run:#}");
    assert_eq!(run["attempts"], 2, "{run:#}");
    assert_eq!(run["timeout_ms"], 100, "{run:#}");
    let log = run["attempt_log"].as_array().expect("attempt_log array");
    assert_eq!(log.len(), 2, "{run:#}");
    for a in log {
        assert_eq!(a["outcome"], "timeout", "{run:#}");
        assert_time(&a["finished_at"], "attempt finished_at");
    }
    server.shutdown().await;
}
