//! Per-tenant state on SQLite: one process owns the file, so each tenant's enqueue bucket
//! lives in its memory (a restart starts every bucket full).

use std::time::Duration;

use super::*;
use crate::store::tenant_usage::EnqueueBucket;

impl SqliteStore {
    pub(in crate::store) async fn take_enqueue_slot(
        &self,
        tenant: &str,
        rate: f64,
        capacity: f64,
        now: DateTime<Utc>,
    ) -> Result<std::result::Result<(), Duration>> {
        let mut buckets = self.buckets.lock().expect("bucket lock");
        let bucket = buckets
            .entry(tenant.to_string())
            .or_insert_with(|| EnqueueBucket::full(capacity, now));
        let (next, taken) = bucket.take(rate, capacity, now);
        *bucket = next;
        Ok(taken)
    }
}
