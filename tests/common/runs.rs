//! Calls on a [`TestServer`]'s run endpoints with a caller's client: enqueue, read, and
//! poll a run until it reaches a state.

use std::time::Duration;

use super::server::TestServer;

/// How long [`wait_run`] polls before it gives up.
const WAIT_RUN_WITHIN: Duration = Duration::from_secs(30);
/// How long one request may take.
const REQUEST_WITHIN: Duration = Duration::from_secs(30);
/// How often [`wait_run`] looks again.
const WAIT_RUN_EVERY: Duration = Duration::from_millis(20);

/// An HTTP client with a bounded request time, rustls ready.
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(REQUEST_WITHIN)
        .build()
        .expect("http client")
}

/// Enqueues a chat run and returns its id.
pub async fn enqueue(
    client: &reqwest::Client,
    server: &TestServer,
    body: serde_json::Value,
) -> String {
    let resp = client
        .post(server.url("/enqueue"))
        .json(&body)
        .send()
        .await
        .expect("enqueue request");
    let status = resp.status();
    let json: serde_json::Value = resp.json().await.expect("enqueue reply is JSON");
    assert!(status.is_success(), "enqueue failed: {status} {json}");
    json["id"].as_str().expect("id").to_string()
}

pub async fn get_run(client: &reqwest::Client, server: &TestServer, id: &str) -> serde_json::Value {
    get_json(client, server, &format!("/runs/{id}")).await
}

/// `GET /health`.
pub async fn read_health(client: &reqwest::Client, server: &TestServer) -> serde_json::Value {
    get_json(client, server, "/health").await
}

async fn get_json(client: &reqwest::Client, server: &TestServer, path: &str) -> serde_json::Value {
    client
        .get(server.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"))
}

/// Polls the run until `pred` holds (bounded), returning the last body.
pub async fn wait_run(
    client: &reqwest::Client,
    server: &TestServer,
    id: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT_RUN_WITHIN;
    loop {
        let run = get_run(client, server, id).await;
        if pred(&run) {
            return run;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("run {id} never became {what}; last seen: {run}");
        }
        tokio::time::sleep(WAIT_RUN_EVERY).await;
    }
}
