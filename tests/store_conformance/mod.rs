//! The store conformance suite: every test runs against SQLite and PostgreSQL, so both
//! backends keep one contract. Time is passed in explicitly (no sleeps). This module holds
//! the [`conformance!`] macro that declares each behaviour once per backend, and the
//! fixtures the behaviours share; the behaviours are grouped by concern below.

use std::time::Duration;

use sluice::run::{Class, ErrorKind, RunId, WorkerId};
use sluice::store::{
    Completion, Enqueued, EventKind, Failure, FailureNext, ProviderQuota, RunError, RunEvent, Store,
};

use crate::common::new_run;

const LEASE: Duration = Duration::from_secs(30);

/// Declares, for each named `async fn(Store)` of the calling module, a test on a fresh
/// SQLite store (`…::sqlite::name`) and one on a fresh PostgreSQL database
/// (`…::postgres::name`), which fails when no PostgreSQL is configured.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let (store, _dir) = crate::common::sqlite_store().await;
                    super::$name(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let store = crate::common::pg_store().await;
                    super::$name(store).await;
                }
            )*
        }
    };
}

mod batches;
mod breaker_open;
mod cluster;
mod dead_letters;
mod dispatch_order;
mod enqueue;
mod events;
mod fairness;
mod leases;
mod listing;
mod paused_batches;
mod quotas;
mod records;
mod retries;
mod tenant_usage;

fn completion(id: RunId, attempt: u32, at: chrono::DateTime<chrono::Utc>) -> Completion {
    Completion {
        id,
        attempt,
        finished_at: at,
        content: Some(format!("done {id}")),
        tool_calls: None,
        refusal: None,
        finish_reason: Some("stop".into()),
        raw_finish_reason: Some("end_turn".into()),
        prompt_tokens: Some(3),
        completion_tokens: Some(4),
    }
}

fn failure(
    id: RunId,
    attempt: u32,
    at: chrono::DateTime<chrono::Utc>,
    next: FailureNext,
) -> Failure {
    Failure {
        id,
        attempt,
        finished_at: at,
        error: RunError {
            kind: ErrorKind::Server,
            message: format!("upstream 503 on attempt {attempt}"),
            status: Some(503),
        },
        retry_after_ms: Some(250),
        next,
    }
}

async fn enqueue_one(store: &Store, run: sluice::store::NewRun) -> RunId {
    let out = store.enqueue(&[run]).await.expect("enqueue");
    match out[..] {
        [Enqueued::Created(id)] => id,
        ref other => panic!("expected one created run, got {other:?}"),
    }
}

async fn claim_ids(
    store: &Store,
    worker: WorkerId,
    limit: usize,
    at: chrono::DateTime<chrono::Utc>,
) -> Vec<RunId> {
    store
        .claim_due(worker, limit, at, LEASE)
        .await
        .expect("claim")
        .into_iter()
        .map(|c| c.id)
        .collect()
}

fn kinds(events: &[RunEvent]) -> Vec<(EventKind, Option<u32>)> {
    events.iter().map(|e| (e.kind, e.attempt)).collect()
}

fn data(e: &RunEvent) -> serde_json::Value {
    serde_json::from_str(e.data.as_ref().expect("event data").get()).unwrap()
}

fn run_of(
    now: chrono::DateTime<chrono::Utc>,
    class: Class,
    key: Option<&str>,
) -> sluice::store::NewRun {
    let mut r = new_run(now);
    r.spec.provider = "p".into();
    r.spec.class = class;
    r.spec.concurrency_key = key.map(str::to_string);
    r
}

fn caps(background_cap: u32) -> Vec<ProviderQuota> {
    vec![ProviderQuota {
        provider: "p".into(),
        max: 100,
        live_cap: None,
        background_cap,
    }]
}
