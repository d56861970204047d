//! Three processes on one PostgreSQL: exactly one leads maintenance, every `/health` shows
//! the whole cluster, and after a SIGKILL of the leader mid-flight another leads within
//! the lease, rescues the dead one's runs, and every run completes exactly once.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use super::database::*;
use super::*;
use crate::common::{Launch, TestServer, fresh_pg_database, scrape};

const RUNS: usize = 90;
/// The leader's lease in this test: a takeover is due within it (plus one beat).
const LEADER_LEASE: Duration = Duration::from_secs(3);

/// The leader and the replicas one server's `/health` shows.
async fn cluster_of(server: &TestServer) -> (Option<String>, BTreeSet<String>) {
    let health = get_json(server, "/health").await;
    let cluster = &health["cluster"];
    let leader = cluster["leader"]
        .as_object()
        .filter(|l| l["live"] == true)
        .map(|l| l["id"].as_str().unwrap().to_string());
    let replicas = cluster["replicas"]
        .as_array()
        .unwrap_or_else(|| panic!("no cluster in /health: {health:#}"))
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    (leader, replicas)
}

/// Polls `server`'s cluster view until `done` holds; returns it.
async fn wait_cluster(
    server: &TestServer,
    what: &str,
    within: Duration,
    done: impl Fn(&Option<String>, &BTreeSet<String>) -> bool,
) -> (Option<String>, BTreeSet<String>) {
    let deadline = Instant::now() + within;
    loop {
        let (leader, replicas) = cluster_of(server).await;
        if done(&leader, &replicas) {
            return (leader, replicas);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; leader {leader:?}, replicas {replicas:?}"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_hands_maintenance_to_another_and_loses_nothing() {
    let url = fresh_pg_database().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [
        ("SLUICE_DISPATCH__SLOTS", "10"),
        ("SLUICE_DISPATCH__LEASE", "2s"),
        ("SLUICE_DISPATCH__HEARTBEAT_INTERVAL", "300ms"),
        ("SLUICE_DISPATCH__RESCUE_INTERVAL", "300ms"),
        ("SLUICE_DISPATCH__LEADER_LEASE", "3s"),
        ("SLUICE_PROVIDERS__SIM__SIM__LATENCY", "500ms"),
        ("SLUICE_PROVIDERS__SIM__SIM__LATENCY_JITTER", "300ms"),
    ];
    let mut servers = Vec::new();
    for name in ["cluster-a", "cluster-b", "cluster-c"] {
        servers.push(
            TestServer::spawn(Launch {
                dir: dir.path(),
                name,
                config: Some(&repo_config()),
                database_url: Some(&url),
                env: &env,
            })
            .await,
        );
    }
    let pool = pg_pool(&url).await;

    // Every replica shows the same cluster: three processes, one live leader among them.
    let (leader, replicas) = wait_cluster(
        &servers[0],
        "three replicas and a leader",
        Duration::from_secs(20),
        |l, r| r.len() == 3 && l.as_ref().is_some_and(|l| r.contains(l)),
    )
    .await;
    let leader = leader.unwrap();
    for server in &servers[1..] {
        let (l, r) = cluster_of(server).await;
        assert_eq!(
            (l.as_ref(), &r),
            (Some(&leader), &replicas),
            "{}",
            server.addr
        );
    }
    let ids: Vec<String> = enqueue_many(&servers[1], RUNS, "cluster").await;

    // Find the process that leads (its /health names itself) and kill it mid-flight.
    let mut leading = None;
    for (i, server) in servers.iter().enumerate() {
        let health = get_json(server, "/health").await;
        if health["cluster"]["this_replica"] == leader.as_str() {
            leading = Some(i);
        }
    }
    let leading = leading.expect("the leader is one of the three");
    wait_for_statuses(&pool, "runs in flight", Duration::from_secs(20), |s| {
        count(s, "running") >= 5 && count(s, "completed") >= 3
    })
    .await;
    let mut dead = servers.remove(leading);
    dead.sigkill().await;
    let killed_at = Instant::now();
    let at_kill = run_statuses(&pool).await;
    eprintln!("cluster: left behind by the SIGKILL of the leader {at_kill:?}");

    // Another process leads within the lease (plus a beat and polling slack).
    let (new_leader, _) = wait_cluster(&servers[0], "a new leader", LEADER_LEASE * 3, |l, _| {
        l.as_ref().is_some_and(|l| *l != leader)
    })
    .await;
    let took = killed_at.elapsed();
    eprintln!("cluster: {new_leader:?} leads {took:?} after the kill");
    assert!(
        took <= LEADER_LEASE + Duration::from_secs(2),
        "the takeover took {took:?}, more than the lease of {LEADER_LEASE:?} and a beat"
    );
    // The dead process drops out of the cluster view.
    wait_cluster(
        &servers[1],
        "two replicas",
        Duration::from_secs(20),
        |_, r| r.len() == 2 && !r.contains(&leader),
    )
    .await;

    let end = wait_for_statuses(&pool, "every run terminal", Duration::from_secs(60), |s| {
        count(s, "queued") == 0 && count(s, "running") == 0
    })
    .await;
    assert_eq!(end.get("completed"), Some(&(RUNS as i64)), "{end:?}");
    let per_run = completed_attempts_per_run(&pool).await;
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(per_run.keys().cloned().collect::<Vec<_>>(), expected);
    assert!(
        per_run.values().all(|n| *n == 1),
        "runs completed more than once: {per_run:?}"
    );

    // Exactly one leader among the survivors, and it says so in its metrics.
    let mut leaders = 0;
    for server in &servers {
        let metrics = scrape(server.http(), server).await;
        if metrics.lines().any(|l| l == "sluice_leader 1") {
            leaders += 1;
        }
    }
    assert_eq!(leaders, 1, "exactly one survivor leads");

    for mut server in servers {
        server.stop_within(Duration::from_secs(15)).await;
    }
    drop(dead);
    pool.close().await;
}
