//! Chaos: a provider at 1×, 3× and 5× its normal latency, a flood of background runs and a
//! steady trickle of live runs. In every phase every live run completes, no background run
//! starts while a live run of the provider is waiting, background in flight never exceeds
//! its cap, stale background runs are dropped rather than run late, and admission refuses
//! background work under live backlog and accepts it again once calm. Checked from the
//! event log (SQLite, so event ids are commit order) and over HTTP.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{SseReader, TestServer, http, wait_run};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

const BASE_LATENCY_MS: u64 = 80;

async fn fake_provider(latency_ms: Arc<AtomicU64>) -> String {
    let router = Router::new().route(
        "/v1/chat/completions",
        post(move |Json(_): Json<Value>| {
            let latency = latency_ms.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(latency.load(Ordering::SeqCst))).await;
                Json(json!({
                    "choices": [{"message": {"content": "ok"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1}
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}/v1")
}

fn body(class: &str) -> Value {
    json!({"provider": "llm", "class": class,
           "request": {"messages": [{"role": "user", "content": "x"}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_work_stays_first_under_a_background_flood_at_every_latency() {
    let latency = Arc::new(AtomicU64::new(BASE_LATENCY_MS));
    let base = fake_provider(latency.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[database]
sqlite_path = {db:?}
[dispatch]
slots = 2
shutdown_grace = "1s"
[queue]
background_queue_timeout = "1500ms"
live_queue_timeout = "30s"
sweep_interval = "50ms"
[[providers]]
name = "llm"
kind = "openai"
base_url = "{base}"
default_model = "m"
background_max_in_flight = 1
background_queue_max = 20
"#,
        db = dir.path().join("chaos.db").display().to_string()
    );
    let server = TestServer::start(&toml, &[]).await;
    let client = http();
    let mut feed = SseReader::open(&client, &server.url("/events"), None).await;
    let events = tokio::spawn(async move {
        // The stream ends when the server shuts down.
        let mut all = Vec::new();
        while let Some((id, event, data)) = feed.next().await {
            all.push((id.unwrap().parse::<i64>().unwrap(), event, data));
        }
        all
    });

    let mut live_ids = Vec::new();
    let mut refusals: HashMap<String, usize> = HashMap::new();
    let mut accepted_background = 0;
    for multiplier in [1, 3, 5] {
        latency.store(BASE_LATENCY_MS * multiplier, Ordering::SeqCst);
        // A burst of live work: more than the slots, so some of it waits...
        for _ in 0..6 {
            live_ids.push(crate::common::enqueue(&client, &server, body("live")).await);
        }
        // ...and background work is refused for it.
        let resp = client
            .post(server.url("/enqueue"))
            .json(&body("background"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            429,
            "background refused under live backlog at {multiplier}×"
        );
        let reply: Value = resp.json().await.unwrap();
        assert_eq!(reply["error"]["reason"], "live_backlog", "{reply}");
        let phase_end = Instant::now() + Duration::from_millis(2500);
        let mut tick = 0u32;
        while Instant::now() < phase_end {
            // A flood: several background runs every tick; a live run every third tick.
            for _ in 0..4 {
                let resp = client
                    .post(server.url("/enqueue"))
                    .json(&body("background"))
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let reply: Value = resp.json().await.unwrap();
                match status {
                    202 => accepted_background += 1,
                    429 => {
                        *refusals
                            .entry(reply["error"]["reason"].as_str().unwrap().to_string())
                            .or_default() += 1
                    }
                    other => panic!("background enqueue answered {other}: {reply}"),
                }
            }
            if tick.is_multiple_of(3) {
                live_ids.push(crate::common::enqueue(&client, &server, body("live")).await);
            }
            tick += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for id in &live_ids {
            let run = wait_run(&client, &server, id, "completed", |r| {
                r["status"] != "queued" && r["status"] != "running"
            })
            .await;
            assert_eq!(
                run["status"], "completed",
                "live run at {multiplier}× latency: {run}"
            );
        }
    }
    // Calm: background work is accepted again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = client
            .post(server.url("/enqueue"))
            .json(&body("background"))
            .send()
            .await
            .unwrap();
        if resp.status() == 202 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "background never accepted again after the flood"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "accepted background {accepted_background}, refusals {refusals:?}, live {}",
        live_ids.len()
    );
    assert!(
        refusals.get("live_backlog").copied().unwrap_or(0)
            + refusals.get("background_queue_full").copied().unwrap_or(0)
            > 0,
        "the flood was pushed back: {refusals:?}"
    );
    // Let the log settle, then close the feed by shutting down.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    server.stop().await;
    let log = events.await.unwrap();

    // Replay the log in commit order.
    let mut live_waiting: HashSet<String> = HashSet::new();
    let mut background_running: HashSet<String> = HashSet::new();
    let mut background_started: HashSet<String> = HashSet::new();
    let mut most_background = 0;
    for (_, event, data) in &log {
        let run = data["run_id"].as_str().unwrap().to_string();
        let class = data["class"].as_str().unwrap().to_string();
        match (event.as_str(), class.as_str()) {
            ("queued", "live") => {
                live_waiting.insert(run);
            }
            ("started", "live") => {
                live_waiting.remove(&run);
            }
            ("started", "background") => {
                assert!(
                    live_waiting.is_empty(),
                    "background run {run} started while live runs waited: {live_waiting:?}"
                );
                background_running.insert(run.clone());
                background_started.insert(run);
                most_background = most_background.max(background_running.len());
                assert!(
                    background_running.len() <= 1,
                    "background in flight over its cap"
                );
            }
            ("dropped", _) => {
                assert!(
                    !background_started.contains(&run),
                    "a dropped run had started"
                );
            }
            (_, "background") if event != "queued" => {
                background_running.remove(&run);
            }
            _ => {}
        }
    }
    assert!(
        most_background == 1,
        "background work did run between the live runs"
    );
    let dropped = log.iter().filter(|(_, e, _)| e == "dropped").count();
    eprintln!(
        "events {}, background started {}, dropped {dropped}",
        log.len(),
        background_started.len()
    );
    // Background runs that ran, started before their deadline (1.5 s after enqueue).
    let at = |d: &Value| chrono::DateTime::parse_from_rfc3339(d["at"].as_str().unwrap()).unwrap();
    let queued_at: HashMap<&str, _> = log
        .iter()
        .filter(|(_, e, d)| e == "queued" && d["class"] == "background" && d["attempt"].is_null())
        .map(|(_, _, d)| (d["run_id"].as_str().unwrap(), at(d)))
        .collect();
    for (_, e, d) in &log {
        if e == "started" && d["class"] == "background" {
            let waited = at(d) - queued_at[d["run_id"].as_str().unwrap()];
            assert!(
                waited <= chrono::Duration::milliseconds(1500),
                "a background run started {waited} after enqueue, past its deadline"
            );
        }
    }
}
