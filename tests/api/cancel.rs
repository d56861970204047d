//! Cancellation over HTTP: a queued run at once, a running run by aborting its attempt,
//! and a second cancel as a conflict.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_queued_run_then_again_is_a_conflict() {
    let server = start_sim(FAST_SIM).await;
    let run_at = in_hours(1);
    let id = server
        .enqueue_ok(&json!({"provider": "sim", "request": chat("later"), "run_at": run_at}))
        .await;
    let run = server.run(&id).await;
    assert_eq!(run["status"], "queued", "{run:#}");
    assert_eq!(run["attempts"], 0, "{run:#}");
    assert_time(&run["next_attempt_at"], "next_attempt_at");
    let next =
        chrono::DateTime::parse_from_rfc3339(run["next_attempt_at"].as_str().unwrap()).unwrap();
    let asked = chrono::DateTime::parse_from_rfc3339(&run_at).unwrap();
    assert_eq!(
        next, asked,
        "a scheduled run is next due at run_at: {run:#}"
    );

    let reply = server.cancel(&id).await;
    assert_eq!(reply.status, 200, "cancel: {}", reply.body);
    assert_eq!(reply.body["id"], json!(id), "{}", reply.body);
    assert_eq!(reply.body["status"], "cancelled", "{}", reply.body);
    assert_time(
        &reply.body["finished_at"],
        "finished_at of the cancelled run",
    );
    assert_eq!(reply.body["next_attempt_at"], Value::Null, "{}", reply.body);

    let again = server.cancel(&id).await;
    assert_error(&again, "second cancel", 409, "conflict", None);

    let run = server.run(&id).await;
    assert_eq!(run["status"], "cancelled", "{run:#}");
    assert_eq!(run["attempts"], 0, "{run:#}");
    assert_eq!(run["attempt_log"], json!([]), "{run:#}");

    let reply = server.cancel(&uuid::Uuid::now_v7().to_string()).await;
    assert_error(&reply, "cancel of an unknown id", 404, "not_found", None);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_run_aborts_it() {
    let server = start_sim(SLOW_SIM).await;
    let id = server
        .enqueue_ok(&json!({"provider": "sim", "request": chat("long")}))
        .await;
    let running = server
        .wait_run(&id, "status running", Duration::from_secs(10), |b| {
            b["status"] == "running"
        })
        .await;
    assert_time(&running["started_at"], "started_at");
    assert_eq!(running["attempts"], 1, "{running:#}");

    let reply = server.cancel(&id).await;
    assert_eq!(reply.status, 200, "cancel: {}", reply.body);
    assert_eq!(reply.body["status"], "cancelled", "{}", reply.body);

    // The provider call is aborted: its worker slot comes free at once.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let h = server.health().await;
        if h["workers"]["slots_busy"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cancelled attempt still holds a worker slot after 3 s: {h:#}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let run = server.run(&id).await;
    assert_eq!(run["status"], "cancelled", "still cancelled: {run:#}");
    assert_eq!(run["output"], Value::Null, "{run:#}");
    assert_eq!(run["error"]["kind"], "cancelled", "{run:#}");
    assert_time(&run["finished_at"], "finished_at");
    let log = run["attempt_log"].as_array().expect("attempt_log array");
    assert_eq!(log.len(), 1, "{run:#}");
    assert_eq!(log[0]["outcome"], "cancelled", "{run:#}");
    assert_time(&log[0]["finished_at"], "attempt finished_at");

    let again = server.cancel(&id).await;
    assert_error(&again, "cancel after cancel", 409, "conflict", None);
    server.shutdown().await;
}
