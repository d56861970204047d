//! Shared test support: a fresh PostgreSQL database per test (on the server named by
//! `SLUICE_TEST_PG_URL`, which `scripts/test.sh` provides), temporary SQLite stores, and
//! run builders. PostgreSQL tests fail loudly when no server is configured: they never skip.
#![allow(dead_code)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use sluice::run::{Class, RunId};
use sluice::store::{NewRun, OpenOptions, Store};
use sqlx::Connection;

/// The PostgreSQL server URL for tests.
pub fn pg_server_url() -> String {
    std::env::var("SLUICE_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "SLUICE_TEST_PG_URL is not set: PostgreSQL tests need a server. \
             Run the suite with scripts/test.sh, which starts a throwaway PostgreSQL, \
             or set SLUICE_TEST_PG_URL=postgres://user@host:port/postgres"
        )
    })
}

/// Creates an empty database for one test and returns its URL.
pub async fn fresh_pg_database() -> String {
    let server = pg_server_url();
    let name = format!("sluice_test_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL at {server}: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    conn.close().await.ok();
    with_database(&server, &name)
}

/// `url` with its database name replaced.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

pub async fn pg_store() -> Store {
    let url = fresh_pg_database().await;
    Store::open(
        Some(&url),
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
        provider: "sim".into(),
        model: Some("sim-1".into()),
        request: chat("hello"),
        class: Class::Live,
        priority: 5,
        tenant: None,
        concurrency_key: None,
        session: None,
        batch: None,
        idempotency_key: None,
        metadata: None,
        stream: false,
        max_attempts: 5,
        timeout_ms: None,
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
