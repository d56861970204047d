//! Tenant A's 20,000-run backlog, then tenant B's 10 runs: with S slots, every one of B's
//! runs starts within the first ⌈(10 × tenants) / S⌉ + 1 claim rounds (of S starts each)
//! once B's runs are enqueued, on SQLite, on PostgreSQL, and with two processes sharing
//! one PostgreSQL.

use crate::common::TestServer;

use super::{Db, POLL_EVERY, WAIT_WITHIN, config, enqueue_over_http, shipped_config, spawn_two};

const BACKLOG: usize = 20_000;
const B_RUNS: usize = 10;
const TENANTS: usize = 2;
const SLOTS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_b_starts_within_rotations_of_a_backlog() {
    let db = Db::sqlite().await;
    db.fill("a", None, BACKLOG).await;
    let server = TestServer::start(&config(&db.toml(), SLOTS, ""), &[]).await;
    b_starts_within_rotations(&db, &[&server], SLOTS).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_b_starts_within_rotations_of_a_backlog() {
    let db = Db::postgres().await;
    db.fill("a", None, BACKLOG).await;
    let server = TestServer::start(&config(&db.toml(), SLOTS, ""), &[]).await;
    b_starts_within_rotations(&db, &[&server], SLOTS).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_b_starts_within_rotations_of_a_backlog() {
    let db = Db::postgres().await;
    let Db::Postgres(url) = &db else {
        unreachable!()
    };
    db.fill("a", None, BACKLOG).await;
    let dir = tempfile::tempdir().expect("a temporary folder");
    let slots = SLOTS.to_string();
    let env = [
        ("SLUICE_DISPATCH__SLOTS", slots.as_str()),
        ("SLUICE_DISPATCH__SHUTDOWN_GRACE", "1s"),
        ("SLUICE_PROVIDERS__SIM__SIM__LATENCY", "20ms"),
        ("SLUICE_PROVIDERS__SIM__SIM__LATENCY_JITTER", "0ms"),
    ];
    let servers = spawn_two(dir.path(), url, &shipped_config(), &env).await;
    let refs: Vec<&TestServer> = servers.iter().collect();
    b_starts_within_rotations(&db, &refs, SLOTS * servers.len()).await;
    for server in servers {
        server.stop().await;
    }
}

/// Enqueues B's runs over HTTP while A's backlog drains, and checks where B's starts fall
/// in the log: `slots` is the slots of every process together.
async fn b_starts_within_rotations(db: &Db, servers: &[&TestServer], slots: usize) {
    enqueue_over_http(servers, "b", B_RUNS).await;
    let deadline = tokio::time::Instant::now() + WAIT_WITHIN;
    let log = loop {
        let log = db.log().await;
        let b_started = log
            .iter()
            .filter(|(kind, tenant, _)| kind == "started" && tenant == "b")
            .count();
        if b_started == B_RUNS {
            break log;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B's runs did not all start within {WAIT_WITHIN:?} ({b_started} did)"
        );
        tokio::time::sleep(POLL_EVERY).await;
    };
    // Counted from the moment all of B's runs are in (B's enqueues, sent at once, may
    // commit in more than one group); B's runs started before then count as on time.
    let all_b_in = log
        .iter()
        .rposition(|(kind, tenant, _)| kind == "queued" && tenant == "b")
        .expect("B's queued events");
    let starts: Vec<&str> = log[all_b_in..]
        .iter()
        .filter(|(kind, _, _)| kind == "started")
        .map(|(_, tenant, _)| tenant.as_str())
        .collect();
    let last_b = starts.iter().rposition(|t| *t == "b").map_or(0, |i| i + 1);
    let rounds = (B_RUNS * TENANTS).div_ceil(slots) + 1;
    eprintln!(
        "fairness: B's last run was start {last_b} after B's runs were in (bound {})",
        rounds * slots
    );
    assert!(
        last_b <= rounds * slots,
        "B's last run was start {last_b} after B arrived; the bound is {rounds} rounds of \
         {slots} starts; the starts: {:?}",
        &starts[..last_b.min(200)]
    );
    let a_started = log
        .iter()
        .filter(|(kind, tenant, _)| kind == "started" && tenant == "a")
        .count();
    assert!(
        a_started < 20_000,
        "A's backlog was still waiting: {a_started} started"
    );
}
