//! Live work first, over HTTP: background admission control, queue-wait and generation
//! timeouts in the metrics, and per-key caps across two processes on one PostgreSQL.

use std::time::{Duration, Instant};

use crate::common::{TestServer, enqueue, http, scrape, series_value, wait_run};
use serde_json::{Value, json};

fn config(db: &str, latency: &str, extra: &str) -> String {
    format!(
        r#"
[database]
{db}
[dispatch]
slots = 4
shutdown_grace = "1s"
[queue]
sweep_interval = "50ms"
{extra}
[[providers]]
name = "sim"
kind = "sim"
background_max_in_flight = 1
background_queue_max = 3
[providers.sim]
latency = "{latency}"
latency_jitter = "0ms"
"#
    )
}

fn sqlite(dir: &tempfile::TempDir) -> String {
    format!(
        "sqlite_path = {:?}",
        dir.path().join("s.db").display().to_string()
    )
}

fn run(class: &str, extra: Value) -> Value {
    let mut body = json!({"provider": "sim", "class": class,
                          "request": {"messages": [{"role": "user", "content": "x"}]}});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    body
}

async fn post(
    client: &reqwest::Client,
    server: &TestServer,
    body: Value,
) -> (u16, Option<String>, Value) {
    let resp = client
        .post(server.url("/enqueue"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry_after, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_quota_refuses_background_but_never_live() {
    let dir = tempfile::tempdir().unwrap();
    let toml = config(&sqlite(&dir), "5ms", "")
        .replace(
            "[dispatch]",
            "[admission]\nsession_hourly_quota = 3\n[dispatch]",
        )
        .replace("background_queue_max = 3", "background_queue_max = 100");
    let server = TestServer::start(&toml, &[]).await;
    let client = http();
    let refused = r#"sluice_admission_refused_total{reason="quota"}"#;
    let refused_before = series_value(&scrape(&client, &server).await, refused);
    let mine = json!({"session": "s1", "concurrency_key": "style-7"});
    let mut first = None;
    for i in 0..3 {
        let mut body = run("background", mine.clone());
        body["idempotency_key"] = json!(format!("bg-{i}"));
        let (status, _, body) = post(&client, &server, body).await;
        assert_eq!(status, 202, "background run {i} within the quota: {body}");
        first.get_or_insert(body["id"].clone());
    }
    let (status, retry_after, body) = post(&client, &server, run("background", mine.clone())).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "admission_rejected");
    assert_eq!(body["error"]["reason"], "quota");
    let wait: u64 = retry_after.expect("Retry-After").parse().unwrap();
    // A repeat of an admitted run still answers with that run.
    let mut repeat = run("background", mine.clone());
    repeat["idempotency_key"] = json!("bg-0");
    let (status, _, body) = post(&client, &server, repeat).await;
    assert_eq!(
        (status, &body["id"]),
        (200, first.as_ref().unwrap()),
        "{body}"
    );
    assert!(
        (3000..=3600).contains(&wait),
        "retry when the oldest leaves the hour: {wait}"
    );
    let (status, _, _) = post(
        &client,
        &server,
        run(
            "background",
            json!({"session": "s1", "concurrency_key": "style-8"}),
        ),
    )
    .await;
    assert_eq!(status, 202, "the quota is per concurrency key");
    let (status, _, _) = post(&client, &server, run("live", mine.clone())).await;
    assert_eq!(status, 202, "live runs of the same session are accepted");
    let metrics = scrape(&client, &server).await;
    assert!(
        metrics.contains(r#"sluice_admission_refused_total{reason="quota"} "#),
        "{metrics}"
    );
    assert!(
        series_value(&metrics, refused) > refused_before,
        "the refusal is counted:\n{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_backlog_and_a_full_background_queue_refuse_background() {
    let dir = tempfile::tempdir().unwrap();
    let toml = config(&sqlite(&dir), "1500ms", "").replace("slots = 4", "slots = 1");
    let server = TestServer::start(&toml, &[]).await;
    let client = http();
    // Background fills: one runs, three wait (the bound), the next is refused.
    let first = enqueue(&client, &server, run("background", json!({}))).await;
    wait_run(&client, &server, &first, "running", |r| {
        r["status"] == "running"
    })
    .await;
    for _ in 0..3 {
        let (status, _, body) = post(&client, &server, run("background", json!({}))).await;
        assert_eq!(status, 202, "{body}");
    }
    let (status, retry_after, body) = post(&client, &server, run("background", json!({}))).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["reason"], "background_queue_full");
    assert!(retry_after.is_some());
    // A live run waits behind the busy slot: background is refused for live backlog.
    let live = enqueue(&client, &server, run("live", json!({}))).await;
    let (status, _, body) = post(&client, &server, run("background", json!({}))).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["reason"], "live_backlog", "{body}");
    // The live run goes before the three waiting background runs.
    let done = wait_run(&client, &server, &live, "completed", |r| {
        r["status"] == "completed"
    })
    .await;
    let first_done = crate::common::get_run(&client, &server, &first).await;
    assert!(done["started_at"].as_str() >= first_done["finished_at"].as_str());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_timeout_origins_end_runs_and_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let toml = config(&sqlite(&dir), "2s", "").replace("slots = 4", "slots = 1");
    let server = TestServer::start(&toml, &[]).await;
    let client = http();
    let timeouts = |origin: &str| format!(r#"sluice_timeouts_total{{origin="{origin}"}}"#);
    let dropped = r#"sluice_background_dropped_total{reason="stale"}"#;
    let before = scrape(&client, &server).await;
    let busy = enqueue(&client, &server, run("live", json!({}))).await;
    wait_run(&client, &server, &busy, "running", |r| {
        r["status"] == "running"
    })
    .await;
    // Never starts in time: the only slot is busy for 2 s.
    let stale = enqueue(
        &client,
        &server,
        run("background", json!({"queue_timeout_ms": 200})),
    )
    .await;
    let waiting = enqueue(
        &client,
        &server,
        run("live", json!({"queue_timeout_ms": 200})),
    )
    .await;
    let r = wait_run(&client, &server, &waiting, "timed out", |r| {
        r["status"] == "timed_out"
    })
    .await;
    assert_eq!(r["timeout_origin"], "queue_wait");
    assert_eq!(r["attempts"], 0);
    assert!(r["started_at"].is_null());
    let r = wait_run(&client, &server, &stale, "dropped", |r| {
        r["status"] == "dropped"
    })
    .await;
    assert_eq!(r["drop_reason"], "stale");
    assert_eq!(r["attempts"], 0, "a stale background run never runs late");
    // Every attempt too slow: a generation timeout.
    let slow = enqueue(
        &client,
        &server,
        run("live", json!({"timeout_ms": 100, "max_attempts": 2})),
    )
    .await;
    let r = wait_run(&client, &server, &slow, "timed out", |r| {
        r["status"] == "timed_out"
    })
    .await;
    assert_eq!(r["timeout_origin"], "generation");
    let metrics = scrape(&client, &server).await;
    for origin in ["queue_wait", "generation"] {
        assert!(
            metrics.contains(&format!(r#"sluice_timeouts_total{{origin="{origin}"}} "#)),
            "timeouts counted under {origin}:\n{metrics}"
        );
        assert!(
            series_value(&metrics, &timeouts(origin)) > series_value(&before, &timeouts(origin)),
            "this test's timeout is counted under {origin}:\n{metrics}"
        );
    }
    assert!(metrics.contains(r#"sluice_background_dropped_total{reason="stale"} "#));
    assert!(
        series_value(&metrics, dropped) > series_value(&before, dropped),
        "this test's stale run is counted as dropped:\n{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_cap_holds_across_two_processes_on_postgres() {
    let url = crate::common::fresh_pg_database().await;
    let db = format!("url = {url:?}");
    let extra = "background_key_cap = 1";
    let toml = config(&db, "300ms", extra)
        .replace(
            "background_max_in_flight = 1",
            "background_max_in_flight = 10",
        )
        .replace("background_queue_max = 3", "background_queue_max = 100");
    let a = TestServer::start(&toml, &[]).await;
    let b = TestServer::start(&toml, &[]).await;
    let client = http();
    let mut ids = Vec::new();
    for i in 0..8 {
        let server = if i % 2 == 0 { &a } else { &b };
        ids.push(
            enqueue(
                &client,
                server,
                run("background", json!({"concurrency_key": "style-1"})),
            )
            .await,
        );
    }
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut most = 0;
    // The process that finishes a run of the key claims the next one at once, so one
    // process may well take them all; once three are done, a process that did all the work
    // is stopped, and the other must go on under the same cap.
    let mut servers = [Some(a), Some(b)];
    let mut stepped_in = false;
    loop {
        let (running, finished): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'running'),
                    count(*) FILTER (WHERE status = 'completed') FROM runs",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        most = most.max(running);
        assert!(running <= 1, "{running} runs of one key in flight at once");
        if finished == 8 {
            break;
        }
        if finished >= 3 && !stepped_in {
            stepped_in = true;
            let workers: Vec<uuid::Uuid> =
                sqlx::query_scalar("SELECT DISTINCT worker FROM run_attempts")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            if let [only] = workers[..] {
                for slot in &mut servers {
                    let server = slot.as_ref().unwrap();
                    let health = crate::common::read_health(&client, server).await;
                    if health["cluster"]["this_replica"] == only.to_string() {
                        slot.take().unwrap().stop().await;
                        break;
                    }
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "runs did not finish; {finished} of 8"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(most, 1, "the runs did go through one at a time");
    let workers: i64 = sqlx::query_scalar("SELECT count(DISTINCT worker) FROM run_attempts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(workers, 2, "both processes took part");
    for server in servers.into_iter().flatten() {
        server.stop().await;
    }
}
