//! Two processes on one PostgreSQL: a batch cancelled through one server aborts the
//! attempts the other is running, and the other's `/events?batch=` stream receives the
//! batch's `batch_finished`, whichever process's finisher wrote it.

use std::time::Duration;

use serde_json::json;

use super::{SLOW_SIM, create_batch, post, runs, start, wait_batch};
use crate::common::{SseReader, fresh_pg_database, read_health};

/// How long the attempts may take to be aborted (the provider answers after 30 s).
const ABORTED_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_cancelled_on_one_server_stops_its_attempts_on_the_other() {
    let url = fresh_pg_database().await;
    let b = start(SLOW_SIM, "", Some(&url)).await;
    let id = create_batch(&b, &json!({"provider": "sim", "runs": runs(30)})).await;
    wait_batch(&b, &id, "running on B", |x| x["counts"]["running"] == 4).await;
    let mut events = SseReader::open(b.http(), &b.url(&format!("/events?batch={id}")), None).await;
    let a = start(SLOW_SIM, "", Some(&url)).await;
    let cancelled = post(&a, &format!("/batches/{id}/cancel"), &json!({})).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(
        cancelled.body["counts"]["cancelled"], 30,
        "{}",
        cancelled.body
    );
    let deadline = tokio::time::Instant::now() + ABORTED_WITHIN;
    for server in [&b, &a] {
        loop {
            let health = read_health(server.http(), server).await;
            if health["workers"]["slots_busy"] == 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "a cancelled attempt still runs: {health}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let finished = loop {
        let (_, event, data) = events.next().await.expect("stream open");
        if event == "batch_finished" {
            break data;
        }
    };
    assert_eq!(finished["counts"]["cancelled"], 30, "{finished}");
    a.stop().await;
    b.stop().await;
}
