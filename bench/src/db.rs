//! The PostgreSQL side: one database per scenario on the bench's cluster, its settings,
//! and the timestamps the server wrote (read after the fact, never written by the bench).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use sqlx::postgres::{PgPool, PgPoolOptions};

/// `postgres://…/postgres` → the same server, database `db`.
pub fn url_for(admin_url: &str, db: &str) -> String {
    let (head, tail) = match admin_url.split_once('?') {
        Some((h, t)) => (h, Some(t)),
        None => (admin_url, None),
    };
    let base = match head.rfind('/') {
        Some(i) if i > "postgres://".len() => &head[..i],
        _ => head,
    };
    match tail {
        Some(t) => format!("{base}/{db}?{t}"),
        None => format!("{base}/{db}"),
    }
}

pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to {url}"))
}

/// Drops and creates database `db`; returns its URL.
pub async fn fresh_db(admin: &PgPool, admin_url: &str, db: &str) -> anyhow::Result<String> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"
    )))
    .execute(admin)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{db}\"")))
        .execute(admin)
        .await?;
    Ok(url_for(admin_url, db))
}

pub async fn drop_db(admin: &PgPool, db: &str) {
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"
    )))
    .execute(admin)
    .await;
}

#[derive(Clone, Debug, Serialize)]
pub struct PgInfo {
    pub version: String,
    pub settings: std::collections::BTreeMap<String, String>,
}

pub async fn info(admin: &PgPool) -> anyhow::Result<PgInfo> {
    let version: String = sqlx::query_scalar("SELECT version()")
        .fetch_one(admin)
        .await?;
    let mut settings = std::collections::BTreeMap::new();
    for name in [
        "synchronous_commit",
        "fsync",
        "full_page_writes",
        "wal_level",
        "shared_buffers",
        "max_connections",
        "max_wal_size",
        "checkpoint_timeout",
        "work_mem",
    ] {
        let v: String = sqlx::query_scalar("SELECT current_setting($1)")
            .bind(name)
            .fetch_one(admin)
            .await?;
        settings.insert(name.to_string(), v);
    }
    Ok(PgInfo { version, settings })
}

/// Runs not yet finished (queued or running), optionally of one class (0 live, 1 background).
pub async fn unfinished(pool: &PgPool, class: Option<i16>) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM runs WHERE status IN ('queued', 'running')
         AND ($1::int2 IS NULL OR class = $1)",
    )
    .bind(class)
    .fetch_one(pool)
    .await?)
}

/// Waits until no run is queued or running; false on timeout. Asks with EXISTS (one index
/// probe) rather than a count, so the polling itself stays cheap for the database.
pub async fn wait_drained(pool: &PgPool, limit: Duration, every: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + limit;
    loop {
        let busy: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM runs WHERE status = 'queued')
                 OR EXISTS (SELECT 1 FROM runs WHERE status = 'running')",
        )
        .fetch_one(pool)
        .await?;
        if !busy {
            return Ok(true);
        }
        if Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(every).await;
    }
}

#[derive(Debug, Serialize)]
pub struct DrainSpan {
    pub total: i64,
    pub completed: i64,
    /// µs since the epoch.
    pub first_start: i64,
    pub last_finish: i64,
}

pub async fn drain_span(pool: &PgPool) -> anyhow::Result<DrainSpan> {
    let (total, completed, first_start, last_finish): (i64, i64, Option<i64>, Option<i64>) =
        sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE status = 'completed'),
                (extract(epoch FROM min(started_at)) * 1000000)::int8,
                (extract(epoch FROM max(finished_at)) * 1000000)::int8
             FROM runs",
        )
        .fetch_one(pool)
        .await?;
    match (first_start, last_finish) {
        (Some(first_start), Some(last_finish)) => Ok(DrainSpan {
            total,
            completed,
            first_start,
            last_finish,
        }),
        _ => bail!("no run started"),
    }
}

