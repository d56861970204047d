//! What an enqueue keeps: one run per idempotency key (scoped by tenant and batch, even
//! under concurrent duplicates) and the payloads verbatim.

use sluice::run::WorkerId;
use sluice::store::{Enqueued, Store};

use super::{LEASE, enqueue_one};
use crate::common::{ms, new_run, t0};

conformance!(
    concurrent_duplicate_enqueues_make_one_run,
    idempotency_keys_are_scoped_by_tenant_and_batch,
    payloads_round_trip_verbatim,
);

async fn concurrent_duplicate_enqueues_make_one_run(store: Store) {
    let now = t0();
    let calls = (0..32).map(|_| {
        let store = store.clone();
        let mut r = new_run(now);
        r.idempotency_key = Some("order-42".into());
        tokio::spawn(async move { store.enqueue(&[r]).await.expect("enqueue")[0] })
    });
    let results: Vec<Enqueued> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.expect("task"))
        .collect();
    let created = results
        .iter()
        .filter(|e| matches!(e, Enqueued::Created(_)))
        .count();
    assert_eq!(
        created, 1,
        "exactly one of 32 duplicates creates the run: {results:?}"
    );
    let first = results[0].id();
    assert!(
        results.iter().all(|e| e.id() == first),
        "all duplicates return the same run"
    );
    let counts = store.count_active().await.unwrap();
    let queued: i64 = counts.iter().map(|(_, _, n)| n).sum();
    assert_eq!(queued, 1, "one row stored");
}

async fn idempotency_keys_are_scoped_by_tenant_and_batch(store: Store) {
    let now = t0();
    let mut a = new_run(now);
    a.idempotency_key = Some("k".into());
    a.spec.tenant = Some("acme".into());
    let mut b = new_run(now);
    b.idempotency_key = Some("k".into());
    b.spec.tenant = Some("globex".into());
    // The same key twice inside one batch: the second answers with the first.
    let mut a2 = new_run(now);
    a2.idempotency_key = Some("k".into());
    a2.spec.tenant = Some("acme".into());
    let out = store.enqueue(&[a.clone(), b.clone(), a2]).await.unwrap();
    assert_eq!(out[0], Enqueued::Created(a.id));
    assert_eq!(
        out[1],
        Enqueued::Created(b.id),
        "other tenants may reuse a key"
    );
    assert_eq!(out[2], Enqueued::Existing(a.id));
    // And later, from another call.
    let mut a3 = new_run(now);
    a3.idempotency_key = Some("k".into());
    a3.spec.tenant = Some("acme".into());
    assert_eq!(
        store.enqueue(&[a3]).await.unwrap(),
        vec![Enqueued::Existing(a.id)]
    );
}

async fn payloads_round_trip_verbatim(store: Store) {
    let now = t0();
    let mut r = new_run(now);
    let request = r#"{"messages":[{"role":"user","content":"héllo \"quoted\""}],"max_tokens":7,"temperature":0.25}"#;
    r.request = serde_json::value::RawValue::from_string(request.into()).unwrap();
    r.metadata = Some(
        serde_json::value::RawValue::from_string(r#"{"trace":"abc","n":[1,2]}"#.into()).unwrap(),
    );
    r.spec.tenant = Some("acme".into());
    r.spec.concurrency_key = Some("style-9".into());
    r.session = Some("sess".into());
    r.batch = Some("b1".into());
    r.spec.stream = true;
    r.spec.timeout_ms = Some(1234);
    r.queue_deadline_at = Some(now + ms(20_000));
    let id = enqueue_one(&store, r).await;
    let view = store.get_run(id).await.unwrap().unwrap();
    let meta: serde_json::Value = serde_json::from_str(view.metadata.unwrap().get()).unwrap();
    assert_eq!(meta, serde_json::json!({"trace":"abc","n":[1,2]}));
    assert_eq!(view.spec.tenant.as_deref(), Some("acme"));
    assert_eq!(view.spec.concurrency_key.as_deref(), Some("style-9"));
    assert_eq!(view.session.as_deref(), Some("sess"));
    assert_eq!(view.batch.as_deref(), Some("b1"));
    assert!(view.spec.stream);
    assert_eq!(view.spec.timeout_ms, Some(1234));
    assert_eq!(view.queue_deadline_at, Some(now + ms(20_000)));
    assert_eq!(view.created_at, now);
    let claimed = store
        .claim_due(WorkerId::new(), 1, now, LEASE)
        .await
        .unwrap();
    let sent: serde_json::Value = serde_json::from_str(claimed[0].request.get()).unwrap();
    let expected: serde_json::Value = serde_json::from_str(request).unwrap();
    assert_eq!(
        sent, expected,
        "the provider receives the request as enqueued"
    );
    assert!(claimed[0].spec.stream);
    assert_eq!(claimed[0].spec.tenant.as_deref(), Some("acme"));
}
