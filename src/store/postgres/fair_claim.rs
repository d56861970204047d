//! The fair claim on PostgreSQL: finds the groups (tenant, batch) waiting in each lane with
//! a loose index scan, and, when they need a rotation, reads what the store's fair pick
//! works from, lets it choose, claims its choice and stores the rotations it moved, all
//! under the claim lock, so the claims of every process continue one rotation.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::Row;
use std::sync::LazyLock;
use uuid::Uuid;

use super::{CLAIM_LOCK, LIVE_NOT_PAUSED, PgStore, STARTABLE, claim_sql, claimed_runs};
use crate::run::{Class, WorkerId};
use crate::store::fair::{self, Candidate, Group, GroupName, InFlight, PickInput, Rotation};
use crate::store::{ClaimBounds, ClaimedRun, ProviderQuota, Result, RunEvent, StoreError};

/// The (tenant, batch) groups with runs queued in each lane of the providers `$1`: one
/// index probe per group on `runs_fair`, however many runs each group holds.
const WAITING_GROUPS: &str = "
WITH RECURSIVE lanes AS (
    SELECT p AS provider, k.class::int2 AS class
    FROM unnest($1::text[]) AS p CROSS JOIN (VALUES (0), (1)) AS k(class)
), groups AS (
    SELECT l.provider, l.class, f.t, f.b FROM lanes l CROSS JOIN LATERAL (
        SELECT COALESCE(r.tenant, '') AS t, COALESCE(r.batch, '') AS b FROM runs r
        WHERE r.status = 'queued' AND r.provider = l.provider AND r.class = l.class
        ORDER BY COALESCE(r.tenant, ''), COALESCE(r.batch, '') LIMIT 1) f
    UNION ALL
    SELECT g.provider, g.class, f.t, f.b FROM groups g CROSS JOIN LATERAL (
        SELECT COALESCE(r.tenant, '') AS t, COALESCE(r.batch, '') AS b FROM runs r
        WHERE r.status = 'queued' AND r.provider = g.provider AND r.class = g.class
          AND (COALESCE(r.tenant, ''), COALESCE(r.batch, '')) > (g.t, g.b)
        ORDER BY COALESCE(r.tenant, ''), COALESCE(r.batch, '') LIMIT 1) f
)
SELECT provider, class, t, b FROM groups";

/// Which of the providers `$2` have live runs due now (`$1`). A lateral probe per
/// provider rather than `EXISTS`: the generic plan PostgreSQL settles on after a few
/// executions turned the `EXISTS` into a scan of the whole queue.
static LIVE_DUE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT p FROM unnest($2::text[]) AS p CROSS JOIN LATERAL (
            SELECT 1 FROM runs l WHERE l.provider = p AND l.class = 0
              AND l.status = 'queued' AND l.due_at <= $1 AND {LIVE_NOT_PAUSED}
            LIMIT 1) due"
    )
});

/// The first runs of each group (`$2`…`$6`: provider, class, tenant, batch, how many),
/// startable now (`$1`), in dispatch order. Not locked: most are read only to compare, and
/// locking every candidate of a hundred groups cost more than the rest of the claim; the
/// claim locks the chosen ones and takes those still queued.
static GROUP_RUNS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT g.i, c.id, c.priority, c.due_at, c.concurrency_key
        FROM unnest($2::text[], $3::int2[], $4::text[], $5::text[], $6::int8[])
            WITH ORDINALITY AS g(provider, class, t, b, n, i)
        CROSS JOIN LATERAL (
            SELECT c.id, c.priority, c.due_at, c.concurrency_key FROM runs c
            WHERE {STARTABLE} AND c.provider = g.provider AND c.class = g.class
              AND COALESCE(c.tenant, '') = g.t AND COALESCE(c.batch, '') = g.b
            ORDER BY c.priority, c.due_at
            LIMIT g.n) c"
    )
});

/// The claim of the runs the fair pick chose (`$5`) that are still queued: every other
/// fair or counting claim waits for the claim lock, but a live claim that counts nothing
/// takes no lock and may have taken one meanwhile.
static CHOSEN_CLAIM: LazyLock<String> = LazyLock::new(|| {
    claim_sql(
        "picked AS (
            SELECT c.id FROM runs c WHERE c.id = ANY($5::uuid[]) AND c.status = 'queued'
              AND c.due_at <= $1
            LIMIT $2
            FOR UPDATE SKIP LOCKED)",
    )
});

