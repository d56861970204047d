//! Per-tenant state: the tokens completed runs report are added to their tenant's usage of
//! the UTC day they finished, in the statement that completes them (a lost lease adds
//! nothing), and a tenant's enqueue bucket lets its burst through and then refills at its
//! rate.

use std::time::Duration;

use sluice::run::WorkerId;
use sluice::store::{ModelUsage, Store, utc_day};

use super::{LEASE, completion, enqueue_one};
use crate::common::{ms, new_run, t0};

conformance!(
    completed_runs_add_their_tokens_to_their_tenants_day,
    an_enqueue_bucket_paces_its_tenant,
);

async fn completed_runs_add_their_tokens_to_their_tenants_day(store: Store) {
    let now = t0();
    let worker = WorkerId::new();
    let mut ids = Vec::new();
    for (tenant, model) in [
        (Some("team-a"), "sim-1"),
        (Some("team-a"), "sim-1"),
        (Some("team-a"), "sim-2"),
        (Some("team-b"), "sim-1"),
        (None, "sim-1"),
    ] {
        let mut run = new_run(now);
        run.spec.tenant = tenant.map(String::from);
        run.spec.model = Some(model.into());
        ids.push(enqueue_one(&store, run).await);
    }
    let claimed = store.claim_due(worker, 10, now, LEASE).await.unwrap();
    assert_eq!(claimed.len(), 5);
    // One completion carries a stale attempt number: its lease is not held, nothing counts.
    let mut done: Vec<_> = ids
        .iter()
        .map(|id| completion(*id, 1, now + ms(5)))
        .collect();
    done[1].attempt = 2;
    // The runs of one tenant and model add up, across batches.
    store.mark_completed(worker, &done).await.unwrap();
    store
        .mark_completed(worker, &[completion(ids[1], 1, now + ms(6))])
        .await
        .unwrap();
    let day = utc_day(now);
    let usage = store.tenant_usage("team-a", day).await.unwrap();
    let row = |model: &str, p, c| ModelUsage {
        provider: "sim".into(),
        model: model.into(),
        prompt_tokens: p,
        completion_tokens: c,
    };
    assert_eq!(usage, vec![row("sim-1", 6, 8), row("sim-2", 3, 4)]);
    assert_eq!(
        store.tenant_usage("team-b", day).await.unwrap(),
        vec![row("sim-1", 3, 4)]
    );
    assert!(
        store
            .tenant_usage("team-a", day + 1)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.tenant_usage("", day).await.unwrap().is_empty());
    // Nothing of team-a's is queued or running any more.
    let activity = store.tenant_activity().await.unwrap();
    assert!(
        activity.iter().all(|a| a.running == 0 && a.queued == 0),
        "{activity:?}"
    );
}

async fn an_enqueue_bucket_paces_its_tenant(store: Store) {
    let now = t0();
    for _ in 0..3 {
        let taken = store
            .take_enqueue_slot("team-a", 2.0, 3.0, now)
            .await
            .unwrap();
        assert_eq!(taken, Ok(()), "the burst goes through");
    }
    let refused = store
        .take_enqueue_slot("team-a", 2.0, 3.0, now)
        .await
        .unwrap();
    assert_eq!(refused, Err(Duration::from_millis(500)));
    assert_eq!(
        store
            .take_enqueue_slot("team-b", 2.0, 3.0, now)
            .await
            .unwrap(),
        Ok(()),
        "another tenant has its own bucket"
    );
    let later = store
        .take_enqueue_slot("team-a", 2.0, 3.0, now + ms(500))
        .await
        .unwrap();
    assert_eq!(
        later,
        Ok(()),
        "half a second refills one run at 2 per second"
    );
}
