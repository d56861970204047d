//! Durable storage of runs and their attempts. One interface, two backends:
//! PostgreSQL (production, many processes) and an embedded SQLite file (single node).
//!
//! The interface is batch-first: enqueue, claim, heartbeat, complete and fail each take a
//! slice, and a single-run call is a batch of one. Every state change is one transaction.
//! Time is passed in (`now`), never read here, so tests drive it.
//!
//! Every state change also appends its lifecycle events to the event log in the same
//! transaction; committed events reach live subscribers through the [`EventHub`] (directly
//! on SQLite, through the event pump on PostgreSQL so that other processes' events arrive
//! too). On PostgreSQL a process holds one LISTEN connection: it feeds the event pump and
//! the cross-process [`Notice`]s the dispatcher subscribes to ([`Store::notifications`]).
//!
//! Layout: `model` (the values that cross this boundary), `event_data` (the JSON stored
//! with events), `batch_model` / `batch_reads` / `batches` / `listing` (batches and
//! newest-first listings), `codec` (stored rows back into values, for both backends),
//! `reads` (the reads written once for both backends), `fair` (which waiting runs a claim
//! takes, for both backends), `cluster` (replicas and the leader's lease) with
//! `maintenance` (its calls and retention's), `dead_letters` (requeueing failed runs),
//! `tenant_usage` (per-tenant usage, activity and enqueue buckets), `hub`, `postgres`,
//! `sqlite`. Neither backend uses the other.

mod batch_model;
mod batch_reads;
mod cluster;
mod codec;
mod event_data;
mod fair;
mod hub;
mod model;
mod postgres;
mod reads;
mod sqlite;
mod tenant_usage;

pub use batch_model::{
    BatchCancelOutcome, BatchClosed, BatchCreated, BatchFilter, BatchId, BatchProgress,
    BatchToggle, BatchView, NewBatch, PageAfter, RunFilter, ToggleOutcome,
};
pub use cluster::{Leadership, Replica, ReplicaBeat};
pub use dead_letters::{DEAD_STATUSES, Requeue};
pub use event_data::*;
pub use hub::{Delta, EventHub, ToolCallDelta};
pub use model::*;
pub use postgres::{CANCEL_CHANNEL, PgStore, WAKE_CHANNEL};
pub use sqlite::SqliteStore;
pub use tenant_usage::{
    EnqueueBucket, ModelUsage, TenantActivity, day_date, next_utc_midnight, utc_day,
};

use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::broadcast;

use crate::run::{Class, RunId, Status, WorkerId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("stored row is inconsistent: {0}")]
    Corrupt(String),
    #[error("invalid store call: {0}")]
    Misuse(&'static str),
    #[error("cannot prepare the database file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Every sqlx error is classified on the way in, so a `?` anywhere in the store tells a
/// database outage (the API answers 503, callers retry) from a statement that failed.
impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        if is_connection_failure(&e) {
            StoreError::Unavailable(e)
        } else {
            StoreError::Database(e)
        }
    }
}

/// A migration that could not reach the database is an outage too, not a broken migration.
impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> StoreError {
        use sqlx::migrate::MigrateError;
        match e {
            MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _)
                if is_connection_failure(&e) =>
            {
                StoreError::Unavailable(e)
            }
            other => StoreError::Migrate(other),
        }
    }
}

/// Connection-level failures (the database is down or overloaded) as opposed to a
/// statement that failed on its own.
fn is_connection_failure(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed
    )
}

impl StoreError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// One of the two backends. An enum rather than a trait object: both backends are known,
/// calls are static, and the conformance suite runs every method on both.
#[derive(Clone)]
enum Backend {
    Postgres(PgStore),
    Sqlite(SqliteStore),
}

/// The store: a backend and the hub its committed events are published on.
#[derive(Clone)]
pub struct Store {
    backend: Backend,
    hub: EventHub,
    /// Cross-process notices heard on PostgreSQL; nothing is ever sent on SQLite.
    notices: broadcast::Sender<Notice>,
}

/// What another process (or this one, through the database) announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Runs may be due: a commit made some due, or notices may have been missed while the
    /// connection was down.
    RunsDue,
    /// A running run was cancelled; the process running its attempt aborts it.
    Cancelled(RunId),
}

/// Live-event buffer per subscriber; one that falls further behind resumes from the log.
const HUB_CAPACITY: usize = 4096;
/// Notices buffered per subscriber. The dispatcher takes each at once; one that still
/// falls behind looks for due runs itself.
const NOTICE_CAPACITY: usize = 4096;

