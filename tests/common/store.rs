//! Store fixtures: a store on a fresh PostgreSQL database or in a temporary SQLite file,
//! and run builders at a fixed, millisecond-aligned time.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use sluice::run::{Class, RunId};
use sluice::store::{NewRun, OpenOptions, RunSpec, Store};

use super::pg::fresh_pg_database;

pub async fn pg_store() -> Store {
    open_pg(&fresh_pg_database().await).await
}

/// A store on the PostgreSQL database at `url`.
pub async fn open_pg(url: &str) -> Store {
    Store::open(
        Some(url),
        std::path::Path::new("unused"),
        &OpenOptions {
            max_connections: 20,
            acquire_timeout: Duration::from_secs(10),
        },
    )
    .await
    .expect("open PostgreSQL store")
}

/// A SQLite store in a temporary folder; keep the guard alive for the test's duration.
pub async fn sqlite_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(
        None,
        &dir.path().join("nested").join("sluice.db"),
        &OpenOptions::default(),
    )
    .await
    .expect("open SQLite store");
    (store, dir)
}

pub fn chat(text: &str) -> Box<RawValue> {
    RawValue::from_string(format!(
        r#"{{"messages":[{{"role":"user","content":{}}}]}}"#,
        serde_json::to_string(text).unwrap()
    ))
    .unwrap()
}

/// A run due at `now` with defaults the tests adjust.
pub fn new_run(now: DateTime<Utc>) -> NewRun {
    NewRun {
        id: RunId::new(),
        spec: RunSpec {
            provider: "sim".into(),
            model: Some("sim-1".into()),
            class: Class::Live,
            priority: 5,
            tenant: None,
            concurrency_key: None,
            stream: false,
            timeout_ms: None,
        },
        request: chat("hello"),
        session: None,
        batch: None,
        idempotency_key: None,
        metadata: None,
        max_attempts: 5,
        queue_deadline_at: None,
        due_at: now,
        created_at: now,
    }
}

/// A fixed, millisecond-aligned starting time for store tests (both backends keep
/// at least millisecond precision).
pub fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2030-01-01T00:00:00.000Z")
        .unwrap()
        .with_timezone(&Utc)
}

pub fn ms(n: i64) -> chrono::Duration {
    chrono::Duration::milliseconds(n)
}
