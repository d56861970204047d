//! Failed attempts: retries after their backoff, the dead-letter state with the last
//! error, generation timeouts and queue deadlines.

use sluice::run::{Class, ErrorKind, Status, TimeoutOrigin, WorkerId};
use sluice::store::{EventKind, FailureNext, Store};

use super::{LEASE, claim_ids, data, enqueue_one, failure, kinds, run_of};
use crate::common::{ms, new_run, t0};

conformance!(
    failed_attempts_retry_after_their_backoff,
    last_failure_dead_letters_and_keeps_the_error,
    generation_timeout_on_the_last_attempt_ends_timed_out,
    queue_deadlines_end_runs_that_never_started,
);

async fn failed_attempts_retry_after_their_backoff(store: Store) {
    let now = t0();
    let id = enqueue_one(&store, new_run(now)).await;
    let worker = WorkerId::new();
    assert_eq!(claim_ids(&store, worker, 1, now).await, vec![id]);
    let retry_at = now + ms(1_500);
    let applied = store
        .mark_failed(
            worker,
            &[failure(
                id,
                1,
                now + ms(100),
                FailureNext::RetryAt(retry_at),
            )],
        )
        .await
        .unwrap();
    assert_eq!(applied, vec![id]);
    let view = store.get_run(id).await.unwrap().unwrap();
    assert_eq!(view.status, Status::Queued);
    assert_eq!(view.due_at, retry_at, "next_attempt_at is the retry time");
    assert_eq!(view.attempts, 1);
    assert_eq!(view.error.as_ref().map(|e| e.kind), Some(ErrorKind::Server));
    assert!(view.finished_at.is_none());
    assert!(
        claim_ids(&store, worker, 1, now + ms(1_499))
            .await
            .is_empty(),
        "waits out its backoff"
    );
    let second = store.claim_due(worker, 1, retry_at, LEASE).await.unwrap();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].attempt, 2);
}

async fn last_failure_dead_letters_and_keeps_the_error(store: Store) {
    let now = t0();
    let mut r = new_run(now);
    r.max_attempts = 2;
    let id = enqueue_one(&store, r).await;
    let worker = WorkerId::new();
    claim_ids(&store, worker, 1, now).await;
    store
        .mark_failed(
            worker,
            &[failure(id, 1, now, FailureNext::RetryAt(now + ms(10)))],
        )
        .await
        .unwrap();
    let claimed = store
        .claim_due(worker, 1, now + ms(10), LEASE)
        .await
        .unwrap();
    assert_eq!(claimed[0].attempt, 2);
    assert_eq!(claimed[0].max_attempts, 2);
    let end = now + ms(20);
    let last = failure(
        id,
        2,
        end,
        FailureNext::Finish {
            status: Status::Failed,
            timeout_origin: None,
        },
    );
    store.mark_failed(worker, &[last]).await.unwrap();
    let view = store.get_run(id).await.unwrap().unwrap();
    assert_eq!(view.status, Status::Failed);
    assert_eq!(view.attempts, 2);
    assert_eq!(view.finished_at, Some(end));
    let err = view.error.expect("the last error is kept");
    assert_eq!(err.kind, ErrorKind::Server);
    assert_eq!(err.message, "upstream 503 on attempt 2");
    assert_eq!(err.status, Some(503));
    assert!(
        claim_ids(&store, worker, 1, end + ms(60_000))
            .await
            .is_empty(),
        "dead letters stay put"
    );
}

async fn generation_timeout_on_the_last_attempt_ends_timed_out(store: Store) {
    let now = t0();
    let mut r = new_run(now);
    r.max_attempts = 1;
    let id = enqueue_one(&store, r).await;
    let worker = WorkerId::new();
    claim_ids(&store, worker, 1, now).await;
    let mut f = failure(
        id,
        1,
        now + ms(5),
        FailureNext::Finish {
            status: Status::TimedOut,
            timeout_origin: Some(TimeoutOrigin::Generation),
        },
    );
    f.error.kind = ErrorKind::Timeout;
    f.error.status = None;
    store.mark_failed(worker, &[f]).await.unwrap();
    let view = store.get_run(id).await.unwrap().unwrap();
    assert_eq!(view.status, Status::TimedOut);
    assert_eq!(view.timeout_origin, Some(TimeoutOrigin::Generation));
    assert_eq!(view.error.unwrap().kind, ErrorKind::Timeout);
}

async fn queue_deadlines_end_runs_that_never_started(store: Store) {
    let now = t0();
    let mut live = run_of(now, Class::Live, None);
    live.queue_deadline_at = Some(now + ms(100));
    let mut background = run_of(now, Class::Background, None);
    background.queue_deadline_at = Some(now + ms(100));
    let mut patient = run_of(now, Class::Live, None);
    patient.queue_deadline_at = Some(now + ms(10_000));
    let (l, b, p) = (live.id, background.id, patient.id);
    store.enqueue(&[live, background, patient]).await.unwrap();
    assert!(
        store
            .expire_queued(now + ms(99), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // Past the deadline they are never claimed, even before the sweep.
    let claimed = store
        .claim_due(WorkerId::new(), 10, now + ms(200), LEASE)
        .await
        .unwrap();
    assert_eq!(claimed.iter().map(|c| c.id).collect::<Vec<_>>(), vec![p]);
    let mut expired = store.expire_queued(now + ms(200), 10).await.unwrap();
    expired.sort_by_key(|e| e.class);
    assert_eq!(
        expired.iter().map(|e| (e.id, e.status)).collect::<Vec<_>>(),
        vec![(l, Status::TimedOut), (b, Status::Dropped)]
    );
    let view = store.get_run(l).await.unwrap().unwrap();
    assert_eq!(view.status, Status::TimedOut);
    assert_eq!(view.timeout_origin, Some(TimeoutOrigin::QueueWait));
    assert_eq!(view.error.unwrap().kind, ErrorKind::Timeout);
    let view = store.get_run(b).await.unwrap().unwrap();
    assert_eq!(view.status, Status::Dropped);
    assert_eq!(view.drop_reason.as_deref(), Some("stale"));
    let events = store.events_for_run(b, 0).await.unwrap();
    assert_eq!(
        kinds(&events),
        vec![(EventKind::Queued, None), (EventKind::Dropped, None)]
    );
    assert_eq!(data(&events[1])["reason"], "stale");
    let events = store.events_for_run(l, 0).await.unwrap();
    assert_eq!(data(&events[1])["timeout_origin"], "queue_wait");
    assert!(
        store
            .expire_queued(now + ms(300), 10)
            .await
            .unwrap()
            .is_empty(),
        "once"
    );
}
