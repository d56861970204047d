//! Stream tokens over real HTTP, with the `sluice` binary as a process so its debug log
//! can be read: a token opens its own run's stream (no `Authorization` header) and nothing
//! else; another run, another tenant's run, another batch, a tampered token and an expired
//! one are 401 with their reason; another tenant cannot get a token for a run it cannot
//! see (404); and no token appears in the log.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::{STREAM_SECRET, TOKEN_A, TOKEN_B, chat, client_as, tenants_toml, token_env};
use crate::common::{Launch, SseReader, TestServer, wait_run};

/// Lifetime of a token in this test: short, so one can be watched expire.
const TTL: &str = "2s";

async fn token_for(client: &reqwest::Client, server: &TestServer, path: &str) -> (u16, Value) {
    let resp = client.post(server.url(path)).send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// The status and error reason of opening `url` with no `Authorization` header.
async fn open(url: &str) -> (u16, Value) {
    let resp = client_as(None).get(url).send().await.unwrap();
    let status = resp.status().as_u16();
    let body = if status == 200 {
        Value::Null
    } else {
        resp.json().await.unwrap_or(Value::Null)
    };
    (status, body["error"]["reason"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_token_opens_its_own_stream_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("sluice.toml"), tenants_toml("")).unwrap();
    let mut env = token_env();
    env.push(("SLUICE_LOG", "debug"));
    env.push(("SLUICE_AUTH__STREAM_TOKEN_TTL", TTL));
    let mut server = TestServer::spawn(Launch {
        dir: dir.path(),
        name: "server",
        config: Some(Path::new("sluice.toml")),
        database_url: None,
        env: &env,
    })
    .await;
    let (a, b) = (client_as(Some(TOKEN_A)), client_as(Some(TOKEN_B)));
    let mine = crate::common::enqueue(&a, &server, chat(json!({}))).await;
    let other = crate::common::enqueue(&a, &server, chat(json!({}))).await;
    let theirs = crate::common::enqueue(&b, &server, chat(json!({}))).await;
    wait_run(&a, &server, &mine, "completed", |r| {
        r["status"] == "completed"
    })
    .await;

    let (status, issued) = token_for(&a, &server, &format!("/runs/{mine}/stream-token")).await;
    assert_eq!(status, 200, "{issued}");
    let token = issued["token"].as_str().unwrap().to_string();
    assert!(issued["expires_at"].is_string(), "{issued}");
    let events = issued["events"].as_str().unwrap();
    assert_eq!(events, format!("/runs/{mine}/events?token={token}"));

    // Its own stream, with no Authorization header: every event of the run, to the end.
    let mut stream = SseReader::open(&client_as(None), &server.url(events), None).await;
    let mut kinds = Vec::new();
    while let Some((_, kind, data)) = stream.next().await {
        assert_eq!(data["run_id"], mine.as_str());
        kinds.push(kind);
    }
    assert_eq!(kinds, ["queued", "started", "completed"]);

    // Nothing else.
    for (what, url, reason) in [
        (
            "another run",
            format!("/runs/{other}/events?token={token}"),
            "stream_token_scope",
        ),
        (
            "another tenant's run",
            format!("/runs/{theirs}/events?token={token}"),
            "stream_token_scope",
        ),
        (
            "the feed",
            format!("/events?token={token}"),
            "stream_token_scope",
        ),
        (
            "a tampered token",
            format!("/runs/{mine}/events?token={}", tamper(&token)),
            "stream_token_invalid",
        ),
        (
            "junk",
            format!("/runs/{mine}/events?token=st1.zz"),
            "stream_token_malformed",
        ),
    ] {
        assert_eq!(
            open(&server.url(&url)).await,
            (401, json!(reason)),
            "{what}"
        );
    }
    let resp = client_as(None)
        .get(server.url(&format!("/runs/{mine}?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "a stream token opens no other route");
    let (status, _) = token_for(&b, &server, &format!("/runs/{mine}/stream-token")).await;
    assert_eq!(
        status, 404,
        "team-b cannot see team-a's run, nor get a token for it"
    );

    // A batch's token opens /events?batch= of that batch only.
    let batch: Value = a
        .post(server.url("/batches"))
        .json(&json!({"provider": "sim", "runs": [{"request": chat(json!({}))["request"]}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let batch_id = batch["id"].as_str().unwrap();
    let (status, issued) =
        token_for(&a, &server, &format!("/batches/{batch_id}/stream-token")).await;
    assert_eq!(status, 200, "{issued}");
    let batch_token = issued["token"].as_str().unwrap().to_string();
    let feed = server.url(issued["events"].as_str().unwrap());
    assert_eq!(open(&feed).await, (200, Value::Null));
    let elsewhere = server.url(&format!("/events?batch={other}&token={batch_token}"));
    assert_eq!(open(&elsewhere).await, (401, json!("stream_token_scope")));

    // Once its lifetime has passed, the token is refused.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert_eq!(
        open(&server.url(events)).await,
        (401, json!("stream_token_expired"))
    );

    server.stop_within(Duration::from_secs(30)).await;
    let log = server.log_text();
    assert!(log.contains("DEBUG"), "the log is at debug level");
    for secret in [token.as_str(), batch_token.as_str(), STREAM_SECRET] {
        assert!(
            !log.contains(secret),
            "a token or the secret reached the log"
        );
    }
}

/// `token` with one hex digit of its payload changed.
fn tamper(token: &str) -> String {
    let mut chars: Vec<char> = token.chars().collect();
    let at = 6;
    chars[at] = if chars[at] == '0' { '1' } else { '0' };
    chars.into_iter().collect()
}
