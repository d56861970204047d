//! The event log: every transition recorded, the dashboard filters, and the hub
//! delivering committed events.

use std::time::Duration;

use sluice::run::{Class, Status, WorkerId};
use sluice::store::{EventFilter, EventKind, FailureNext, Store};

use super::{LEASE, completion, data, enqueue_one, failure, kinds};
use crate::common::{ms, new_run, t0};

conformance!(
    event_log_records_every_transition,
    event_log_filters_for_dashboards,
    hub_delivers_committed_events,
);

async fn event_log_records_every_transition(store: Store) {
    let now = t0();
    let mut r = new_run(now);
    r.max_attempts = 3;
    r.spec.tenant = Some("acme".into());
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
        r.spec.tenant = Some(tenant.into());
        r.batch = Some(batch.into());
        r.spec.class = class;
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
