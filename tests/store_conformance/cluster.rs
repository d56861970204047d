//! The cluster records: the maintenance leader's lease (one holder at a time, taken over
//! only once expired, released on resign) and the replicas' beats; and retention, which
//! deletes only finished runs past their age, in bounded batches, with their events.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sluice::run::{RunId, Status, WorkerId};
use sluice::store::{ReplicaBeat, Store};

use super::{claim_ids, completion, enqueue_one};
use crate::common::{new_run, t0};

conformance!(
    one_leader_until_its_lease_expires,
    resigning_hands_the_lease_on_at_once,
    replicas_are_listed_while_they_beat,
    retention_deletes_only_what_is_old_enough,
);

const LEADER_LEASE: Duration = Duration::from_secs(15);

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

fn beat_of(id: WorkerId, in_flight: u32) -> ReplicaBeat {
    ReplicaBeat {
        id,
        version: "test".into(),
        started_at: t0(),
        slots: 8,
        in_flight,
    }
}

async fn leader_after_beat(store: &Store, id: WorkerId, at: DateTime<Utc>) -> (WorkerId, i64) {
    let l = store
        .beat_cluster(&beat_of(id, 0), at, LEADER_LEASE)
        .await
        .unwrap()
        .expect("someone leads after a beat");
    (l.holder, l.term)
}

async fn one_leader_until_its_lease_expires(store: Store) {
    let (a, b) = (WorkerId::new(), WorkerId::new());
    assert_eq!(leader_after_beat(&store, a, t0()).await, (a, 1));
    assert_eq!(leader_after_beat(&store, b, t0() + secs(1)).await, (a, 1));
    // a renews: b still cannot take it after the first lease would have ended.
    assert_eq!(leader_after_beat(&store, a, t0() + secs(5)).await, (a, 1));
    assert_eq!(leader_after_beat(&store, b, t0() + secs(16)).await, (a, 1));
    // a goes silent: once its renewed lease (until 20 s) expires, b takes over.
    assert_eq!(leader_after_beat(&store, b, t0() + secs(20)).await, (a, 1));
    assert_eq!(leader_after_beat(&store, b, t0() + secs(21)).await, (b, 2));
    // a comes back: b's lease holds.
    assert_eq!(leader_after_beat(&store, a, t0() + secs(22)).await, (b, 2));
    let l = store.leader().await.unwrap().unwrap();
    assert_eq!(l.since, t0() + secs(21));
    assert_eq!(l.expires_at, t0() + secs(21) + secs(15));
}

async fn resigning_hands_the_lease_on_at_once(store: Store) {
    let (a, b) = (WorkerId::new(), WorkerId::new());
    assert_eq!(leader_after_beat(&store, a, t0()).await, (a, 1));
    // Resigning without holding the lease changes nothing.
    store.resign(b).await.unwrap();
    assert_eq!(leader_after_beat(&store, a, t0() + secs(1)).await, (a, 1));
    store.resign(a).await.unwrap();
    assert_eq!(store.leader().await.unwrap(), None);
    let (holder, _) = leader_after_beat(&store, b, t0() + secs(2)).await;
    assert_eq!(
        holder, b,
        "b leads at its next beat, long before a's lease would end"
    );
}

async fn replicas_are_listed_while_they_beat(store: Store) {
    let (a, b) = (WorkerId::new(), WorkerId::new());
    store
        .beat_cluster(&beat_of(a, 3), t0(), LEADER_LEASE)
        .await
        .unwrap();
    store
        .beat_cluster(&beat_of(b, 5), t0() + secs(10), LEADER_LEASE)
        .await
        .unwrap();
    let all = store.replicas(t0() - secs(1)).await.unwrap();
    assert_eq!(all.len(), 2);
    let of_b = all.iter().find(|r| r.id == b).unwrap();
    assert_eq!((of_b.slots, of_b.in_flight), (8, 5));
    assert_eq!(of_b.heartbeat_at, t0() + secs(10));
    // Only b beat since 5 s.
    let recent: Vec<WorkerId> = store
        .replicas(t0() + secs(5))
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(recent, [b]);
    assert_eq!(store.forget_replicas(t0() + secs(5)).await.unwrap(), 1);
    store.resign(b).await.unwrap();
    assert!(store.replicas(t0() - secs(1)).await.unwrap().is_empty());
}

/// Runs completed at `at`, one per entry.
async fn completed_at(store: &Store, n: usize, at: DateTime<Utc>) -> Vec<RunId> {
    let worker = WorkerId::new();
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(enqueue_one(store, new_run(at)).await);
    }
    let claimed = claim_ids(store, worker, n, at).await;
    assert_eq!(claimed.len(), n);
    let done: Vec<_> = claimed.iter().map(|id| completion(*id, 1, at)).collect();
    store.mark_completed(worker, &done).await.unwrap();
    ids
}

async fn retention_deletes_only_what_is_old_enough(store: Store) {
    let old = t0() - chrono::Duration::days(10);
    let old_runs = completed_at(&store, 5, old).await;
    let recent = completed_at(&store, 2, t0() - chrono::Duration::days(1)).await;
    let queued = enqueue_one(&store, new_run(old)).await;
    let cutoff = t0() - chrono::Duration::days(7);

    // Bounded batches: 2, 2, then the last one; failed runs are not completed runs.
    let mut deleted = Vec::new();
    for (status, limit) in [
        (Status::Failed, 10),
        (Status::Completed, 2),
        (Status::Completed, 2),
        (Status::Completed, 2),
        (Status::Completed, 2),
    ] {
        deleted.push(store.delete_finished(status, cutoff, limit).await.unwrap());
    }
    assert_eq!(deleted, [0, 2, 2, 1, 0]);

    for id in &old_runs {
        assert!(store.get_run(*id).await.unwrap().is_none(), "{id} is gone");
        assert!(
            store.events_for_run(*id, 0).await.unwrap().is_empty(),
            "the events of {id} went with it"
        );
    }
    for id in recent.iter().chain([&queued]) {
        assert!(store.get_run(*id).await.unwrap().is_some(), "{id} is kept");
        assert!(!store.events_for_run(*id, 0).await.unwrap().is_empty());
    }
    let kept = store.get_run(recent[0]).await.unwrap().unwrap();
    assert_eq!(kept.attempt_log.len(), 1, "attempts of kept runs stay");
    assert!(
        store
            .delete_finished(Status::Queued, t0(), 10)
            .await
            .is_err(),
        "retention refuses to delete unfinished runs"
    );
}
