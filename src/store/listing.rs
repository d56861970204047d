//! Listing runs and batches, newest first, one keyset page at a time (see `batch_reads`
//! for the statements and the migrations for the indexes that keep a page O(limit)).

use super::batch_model::{BatchFilter, BatchView, PageAfter, RunFilter};
use super::{Backend, Result, RunView, Store};

impl Store {
    /// Runs matching `filter`, newest first (by creation time, then id), strictly after
    /// `after`, at most `limit`. The runs carry no attempt log.
    pub async fn list_runs(
        &self,
        filter: &RunFilter,
        after: Option<PageAfter>,
        limit: usize,
    ) -> Result<Vec<RunView>> {
        delegate!(self, s => s.batch_reads().list_runs(filter, after, limit).await)
    }

    /// Batches matching `filter`, newest first, strictly after `after`, at most `limit`.
    pub async fn list_batches(
        &self,
        filter: &BatchFilter,
        after: Option<PageAfter>,
        limit: usize,
    ) -> Result<Vec<BatchView>> {
        delegate!(self, s => s.batch_reads().list_batches(filter, after, limit).await)
    }
}
