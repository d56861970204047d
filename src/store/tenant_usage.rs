//! What the store keeps per tenant: the tokens each tenant's completed runs reported, per
//! UTC day, provider and model (written by `mark_completed` in the same transaction that
//! completes the runs), the runs each tenant has queued and running, and each tenant's
//! enqueue bucket (a token bucket refilled continuously).
//!
//! Usage is kept as tokens by model, not as money: spend is the tokens at the configured
//! prices, worked out by the caller, so the store needs no price table.
//!
//! The bucket's rule ([`EnqueueBucket::take`]) is written once; where its state lives is
//! the backend's: a row per tenant, locked while it is updated, on PostgreSQL (so every
//! process shares it), and the process's memory on SQLite (one process per file).

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Type};

use super::Result;
use super::reads::Reads;

const SECS_PER_DAY: i64 = 86_400;

/// The UTC day `t` falls on, as stored: days since 1970-01-01.
pub fn utc_day(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(SECS_PER_DAY)
}

/// The calendar date of a stored day.
pub fn day_date(day: i64) -> NaiveDate {
    DateTime::from_timestamp(day * SECS_PER_DAY, 0)
        .unwrap_or_default()
        .date_naive()
}

/// The start of the UTC day after `t`: when daily budgets start again.
pub fn next_utc_midnight(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp((utc_day(t) + 1) * SECS_PER_DAY, 0).unwrap_or(t)
}

/// Tokens one tenant's completed runs of one provider and model reported on one day.
#[derive(Clone, Debug, PartialEq, Eq, FromRow)]
pub struct ModelUsage {
    pub provider: String,
    /// The model the run named or was given (empty when it had none).
    pub model: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

/// Runs of one tenant queued and running now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantActivity {
    pub tenant: String,
    pub queued: i64,
    pub running: i64,
}

/// A tenant's enqueue bucket as stored: its level (runs that may be enqueued at once) at
/// a moment.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EnqueueBucket {
    pub level: f64,
    pub at: DateTime<Utc>,
}

/// Slack for rounding when a level is compared with one whole run.
const EPSILON: f64 = 1e-9;

impl EnqueueBucket {
    /// A bucket seen for the first time: full.
    pub fn full(capacity: f64, now: DateTime<Utc>) -> EnqueueBucket {
        EnqueueBucket {
            level: capacity,
            at: now,
        }
    }

    /// Refills at `rate` per second up to `capacity` until `now`, then takes one run if
    /// there is one: the new state, and `Err(wait)` (until one run is there) when not.
    /// A clock that went back refills nothing rather than draining.
    pub fn take(
        self,
        rate: f64,
        capacity: f64,
        now: DateTime<Utc>,
    ) -> (EnqueueBucket, std::result::Result<(), Duration>) {
        let elapsed = (now - self.at).to_std().unwrap_or_default().as_secs_f64();
        let level = (self.level + elapsed * rate).min(capacity);
        let at = now.max(self.at);
        if level + EPSILON >= 1.0 {
            (
                EnqueueBucket {
                    level: level - 1.0,
                    at,
                },
                Ok(()),
            )
        } else {
            let wait = Duration::from_secs_f64((1.0 - level) / rate);
            (EnqueueBucket { level, at }, Err(wait))
        }
    }
}

/// The per-tenant reads, the same statements on both backends.
impl<DB, T> Reads<'_, DB, T>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'r> ModelUsage: FromRow<'r, DB::Row>,
    for<'r> (String, i64, i64): FromRow<'r, DB::Row>,
{
    /// One tenant's usage on one day.
    pub(super) async fn tenant_usage(&self, tenant: &str, day: i64) -> Result<Vec<ModelUsage>> {
        Ok(sqlx::query_as(
            "SELECT provider, model, prompt_tokens, completion_tokens FROM tenant_usage
             WHERE tenant = $1 AND day = $2 ORDER BY provider, model",
        )
        .bind(tenant)
        .bind(day)
        .fetch_all(self.pool)
        .await?)
    }

    /// Runs queued and running by tenant (runs without a tenant left out).
    pub(super) async fn tenant_activity(&self) -> Result<Vec<TenantActivity>> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT tenant,
                SUM(CASE WHEN status = 'queued' THEN 1 ELSE 0 END) AS queued,
                SUM(CASE WHEN status = 'running' THEN 1 ELSE 0 END) AS running
             FROM runs WHERE status IN ('queued', 'running') AND tenant IS NOT NULL
             GROUP BY tenant ORDER BY tenant",
        )
        .fetch_all(self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(tenant, queued, running)| TenantActivity {
                tenant,
                queued,
                running,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn a_bucket_lets_its_burst_through_then_paces_at_its_rate() {
        let mut bucket = EnqueueBucket::full(3.0, at(0));
        for _ in 0..3 {
            let (next, taken) = bucket.take(1.0, 3.0, at(0));
            assert!(taken.is_ok());
            bucket = next;
        }
        let (bucket, refused) = bucket.take(1.0, 3.0, at(0));
        assert_eq!(refused, Err(Duration::from_secs(1)));
        let (bucket, half) = bucket.take(2.0, 3.0, at(0));
        assert_eq!(half, Err(Duration::from_millis(500)));
        let (_, later) = bucket.take(1.0, 3.0, at(1));
        assert!(later.is_ok(), "a second refills one run");
    }

    #[test]
    fn a_bucket_never_holds_more_than_its_capacity_nor_refills_backwards() {
        let (bucket, _) = EnqueueBucket::full(2.0, at(0)).take(1.0, 2.0, at(3600));
        assert!((bucket.level - 1.0).abs() < 1e-9, "{bucket:?}");
        let (back, _) = bucket.take(1.0, 2.0, at(0));
        assert_eq!(back.at, at(3600));
        assert!(back.level.abs() < 1e-9);
    }

    #[test]
    fn days_are_utc_and_reset_at_midnight() {
        let t = DateTime::parse_from_rfc3339("2026-12-01T23:59:59Z")
            .unwrap()
            .to_utc();
        assert_eq!(day_date(utc_day(t)).to_string(), "2026-12-01");
        assert_eq!(
            next_utc_midnight(t).to_rfc3339(),
            "2026-12-02T00:00:00+00:00"
        );
        assert_eq!(utc_day(next_utc_midnight(t)), utc_day(t) + 1);
    }
}
