//! What the store reports: the attempt log, counts by class and status, and the saved
//! provider state.

use sluice::run::{Class, Status, WorkerId};
use sluice::store::{Completion, FailureNext, Store};

use super::{LEASE, completion, enqueue_one, failure};
use crate::common::{ms, new_run, t0};

conformance!(
    a_tool_call_answer_is_kept_whole,
    attempt_log_records_every_attempt,
    counts_by_class_and_status,
    provider_state_is_kept,
);

async fn a_tool_call_answer_is_kept_whole(store: Store) {
    let now = t0();
    let id = enqueue_one(&store, new_run(now)).await;
    let worker = WorkerId::new();
    store.claim_due(worker, 1, now, LEASE).await.unwrap();
    let calls = serde_json::json!([{"id": "call_1", "type": "function",
        "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]);
    let done = Completion {
        content: None,
        tool_calls: Some(calls.clone()),
        refusal: Some("not this part".into()),
        finish_reason: Some("tool_calls".into()),
        raw_finish_reason: Some("tool_use".into()),
        ..completion(id, 1, now + ms(10))
    };
    store.mark_completed(worker, &[done]).await.unwrap();
    let view = store.get_run(id).await.unwrap().unwrap();
    assert_eq!(view.status, Status::Completed);
    let out = view
        .output
        .expect("a completed run has an output, even without text");
    assert_eq!(out.content, None);
    assert_eq!(out.tool_calls, Some(calls));
    assert_eq!(out.refusal.as_deref(), Some("not this part"));
    assert_eq!(out.finish_reason.as_deref(), Some("tool_calls"));
    assert_eq!(out.raw_finish_reason.as_deref(), Some("tool_use"));
}

async fn attempt_log_records_every_attempt(store: Store) {
    let now = t0();
    let id = enqueue_one(&store, new_run(now)).await;
    let worker = WorkerId::new();
    store.claim_due(worker, 1, now, LEASE).await.unwrap();
    store
        .mark_failed(
            worker,
            &[failure(
                id,
                1,
                now + ms(100),
                FailureNext::RetryAt(now + ms(200)),
            )],
        )
        .await
        .unwrap();
    store
        .claim_due(worker, 1, now + ms(200), LEASE)
        .await
        .unwrap();
    store
        .mark_completed(worker, &[completion(id, 2, now + ms(300))])
        .await
        .unwrap();
    let view = store.get_run(id).await.unwrap().unwrap();
    assert_eq!(view.status, Status::Completed);
    assert_eq!(view.started_at, Some(now), "started_at is the first start");
    assert_eq!(view.finished_at, Some(now + ms(300)));
    assert!(view.error.is_none(), "a completed run carries no error");
    let out = view.output.expect("output");
    assert_eq!(out.content, Some(format!("done {id}")));
    assert_eq!(out.finish_reason.as_deref(), Some("stop"));
    assert_eq!(out.raw_finish_reason.as_deref(), Some("end_turn"));
    assert_eq!(
        (view.prompt_tokens, view.completion_tokens),
        (Some(3), Some(4))
    );
    let log = &view.attempt_log;
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].attempt, 1);
    assert_eq!(log[0].started_at, now);
    assert_eq!(log[0].finished_at, Some(now + ms(100)));
    assert_eq!(log[0].outcome.as_deref(), Some("server"));
    assert_eq!(log[0].status, Some(503));
    assert_eq!(log[0].retry_after_ms, Some(250));
    assert_eq!(
        log[0].error_message.as_deref(),
        Some("upstream 503 on attempt 1")
    );
    assert_eq!(log[1].attempt, 2);
    assert_eq!(log[1].started_at, now + ms(200));
    assert_eq!(log[1].outcome.as_deref(), Some("completed"));
}

async fn counts_by_class_and_status(store: Store) {
    let now = t0();
    let mut runs = Vec::new();
    for i in 0..5 {
        let mut r = new_run(now);
        r.spec.class = if i < 3 {
            Class::Live
        } else {
            Class::Background
        };
        runs.push(r);
    }
    store.enqueue(&runs).await.unwrap();
    store
        .claim_due(WorkerId::new(), 2, now, LEASE)
        .await
        .unwrap();
    let mut counts = store.count_active().await.unwrap();
    counts.sort_by_key(|(c, s, _)| (*c, s.as_str()));
    assert_eq!(
        counts,
        vec![
            (Class::Live, Status::Queued, 1),
            (Class::Live, Status::Running, 2),
            (Class::Background, Status::Queued, 2),
        ]
    );
}

async fn provider_state_is_kept(store: Store) {
    assert!(store.load_provider_state().await.unwrap().is_empty());
    let now = t0();
    store
        .save_provider_state(
            &[
                ("a".into(), r#"{"current_rpm":30.0}"#.into()),
                ("b".into(), r#"{"current_rpm":null}"#.into()),
            ],
            now,
        )
        .await
        .unwrap();
    store
        .save_provider_state(&[("a".into(), r#"{"current_rpm":45.5}"#.into())], now)
        .await
        .unwrap();
    let mut state = store.load_provider_state().await.unwrap();
    state.sort();
    let parsed: Vec<(String, serde_json::Value)> = state
        .into_iter()
        .map(|(p, v)| (p, serde_json::from_str(&v).unwrap()))
        .collect();
    assert_eq!(
        parsed,
        vec![
            ("a".to_string(), serde_json::json!({"current_rpm": 45.5})),
            ("b".to_string(), serde_json::json!({"current_rpm": null})),
        ]
    );
}
