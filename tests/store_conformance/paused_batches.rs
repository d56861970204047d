//! Paused batches: the claim skips queued runs whose batch is paused (every claim path:
//! plain, live-only and quota-aware), they start once it resumes, and a paused batch's
//! live runs do not hold a provider's background runs back.
//!
//! The batch rows are written with SQL of their own here, beside the store, as the pause
//! itself is another part's: these tests pin only what the claim does with the flag.

use sluice::run::{Class, RunId, WorkerId};
use sluice::store::{KeyCaps, NewRun, ProviderQuota, Store};

use super::{LEASE, caps, claim_ids, run_of};
use crate::common::{fresh_pg_database, new_run, t0};

/// A second connection to the store's database, for the `batches` rows.
enum BatchRows {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

impl BatchRows {
    /// Creates the batch, or sets its pause flag.
    async fn set_paused(&self, batch: &str, paused: bool) {
        match self {
            BatchRows::Postgres(pool) => sqlx::query(
                "INSERT INTO batches (id, run_count, created_at, paused) VALUES ($1, 0, now(), $2)
                 ON CONFLICT (id) DO UPDATE SET paused = EXCLUDED.paused",
            )
            .bind(batch)
            .bind(paused)
            .execute(pool)
            .await
            .map(drop),
            BatchRows::Sqlite(pool) => sqlx::query(
                "INSERT INTO batches (id, run_count, created_at, paused) VALUES (?, 0, 0, ?)
                 ON CONFLICT (id) DO UPDATE SET paused = excluded.paused",
            )
            .bind(batch)
            .bind(paused)
            .execute(pool)
            .await
            .map(drop),
        }
        .expect("write the batch row");
    }
}

mod sqlite {
    use super::*;

    async fn open() -> (Store, BatchRows, tempfile::TempDir) {
        let (store, dir) = crate::common::sqlite_store().await;
        let path = dir.path().join("nested").join("sluice.db");
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
            .await
            .expect("second SQLite connection");
        (store, BatchRows::Sqlite(pool), dir)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claims_skip_paused_batches() {
        let (store, rows, _dir) = open().await;
        super::claims_skip_paused_batches(store, rows).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn paused_live_runs_hold_no_background_back() {
        let (store, rows, _dir) = open().await;
        super::paused_live_runs_hold_no_background_back(store, rows).await;
    }
}

mod postgres {
    use super::*;

    async fn open() -> (Store, BatchRows) {
        let url = fresh_pg_database().await;
        let store = crate::common::store::open_pg(&url).await;
        let pool = sqlx::PgPool::connect(&url)
            .await
            .expect("second PostgreSQL connection");
        (store, BatchRows::Postgres(pool))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claims_skip_paused_batches() {
        let (store, rows) = open().await;
        super::claims_skip_paused_batches(store, rows).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn paused_live_runs_hold_no_background_back() {
        let (store, rows) = open().await;
        super::paused_live_runs_hold_no_background_back(store, rows).await;
    }
}

fn in_batch(mut run: NewRun, batch: &str) -> NewRun {
    run.batch = Some(batch.to_string());
    run
}

async fn claims_skip_paused_batches(store: Store, rows: BatchRows) {
    let now = t0();
    rows.set_paused("paused", true).await;
    rows.set_paused("running", false).await;
    let held: Vec<NewRun> = (0..3)
        .map(|_| in_batch(run_of(now, Class::Live, None), "paused"))
        .collect();
    let free = in_batch(run_of(now, Class::Live, None), "running");
    let loose = run_of(now, Class::Live, None);
    // A free-text batch with no row is never paused.
    let unlisted = in_batch(run_of(now, Class::Live, None), "no-row");
    let mut all = held.clone();
    all.extend([free.clone(), loose.clone(), unlisted.clone()]);
    store.enqueue(&all).await.unwrap();
    let worker = WorkerId::new();

    let live_only: Vec<RunId> = claimed(
        &store,
        worker,
        &[ProviderQuota::only("p", 100)],
        KeyCaps::default(),
    )
    .await;
    let mut expected = vec![free.id, loose.id, unlisted.id];
    expected.sort();
    let mut got = live_only;
    got.sort();
    assert_eq!(
        got, expected,
        "the live-only claim starts every run but the paused batch's"
    );
    let counting = claimed(
        &store,
        worker,
        &caps(100),
        KeyCaps {
            live: Some(5),
            background: None,
        },
    )
    .await;
    assert!(
        counting.is_empty(),
        "the counting claim skips the paused batch too: {counting:?}"
    );
    assert!(
        claim_ids(&store, worker, 10, now).await.is_empty(),
        "so does the plain claim"
    );

    rows.set_paused("paused", false).await;
    let mut resumed = claim_ids(&store, worker, 10, now).await;
    resumed.sort();
    let mut expected: Vec<RunId> = held.iter().map(|r| r.id).collect();
    expected.sort();
    assert_eq!(resumed, expected, "the batch's runs start once it resumes");
}

async fn paused_live_runs_hold_no_background_back(store: Store, rows: BatchRows) {
    let now = t0();
    rows.set_paused("paused", true).await;
    let live = in_batch(run_of(now, Class::Live, None), "paused");
    let background = run_of(now, Class::Background, None);
    store.enqueue(&[live, background.clone()]).await.unwrap();
    let got = claimed(&store, WorkerId::new(), &caps(1), KeyCaps::default()).await;
    assert_eq!(
        got,
        vec![background.id],
        "a paused batch's live run is not due work the background run waits for"
    );
    // The plain claim, for completeness: the other provider's run of a paused batch waits.
    let mut other = in_batch(new_run(now), "paused");
    other.spec.provider = "q".into();
    store.enqueue(&[other]).await.unwrap();
    assert!(claim_ids(&store, WorkerId::new(), 10, now).await.is_empty());
}

async fn claimed(
    store: &Store,
    worker: WorkerId,
    quotas: &[ProviderQuota],
    key_caps: KeyCaps,
) -> Vec<RunId> {
    store
        .claim_due_within(worker, 100, quotas, key_caps, t0(), LEASE)
        .await
        .expect("claim")
        .into_iter()
        .map(|c| c.id)
        .collect()
}
