//! The store conformance suite: every test runs against SQLite and PostgreSQL, so both
//! backends keep one contract. Time is passed in explicitly (no sleeps).

mod common;

use std::time::Duration;

use common::{ms, new_run, t0};
use sluice::run::{Class, ErrorKind, RunId, Status, TimeoutOrigin, WorkerId};
use sluice::store::{
    CancelOutcome, Completion, Enqueued, EventFilter, EventKind, Failure, FailureNext, KeyCaps,
    ProviderQuota, RunError, RunEvent, StartNow, Store,
};

const LEASE: Duration = Duration::from_secs(30);

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _dir) = super::common::sqlite_store().await;
                    super::$name(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let store = super::common::pg_store().await;
                    super::$name(store).await;
                }
            )*
        }
    };
}

conformance!(
    claims_in_dispatch_order,
    delayed_runs_wait_for_their_time,
    failed_attempts_retry_after_their_backoff,
    last_failure_dead_letters_and_keeps_the_error,
    generation_timeout_on_the_last_attempt_ends_timed_out,
    concurrent_duplicate_enqueues_make_one_run,
    idempotency_keys_are_scoped_by_tenant_and_batch,
    queued_run_cancels_at_once,
    running_run_cancels_and_its_late_result_is_ignored,
    expired_leases_are_rescued_and_the_stale_worker_cannot_finish,
    rescue_of_the_last_attempt_fails_the_run,
    heartbeats_keep_leases_alive,
    released_attempts_do_not_count,
    attempt_log_records_every_attempt,
    counts_by_class_and_status,
    payloads_round_trip_verbatim,
    event_log_records_every_transition,
    event_log_filters_for_dashboards,
    hub_delivers_committed_events,
    quotas_bound_each_provider,
    provider_state_is_kept,
    background_waits_for_live_and_its_cap,
    key_caps_bound_runs_in_flight,
    queue_deadlines_end_runs_that_never_started,
    enqueue_starts_flagged_runs_that_overtake_nothing,
);

fn completion(id: RunId, attempt: u32, at: chrono::DateTime<chrono::Utc>) -> Completion {
    Completion {
        id,
        attempt,
        finished_at: at,
        content: format!("done {id}"),
        finish_reason: Some("stop".into()),
        prompt_tokens: Some(3),
        completion_tokens: Some(4),
    }
}

fn failure(
    id: RunId,
    attempt: u32,
    at: chrono::DateTime<chrono::Utc>,
    next: FailureNext,
) -> Failure {
    Failure {
        id,
        attempt,
        finished_at: at,
        error: RunError {
            kind: ErrorKind::Server,
            message: format!("upstream 503 on attempt {attempt}"),
            status: Some(503),
        },
        retry_after_ms: Some(250),
        next,
    }
}

async fn enqueue_one(store: &Store, run: sluice::store::NewRun) -> RunId {
    let out = store.enqueue(&[run]).await.expect("enqueue");
    match out[..] {
        [Enqueued::Created(id)] => id,
        ref other => panic!("expected one created run, got {other:?}"),
    }
}

async fn claim_ids(
    store: &Store,
    worker: WorkerId,
    limit: usize,
    at: chrono::DateTime<chrono::Utc>,
) -> Vec<RunId> {
    store
        .claim_due(worker, limit, at, LEASE)
        .await
        .expect("claim")
        .into_iter()
        .map(|c| c.id)
        .collect()
}

