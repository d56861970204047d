//! The PostgreSQL backend: claims with `FOR UPDATE SKIP LOCKED`, batches through
//! `unnest` arrays, writes each state change and its events in one statement, and wakes
//! other processes' producers with `NOTIFY`.
//!
//! Layout: this file (connection, claim, heartbeat, provider state), `fair_claim` (the
//! claim when tenants or batches take turns), `enqueue` (the enqueue statement), `finish`
//! (ending attempts and runs), `events` (the event pump), `listen` (the LISTEN
//! connection), `retention` (deleting old finished runs), `tenants` (enqueue buckets).
//! Reads are the store's `reads`, rows are decoded by
//! its `codec`.

mod batches;
mod enqueue;
mod events;
mod fair_claim;
mod finish;
mod listen;
mod requeue;
mod retention;
mod tenants;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions, PgRow, Postgres};
use sqlx::{FromRow, Row, postgres::PgConnectOptions};
use std::str::FromStr;
use std::sync::LazyLock;
use uuid::Uuid;

use super::cluster::Cluster;
use super::codec::{ClaimedRecord, EventRecord};
use super::event_data::*;
use super::model::*;
use super::reads::Reads;
use super::{OpenOptions, Result};
use crate::run::{Class, RunId, Status, TimeoutOrigin, WorkerId};

/// The channel a commit that makes runs due is announced on.
pub const WAKE_CHANNEL: &str = "sluice_runs_due";
/// The channel a cancelled running run's id is announced on, so the process running its
/// attempt aborts the provider call.
pub const CANCEL_CHANNEL: &str = "sluice_run_cancelled";
/// The channel the `run_events` trigger notifies on.
const EVENTS_CHANNEL: &str = "sluice_events";

/// The advisory lock claims that count in-flight runs take turns on.
const CLAIM_LOCK: i64 = 0x5_11CE_0001;

/// A run that may start now: queued, due, not past its queue deadline unless it has
/// started before (a run past it is never started: the sweeper ends it), and not of a
/// paused batch (it waits in the queue until the batch resumes). `c` is the run.
const STARTABLE: &str = "c.status = 'queued' AND c.due_at <= $1
      AND (c.queue_deadline_at IS NULL OR c.queue_deadline_at > $1 OR c.started_at IS NOT NULL)
      AND (c.batch IS NULL
           OR NOT EXISTS (SELECT 1 FROM batches pb WHERE pb.id = c.batch AND pb.paused))";
/// The same paused-batch condition for the live runs a background claim waits for: a
/// paused batch's live runs hold nobody back.
const LIVE_NOT_PAUSED: &str = "(l.batch IS NULL
           OR NOT EXISTS (SELECT 1 FROM batches pb WHERE pb.id = l.batch AND pb.paused))";

/// The startable runs of `class` of the provider `q.provider`, in dispatch order,
/// locked: at most `limit`, and only those meeting `extra` (further `AND` conditions).
fn provider_candidates(class: Class, extra: &str, limit: &str) -> String {
    let class = class.rank();
    format!(
        "SELECT c.id, c.class, c.priority, c.due_at, c.concurrency_key FROM runs c
        WHERE {STARTABLE} AND c.provider = q.provider AND c.class = {class} {extra}
        ORDER BY c.priority, c.due_at
        LIMIT {limit}
        FOR UPDATE SKIP LOCKED"
    )
}

/// The condition that a run's concurrency key is below `cap` (a parameter, none for no
/// cap) runs of `class` in flight.
fn key_below_cap(class: Class, cap: &str) -> String {
    let class = class.rank();
    format!(
        "AND (c.concurrency_key IS NULL OR {cap}::int8 IS NULL
           OR (SELECT count(*) FROM runs k WHERE k.concurrency_key = c.concurrency_key
               AND k.class = {class} AND k.status = 'running') < {cap})"
    )
}

