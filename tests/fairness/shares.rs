//! Shares of the starts while every group has a backlog: tenants weighted 3:1 split the
//! starts 3:1 (±10%), and within one tenant a 50-run batch interleaves with a 5,000-run
//! batch instead of waiting behind it.

use crate::common::TestServer;

use super::{Db, config, count, tenant_toml};

const SLOTS: usize = 8;
const WEIGHTED_BACKLOG: usize = 2_000;
/// Starts looked at while both tenants still have a backlog.
const SAMPLE: usize = 400;
const BIG_BATCH: usize = 5_000;
const SMALL_BATCH: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_weights_split_the_starts() {
    weights_split_the_starts(Db::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_weights_split_the_starts() {
    weights_split_the_starts(Db::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_small_batch_interleaves_with_a_big_one() {
    a_small_batch_interleaves_with_a_big_one(Db::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_small_batch_interleaves_with_a_big_one() {
    a_small_batch_interleaves_with_a_big_one(Db::postgres().await).await;
}

async fn weights_split_the_starts(db: Db) {
    db.fill("heavy", None, WEIGHTED_BACKLOG).await;
    db.fill("light", None, WEIGHTED_BACKLOG).await;
    let tenants = tenant_toml("heavy", 3, None, 'a') + &tenant_toml("light", 1, None, 'b');
    let server = TestServer::start(&config(&db.toml(), SLOTS, &tenants), &[]).await;
    let starts = db.starts_until(|s| s.len() >= SAMPLE).await;
    let sample = &starts[..SAMPLE];
    let (heavy, light) = (count(sample, "heavy"), count(sample, "light"));
    let ratio = heavy as f64 / light.max(1) as f64;
    assert!(
        (2.7..=3.3).contains(&ratio),
        "weights 3:1 split the first {SAMPLE} starts {heavy}:{light}"
    );
    server.stop().await;
}

async fn a_small_batch_interleaves_with_a_big_one(db: Db) {
    db.fill("a", Some("big"), BIG_BATCH).await;
    db.fill("a", Some("small"), SMALL_BATCH).await;
    let server = TestServer::start(&config(&db.toml(), SLOTS, ""), &[]).await;
    let in_small = |s: &[(String, String)]| s.iter().filter(|(_, b)| b == "small").count();
    let starts = db.starts_until(|s| in_small(s) == SMALL_BATCH).await;
    let last_small = starts
        .iter()
        .rposition(|(_, b)| b == "small")
        .expect("the small batch started")
        + 1;
    // Every other start, give or take a claim.
    let bound = 2 * SMALL_BATCH + SLOTS;
    assert!(
        last_small <= bound,
        "the small batch's last run was start {last_small}, beyond {bound}"
    );
    assert!(
        in_small(&starts[..SMALL_BATCH]) >= SMALL_BATCH / 2 - SLOTS,
        "the batches interleave from the start"
    );
    server.stop().await;
}
