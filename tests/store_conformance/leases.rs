//! Leases and cancellation: heartbeats keep a lease, expired leases are rescued and the
//! stale worker cannot finish, released attempts do not count, and a cancel ends a queued
//! run at once or a running one whose late result is then ignored.

use std::time::Duration;

use sluice::run::{ErrorKind, RunId, Status, WorkerId};
use sluice::store::{CancelOutcome, Store};

use super::{LEASE, claim_ids, completion, enqueue_one};
use crate::common::{ms, new_run, t0};

conformance!(
    queued_run_cancels_at_once,
    running_run_cancels_and_its_late_result_is_ignored,
    expired_leases_are_rescued_and_the_stale_worker_cannot_finish,
    rescue_of_the_last_attempt_fails_the_run,
    heartbeats_keep_leases_alive,
    released_attempts_do_not_count,
);

async fn queued_run_cancels_at_once(store: Store) {
    let now = t0();
    let id = enqueue_one(&store, new_run(now)).await;
    match store.cancel(id, now + ms(5)).await.unwrap() {
        CancelOutcome::Cancelled { was } => assert_eq!(was, Status::Queued),
        other => panic!("expected cancellation, got {other:?}"),
    }
    let view = store.get_run(id).await.unwrap().unwrap();
    assert_eq!(view.status, Status::Cancelled);
    assert_eq!(view.finished_at, Some(now + ms(5)));
    assert_eq!(view.error.map(|e| e.kind), Some(ErrorKind::Cancelled));
    assert!(
        claim_ids(&store, WorkerId::new(), 10, now + ms(10))
            .await
            .is_empty()
    );
    assert!(matches!(
        store.cancel(id, now).await.unwrap(),
        CancelOutcome::AlreadyTerminal(Status::Cancelled)
    ));
    assert!(matches!(
        store.cancel(RunId::new(), now).await.unwrap(),
        CancelOutcome::NotFound
    ));
}

async fn running_run_cancels_and_its_late_result_is_ignored(store: Store) {
    let now = t0();
    let id = enqueue_one(&store, new_run(now)).await;
    let worker = WorkerId::new();
    claim_ids(&store, worker, 1, now).await;
    assert!(matches!(
        store.cancel(id, now + ms(1)).await.unwrap(),
        CancelOutcome::Cancelled {
            was: Status::Running
        }
    ));
    let applied = store
        .mark_completed(worker, &[completion(id, 1, now + ms(2))])
        .await
        .unwrap();
    assert!(applied.is_empty(), "a cancelled run does not complete");
    let view = store.get_run(id).await.unwrap().unwrap();
    assert_eq!(view.status, Status::Cancelled);
    assert!(view.output.is_none());
    assert_eq!(view.attempt_log.len(), 1);
    assert_eq!(view.attempt_log[0].outcome.as_deref(), Some("cancelled"));
}

async fn expired_leases_are_rescued_and_the_stale_worker_cannot_finish(store: Store) {
    let now = t0();
    let id = enqueue_one(&store, new_run(now)).await;
    let crashed = WorkerId::new();
    let lease = Duration::from_secs(1);
    store.claim_due(crashed, 1, now, lease).await.unwrap();
    assert!(
        store
            .rescue_expired(now + ms(999), 100)
            .await
            .unwrap()
            .is_empty(),
        "lease still valid"
    );
    let rescued = store.rescue_expired(now + ms(1_001), 100).await.unwrap();
    assert_eq!(rescued, vec![(id, Status::Queued)]);

    let healthy = WorkerId::new();
    let again = store
        .claim_due(healthy, 1, now + ms(1_002), LEASE)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2, "the abandoned attempt counts");

    // The crashed worker comes back to life and reports: ignored.
    let stale = store
        .mark_completed(crashed, &[completion(id, 1, now + ms(1_100))])
        .await
        .unwrap();
    assert!(stale.is_empty());
    let stale = store
        .mark_completed(crashed, &[completion(id, 2, now + ms(1_100))])
        .await
        .unwrap();
    assert!(stale.is_empty(), "a lease belongs to its worker");
    let done = store
        .mark_completed(healthy, &[completion(id, 2, now + ms(1_200))])
        .await
        .unwrap();
    assert_eq!(done, vec![id]);
    let view = store.get_run(id).await.unwrap().unwrap();
    assert_eq!(view.status, Status::Completed);
    let outcomes: Vec<_> = view
        .attempt_log
        .iter()
        .map(|a| (a.attempt, a.outcome.clone()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (1, Some("abandoned".to_string())),
            (2, Some("completed".to_string()))
        ]
    );
}

async fn rescue_of_the_last_attempt_fails_the_run(store: Store) {
    let now = t0();
    let mut r = new_run(now);
    r.max_attempts = 1;
    let id = enqueue_one(&store, r).await;
    store
        .claim_due(WorkerId::new(), 1, now, Duration::from_secs(1))
        .await
        .unwrap();
    let rescued = store.rescue_expired(now + ms(2_000), 100).await.unwrap();
    assert_eq!(rescued, vec![(id, Status::Failed)]);
    let view = store.get_run(id).await.unwrap().unwrap();
    assert_eq!(view.status, Status::Failed);
    assert!(view.finished_at.is_some());
    assert!(view.error.is_some(), "the run says why it failed");
}

async fn heartbeats_keep_leases_alive(store: Store) {
    let now = t0();
    let id = enqueue_one(&store, new_run(now)).await;
    let cancelled = enqueue_one(&store, new_run(now)).await;
    let worker = WorkerId::new();
    let lease = Duration::from_secs(1);
    assert_eq!(
        store.claim_due(worker, 2, now, lease).await.unwrap().len(),
        2
    );
    store.cancel(cancelled, now + ms(100)).await.unwrap();
    let renewed = store
        .extend_leases(worker, &[id, cancelled], now + ms(800), lease)
        .await
        .unwrap();
    assert_eq!(
        renewed,
        [id],
        "the cancelled run's lease is gone: its holder learns it from the heartbeat"
    );
    assert!(
        store
            .rescue_expired(now + ms(1_500), 100)
            .await
            .unwrap()
            .is_empty(),
        "renewed lease holds"
    );
    let other = WorkerId::new();
    assert!(
        store
            .extend_leases(other, &[id], now + ms(900), lease)
            .await
            .unwrap()
            .is_empty(),
        "only the owner renews"
    );
    assert_eq!(
        store
            .rescue_expired(now + ms(1_801), 100)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn released_attempts_do_not_count(store: Store) {
    let now = t0();
    let mut r = new_run(now);
    r.max_attempts = 1;
    let id = enqueue_one(&store, r).await;
    let worker = WorkerId::new();
    store.claim_due(worker, 1, now, LEASE).await.unwrap();
    assert_eq!(
        store
            .release(worker, &[(id, 1)], now + ms(10))
            .await
            .unwrap(),
        1
    );
    let view = store.get_run(id).await.unwrap().unwrap();
    assert_eq!(view.status, Status::Queued);
    assert_eq!(view.attempts, 0);
    let again = store
        .claim_due(WorkerId::new(), 1, now + ms(10), LEASE)
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "released runs are due at once");
    assert_eq!(
        again[0].attempt, 1,
        "the interrupted attempt is tried again under its number"
    );
    let view = store.get_run(id).await.unwrap().unwrap();
    assert_eq!(view.attempt_log[0].outcome.as_deref(), Some("released"));
    assert_eq!(
        view.attempt_log[1].outcome, None,
        "the new attempt is running"
    );
}
