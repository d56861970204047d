//! A provider that slows down tenfold in the middle of a run of work: the adaptive attempt
//! timeout learns from the attempts that time out, so every run still completes, each
//! after at most `ceil(log2(10 / 2)) = 3` generation timeouts (growth 2, factor 2).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::common::{TestServer, enqueue, http, wait_run};
use crate::provider_e2e::server_config;

/// The stand-in's latency before the slow-down.
const FAST_MS: u64 = 200;
/// How much slower it gets.
const SLOWDOWN: u64 = 10;
/// Runs that teach the adaptive timeout the fast pace (more than its 20 minimum samples).
const WARM_UP_RUNS: usize = 30;
/// Runs sent after the slow-down, all at once.
const SLOW_RUNS: usize = 12;
/// Generation timeouts a run may meet: `ceil(log_growth(slowdown / factor))`.
const MAX_TIMEOUTS_PER_RUN: usize = 3;

/// An OpenAI-compatible stand-in whose every answer takes `latency_ms`.
#[derive(Clone, Default)]
struct SlowProvider {
    latency_ms: Arc<AtomicU64>,
    calls: Arc<AtomicUsize>,
}

impl SlowProvider {
    async fn serve(self) -> String {
        let router = Router::new().route(
            "/v1/chat/completions",
            post(move |Json(_): Json<Value>| {
                let me = self.clone();
                async move {
                    me.calls.fetch_add(1, Ordering::SeqCst);
                    let ms = me.latency_ms.load(Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Json(json!({
                        "choices": [{"message": {"role": "assistant", "content": "done"},
                                     "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 3, "completion_tokens": 1}
                    }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        format!("http://{addr}")
    }
}

/// The adaptive timeout's settings for a 200 ms provider, and a breaker kept out of the
/// way (its pauses would only add waiting; it is not what this test is about).
const EXTRA: &str = r#"
[providers.breaker]
failure_threshold = 1000
[queue]
live_queue_timeout = "60s"
# Low enough for a 200 ms provider to get a timeout of twice its p95.
attempt_timeout_floor = "50ms"
# Queue pressure only lengthens the timeout: without it the test sees the bare growth.
adaptive_timeout_penalty = "0ms"
"#;

/// Enqueues `n` runs at once and waits for each to finish; returns the finished runs.
async fn run_batch(client: &reqwest::Client, server: &TestServer, n: usize) -> Vec<Value> {
    let body = json!({
        "provider": "fake",
        "request": {"messages": [{"role": "user", "content": "hello"}]}
    });
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(enqueue(client, server, body.clone()).await);
    }
    let mut runs = Vec::with_capacity(n);
    for id in ids {
        let run = wait_run(client, server, &id, "finished", |r| {
            r["finished_at"].is_string()
        })
        .await;
        runs.push(run);
    }
    runs
}

fn timeouts_of(run: &Value) -> usize {
    run["attempt_log"]
        .as_array()
        .expect("attempt_log")
        .iter()
        .filter(|a| a["outcome"] == "timeout")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenfold_slowdown_costs_each_run_at_most_three_timeouts() {
    let provider = SlowProvider::default();
    provider.latency_ms.store(FAST_MS, Ordering::SeqCst);
    let root = provider.clone().serve().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&server_config(&dir, "openai", &root, EXTRA), &[]).await;
    let client = http();

    for run in run_batch(&client, &server, WARM_UP_RUNS).await {
        assert_eq!(run["status"], "completed", "warm-up run: {run}");
    }
    provider
        .latency_ms
        .store(FAST_MS * SLOWDOWN, Ordering::SeqCst);
    let runs = run_batch(&client, &server, SLOW_RUNS).await;

    let mut total = 0;
    for run in &runs {
        assert_eq!(
            run["status"], "completed",
            "every run completes after the slow-down: {run}"
        );
        let timeouts = timeouts_of(run);
        assert!(
            timeouts <= MAX_TIMEOUTS_PER_RUN,
            "a run met {timeouts} generation timeouts, more than {MAX_TIMEOUTS_PER_RUN}: {run}"
        );
        total += timeouts;
    }
    let per_run: Vec<usize> = runs.iter().map(timeouts_of).collect();
    eprintln!("generation timeouts per run after the slow-down: {per_run:?}");
    assert!(
        total >= 1,
        "the slow-down must have cost timeouts, or it tested nothing"
    );
    let calls = provider.calls.load(Ordering::SeqCst);
    assert_eq!(
        calls,
        WARM_UP_RUNS + SLOW_RUNS + total,
        "the stand-in saw one call per attempt"
    );
    server.stop().await;
}
