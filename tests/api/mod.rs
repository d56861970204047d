//! The HTTP API over real HTTP, with the server started in-process by
//! `sluice::app::serve` on an ephemeral port: the enqueue → completion round trip (on
//! SQLite and on PostgreSQL), idempotency, the whole error contract, request ids,
//! `/health`, retries into the dead-letter state, attempt timeouts, and cancellation of a
//! queued and of a running run.
//!
//! Every test starts its own server with its own database and shuts it down at the end,
//! asserting that `serve` returned `Ok`. Polls are short and bounded; a deadline that
//! passes panics naming what was awaited and the last body seen. This module holds the
//! server set-up and the contract's assertions; the tests are grouped by concern below.

mod cancel;
mod client;
mod errors;
mod health;
mod idempotency;
mod runs;

use std::time::Duration;

use serde_json::{Value, json};

use crate::common::TestServer;
use client::Reply;

/// How often the polls look again.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// How long a fast run (20 ms sim latency) may take to finish.
const FAST_RUN_WITHIN: Duration = Duration::from_secs(10);
/// How long `serve` may take to return after the shutdown signal.
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(15);
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

/// Starts a server on a fresh SQLite file with the given sim settings.
async fn start_sim(sim: &str) -> TestServer {
    start_sim_on(sim, None).await
}

/// Starts a server; `database_url` selects PostgreSQL, `None` a fresh SQLite file.
async fn start_sim_on(sim: &str, database_url: Option<String>) -> TestServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut database = format!(
        "[database]\nsqlite_path = {:?}\n",
        dir.path().join("sluice.db").display().to_string()
    );
    if let Some(url) = database_url {
        database.push_str(&format!("url = {url:?}\n"));
    }
    let toml = format!("{database}{}", config_text(sim));
    TestServer::start(&toml, &[]).await.owning(dir)
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
