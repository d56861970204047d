//! Enqueueing on PostgreSQL: a batch of runs goes in as one statement, so one round trip
//! and one commit: the rows, their events, the attempts of the runs started at once, and
//! the wake-up of the producers when anything was left queued that is due soon (later
//! ones their periodic look finds).
//!
//! In steps: [`RunColumns`] lays the runs out as the parallel arrays `unnest` reads,
//! [`ENQUEUE_SQL`] writes them, and [`PgStore::answers`] tells each input which run
//! holds it (itself, or the run that already held its idempotency key).

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgArguments, Postgres};
use sqlx::query::Query;
use uuid::Uuid;

use super::{PgStore, WAKE_CHANNEL, event_from_row};
use crate::run::RunId;
use crate::store::model::*;
use crate::store::{Result, StoreError};

/// The enqueue statement (parameters: $1–$19 the run columns in [`RunColumns`] order, $20
/// now, $21 the worker starting runs, $22 its lease expiry, $23 the wake-up channel, $24
/// the due time up to which a run left queued wakes the producers, none for always).
/// A flagged run starts only if no live run of its provider is due ahead of it (as of the
/// statement's snapshot).
const ENQUEUE_SQL: &str = "WITH t AS (
        SELECT t.*, t.start AND t.due_at <= $20 AND NOT EXISTS (
            SELECT 1 FROM runs q WHERE q.status = 'queued' AND q.provider = t.provider
              AND q.class = 0 AND q.due_at <= $20) AS go
        FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int2[], $6::int2[],
            $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
            $13::bool[], $14::int2[], $15::int4[], $16::timestamptz[], $17::timestamptz[],
            $18::timestamptz[], $19::bool[])
          AS t(id, provider, model, request, class, priority, tenant, concurrency_key,
               session, batch, idem_key, metadata, stream, max_attempts, timeout_ms,
               queue_deadline_at, due_at, created_at, start)
     ), ins AS (
     INSERT INTO runs (id, provider, model, request, class, priority, tenant, \
        concurrency_key, session, batch, idem_key, metadata, stream, max_attempts, \
        timeout_ms, queue_deadline_at, due_at, created_at, status, attempts, \
        lease_owner, lease_expires_at, started_at)
     SELECT t.id, t.provider, t.model, t.request::json, t.class, t.priority, t.tenant,
        t.concurrency_key, t.session, t.batch, t.idem_key, t.metadata::json, t.stream,
        t.max_attempts, t.timeout_ms, t.queue_deadline_at, t.due_at, t.created_at,
        CASE WHEN t.go THEN 'running' ELSE 'queued' END,
        CASE WHEN t.go THEN 1 ELSE 0 END,
        CASE WHEN t.go THEN $21::uuid END,
        CASE WHEN t.go THEN $22::timestamptz END,
        CASE WHEN t.go THEN $20::timestamptz END
     FROM t
     ON CONFLICT DO NOTHING
     RETURNING id, status, class, tenant, batch, created_at, due_at
     ), opened AS (
        INSERT INTO run_attempts (run_id, attempt, worker, started_at)
        SELECT id, 1, $21, $20 FROM ins WHERE status = 'running'
     ), woken AS (
        SELECT pg_notify($23, '') FROM ins WHERE status = 'queued'
          AND ($24::timestamptz IS NULL OR due_at <= $24) LIMIT 1
     ), ev AS (
        INSERT INTO run_events (run_id, kind, at, attempt, class, tenant, batch)
        SELECT i.id, e.kind, CASE WHEN e.ord = 1 THEN i.created_at ELSE $20 END,
            CASE WHEN e.ord = 2 THEN 1 END, i.class, i.tenant, i.batch
        FROM ins i CROSS JOIN LATERAL (VALUES (1, 'queued'), (2, 'started')) AS e(ord, kind)
        WHERE e.ord = 1 OR i.status = 'running'
        ORDER BY e.ord
        RETURNING id, run_id, kind, at, attempt, data::text AS data, class, tenant, batch
     )
     SELECT ev.* FROM ev LEFT JOIN woken ON TRUE ORDER BY ev.id";

/// One enqueue's runs as parallel columns, one entry per run, in input order.
struct RunColumns<'a> {
    ids: Vec<Uuid>,
    providers: Vec<&'a str>,
    models: Vec<Option<&'a str>>,
    requests: Vec<&'a str>,
    classes: Vec<i16>,
    priorities: Vec<i16>,
    tenants: Vec<Option<&'a str>>,
    keys: Vec<Option<&'a str>>,
    sessions: Vec<Option<&'a str>>,
    batches: Vec<Option<&'a str>>,
    idem: Vec<Option<String>>,
    metadata: Vec<Option<&'a str>>,
    streams: Vec<bool>,
    max_attempts: Vec<i16>,
    timeouts: Vec<Option<i32>>,
    deadlines: Vec<Option<DateTime<Utc>>>,
    due: Vec<DateTime<Utc>>,
    created: Vec<DateTime<Utc>>,
    /// Whether the enqueue may start the run at once.
    start: Vec<bool>,
}