async fn claims_in_dispatch_order(store: Store) {
    let now = t0();
    let mut runs = Vec::new();
    let mut add = |class: Class, priority: i16, due_offset_ms: i64| {
        let mut r = new_run(now);
        r.class = class;
        r.priority = priority;
        r.due_at = now - ms(due_offset_ms);
        runs.push(r.clone());
        r.id
    };
    let bg_urgent = add(Class::Background, 1, 50);
    let live_low = add(Class::Live, 9, 40);
    let live_p1_late = add(Class::Live, 1, 10);
    let live_p1_early = add(Class::Live, 1, 30);
    let live_mid = add(Class::Live, 5, 20);
    // Enqueue in one batch, in an order unrelated to the expected one.
    store.enqueue(&runs).await.unwrap();
    let worker = WorkerId::new();
    let mut order = Vec::new();
    for _ in 0..5 {
        let got = claim_ids(&store, worker, 1, now).await;
        assert_eq!(got.len(), 1, "one claim per call");
        order.push(got[0]);
    }
    assert_eq!(
        order,
        vec![live_p1_early, live_p1_late, live_mid, live_low, bg_urgent],
        "live before background, then priority, then due time"
    );
    assert!(
        claim_ids(&store, worker, 10, now).await.is_empty(),
        "nothing left"
    );

    // A batch claim returns the same order.
    let mut again = Vec::new();
    for (class, p) in [(Class::Background, 1), (Class::Live, 3), (Class::Live, 2)] {
        let mut r = new_run(now);
        r.class = class;
        r.priority = p;
        again.push(r);
    }
    store.enqueue(&again).await.unwrap();
    let batch = store.claim_due(worker, 10, now, LEASE).await.unwrap();
    let got: Vec<(Class, i16)> = batch.iter().map(|c| (c.class, c.priority)).collect();
    assert_eq!(
        got,
        vec![(Class::Live, 2), (Class::Live, 3), (Class::Background, 1)]
    );
    assert!(batch.iter().all(|c| c.attempt == 1));
}

async fn delayed_runs_wait_for_their_time(store: Store) {
    let now = t0();
    let mut r = new_run(now);
    r.due_at = now + ms(10_000);
    let id = enqueue_one(&store, r).await;
    let worker = WorkerId::new();
    assert!(
        claim_ids(&store, worker, 10, now).await.is_empty(),
        "not before run_at"
    );
    assert!(
        claim_ids(&store, worker, 10, now + ms(9_999))
            .await
            .is_empty()
    );
    assert_eq!(store.next_due_at().await.unwrap(), Some(now + ms(10_000)));
    assert_eq!(
        claim_ids(&store, worker, 10, now + ms(10_000)).await,
        vec![id]
    );
    assert_eq!(store.next_due_at().await.unwrap(), None);
}

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

async fn concurrent_duplicate_enqueues_make_one_run(store: Store) {
    let now = t0();
    let calls = (0..32).map(|_| {
        let store = store.clone();
        let mut r = new_run(now);
        r.idempotency_key = Some("order-42".into());
        tokio::spawn(async move { store.enqueue(&[r]).await.expect("enqueue")[0] })
    });
    let results: Vec<Enqueued> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    let created = results
        .iter()
        .filter(|e| matches!(e, Enqueued::Created(_)))
        .count();
    assert_eq!(
        created, 1,
        "exactly one of 32 duplicates creates the run: {results:?}"
    );
    let first = results[0].id();
    assert!(
        results.iter().all(|e| e.id() == first),
        "all duplicates return the same run"
    );
    let counts = store.count_active().await.unwrap();
    let queued: i64 = counts.iter().map(|(_, _, n)| n).sum();
    assert_eq!(queued, 1, "one row stored");
}

