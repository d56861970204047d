//! The quota-aware, fair pick on SQLite: reads what the fair pick works from (runs in
//! flight, the waiting groups and their first runs, the stored rotations) inside the single
//! writer's transaction, lets the store's fair pick choose, and stores the rotations it
//! moved. Nothing else can claim meanwhile: there is one writer.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::{Sqlite, Transaction};
use uuid::Uuid;

use super::ms;
use crate::run::Class;
use crate::store::fair::{self, Candidate, Group, GroupName, InFlight, PickInput, Rotation};
use crate::store::{ClaimBounds, Result};

/// The startable runs of a paused batch wait: `runs` is the run.
const NOT_PAUSED: &str = "(runs.batch IS NULL OR NOT EXISTS (
    SELECT 1 FROM batches pb WHERE pb.id = runs.batch AND pb.paused))";

pub(super) async fn pick(
    tx: &mut Transaction<'static, Sqlite>,
    bounds: ClaimBounds<'_>,
    now: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<Uuid>> {
    let quotas = bounds.quotas;
    let in_flight = in_flight(tx).await?;
    let mut live_due = HashSet::new();
    for q in quotas.iter().filter(|q| q.max > 0) {
        let due: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT EXISTS (SELECT 1 FROM runs WHERE provider = ? AND class = 0
                AND status = 'queued' AND due_at <= ? AND {NOT_PAUSED})"
        )))
        .bind(&q.provider)
        .bind(ms(now))
        .fetch_one(&mut **tx)
        .await?;
        if due {
            live_due.insert(q.provider.clone());
        }
    }
    let rooms = fair::lane_rooms(quotas, &in_flight, &live_due);
    let mut names = Vec::new();
    for ((provider, class), _) in rooms.iter().filter(|(_, room)| **room > 0) {
        names.extend(waiting_groups(tx, provider, *class).await?);
    }
    let sizes = fair::fetch_sizes(&names, &rooms, bounds.shares, bounds.key_caps);
    let mut groups = Vec::with_capacity(names.len());
    for (name, size) in names.iter().zip(sizes) {
        if size > 0 {
            groups.push(group_runs(tx, name, size, now).await?);
        }
    }
    // One group per lane and no cap: nobody to take turns with, so, as on PostgreSQL, no
    // rotation is read or moved.
    let rotating = fair::needs_rotation(&names, bounds.shares);
    let rotations = if rotating {
        read_rotations(tx, &fair::scopes_of(&names)).await?
    } else {
        HashMap::new()
    };
    let picked = fair::pick(PickInput {
        bounds,
        rooms,
        in_flight,
        groups,
        rotations,
        limit,
    });
    for (scope, rotation) in picked.rotations.iter().filter(|_| rotating) {
        sqlx::query(
            "INSERT INTO fair_rotations (scope, rotation) VALUES (?, ?)
             ON CONFLICT (scope) DO UPDATE SET rotation = excluded.rotation",
        )
        .bind(scope)
        .bind(rotation.encode())
        .execute(&mut **tx)
        .await?;
    }
    Ok(picked.ids)
}

async fn in_flight(tx: &mut Transaction<'static, Sqlite>) -> Result<InFlight> {
    let rows = sqlx::query_as(fair::IN_FLIGHT_SQL)
        .fetch_all(&mut **tx)
        .await?;
    Ok(InFlight::from_rows(rows))
}

/// The (tenant, batch) groups with runs queued in a lane, one index probe each.
async fn waiting_groups(
    tx: &mut Transaction<'static, Sqlite>,
    provider: &str,
    class: Class,
) -> Result<Vec<GroupName>> {
    let mut found = Vec::new();
    let mut after: Option<(String, String)> = None;
    loop {
        let next: Option<(String, String)> = sqlx::query_as(
            "SELECT COALESCE(tenant, ''), COALESCE(batch, '') FROM runs
             WHERE status = 'queued' AND provider = ?1 AND class = ?2
               AND (?3 IS NULL OR (COALESCE(tenant, ''), COALESCE(batch, '')) > (?3, ?4))
             ORDER BY COALESCE(tenant, ''), COALESCE(batch, '') LIMIT 1",
        )
        .bind(provider)
        .bind(class.rank())
        .bind(after.as_ref().map(|a| &a.0))
        .bind(after.as_ref().map(|a| &a.1))
        .fetch_optional(&mut **tx)
        .await?;
        let Some((tenant, batch)) = next else {
            return Ok(found);
        };
        found.push(GroupName {
            provider: provider.to_string(),
            class,
            tenant: tenant.clone(),
            batch: batch.clone(),
        });
        after = Some((tenant, batch));
    }
}

/// The first `size` startable runs of a group, in dispatch order.
async fn group_runs(
    tx: &mut Transaction<'static, Sqlite>,
    name: &GroupName,
    size: usize,
    now: DateTime<Utc>,
) -> Result<Group> {
    let rows: Vec<(Uuid, i16, i64, Option<String>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, priority, due_at, concurrency_key FROM runs
             WHERE status = 'queued' AND provider = ?2 AND class = ?3
               AND COALESCE(tenant, '') = ?4 AND COALESCE(batch, '') = ?5 AND due_at <= ?1
               AND (queue_deadline_at IS NULL OR queue_deadline_at > ?1 OR started_at IS NOT NULL)
               AND {NOT_PAUSED}
             ORDER BY priority, due_at LIMIT ?6"
    )))
    .bind(ms(now))
    .bind(&name.provider)
    .bind(name.class.rank())
    .bind(&name.tenant)
    .bind(&name.batch)
    .bind(size as i64)
    .fetch_all(&mut **tx)
    .await?;
    Ok(Group {
        name: name.clone(),
        more: rows.len() == size,
        runs: rows
            .into_iter()
            .map(|(id, priority, due_ms, key)| Candidate {
                id,
                priority,
                due_micros: due_ms.saturating_mul(1000),
                key,
            })
            .collect(),
    })
}

async fn read_rotations(
    tx: &mut Transaction<'static, Sqlite>,
    scopes: &[String],
) -> Result<HashMap<String, Rotation>> {
    let mut out = HashMap::new();
    for scope in scopes {
        let stored: Option<String> =
            sqlx::query_scalar("SELECT rotation FROM fair_rotations WHERE scope = ?")
                .bind(scope)
                .fetch_optional(&mut **tx)
                .await?;
        if let Some(stored) = stored {
            out.insert(scope.clone(), Rotation::decode(scope, &stored)?);
        }
    }
    Ok(out)
}
