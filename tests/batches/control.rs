//! Watching and steering a batch: counts add up at every poll while runs finish, results
//! stream every ended run once, `batch_finished` arrives on `/events?batch=`, pause and
//! resume honour the cooldown, and a cancel ends the rest.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::{FAST_SIM, SLOW_SIM, create_batch, get, post, runs, start, wait_batch};
use crate::common::SseReader;

const TERMINAL: [&str; 5] = ["completed", "failed", "timed_out", "cancelled", "dropped"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_adds_up_and_results_stream_each_run_once() {
    let server = start(FAST_SIM, "", None).await;
    let id = create_batch(&server, &json!({"provider": "sim", "runs": runs(120)})).await;
    let done = wait_batch(&server, &id, "finished", |b| !b["finished_at"].is_null()).await;
    assert_eq!(done["counts"]["completed"], 120, "{done}");
    assert!(done["started_at"].is_string() && done["usage"]["prompt_tokens"].as_i64() > Some(0));

    let resp = server
        .http()
        .get(server.url(&format!("/batches/{id}/results")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let text = resp.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 120);
    let ids: HashSet<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 120, "a run was sent twice");
    assert!(lines.iter().all(|l| l["status"] == "completed"
        && l["output"]["content"].is_string()
        && l["usage"].is_object()));

    // The whole story replays from the log, ending with batch_finished.
    let mut events = SseReader::open(
        server.http(),
        &server.url(&format!("/events?batch={id}")),
        Some("0"),
    )
    .await;
    let finished = loop {
        let (_, event, data) = events.next().await.expect("stream open");
        if event == "batch_finished" {
            break data;
        }
    };
    assert_eq!(finished["batch_id"], json!(id));
    assert_eq!(finished["run_count"], 120);
    assert_eq!(finished["counts"]["completed"], 120);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_honour_the_cooldown() {
    let server = start(SLOW_SIM, "toggle_cooldown = \"2s\"", None).await;
    let id = create_batch(&server, &json!({"provider": "sim", "runs": runs(10)})).await;
    let paused = post(&server, &format!("/batches/{id}/pause"), &json!({})).await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    assert_eq!(paused.body["paused"], true);
    let again = post(&server, &format!("/batches/{id}/pause"), &json!({})).await;
    assert_eq!((again.status, &again.body["paused"]), (200, &json!(true)));
    let early = post(&server, &format!("/batches/{id}/resume"), &json!({})).await;
    assert_eq!(early.status, 409, "{}", early.body);
    assert_eq!(early.body["error"]["code"], "conflict");
    let wait = early.retry_after.expect("Retry-After on a toggle too soon");
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    let resumed = post(&server, &format!("/batches/{id}/resume"), &json!({})).await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    assert_eq!(resumed.body["paused"], false);
    let missing = post(&server, "/batches/not-a-batch/pause", &json!({})).await;
    assert_eq!(missing.status, 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_the_rest_and_closes_the_batch() {
    let server = start(SLOW_SIM, "", None).await;
    let id = create_batch(&server, &json!({"provider": "sim", "runs": runs(20)})).await;
    wait_batch(&server, &id, "running", |b| b["counts"]["running"] == 4).await;
    let cancelled = post(&server, &format!("/batches/{id}/cancel"), &json!({})).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    let b = &cancelled.body;
    assert_eq!(b["counts"]["cancelled"], 20, "{b}");
    assert!(
        b["cancelled_at"].is_string() && b["finished_at"].is_string(),
        "{b}"
    );
    // The attempts in flight were aborted.
    let page = get(
        &server,
        &format!("/runs?batch={id}&status=cancelled&limit=500"),
    )
    .await;
    let items = page.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 20);
    assert!(
        items
            .iter()
            .all(|r| TERMINAL.contains(&r["status"].as_str().unwrap()))
    );
    for path in ["cancel", "pause", "resume"] {
        let again = post(&server, &format!("/batches/{id}/{path}"), &json!({})).await;
        assert_eq!(again.status, 409, "{path}: {}", again.body);
    }
    wait_batch(&server, &id, "ended", |b| b["counts"]["cancelled"] == 20).await;
    server.stop().await;
}
