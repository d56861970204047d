//! The real `sluice` binary over real HTTP: a newcomer's first start, graceful shutdown on
//! SIGTERM (drain, and release after the grace period), crash recovery after SIGKILL, and
//! three processes on one database whose leader is killed.
//!
//! Each test starts the binary as a child process ([`TestServer::spawn`]) in a fresh
//! temporary directory, configured through the environment. This module holds the calls
//! the tests make on such a server; [`database`] reads a PostgreSQL test database directly.

mod database;
mod first_start;
mod leader;
mod sigkill;
mod sigterm;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};

use crate::common::TestServer;

/// How often the polls look again.
const POLL_EVERY: Duration = Duration::from_millis(50);

fn repo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sluice.toml")
}

/// Enqueues a chat run with the sim provider and returns its id.
async fn enqueue(server: &TestServer, content: &str) -> String {
    let body = json!({
        "provider": "sim",
        "request": {"messages": [{"role": "user", "content": content}]},
    });
    let resp = server
        .http()
        .post(server.url("/enqueue"))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{}: POST /enqueue failed: {e}", server.addr));
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(
        status,
        reqwest::StatusCode::ACCEPTED,
        "{}: POST /enqueue answered {status}: {text}",
        server.addr
    );
    let reply: Value = serde_json::from_str(&text).expect("enqueue reply is JSON");
    reply["id"]
        .as_str()
        .unwrap_or_else(|| panic!("enqueue reply without an id: {text}"))
        .to_string()
}

/// Enqueues `n` runs, at most 8 requests at a time; returns their ids.
async fn enqueue_many(server: &TestServer, n: usize, label: &str) -> Vec<String> {
    futures::stream::iter(0..n)
        .map(|i| async move { enqueue(server, &format!("{label} #{i}")).await })
        .buffer_unordered(8)
        .collect()
        .await
}

async fn get_json(server: &TestServer, path: &str) -> Value {
    let resp = server
        .http()
        .get(server.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{}: GET {path} failed: {e}", server.addr));
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(
        status,
        reqwest::StatusCode::OK,
        "{}: GET {path} answered {status}: {text}",
        server.addr
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"))
}

async fn run(server: &TestServer, id: &str) -> Value {
    get_json(server, &format!("/runs/{id}")).await
}

/// Polls `GET /runs/{id}` until the run is in a terminal status; returns the run.
async fn wait_terminal(server: &TestServer, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let run = run(server, id).await;
        let status = run["status"].as_str().unwrap_or_default();
        if !matches!(status, "queued" | "running") {
            return run;
        }
        if Instant::now() > deadline {
            panic!("run {id} is still {status} after {within:?}: {run:#}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