async fn idempotency_keys_are_scoped_by_tenant_and_batch(store: Store) {
    let now = t0();
    let mut a = new_run(now);
    a.idempotency_key = Some("k".into());
    a.tenant = Some("acme".into());
    let mut b = new_run(now);
    b.idempotency_key = Some("k".into());
    b.tenant = Some("globex".into());
    // The same key twice inside one batch: the second answers with the first.
    let mut a2 = new_run(now);
    a2.idempotency_key = Some("k".into());
    a2.tenant = Some("acme".into());
    let out = store.enqueue(&[a.clone(), b.clone(), a2]).await.unwrap();
    assert_eq!(out[0], Enqueued::Created(a.id));
    assert_eq!(
        out[1],
        Enqueued::Created(b.id),
        "other tenants may reuse a key"
    );
    assert_eq!(out[2], Enqueued::Existing(a.id));
    // And later, from another call.
    let mut a3 = new_run(now);
    a3.idempotency_key = Some("k".into());
    a3.tenant = Some("acme".into());
    assert_eq!(
        store.enqueue(&[a3]).await.unwrap(),
        vec![Enqueued::Existing(a.id)]
    );
}

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
    let worker = WorkerId::new();
    let lease = Duration::from_secs(1);
    store.claim_due(worker, 1, now, lease).await.unwrap();
    let renewed = store
        .extend_leases(worker, &[id], now + ms(800), lease)
        .await
        .unwrap();
    assert_eq!(renewed, 1);
    assert!(
        store
            .rescue_expired(now + ms(1_500), 100)
            .await
            .unwrap()
            .is_empty(),
        "renewed lease holds"
    );
    let other = WorkerId::new();
    assert_eq!(
        store
            .extend_leases(other, &[id], now + ms(900), lease)
            .await
            .unwrap(),
        0,
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

async fn attempt_log_records_every_attempt(store: Store) {
    let now = t0();
    let id = enqueue_one(&store, new_run(now)).await;
    let worker = WorkerId::new();
    store.claim_due(worker, 1, now, LEASE).await.unwrap();
    store
        .mark_failed(
            worker,
            &[failure(
                id,
                1,
                now + ms(100),
                FailureNext::RetryAt(now + ms(200)),
            )],
        )
        .await
        .unwrap();
    store
        .claim_due(worker, 1, now + ms(200), LEASE)
        .await
        .unwrap();
    store
        .mark_completed(worker, &[completion(id, 2, now + ms(300))])
        .await
        .unwrap();
    let view = store.get_run(id).await.unwrap().unwrap();
    assert_eq!(view.status, Status::Completed);
    assert_eq!(view.started_at, Some(now), "started_at is the first start");
    assert_eq!(view.finished_at, Some(now + ms(300)));
    assert!(view.error.is_none(), "a completed run carries no error");
    let out = view.output.expect("output");
    assert_eq!(out.content, format!("done {id}"));
    assert_eq!(out.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        (view.prompt_tokens, view.completion_tokens),
        (Some(3), Some(4))
    );
    let log = &view.attempt_log;
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].attempt, 1);
    assert_eq!(log[0].started_at, now);
    assert_eq!(log[0].finished_at, Some(now + ms(100)));
    assert_eq!(log[0].outcome.as_deref(), Some("server"));
    assert_eq!(log[0].status, Some(503));
    assert_eq!(log[0].retry_after_ms, Some(250));
    assert_eq!(
        log[0].error_message.as_deref(),
        Some("upstream 503 on attempt 1")
    );
    assert_eq!(log[1].attempt, 2);
    assert_eq!(log[1].started_at, now + ms(200));
    assert_eq!(log[1].outcome.as_deref(), Some("completed"));
}

async fn counts_by_class_and_status(store: Store) {
    let now = t0();
    let mut runs = Vec::new();
    for i in 0..5 {
        let mut r = new_run(now);
        r.class = if i < 3 {
            Class::Live
        } else {
            Class::Background
        };
        runs.push(r);
    }
    store.enqueue(&runs).await.unwrap();
    store
        .claim_due(WorkerId::new(), 2, now, LEASE)
        .await
        .unwrap();
    let mut counts = store.count_active().await.unwrap();
    counts.sort_by_key(|(c, s, _)| (*c, s.as_str()));
    assert_eq!(
        counts,
        vec![
            (Class::Live, Status::Queued, 1),
            (Class::Live, Status::Running, 2),
            (Class::Background, Status::Queued, 2),
        ]
    );
}

