//! Batches on PostgreSQL: a batch and its runs in one transaction, pauses and resumes
//! decided under the batch's row lock, a cancel that ends every unfinished run in one
//! statement (announcing the running ones so whichever process runs them aborts), and the
//! once-only mark that a batch finished.

use std::time::Duration;

use sqlx::{PgConnection, Row};

use super::enqueue::insert_runs;
use super::*;
use crate::store::batch_model::*;
use crate::store::batch_reads::{BATCH_COLUMNS, BatchReads, BatchRecord};
use crate::store::reads::EVENT_COLUMNS;
use crate::store::{StoreError, codec::parse_status};

impl PgStore {
    pub(in crate::store) fn batch_reads(&self) -> BatchReads<'_, Postgres, DateTime<Utc>> {
        BatchReads::new(&self.pool)
    }

    pub(in crate::store) async fn create_batch(
        &self,
        batch: &NewBatch,
    ) -> Result<(BatchCreated, Vec<RunEvent>)> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO batches (id, tenant, metadata, run_count, created_at, idem_key)
             VALUES ($1, $2, $3::json, $4, $5, $6) ON CONFLICT DO NOTHING",
        )
        .bind(batch.id.text())
        .bind(&batch.tenant)
        .bind(batch.metadata.as_ref().map(|m| m.get()))
        .bind(batch.runs.len() as i32)
        .bind(batch.created_at)
        .bind(batch.idem_key())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            // The idempotency key is taken (a conflicting insert waits for the holder's
            // commit, so the holder is visible now).
            tx.rollback().await?;
            let holder = match batch.idem_key() {
                Some(key) => self.batch_reads().batch_by_idem(key).await?,
                None => None,
            };
            let holder = holder.ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "batch {} was neither inserted nor found by idempotency key",
                    batch.id
                ))
            })?;
            return Ok((BatchCreated::Existing(holder), Vec::new()));
        }
        // Left queued and due: the commit wakes every process's producer.
        let events = insert_runs(&mut *tx, &batch.runs, None, None).await?;
        let created = events
            .iter()
            .filter(|e| e.kind == EventKind::Queued)
            .count();
        if created != batch.runs.len() {
            tx.rollback().await?;
            return Err(StoreError::Misuse(
                "a batch's runs must not carry idempotency keys or reused ids",
            ));
        }
        tx.commit().await?;
        Ok((BatchCreated::Created(batch.id), events))
    }

    pub(in crate::store) async fn toggle_batch(
        &self,
        id: BatchId,
        tenant: Option<&str>,
        toggle: BatchToggle,
        now: DateTime<Utc>,
        cooldown: Duration,
    ) -> Result<(ToggleOutcome, Vec<RunEvent>)> {
        let mut tx = self.pool.begin().await?;
        let Some((view, state)) = lock_batch(&mut tx, id, tenant).await? else {
            return Ok((ToggleOutcome::NotFound, Vec::new()));
        };
        // Dropped uncommitted: a decision that writes nothing rolls back.
        if let Some(outcome) = decide_toggle(&state, toggle, now, cooldown).unwritten(view) {
            return Ok((outcome, Vec::new()));
        }
        let sql = format!(
            "UPDATE batches SET paused = $2, toggled_at = $3 WHERE id = $1
             RETURNING {BATCH_COLUMNS}"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.text())
            .bind(toggle == BatchToggle::Pause)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
        let view = BatchRecord::<DateTime<Utc>>::from_row(&row)?.decode()?;
        let event = batch_event(id, view.tenant.clone(), toggle.event(), now, None);
        let event = insert_batch_event(&mut tx, event).await?;
        if toggle == BatchToggle::Resume {
            // Its runs may be claimed again, by any process.
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(WAKE_CHANNEL)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok((ToggleOutcome::Applied(view), vec![event]))
    }

    pub(in crate::store) async fn cancel_batch(
        &self,
        id: BatchId,
        tenant: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(BatchCancelOutcome, Vec<RunEvent>)> {
        let mut tx = self.pool.begin().await?;
        let Some((_, state)) = lock_batch(&mut tx, id, tenant).await? else {
            return Ok((BatchCancelOutcome::NotFound, Vec::new()));
        };
        if let Some(why) = closed(&state) {
            tx.rollback().await?;
            return Ok((BatchCancelOutcome::Closed(why), Vec::new()));
        }
        let rows = sqlx::query(
            "WITH target AS (
                SELECT id, status FROM runs
                WHERE batch = $1 AND status IN ('queued', 'running')
                FOR UPDATE
             ), cancelled AS (
                UPDATE runs r
                SET status = 'cancelled', finished_at = $2, lease_owner = NULL,
                    lease_expires_at = NULL, error_kind = 'cancelled', error_message = $4,
                    error_status = NULL
                FROM target t WHERE r.id = t.id
                RETURNING r.id, r.attempts, r.class, r.tenant, r.batch, t.status AS was
             ), closed AS (
                UPDATE run_attempts a SET finished_at = $2, outcome = 'cancelled'
                FROM cancelled c WHERE a.run_id = c.id AND a.finished_at IS NULL
             ), ev AS (
                INSERT INTO run_events (run_id, kind, at, attempt, data, class, tenant, batch)
                SELECT id, 'cancelled', $2, NULLIF(attempts, 0), $5::json, class, tenant, batch
                FROM cancelled
                RETURNING id, run_id, kind, at, attempt, data::text AS data, class, tenant, batch
             ), told AS (
                -- Whichever process runs an attempt aborts its provider call.
                SELECT count(*) AS told FROM (
                    SELECT pg_notify($3, id::text) FROM cancelled WHERE was = 'running'
                ) notified
             )
             SELECT ev.*, c.was FROM ev JOIN cancelled c ON c.id = ev.run_id
             CROSS JOIN told ORDER BY ev.id",
        )
        .bind(id.text())
        .bind(now)
        .bind(CANCEL_CHANNEL)
        .bind(CANCEL_MESSAGE)
        .bind(cancelled_data().get())
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("UPDATE batches SET cancelled_at = $2, toggled_at = $2 WHERE id = $1")
            .bind(id.text())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut running = Vec::new();
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            let event = event_from_row(row)?;
            if parse_status(&row.try_get::<String, _>("was")?)? == Status::Running {
                running.push(event.run_id);
            }
            events.push(event);
        }
        let outcome = BatchCancelOutcome::Cancelled {
            ended: events.iter().map(|e| (e.run_id, e.class)).collect(),
            running,
        };
        Ok((outcome, events))
    }

    /// Marks the batch finished at `at` and writes its `batch_finished` event, unless some
    /// process already did.
    pub(in crate::store) async fn mark_batch_finished(
        &self,
        id: BatchId,
        at: DateTime<Utc>,
        progress: &BatchProgress,
    ) -> Result<Vec<RunEvent>> {
        let sql = format!(
            "WITH done AS (
                UPDATE batches SET finished_at = $2 WHERE id = $1 AND finished_at IS NULL
                RETURNING tenant
             )
             INSERT INTO run_events (run_id, kind, at, data, class, tenant, batch)
             SELECT $3, $4, $2, $5::json, 0, tenant, $1 FROM done
             RETURNING {EVENT_COLUMNS}"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.text())
            .bind(at)
            .bind(id.0)
            .bind(EventKind::BatchFinished.as_str())
            .bind(batch_finished_data(progress).get())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(event_from_row).collect()
    }
}

