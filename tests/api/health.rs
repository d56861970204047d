//! `GET /health`: the database, queue depths by class and status, worker slots and
//! providers.

use serde_json::json;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_database_queues_and_workers() {
    let server = start_sim(FAST_SIM).await;
    let h = server.health().await;
    assert_eq!(h["status"], "ok", "{h:#}");
    assert_eq!(h["database"]["reachable"], true, "{h:#}");
    assert_eq!(h["database"]["backend"], "sqlite", "{h:#}");
    assert!(
        h["database"]["latency_ms"]
            .as_f64()
            .is_some_and(|l| l >= 0.0),
        "database.latency_ms: {h:#}"
    );
    for class in ["live", "background"] {
        for status in ["queued", "running"] {
            assert_eq!(
                h["queues"][class][status], 0,
                "queues.{class}.{status}: {h:#}"
            );
        }
    }
    assert_eq!(h["workers"]["slots_total"], 4, "{h:#}");
    assert!(
        h["workers"]["slots_busy"].as_u64().is_some_and(|b| b <= 4),
        "workers.slots_busy: {h:#}"
    );
    let providers = h["providers"]
        .as_array()
        .unwrap_or_else(|| panic!("providers is not an array: {h:#}"));
    let sim = providers
        .iter()
        .find(|p| p["name"] == "sim")
        .unwrap_or_else(|| panic!("the sim provider is listed: {h:#}"));
    // The sim states no limit and refuses nothing: neither a stated nor a learned rate.
    for key in ["stated_rpm", "learned_rpm"] {
        assert!(
            sim.get(key).is_some_and(|v| v.is_null()),
            "{key} is present and null: {sim}"
        );
    }

    // Alone on its database, the server leads and is the one replica listed.
    let mut h = h;
    for _ in 0..100 {
        if h["cluster"]["leader"]["id"] == h["cluster"]["this_replica"] {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        h = server.health().await;
    }
    let cluster = &h["cluster"];
    assert_eq!(cluster["leader"]["id"], cluster["this_replica"], "{h:#}");
    assert_eq!(cluster["leader"]["live"], true, "{h:#}");
    let replicas = cluster["replicas"].as_array().expect("replicas listed");
    assert_eq!(replicas.len(), 1, "{h:#}");
    assert_eq!(replicas[0]["id"], cluster["this_replica"], "{h:#}");
    assert_eq!(replicas[0]["leader"], true, "{h:#}");
    assert_eq!(replicas[0]["slots"], 4, "{h:#}");

    // Scheduled runs show up in their class's queued depth.
    server
        .enqueue_ok(&json!({"provider": "sim", "request": chat("a"), "run_at": in_hours(1)}))
        .await;
    for _ in 0..2 {
        server
            .enqueue_ok(&json!({
                "provider": "sim",
                "class": "background",
                "request": chat("b"),
                "run_at": in_hours(1),
            }))
            .await;
    }
    let h = server.health().await;
    assert_eq!(h["queues"]["live"]["queued"], 1, "{h:#}");
    assert_eq!(h["queues"]["background"]["queued"], 2, "{h:#}");
    assert_eq!(h["queues"]["live"]["running"], 0, "{h:#}");
    server.shutdown().await;
}
