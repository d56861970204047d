//! Durable storage of runs and their attempts. One interface, two backends:
//! PostgreSQL (production, many processes) and an embedded SQLite file (single node).
//!
//! The interface is batch-first: enqueue, claim, heartbeat, complete and fail each take a
//! slice, and a single-run call is a batch of one. Every state change is one transaction.
//! Time is passed in (`now`), never read here, so tests drive it.
//!
//! Layout: `model` (the rows that cross this boundary), `postgres`, `sqlite`.

mod model;
mod postgres;
mod sqlite;

pub use model::*;
pub use postgres::{PgStore, WAKE_CHANNEL};
pub use sqlite::SqliteStore;

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::run::{Class, RunId, Status, WorkerId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored row is inconsistent: {0}")]
    Corrupt(String),
    #[error("cannot prepare the database file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl StoreError {
    /// Connection-level failures (the database is down or overloaded) as opposed to a
    /// statement that failed on its own.
    pub fn from_sqlx(e: sqlx::Error) -> StoreError {
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e),
            other => StoreError::Database(other),
        }
    }

    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The store, one of the two backends. An enum rather than a trait object: both backends
/// are known, calls are static, and the conformance suite runs every method on both.
#[derive(Clone)]
pub enum Store {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

macro_rules! delegate {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            Store::Postgres($store) => $call,
            Store::Sqlite($store) => $call,
        }
    };
}

impl Store {
    /// Opens the backend named by `url` (`postgres://…`), or the SQLite file at
    /// `sqlite_path` when there is no URL, and applies migrations.
    pub async fn open(
        url: Option<&str>,
        sqlite_path: &std::path::Path,
        options: &OpenOptions,
    ) -> Result<Store> {
        let store = match url {
            Some(url) => Store::Postgres(PgStore::connect(url, options).await?),
            None => Store::Sqlite(SqliteStore::open(sqlite_path, options).await?),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }

    pub async fn migrate(&self) -> Result<()> {
        delegate!(self, s => s.migrate().await)
    }

    /// Inserts runs; an idempotency key already taken returns the existing run instead.
    /// The result has one entry per input, in input order.
    pub async fn enqueue(&self, runs: &[NewRun]) -> Result<Vec<Enqueued>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        delegate!(self, s => s.enqueue(runs).await)
    }

    /// Claims up to `limit` due runs in dispatch order (live first, then priority, then due
    /// time), marks them running under `worker`'s lease and opens an attempt for each.
    pub async fn claim_due(
        &self,
        worker: WorkerId,
        limit: usize,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Vec<ClaimedRun>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        delegate!(self, s => s.claim_due(worker, limit, now, lease_until(now, lease)).await)
    }

    /// Extends the leases `worker` holds on these runs; returns how many were still held.
    pub async fn extend_leases(
        &self,
        worker: WorkerId,
        runs: &[RunId],
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<u64> {
        if runs.is_empty() {
            return Ok(0);
        }
        delegate!(self, s => s.extend_leases(worker, runs, lease_until(now, lease)).await)
    }

    /// Records successful attempts. A completion whose lease was lost (the run was
    /// rescued, cancelled or released meanwhile) is ignored; the ids applied are returned.
    pub async fn mark_completed(
        &self,
        worker: WorkerId,
        done: &[Completion],
    ) -> Result<Vec<RunId>> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        delegate!(self, s => s.mark_completed(worker, done).await)
    }

    /// Records failed attempts: each run goes back to `queued` at its retry time or ends
    /// with its final status, keeping the error. Lost leases are ignored as above.
    pub async fn mark_failed(&self, worker: WorkerId, failed: &[Failure]) -> Result<Vec<RunId>> {
        if failed.is_empty() {
            return Ok(Vec::new());
        }
        delegate!(self, s => s.mark_failed(worker, failed).await)
    }

    /// Gives unfinished attempts back (graceful shutdown): the runs return to `queued`,
    /// due now, and the interrupted attempt does not count against `max_attempts`.
    pub async fn release(
        &self,
        worker: WorkerId,
        runs: &[(RunId, u32)],
        now: DateTime<Utc>,
    ) -> Result<u64> {
        if runs.is_empty() {
            return Ok(0);
        }
        delegate!(self, s => s.release(worker, runs, now).await)
    }

    /// Cancels a queued or running run.
    pub async fn cancel(&self, id: RunId, now: DateTime<Utc>) -> Result<CancelOutcome> {
        delegate!(self, s => s.cancel(id, now).await)
    }

    /// Runs whose lease expired (their worker died) go back to `queued`, or end `failed`
    /// when that was their last attempt. Returns what happened to each.
    pub async fn rescue_expired(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(RunId, Status)>> {
        delegate!(self, s => s.rescue_expired(now, limit).await)
    }

    pub async fn get_run(&self, id: RunId) -> Result<Option<RunView>> {
        delegate!(self, s => s.get_run(id).await)
    }

    /// Number of queued and running runs by class and status.
    pub async fn count_active(&self) -> Result<Vec<(Class, Status, i64)>> {
        delegate!(self, s => s.count_active().await)
    }

    /// The earliest due time of a queued run, to sleep exactly until then.
    pub async fn next_due_at(&self) -> Result<Option<DateTime<Utc>>> {
        delegate!(self, s => s.next_due_at().await)
    }

    /// A round trip to the database.
    pub async fn ping(&self) -> Result<Duration> {
        let started = std::time::Instant::now();
        delegate!(self, s => s.ping().await)?;
        Ok(started.elapsed())
    }

    pub async fn close(&self) {
        delegate!(self, s => s.close().await)
    }
}

fn lease_until(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX)
}

/// Pool settings common to both backends.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}
