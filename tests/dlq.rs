//! Dead letters over HTTP and on the command line, on one PostgreSQL: a server whose
//! provider fails every attempt leaves failed runs; `GET /dlq` lists them and
//! `POST /dlq/{id}/requeue` gives one back to a server whose provider works, where it
//! completes keeping its failed attempt; `sluice dlq list | export | requeue` (the real
//! binary) do the same from the shell; bad filters and ids answer 4xx.

use std::process::Command;

use serde_json::{Value, json};

use crate::common::{TestServer, enqueue, fresh_pg_database, get_run, http, wait_run};

fn config(url: &str, error_rate: f64) -> String {
    format!(
        r#"
[database]
url = "{url}"
[retry]
max_attempts = 1
[[providers]]
name = "sim"
kind = "sim"
[providers.sim]
latency = "10ms"
latency_jitter = "0ms"
error_rate = {error_rate}
"#
    )
}

fn chat(content: &str) -> Value {
    json!({"provider": "sim", "request": {"messages": [{"role": "user", "content": content}]}})
}

async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// Runs the `sluice` binary on the database at `url`; its stdout lines as JSON.
fn sluice(url: &str, args: &[&str]) -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("DATABASE_URL", url)
        .env(
            "SLUICE_CONFIG",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/sluice.toml"),
        )
        .output()
        .expect("the sluice binary runs");
    assert!(
        out.status.success(),
        "sluice {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_requeued_and_complete() {
    let url = fresh_pg_database().await;
    let client = http();

    // A provider that fails every attempt: three dead letters.
    let failing = TestServer::start(&config(&url, 1.0), &[]).await;
    let mut dead = Vec::new();
    for i in 0..3 {
        let id = enqueue(&client, &failing, chat(&format!("doomed {i}"))).await;
        wait_run(&client, &failing, &id, "failed", |r| {
            r["status"] == "failed"
        })
        .await;
        dead.push(id);
    }
    failing.stop().await;

    let server = TestServer::start(&config(&url, 0.0), &[]).await;
    let page = get_json(&client, &server.url("/dlq?limit=2")).await;
    let first: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        first,
        [dead[2].as_str(), dead[1].as_str()],
        "newest first: {page}"
    );
    let cursor = page["next_cursor"].as_str().expect("a next page");
    let rest = get_json(
        &client,
        &server.url(&format!("/dlq?limit=2&cursor={cursor}")),
    )
    .await;
    assert_eq!(rest["items"][0]["id"], dead[0].as_str(), "{rest}");
    assert!(rest["next_cursor"].is_null(), "{rest}");

    // One requeued over HTTP: it completes and keeps its failed attempt.
    let resp = client
        .post(server.url(&format!("/dlq/{}/requeue", dead[2])))
        .json(&json!({"max_attempts": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let requeued: Value = resp.json().await.unwrap();
    assert_eq!(requeued["max_attempts"], 3, "{requeued}");
    let run = wait_run(&client, &server, &dead[2], "completed", |r| {
        r["status"] == "completed"
    })
    .await;
    let outcomes: Vec<&str> = run["attempt_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or("open"))
        .collect();
    assert_eq!(
        outcomes.first(),
        Some(&"server"),
        "the failed attempt stays: {run}"
    );
    assert_eq!(outcomes.last(), Some(&"completed"), "{run}");
    let again = client
        .post(server.url(&format!("/dlq/{}/requeue", dead[2])))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409, "a completed run is no dead letter");

    // Hostile input: a status that is not a dead one, a bad cursor, a bad limit.
    for (query, field) in [
        ("status=completed", "status"),
        ("cursor=zz", "cursor"),
        ("limit=0", "limit"),
        ("colour=red", ""),
    ] {
        let resp = client
            .get(server.url(&format!("/dlq?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{query}");
        let body: Value = resp.json().await.unwrap();
        if !field.is_empty() {
            assert_eq!(body["error"]["field"], field, "{query}: {body}");
        }
    }
    let bulk = client
        .post(server.url("/dlq/requeue"))
        .json(&json!({"limit": 5000}))
        .send()
        .await
        .unwrap();
    assert_eq!(bulk.status(), 400, "a bulk requeue is bounded");
    server.stop().await;

    // From the shell, with no server running.
    let listed = sluice(&url, &["dlq", "list"]);
    let ids: Vec<&str> = listed.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [dead[1].as_str(), dead[0].as_str()]);
    let exported = sluice(&url, &["dlq", "export", "--status", "failed"]);
    assert_eq!(exported.len(), 2);
    assert_eq!(
        exported[0]["attempt_log"].as_array().map(Vec::len),
        Some(1),
        "an export carries the attempt log: {}",
        exported[0]
    );
    let requeued = sluice(&url, &["dlq", "requeue", &dead[1]]);
    assert_eq!(requeued.len(), 1);
    assert_eq!(requeued[0]["status"], "queued");
    let by_filter = sluice(&url, &["dlq", "requeue", "--matching", "--provider", "sim"]);
    assert_eq!(by_filter[0]["id"], dead[0].as_str());
    assert!(
        sluice(&url, &["dlq", "list"]).is_empty(),
        "no dead letter left"
    );

    // The requeued runs complete once a server runs.
    let server = TestServer::start(&config(&url, 0.0), &[]).await;
    for id in &dead[..2] {
        let run = wait_run(&client, &server, id, "completed", |r| {
            r["status"] == "completed"
        })
        .await;
        assert_eq!(get_run(&client, &server, id).await["attempts"], 2, "{run}");
    }
    server.stop().await;
}
