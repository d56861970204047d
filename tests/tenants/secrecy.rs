//! A bearer token is checked and forgotten: after good, wrong and malformed tokens, none
//! of them is in the server's debug log, its database files, `/metrics`, `/health` or any
//! answer. The `sluice` binary runs as a process so its log can be read.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::{ADMIN_TOKEN, TOKEN_A, TOKEN_B, chat, client_as, get_json, tenants_toml};
use crate::common::{Launch, TestServer, wait_run};

/// How long the server may take to exit after SIGTERM.
const CLEAN_EXIT_WITHIN: Duration = Duration::from_secs(30);
/// A wrong token close to team-a's, as a guess would be.
const NEAR_MISS: &str = "token-of-team-a-0123456780";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_appear_in_no_log_row_metric_or_answer() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sluice.toml"),
        tenants_toml("daily_tokens = 1000000"),
    )
    .unwrap();
    let mut server = TestServer::spawn(Launch {
        dir: dir.path(),
        name: "server",
        config: Some(Path::new("sluice.toml")),
        database_url: None,
        env: &[
            ("SLUICE_LOG", "debug"),
            ("TEAM_A_TOKEN", TOKEN_A),
            ("TEAM_B_TOKEN", TOKEN_B),
            ("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    })
    .await;
    let (a, admin) = (client_as(Some(TOKEN_A)), client_as(Some(ADMIN_TOKEN)));
    let mut answers = String::new();
    let id = crate::common::enqueue(&a, &server, chat(json!({"idempotency_key": "k"}))).await;
    let run = wait_run(&a, &server, &id, "completed", |r| {
        r["status"] == "completed"
    })
    .await;
    answers.push_str(&run.to_string());
    for token in [NEAR_MISS, TOKEN_B, "Bearer", ""] {
        let resp = client_as(Some(token))
            .get(server.url(&format!("/runs/{id}")))
            .send()
            .await
            .unwrap();
        answers.push_str(&resp.text().await.unwrap());
    }
    for path in ["/metrics", "/health", "/tenants/team-a", "/openapi.json"] {
        let resp = admin.get(server.url(path)).send().await.unwrap();
        assert!(resp.status().is_success(), "{path}");
        answers.push_str(&resp.text().await.unwrap());
    }
    let me = get_json(&a, &server, "/tenants/me").await;
    answers.push_str(&me.to_string());
    server.stop_within(CLEAN_EXIT_WITHIN).await;

    let logs = server.log_text();
    assert!(
        logs.contains("tenant=team-a"),
        "request logs name the tenant"
    );
    let mut database = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("data")).unwrap() {
        database.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let database = String::from_utf8_lossy(&database);
    assert!(database.contains("team-a"), "the database file was read");
    for (place, text) in [
        ("answers", answers.as_str()),
        ("logs", logs.as_str()),
        ("database files", &*database),
    ] {
        for token in [TOKEN_A, TOKEN_B, ADMIN_TOKEN, NEAR_MISS] {
            assert!(!text.contains(token), "a token leaked into {place}");
        }
    }
}
