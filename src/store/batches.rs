//! The store's batch operations: create a batch with all its runs, read it and its
//! progress, pause, resume and cancel it, page through its ended runs, and mark batches
//! whose runs have all ended finished (with their `batch_finished` event). Batch events
//! are rows of the run event log (see `batch_model`), published like run events.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::batch_model::*;
use super::{Backend, Result, RunView, Store, StoreError};

impl Store {
    /// Inserts the batch and every run of it in one transaction (all or nothing), or
    /// answers with the batch already holding its idempotency key. The runs are left
    /// queued; on PostgreSQL the commit wakes every process's producer.
    pub async fn create_batch(&self, batch: &NewBatch) -> Result<BatchCreated> {
        if batch.runs.is_empty() {
            return Err(StoreError::Misuse("a batch holds at least one run"));
        }
        let batch_text = batch.id.text();
        if batch
            .runs
            .iter()
            .any(|r| r.batch.as_deref() != Some(batch_text.as_str()) || r.idempotency_key.is_some())
        {
            return Err(StoreError::Misuse(
                "a batch's runs name it and carry no idempotency key",
            ));
        }
        let written = delegate!(self, s => s.create_batch(batch).await)?;
        Ok(self.published(written))
    }

    /// The batch, if it exists and belongs to `tenant` (`None`: any tenant).
    pub async fn get_batch(&self, id: BatchId, tenant: Option<&str>) -> Result<Option<BatchView>> {
        delegate!(self, s => s.batch_reads().batch(id, tenant).await)
    }

    /// Counts by status (adding up: one statement), tokens and times of a batch's runs.
    pub async fn batch_progress(&self, id: BatchId) -> Result<BatchProgress> {
        delegate!(self, s => s.batch_reads().progress(id).await)
    }

    /// Pauses or resumes the batch (see `batch_model::decide_toggle` for when), with its
    /// event. A paused batch's queued runs are not claimed; in-flight ones finish.
    pub async fn toggle_batch(
        &self,
        id: BatchId,
        tenant: Option<&str>,
        toggle: BatchToggle,
        now: DateTime<Utc>,
        cooldown: Duration,
    ) -> Result<ToggleOutcome> {
        let written =
            delegate!(self, s => s.toggle_batch(id, tenant, toggle, now, cooldown).await)?;
        Ok(self.published(written))
    }

    /// Cancels the batch: every queued or running run of it ends `cancelled` (with its
    /// event) in one transaction. On PostgreSQL each running run is announced, so the
    /// process running its attempt aborts it; the caller aborts its own.
    pub async fn cancel_batch(
        &self,
        id: BatchId,
        tenant: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<BatchCancelOutcome> {
        let written = delegate!(self, s => s.cancel_batch(id, tenant, now).await)?;
        Ok(self.published(written))
    }

    /// The batch's ended runs after run `after` in id order, at most `limit`.
    pub async fn batch_results(
        &self,
        id: BatchId,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<RunView>> {
        delegate!(self, s => s.batch_reads().results(id, after, limit).await)
    }

    /// Marks up to `limit` batches whose runs have all ended finished, each once across
    /// every process, with a `batch_finished` event carrying its final counts. Returns the
    /// batches this call marked.
    pub async fn finish_ended_batches(&self, limit: usize) -> Result<Vec<BatchId>> {
        let ended = delegate!(self, s => s.batch_reads().ended_unfinished(limit).await)?;
        let mut marked = Vec::new();
        for id in ended {
            // Every run has ended, so these counts are final.
            let progress = self.batch_progress(id).await?;
            let Some(at) = progress.last_finished_at else {
                continue;
            };
            let events = delegate!(self, s => s.mark_batch_finished(id, at, &progress).await)?;
            if !events.is_empty() {
                marked.push(id);
            }
            self.published(((), events));
        }
        Ok(marked)
    }
}