/// Per run (first attempt): the attempt's `started_at` and the run's `finished_at`, µs
/// since the epoch, and its final status.
pub struct RunTimes {
    pub started: i64,
    pub finished: Option<i64>,
    pub created: i64,
    pub status: String,
}

pub async fn run_times(pool: &PgPool) -> anyhow::Result<HashMap<String, RunTimes>> {
    let rows: Vec<(String, i64, Option<i64>, i64, String)> = sqlx::query_as(
        "SELECT r.id::text, (extract(epoch FROM a.started_at) * 1000000)::int8,
            (extract(epoch FROM r.finished_at) * 1000000)::int8,
            (extract(epoch FROM r.created_at) * 1000000)::int8, r.status
         FROM runs r JOIN run_attempts a ON a.run_id = r.id AND a.attempt = 1",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, started, finished, created, status)| {
            (
                id,
                RunTimes {
                    started,
                    finished,
                    created,
                    status,
                },
            )
        })
        .collect())
}

pub async fn status_counts(
    pool: &PgPool,
) -> anyhow::Result<std::collections::BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM runs GROUP BY status ORDER BY status")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Samples `pg_stat_activity` of one database: for each active statement (first 70
/// characters, whitespace folded) and wait event, how many samples saw a backend on it.
pub struct ActivitySampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<(usize, HashMap<String, u64>)>,
}

impl ActivitySampler {
    pub fn start(admin: PgPool, db: String, every: Duration) -> ActivitySampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut counts: HashMap<String, u64> = HashMap::new();
            let mut n = 0;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let rows: Vec<(String, Option<String>)> = sqlx::query_as(
                    "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 70),
                        wait_event_type || ':' || wait_event
                     FROM pg_stat_activity
                     WHERE datname = $1 AND state = 'active' AND pid <> pg_backend_pid()",
                )
                .bind(&db)
                .fetch_all(&admin)
                .await
                .unwrap_or_default();
                n += 1;
                for (q, w) in rows {
                    *counts
                        .entry(format!("{q} [{}]", w.unwrap_or_else(|| "CPU".into())))
                        .or_default() += 1;
                }
                tokio::time::sleep(every).await;
            }
            (n, counts)
        });
        ActivitySampler { stop, task }
    }

    /// The most frequent (statement, wait) pairs with the average number of backends on
    /// each per sample.
    pub async fn finish(self, top: usize) -> serde_json::Value {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let Ok((n, counts)) = self.task.await else {
            return serde_json::Value::Null;
        };
        let mut v: Vec<(String, u64)> = counts.into_iter().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        serde_json::json!({
            "samples": n,
            "top_active": v.into_iter().take(top).map(|(k, c)| serde_json::json!({
                "statement_and_wait": k,
                "avg_backends": ((c as f64 / n.max(1) as f64) * 100.0).round() / 100.0,
            })).collect::<Vec<_>>(),
        })
    }
}

/// The latency of one durable commit on this cluster: `count` single-row INSERTs, each its
/// own transaction, into a scratch table (the floor under any durable enqueue or claim).
pub async fn commit_latency(admin: &PgPool, count: usize) -> anyhow::Result<Vec<f64>> {
    let mut conn = admin.acquire().await?;
    // A regular table: a temporary one is not WAL-logged, so its commit would not flush.
    sqlx::query("CREATE TABLE IF NOT EXISTS sluice_bench_commit_probe (x int)")
        .execute(&mut *conn)
        .await?;
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let t = Instant::now();
        sqlx::query("INSERT INTO sluice_bench_commit_probe VALUES ($1)")
            .bind(i as i32)
            .execute(&mut *conn)
            .await?;
        out.push(t.elapsed().as_secs_f64() * 1e3);
    }
    sqlx::query("DROP TABLE sluice_bench_commit_probe")
        .execute(&mut *conn)
        .await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn url_for_swaps_the_database() {
        assert_eq!(
            super::url_for("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            super::url_for("postgres://u@h:1/postgres?sslmode=disable", "y"),
            "postgres://u@h:1/y?sslmode=disable"
        );
    }
}
