//! Live first: how long a live run waits in the queue, idle and while a flood of background
//! runs is enqueued and drained.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

use super::latency::{one_at_a_time, start_latencies};
use super::{Ctx, LONG_QUEUE_TIMEOUT_MS};
use crate::client::{self, BodySpec, EventRecorder};
use crate::db;
use crate::server::{Provider, ServerConfig};
use crate::stats::{dist, r3};

pub async fn live_first(
    ctx: &Ctx,
    slots: usize,
    latency_ms: u64,
    idle_probes: usize,
    flood: u64,
) -> anyhow::Result<Value> {
    // The flood must be admitted to be a flood: the provider's background queue is raised
    // to hold it, and background may use at most half the slots (the shipped default is 1
    // in flight and 100 queued, which would refuse all but 100 of the flood).
    let background_in_flight = slots / 2;
    let extra = format!(
        "background_max_in_flight = {background_in_flight}\nbackground_queue_max = {}\n",
        flood + 1000
    );
    let cfg = ServerConfig {
        slots,
        claim_batch: ctx.base.claim_batch.min(slots),
        ..ctx.config(vec![Provider::Sim {
            name: "sim".into(),
            latency_ms,
            extra: extra.clone(),
        }])
    };
    let (server, pool) = ctx.start("live", &cfg).await?;
    let events = EventRecorder::connect(&server.base).await?;
    let live = BodySpec {
        provider: "sim",
        class: "live",
        run_at: None,
        queue_timeout_ms: None,
        max_attempts: None,
    }
    .build();
    let background = BodySpec {
        provider: "sim",
        class: "background",
        run_at: None,
        queue_timeout_ms: Some(LONG_QUEUE_TIMEOUT_MS),
        max_attempts: None,
    }
    .build();
    one_at_a_time(ctx, &server, &events, &live, 20, Duration::ZERO, None).await?;
    db::wait_drained(&pool, Duration::from_secs(30), Duration::from_millis(50)).await?;
    let idle = one_at_a_time(
        ctx,
        &server,
        &events,
        &live,
        idle_probes,
        Duration::from_millis(5),
        None,
    )
    .await?;
    db::wait_drained(&pool, Duration::from_secs(30), Duration::from_millis(50)).await?;

    // The flood: background runs enqueued as fast as the server takes them; live probes one
    // at a time from the moment the flood begins until no background run is left.
    let (http, base, bg) = (ctx.http.clone(), server.base.clone(), background.clone());
    let conc = ctx.concurrency;
    let t_flood = Instant::now();
    let flooding = tokio::spawn(async move { client::bulk(&http, &base, &bg, flood, conc).await });
    let mut under = Vec::new();
    let mut enqueued_secs = None;
    loop {
        let mut batch = one_at_a_time(
            ctx,
            &server,
            &events,
            &live,
            10,
            Duration::from_millis(5),
            None,
        )
        .await?;
        under.append(&mut batch);
        if flooding.is_finished() && enqueued_secs.is_none() {
            enqueued_secs = Some(t_flood.elapsed().as_secs_f64());
        }
        if enqueued_secs.is_some() && db::unfinished(&pool, Some(1)).await? == 0 {
            break;
        }
        if t_flood.elapsed() > Duration::from_secs(300) {
            bail!("the background flood did not drain within 300 s");
        }
    }
    let flood_secs = t_flood.elapsed().as_secs_f64();
    let flood_res = flooding.await?;
    db::wait_drained(&pool, Duration::from_secs(60), Duration::from_millis(50)).await?;
    let li = start_latencies(&pool, &idle).await?;
    let lu = start_latencies(&pool, &under).await?;
    events.close();
    let warnings = ctx.finish("live", server, pool).await?;
    Ok(json!({
        "slots": slots,
        "provider_latency_ms": latency_ms,
        "provider_config": extra,
        "flood_background_runs": flood,
        "flood_admitted": flood_res.ok,
        "flood_refused_429": flood_res.refused,
        "flood_first_refusal": flood_res.first_refusal,
        "flood_enqueue_errors": flood_res.errors,
        "flood_enqueue_secs": enqueued_secs.map(r3),
        "flood_drain_secs": r3(flood_secs),
        "idle": {"probes": idle.len(), "queue_wait_db_ms": dist(&li.db), "queue_wait_sse_ms": dist(&li.sse)},
        "under_flood": {"probes": under.len(), "queue_wait_db_ms": dist(&lu.db), "queue_wait_sse_ms": dist(&lu.sse)},
        "server_warnings": warnings,
        "method": "live runs sent one at a time (5 ms apart), idle and then while a flood of background runs is enqueued and drained; queue wait = attempt started_at (db) or `started` event arrival (sse) minus the request time. The server orders live before background in its claim (class, then priority, then due time), refuses background enqueues while live runs of the provider are due (429 live_backlog) and caps background runs in flight per provider; a live run under the flood still waits for a slot to come free when every slot is busy",
    }))
}