macro_rules! delegate {
    ($self:ident, $store:ident => $call:expr) => {
        match &$self.backend {
            Backend::Postgres($store) => $call,
            Backend::Sqlite($store) => $call,
        }
    };
}

// After `delegate!`, which they use.
mod batches;
mod dead_letters;
mod listing;
mod maintenance;

impl Store {
    /// Opens the backend named by `url` (`postgres://…`), or the SQLite file at
    /// `sqlite_path` when there is no URL, and applies migrations.
    pub async fn open(
        url: Option<&str>,
        sqlite_path: &std::path::Path,
        options: &OpenOptions,
    ) -> Result<Store> {
        let backend = match url {
            Some(url) => Backend::Postgres(PgStore::connect(url, options).await?),
            None => Backend::Sqlite(SqliteStore::open(sqlite_path, options).await?),
        };
        let store = Store {
            backend,
            hub: EventHub::new(HUB_CAPACITY),
            notices: broadcast::channel(NOTICE_CAPACITY).0,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The same store, its live events and deltas timed by `clock` (the system clock
    /// otherwise). Meant right after [`Store::open`], before anyone subscribes.
    pub fn with_clock(self, clock: std::sync::Arc<dyn crate::clock::Clock>) -> Store {
        Store {
            hub: self.hub.with_clock(clock),
            ..self
        }
    }

    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Postgres(_) => "postgres",
            Backend::Sqlite(_) => "sqlite",
        }
    }

    /// Notices from other processes, heard while [`Store::pump_events`] runs. On SQLite
    /// (one process per file) nothing ever arrives.
    pub fn notifications(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }

    /// Live lifecycle events committed by this store (and, on PostgreSQL once
    /// [`Store::pump_events`] runs, by every process sharing the database).
    pub fn hub(&self) -> &EventHub {
        &self.hub
    }

    /// On SQLite a commit publishes its events directly; on PostgreSQL the event pump does,
    /// for this process's commits and everyone else's alike.
    fn published<T>(&self, (value, events): (T, Vec<RunEvent>)) -> T {
        if let Backend::Sqlite(_) = self.backend {
            self.hub.publish(events);
        }
        value
    }

    /// Until `stop` fires on PostgreSQL: holds the process's one LISTEN connection, feeds
    /// the hub from the event log and delivers [`Store::notifications`]. Returns at once on
    /// SQLite, where commits publish directly and there is nobody else to hear.
    pub async fn pump_events(&self, stop: tokio_util::sync::CancellationToken) {
        if let Backend::Postgres(pg) = &self.backend {
            pg.pump_events(self.hub.clone(), &self.notices, stop).await;
        }
    }

    /// The events of one run after `after` (an event id; 0 for all), in order.
    pub async fn events_for_run(&self, run: RunId, after: i64) -> Result<Vec<RunEvent>> {
        delegate!(self, s => s.reads().events_for_run(run, after).await)
    }

    /// Events of all runs after `after`, matching `filter`, oldest first, at most `limit`.
    pub async fn events_after(
        &self,
        after: i64,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<RunEvent>> {
        delegate!(self, s => s.reads().events_after(after, filter, limit).await)
    }

    /// The newest event id (0 when the log is empty).
    pub async fn last_event_id(&self) -> Result<i64> {
        delegate!(self, s => s.reads().last_event_id().await)
    }

    pub async fn migrate(&self) -> Result<()> {
        delegate!(self, s => s.migrate().await)
    }

    /// Inserts runs; an idempotency key already taken returns the existing run instead.
    /// The result has one entry per input, in input order.
    pub async fn enqueue(&self, runs: &[NewRun]) -> Result<Vec<Enqueued>> {
        Ok(self.enqueue_starting(runs, None, None).await?.0)
    }

    /// As [`Store::enqueue`], and starts the runs `start` flags where nothing is due ahead
    /// of them (see [`StartNow`]); also returns the ids of the runs it started. On
    /// PostgreSQL, other processes' producers are notified of the runs left queued when one
    /// is due by `notify_until` (always when `None`).
    pub async fn enqueue_starting(
        &self,
        runs: &[NewRun],
        start: Option<StartNow<'_>>,
        notify_until: Option<DateTime<Utc>>,
    ) -> Result<(Vec<Enqueued>, Vec<RunId>)> {
        if runs.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        if let Some(s) = &start
            && (s.runs.len() != runs.len()
                || runs
                    .iter()
                    .zip(s.runs)
                    .any(|(r, f)| *f && r.spec.class != Class::Live))
        {
            return Err(StoreError::Misuse(
                "start flags must match the runs, and flag live runs only",
            ));
        }
        let (enqueued, events) = delegate!(self, s => s.enqueue(runs, start, notify_until).await)?;
        let started = events
            .iter()
            .filter(|e| e.kind == EventKind::Started)
            .map(|e| e.run_id)
            .collect();
        Ok((self.published((enqueued, events)), started))
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
        let written = delegate!(self, s => s.claim_due(worker, limit, None, now, lease_until(now, lease)).await)?;
        Ok(self.published(written))
    }

    /// Like [`Store::claim_due`], but only runs of the providers listed, within each
    /// provider's quota and class caps and the key caps (runs of other providers are left
    /// alone). Live runs go first; a provider's background runs only while none of its live
    /// runs is due. Caps count in-flight runs of every process.
    pub async fn claim_due_within(
        &self,
        worker: WorkerId,
        limit: usize,
        quotas: &[ProviderQuota],
        key_caps: KeyCaps,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Vec<ClaimedRun>> {
        let bounds = ClaimBounds {
            quotas,
            key_caps,
            shares: &TenantShares::default(),
        };
        self.claim_due_shared(worker, limit, bounds, now, lease)
            .await
    }

    /// Like [`Store::claim_due_within`], with the tenants' weights and in-flight caps:
    /// within a provider, class and priority, claims rotate across tenants in proportion
    /// to their weights and within a tenant across its batches (see `store::fair`), on
    /// every process alike; a tenant at its cap starts nothing.
    pub async fn claim_due_shared(
        &self,
        worker: WorkerId,
        limit: usize,
        bounds: ClaimBounds<'_>,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Vec<ClaimedRun>> {
        if limit == 0 || bounds.quotas.iter().all(|q| q.max == 0) {
            return Ok(Vec::new());
        }
        let written = delegate!(self, s => s.claim_due(worker, limit, Some(bounds), now, lease_until(now, lease)).await)?;
        Ok(self.published(written))
    }

    /// Extends the leases `worker` holds on these runs; returns the runs whose lease it
    /// still held (the others were cancelled, rescued or ended meanwhile).
    pub async fn extend_leases(
        &self,
        worker: WorkerId,
        runs: &[RunId],
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Vec<RunId>> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        delegate!(self, s => s.extend_leases(worker, runs, lease_until(now, lease)).await)
    }

    /// Records successful attempts. A completion whose lease was lost (the run was
    /// rescued, cancelled or released meanwhile) is ignored; the ids applied are returned.
    /// The tokens each applied completion reports are added to its tenant's usage of the
    /// UTC day it finished, in the same transaction.
    pub async fn mark_completed(
        &self,
        worker: WorkerId,
        done: &[Completion],
    ) -> Result<Vec<RunId>> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let events = delegate!(self, s => s.mark_completed(worker, done).await)?;
        Ok(self.published((applied_runs(&events), events)))
    }

    /// Records failed attempts: each run goes back to `queued` at its retry time or ends
    /// with its final status, keeping the error. Lost leases are ignored as above.
    pub async fn mark_failed(&self, worker: WorkerId, failed: &[Failure]) -> Result<Vec<RunId>> {
        if failed.is_empty() {
            return Ok(Vec::new());
        }
        let events = delegate!(self, s => s.mark_failed(worker, failed).await)?;
        Ok(self.published((applied_runs(&events), events)))
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
        // Each run given back is queued again with one event.
        let events = delegate!(self, s => s.release(worker, runs, now).await)?;
        Ok(self.published((events.len() as u64, events)))
    }

    /// Cancels a queued or running run.
    pub async fn cancel(&self, id: RunId, now: DateTime<Utc>) -> Result<CancelOutcome> {
        let (was, events) = delegate!(self, s => s.cancel(id, now).await)?;
        let outcome = match was {
            None => CancelOutcome::NotFound,
            // No event: it had already ended, and nothing was written.
            Some(was) if events.is_empty() => CancelOutcome::AlreadyTerminal(was),
            Some(was) => CancelOutcome::Cancelled { was },
        };
        Ok(self.published((outcome, events)))
    }

    /// Runs whose lease expired (their worker died) go back to `queued`, or end `failed`
    /// when that was their last attempt. Returns what happened to each.
    pub async fn rescue_expired(
        &self,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(RunId, Status)>> {
        let written = delegate!(self, s => s.rescue_expired(now, limit).await)?;
        Ok(self.published(written))
    }

    /// Saves each provider's adaptive limiter state (JSON), replacing what was there.
    pub async fn save_provider_state(
        &self,
        states: &[(String, String)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        if states.is_empty() {
            return Ok(());
        }
        delegate!(self, s => s.save_provider_state(states, now).await)
    }

    /// Every provider's saved limiter state (JSON).
    pub async fn load_provider_state(&self) -> Result<Vec<(String, String)>> {
        delegate!(self, s => s.reads().load_provider_state().await)
    }

    /// Ends queued runs whose queue deadline passed before they ever started: live runs
    /// become `timed_out` (origin `queue_wait`), background runs `dropped` (reason `stale`).
    pub async fn expire_queued(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Expired>> {
        self.expire_queued_blaming(now, limit, &[]).await
    }

    /// [`Store::expire_queued`], where the runs of `open_breakers` (providers whose circuit
    /// breaker is open) carry error kind `breaker_open`: that is why they never started.
    pub async fn expire_queued_blaming(
        &self,
        now: DateTime<Utc>,
        limit: usize,
        open_breakers: &[String],
    ) -> Result<Vec<Expired>> {
        let written = delegate!(self, s => s.expire_queued(now, limit, open_breakers).await)?;
        Ok(self.published(written))
    }

    /// For admission control: live runs of `provider` due and waiting at `now`, and its
    /// background runs waiting (due or not).
    pub async fn provider_backlog(&self, provider: &str, now: DateTime<Utc>) -> Result<(i64, i64)> {
        delegate!(self, s => s.reads().provider_backlog(provider, now).await)
    }

    /// Background runs `session` enqueued under `key` since `since`, and the oldest one's
    /// time.
    pub async fn session_background_since(
        &self,
        session: &str,
        key: Option<&str>,
        since: DateTime<Utc>,
    ) -> Result<(i64, Option<DateTime<Utc>>)> {
        delegate!(self, s => s.reads().session_background_since(session, key, since).await)
    }

    /// The concurrency keys with the most runs queued or running, busiest first.
    pub async fn busiest_keys(&self, limit: usize) -> Result<Vec<KeyLoad>> {
        delegate!(self, s => s.reads().busiest_keys(limit).await)
    }

    /// Takes one run from `tenant`'s enqueue bucket (refilled at `rate` per second, holding
    /// at most `capacity`): `Ok(())`, or `Err(wait)` until one is there. On PostgreSQL the
    /// bucket is shared by every process; on SQLite it lives in this process.
    pub async fn take_enqueue_slot(
        &self,
        tenant: &str,
        rate: f64,
        capacity: f64,
        now: DateTime<Utc>,
    ) -> Result<std::result::Result<(), Duration>> {
        delegate!(self, s => s.take_enqueue_slot(tenant, rate, capacity, now).await)
    }

    /// The tokens `tenant`'s completed runs reported on `day` (see [`utc_day`]), by
    /// provider and model.
    pub async fn tenant_usage(&self, tenant: &str, day: i64) -> Result<Vec<ModelUsage>> {
        delegate!(self, s => s.reads().tenant_usage(tenant, day).await)
    }

    /// Runs queued and running now, by tenant.
    pub async fn tenant_activity(&self) -> Result<Vec<TenantActivity>> {
        delegate!(self, s => s.reads().tenant_activity().await)
    }

    /// The run holding an idempotency key (see [`NewRun::idem_key`]), if any.
    pub async fn find_idempotent(&self, run: &NewRun) -> Result<Option<RunId>> {
        match run.idem_key() {
            Some(key) => delegate!(self, s => s.reads().find_idempotent(&key).await),
            None => Ok(None),
        }
    }

    pub async fn get_run(&self, id: RunId) -> Result<Option<RunView>> {
        delegate!(self, s => s.reads().get_run(id).await)
    }

    /// Number of queued and running runs by class and status.
    pub async fn count_active(&self) -> Result<Vec<(Class, Status, i64)>> {
        delegate!(self, s => s.reads().count_active().await)
    }

    /// The earliest due time of a queued run, to sleep exactly until then.
    pub async fn next_due_at(&self) -> Result<Option<DateTime<Utc>>> {
        delegate!(self, s => s.reads().next_due_at().await)
    }

    /// A round trip to the database.
    pub async fn ping(&self) -> Result<Duration> {
        let started = std::time::Instant::now();
        delegate!(self, s => s.reads().ping().await)?;
        Ok(started.elapsed())
    }

    pub async fn close(&self) {
        delegate!(self, s => s.close().await)
    }
}

/// The runs a batch of events is about, once each, in order of first appearance.
fn applied_runs(events: &[RunEvent]) -> Vec<RunId> {
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    events
        .iter()
        .filter(|e| seen.insert(e.run_id))
        .map(|e| e.run_id)
        .collect()
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