async fn payloads_round_trip_verbatim(store: Store) {
    let now = t0();
    let mut r = new_run(now);
    let request = r#"{"messages":[{"role":"user","content":"héllo \"quoted\""}],"max_tokens":7,"temperature":0.25}"#;
    r.request = serde_json::value::RawValue::from_string(request.into()).unwrap();
    r.metadata = Some(
        serde_json::value::RawValue::from_string(r#"{"trace":"abc","n":[1,2]}"#.into()).unwrap(),
    );
    r.tenant = Some("acme".into());
    r.concurrency_key = Some("style-9".into());
    r.session = Some("sess".into());
    r.batch = Some("b1".into());
    r.stream = true;
    r.timeout_ms = Some(1234);
    r.queue_deadline_at = Some(now + ms(20_000));
    let id = enqueue_one(&store, r).await;
    let view = store.get_run(id).await.unwrap().unwrap();
    let meta: serde_json::Value = serde_json::from_str(view.metadata.unwrap().get()).unwrap();
    assert_eq!(meta, serde_json::json!({"trace":"abc","n":[1,2]}));
    assert_eq!(view.tenant.as_deref(), Some("acme"));
    assert_eq!(view.concurrency_key.as_deref(), Some("style-9"));
    assert_eq!(view.session.as_deref(), Some("sess"));
    assert_eq!(view.batch.as_deref(), Some("b1"));
    assert!(view.stream);
    assert_eq!(view.timeout_ms, Some(1234));
    assert_eq!(view.queue_deadline_at, Some(now + ms(20_000)));
    assert_eq!(view.created_at, now);
    let claimed = store
        .claim_due(WorkerId::new(), 1, now, LEASE)
        .await
        .unwrap();
    let sent: serde_json::Value = serde_json::from_str(claimed[0].request.get()).unwrap();
    let expected: serde_json::Value = serde_json::from_str(request).unwrap();
    assert_eq!(
        sent, expected,
        "the provider receives the request as enqueued"
    );
    assert!(claimed[0].stream);
    assert_eq!(claimed[0].tenant.as_deref(), Some("acme"));
}

fn kinds(events: &[RunEvent]) -> Vec<(EventKind, Option<u32>)> {
    events.iter().map(|e| (e.kind, e.attempt)).collect()
}

fn data(e: &RunEvent) -> serde_json::Value {
    serde_json::from_str(e.data.as_ref().expect("event data").get()).unwrap()
}

async fn event_log_records_every_transition(store: Store) {
    let now = t0();
    let mut r = new_run(now);
    r.max_attempts = 3;
    r.tenant = Some("acme".into());
    r.batch = Some("b7".into());
    let id = enqueue_one(&store, r).await;
    let worker = WorkerId::new();
    store.claim_due(worker, 1, now, LEASE).await.unwrap();
    let retry_at = now + ms(400);
    store
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
    store.claim_due(worker, 1, retry_at, LEASE).await.unwrap();
    store
        .release(worker, &[(id, 2)], retry_at + ms(10))
        .await
        .unwrap();
    let crashed = WorkerId::new();
    store
        .claim_due(crashed, 1, retry_at + ms(20), Duration::from_secs(1))
        .await
        .unwrap();
    store
        .rescue_expired(retry_at + ms(2_000), 10)
        .await
        .unwrap();
    store
        .claim_due(worker, 1, retry_at + ms(2_001), LEASE)
        .await
        .unwrap();
    let last = failure(
        id,
        3,
        retry_at + ms(2_100),
        FailureNext::Finish {
            status: Status::Failed,
            timeout_origin: None,
        },
    );
    store.mark_failed(worker, &[last]).await.unwrap();

    let events = store.events_for_run(id, 0).await.unwrap();
    assert_eq!(
        kinds(&events),
        vec![
            (EventKind::Queued, None),
            (EventKind::Started, Some(1)),
            (EventKind::AttemptFailed, Some(1)),
            (EventKind::Started, Some(2)),
            (EventKind::Queued, Some(2)),
            (EventKind::Started, Some(2)),
            (EventKind::AttemptFailed, Some(2)),
            (EventKind::Started, Some(3)),
            (EventKind::AttemptFailed, Some(3)),
            (EventKind::Failed, Some(3)),
        ],
        "every transition, in order"
    );
    assert!(events.windows(2).all(|w| w[0].id < w[1].id), "ids increase");
    assert!(events.iter().all(|e| e.run_id == id
        && e.tenant.as_deref() == Some("acme")
        && e.batch.as_deref() == Some("b7")));
    let failed = data(&events[2]);
    assert_eq!(failed["kind"], "server");
    assert_eq!(failed["status"], 503);
    assert_eq!(failed["retry_at"], "2030-01-01T00:00:00.400Z");
    assert_eq!(data(&events[4])["reason"], "released");
    assert_eq!(
        data(&events[6])["kind"],
        "timeout",
        "an abandoned attempt reads as a timeout"
    );
    assert_eq!(data(&events[9])["message"], "upstream 503 on attempt 3");

    // Resuming after an id returns exactly what follows it.
    let tail = store.events_for_run(id, events[6].id).await.unwrap();
    assert_eq!(tail.len(), 3);
    assert_eq!(tail[0].id, events[7].id);

    // Completion and cancellation end their streams with their own event.
    let done = enqueue_one(&store, new_run(now)).await;
    store.claim_due(worker, 1, now, LEASE).await.unwrap();
    store
        .mark_completed(worker, &[completion(done, 1, now + ms(5))])
        .await
        .unwrap();
    let events = store.events_for_run(done, 0).await.unwrap();
    assert_eq!(
        kinds(&events),
        vec![
            (EventKind::Queued, None),
            (EventKind::Started, Some(1)),
            (EventKind::Completed, Some(1))
        ]
    );
    assert!(events.last().unwrap().kind.is_terminal());
    let cancelled = enqueue_one(&store, new_run(now)).await;
    store.cancel(cancelled, now + ms(1)).await.unwrap();
    store.cancel(cancelled, now + ms(2)).await.unwrap();
    let events = store.events_for_run(cancelled, 0).await.unwrap();
    assert_eq!(
        kinds(&events),
        vec![(EventKind::Queued, None), (EventKind::Cancelled, None)],
        "one cancelled event"
    );
}

async fn event_log_filters_for_dashboards(store: Store) {
    let now = t0();
    let start = store.last_event_id().await.unwrap();
    let mut runs = Vec::new();
    for (tenant, batch, class) in [
        ("a", "x", Class::Live),
        ("a", "y", Class::Background),
        ("b", "x", Class::Live),
    ] {
        let mut r = new_run(now);
        r.tenant = Some(tenant.into());
        r.batch = Some(batch.into());
        r.class = class;
        runs.push(r);
    }
    store.enqueue(&runs).await.unwrap();
    let all = store
        .events_after(start, &EventFilter::default(), 100)
        .await
        .unwrap();
    assert_eq!(all.len(), 3);
    let tenant_a = EventFilter {
        tenant: Some("a".into()),
        ..EventFilter::default()
    };
    assert_eq!(
        store
            .events_after(start, &tenant_a, 100)
            .await
            .unwrap()
            .len(),
        2
    );
    let batch_x_live = EventFilter {
        batch: Some("x".into()),
        class: Some(Class::Live),
        ..EventFilter::default()
    };
    let got = store.events_after(start, &batch_x_live, 100).await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|e| batch_x_live.matches(e)));
    assert_eq!(
        store
            .events_after(start, &EventFilter::default(), 1)
            .await
            .unwrap()
            .len(),
        1,
        "limit holds"
    );
    assert_eq!(store.last_event_id().await.unwrap(), all.last().unwrap().id);
}

