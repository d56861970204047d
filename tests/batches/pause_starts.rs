//! A pause stops new starts within one claim round: after `POST /batches/{id}/pause`
//! answers, at most one claim's worth of the batch's runs (the pool's slots) may still
//! start, then none while it stays paused; in-flight runs finish, and a resume continues.

use std::time::Duration;

use serde_json::{Value, json};

use super::{create_batch, post, runs, start, wait_batch};

/// The pool's slots in `start`: the most one claim round starts.
const SLOTS: i64 = 4;
/// Long enough for many claim rounds of 100 ms attempts.
const PAUSED_FOR: Duration = Duration::from_secs(1);
const SIM: &str = "latency = \"100ms\"\nlatency_jitter = \"0ms\"";

fn started(b: &Value) -> i64 {
    b["run_count"].as_i64().unwrap() - b["counts"]["queued"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_stops_new_starts_within_one_claim_round() {
    let server = start(SIM, "toggle_cooldown = \"0s\"", None).await;
    let id = create_batch(&server, &json!({"provider": "sim", "runs": runs(200)})).await;
    wait_batch(&server, &id, "under way", |b| {
        b["counts"]["completed"].as_i64() >= Some(8)
    })
    .await;
    let paused = post(&server, &format!("/batches/{id}/pause"), &json!({})).await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    let at_pause = started(&paused.body);
    tokio::time::sleep(PAUSED_FOR).await;
    let later = wait_batch(&server, &id, "drained", |b| b["counts"]["running"] == 0).await;
    tokio::time::sleep(PAUSED_FOR).await;
    let after = wait_batch(&server, &id, "still paused", |_| true).await;
    assert!(
        started(&after) - at_pause <= SLOTS,
        "{} runs started after the pause (at most {SLOTS} may): {after}",
        started(&after) - at_pause
    );
    assert_eq!(
        started(&after),
        started(&later),
        "runs started while paused"
    );
    let resumed = post(&server, &format!("/batches/{id}/resume"), &json!({})).await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    wait_batch(&server, &id, "resumed", |b| started(b) > started(&after)).await;
    server.stop().await;
}
