//! Batches: one transaction for a batch and all its runs, idempotent resubmission, counts
//! that add up, pause and resume under the cooldown, a cancel that ends every unfinished
//! run, the once-only `batch_finished`, and the ended runs paged in id order.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sluice::run::{Status, WorkerId};
use sluice::store::{
    BatchCancelOutcome, BatchClosed, BatchCreated, BatchId, BatchToggle, EventFilter, EventKind,
    NewBatch, Store, ToggleOutcome,
};

use super::{claim_ids, completion};
use crate::common::{ms, new_run, t0};

conformance!(
    a_batch_stores_every_run_and_its_counts_add_up,
    a_repeated_idempotency_key_answers_with_the_first_batch,
    pause_and_resume_wait_out_the_cooldown,
    cancel_ends_every_unfinished_run_and_the_batch_finishes_once,
    results_page_through_ended_runs_once_each,
);

const COOLDOWN: Duration = Duration::from_secs(5);

/// A batch of `n` runs created at `now`.
pub(crate) fn batch_of(n: usize, now: DateTime<Utc>) -> NewBatch {
    let id = BatchId::new();
    let runs = (0..n)
        .map(|_| {
            let mut r = new_run(now);
            r.batch = Some(id.text());
            r
        })
        .collect();
    NewBatch {
        id,
        tenant: None,
        metadata: None,
        idempotency_key: None,
        created_at: now,
        runs,
    }
}

async fn create(store: &Store, batch: &NewBatch) -> BatchId {
    match store.create_batch(batch).await.expect("create batch") {
        BatchCreated::Created(id) => id,
        other => panic!("expected a new batch, got {other:?}"),
    }
}

async fn a_batch_stores_every_run_and_its_counts_add_up(store: Store) {
    let now = t0();
    let batch = batch_of(30, now);
    let id = create(&store, &batch).await;
    let view = store.get_batch(id, None).await.unwrap().expect("batch");
    assert_eq!((view.run_count, view.paused), (30, false));
    assert!(store.get_batch(id, Some("other")).await.unwrap().is_none());
    let worker = WorkerId::new();
    let claimed = claim_ids(&store, worker, 10, now + ms(1)).await;
    let done: Vec<_> = claimed[..4]
        .iter()
        .map(|r| completion(*r, 1, now + ms(2)))
        .collect();
    store.mark_completed(worker, &done).await.unwrap();
    let progress = store.batch_progress(id).await.unwrap();
    assert_eq!(progress.total(), 30, "{progress:?}");
    assert_eq!(progress.count(Status::Completed), 4);
    assert_eq!(progress.count(Status::Running), 6);
    assert_eq!(progress.count(Status::Queued), 20);
    assert_eq!(
        (progress.prompt_tokens, progress.completion_tokens),
        (12, 16)
    );
    assert_eq!(progress.first_started_at, Some(now + ms(1)));
    assert!(!progress.all_ended());
}

async fn a_repeated_idempotency_key_answers_with_the_first_batch(store: Store) {
    let now = t0();
    let mut first = batch_of(3, now);
    first.idempotency_key = Some("nightly".into());
    let id = create(&store, &first).await;
    let mut again = batch_of(3, now);
    again.idempotency_key = Some("nightly".into());
    assert_eq!(
        store.create_batch(&again).await.unwrap(),
        BatchCreated::Existing(id)
    );
    assert!(store.get_batch(again.id, None).await.unwrap().is_none());
    assert_eq!(store.batch_progress(again.id).await.unwrap().total(), 0);
    // Another tenant's key is its own.
    let mut other = batch_of(1, now);
    other.idempotency_key = Some("nightly".into());
    other.tenant = Some("acme".into());
    create(&store, &other).await;
}

async fn pause_and_resume_wait_out_the_cooldown(store: Store) {
    let now = t0();
    let id = create(&store, &batch_of(2, now)).await;
    let toggle = |t, at| store.toggle_batch(id, None, t, at, COOLDOWN);
    assert!(matches!(
        toggle(BatchToggle::Resume, now).await.unwrap(),
        ToggleOutcome::Unchanged(_)
    ));
    match toggle(BatchToggle::Pause, now).await.unwrap() {
        ToggleOutcome::Applied(b) => assert!(b.paused),
        other => panic!("expected the pause to apply, got {other:?}"),
    }
    match toggle(BatchToggle::Resume, now + ms(2_000)).await.unwrap() {
        ToggleOutcome::TooSoon(wait) => assert_eq!(wait, Duration::from_secs(3)),
        other => panic!("expected the cooldown, got {other:?}"),
    }
    assert!(matches!(
        toggle(BatchToggle::Pause, now + ms(2_000)).await.unwrap(),
        ToggleOutcome::Unchanged(_)
    ));
    match toggle(BatchToggle::Resume, now + ms(5_000)).await.unwrap() {
        ToggleOutcome::Applied(b) => assert!(!b.paused),
        other => panic!("expected the resume to apply, got {other:?}"),
    }
    assert!(matches!(
        store
            .toggle_batch(BatchId::new(), None, BatchToggle::Pause, now, COOLDOWN)
            .await
            .unwrap(),
        ToggleOutcome::NotFound
    ));
    let filter = EventFilter {
        batch: Some(id.text()),
        class: Some(sluice::run::Class::Background),
        ..EventFilter::default()
    };
    let events = store.events_after(0, &filter, 100).await.unwrap();
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::BatchPaused, EventKind::BatchResumed]);
    assert!(events.iter().all(|e| e.run_id.0 == id.0));
}