async fn hub_delivers_committed_events(store: Store) {
    let stop = tokio_util::sync::CancellationToken::new();
    let pump = tokio::spawn({
        let store = store.clone();
        let stop = stop.clone();
        async move { store.pump_events(stop).await }
    });
    let mut rx = store.hub().subscribe();
    // On PostgreSQL the pump must be listening before the writes below: give it a moment,
    // bounded, by writing until an event shows up.
    let now = t0();
    let mut ids = Vec::new();
    let first = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            ids.push(enqueue_one(&store, new_run(now)).await);
            match tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
                Ok(Ok(e)) => break e,
                Ok(Err(e)) => panic!("hub closed: {e}"),
                Err(_) => continue,
            }
        }
    })
    .await
    .expect("the hub delivers an enqueue event");
    assert_eq!(first.kind, EventKind::Queued);
    assert!(ids.contains(&first.run_id));
    // Drain whatever else the warm-up produced.
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {}

    let id = enqueue_one(&store, new_run(now)).await;
    let worker = WorkerId::new();
    let claimed = store.claim_due(worker, 100, now, LEASE).await.unwrap();
    let mine = claimed
        .iter()
        .find(|c| c.id == id)
        .expect("claimed")
        .attempt;
    store
        .mark_completed(worker, &[completion(id, mine, now)])
        .await
        .unwrap();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while seen.last() != Some(&EventKind::Completed) {
            let e = rx.recv().await.expect("hub open");
            if e.run_id == id {
                seen.push(e.kind);
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("live events for the run, got only {seen:?}"));
    assert_eq!(
        seen,
        vec![EventKind::Queued, EventKind::Started, EventKind::Completed]
    );
    stop.cancel();
    pump.await.unwrap();
}

