//! The quota-aware pick on SQLite: the same rules as the PostgreSQL statement, applied in
//! Rust inside the single writer's transaction (nothing else can claim meanwhile).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{Sqlite, Transaction};
use uuid::Uuid;

use super::ms;
use crate::store::{KeyCaps, ProviderQuota, Result};

/// (class, priority, due_at, id, concurrency_key)
type Candidate = (i64, i64, i64, Uuid, Option<String>);

/// How many candidates to read beyond the room left, so runs whose key is at its cap do not
/// hide claimable runs behind them.
const OVERFETCH: i64 = 64;

pub(super) async fn pick(
    tx: &mut Transaction<'static, Sqlite>,
    quotas: &[ProviderQuota],
    key_caps: KeyCaps,
    now: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<Uuid>> {
    let running: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT provider, class, count(*) FROM runs WHERE status = 'running' GROUP BY 1, 2",
    )
    .fetch_all(&mut **tx)
    .await?;
    let running: HashMap<(String, i64), i64> =
        running.into_iter().map(|(p, c, n)| ((p, c), n)).collect();
    let keyed: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT concurrency_key, class, count(*) FROM runs
         WHERE status = 'running' AND concurrency_key IS NOT NULL GROUP BY 1, 2",
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut keyed: HashMap<(String, i64), i64> =
        keyed.into_iter().map(|(k, c, n)| ((k, c), n)).collect();

    let mut picked: Vec<Candidate> = Vec::new();
    for q in quotas.iter().filter(|q| q.max > 0) {
        let in_flight = |class: i64| {
            running
                .get(&(q.provider.clone(), class))
                .copied()
                .unwrap_or(0)
        };
        let live_room = match q.live_cap {
            Some(cap) => (i64::from(cap) - in_flight(0)).max(0).min(q.max as i64),
            None => q.max as i64,
        };
        let live = candidates(tx, &q.provider, 0, now, live_room).await?;
        let mut taken = take(live, live_room, key_caps.live, 0, &mut keyed, &mut picked);
        let live_due: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM runs l WHERE l.provider = ? AND l.class = 0
                            AND l.status = 'queued' AND l.due_at <= ?
                            AND (l.batch IS NULL OR NOT EXISTS (
                                SELECT 1 FROM batches pb WHERE pb.id = l.batch AND pb.paused)))",
        )
        .bind(&q.provider)
        .bind(ms(now))
        .fetch_one(&mut **tx)
        .await?;
        if live_due {
            continue;
        }
        let bg_room = (i64::from(q.background_cap) - in_flight(1))
            .max(0)
            .min(q.max as i64 - taken);
        let background = candidates(tx, &q.provider, 1, now, bg_room).await?;
        taken += take(
            background,
            bg_room,
            key_caps.background,
            1,
            &mut keyed,
            &mut picked,
        );
        debug_assert!(taken <= q.max as i64);
    }
    picked.sort_by_key(|c| (c.0, c.1, c.2));
    picked.truncate(limit);
    Ok(picked.into_iter().map(|c| c.3).collect())
}

async fn candidates(
    tx: &mut Transaction<'static, Sqlite>,
    provider: &str,
    class: i64,
    now: DateTime<Utc>,
    room: i64,
) -> Result<Vec<Candidate>> {
    if room <= 0 {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(
        "SELECT class, priority, due_at, id, concurrency_key FROM runs
         WHERE status = 'queued' AND due_at <= ?1 AND provider = ?2 AND class = ?3
           AND (queue_deadline_at IS NULL OR queue_deadline_at > ?1 OR started_at IS NOT NULL)
           AND (batch IS NULL OR NOT EXISTS (
                SELECT 1 FROM batches pb WHERE pb.id = runs.batch AND pb.paused))
         ORDER BY priority, due_at LIMIT ?4",
    )
    .bind(ms(now))
    .bind(provider)
    .bind(class)
    .bind(room + OVERFETCH)
    .fetch_all(&mut **tx)
    .await?)
}

/// Takes up to `room` candidates in order, skipping those whose key is at its cap.
fn take(
    candidates: Vec<Candidate>,
    room: i64,
    key_cap: Option<u32>,
    class: i64,
    keyed: &mut HashMap<(String, i64), i64>,
    picked: &mut Vec<Candidate>,
) -> i64 {
    let mut taken = 0;
    for c in candidates {
        if taken >= room {
            break;
        }
        if let (Some(key), Some(cap)) = (&c.4, key_cap) {
            let n = keyed.entry((key.clone(), class)).or_insert(0);
            if *n >= i64::from(cap) {
                continue;
            }
            *n += 1;
        }
        picked.push(c);
        taken += 1;
    }
    taken
}
