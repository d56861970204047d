//! PostgreSQL under contention: many claimers, every run claimed exactly once.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::{new_run, pg_store, t0};
use sluice::run::{RunId, WorkerId};
use sluice::store::Completion;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_concurrent_claimers_claim_each_of_5000_runs_exactly_once() {
    const RUNS: usize = 5_000;
    const CLAIMERS: usize = 8;
    let store = pg_store().await;
    let now = t0();
    for chunk in (0..RUNS).collect::<Vec<_>>().chunks(1_000) {
        let runs: Vec<_> = chunk.iter().map(|_| new_run(now)).collect();
        store.enqueue(&runs).await.expect("enqueue");
    }
    let tasks: Vec<_> = (0..CLAIMERS)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let worker = WorkerId::new();
                let mut mine: Vec<RunId> = Vec::new();
                loop {
                    let claimed = store
                        .claim_due(worker, 37, now, Duration::from_secs(60))
                        .await
                        .expect("claim");
                    if claimed.is_empty() {
                        break;
                    }
                    let done: Vec<Completion> = claimed
                        .iter()
                        .map(|c| Completion {
                            id: c.id,
                            attempt: c.attempt,
                            finished_at: now,
                            content: None,
                            tool_calls: None,
                            refusal: None,
                            finish_reason: None,
                            raw_finish_reason: None,
                            prompt_tokens: None,
                            completion_tokens: None,
                        })
                        .collect();
                    let applied = store.mark_completed(worker, &done).await.expect("complete");
                    assert_eq!(
                        applied.len(),
                        done.len(),
                        "a claimer completes what it claimed"
                    );
                    mine.extend(claimed.iter().map(|c| c.id));
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut per_claimer = Vec::new();
    for t in tasks {
        let mine = t.await.expect("claimer task");
        per_claimer.push(mine.len());
        all.extend(mine);
    }
    let unique: HashSet<RunId> = all.iter().copied().collect();
    assert_eq!(
        all.len(),
        RUNS,
        "claims made (per claimer: {per_claimer:?})"
    );
    assert_eq!(unique.len(), RUNS, "no run claimed twice, none lost");
    assert!(
        per_claimer.iter().filter(|n| **n > 0).count() > 1,
        "the work was shared between claimers: {per_claimer:?}"
    );
    let counts = store.count_active().await.unwrap();
    assert!(
        counts.is_empty(),
        "nothing left queued or running: {counts:?}"
    );
}
