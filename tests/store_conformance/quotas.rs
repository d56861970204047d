//! Quotas and caps: per-provider quotas, background waiting for live work and its cap,
//! and per-key caps on runs in flight.

use sluice::run::{Class, WorkerId};
use sluice::store::{ClaimedRun, KeyCaps, ProviderQuota, Store};

use super::{LEASE, caps, completion, run_of};
use crate::common::{ms, new_run, t0};

conformance!(
    quotas_bound_each_provider,
    background_waits_for_live_and_its_cap,
    key_caps_bound_runs_in_flight,
);

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
        r.spec.provider = provider.into();
        r.spec.class = class;
        r.spec.priority = priority;
        runs.push(r);
    }
    store.enqueue(&runs).await.unwrap();
    let quota = |provider: &str, max: usize| ProviderQuota::only(provider, max);
    let worker = WorkerId::new();
    let got = claim_within(&store, worker, 10, &[quota("a", 2), quota("b", 0)], now).await;
    let picked = providers_and_priorities(&got);
    assert_eq!(
        picked,
        vec![("a".to_string(), 5), ("a".to_string(), 6)],
        "a's quota of 2 takes its two best; b (quota 0) and c (not listed) wait"
    );
    let got = claim_within(
        &store,
        worker,
        2,
        &[quota("a", 10), quota("b", 10), quota("c", 10)],
        now,
    )
    .await;
    let picked = providers_and_priorities(&got);
    assert_eq!(
        picked,
        vec![("b".to_string(), 1), ("c".to_string(), 1)],
        "the overall limit takes the best across providers in dispatch order"
    );
    assert!(
        claim_within(&store, worker, 10, &[quota("a", 0)], now)
            .await
            .is_empty()
    );
    let rest = claim_within(&store, worker, 10, &[quota("a", 10), quota("b", 10)], now).await;
    let picked: Vec<(String, Class)> = rest
        .iter()
        .map(|c| (c.spec.provider.clone(), c.spec.class))
        .collect();
    assert_eq!(
        picked,
        vec![
            ("b".to_string(), Class::Live),
            ("a".to_string(), Class::Background)
        ]
    );
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
        got.iter().map(|c| c.spec.class).collect::<Vec<_>>(),
        vec![Class::Live],
        "no background run while a live run of the provider is due"
    );
    let got = store
        .claim_due_within(worker, 10, &caps(1), KeyCaps::default(), now, LEASE)
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "one background run: the cap is 1");
    assert_eq!(got[0].spec.class, Class::Background);
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
        got.iter().map(|c| c.spec.class).collect::<Vec<_>>(),
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
        got.iter().map(|c| c.spec.class).collect::<Vec<_>>(),
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
    assert!(got.iter().all(|c| c.spec.class == Class::Live));
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
        .map(|c| c.spec.concurrency_key.clone().unwrap())
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

/// Claims at most `limit` due runs under `quotas`, with no key caps.
async fn claim_within(
    store: &Store,
    worker: WorkerId,
    limit: usize,
    quotas: &[ProviderQuota],
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<ClaimedRun> {
    store
        .claim_due_within(worker, limit, quotas, KeyCaps::default(), now, LEASE)
        .await
        .unwrap()
}

fn providers_and_priorities(claimed: &[ClaimedRun]) -> Vec<(String, i16)> {
    claimed
        .iter()
        .map(|c| (c.spec.provider.clone(), c.spec.priority))
        .collect()
}
