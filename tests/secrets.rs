//! An API key reaches the provider and nothing else: not the logs (at debug level), not
//! the database, not `/health`, not `/metrics`, not a run's error, even when the provider
//! echoes the key back in an error message.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::common::{Launch, TestServer, http};

/// How long the server may take to exit after SIGTERM.
const CLEAN_EXIT_WITHIN: Duration = Duration::from_secs(30);
const KEY: &str = "sk-test-3f9a1c7e5b2d4f6a8c0e1b3d5f7a9c2e";

async fn fake_provider(seen_keys: Arc<Mutex<Vec<String>>>) -> String {
    let router = Router::new().route(
        "/v1/chat/completions",
        post(move |headers: HeaderMap, Json(body): Json<Value>| {
            let seen = seen_keys.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                seen.lock().unwrap().push(auth.clone());
                if body["messages"][0]["content"] == "leak" {
                    // Like real providers, echo the key in the complaint.
                    let message = format!("Incorrect API key provided: {auth}");
                    return (
                        StatusCode::UNAUTHORIZED,
                        Json(json!({"error": {"message": message}})),
                    )
                        .into_response();
                }
                Json(json!({
                    "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1}
                }))
                .into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}/v1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_appears_nowhere_but_at_the_provider() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let base = fake_provider(seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[[providers]]
name = "paid"
kind = "openai"
base_url = "{base}"
api_key_env = "SLUICE_TEST_SECRET_KEY"
default_model = "gpt-test"
"#
    );
    std::fs::write(dir.path().join("sluice.toml"), config).unwrap();
    let mut server = TestServer::spawn(Launch {
        dir: dir.path(),
        name: "server",
        config: Some(Path::new("sluice.toml")),
        database_url: None,
        env: &[("SLUICE_LOG", "debug"), ("SLUICE_TEST_SECRET_KEY", KEY)],
    })
    .await;
    let client = http();
    let url = |path: &str| server.url(path);

    let mut ids = Vec::new();
    for content in ["hello", "leak"] {
        let reply: Value = client
            .post(url("/enqueue"))
            .json(&json!({"provider": "paid", "request": {"messages": [{"role": "user", "content": content}]}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(reply["id"].as_str().unwrap().to_string());
    }
    let mut bodies = String::new();
    for id in &ids {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let run: Value = client
                .get(url(&format!("/runs/{id}")))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if run["status"] == "completed" || run["status"] == "failed" {
                bodies.push_str(&run.to_string());
                break;
            }
            assert!(Instant::now() < deadline, "run {id} did not finish: {run}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(
        bodies.contains("Incorrect API key provided"),
        "the provider's complaint is kept: {bodies}"
    );
    let health = client
        .get(url("/health"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metrics = client
        .get(url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // SIGTERM and a clean exit (code 0).
    server.stop_within(CLEAN_EXIT_WITHIN).await;

    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .all(|auth| auth == &format!("Bearer {KEY}")),
        "the provider received the key"
    );
    let logs = server.log_text();
    assert!(logs.contains("attempt"), "debug logs were written");
    let mut database = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("data")).unwrap() {
        database.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let database = String::from_utf8_lossy(&database);
    assert!(
        database.contains("Incorrect API key provided"),
        "the database file was read"
    );
    for (place, text) in [
        ("run records", bodies.as_str()),
        ("/health", health.as_str()),
        ("/metrics", metrics.as_str()),
        ("logs", logs.as_str()),
        ("database files", &*database),
    ] {
        assert!(!text.contains(KEY), "the API key leaked into {place}");
        assert!(
            !text.contains(&KEY[8..]),
            "part of the API key leaked into {place}"
        );
    }
}
