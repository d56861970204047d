//! Reads for the API, admission and health (runs, depths, backlogs, key loads), and the provider state.

use super::*;
use crate::run::Class;
use crate::store::codec::{
    ACTIVE_COUNTS_SQL, ATTEMPTS_SQL, BUSIEST_KEYS_SQL, IDEMPOTENT_SQL, RunRecord, active_counts,
    key_loads,
};

impl PgStore {
    pub(in crate::store) async fn get_run(&self, id: RunId) -> Result<Option<RunView>> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1");
        let run: Option<RunRecord<DateTime<Utc>>> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
        let Some(run) = run else {
            return Ok(None);
        };
        let attempts = sqlx::query_as(ATTEMPTS_SQL)
            .bind(id.0)
            .fetch_all(&self.pool)
            .await?;
        Ok(Some(run.decode(attempts)?))
    }

    pub(in crate::store) async fn provider_backlog(
        &self,
        provider: &str,
        now: DateTime<Utc>,
    ) -> Result<(i64, i64)> {
        Ok(sqlx::query_as(
            "SELECT
                (SELECT count(*) FROM runs WHERE provider = $1 AND class = 0
                   AND status = 'queued' AND due_at <= $2),
                (SELECT count(*) FROM runs WHERE provider = $1 AND class = 1
                   AND status = 'queued')",
        )
        .bind(provider)
        .bind(now)
        .fetch_one(&self.pool)
        .await?)
    }

    pub(in crate::store) async fn session_background_since(
        &self,
        session: &str,
        key: Option<&str>,
        since: DateTime<Utc>,
    ) -> Result<(i64, Option<DateTime<Utc>>)> {
        Ok(sqlx::query_as(
            "SELECT count(*), min(created_at) FROM runs
             WHERE session = $1 AND class = 1 AND concurrency_key IS NOT DISTINCT FROM $2
               AND created_at > $3",
        )
        .bind(session)
        .bind(key)
        .bind(since)
        .fetch_one(&self.pool)
        .await?)
    }

    pub(in crate::store) async fn busiest_keys(&self, limit: usize) -> Result<Vec<KeyLoad>> {
        let rows = sqlx::query_as(BUSIEST_KEYS_SQL)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        key_loads(rows)
    }

    pub(in crate::store) async fn find_idempotent(&self, idem_key: &str) -> Result<Option<RunId>> {
        let id: Option<Uuid> = sqlx::query_scalar(IDEMPOTENT_SQL)
            .bind(idem_key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(id.map(RunId))
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

    pub(in crate::store) async fn load_provider_state(&self) -> Result<Vec<(String, String)>> {
        Ok(
            sqlx::query_as("SELECT provider, limiter::text FROM provider_state")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    pub(in crate::store) async fn count_active(&self) -> Result<Vec<(Class, Status, i64)>> {
        let rows = sqlx::query_as(ACTIVE_COUNTS_SQL)
            .fetch_all(&self.pool)
            .await?;
        active_counts(rows)
    }

    pub(in crate::store) async fn next_due_at(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(
            sqlx::query_scalar("SELECT min(due_at) FROM runs WHERE status = 'queued'")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}
