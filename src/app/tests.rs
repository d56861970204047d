//! The whole server on a manual clock: embedded SQLite in a temporary directory, HTTP on
//! an ephemeral port, and time that moves only when the test says so.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::serve;
use crate::clock::ManualClock;
use crate::config::Config;

/// The server's idle look for due runs: short, so the test need not wait long for the
/// producer to notice the clock moved.
const CONFIG: &str = r#"
[dispatch]
idle_poll = "50ms"
shutdown_grace = "1s"

[[providers]]
name = "sim"
kind = "sim"

[providers.sim]
latency = "10ms"
latency_jitter = "0ms"
"#;
/// How long the run is left waiting on the stopped clock: several idle looks.
const STILL_QUEUED_FOR: Duration = Duration::from_millis(500);
/// How long the run may take once it is due.
const DONE_WITHIN: Duration = Duration::from_secs(10);
const POLL_EVERY: Duration = Duration::from_millis(20);

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .expect("a valid time")
        .with_timezone(&Utc)
}

async fn run_status(http: &reqwest::Client, base: &str, id: &str) -> Value {
    let reply = http
        .get(format!("{base}/runs/{id}"))
        .send()
        .await
        .expect("GET /runs/{id}");
    assert_eq!(reply.status(), 200, "GET /runs/{id}");
    reply.json().await.expect("a JSON run")
}

#[tokio::test]
async fn a_future_run_waits_for_the_clock_then_completes() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::from_toml_and_env(
        CONFIG,
        std::path::Path::new("test.toml"),
        Vec::<(String, String)>::new(),
    )
    .expect("the test config is valid");
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.database.sqlite_path = dir.path().join("sluice.db");
    config.database.url = None;

    let clock = Arc::new(ManualClock::new(at("2030-01-01T12:00:00Z")));
    let (stop, stopped) = oneshot::channel::<()>();
    let (addr_tx, addr_rx) = oneshot::channel::<SocketAddr>();
    let server = tokio::spawn(serve(
        config,
        clock.clone(),
        async move {
            let _ = stopped.await;
        },
        move |addr| {
            let _ = addr_tx.send(addr);
        },
    ));
    let base = format!("http://{}", addr_rx.await.expect("the server listens"));
    let http = reqwest::Client::new();

    // Due in a minute of the server's time, which stands still meanwhile.
    let reply = http
        .post(format!("{base}/enqueue"))
        .json(&json!({
            "provider": "sim",
            "request": {"messages": [{"role": "user", "content": "later"}]},
            "run_at": "2030-01-01T12:01:00Z",
        }))
        .send()
        .await
        .expect("POST /enqueue");
    assert_eq!(reply.status(), 202, "POST /enqueue");
    let body: Value = reply.json().await.expect("a JSON reply");
    let id = body["id"].as_str().expect("a run id").to_string();

    tokio::time::sleep(STILL_QUEUED_FOR).await;
    let run = run_status(&http, &base, &id).await;
    assert_eq!(run["status"], "queued", "before its time: {run:#}");
    assert_eq!(run["attempts"], 0, "before its time: {run:#}");

    clock.advance(chrono::Duration::minutes(1));
    let deadline = Instant::now() + DONE_WITHIN;
    let run = loop {
        let run = run_status(&http, &base, &id).await;
        if run["status"] == "completed" || Instant::now() >= deadline {
            break run;
        }
        tokio::time::sleep(POLL_EVERY).await;
    };
    assert_eq!(run["status"], "completed", "once due: {run:#}");
    assert_eq!(run["attempts"], 1, "once due: {run:#}");

    let _ = stop.send(());
    server
        .await
        .expect("the server task")
        .expect("serve returns cleanly");
}