/// The quota-aware pick (parameters: $1 now, $2 limit, $5 providers, $6 how many may start,
/// $7 live caps, $8 background caps, $9 live key cap, $10 background key cap). Live runs
/// first; a provider's background runs only while none of its live runs is due; a key at
/// its cap is skipped, and candidates sharing a key are ranked so one batch cannot overshoot.
fn quota_pick() -> String {
    let live = provider_candidates(
        Class::Live,
        &key_below_cap(Class::Live, "$9"),
        "GREATEST(0, CASE WHEN q.live_cap IS NULL THEN q.quota
            ELSE LEAST(q.quota, q.live_cap - (
                SELECT count(*) FROM runs l WHERE l.provider = q.provider AND l.class = 0
                  AND l.status = 'running')) END)",
    );
    let background = provider_candidates(
        Class::Background,
        &format!(
            "AND NOT EXISTS (
                SELECT 1 FROM runs l WHERE l.provider = q.provider AND l.class = 0
                  AND l.status = 'queued' AND l.due_at <= $1 AND {LIVE_NOT_PAUSED})
             {}",
            key_below_cap(Class::Background, "$10")
        ),
        "GREATEST(0, LEAST(q.quota, q.bg_cap - (
            SELECT count(*) FROM runs b WHERE b.provider = q.provider AND b.class = 1
              AND b.status = 'running')))",
    );
    format!(
        "picked AS (
    SELECT id FROM (
        SELECT cand.*,
            ROW_NUMBER() OVER (PARTITION BY cand.concurrency_key, cand.class
                               ORDER BY cand.priority, cand.due_at) AS key_rank
        FROM (
            SELECT r.* FROM unnest($5::text[], $6::int8[], $7::int8[], $8::int8[])
                AS q(provider, quota, live_cap, bg_cap)
            CROSS JOIN LATERAL ({live}) r
            UNION ALL
            SELECT r.* FROM unnest($5::text[], $6::int8[], $7::int8[], $8::int8[])
                AS q(provider, quota, live_cap, bg_cap)
            CROSS JOIN LATERAL ({background}) r
        ) cand
    ) ranked
    WHERE concurrency_key IS NULL
       OR (CASE WHEN class = 0 THEN $9::int8 ELSE $10::int8 END) IS NULL
       OR key_rank + (SELECT count(*) FROM runs k WHERE k.concurrency_key = ranked.concurrency_key
                      AND k.class = ranked.class AND k.status = 'running')
          <= (CASE WHEN class = 0 THEN $9::int8 ELSE $10::int8 END)
    ORDER BY class, priority, due_at
    LIMIT $2
)"
    )
}

/// Live runs of providers whose live runs have no cap, when live concurrency keys have none
/// either (parameters: $1 now, $2 limit, $5 providers, $6 how many may start): nothing to
/// count, so no turn to take. Each provider's due live runs in dispatch order, merged.
fn live_pick() -> String {
    let live = provider_candidates(Class::Live, "", "q.quota");
    format!(
        "picked AS (
    SELECT r.id FROM unnest($5::text[], $6::int8[]) AS q(provider, quota)
    CROSS JOIN LATERAL ({live}) r
    ORDER BY r.priority, r.due_at
    LIMIT $2
)"
    )
}

/// The pick without quotas: one index scan in dispatch order.
fn plain_pick() -> String {
    format!(
        "picked AS (
    SELECT c.id FROM runs c
    WHERE {STARTABLE}
    ORDER BY c.class, c.priority, c.due_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)"
    )
}

/// The three claim statements, built once.
static PLAIN_CLAIM: LazyLock<String> = LazyLock::new(|| claim_sql(&plain_pick()));
static LIVE_CLAIM: LazyLock<String> = LazyLock::new(|| claim_sql(&live_pick()));
static QUOTA_CLAIM: LazyLock<String> = LazyLock::new(|| claim_sql(&quota_pick()));

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Connections for the enqueue statement only (see `connect`).
    enqueue_pool: PgPool,
}

/// Connections of the enqueue pool: the group-commit enqueuer runs one statement at a time.
const ENQUEUE_CONNECTIONS: u32 = 2;

