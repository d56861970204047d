//! Dispatch order: claims by class, priority and due time; delayed runs wait for their
//! time; runs started in the enqueue's own commit overtake nothing.

use sluice::run::{Class, Status, WorkerId};
use sluice::store::{Enqueued, EventKind, StartNow, Store};

use super::{LEASE, claim_ids, completion, enqueue_one};
use crate::common::{ms, new_run, t0};

conformance!(
    claims_in_dispatch_order,
    delayed_runs_wait_for_their_time,
    enqueue_starts_flagged_runs_that_overtake_nothing,
);

async fn claims_in_dispatch_order(store: Store) {
    let now = t0();
    let mut runs = Vec::new();
    let mut add = |class: Class, priority: i16, due_offset_ms: i64| {
        let mut r = new_run(now);
        r.spec.class = class;
        r.spec.priority = priority;
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
        r.spec.class = class;
        r.spec.priority = p;
        again.push(r);
    }
    store.enqueue(&again).await.unwrap();
    let batch = store.claim_due(worker, 10, now, LEASE).await.unwrap();
    let got: Vec<(Class, i16)> = batch
        .iter()
        .map(|c| (c.spec.class, c.spec.priority))
        .collect();
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
    d.spec.provider = "other".into();
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
    bg.spec.class = Class::Background;
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
