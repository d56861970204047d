//! A process test's PostgreSQL database, read directly: runs by status, attempts by
//! outcome, and polls on them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use super::POLL_EVERY;

pub(super) async fn pg_pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("the test cannot connect to {url}: {e}"))
}

/// Number of runs per status.
pub(super) async fn run_statuses(pool: &PgPool) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>("SELECT status, count(*) FROM runs GROUP BY status")
        .fetch_all(pool)
        .await
        .expect("count runs by status")
        .into_iter()
        .collect()
}

/// Number of attempt rows per outcome (`open` for an attempt with no outcome yet).
pub(super) async fn attempt_outcomes(pool: &PgPool) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT COALESCE(outcome, 'open'), count(*) FROM run_attempts GROUP BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("count attempts by outcome")
    .into_iter()
    .collect()
}

/// For each run that has any, the number of attempt rows with outcome `completed`.
pub(super) async fn completed_attempts_per_run(pool: &PgPool) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT run_id::text, count(*) FROM run_attempts WHERE outcome = 'completed'
         GROUP BY run_id",
    )
    .fetch_all(pool)
    .await
    .expect("count completed attempts per run")
    .into_iter()
    .collect()
}

/// Ids of the runs having an attempt with the given outcome.
pub(super) async fn runs_with_outcome(pool: &PgPool, outcome: &str) -> Vec<String> {
    sqlx::query_scalar::<_, String>(
        "SELECT DISTINCT run_id::text FROM run_attempts WHERE outcome = $1 ORDER BY 1",
    )
    .bind(outcome)
    .fetch_all(pool)
    .await
    .expect("runs with an attempt outcome")
}

pub(super) fn count(map: &BTreeMap<String, i64>, key: &str) -> i64 {
    map.get(key).copied().unwrap_or(0)
}

/// Polls the database until `done` holds for the run counts by status.
pub(super) async fn wait_for_statuses(
    pool: &PgPool,
    what: &str,
    within: Duration,
    done: impl Fn(&BTreeMap<String, i64>) -> bool,
) -> BTreeMap<String, i64> {
    let deadline = Instant::now() + within;
    loop {
        let statuses = run_statuses(pool).await;
        if done(&statuses) {
            return statuses;
        }
        if Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for {what}; runs by status: {statuses:?}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}
