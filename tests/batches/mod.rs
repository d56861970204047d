//! Batches over real HTTP: a 10,000-run batch on PostgreSQL stored whole or not at all,
//! pause and resume under the cooldown, a cancel that ends the rest, progress that adds up
//! at every poll, results streamed once each, `batch_finished` on `/events?batch=`, and
//! hostile bodies refused with nothing written. `pause_starts` checks that a pause stops
//! new starts within one claim round. This module holds the server set-up and the calls
//! the tests share.

mod control;
mod create;
mod hostile;
mod pause_starts;
mod processes;

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::TestServer;

/// How long a poll waits for a batch to reach a state.
const WAIT_WITHIN: Duration = Duration::from_secs(60);
const POLL_EVERY: Duration = Duration::from_millis(20);
/// Sim settings: answers in 20 ms.
pub(crate) const FAST_SIM: &str = "latency = \"20ms\"\nlatency_jitter = \"0ms\"";
/// Sim settings: answers long after any test ends.
pub(crate) const SLOW_SIM: &str = "latency = \"30s\"\nlatency_jitter = \"0ms\"";

/// A server on a fresh SQLite file, or on `database_url`, with a small pool, the given
/// sim settings and extra `[batches]` keys.
pub(crate) async fn start(sim: &str, batches: &str, database_url: Option<&str>) -> TestServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut database = format!(
        "[database]\nsqlite_path = {:?}\n",
        dir.path().join("sluice.db").display().to_string()
    );
    if let Some(url) = database_url {
        database.push_str(&format!("url = {url:?}\n"));
    }
    let toml = format!(
        r#"{database}
[dispatch]
slots = 4
shutdown_grace = "1s"

[batches]
finish_interval = "50ms"
{batches}

[[providers]]
name = "sim"
kind = "sim"

[providers.sim]
{sim}
"#
    );
    TestServer::start(&toml, &[]).await.owning(dir)
}

pub(crate) fn chat(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": text}]})
}

/// `n` runs that take every field from the batch's defaults but their request.
pub(crate) fn runs(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"request": chat(&format!("item {i}"))}))
        .collect()
}

/// A status and a JSON body (`Null` when the body is not JSON).
pub(crate) struct Reply {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<u64>,
}

pub(crate) async fn send(req: reqwest::RequestBuilder) -> Reply {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = resp.json().await.unwrap_or(Value::Null);
    Reply {
        status,
        body,
        retry_after,
    }
}

pub(crate) async fn post(server: &TestServer, path: &str, body: &Value) -> Reply {
    send(server.http().post(server.url(path)).json(body)).await
}

pub(crate) async fn get(server: &TestServer, path: &str) -> Reply {
    send(server.http().get(server.url(path))).await
}

/// Submits a batch and returns its id, asserting it was created.
pub(crate) async fn create_batch(server: &TestServer, body: &Value) -> String {
    let reply = post(server, "/batches", body).await;
    assert_eq!(reply.status, 202, "batch not created: {}", reply.body);
    reply.body["id"].as_str().expect("batch id").to_string()
}

/// The sum of a batch reply's counts, checked against its `run_count`.
pub(crate) fn counted(batch: &Value) -> i64 {
    let counts = batch["counts"].as_object().expect("counts");
    let total: i64 = counts.values().map(|n| n.as_i64().unwrap()).sum();
    assert_eq!(
        total,
        batch["run_count"].as_i64().unwrap(),
        "counts do not add up: {batch}"
    );
    total
}

/// Polls `GET /batches/{id}` until `pred` holds, checking at every poll that the counts
/// add up; returns the last body.
pub(crate) async fn wait_batch(
    server: &TestServer,
    id: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT_WITHIN;
    loop {
        let reply = get(server, &format!("/batches/{id}")).await;
        assert_eq!(reply.status, 200, "GET batch: {}", reply.body);
        counted(&reply.body);
        if pred(&reply.body) {
            return reply.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "batch {id} never became {what}; last seen: {}",
            reply.body
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}
