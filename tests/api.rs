//! The HTTP API over real HTTP, with the server started in-process by
//! `sluice::app::serve` on an ephemeral port: the enqueue → completion round trip (on
//! SQLite and on PostgreSQL), idempotency, the whole error contract, request ids,
//! `/health`, retries into the dead-letter state, attempt timeouts, and cancellation of a
//! queued and of a running run.
//!
//! Every test starts its own server with its own database and shuts it down at the end,
//! asserting that `serve` returned `Ok`. Polls are short and bounded; a deadline that
//! passes panics naming what was awaited and the last body seen.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};
use sluice::config::Config;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How often the polls look again.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// How long a fast run (20 ms sim latency) may take to finish.
const FAST_RUN_WITHIN: Duration = Duration::from_secs(10);
/// Statuses a run never leaves.
const TERMINAL: &[&str] = &["completed", "failed", "timed_out", "cancelled", "dropped"];

// ---------------------------------------------------------------------------------------
// The in-process server
// ---------------------------------------------------------------------------------------

/// Sim settings for a fast, always-answering provider.
const FAST_SIM: &str = "latency = \"20ms\"\nlatency_jitter = \"0ms\"\n";
/// Sim settings for a provider that takes far longer than any test.
const SLOW_SIM: &str = "latency = \"30s\"\nlatency_jitter = \"0ms\"\n";

/// The test config: small pool, fast backoff, a 4 KiB body limit and one `sim` provider
/// (no `default_model`: the provider's own default applies) with the given settings.
fn config_text(sim: &str) -> String {
    format!(
        r#"
[dispatch]
slots = 4
shutdown_grace = "1s"

[retry]
backoff_base = "10ms"
backoff_cap = "50ms"

[http]
body_limit = 4096

[[providers]]
name = "sim"
kind = "sim"

[providers.sim]
{sim}
"#
    )
}

struct TestServer {
    base: String,
    http: reqwest::Client,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
    backend: &'static str,
    _dir: tempfile::TempDir,
}

