//! SIGKILL mid-flight: the next process rescues the dead one's runs and completes each once.

use std::collections::BTreeMap;
use std::time::Duration;

use super::database::*;
use super::*;
use crate::common::{Launch, TestServer, fresh_pg_database};

/// SIGKILL with attempts in flight, then a new process on the same database: the dead
/// process's leases expire, the rescuer requeues its runs, and every run completes exactly
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_flight_loses_nothing_and_completes_nothing_twice() {
    const RUNS: usize = 100;
    let url = fresh_pg_database().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [
        ("SLUICE_DISPATCH__SLOTS", "20"),
        ("SLUICE_DISPATCH__LEASE", "2s"),
        ("SLUICE_DISPATCH__HEARTBEAT_INTERVAL", "300ms"),
        ("SLUICE_DISPATCH__RESCUE_INTERVAL", "300ms"),
        ("SLUICE_PROVIDERS__SIM__SIM__LATENCY", "500ms"),
        ("SLUICE_PROVIDERS__SIM__SIM__LATENCY_JITTER", "300ms"),
    ];
    let mut first = TestServer::spawn(Launch {
        dir: dir.path(),
        name: "crash-first",
        config: Some(&repo_config()),
        database_url: Some(&url),
        env: &env,
    })
    .await;
    let pool = pg_pool(&url).await;

    let ids = enqueue_many(&first, RUNS, "crash").await;
    assert_eq!(ids.len(), RUNS);
    wait_for_statuses(
        &pool,
        "some runs completed and some in flight",
        Duration::from_secs(20),
        |s| count(s, "completed") >= 5 && count(s, "running") >= 5,
    )
    .await;
    first.sigkill().await;

    // The dead process can write nothing more: this is what it left behind.
    let at_kill = run_statuses(&pool).await;
    let orphaned = count(&at_kill, "running");
    eprintln!("crash: left behind by the SIGKILL {at_kill:?}");
    assert!(
        orphaned > 0,
        "the kill must land with attempts in flight, or the rescue path is not exercised: {at_kill:?}"
    );
    assert!(count(&at_kill, "completed") < RUNS as i64, "{at_kill:?}");

    let mut second = TestServer::spawn(Launch {
        dir: dir.path(),
        name: "crash-second",
        config: Some(&repo_config()),
        database_url: Some(&url),
        env: &env,
    })
    .await;
    let end = wait_for_statuses(&pool, "every run terminal", Duration::from_secs(60), |s| {
        count(s, "queued") == 0 && count(s, "running") == 0
    })
    .await;

    assert_eq!(
        end,
        BTreeMap::from([("completed".to_string(), RUNS as i64)]),
        "all {RUNS} runs exist and completed (sim has no failures configured)"
    );
    let per_run = completed_attempts_per_run(&pool).await;
    assert_eq!(per_run.len(), RUNS, "every run has a completed attempt");
    let twice: Vec<_> = per_run.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "runs completed more than once: {twice:?}");
    let mut expected_ids: Vec<String> = ids.clone();
    expected_ids.sort();
    let completed_ids: Vec<String> = per_run.keys().cloned().collect();
    assert_eq!(
        completed_ids, expected_ids,
        "the completed runs are the enqueued ones"
    );

    let outcomes = attempt_outcomes(&pool).await;
    assert_eq!(
        count(&outcomes, "abandoned"),
        orphaned,
        "each run in flight at the kill has exactly one abandoned attempt: {outcomes:?}"
    );
    assert_eq!(
        count(&outcomes, "open"),
        0,
        "no attempt is left open: {outcomes:?}"
    );
    assert_eq!(
        count(&outcomes, "completed"),
        RUNS as i64,
        "attempt outcomes: {outcomes:?}"
    );

    // How a rescued run reads over HTTP.
    let abandoned = runs_with_outcome(&pool, "abandoned").await;
    let run = run(&second, &abandoned[0]).await;
    assert_eq!(run["status"], "completed", "{run:#}");
    assert_eq!(run["attempts"], 2, "the abandoned attempt counts: {run:#}");
    let outcomes_of_run: Vec<&str> = run["attempt_log"]
        .as_array()
        .expect("attempt_log is an array")
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or("null"))
        .collect();
    assert_eq!(outcomes_of_run, ["abandoned", "completed"], "{run:#}");
    assert!(
        run["error"].is_null(),
        "a run that completed after a rescue carries no error: {run:#}"
    );

    second.stop_within(Duration::from_secs(15)).await;
    drop(first);
    pool.close().await;
}