impl PgStore {
    /// The groups waiting in the lanes of `quotas`' providers that may start runs.
    pub(super) async fn waiting_groups(&self, quotas: &[ProviderQuota]) -> Result<Vec<GroupName>> {
        let providers: Vec<&str> = quotas
            .iter()
            .filter(|q| q.max > 0)
            .map(|q| q.provider.as_str())
            .collect();
        let rows = sqlx::query(WAITING_GROUPS)
            .bind(&providers)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                let class: i16 = row.try_get("class")?;
                Ok(GroupName {
                    provider: row.try_get("provider")?,
                    class: Class::from_rank(class)
                        .ok_or_else(|| StoreError::Corrupt(format!("class {class}")))?,
                    tenant: row.try_get("t")?,
                    batch: row.try_get("b")?,
                })
            })
            .collect()
    }

    /// Claims by the fair pick over `names`, the groups waiting.
    pub(super) async fn claim_fairly(
        &self,
        worker: WorkerId,
        limit: usize,
        bounds: ClaimBounds<'_>,
        names: Vec<GroupName>,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<(Vec<ClaimedRun>, Vec<RunEvent>)> {
        let quotas = bounds.quotas;
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CLAIM_LOCK)
            .execute(&mut *tx)
            .await?;
        let counts = sqlx::query_as(fair::IN_FLIGHT_SQL)
            .fetch_all(&mut *tx)
            .await?;
        let in_flight = InFlight::from_rows(counts);
        let providers: Vec<&str> = quotas.iter().map(|q| q.provider.as_str()).collect();
        let live_due: HashSet<String> = sqlx::query_scalar(LIVE_DUE.as_str())
            .bind(now)
            .bind(&providers)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
        let rooms = fair::lane_rooms(quotas, &in_flight, &live_due);
        let sizes = fair::fetch_sizes(&names, &rooms, bounds.shares, bounds.key_caps);
        let asked: Vec<(&GroupName, usize)> =
            names.iter().zip(sizes).filter(|(_, n)| *n > 0).collect();
        let rows = sqlx::query(GROUP_RUNS.as_str())
            .bind(now)
            .bind(
                asked
                    .iter()
                    .map(|(g, _)| g.provider.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                asked
                    .iter()
                    .map(|(g, _)| g.class.rank())
                    .collect::<Vec<_>>(),
            )
            .bind(
                asked
                    .iter()
                    .map(|(g, _)| g.tenant.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                asked
                    .iter()
                    .map(|(g, _)| g.batch.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(asked.iter().map(|(_, n)| *n as i64).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?;
        let mut runs: Vec<Vec<Candidate>> = vec![Vec::new(); asked.len()];
        for row in &rows {
            let i: i64 = row.try_get("i")?;
            let due: DateTime<Utc> = row.try_get("due_at")?;
            runs[(i - 1) as usize].push(Candidate {
                id: row.try_get("id")?,
                priority: row.try_get("priority")?,
                due_micros: due.timestamp_micros(),
                key: row.try_get("concurrency_key")?,
            });
        }
        let groups = asked
            .iter()
            .zip(runs)
            .map(|((name, n), runs)| Group {
                name: (*name).clone(),
                more: runs.len() == *n,
                runs,
            })
            .collect();
        let stored: Vec<(String, String)> = sqlx::query_as(
            "SELECT scope, rotation::text FROM fair_rotations WHERE scope = ANY($1)",
        )
        .bind(fair::scopes_of(&names))
        .fetch_all(&mut *tx)
        .await?;
        let mut rotations: HashMap<String, Rotation> = HashMap::new();
        for (scope, value) in stored {
            let rotation = Rotation::decode(&scope, &value)?;
            rotations.insert(scope, rotation);
        }
        let picked = fair::pick(PickInput {
            bounds,
            rooms,
            in_flight,
            groups,
            rotations,
            limit,
        });
        let ids: Vec<Uuid> = picked.ids;
        let claimed = sqlx::query(CHOSEN_CLAIM.as_str())
            .bind(now)
            .bind(limit as i64)
            .bind(worker.0)
            .bind(lease_until)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?;
        let (scopes, values): (Vec<String>, Vec<String>) = picked
            .rotations
            .into_iter()
            .map(|(scope, rotation)| (scope, rotation.encode()))
            .unzip();
        sqlx::query(
            "INSERT INTO fair_rotations (scope, rotation)
             SELECT s, r::json FROM unnest($1::text[], $2::text[]) AS t(s, r)
             ON CONFLICT (scope) DO UPDATE SET rotation = EXCLUDED.rotation",
        )
        .bind(&scopes)
        .bind(&values)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        claimed_runs(&claimed, now)
    }
}
