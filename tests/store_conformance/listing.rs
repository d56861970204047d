//! Listing: newest-first keyset pages that neither skip nor repeat a run while runs keep
//! arriving, every filter, and batches listed the same way.

use std::collections::HashSet;

use sluice::run::{Class, RunId, Status, WorkerId};
use sluice::store::{BatchFilter, NewRun, PageAfter, RunFilter, Store};

use super::batches::batch_of;
use super::{LEASE, completion};
use crate::common::{ms, new_run, t0};

conformance!(
    pages_neither_skip_nor_repeat_while_runs_arrive,
    every_filter_narrows_the_listing,
    batches_list_newest_first,
);

/// Every page of `filter`, `limit` rows at a time; `between` runs before each next page.
async fn all_pages(
    store: &Store,
    filter: &RunFilter,
    limit: usize,
    mut between: impl AsyncFnMut(usize),
) -> Vec<RunId> {
    let mut seen = Vec::new();
    let mut after = None;
    for page_no in 0.. {
        let page = store.list_runs(filter, after, limit).await.unwrap();
        let last = page.last().map(|r| PageAfter {
            created_at: r.created_at,
            id: r.id.0,
        });
        let full = page.len() == limit;
        seen.extend(page.into_iter().map(|r| r.id));
        if !full {
            break;
        }
        after = last;
        between(page_no).await;
    }
    seen
}

async fn pages_neither_skip_nor_repeat_while_runs_arrive(store: Store) {
    let now = t0();
    // 600 runs over 200 distinct times: ties on created_at are broken by id.
    let runs: Vec<NewRun> = (0..600).map(|i| new_run(now + ms(i / 3))).collect();
    store.enqueue(&runs).await.unwrap();
    let original: HashSet<RunId> = runs.iter().map(|r| r.id).collect();
    let seen = all_pages(&store, &RunFilter::default(), 70, async |page| {
        // Newer runs, and runs created within the range already paged and still ahead.
        let arriving = [
            new_run(now + ms(10_000 + page as i64)),
            new_run(now + ms(50)),
        ];
        store.enqueue(&arriving).await.unwrap();
    })
    .await;
    let unique: HashSet<RunId> = seen.iter().copied().collect();
    assert_eq!(unique.len(), seen.len(), "a run was listed twice");
    assert!(original.is_subset(&unique), "a run was skipped");
}

async fn every_filter_narrows_the_listing(store: Store) {
    let now = t0();
    let mut runs = Vec::new();
    for i in 0..40 {
        let mut r = new_run(now + ms(i));
        r.spec.tenant = Some(if i % 2 == 0 { "acme" } else { "zeta" }.into());
        r.spec.class = if i % 4 == 0 {
            Class::Background
        } else {
            Class::Live
        };
        r.spec.provider = if i < 10 { "p".into() } else { "sim".into() };
        runs.push(r);
    }
    store.enqueue(&runs).await.unwrap();
    let batch = batch_of(5, now + ms(100));
    store.create_batch(&batch).await.unwrap();
    let worker = WorkerId::new();
    let claimed = store
        .claim_due(worker, 3, now + ms(200), LEASE)
        .await
        .unwrap();
    let done = completion(claimed[0].id, 1, now + ms(201));
    store.mark_completed(worker, &[done]).await.unwrap();
    let count = async |filter: RunFilter| all_pages(&store, &filter, 7, async |_| {}).await.len();
    assert_eq!(count(RunFilter::default()).await, 45);
    let tenant = RunFilter {
        tenant: Some("acme".into()),
        ..RunFilter::default()
    };
    assert_eq!(count(tenant).await, 20);
    let background = RunFilter {
        class: Some(Class::Background),
        ..RunFilter::default()
    };
    assert_eq!(count(background).await, 10);
    let provider = RunFilter {
        provider: Some("p".into()),
        ..RunFilter::default()
    };
    assert_eq!(count(provider).await, 10);
    let in_batch = RunFilter {
        batch: Some(batch.id.text()),
        ..RunFilter::default()
    };
    assert_eq!(count(in_batch).await, 5);
    for (status, n) in [
        (Status::Completed, 1),
        (Status::Running, 2),
        (Status::Queued, 42),
    ] {
        let filter = RunFilter {
            status: Some(status),
            ..RunFilter::default()
        };
        assert_eq!(count(filter).await, n, "{status:?}");
    }
    let window = RunFilter {
        created_after: Some(now + ms(9)),
        created_before: Some(now + ms(20)),
        ..RunFilter::default()
    };
    assert_eq!(count(window).await, 10);
    let newest = store
        .list_runs(&RunFilter::default(), None, 1)
        .await
        .unwrap();
    assert_eq!(newest[0].created_at, now + ms(100), "newest first");
}

async fn batches_list_newest_first(store: Store) {
    let now = t0();
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut batch = batch_of(1, now + ms(i));
        batch.tenant = Some(if i < 3 { "acme" } else { "zeta" }.into());
        store.create_batch(&batch).await.unwrap();
        ids.push(batch.id);
    }
    let first = store
        .list_batches(&BatchFilter::default(), None, 2)
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|b| b.id).collect::<Vec<_>>(),
        [ids[4], ids[3]]
    );
    let after = PageAfter {
        created_at: first[1].created_at,
        id: first[1].id.0,
    };
    let rest = store
        .list_batches(&BatchFilter::default(), Some(after), 10)
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|b| b.id).collect::<Vec<_>>(),
        [ids[2], ids[1], ids[0]]
    );
    let acme = BatchFilter {
        tenant: Some("acme".into()),
        created_after: Some(now),
        ..BatchFilter::default()
    };
    let listed = store.list_batches(&acme, None, 10).await.unwrap();
    assert_eq!(
        listed.iter().map(|b| b.id).collect::<Vec<_>>(),
        [ids[2], ids[1]]
    );
}
