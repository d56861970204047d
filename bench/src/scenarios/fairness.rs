//! Fairness: how long tenant B's runs wait in the queue on an idle server, and while tenant
//! A's 20,000-run backlog drains through the same provider and slots.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};
use sqlx::postgres::PgPool;

use super::{Ctx, LONG_QUEUE_TIMEOUT_MS, sim};
use crate::client::{self, Body, BodySpec};
use crate::server::{Server, ServerConfig};
use crate::stats::{dist, r3};

/// Worker slots of the server under test.
const SLOTS: usize = 20;
/// The sim provider's latency: a backlog of 20,000 runs takes minutes to drain.
const PROVIDER_LATENCY_MS: u64 = 200;
/// Tenant A's backlog (a tenth of it with `--quick`).
const BACKLOG: u64 = 20_000;
/// B's runs enqueued together in each round.
const B_PER_ROUND: usize = 10;
/// Rounds of B's runs, idle and behind the backlog.
const ROUNDS: usize = 10;
/// Pause between rounds, so each round meets the queue as it is, not B's previous round.
const BETWEEN_ROUNDS: Duration = Duration::from_millis(200);
/// Longest a round may take to start all its runs.
const ROUND_WITHIN: Duration = Duration::from_secs(120);
/// How often a round looks whether its runs started.
const POLL_EVERY: Duration = Duration::from_millis(20);

pub async fn fairness(ctx: &Ctx) -> anyhow::Result<Value> {
    let backlog = if ctx.quick { BACKLOG / 10 } else { BACKLOG };
    let cfg = ServerConfig {
        slots: SLOTS,
        claim_batch: ctx.base.claim_batch.min(SLOTS),
        ..ctx.config(sim(PROVIDER_LATENCY_MS))
    };
    let (server, pool) = ctx.start("fair", &cfg).await?;
    let idle = rounds(ctx, &server, &pool, "b_idle").await?;

    let a = with_tenant(&spec(Some(LONG_QUEUE_TIMEOUT_MS)), "a");
    let t_backlog = Instant::now();
    let enqueued = client::bulk(&ctx.http, &server.base, &a, backlog, ctx.concurrency).await;
    let enqueue_secs = t_backlog.elapsed().as_secs_f64();
    let a_waiting_before = a_queued(&pool).await?;
    let behind = rounds(ctx, &server, &pool, "b").await?;
    let a_waiting_after = a_queued(&pool).await?;
    if a_waiting_after == 0 {
        bail!("A's backlog drained before B's rounds ended: the figure would not be behind it");
    }
    let warnings = ctx.finish("fair", server, pool).await?;
    Ok(json!({
        "slots": SLOTS,
        "provider_latency_ms": PROVIDER_LATENCY_MS,
        "a_backlog_runs": backlog,
        "a_enqueued": enqueued.ok,
        "a_enqueue_errors": enqueued.errors,
        "a_enqueue_secs": r3(enqueue_secs),
        "a_queued_when_b_began": a_waiting_before,
        "a_queued_when_b_ended": a_waiting_after,
        "b_runs_per_round": B_PER_ROUND,
        "idle": {"runs": idle.len(), "queue_wait_ms": dist(&idle)},
        "behind_backlog": {"runs": behind.len(), "queue_wait_ms": dist(&behind)},
        "server_warnings": warnings,
        "method": "tenant B enqueues rounds of 10 live runs at once (open mode, `tenant` in the body), first on an idle server, then while tenant A's backlog of live runs (enqueued before B's rounds) waits; queue wait = the run's started_at minus its due_at, from the database. The claim rotates across tenants within a provider, class and priority, so B's runs take every other start while A's backlog waits",
    }))
}

fn spec(queue_timeout_ms: Option<u64>) -> BodySpec<'static> {
    BodySpec {
        provider: "sim",
        class: "live",
        run_at: None,
        queue_timeout_ms,
        max_attempts: None,
    }
}

/// The body of `spec` with `tenant` set.
fn with_tenant(spec: &BodySpec<'_>, tenant: &str) -> Body {
    let mut v: Value = serde_json::from_slice(&spec.build().0).expect("a JSON body");
    v["tenant"] = tenant.into();
    Body(Arc::new(serde_json::to_vec(&v).expect("json")))
}

/// [`ROUNDS`] rounds of B's runs as `tenant`; the queue wait of each run, in ms.
async fn rounds(
    ctx: &Ctx,
    server: &Server,
    pool: &PgPool,
    tenant: &str,
) -> anyhow::Result<Vec<f64>> {
    let body = with_tenant(&spec(None), tenant);
    let mut waits = Vec::new();
    for _ in 0..ROUNDS {
        let sends = (0..B_PER_ROUND).map(|_| client::enqueue(&ctx.http, &server.base, &body));
        let ids: Vec<String> = futures::future::try_join_all(sends).await?;
        let started = Instant::now();
        loop {
            let rows: Vec<(f64,)> = sqlx::query_as(
                "SELECT (extract(epoch FROM started_at - due_at) * 1000)::float8 FROM runs
                 WHERE id = ANY($1::uuid[]) AND started_at IS NOT NULL",
            )
            .bind(&ids)
            .fetch_all(pool)
            .await?;
            if rows.len() == ids.len() {
                waits.extend(rows.into_iter().map(|(ms,)| ms));
                break;
            }
            if started.elapsed() > ROUND_WITHIN {
                bail!("{tenant}'s round did not start within {ROUND_WITHIN:?}");
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
        tokio::time::sleep(BETWEEN_ROUNDS).await;
    }
    Ok(waits)
}

async fn a_queued(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM runs WHERE tenant = 'a' AND status = 'queued'")
            .fetch_one(pool)
            .await?,
    )
}