async fn quotas_bound_each_provider(store: Store) {
    let now = t0();
    let mut runs = Vec::new();
    for (provider, class, priority) in [
        ("a", Class::Background, 1),
        ("a", Class::Live, 5),
        ("a", Class::Live, 6),
        ("b", Class::Live, 1),
        ("b", Class::Live, 2),
        ("c", Class::Live, 1),
    ] {
        let mut r = new_run(now);
        r.provider = provider.into();
        r.class = class;
        r.priority = priority;
        runs.push(r);
    }
    store.enqueue(&runs).await.unwrap();
    let quota = |provider: &str, max: usize| ProviderQuota::only(provider, max);
    let worker = WorkerId::new();
    let got = store
        .claim_due_within(
            worker,
            10,
            &[quota("a", 2), quota("b", 0)],
            KeyCaps::default(),
            now,
            LEASE,
        )
        .await
        .unwrap();
    let picked: Vec<(String, i16)> = got
        .iter()
        .map(|c| (c.provider.clone(), c.priority))
        .collect();
    assert_eq!(
        picked,
        vec![("a".to_string(), 5), ("a".to_string(), 6)],
        "a's quota of 2 takes its two best; b (quota 0) and c (not listed) wait"
    );
    let got = store
        .claim_due_within(
            worker,
            2,
            &[quota("a", 10), quota("b", 10), quota("c", 10)],
            KeyCaps::default(),
            now,
            LEASE,
        )
        .await
        .unwrap();
    let picked: Vec<(String, i16)> = got
        .iter()
        .map(|c| (c.provider.clone(), c.priority))
        .collect();
    assert_eq!(
        picked,
        vec![("b".to_string(), 1), ("c".to_string(), 1)],
        "the overall limit takes the best across providers in dispatch order"
    );
    assert!(
        store
            .claim_due_within(worker, 10, &[quota("a", 0)], KeyCaps::default(), now, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    let rest = store
        .claim_due_within(
            worker,
            10,
            &[quota("a", 10), quota("b", 10)],
            KeyCaps::default(),
            now,
            LEASE,
        )
        .await
        .unwrap();
    let picked: Vec<(String, Class)> = rest.iter().map(|c| (c.provider.clone(), c.class)).collect();
    assert_eq!(
        picked,
        vec![
            ("b".to_string(), Class::Live),
            ("a".to_string(), Class::Background)
        ]
    );
}

async fn provider_state_is_kept(store: Store) {
    assert!(store.load_provider_state().await.unwrap().is_empty());
    let now = t0();
    store
        .save_provider_state(
            &[
                ("a".into(), r#"{"current_rpm":30.0}"#.into()),
                ("b".into(), r#"{"current_rpm":null}"#.into()),
            ],
            now,
        )
        .await
        .unwrap();
    store
        .save_provider_state(&[("a".into(), r#"{"current_rpm":45.5}"#.into())], now)
        .await
        .unwrap();
    let mut state = store.load_provider_state().await.unwrap();
    state.sort();
    let parsed: Vec<(String, serde_json::Value)> = state
        .into_iter()
        .map(|(p, v)| (p, serde_json::from_str(&v).unwrap()))
        .collect();
    assert_eq!(
        parsed,
        vec![
            ("a".to_string(), serde_json::json!({"current_rpm": 45.5})),
            ("b".to_string(), serde_json::json!({"current_rpm": null})),
        ]
    );
}

fn run_of(
    now: chrono::DateTime<chrono::Utc>,
    class: Class,
    key: Option<&str>,
) -> sluice::store::NewRun {
    let mut r = new_run(now);
    r.provider = "p".into();
    r.class = class;
    r.concurrency_key = key.map(str::to_string);
    r
}

fn caps(background_cap: u32) -> Vec<ProviderQuota> {
    vec![ProviderQuota {
        provider: "p".into(),
        max: 100,
        live_cap: None,
        background_cap,
    }]
}

async fn background_waits_for_live_and_its_cap(store: Store) {
    let now = t0();
    let worker = WorkerId::new();
    let mut delayed_live = run_of(now, Class::Live, None);
    delayed_live.due_at = now + ms(1_000);
    store
        .enqueue(&[
            run_of(now, Class::Background, None),
            run_of(now, Class::Background, None),
            run_of(now, Class::Live, None),
            delayed_live,
        ])
        .await
        .unwrap();
    let got = store
        .claim_due_within(worker, 10, &caps(1), KeyCaps::default(), now, LEASE)
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|c| c.class).collect::<Vec<_>>(),
        vec![Class::Live],
        "no background run while a live run of the provider is due"
    );
    let got = store
        .claim_due_within(worker, 10, &caps(1), KeyCaps::default(), now, LEASE)
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "one background run: the cap is 1");
    assert_eq!(got[0].class, Class::Background);
    assert!(
        store
            .claim_due_within(worker, 10, &caps(1), KeyCaps::default(), now, LEASE)
            .await
            .unwrap()
            .is_empty(),
        "the cap counts runs in flight"
    );
    // A live run becoming due takes precedence again; the background one waits.
    let got = store
        .claim_due_within(
            worker,
            10,
            &caps(5),
            KeyCaps::default(),
            now + ms(1_000),
            LEASE,
        )
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|c| c.class).collect::<Vec<_>>(),
        vec![Class::Live]
    );
    let got = store
        .claim_due_within(
            worker,
            10,
            &caps(5),
            KeyCaps::default(),
            now + ms(1_000),
            LEASE,
        )
        .await
        .unwrap();
    assert_eq!(
        got.iter().map(|c| c.class).collect::<Vec<_>>(),
        vec![Class::Background]
    );
}

async fn key_caps_bound_runs_in_flight(store: Store) {
    let now = t0();
    let worker = WorkerId::new();
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(run_of(now, Class::Background, Some("style-a")));
    }
    runs.push(run_of(now, Class::Background, Some("style-b")));
    for _ in 0..3 {
        runs.push(run_of(now, Class::Live, Some("style-a")));
    }
    store.enqueue(&runs).await.unwrap();
    let key_caps = KeyCaps {
        live: Some(2),
        background: Some(1),
    };
    let got = store
        .claim_due_within(worker, 10, &caps(10), key_caps, now, LEASE)
        .await
        .unwrap();
    assert_eq!(
        got.len(),
        2,
        "two live runs of style-a (live key cap 2): {got:?}"
    );
    assert!(got.iter().all(|c| c.class == Class::Live));
    // The third live run waits for its key; with no live run *claimable*, background still
    // waits because a live run of the provider is due.
    assert!(
        store
            .claim_due_within(worker, 10, &caps(10), key_caps, now, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
    for c in &got {
        store
            .mark_completed(worker, &[completion(c.id, c.attempt, now)])
            .await
            .unwrap();
    }
    let got = store
        .claim_due_within(worker, 10, &caps(10), key_caps, now, LEASE)
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "the last live run");
    store
        .mark_completed(worker, &[completion(got[0].id, got[0].attempt, now)])
        .await
        .unwrap();
    let got = store
        .claim_due_within(worker, 10, &caps(10), key_caps, now, LEASE)
        .await
        .unwrap();
    let keys: Vec<_> = got
        .iter()
        .map(|c| c.concurrency_key.clone().unwrap())
        .collect();
    assert_eq!(got.len(), 2, "one background run per key: {keys:?}");
    assert!(keys.contains(&"style-a".to_string()) && keys.contains(&"style-b".to_string()));
    assert!(
        store
            .claim_due_within(worker, 10, &caps(10), key_caps, now, LEASE)
            .await
            .unwrap()
            .is_empty()
    );
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

async fn enqueue_starts_flagged_runs_that_overtake_nothing(store: Store) {
    let now = t0();
    let worker = WorkerId::new();
    let lease_until = now + ms(30_000);
    // Nothing queued: the flagged run starts in the enqueue's commit, the other queues.
    let a = new_run(now);
    let b = new_run(now);
    let (a_id, b_id) = (a.id, b.id);
    let flags = [true, false];
    let (out, started) = store
        .enqueue_starting(
            &[a, b],
            Some(StartNow {
                worker,
                now,
                lease_until,
                runs: &flags,
            }),
            None,
        )
        .await
        .unwrap();
    assert_eq!(out, vec![Enqueued::Created(a_id), Enqueued::Created(b_id)]);
    assert_eq!(started, vec![a_id]);
    let view = store.get_run(a_id).await.unwrap().unwrap();
    assert_eq!(view.status, Status::Running);
    assert_eq!(view.attempts, 1);
    assert_eq!(view.started_at, Some(now));
    assert_eq!(view.attempt_log.len(), 1, "attempt 1 is open");
    assert_eq!(view.attempt_log[0].finished_at, None);
    let kinds: Vec<(EventKind, Option<u32>)> = store
        .events_for_run(a_id, 0)
        .await
        .unwrap()
        .iter()
        .map(|e| (e.kind, e.attempt))
        .collect();
    assert_eq!(
        kinds,
        vec![(EventKind::Queued, None), (EventKind::Started, Some(1))]
    );
    assert_eq!(
        store.get_run(b_id).await.unwrap().unwrap().status,
        Status::Queued
    );
    // The started run is leased like a claimed one: it completes under the same worker,
    // and another worker cannot finish it.
    assert!(
        store
            .mark_completed(WorkerId::new(), &[completion(a_id, 1, now + ms(5))])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .mark_completed(worker, &[completion(a_id, 1, now + ms(5))])
            .await
            .unwrap(),
        vec![a_id]
    );

    // `b` (live, same provider) is due and queued: a new flagged run must not overtake it.
    let c = new_run(now + ms(1));
    let c_id = c.id;
    let (_, started) = store
        .enqueue_starting(
            &[c],
            Some(StartNow {
                worker,
                now: now + ms(1),
                lease_until,
                runs: &[true],
            }),
            None,
        )
        .await
        .unwrap();
    assert!(
        started.is_empty(),
        "a due live run of the provider is ahead"
    );
    assert_eq!(
        store.get_run(c_id).await.unwrap().unwrap().status,
        Status::Queued
    );
    assert_eq!(
        claim_ids(&store, worker, 10, now + ms(2)).await,
        vec![b_id, c_id],
        "both wait in dispatch order"
    );

    // A run of another provider is not held back by them; one not due yet never starts;
    // and a flag on a background run is refused.
    let mut d = new_run(now + ms(3));
    d.provider = "other".into();
    let mut later = new_run(now + ms(3));
    later.due_at = now + ms(60_000);
    let (d_id, later_id) = (d.id, later.id);
    let (_, started) = store
        .enqueue_starting(
            &[d, later],
            Some(StartNow {
                worker,
                now: now + ms(3),
                lease_until,
                runs: &[true, true],
            }),
            None,
        )
        .await
        .unwrap();
    assert_eq!(started, vec![d_id]);
    assert_eq!(
        store.get_run(later_id).await.unwrap().unwrap().status,
        Status::Queued
    );
    let mut bg = new_run(now + ms(4));
    bg.class = Class::Background;
    assert!(
        store
            .enqueue_starting(
                &[bg],
                Some(StartNow {
                    worker,
                    now: now + ms(4),
                    lease_until,
                    runs: &[true],
                }),
                None,
            )
            .await
            .is_err()
    );
}
