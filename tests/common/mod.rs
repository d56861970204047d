//! Shared test support: a fresh PostgreSQL database per test (on the server named by
//! `SLUICE_TEST_PG_URL`, which `scripts/test.sh` provides), temporary SQLite stores, and
//! run builders. PostgreSQL tests fail loudly when no server is configured: they never skip.
#![allow(dead_code)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use sluice::run::{Class, RunId};
use sluice::store::{NewRun, OpenOptions, Store};
use sqlx::Connection;

/// The PostgreSQL server URL for tests.
pub fn pg_server_url() -> String {
    std::env::var("SLUICE_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "SLUICE_TEST_PG_URL is not set: PostgreSQL tests need a server. \
             Run the suite with scripts/test.sh, which starts a throwaway PostgreSQL, \
             or set SLUICE_TEST_PG_URL=postgres://user@host:port/postgres"
        )
    })
}

/// Creates an empty database for one test and returns its URL.
pub async fn fresh_pg_database() -> String {
    let server = pg_server_url();
    let name = format!("sluice_test_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL at {server}: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    conn.close().await.ok();
    with_database(&server, &name)
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

pub async fn pg_store() -> Store {
    let url = fresh_pg_database().await;
    Store::open(
        Some(&url),
        std::path::Path::new("unused"),
        &OpenOptions {
            max_connections: 20,
            acquire_timeout: Duration::from_secs(10),
        },
    )
    .await
    .expect("open PostgreSQL store")
}

/// A SQLite store in a temporary folder; keep the guard alive for the test's duration.
pub async fn sqlite_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(
        None,
        &dir.path().join("nested").join("sluice.db"),
        &OpenOptions::default(),
    )
    .await
    .expect("open SQLite store");
    (store, dir)
}

pub fn chat(text: &str) -> Box<RawValue> {
    RawValue::from_string(format!(
        r#"{{"messages":[{{"role":"user","content":{}}}]}}"#,
        serde_json::to_string(text).unwrap()
    ))
    .unwrap()
}

/// A run due at `now` with defaults the tests adjust.
pub fn new_run(now: DateTime<Utc>) -> NewRun {
    NewRun {
        id: RunId::new(),
        provider: "sim".into(),
        model: Some("sim-1".into()),
        request: chat("hello"),
        class: Class::Live,
        priority: 5,
        tenant: None,
        concurrency_key: None,
        session: None,
        batch: None,
        idempotency_key: None,
        metadata: None,
        stream: false,
        max_attempts: 5,
        timeout_ms: None,
        queue_deadline_at: None,
        due_at: now,
        created_at: now,
    }
}

/// A fixed, millisecond-aligned starting time for store tests (both backends keep
/// at least millisecond precision).
pub fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2030-01-01T00:00:00.000Z")
        .unwrap()
        .with_timezone(&Utc)
}

pub fn ms(n: i64) -> chrono::Duration {
    chrono::Duration::milliseconds(n)
}

/// A server running in this test process on an ephemeral port.
pub struct TestServer {
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Starts `sluice::app::serve` with the given TOML (listen is forced to port 0).
    pub async fn start(toml: &str, env: &[(&str, &str)]) -> TestServer {
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push(("SLUICE_LISTEN".into(), "127.0.0.1:0".into()));
        let config =
            sluice::config::Config::from_toml_and_env(toml, std::path::Path::new("test.toml"), env)
                .expect("test config is valid");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            sluice::app::serve(
                config,
                std::sync::Arc::new(sluice::clock::SystemClock),
                async move {
                    let _ = stop_rx.await;
                },
                move |addr| {
                    let _ = addr_tx.send(addr);
                },
            )
            .await
        });
        let addr = tokio::time::timeout(Duration::from_secs(30), addr_rx)
            .await
            .expect("server starts within 30 s")
            .expect("server reports its address");
        TestServer {
            addr,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Shuts down gracefully and checks the server returned cleanly.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(60), task)
                .await
                .expect("server stops within 60 s")
                .expect("server task")
                .expect("server returns Ok");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
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
    client
        .get(server.url(&format!("/runs/{id}")))
        .send()
        .await
        .expect("get run")
        .json()
        .await
        .expect("run JSON")
}

/// Polls the run until `pred` holds (bounded), returning the last body.
pub async fn wait_run(
    client: &reqwest::Client,
    server: &TestServer,
    id: &str,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let run = get_run(client, server, id).await;
        if pred(&run) {
            return run;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("run {id} never became {what}; last seen: {run}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A minimal SSE reader over a reqwest response: yields (id, event, data) records.
pub struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

impl SseReader {
    pub async fn open(
        client: &reqwest::Client,
        url: &str,
        last_event_id: Option<&str>,
    ) -> SseReader {
        let mut req = client.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let resp = req.send().await.expect("open event stream");
        assert_eq!(resp.status(), 200, "event stream status");
        SseReader {
            resp,
            buf: String::new(),
        }
    }

    /// The next event (comments skipped), or None when the stream ends.
    pub async fn next(&mut self) -> Option<(Option<String>, String, serde_json::Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, String::from("message"), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() && id.is_none() {
                    continue; // a keep-alive comment
                }
                let json = serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data));
                return Some((id, event, json));
            }
            match self.resp.chunk().await.expect("read event stream") {
                Some(bytes) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                None => return None,
            }
        }
    }
}
