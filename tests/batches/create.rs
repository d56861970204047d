//! One request of 10,000 runs on PostgreSQL: every run is stored, or, with one bad run,
//! none is.

use serde_json::json;

use super::{SLOW_SIM, counted, create_batch, get, post, runs, start, wait_batch};
use crate::common::fresh_pg_database;

const BIG: usize = 10_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_runs_are_stored_whole_or_not_at_all() {
    let url = fresh_pg_database().await;
    let server = start(SLOW_SIM, "", Some(&url)).await;
    let body = json!({
        "provider": "sim",
        "class": "background",
        "metadata": {"experiment": "e1"},
        "runs": runs(BIG),
    });
    let id = create_batch(&server, &body).await;
    let batch = wait_batch(&server, &id, "stored", |_| true).await;
    assert_eq!(counted(&batch), BIG as i64);
    assert_eq!(batch["metadata"]["experiment"], "e1");
    // Every run names the batch and took the defaults.
    let page = get(&server, &format!("/runs?batch={id}&limit=500")).await;
    let items = page.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 500, "{}", page.body);
    assert!(items.iter().all(|r| r["class"] == "background"
        && r["batch"] == json!(id)
        && r["metadata"]["experiment"] == "e1"));

    let mut bad = runs(BIG);
    bad[BIG - 1] = json!({"provider": "nope", "request": super::chat("x")});
    let reply = post(
        &server,
        "/batches",
        &json!({"provider": "sim", "runs": bad}),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(reply.body["error"]["code"], "invalid_request");
    assert_eq!(reply.body["error"]["field"], "runs[9999].provider");
    let listed = get(&server, "/batches").await;
    assert_eq!(
        listed.body["items"].as_array().map(Vec::len),
        Some(1),
        "the refused batch left a row: {}",
        listed.body
    );
    let mut total = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/runs?limit=500&cursor={c}"),
            None => "/runs?limit=500".to_string(),
        };
        let page = get(&server, &path).await;
        total += page.body["items"].as_array().expect("items").len();
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(total, BIG, "the refused batch left runs behind");
    server.stop().await;
}
