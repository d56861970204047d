//! Fair dispatch: within a provider, class and priority, claims rotate across tenants by
//! their weights and within a tenant across its batches, even one run at a time; a
//! tenant's cap on runs in flight holds whichever worker claims.

use std::collections::HashMap;

use sluice::run::{Class, WorkerId};
use sluice::store::{ClaimBounds, ClaimedRun, KeyCaps, NewRun, ProviderQuota, Store, TenantShares};

use super::{LEASE, completion};
use crate::common::{new_run, t0};

conformance!(
    claims_of_one_rotate_across_tenants,
    weights_split_the_starts,
    batches_of_one_tenant_interleave,
    a_tenant_cap_holds_across_workers,
    priority_still_goes_first,
);

fn runs_of(tenant: &str, batch: Option<&str>, n: usize) -> Vec<NewRun> {
    (0..n)
        .map(|i| {
            let mut r = new_run(t0() - chrono::Duration::milliseconds(10_000 - i as i64));
            r.spec.tenant = Some(tenant.to_string());
            r.batch = batch.map(str::to_string);
            r
        })
        .collect()
}

async fn claim(
    store: &Store,
    worker: WorkerId,
    n: usize,
    shares: &TenantShares,
) -> Vec<ClaimedRun> {
    let quotas = [ProviderQuota::only("sim", n)];
    let bounds = ClaimBounds {
        quotas: &quotas,
        key_caps: KeyCaps::default(),
        shares,
    };
    store
        .claim_due_shared(worker, n, bounds, t0(), LEASE)
        .await
        .expect("claim")
}

fn tally<'a>(claimed: impl IntoIterator<Item = &'a ClaimedRun>) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for c in claimed {
        *counts
            .entry(c.spec.tenant.clone().unwrap_or_default())
            .or_insert(0) += 1;
    }
    counts
}

async fn claims_of_one_rotate_across_tenants(store: Store) {
    // a's backlog is older than every run of b's: ranking by age alone would start only a's.
    store.enqueue(&runs_of("a", None, 300)).await.unwrap();
    let mut late = runs_of("b", None, 10);
    for r in &mut late {
        r.due_at = t0();
    }
    store.enqueue(&late).await.unwrap();
    let shares = TenantShares::default();
    let worker = WorkerId::new();
    let mut started = Vec::new();
    for _ in 0..20 {
        started.extend(claim(&store, worker, 1, &shares).await);
    }
    assert_eq!(
        tally(&started).get("b"),
        Some(&10),
        "b's ten runs start within twenty claims of one run"
    );
}

async fn weights_split_the_starts(store: Store) {
    store.enqueue(&runs_of("heavy", None, 400)).await.unwrap();
    store.enqueue(&runs_of("light", None, 400)).await.unwrap();
    let shares = TenantShares {
        weights: HashMap::from([("heavy".to_string(), 3)]),
        caps: HashMap::new(),
    };
    let worker = WorkerId::new();
    let mut started = Vec::new();
    for _ in 0..40 {
        started.extend(claim(&store, worker, 4, &shares).await);
    }
    let counts = tally(&started);
    assert_eq!(
        (counts["heavy"], counts["light"]),
        (120, 40),
        "starts split 3:1"
    );
}

async fn batches_of_one_tenant_interleave(store: Store) {
    store
        .enqueue(&runs_of("a", Some("big"), 500))
        .await
        .unwrap();
    store
        .enqueue(&runs_of("a", Some("small"), 50))
        .await
        .unwrap();
    let worker = WorkerId::new();
    let mut small_done_at = None;
    let mut started = 0;
    let mut small = 0;
    while small_done_at.is_none() && started < 550 {
        for c in claim(&store, worker, 10, &TenantShares::default()).await {
            started += 1;
            small += usize::from(c.spec.tenant.is_some() && is_batch(&store, &c, "small").await);
        }
        if small == 50 {
            small_done_at = Some(started);
        }
    }
    assert_eq!(
        small_done_at,
        Some(100),
        "the small batch gets every other start"
    );
}

async fn is_batch(store: &Store, run: &ClaimedRun, batch: &str) -> bool {
    let view = store.get_run(run.id).await.unwrap().expect("the run");
    view.batch.as_deref() == Some(batch)
}

async fn a_tenant_cap_holds_across_workers(store: Store) {
    store.enqueue(&runs_of("capped", None, 50)).await.unwrap();
    store.enqueue(&runs_of("free", None, 50)).await.unwrap();
    let shares = TenantShares {
        weights: HashMap::new(),
        caps: HashMap::from([("capped".to_string(), 3)]),
    };
    let (one, two) = (WorkerId::new(), WorkerId::new());
    let first = claim(&store, one, 4, &shares).await;
    let second = claim(&store, two, 10, &shares).await;
    let counts = tally(first.iter().chain(&second));
    assert_eq!(
        counts.get("capped"),
        Some(&3),
        "three in flight across both workers"
    );
    // One finishes: one more may start, whichever worker claims.
    let done = first
        .iter()
        .find(|c| c.spec.tenant.as_deref() == Some("capped"))
        .expect("a capped run");
    store
        .mark_completed(one, &[completion(done.id, done.attempt, t0())])
        .await
        .unwrap();
    let third = claim(&store, two, 10, &shares).await;
    assert_eq!(tally(&third).get("capped"), Some(&1));
}

async fn priority_still_goes_first(store: Store) {
    store.enqueue(&runs_of("a", None, 20)).await.unwrap();
    let mut urgent = runs_of("b", None, 5);
    for r in &mut urgent {
        r.spec.priority = 1;
    }
    store.enqueue(&urgent).await.unwrap();
    let mut background = runs_of("c", None, 5);
    for r in &mut background {
        r.spec.class = Class::Background;
    }
    store.enqueue(&background).await.unwrap();
    let got = claim(&store, WorkerId::new(), 5, &TenantShares::default()).await;
    assert_eq!(
        tally(&got).get("b"),
        Some(&5),
        "b's urgent runs go before the rotation"
    );
}
