//! Event streams over real HTTP: resume without gap or duplicate on both backends, many
//! subscribers with one stalled, and cross-process delivery on PostgreSQL.

use std::time::Duration;

use crate::common::{SseReader, TestServer, enqueue, http, read_health, wait_run};
use serde_json::json;

fn config(db: &str, latency: &str, error_rate: f64) -> String {
    format!(
        r#"
[database]
{db}
[dispatch]
slots = 8
shutdown_grace = "1s"
[retry]
backoff_base = "20ms"
backoff_cap = "40ms"
[[providers]]
name = "sim"
kind = "sim"
[providers.sim]
latency = "{latency}"
latency_jitter = "0ms"
error_rate = {error_rate}
"#
    )
}

fn sqlite_db(dir: &tempfile::TempDir) -> String {
    format!(
        "sqlite_path = {:?}",
        dir.path().join("sluice.db").display().to_string()
    )
}

async fn pg_db() -> String {
    format!("url = {:?}", crate::common::fresh_pg_database().await)
}

fn chat() -> serde_json::Value {
    json!({"messages": [{"role": "user", "content": "hi"}]})
}

/// The lifecycle of a run that fails three times, read in two connections.
async fn resume_delivers_every_event_once(db: String) {
    let server = TestServer::start(&config(&db, "150ms", 1.0), &[]).await;
    let client = http();
    let id = enqueue(
        &client,
        &server,
        json!({"provider": "sim", "request": chat(), "max_attempts": 3}),
    )
    .await;
    let url = server.url(&format!("/runs/{id}/events"));

    // First connection: read two events, then hang up mid-run.
    let mut first = SseReader::open(&client, &url, None).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(first.next().await.expect("an event before the run ends"));
    }
    drop(first);
    let last_id = seen.last().unwrap().0.clone().expect("events carry ids");

    // Second connection resumes after the last id received and runs to the end.
    let mut second = SseReader::open(&client, &url, Some(&last_id)).await;
    while let Some(event) = second.next().await {
        seen.push(event);
    }
    let types: Vec<String> = seen.iter().map(|(_, e, _)| e.clone()).collect();
    assert_eq!(
        types,
        [
            "queued",
            "started",
            "attempt_failed",
            "started",
            "attempt_failed",
            "started",
            "attempt_failed",
            "failed"
        ],
        "every lifecycle event exactly once, in order"
    );
    let ids: Vec<i64> = seen
        .iter()
        .map(|(id, _, _)| id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    for (_, event, data) in &seen {
        assert_eq!(data["run_id"], id.as_str());
        assert_eq!(data["type"], event.as_str());
        assert!(data["at"].as_str().unwrap().ends_with('Z'));
    }
    assert_eq!(seen[2].2["kind"], "server");
    assert_eq!(seen[2].2["status"], 500);
    assert!(
        seen[2].2["retry_at"].is_string(),
        "a retried attempt says when"
    );
    assert_eq!(seen[3].2["attempt"], 2);

    // A finished run's stream replays everything and closes.
    let mut replay = SseReader::open(&client, &url, None).await;
    let mut count = 0;
    while replay.next().await.is_some() {
        count += 1;
    }
    assert_eq!(count, 8);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_last_event_id_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    resume_delivers_every_event_once(sqlite_db(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_last_event_id_on_postgres() {
    resume_delivers_every_event_once(pg_db().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_and_one_stalled_reader() {
    const SUBSCRIBERS: usize = 1000;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&config(&sqlite_db(&dir), "1500ms", 0.0), &[]).await;
    let client = http();
    let id = enqueue(
        &client,
        &server,
        json!({"provider": "sim", "request": chat()}),
    )
    .await;
    let url = server.url(&format!("/runs/{id}/events"));

    // One subscriber opens the stream and never reads from it.
    let stalled = client
        .get(&url)
        .send()
        .await
        .expect("stalled subscriber connects");
    assert_eq!(stalled.status(), 200);

    let started = std::time::Instant::now();
    let readers: Vec<_> = (0..SUBSCRIBERS)
        .map(|_| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let mut stream = SseReader::open(&client, &url, None).await;
                let mut last = None;
                while let Some((_, event, _)) = stream.next().await {
                    last = Some(event);
                }
                last
            })
        })
        .collect();
    let mut terminal = 0;
    for r in readers {
        let last = tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .expect("every subscriber finishes")
            .expect("reader task");
        if last.as_deref() == Some("completed") {
            terminal += 1;
        }
    }
    assert_eq!(
        terminal, SUBSCRIBERS,
        "all subscribers saw the terminal event"
    );
    let run = wait_run(&client, &server, &id, "completed", |r| {
        r["status"] == "completed"
    })
    .await;
    assert_eq!(run["attempts"], 1);
    // The run took about its provider latency: the stalled reader held nothing up.
    let started_at =
        chrono::DateTime::parse_from_rfc3339(run["started_at"].as_str().unwrap()).unwrap();
    let finished_at =
        chrono::DateTime::parse_from_rfc3339(run["finished_at"].as_str().unwrap()).unwrap();
    let took = (finished_at - started_at).to_std().unwrap();
    assert!(took < Duration::from_secs(10), "the run took {took:?}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "delivery to every subscriber took {:?}",
        started.elapsed()
    );
    drop(stalled);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_on_one_server_sees_a_run_executed_by_another() {
    let db = pg_db().await;
    let client = http();
    // B starts alone, so it is the one that claims and executes the run.
    let b = TestServer::start(&config(&db, "1500ms", 0.0), &[]).await;
    let id = enqueue(&client, &b, json!({"provider": "sim", "request": chat()})).await;
    wait_run(&client, &b, &id, "running", |r| r["status"] == "running").await;

    let a = TestServer::start(&config(&db, "1500ms", 0.0), &[]).await;
    let mut stream = SseReader::open(&client, &a.url(&format!("/runs/{id}/events")), None).await;
    let mut types = Vec::new();
    while let Some((_, event, _)) = tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("events arrive on server A")
    {
        types.push(event);
    }
    assert_eq!(types, ["queued", "started", "completed"]);

    // The dashboard feed on A also carries B's events live.
    let mut feed = SseReader::open(&client, &a.url("/events?class=live"), None).await;
    let id2 = enqueue(&client, &b, json!({"provider": "sim", "request": chat()})).await;
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("completed") {
        let (_, event, data) = tokio::time::timeout(Duration::from_secs(30), feed.next())
            .await
            .expect("feed events arrive")
            .expect("feed open");
        if data["run_id"] == id2.as_str() {
            got.push(event);
        }
    }
    assert_eq!(got, ["queued", "started", "completed"]);
    drop(feed);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_on_one_server_aborts_the_attempt_on_another() {
    let db = pg_db().await;
    let client = http();
    let b = TestServer::start(&config(&db, "60s", 0.0), &[]).await;
    let id = enqueue(&client, &b, json!({"provider": "sim", "request": chat()})).await;
    wait_run(&client, &b, &id, "running", |r| r["status"] == "running").await;
    let a = TestServer::start(&config(&db, "60s", 0.0), &[]).await;
    let resp = client
        .post(a.url(&format!("/runs/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // B's worker slot comes free long before the provider's 60 s answer.
    wait_for_free_slots(&client, &b, Duration::from_secs(10)).await;
    let run = crate::common::get_run(&client, &a, &id).await;
    assert_eq!(run["status"], "cancelled");
    assert_eq!(run["attempt_log"][0]["outcome"], "cancelled");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_whose_notice_is_lost_stops_the_attempt_within_a_heartbeat() {
    let db = pg_db().await;
    let client = http();
    // The lease (120 s) and the provider's answer (60 s) are far away: only the heartbeat
    // (every second) can stop the attempt in time.
    let toml = config(&db, "60s", 0.0).replace(
        "slots = 8",
        "slots = 8\nheartbeat_interval = \"1s\"\nlease = \"120s\"",
    );
    let b = TestServer::start(&toml, &[]).await;
    let id = enqueue(&client, &b, json!({"provider": "sim", "request": chat()})).await;
    wait_run(&client, &b, &id, "running", |r| r["status"] == "running").await;
    // The cancel's row change without its notification, as when the notice is lost.
    let url = db
        .strip_prefix("url = ")
        .map(|u| u.trim_matches('"'))
        .expect("a PostgreSQL database line");
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let changed = sqlx::query(
        "UPDATE runs SET status = 'cancelled', finished_at = now(), lease_owner = NULL,
                lease_expires_at = NULL, error_kind = 'cancelled'
         WHERE id = $1::uuid AND status = 'running'",
    )
    .bind(&id)
    .execute(&pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(changed, 1);
    wait_for_free_slots(&client, &b, Duration::from_secs(15)).await;
    let run = crate::common::get_run(&client, &b, &id).await;
    assert_eq!(
        run["status"], "cancelled",
        "the stopped attempt wrote nothing over it"
    );
    pool.close().await;
    b.stop().await;
}

/// Waits until no worker slot of `server` is busy: its cancelled attempt has stopped.
async fn wait_for_free_slots(client: &reqwest::Client, server: &TestServer, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let health: serde_json::Value = read_health(client, server).await;
        if health["workers"]["slots_busy"] == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cancelled attempt still runs after {within:?}: {health}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn streamed_deltas_arrive_in_order(db: String) {
    let toml = config(&db, "50ms", 0.0).replace(
        "error_rate = 0",
        "delta_interval = \"40ms\"\nerror_rate = 0",
    );
    let server = TestServer::start(&toml, &[]).await;
    let client = http();
    let words = "one two three four five six seven eight";
    let id = enqueue(
        &client,
        &server,
        json!({"provider": "sim", "stream": true,
               "request": {"messages": [{"role": "user", "content": words}]}}),
    )
    .await;
    let url = server.url(&format!("/runs/{id}/events"));
    let mut first = SseReader::open(&client, &url, None).await;
    let mut seen = Vec::new();
    // Read up to the third delta, then hang up mid-stream.
    while seen
        .iter()
        .filter(|(_, e, _): &&(Option<String>, String, serde_json::Value)| e == "delta")
        .count()
        < 3
    {
        seen.push(first.next().await.expect("events before the end"));
    }
    drop(first);
    let last_id = seen.last().unwrap().0.clone().unwrap();
    assert!(
        last_id.contains('-'),
        "delta ids name their attempt's event: {last_id}"
    );
    let mut second = SseReader::open(&client, &url, Some(&last_id)).await;
    while let Some(event) = second.next().await {
        seen.push(event);
    }
    let types: Vec<&str> = seen.iter().map(|(_, e, _)| e.as_str()).collect();
    assert_eq!(types.first(), Some(&"queued"));
    assert_eq!(types.last(), Some(&"completed"));
    let deltas: Vec<&serde_json::Value> = seen
        .iter()
        .filter(|(_, e, _)| e == "delta")
        .map(|(_, _, d)| d)
        .collect();
    let seqs: Vec<u64> = deltas.iter().map(|d| d["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    let streamed: String = deltas
        .iter()
        .map(|d| d["content"].as_str().unwrap())
        .collect();
    let run = crate::common::get_run(&client, &server, &id).await;
    assert_eq!(run["output"]["content"].as_str().unwrap(), streamed);
    assert!(streamed.ends_with(words));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_deltas_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    streamed_deltas_arrive_in_order(sqlite_db(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_deltas_on_postgres() {
    streamed_deltas_arrive_in_order(pg_db().await).await;
}