impl<'a> RunColumns<'a> {
    fn new(runs: &'a [NewRun], start: Option<&StartNow<'_>>) -> RunColumns<'a> {
        let n = runs.len();
        let mut c = RunColumns {
            ids: Vec::with_capacity(n),
            providers: Vec::with_capacity(n),
            models: Vec::with_capacity(n),
            requests: Vec::with_capacity(n),
            classes: Vec::with_capacity(n),
            priorities: Vec::with_capacity(n),
            tenants: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            sessions: Vec::with_capacity(n),
            batches: Vec::with_capacity(n),
            idem: Vec::with_capacity(n),
            metadata: Vec::with_capacity(n),
            streams: Vec::with_capacity(n),
            max_attempts: Vec::with_capacity(n),
            timeouts: Vec::with_capacity(n),
            deadlines: Vec::with_capacity(n),
            due: Vec::with_capacity(n),
            created: Vec::with_capacity(n),
            start: match start {
                Some(s) => s.runs.to_vec(),
                None => vec![false; n],
            },
        };
        for r in runs {
            c.ids.push(r.id.0);
            c.providers.push(r.spec.provider.as_str());
            c.models.push(r.spec.model.as_deref());
            c.requests.push(r.request.get());
            c.classes.push(r.spec.class.rank());
            c.priorities.push(r.spec.priority);
            c.tenants.push(r.spec.tenant.as_deref());
            c.keys.push(r.spec.concurrency_key.as_deref());
            c.sessions.push(r.session.as_deref());
            c.batches.push(r.batch.as_deref());
            c.idem.push(r.idem_key());
            c.metadata.push(r.metadata.as_ref().map(|m| m.get()));
            c.streams.push(r.spec.stream);
            c.max_attempts.push(r.max_attempts);
            c.timeouts.push(r.spec.timeout_ms);
            c.deadlines.push(r.queue_deadline_at);
            c.due.push(r.due_at);
            c.created.push(r.created_at);
        }
        c
    }

    /// Binds the columns as $1–$19.
    fn bind<'q>(
        &'q self,
        query: Query<'q, Postgres, PgArguments>,
    ) -> Query<'q, Postgres, PgArguments> {
        query
            .bind(&self.ids)
            .bind(&self.providers)
            .bind(&self.models)
            .bind(&self.requests)
            .bind(&self.classes)
            .bind(&self.priorities)
            .bind(&self.tenants)
            .bind(&self.keys)
            .bind(&self.sessions)
            .bind(&self.batches)
            .bind(&self.idem)
            .bind(&self.metadata)
            .bind(&self.streams)
            .bind(&self.max_attempts)
            .bind(&self.timeouts)
            .bind(&self.deadlines)
            .bind(&self.due)
            .bind(&self.created)
            .bind(&self.start)
    }
}

/// Writes `runs` with [`ENQUEUE_SQL`] on `db` (a pool, or the transaction of a batch);
/// returns the events written.
pub(super) async fn insert_runs<'e>(
    db: impl sqlx::PgExecutor<'e>,
    runs: &[NewRun],
    start: Option<StartNow<'_>>,
    notify_until: Option<DateTime<Utc>>,
) -> Result<Vec<RunEvent>> {
    let columns = RunColumns::new(runs, start.as_ref());
    let event_rows = columns
        .bind(sqlx::query(ENQUEUE_SQL))
        .bind(start.as_ref().map(|s| s.now))
        .bind(start.as_ref().map(|s| s.worker.0))
        .bind(start.as_ref().map(|s| s.lease_until))
        .bind(WAKE_CHANNEL)
        .bind(notify_until)
        .fetch_all(db)
        .await?;
    event_rows.iter().map(event_from_row).collect()
}

impl PgStore {
    pub(in crate::store) async fn enqueue(
        &self,
        runs: &[NewRun],
        start: Option<StartNow<'_>>,
        notify_until: Option<DateTime<Utc>>,
    ) -> Result<(Vec<Enqueued>, Vec<RunEvent>)> {
        let events = insert_runs(&self.enqueue_pool, runs, start, notify_until).await?;
        let inserted: HashSet<Uuid> = events
            .iter()
            .filter(|e| e.kind == EventKind::Queued)
            .map(|e| e.run_id.0)
            .collect();
        Ok((self.answers(runs, &inserted).await?, events))
    }

    /// One answer per run, in input order: created, or the run holding its idempotency key.
    async fn answers(&self, runs: &[NewRun], inserted: &HashSet<Uuid>) -> Result<Vec<Enqueued>> {
        let mut out = Vec::with_capacity(runs.len());
        if inserted.len() == runs.len() {
            out.extend(runs.iter().map(|r| Enqueued::Created(r.id)));
        } else {
            // Some idempotency keys were taken (by an earlier run or by another row of this
            // very batch): answer those with the run that holds the key. The holders are
            // committed: a conflicting insert waits for the other transaction to end.
            let missing: Vec<String> = runs
                .iter()
                .filter(|r| !inserted.contains(&r.id.0))
                .filter_map(|r| r.idem_key())
                .collect();
            let holders: Vec<(String, Uuid)> =
                sqlx::query_as("SELECT idem_key, id FROM runs WHERE idem_key = ANY($1)")
                    .bind(&missing)
                    .fetch_all(&self.pool)
                    .await?;
            let holders: HashMap<String, Uuid> = holders.into_iter().collect();
            for r in runs {
                if inserted.contains(&r.id.0) {
                    out.push(Enqueued::Created(r.id));
                    continue;
                }
                let holder = r
                    .idem_key()
                    .and_then(|k| holders.get(&k).copied())
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "run {} was neither inserted nor found by idempotency key",
                            r.id
                        ))
                    })?;
                out.push(Enqueued::Existing(RunId(holder)));
            }
        }
        Ok(out)
    }
}
