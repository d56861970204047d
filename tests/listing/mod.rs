//! Listing over real HTTP on PostgreSQL: 100,000 runs (inserted through the store, not
//! over HTTP) paged newest first while new runs keep arriving: no run is skipped or
//! listed twice.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use chrono::Utc;
use serde_json::json;
use sluice::run::RunId;
use sluice::store::{OpenOptions, Store};

use crate::batches::{SLOW_SIM, chat, get, post, start};
use crate::common::{fresh_pg_database, new_run};

const RUNS: usize = 100_000;
/// Runs per enqueue statement while filling the table.
const FILL_CHUNK: usize = 5_000;
const PAGE: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_through_100_000_runs_while_runs_arrive_skips_and_repeats_none() {
    let url = fresh_pg_database().await;
    let store = Store::open(
        Some(&url),
        std::path::Path::new("unused"),
        &OpenOptions::default(),
    )
    .await
    .expect("open store");
    // Created over the last few minutes, many sharing a millisecond; due far ahead, so the
    // server leaves them queued.
    let now = Utc::now();
    let due = now + chrono::Duration::days(1);
    let mut original = HashSet::with_capacity(RUNS);
    for chunk in 0..RUNS / FILL_CHUNK {
        let runs: Vec<_> = (0..FILL_CHUNK)
            .map(|i| {
                let n = (chunk * FILL_CHUNK + i) as i64;
                let mut r = new_run(now - chrono::Duration::milliseconds(300_000 - n / 4));
                r.due_at = due;
                r
            })
            .collect();
        original.extend(runs.iter().map(|r| r.id));
        store.enqueue(&runs).await.expect("fill");
    }
    store.close().await;

    let server = Arc::new(start(SLOW_SIM, "", Some(&url)).await);
    let arriving = Arc::new(AtomicBool::new(true));
    let feeder = {
        let (server, arriving) = (server.clone(), arriving.clone());
        tokio::spawn(async move {
            let mut sent = 0;
            while arriving.load(Ordering::Relaxed) {
                let run_at = (Utc::now() + chrono::Duration::days(1)).to_rfc3339();
                let body = json!({"provider": "sim", "request": chat("late"), "run_at": run_at});
                assert_eq!(post(&server, "/enqueue", &body).await.status, 202);
                sent += 1;
            }
            sent
        })
    };

    let mut seen: Vec<RunId> = Vec::with_capacity(RUNS + 1000);
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/runs?limit={PAGE}&cursor={c}"),
            None => format!("/runs?limit={PAGE}"),
        };
        let page = get(&server, &path).await;
        assert_eq!(page.status, 200, "{}", page.body);
        let items = page.body["items"].as_array().expect("items");
        seen.extend(
            items
                .iter()
                .map(|r| r["id"].as_str().unwrap().parse::<RunId>().unwrap()),
        );
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    arriving.store(false, Ordering::Relaxed);
    let sent = feeder.await.unwrap();
    assert!(sent > 0, "no run arrived while paging");
    let unique: HashSet<RunId> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "a run was listed twice");
    let skipped = original.difference(&unique).count();
    assert_eq!(skipped, 0, "{skipped} runs were skipped");
    Arc::into_inner(server).expect("one owner").stop().await;
}