impl PgStore {
    pub async fn connect(url: &str, options: &OpenOptions) -> Result<PgStore> {
        let connect = PgConnectOptions::from_str(url)?
            .application_name("sluice")
            // Sluice's statements are short and run thousands of times a second; the JIT
            // compiler (on by default) would compile the claim's plan on every execution
            // once the table is large enough to cross `jit_above_cost`, which in a 100,000-run
            // drain spent more CPU than executing the statements.
            .options([("jit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.clone())
            .await?;
        // The enqueue statement is planned anew on every execution under the default plan
        // cache mode (its custom plans look cheaper than the generic one), and planning it
        // cost three times executing it: enqueues run on their own connections, which keep
        // one generic plan. Batched claims and completions stay on custom plans, which
        // size their joins by the batch.
        let enqueue_pool = PgPoolOptions::new()
            .max_connections(ENQUEUE_CONNECTIONS)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect.options([("plan_cache_mode", "force_generic_plan")]))
            .await?;
        Ok(PgStore { pool, enqueue_pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The reads written once for both backends.
    pub(in crate::store) fn reads(&self) -> Reads<'_, Postgres, DateTime<Utc>> {
        Reads::new(&self.pool)
    }

    /// The replica and leader records, written once for both backends.
    pub(in crate::store) fn cluster(&self) -> Cluster<'_, Postgres, DateTime<Utc>> {
        Cluster::new(&self.pool)
    }

    pub(in crate::store) async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    pub(in crate::store) async fn claim_due(
        &self,
        worker: WorkerId,
        limit: usize,
        bounds: Option<ClaimBounds<'_>>,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<(Vec<ClaimedRun>, Vec<RunEvent>)> {
        let claim = |sql: &'static str, limit: usize| {
            sqlx::query(sql)
                .bind(now)
                .bind(limit as i64)
                .bind(worker.0)
                .bind(lease_until)
        };
        let Some(bounds) = bounds else {
            let rows = claim(&PLAIN_CLAIM, limit).fetch_all(&self.pool).await?;
            return claimed_runs(&rows, now);
        };
        // Several tenants or batches waiting in a lane, or a tenant with a cap: they take
        // turns. Otherwise dispatch order alone is fair, and the statements below claim
        // without reading or writing any rotation.
        let groups = self.waiting_groups(bounds.quotas).await?;
        if crate::store::fair::needs_rotation(&groups, bounds.shares) {
            return self
                .claim_fairly(worker, limit, bounds, groups, now, lease_until)
                .await;
        }
        let ClaimBounds {
            quotas, key_caps, ..
        } = bounds;
        let names: Vec<&str> = quotas.iter().map(|q| q.provider.as_str()).collect();
        let mut maxes: Vec<i64> = quotas.iter().map(|q| q.max as i64).collect();
        let mut first = Vec::new();
        if key_caps.live.is_none() {
            // Live runs with nothing to count first, without taking turns: a claim that
            // fills up on them (a busy drain) is a single statement.
            let live: Vec<i64> = quotas
                .iter()
                .zip(&maxes)
                .map(|(q, m)| if q.live_cap.is_some() { 0 } else { *m })
                .collect();
            if live.iter().any(|m| *m > 0) {
                first = claim(&LIVE_CLAIM, limit)
                    .bind(&names)
                    .bind(&live)
                    .fetch_all(&self.pool)
                    .await?;
                // A provider that had live runs due has had its turn: its background runs
                // wait while its live runs are due, as in a single pick.
                for row in &first {
                    let provider: &str = row.try_get("provider")?;
                    if let Some(i) = names.iter().position(|n| *n == provider) {
                        maxes[i] = 0;
                    }
                }
            }
        }
        let left = limit - first.len().min(limit);
        if left == 0 || maxes.iter().all(|m| *m <= 0) {
            return claimed_runs(&first, now);
        }
        let live_caps: Vec<Option<i64>> =
            quotas.iter().map(|q| q.live_cap.map(i64::from)).collect();
        let bg_caps: Vec<i64> = quotas.iter().map(|q| i64::from(q.background_cap)).collect();
        let query = claim(&QUOTA_CLAIM, left)
            .bind(&names)
            .bind(&maxes)
            .bind(&live_caps)
            .bind(&bg_caps)
            .bind(key_caps.live.map(i64::from))
            .bind(key_caps.background.map(i64::from));
        // Caps count runs in flight across every process: claims that count take turns,
        // so two processes cannot both see room for the last slot.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CLAIM_LOCK)
            .execute(&mut *tx)
            .await?;
        let rows = query.fetch_all(&mut *tx).await?;
        tx.commit().await?;
        if first.is_empty() {
            return claimed_runs(&rows, now);
        }
        let (mut claimed, mut events) = claimed_runs(&first, now)?;
        let (more, more_events) = claimed_runs(&rows, now)?;
        claimed.extend(more);
        events.extend(more_events);
        // Both in dispatch order, as one claim's result is.
        let mut both: Vec<(ClaimedRun, RunEvent)> = claimed.into_iter().zip(events).collect();
        both.sort_by_key(|(c, _)| (c.spec.class, c.spec.priority, c.due_at));
        Ok(both.into_iter().unzip())
    }

    pub(in crate::store) async fn extend_leases(
        &self,
        worker: WorkerId,
        runs: &[RunId],
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<RunId>> {
        let ids: Vec<Uuid> = runs.iter().map(|r| r.0).collect();
        let held: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE runs SET lease_expires_at = $3
             WHERE id = ANY($1) AND status = 'running' AND lease_owner = $2
             RETURNING id",
        )
        .bind(&ids)
        .bind(worker.0)
        .bind(lease_until)
        .fetch_all(&self.pool)
        .await?;
        Ok(held.into_iter().map(RunId).collect())
    }

    pub(in crate::store) async fn save_provider_state(
        &self,
        states: &[(String, String)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let (names, values): (Vec<&str>, Vec<&str>) =
            states.iter().map(|(n, v)| (n.as_str(), v.as_str())).unzip();
        sqlx::query(
            "INSERT INTO provider_state (provider, limiter, updated_at)
             SELECT p, l::json, $3 FROM unnest($1::text[], $2::text[]) AS t(p, l)
             ON CONFLICT (provider) DO UPDATE
             SET limiter = EXCLUDED.limiter, updated_at = EXCLUDED.updated_at",
        )
        .bind(&names)
        .bind(&values)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(in crate::store) async fn close(&self) {
        self.enqueue_pool.close().await;
        self.pool.close().await
    }
}

/// The claim statement around a pick: marks the picked runs running under the lease,
/// opens their attempts and writes their `started` events, in dispatch order.
fn claim_sql(picked: &str) -> String {
    format!(
        "WITH {picked}, claimed AS (
            UPDATE runs r
            SET status = 'running', attempts = r.attempts + 1, lease_owner = $3,
                lease_expires_at = $4, started_at = COALESCE(r.started_at, $1)
            FROM picked WHERE r.id = picked.id
            RETURNING r.id, r.attempts, r.max_attempts, r.provider, r.model,
                r.request::text AS request, r.class, r.priority, r.tenant, r.batch,
                r.concurrency_key, r.stream, r.timeout_ms, r.created_at, r.due_at
         ), opened AS (
            INSERT INTO run_attempts (run_id, attempt, worker, started_at)
            SELECT id, attempts, $3, $1 FROM claimed
         ), ev AS (
            INSERT INTO run_events (run_id, kind, at, attempt, class, tenant, batch)
            SELECT id, 'started', $1, attempts, class, tenant, batch FROM claimed
            RETURNING id AS event_id, run_id
         )
         SELECT claimed.*, ev.event_id FROM claimed JOIN ev ON ev.run_id = claimed.id
         ORDER BY class, priority, due_at"
    )
}

fn claimed_runs(rows: &[PgRow], now: DateTime<Utc>) -> Result<(Vec<ClaimedRun>, Vec<RunEvent>)> {
    let mut claimed = Vec::with_capacity(rows.len());
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let (run, scope) = ClaimedRecord::<DateTime<Utc>>::from_row(row)?.decode()?;
        events.push(RunEvent {
            id: row.try_get("event_id")?,
            ..scope.event(EventKind::Started, now, Some(run.attempt), None)
        });
        claimed.push(run);
    }
    Ok((claimed, events))
}

/// A row holding an event of the log (and maybe more columns).
fn event_from_row(row: &PgRow) -> Result<RunEvent> {
    EventRecord::<DateTime<Utc>>::from_row(row)?.decode()
}
