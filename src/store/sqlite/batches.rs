//! Batches on SQLite: the same operations as on PostgreSQL, each one transaction of the
//! single writer (so nothing changes between the reads and writes inside it).

use std::time::Duration;

use sqlx::Row;

use super::*;
use crate::store::batch_model::*;
use crate::store::batch_reads::{BATCH_COLUMNS, BatchReads, BatchRecord};
use crate::store::codec::ScopeRecord;

impl SqliteStore {
    pub(in crate::store) fn batch_reads(&self) -> BatchReads<'_, Sqlite, i64> {
        BatchReads::new(&self.reader)
    }

    pub(in crate::store) async fn create_batch(
        &self,
        batch: &NewBatch,
    ) -> Result<(BatchCreated, Vec<RunEvent>)> {
        let mut tx = self.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO batches (id, tenant, metadata, run_count, created_at, idem_key)
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(batch.id.text())
        .bind(&batch.tenant)
        .bind(batch.metadata.as_ref().map(|m| m.get()))
        .bind(batch.runs.len() as i64)
        .bind(ms(batch.created_at))
        .bind(batch.idem_key())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            let holder: Option<String> =
                sqlx::query_scalar("SELECT id FROM batches WHERE idem_key = ?")
                    .bind(batch.idem_key())
                    .fetch_optional(&mut *tx)
                    .await?;
            let holder = holder.and_then(|h| h.parse().ok()).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "batch {} was neither inserted nor found by idempotency key",
                    batch.id
                ))
            })?;
            return Ok((BatchCreated::Existing(holder), Vec::new()));
        }
        let (written, events) = insert_runs(&mut tx, &batch.runs, None).await?;
        if written.iter().any(|w| matches!(w, Enqueued::Existing(_))) {
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
        let mut tx = self.begin().await?;
        let Some((view, state)) = read_batch(&mut tx, id, tenant).await? else {
            return Ok((ToggleOutcome::NotFound, Vec::new()));
        };
        // Dropped uncommitted: a decision that writes nothing rolls back.
        if let Some(outcome) = decide_toggle(&state, toggle, now, cooldown).unwritten(view) {
            return Ok((outcome, Vec::new()));
        }
        let sql = format!(
            "UPDATE batches SET paused = ?, toggled_at = ? WHERE id = ?
             RETURNING {BATCH_COLUMNS}"
        );
        let view: BatchRecord<i64> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(toggle == BatchToggle::Pause)
            .bind(ms(now))
            .bind(id.text())
            .fetch_one(&mut *tx)
            .await?;
        let view = view.decode()?;
        let event = batch_event(id, view.tenant.clone(), toggle.event(), now, None);
        let event = insert_event(&mut tx, event).await?;
        tx.commit().await?;
        Ok((ToggleOutcome::Applied(view), vec![event]))
    }

    pub(in crate::store) async fn cancel_batch(
        &self,
        id: BatchId,
        tenant: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(BatchCancelOutcome, Vec<RunEvent>)> {
        let mut tx = self.begin().await?;
        let Some((_, state)) = read_batch(&mut tx, id, tenant).await? else {
            return Ok((BatchCancelOutcome::NotFound, Vec::new()));
        };
        if let Some(why) = closed(&state) {
            return Ok((BatchCancelOutcome::Closed(why), Vec::new()));
        }
        let targets = sqlx::query(
            "SELECT id, status, attempts, class, tenant, batch FROM runs
             WHERE batch = ? AND status IN ('queued', 'running') ORDER BY id",
        )
        .bind(id.text())
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE runs
             SET status = 'cancelled', finished_at = ?, lease_owner = NULL, lease_expires_at = NULL,
                 error_kind = 'cancelled', error_message = ?, error_status = NULL
             WHERE batch = ? AND status IN ('queued', 'running')",
        )
        .bind(ms(now))
        .bind(CANCEL_MESSAGE)
        .bind(id.text())
        .execute(&mut *tx)
        .await?;
        // Only the runs just cancelled had an attempt open.
        sqlx::query(
            "UPDATE run_attempts SET finished_at = ?, outcome = 'cancelled'
             WHERE finished_at IS NULL AND run_id IN (SELECT id FROM runs WHERE batch = ?)",
        )
        .bind(ms(now))
        .bind(id.text())
        .execute(&mut *tx)
        .await?;
        let mut running = Vec::new();
        let mut events = Vec::with_capacity(targets.len());
        for row in &targets {
            let attempts: i64 = row.try_get("attempts")?;
            let attempt = (attempts > 0).then_some(attempts as u32);
            let scope = ScopeRecord::from_row(row)?.decode()?;
            if row.try_get::<String, _>("status")? == Status::Running.as_str() {
                running.push(scope.run_id);
            }
            let cancelled = scope.event(EventKind::Cancelled, now, attempt, Some(cancelled_data()));
            events.push(insert_event(&mut tx, cancelled).await?);
        }
        sqlx::query("UPDATE batches SET cancelled_at = ?, toggled_at = ? WHERE id = ?")
            .bind(ms(now))
            .bind(ms(now))
            .bind(id.text())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let outcome = BatchCancelOutcome::Cancelled {
            ended: events.iter().map(|e| (e.run_id, e.class)).collect(),
            running,
        };
        Ok((outcome, events))
    }

    /// Marks the batch finished at `at` and writes its `batch_finished` event, unless that
    /// was done already.
    pub(in crate::store) async fn mark_batch_finished(
        &self,
        id: BatchId,
        at: DateTime<Utc>,
        progress: &BatchProgress,
    ) -> Result<Vec<RunEvent>> {
        let mut tx = self.begin().await?;
        let tenant: Option<Option<String>> = sqlx::query_scalar(
            "UPDATE batches SET finished_at = ? WHERE id = ? AND finished_at IS NULL
             RETURNING tenant",
        )
        .bind(ms(at))
        .bind(id.text())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(tenant) = tenant else {
            return Ok(Vec::new());
        };
        let data = batch_finished_data(progress);
        let event = batch_event(id, tenant, EventKind::BatchFinished, at, Some(data));
        let event = insert_event(&mut tx, event).await?;
        tx.commit().await?;
        Ok(vec![event])
    }
}

/// The batch (within the tenant scope) and what a toggle is decided on.
async fn read_batch(
    tx: &mut Transaction<'static, Sqlite>,
    id: BatchId,
    tenant: Option<&str>,
) -> Result<Option<(BatchView, ToggleState)>> {
    let sql = format!(
        "SELECT {BATCH_COLUMNS}, EXISTS (
            SELECT 1 FROM runs r WHERE r.batch = b.id AND r.status IN ('queued', 'running')
         ) AS open
         FROM batches b WHERE b.id = ? AND (?2 IS NULL OR b.tenant = ?2)"
    );
    let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id.text())
        .bind(tenant)
        .fetch_optional(&mut **tx)
        .await?
    else {
        return Ok(None);
    };
    let view = BatchRecord::<i64>::from_row(&row)?.decode()?;
    let state = ToggleState {
        paused: view.paused,
        cancelled: view.cancelled_at.is_some(),
        open: row.try_get("open")?,
        toggled_at: view.toggled_at,
    };
    Ok(Some((view, state)))
}
