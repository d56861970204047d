//! A tenant's `max_in_flight` holds across two `sluice` processes on one PostgreSQL: the
//! runs in flight, sampled from the database while both processes drain, never exceed it,
//! while another tenant uses the slots left.

use std::collections::HashMap;
use std::time::Duration;

use super::{Db, WAIT_WITHIN, shipped_config, spawn_two, tenant_toml};

const CAP: i64 = 3;
const RUNS_EACH: usize = 40;
/// How often the runs in flight are counted.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cap_holds_across_two_processes() {
    let db = Db::postgres().await;
    let Db::Postgres(url) = &db else {
        unreachable!()
    };
    db.fill("capped", None, RUNS_EACH).await;
    db.fill("free", None, RUNS_EACH).await;
    let dir = tempfile::tempdir().expect("a temporary folder");
    let mut toml = std::fs::read_to_string(shipped_config()).expect("the shipped config");
    toml.push_str(&tenant_toml("capped", 1, Some(CAP as u32), 'c'));
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, toml).expect("write the config");
    let env = [
        ("SLUICE_DISPATCH__SLOTS", "8"),
        ("SLUICE_DISPATCH__SHUTDOWN_GRACE", "1s"),
        ("SLUICE_PROVIDERS__SIM__SIM__LATENCY", "100ms"),
        ("SLUICE_PROVIDERS__SIM__SIM__LATENCY_JITTER", "0ms"),
    ];
    let servers = spawn_two(dir.path(), url, &config, &env).await;
    let pool = sqlx::PgPool::connect(url).await.expect("read the runs");
    let deadline = tokio::time::Instant::now() + WAIT_WITHIN;
    let mut most: HashMap<String, i64> = HashMap::new();
    loop {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT tenant, status, count(*) FROM runs WHERE status IN ('queued', 'running')
             GROUP BY tenant, status",
        )
        .fetch_all(&pool)
        .await
        .expect("count the runs");
        if rows.is_empty() {
            break;
        }
        for (tenant, status, n) in rows {
            if status == "running" {
                let m = most.entry(tenant).or_insert(0);
                *m = (*m).max(n);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the runs did not finish within {WAIT_WITHIN:?}"
        );
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    let capped = most.get("capped").copied().unwrap_or(0);
    let free = most.get("free").copied().unwrap_or(0);
    assert!(
        (1..=CAP).contains(&capped),
        "the capped tenant had {capped} runs in flight at most; its cap is {CAP}"
    );
    assert!(
        free > CAP,
        "the other tenant used the slots left: {free} at most"
    );
    for server in servers {
        server.stop().await;
    }
}
