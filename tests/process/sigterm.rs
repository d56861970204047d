//! SIGTERM: in-flight attempts drain within the grace period, or are released after it
//! and completed by the next process.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::database::*;
use super::*;
use crate::common::{Launch, TestServer, fresh_pg_database};

/// SIGTERM with attempts in flight: no new claims, the in-flight attempts finish within the
/// grace period, the rest stays queued, and the process exits 0 leaving nothing `running`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_runs_and_exits_zero() {
    const RUNS: usize = 30;
    const SLOTS: i64 = 10;
    let url = fresh_pg_database().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [
        ("SLUICE_DISPATCH__SLOTS", "10"),
        ("SLUICE_DISPATCH__SHUTDOWN_GRACE", "20s"),
        ("SLUICE_PROVIDERS__SIM__SIM__LATENCY", "1s"),
        ("SLUICE_PROVIDERS__SIM__SIM__LATENCY_JITTER", "200ms"),
    ];
    let mut server = TestServer::spawn(Launch {
        dir: dir.path(),
        name: "drain",
        config: Some(&repo_config()),
        database_url: Some(&url),
        env: &env,
    })
    .await;
    let pool = pg_pool(&url).await;

    let ids = enqueue_many(&server, RUNS, "drain").await;
    assert_eq!(ids.len(), RUNS);
    let before = wait_for_statuses(&pool, "every slot busy", Duration::from_secs(10), |s| {
        count(s, "running") == SLOTS
    })
    .await;
    let in_flight = count(&before, "running");
    eprintln!("drain: before SIGTERM {before:?}");

    let sigterm_at = chrono::Utc::now();
    let took = server.stop_within(Duration::from_secs(15)).await;
    // In-flight attempts take about a second; draining them must not take much longer.
    assert!(
        took < Duration::from_secs(10),
        "draining {in_flight} in-flight attempts took {took:?}"
    );

    let after = run_statuses(&pool).await;
    eprintln!("drain: SIGTERM to exit took {took:?}; after {after:?}");
    let completed = count(&after, "completed");
    let queued = count(&after, "queued");
    assert_eq!(
        count(&after, "running"),
        0,
        "nothing is left running: {after:?}"
    );
    assert_eq!(
        completed + queued,
        RUNS as i64,
        "every run is completed or back in the queue: {after:?}"
    );
    assert!(
        completed >= in_flight,
        "the {in_flight} runs seen in flight before SIGTERM finished during the drain: {after:?}"
    );
    assert!(queued > 0, "some runs were never started: {after:?}");
    let outcomes = attempt_outcomes(&pool).await;
    assert_eq!(
        outcomes,
        BTreeMap::from([("completed".to_string(), completed)]),
        "with a long grace every started attempt completed (none released or left open)"
    );
    // The server notices the signal a moment after it is sent; from the line it logs once
    // claiming has stopped, nothing may start.
    let stopped_at = server.logged_at("claims stopped").unwrap_or_else(|| {
        panic!(
            "the server logged no `claims stopped` line:\n{}",
            server.log_tail()
        )
    });
    assert!(
        stopped_at >= sigterm_at,
        "claims stopped before SIGTERM was sent"
    );
    let started_after_stop: i64 =
        sqlx::query_scalar("SELECT count(*) FROM run_attempts WHERE started_at > $1")
            .bind(stopped_at)
            .fetch_one(&pool)
            .await
            .expect("count attempts started after claims stopped");
    assert_eq!(
        started_after_stop, 0,
        "no attempt may start once claiming stopped on SIGTERM: {after:?}"
    );
    let queued_with_attempts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM runs WHERE status = 'queued' AND attempts <> 0")
            .fetch_one(&pool)
            .await
            .expect("count queued runs with attempts");
    assert_eq!(queued_with_attempts, 0, "queued runs were never attempted");
    pool.close().await;
}

/// SIGTERM when the attempts cannot finish within the grace period: they are released back
/// to the queue (not counted as attempts), the process still exits 0 promptly, and a new
/// process on the same database completes every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_after_the_grace_period_releases_runs_and_a_restart_completes_them() {
    const RUNS: usize = 20;
    const SLOTS: i64 = 8;
    let url = fresh_pg_database().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut first = TestServer::spawn(Launch {
        dir: dir.path(),
        name: "release-first",
        config: Some(&repo_config()),
        database_url: Some(&url),
        env: &[
            ("SLUICE_DISPATCH__SLOTS", "8"),
            ("SLUICE_DISPATCH__SHUTDOWN_GRACE", "200ms"),
            ("SLUICE_PROVIDERS__SIM__SIM__LATENCY", "5s"),
            ("SLUICE_PROVIDERS__SIM__SIM__LATENCY_JITTER", "0ms"),
        ],
    })
    .await;
    let pool = pg_pool(&url).await;

    let ids = enqueue_many(&first, RUNS, "release").await;
    wait_for_statuses(&pool, "every slot busy", Duration::from_secs(10), |s| {
        count(s, "running") == SLOTS
    })
    .await;

    let took = first.stop_within(Duration::from_secs(10)).await;
    eprintln!("release: SIGTERM to exit took {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "with a 200ms grace the process exits promptly, took {took:?}"
    );

    let after = run_statuses(&pool).await;
    assert_eq!(
        after,
        BTreeMap::from([("queued".to_string(), RUNS as i64)]),
        "every run is back in the queue, nothing running or finished"
    );
    let outcomes = attempt_outcomes(&pool).await;
    assert_eq!(
        outcomes,
        BTreeMap::from([("released".to_string(), SLOTS)]),
        "each interrupted attempt is recorded as released"
    );
    let released = runs_with_outcome(&pool, "released").await;
    assert_eq!(released.len(), SLOTS as usize);
    let charged: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE attempts <> 0")
        .fetch_one(&pool)
        .await
        .expect("count runs with attempts");
    assert_eq!(
        charged, 0,
        "a released attempt does not count against max_attempts"
    );

    let mut second = TestServer::spawn(Launch {
        dir: dir.path(),
        name: "release-second",
        config: Some(&repo_config()),
        database_url: Some(&url),
        env: &[
            ("SLUICE_DISPATCH__SLOTS", "8"),
            ("SLUICE_PROVIDERS__SIM__SIM__LATENCY", "200ms"),
            ("SLUICE_PROVIDERS__SIM__SIM__LATENCY_JITTER", "50ms"),
        ],
    })
    .await;
    wait_for_statuses(&pool, "every run completed", Duration::from_secs(30), |s| {
        count(s, "completed") == RUNS as i64
    })
    .await;

    for id in &released {
        let run = run(&second, id).await;
        assert_eq!(run["status"], "completed", "{run:#}");
        assert_eq!(
            run["attempts"], 1,
            "the released attempt is not counted: {run:#}"
        );
        let log: Vec<(Value, Value)> = run["attempt_log"]
            .as_array()
            .expect("attempt_log is an array")
            .iter()
            .map(|a| (a["attempt"].clone(), a["outcome"].clone()))
            .collect();
        assert_eq!(
            log,
            vec![
                (json!(1), json!("released")),
                (json!(1), json!("completed"))
            ],
            "attempt 1 was released, then tried again and completed: {run:#}"
        );
    }
    for id in &ids {
        let run = run(&second, id).await;
        assert_eq!(run["status"], "completed", "{run:#}");
    }
    second.stop_within(Duration::from_secs(15)).await;
    pool.close().await;
}