/// The batch (within the tenant scope) locked for a toggle, and what the toggle is
/// decided on.
async fn lock_batch(
    tx: &mut PgConnection,
    id: BatchId,
    tenant: Option<&str>,
) -> Result<Option<(BatchView, ToggleState)>> {
    let sql = format!(
        "SELECT {BATCH_COLUMNS}, EXISTS (
            SELECT 1 FROM runs r WHERE r.batch = b.id AND r.status IN ('queued', 'running')
         ) AS open
         FROM batches b WHERE b.id = $1 AND ($2::text IS NULL OR b.tenant = $2)
         FOR UPDATE OF b"
    );
    let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id.text())
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await?
    else {
        return Ok(None);
    };
    let view = BatchRecord::<DateTime<Utc>>::from_row(&row)?.decode()?;
    let state = ToggleState {
        paused: view.paused,
        cancelled: view.cancelled_at.is_some(),
        open: row.try_get("open")?,
        toggled_at: view.toggled_at,
    };
    Ok(Some((view, state)))
}

async fn insert_batch_event(tx: &mut PgConnection, event: RunEvent) -> Result<RunEvent> {
    let sql = format!(
        "INSERT INTO run_events (run_id, kind, at, data, class, tenant, batch)
         VALUES ($1, $2, $3, $4::json, $5, $6, $7) RETURNING {EVENT_COLUMNS}"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(event.run_id.0)
        .bind(event.kind.as_str())
        .bind(event.at)
        .bind(event.data.as_ref().map(|d| d.get()))
        .bind(event.class.rank())
        .bind(&event.tenant)
        .bind(&event.batch)
        .fetch_one(&mut *tx)
        .await?;
    event_from_row(&row)
}
