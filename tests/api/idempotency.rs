//! Idempotency keys over HTTP: a repeat, even 16 concurrent ones, returns the first run.

use serde_json::json;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_first_run() {
    let server = start_sim(FAST_SIM).await;
    let body = json!({
        "provider": "sim",
        "request": chat("once"),
        "idempotency_key": "order-17",
    });
    let first = server.enqueue(&body).await;
    assert_eq!(first.status, 202, "first enqueue: {}", first.body);
    assert_enqueue_reply(&first.body);
    assert_eq!(first.body["status"], "queued", "{}", first.body);
    let second = server.enqueue(&body).await;
    assert_eq!(second.status, 200, "repeat enqueue: {}", second.body);
    assert_enqueue_reply(&second.body);
    assert_eq!(
        second.body["id"], first.body["id"],
        "repeat returns the same id"
    );

    // 16 concurrent requests with one new key: one run, one 202, the rest 200.
    let body = json!({
        "provider": "sim",
        "request": chat("concurrent"),
        "idempotency_key": "burst-1",
    });
    let replies = futures::future::join_all((0..16).map(|_| server.enqueue(&body))).await;
    let created = replies.iter().filter(|r| r.status == 202).count();
    for r in &replies {
        assert!(
            r.status == 202 || r.status == 200,
            "concurrent enqueue: {} {}",
            r.status,
            r.body
        );
        assert_enqueue_reply(&r.body);
    }
    let ids: std::collections::BTreeSet<&str> = replies
        .iter()
        .map(|r| r.body["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.len(),
        1,
        "concurrent repeats got different ids: {ids:?}"
    );
    assert_eq!(created, 1, "exactly one of 16 concurrent requests creates");
    assert_ne!(
        ids.first().copied(),
        first.body["id"].as_str(),
        "a new key makes a new run"
    );

    // Both runs complete once.
    for id in [first.body["id"].as_str().unwrap(), ids.first().unwrap()] {
        let run = server.wait_terminal(id, FAST_RUN_WITHIN).await;
        assert_eq!(run["status"], "completed", "{run:#}");
        assert_eq!(run["attempts"], 1, "{run:#}");
    }
    // A repeat after completion still answers 200 with the same id.
    let late = server.enqueue(&body).await;
    assert_eq!(late.status, 200, "{}", late.body);
    assert_eq!(late.body["id"], json!(ids.first().unwrap()));
    server.shutdown().await;
}
