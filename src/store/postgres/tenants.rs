//! Per-tenant state on PostgreSQL: each tenant's enqueue bucket is a row, locked while one
//! enqueue refills and takes from it, so every process shares one bucket per tenant.

use std::time::Duration;

use super::*;
use crate::store::tenant_usage::EnqueueBucket;

impl PgStore {
    pub(in crate::store) async fn take_enqueue_slot(
        &self,
        tenant: &str,
        rate: f64,
        capacity: f64,
        now: DateTime<Utc>,
    ) -> Result<std::result::Result<(), Duration>> {
        let mut tx = self.pool.begin().await?;
        // Inserts a full bucket the first time; either way returns the row, locked.
        let (level, at): (f64, DateTime<Utc>) = sqlx::query_as(
            "INSERT INTO tenant_enqueue_buckets (tenant, level, refilled_at) VALUES ($1, $2, $3)
             ON CONFLICT (tenant) DO UPDATE SET tenant = EXCLUDED.tenant
             RETURNING level, refilled_at",
        )
        .bind(tenant)
        .bind(capacity)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let (bucket, taken) = EnqueueBucket { level, at }.take(rate, capacity, now);
        sqlx::query(
            "UPDATE tenant_enqueue_buckets SET level = $2, refilled_at = $3 WHERE tenant = $1",
        )
        .bind(tenant)
        .bind(bucket.level)
        .bind(bucket.at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(taken)
    }
}
