//! Requeueing dead letters: a failed run goes back to the queue with a fresh budget of
//! attempts, keeps its attempt log and events, and completes; a run that is not a dead
//! letter is left alone.

use std::time::Duration;

use sluice::run::{Status, WorkerId};
use sluice::store::{EventKind, FailureNext, Requeue, Store};

use super::{claim_ids, completion, enqueue_one, failure};
use crate::common::{ms, new_run, t0};

conformance!(
    a_requeued_dead_letter_runs_again_and_keeps_its_history,
    only_dead_letters_are_requeued,
);

fn requeue_at(at: chrono::DateTime<chrono::Utc>) -> Requeue {
    Requeue {
        attempts: 2,
        now: at,
        live_queue_timeout: Duration::from_secs(20),
        background_queue_timeout: Duration::from_secs(30),
    }
}

async fn a_requeued_dead_letter_runs_again_and_keeps_its_history(store: Store) {
    let now = t0();
    let mut r = new_run(now);
    r.max_attempts = 1;
    let id = enqueue_one(&store, r).await;
    let worker = WorkerId::new();
    claim_ids(&store, worker, 1, now).await;
    let last = FailureNext::Finish {
        status: Status::Failed,
        timeout_origin: None,
    };
    store
        .mark_failed(worker, &[failure(id, 1, now + ms(5), last)])
        .await
        .unwrap();
    assert_eq!(
        store.get_run(id).await.unwrap().unwrap().status,
        Status::Failed
    );

    let later = now + ms(1_000);
    assert_eq!(store.requeue(&[id], requeue_at(later)).await.unwrap(), [id]);
    let run = store.get_run(id).await.unwrap().unwrap();
    assert_eq!(run.status, Status::Queued);
    assert_eq!(
        (run.attempts, run.max_attempts),
        (1, 3),
        "two more attempts"
    );
    assert!(run.error.is_none() && run.finished_at.is_none(), "{run:?}");
    assert_eq!(run.due_at, later);
    assert_eq!(
        run.queue_deadline_at,
        Some(later + chrono::Duration::seconds(20))
    );
    let kinds: Vec<EventKind> = store
        .events_for_run(id, 0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(
        kinds,
        [
            EventKind::Queued,
            EventKind::Started,
            EventKind::AttemptFailed,
            EventKind::Failed,
            EventKind::Requeued
        ]
    );

    let claimed = store
        .claim_due(worker, 1, later, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claimed[0].attempt, 2, "attempt numbers go on");
    store
        .mark_completed(worker, &[completion(id, 2, later + ms(5))])
        .await
        .unwrap();
    let run = store.get_run(id).await.unwrap().unwrap();
    assert_eq!(run.status, Status::Completed);
    let outcomes: Vec<Option<String>> = run.attempt_log.iter().map(|a| a.outcome.clone()).collect();
    assert_eq!(
        outcomes.len(),
        2,
        "the failed attempt is kept: {outcomes:?}"
    );
    assert_eq!(outcomes[1].as_deref(), Some("completed"));
}

async fn only_dead_letters_are_requeued(store: Store) {
    let now = t0();
    let queued = enqueue_one(&store, new_run(now)).await;
    let done = enqueue_one(&store, new_run(now)).await;
    let worker = WorkerId::new();
    let claimed = claim_ids(&store, worker, 2, now).await;
    assert_eq!(claimed.len(), 2);
    store
        .mark_completed(worker, &[completion(done, 1, now + ms(5))])
        .await
        .unwrap();
    assert!(
        store
            .requeue(&[queued, done], requeue_at(now + ms(10)))
            .await
            .unwrap()
            .is_empty(),
        "a running and a completed run are not dead letters"
    );
    assert_eq!(
        store.get_run(done).await.unwrap().unwrap().status,
        Status::Completed
    );
}
