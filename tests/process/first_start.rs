//! A newcomer's first start: the repository's config, no arguments, no database.

use std::time::Duration;

use super::*;
use crate::common::{Launch, TestServer};

/// A newcomer unpacks the repository's config, runs `sluice` with no arguments and no
/// database, and gets a completed run back from the built-in simulator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomer_default_start_completes_a_sim_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("config")).expect("create config/");
    std::fs::copy(repo_config(), dir.path().join("config/sluice.toml")).expect("copy the config");

    let mut server = TestServer::spawn(Launch {
        dir: dir.path(),
        name: "newcomer",
        config: None,
        database_url: None,
        env: &[],
    })
    .await;

    let health = get_json(&server, "/health").await;
    assert_eq!(health["database"]["backend"], "sqlite", "{health:#}");

    let id = enqueue(&server, "Say hello to a newcomer").await;
    let run = wait_terminal(&server, &id, Duration::from_secs(20)).await;
    assert_eq!(run["status"], "completed", "{run:#}");
    let content = run["output"]["content"].as_str().unwrap_or_default();
    assert!(!content.is_empty(), "a completed run has output: {run:#}");
    assert_eq!(run["attempts"], 1, "{run:#}");
    assert_eq!(run["attempt_log"][0]["outcome"], "completed", "{run:#}");

    let db = dir.path().join("data/sluice.db");
    assert!(
        db.is_file(),
        "the embedded SQLite database {} was created on first start",
        db.display()
    );

    server.stop_within(Duration::from_secs(15)).await;
}
