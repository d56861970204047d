//! A provider's own retry settings: a run of a provider with its own `max_attempts` gets
//! that default, and its retries wait its own backoff, not `[retry]`'s.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{TestServer, enqueue, http, wait_run};

/// `[retry]` waits an hour between attempts and allows four; provider `own` fails every
/// attempt, allows two and retries after at most 20 ms; provider `plain` keeps `[retry]`'s.
const CONFIG: &str = r#"
[retry]
max_attempts = 4
backoff_base = "1h"
backoff_cap = "1h"
[[providers]]
name = "own"
kind = "sim"
max_attempts = 2
backoff_base = "10ms"
backoff_cap = "20ms"
[providers.sim]
latency = "1ms"
latency_jitter = "0ms"
error_rate = 1.0
[[providers]]
name = "plain"
kind = "sim"
"#;

/// Well under the hour `[retry]`'s backoff would take (full jitter makes a retry within
/// this window under `[retry]` a chance of about 1 in 700).
const WITHIN: Duration = Duration::from_secs(5);

fn body(provider: &str) -> serde_json::Value {
    json!({"provider": provider, "request": {"messages": [{"role": "user", "content": "hi"}]}})
}

#[tokio::test]
async fn a_provider_with_its_own_max_attempts_gives_its_runs_that_default() {
    let server = TestServer::start_on_sqlite(CONFIG).await;
    let client = http();

    let started = Instant::now();
    let id = enqueue(&client, &server, body("own")).await;
    let run = wait_run(&client, &server, &id, "failed", |r| r["status"] == "failed").await;
    assert_eq!(run["max_attempts"], 2, "the provider's default: {run}");
    assert_eq!(run["attempts"], 2, "{run}");
    assert!(
        started.elapsed() < WITHIN,
        "the retry waited the provider's backoff, not [retry]'s hour: {:?}",
        started.elapsed()
    );

    let plain = enqueue(&client, &server, body("plain")).await;
    let run = wait_run(&client, &server, &plain, "completed", |r| {
        r["status"] == "completed"
    })
    .await;
    assert_eq!(run["max_attempts"], 4, "[retry]'s default: {run}");

    let mut asked = body("own");
    asked["max_attempts"] = json!(7);
    let id = enqueue(&client, &server, asked).await;
    let run = wait_run(&client, &server, &id, "queued or finished", |r| {
        r["max_attempts"].is_number()
    })
    .await;
    assert_eq!(run["max_attempts"], 7, "the request's own wins: {run}");
    server.stop().await;
}