/// One HTTP exchange: status, headers and the body (parsed as JSON when it is JSON,
/// otherwise kept as a JSON string so messages can show it).
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl TestServer {
    /// Starts a server on SQLite with the given sim settings.
    async fn start(sim: &str) -> TestServer {
        TestServer::start_on(sim, None).await
    }

    /// Starts a server; `database_url` selects PostgreSQL, `None` a fresh SQLite file.
    async fn start_on(sim: &str, database_url: Option<String>) -> TestServer {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::from_toml_and_env(
            &config_text(sim),
            Path::new("test.toml"),
            Vec::<(String, String)>::new(),
        )
        .expect("the test config is valid");
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.database.sqlite_path = dir.path().join("sluice.db");
        let backend = if database_url.is_some() {
            "postgres"
        } else {
            "sqlite"
        };
        config.database.url = database_url;

        let (stop, stopped) = oneshot::channel::<()>();
        let (addr_tx, addr_rx) = oneshot::channel::<SocketAddr>();
        let task = tokio::spawn(sluice::app::serve(
            config,
            std::sync::Arc::new(sluice::clock::SystemClock),
            async move {
                let _ = stopped.await;
            },
            move |addr| {
                let _ = addr_tx.send(addr);
            },
        ));
        let addr = match tokio::time::timeout(Duration::from_secs(20), addr_rx).await {
            Ok(Ok(addr)) => addr,
            Ok(Err(_)) => {
                // The callback was dropped unused: serve failed before listening.
                let result = task.await;
                panic!("the server did not start listening: {result:?}");
            }
            Err(_) => panic!("the server did not start listening within 20 s"),
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("build the HTTP client");
        TestServer {
            base: format!("http://{addr}"),
            http,
            stop,
            task,
            backend,
            _dir: dir,
        }
    }

    /// Triggers graceful shutdown and asserts that `serve` returned `Ok` promptly.
    async fn shutdown(self) {
        let TestServer {
            http, stop, task, ..
        } = self;
        // Close the client's keep-alive connections first.
        drop(http);
        let _ = stop.send(());
        let joined = tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("serve returned within 15 s of the shutdown signal");
        let result = joined.expect("the serve task did not panic");
        assert!(result.is_ok(), "serve returned an error: {result:?}");
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// Sends a request and reads the reply. Every response must carry `x-request-id`.
    async fn send(&self, what: &str, req: RequestBuilder) -> Reply {
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{what}: request failed: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{what}: reading the body failed: {e}"));
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        let reply = Reply {
            status,
            headers,
            body,
        };
        let id = reply.header("x-request-id").unwrap_or("");
        assert!(
            !id.is_empty(),
            "{what}: response {status} has no x-request-id header; headers {:?}",
            reply.headers
        );
        reply
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(&format!("GET {path}"), self.request(Method::GET, path))
            .await
    }

    async fn post_raw(&self, what: &str, body: impl Into<String>) -> Reply {
        let req = self
            .request(Method::POST, "/enqueue")
            .header(CONTENT_TYPE, "application/json")
            .body(body.into());
        self.send(what, req).await
    }

    async fn enqueue(&self, body: &Value) -> Reply {
        self.post_raw(&format!("POST /enqueue {body}"), body.to_string())
            .await
    }

    /// Enqueues and asserts the 202 reply's shape; returns the run id.
    async fn enqueue_ok(&self, body: &Value) -> String {
        let reply = self.enqueue(body).await;
        assert_eq!(
            reply.status, 202,
            "POST /enqueue {body}: expected 202, got {} {}",
            reply.status, reply.body
        );
        assert_enqueue_reply(&reply.body);
        reply.body["id"].as_str().unwrap().to_string()
    }

    async fn cancel(&self, id: &str) -> Reply {
        let path = format!("/runs/{id}/cancel");
        self.send(&format!("POST {path}"), self.request(Method::POST, &path))
            .await
    }

    async fn run(&self, id: &str) -> Value {
        let reply = self.get(&format!("/runs/{id}")).await;
        assert_eq!(
            reply.status, 200,
            "GET /runs/{id}: expected 200, got {} {}",
            reply.status, reply.body
        );
        reply.body
    }

    /// Polls `GET /runs/ID` until `done` holds; panics after `within` with the last body.
    async fn wait_run(
        &self,
        id: &str,
        what: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let body = self.run(id).await;
            if done(&body) {
                return body;
            }
            if Instant::now() >= deadline {
                panic!("run {id}: waited {within:?} for {what}; last body: {body:#}");
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    async fn wait_terminal(&self, id: &str, within: Duration) -> Value {
        self.wait_run(id, "a terminal status", within, |b| {
            TERMINAL.contains(&b["status"].as_str().unwrap_or(""))
        })
        .await
    }

    async fn health(&self) -> Value {
        let reply = self.get("/health").await;
        assert_eq!(
            reply.status, 200,
            "GET /health: expected 200, got {} {}",
            reply.status, reply.body
        );
        reply.body
    }

    /// Runs queued or running, both classes, as `/health` reports them.
    async fn active_runs(&self) -> i64 {
        let h = self.health().await;
        let q = &h["queues"];
        ["live", "background"]
            .iter()
            .flat_map(|class| ["queued", "running"].map(|s| &q[*class][s]))
            .map(|v| {
                v.as_i64()
                    .unwrap_or_else(|| panic!("/health queue depth is not an integer: {h:#}"))
            })
            .sum()
    }
}

// ---------------------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------------------

fn chat(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": text}]})
}

/// An RFC 3339 time `hours` from now, in UTC with milliseconds.
fn in_hours(hours: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::hours(hours))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A time of the API: RFC 3339, UTC (`Z`), with at least millisecond precision.
fn assert_time(v: &Value, what: &str) {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("{what} should be a time string, got {v}"));
    assert!(s.ends_with('Z'), "{what} {s:?} is not UTC with a 'Z'");
    let frac = s
        .split_once('.')
        .map(|(_, f)| f.trim_end_matches('Z'))
        .unwrap_or_else(|| panic!("{what} {s:?} has no fractional seconds"));
    assert!(
        frac.len() >= 3 && frac.chars().all(|c| c.is_ascii_digit()),
        "{what} {s:?} does not have millisecond precision"
    );
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{what} {s:?} is not RFC 3339: {e}"));
}

/// `{"id":…,"status":…,"links":{"self":"/runs/ID","events":"/runs/ID/events"}}` with a
/// UUIDv7 id.
fn assert_enqueue_reply(body: &Value) {
    let id = body["id"]
        .as_str()
        .unwrap_or_else(|| panic!("enqueue reply has no string id: {body}"));
    let uuid: uuid::Uuid = id
        .parse()
        .unwrap_or_else(|e| panic!("enqueue reply id {id:?} is not a UUID: {e}"));
    assert_eq!(uuid.get_version_num(), 7, "run id {id} is not a UUIDv7");
    assert!(body["status"].is_string(), "enqueue reply status: {body}");
    assert_eq!(
        body["links"]["self"],
        json!(format!("/runs/{id}")),
        "links.self: {body}"
    );
    assert_eq!(
        body["links"]["events"],
        json!(format!("/runs/{id}/events")),
        "links.events: {body}"
    );
}

/// The error contract: the status, `{"error":{"code":…,"message":…,"field":…}}`, and,
/// when `field` is given, that exact field.
fn assert_error(reply: &Reply, case: &str, status: u16, code: &str, field: Option<&str>) {
    assert!(
        reply.status < 500,
        "{case}: a client error was answered with {} {}",
        reply.status,
        reply.body
    );
    assert_eq!(
        reply.status, status,
        "{case}: expected {status} {code}, got {} {}",
        reply.status, reply.body
    );
    let ct = reply.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("application/json"),
        "{case}: error content-type is {ct:?}"
    );
    let err = &reply.body["error"];
    assert_eq!(err["code"], json!(code), "{case}: body {}", reply.body);
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{case}: error has no message: {}",
        reply.body
    );
    if let Some(field) = field {
        assert_eq!(err["field"], json!(field), "{case}: body {}", reply.body);
    }
}

/// Everything a completed run of `round_trip` must show, but its model (see
/// [`assert_default_model`]).
fn assert_completed_round_trip(run: &Value, id: &str, metadata: &Value) {
    assert_eq!(run["status"], "completed", "run: {run:#}");
    assert_eq!(run["id"], json!(id), "run: {run:#}");
    assert_eq!(run["provider"], "sim", "run: {run:#}");
    assert_eq!(run["class"], "live", "default class: {run:#}");
    assert_eq!(run["priority"], 5, "default priority: {run:#}");
    assert_eq!(run["metadata"], *metadata, "metadata echoed: {run:#}");
    assert_eq!(run["attempts"], 1, "run: {run:#}");
    assert_eq!(run["max_attempts"], 5, "default max_attempts: {run:#}");

    let content = run["output"]["content"].as_str().unwrap_or("");
    assert!(!content.is_empty(), "output.content: {run:#}");
    assert!(
        content.contains("round trip"),
        "the sim answers with the prompt: {run:#}"
    );
    for key in ["prompt_tokens", "completion_tokens"] {
        assert!(
            run["usage"][key].as_i64().is_some_and(|n| n > 0),
            "usage.{key}: {run:#}"
        );
    }

    for key in ["created_at", "started_at", "finished_at"] {
        assert_time(&run[key], key);
    }
    // Absent values are present as null.
    for key in [
        "tenant",
        "concurrency_key",
        "batch",
        "next_attempt_at",
        "timeout_origin",
        "drop_reason",
        "error",
    ] {
        assert_eq!(
            run.get(key),
            Some(&Value::Null),
            "{key} should be null: {run:#}"
        );
    }

    let log = run["attempt_log"]
        .as_array()
        .unwrap_or_else(|| panic!("attempt_log is not an array: {run:#}"));
    assert_eq!(log.len(), 1, "attempt_log: {run:#}");
    assert_eq!(log[0]["attempt"], 1, "attempt_log: {run:#}");
    assert_eq!(log[0]["outcome"], "completed", "attempt_log: {run:#}");
    assert_time(&log[0]["started_at"], "attempt_log[0].started_at");
    assert_time(&log[0]["finished_at"], "attempt_log[0].finished_at");
}

/// A run naming no model gets its provider's default model; the built-in `sim` provider's
/// is `sim-1`. Checked at the end of a test, so the rest of the test reports first.
fn assert_default_model(run: &Value) {
    assert_eq!(
        run["model"], "sim-1",
        "a run naming no model gets the sim provider's default model: {run:#}"
    );
}

/// Enqueues a live run with metadata and no model/class/priority, waits for it, checks
/// the whole completed record (but the model) and returns it.
async fn round_trip(server: &TestServer) -> Value {
    let metadata = json!({
        "user": {"id": 42, "tags": ["a", "b"]},
        "note": "héllo \"quoted\"",
        "n": 1.5,
        "empty": {}
    });
    let id = server
        .enqueue_ok(&json!({
            "provider": "sim",
            "request": chat("a round trip"),
            "metadata": metadata,
        }))
        .await;
    let health = server.health().await;
    assert_eq!(health["database"]["backend"], server.backend, "{health:#}");
    let run = server.wait_terminal(&id, FAST_RUN_WITHIN).await;
    assert_completed_round_trip(&run, &id, &metadata);
    run
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueued_run_completes_with_the_full_record() {
    let server = TestServer::start(FAST_SIM).await;
    let first = round_trip(&server).await;

    // Explicit model, class and priority are kept; a JSON content type with parameters is
    // JSON.
    let body = json!({
        "provider": "sim",
        "model": "sim-big",
        "class": "background",
        "priority": 2,
        "max_attempts": 7,
        "request": chat("explicit"),
    });
    let reply = server
        .send(
            "POST /enqueue with charset",
            server
                .request(Method::POST, "/enqueue")
                .header(CONTENT_TYPE, "application/json; charset=utf-8")
                .body(body.to_string()),
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    assert_enqueue_reply(&reply.body);
    assert_eq!(reply.body["status"], "queued", "{}", reply.body);
    let id = reply.body["id"].as_str().unwrap().to_string();
    let run = server.wait_terminal(&id, FAST_RUN_WITHIN).await;
    assert_eq!(run["status"], "completed", "{run:#}");
    assert_eq!(run["model"], "sim-big", "{run:#}");
    assert_eq!(run["class"], "background", "{run:#}");
    assert_eq!(run["priority"], 2, "{run:#}");
    assert_eq!(run["max_attempts"], 7, "{run:#}");
    assert_eq!(run["metadata"], Value::Null, "{run:#}");
    assert!(
        run["output"]["content"]
            .as_str()
            .is_some_and(|c| c.contains("[sim-big]")),
        "the sim answers as the model asked for: {run:#}"
    );

    server.shutdown().await;
    assert_default_model(&first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueued_run_completes_on_postgres() {
    let url = common::fresh_pg_database().await;
    let server = TestServer::start_on(FAST_SIM, Some(url)).await;
    let run = round_trip(&server).await;
    server.shutdown().await;
    assert_default_model(&run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_first_run() {
    let server = TestServer::start(FAST_SIM).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_enqueues_are_client_errors_and_leave_no_run() {
    // A slow provider: a run wrongly created here stays queued or running, so `/health`
    // would count it.
    let server = TestServer::start(SLOW_SIM).await;
    assert_eq!(server.active_runs().await, 0);

    let ok = || json!({"provider": "sim", "request": chat("hi")});
    let with = |key: &str, value: Value| {
        let mut b = ok();
        b[key] = value;
        b
    };
    let without = |key: &str| {
        let mut b = ok();
        b.as_object_mut().unwrap().remove(key);
        b
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "unknown provider",
            with("provider", json!("nope")),
            "provider",
        ),
        ("missing provider", without("provider"), "provider"),
        ("missing request", without("request"), "request"),
        (
            "priority of the wrong type",
            with("priority", json!("high")),
            "priority",
        ),
        ("priority 0", with("priority", json!(0)), "priority"),
        ("priority 11", with("priority", json!(11)), "priority"),
        (
            "max_attempts 0",
            with("max_attempts", json!(0)),
            "max_attempts",
        ),
        (
            "max_attempts 51",
            with("max_attempts", json!(51)),
            "max_attempts",
        ),
        (
            "unknown top-level field",
            with("colour", json!("blue")),
            "colour",
        ),
        (
            "request with empty messages",
            with("request", json!({"messages": []})),
            "request.messages",
        ),
        (
            "run_at not RFC 3339",
            with("run_at", json!("tomorrow at noon")),
            "run_at",
        ),
        (
            "timeout_ms above the live cap",
            with("timeout_ms", json!(120_001)),
            "timeout_ms",
        ),
        ("unknown class", with("class", json!("urgent")), "class"),
        (
            "metadata not an object",
            with("metadata", json!([1, 2])),
            "metadata",
        ),
    ];
    for (case, body, field) in &cases {
        let reply = server.enqueue(body).await;
        assert_error(&reply, case, 400, "invalid_request", Some(field));
    }

    // A request without messages names the request (or its messages).
    let reply = server
        .enqueue(&with("request", json!({"model": "x"})))
        .await;
    assert_error(
        &reply,
        "request without messages",
        400,
        "invalid_request",
        None,
    );
    let field = reply.body["error"]["field"].as_str().unwrap_or("");
    assert!(
        field == "request" || field == "request.messages",
        "request without messages: field {field:?}; body {}",
        reply.body
    );

    // Bodies that are not one JSON object.
    let valid = ok().to_string();
    let raw_cases = [
        (
            "malformed JSON (truncated)",
            valid[..valid.len() / 2].to_string(),
        ),
        ("a JSON array", format!("[{valid}]")),
        ("trailing garbage", format!("{valid} x")),
        ("two objects", format!("{valid}{valid}")),
        ("an empty body", String::new()),
        ("JSON null", "null".to_string()),
    ];
    for (case, body) in raw_cases {
        let reply = server.post_raw(case, body).await;
        assert_error(&reply, case, 400, "invalid_request", None);
    }

    // Not JSON by content type.
    let reply = server
        .send(
            "text/plain",
            server
                .request(Method::POST, "/enqueue")
                .header(CONTENT_TYPE, "text/plain")
                .body(valid.clone()),
        )
        .await;
    assert_error(&reply, "text/plain", 415, "unsupported_media_type", None);
    let reply = server
        .send(
            "no content type",
            server.request(Method::POST, "/enqueue").body(valid.clone()),
        )
        .await;
    assert_error(
        &reply,
        "no content type",
        415,
        "unsupported_media_type",
        None,
    );

    // Over the 4 KiB body limit: 8 KiB of otherwise valid JSON.
    let big = with("request", chat(&"x".repeat(8 * 1024))).to_string();
    assert!(big.len() > 8 * 1024);
    let reply = server.post_raw("8 KiB body", big).await;
    assert_error(&reply, "8 KiB body", 413, "payload_too_large", None);

    assert_eq!(
        server.active_runs().await,
        0,
        "a rejected enqueue left a run behind"
    );

    // The check above can see a run: a valid (scheduled) enqueue is counted.
    let id = server.enqueue_ok(&with("run_at", json!(in_hours(1)))).await;
    let health = server.health().await;
    assert_eq!(health["queues"]["live"]["queued"], 1, "{health:#}");
    assert_eq!(server.cancel(&id).await.status, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_routes_and_methods() {
    let server = TestServer::start(FAST_SIM).await;
    let unknown = uuid::Uuid::now_v7().to_string();

    let cases = [
        (Method::GET, format!("/runs/{unknown}"), 404, "not_found"),
        (
            Method::GET,
            "/runs/not-a-uuid".to_string(),
            404,
            "not_found",
        ),
        (Method::GET, "/nope".to_string(), 404, "not_found"),
        (Method::POST, "/nope".to_string(), 404, "not_found"),
        (
            Method::POST,
            format!("/runs/{unknown}/cancel"),
            404,
            "not_found",
        ),
        (
            Method::POST,
            "/runs/not-a-uuid/cancel".to_string(),
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/enqueue".to_string(),
            405,
            "method_not_allowed",
        ),
        (
            Method::DELETE,
            format!("/runs/{unknown}"),
            405,
            "method_not_allowed",
        ),
        (
            Method::GET,
            format!("/runs/{unknown}/cancel"),
            405,
            "method_not_allowed",
        ),
        (
            Method::POST,
            "/health".to_string(),
            405,
            "method_not_allowed",
        ),
    ];
    for (method, path, status, code) in cases {
        let case = format!("{method} {path}");
        let reply = server
            .send(&case, server.request(method.clone(), &path))
            .await;
        assert_error(&reply, &case, status, code, None);
        if status == 405 {
            assert!(
                reply.header("allow").is_some_and(|a| !a.is_empty()),
                "{case}: a 405 names the allowed methods in `Allow`; headers {:?}",
                reply.headers
            );
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_queued_run_then_again_is_a_conflict() {
    let server = TestServer::start(FAST_SIM).await;
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
async fn every_response_carries_a_request_id() {
    let server = TestServer::start(FAST_SIM).await;
    let valid = json!({"provider": "sim", "request": chat("id")}).to_string();
    let requests = vec![
        ("GET /health", server.request(Method::GET, "/health")),
        (
            "POST /enqueue",
            server
                .request(Method::POST, "/enqueue")
                .header(CONTENT_TYPE, "application/json")
                .body(valid.clone()),
        ),
        (
            "POST /enqueue 400",
            server
                .request(Method::POST, "/enqueue")
                .header(CONTENT_TYPE, "application/json")
                .body("{"),
        ),
        (
            "POST /enqueue 415",
            server.request(Method::POST, "/enqueue").body(valid.clone()),
        ),
        (
            "POST /enqueue 413",
            server
                .request(Method::POST, "/enqueue")
                .header(CONTENT_TYPE, "application/json")
                .body("x".repeat(8 * 1024)),
        ),
        ("GET /runs/x", server.request(Method::GET, "/runs/x")),
        ("GET /nope", server.request(Method::GET, "/nope")),
        (
            "DELETE /enqueue",
            server.request(Method::DELETE, "/enqueue"),
        ),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (what, req) in requests {
        // `send` asserts the header is there and not empty.
        let reply = server.send(what, req).await;
        let id = reply.header("x-request-id").unwrap().to_string();
        assert!(seen.insert(id.clone()), "{what}: request id {id} reused");
    }
    // A caller's own request id is kept.
    let reply = server
        .send(
            "GET /health with an id",
            server
                .request(Method::GET, "/health")
                .header("x-request-id", "trace-abc-123"),
        )
        .await;
    assert_eq!(reply.header("x-request-id"), Some("trace-abc-123"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_database_queues_and_workers() {
    let server = TestServer::start(FAST_SIM).await;
    let h = server.health().await;
    assert_eq!(h["status"], "ok", "{h:#}");
    assert_eq!(h["database"]["reachable"], true, "{h:#}");
    assert_eq!(h["database"]["backend"], "sqlite", "{h:#}");
    assert!(
        h["database"]["latency_ms"]
            .as_f64()
            .is_some_and(|l| l >= 0.0),
        "database.latency_ms: {h:#}"
    );
    for class in ["live", "background"] {
        for status in ["queued", "running"] {
            assert_eq!(
                h["queues"][class][status], 0,
                "queues.{class}.{status}: {h:#}"
            );
        }
    }
    assert_eq!(h["workers"]["slots_total"], 4, "{h:#}");
    assert!(
        h["workers"]["slots_busy"].as_u64().is_some_and(|b| b <= 4),
        "workers.slots_busy: {h:#}"
    );
    let providers = h["providers"]
        .as_array()
        .unwrap_or_else(|| panic!("providers is not an array: {h:#}"));
    assert!(
        providers.iter().any(|p| p["name"] == "sim"),
        "the sim provider is listed: {h:#}"
    );

    // Scheduled runs show up in their class's queued depth.
    server
        .enqueue_ok(&json!({"provider": "sim", "request": chat("a"), "run_at": in_hours(1)}))
        .await;
    for _ in 0..2 {
        server
            .enqueue_ok(&json!({
                "provider": "sim",
                "class": "background",
                "request": chat("b"),
                "run_at": in_hours(1),
            }))
            .await;
    }
    let h = server.health().await;
    assert_eq!(h["queues"]["live"]["queued"], 1, "{h:#}");
    assert_eq!(h["queues"]["background"]["queued"], 2, "{h:#}");
    assert_eq!(h["queues"]["live"]["running"], 0, "{h:#}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_provider_retries_then_dead_letters() {
    let server = TestServer::start(&format!("{FAST_SIM}error_rate = 1.0\n")).await;
    let id = server
        .enqueue_ok(&json!({"provider": "sim", "request": chat("doomed"), "max_attempts": 3}))
        .await;
    let run = server.wait_terminal(&id, FAST_RUN_WITHIN).await;
    assert_eq!(run["status"], "failed", "{run:#}");
    assert_eq!(run["attempts"], 3, "{run:#}");
    assert_eq!(run["max_attempts"], 3, "{run:#}");
    assert_eq!(run["error"]["kind"], "server", "{run:#}");
    assert_eq!(run["error"]["status"], 500, "{run:#}");
    assert!(run["error"]["message"].is_string(), "{run:#}");
    assert_eq!(run["output"], Value::Null, "{run:#}");
    assert_eq!(run["timeout_origin"], Value::Null, "{run:#}");
    assert_eq!(run["next_attempt_at"], Value::Null, "{run:#}");
    assert_time(&run["finished_at"], "finished_at");
    let log = run["attempt_log"].as_array().expect("attempt_log array");
    assert_eq!(log.len(), 3, "{run:#}");
    for (i, a) in log.iter().enumerate() {
        assert_eq!(a["attempt"], i + 1, "{run:#}");
        assert_eq!(a["outcome"], "server", "{run:#}");
        assert_eq!(a["status"], 500, "{run:#}");
        assert_time(&a["started_at"], "attempt started_at");
        assert_time(&a["finished_at"], "attempt finished_at");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_attempts_end_timed_out() {
    let server = TestServer::start(&format!("{FAST_SIM}hang_rate = 1.0\n")).await;
    let id = server
        .enqueue_ok(&json!({
            "provider": "sim",
            "request": chat("never answered"),
            "timeout_ms": 100,
            "max_attempts": 2,
        }))
        .await;
    let run = server.wait_terminal(&id, FAST_RUN_WITHIN).await;
    assert_eq!(run["status"], "timed_out", "{run:#}");
    assert_eq!(run["timeout_origin"], "generation", "{run:#}");
    assert_eq!(run["error"]["kind"], "timeout", "{run:#}");
    assert_eq!(run["attempts"], 2, "{run:#}");
    assert_eq!(run["timeout_ms"], 100, "{run:#}");
    let log = run["attempt_log"].as_array().expect("attempt_log array");
    assert_eq!(log.len(), 2, "{run:#}");
    for a in log {
        assert_eq!(a["outcome"], "timeout", "{run:#}");
        assert_time(&a["finished_at"], "attempt finished_at");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_run_aborts_it() {
    let server = TestServer::start(SLOW_SIM).await;
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