async fn cancel_ends_every_unfinished_run_and_the_batch_finishes_once(store: Store) {
    let now = t0();
    let id = create(&store, &batch_of(5, now)).await;
    let worker = WorkerId::new();
    let claimed = claim_ids(&store, worker, 3, now + ms(1)).await;
    store
        .mark_completed(worker, &[completion(claimed[0], 1, now + ms(2))])
        .await
        .unwrap();
    assert!(store.finish_ended_batches(10).await.unwrap().is_empty());
    match store.cancel_batch(id, None, now + ms(3)).await.unwrap() {
        BatchCancelOutcome::Cancelled { ended, running } => {
            assert_eq!(ended.len(), 4);
            let running: HashSet<_> = running.into_iter().collect();
            assert_eq!(running, claimed[1..].iter().copied().collect());
        }
        other => panic!("expected the cancel, got {other:?}"),
    }
    // A late result of a cancelled attempt is ignored.
    let late = store
        .mark_completed(worker, &[completion(claimed[1], 1, now + ms(4))])
        .await
        .unwrap();
    assert!(late.is_empty());
    let progress = store.batch_progress(id).await.unwrap();
    assert_eq!(progress.count(Status::Cancelled), 4);
    assert_eq!(progress.count(Status::Completed), 1);
    assert!(progress.all_ended());
    assert!(matches!(
        store.cancel_batch(id, None, now + ms(5)).await.unwrap(),
        BatchCancelOutcome::Closed(BatchClosed::Cancelled)
    ));
    assert!(matches!(
        store
            .toggle_batch(id, None, BatchToggle::Pause, now + ms(10_000), COOLDOWN)
            .await
            .unwrap(),
        ToggleOutcome::Closed(BatchClosed::Cancelled)
    ));
    assert_eq!(store.finish_ended_batches(10).await.unwrap(), vec![id]);
    assert!(store.finish_ended_batches(10).await.unwrap().is_empty());
    let view = store.get_batch(id, None).await.unwrap().unwrap();
    assert_eq!(view.finished_at, Some(now + ms(3)));
    let filter = EventFilter {
        batch: Some(id.text()),
        ..EventFilter::default()
    };
    let events = store.events_after(0, &filter, 100).await.unwrap();
    let finished: Vec<_> = events
        .iter()
        .filter(|e| e.kind == EventKind::BatchFinished)
        .collect();
    assert_eq!(finished.len(), 1, "{events:?}");
    let data: serde_json::Value =
        serde_json::from_str(finished[0].data.as_ref().unwrap().get()).unwrap();
    assert_eq!(data["run_count"], 5);
    assert_eq!(data["counts"]["cancelled"], 4);
    assert_eq!(data["counts"]["completed"], 1);
    assert_eq!(data["counts"]["queued"], 0);
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == EventKind::Cancelled)
            .count(),
        4
    );
}

async fn results_page_through_ended_runs_once_each(store: Store) {
    let now = t0();
    let id = create(&store, &batch_of(12, now)).await;
    let worker = WorkerId::new();
    let claimed = claim_ids(&store, worker, 9, now + ms(1)).await;
    let done: Vec<_> = claimed
        .iter()
        .map(|r| completion(*r, 1, now + ms(2)))
        .collect();
    store.mark_completed(worker, &done).await.unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.batch_results(id, after, 4).await.unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|r| r.id.0);
        seen.extend(page);
    }
    assert_eq!(seen.len(), 9);
    assert!(seen.windows(2).all(|w| w[0].id < w[1].id));
    assert!(
        seen.iter()
            .all(|r| r.status == Status::Completed && r.output.is_some())
    );
    let want: HashSet<_> = claimed.into_iter().collect();
    assert_eq!(seen.iter().map(|r| r.id).collect::<HashSet<_>>(), want);
}
