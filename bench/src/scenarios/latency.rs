//! Enqueue → start latency, one run at a time on an idle server; the one-at-a-time probe
//! and its start latencies are shared with the live-first scenario.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use sqlx::postgres::PgPool;

use super::Ctx;
use crate::client::{self, BodySpec, EventRecorder, Sent};
use crate::db;
use crate::server::Server;
use crate::stats::{dist, now_us, r1, r3};
use crate::stub::Stub;

/// Sends runs one at a time, each after the previous one's `started` event arrived, and
/// returns what was sent with the event's arrival time.
pub(super) async fn one_at_a_time(
    ctx: &Ctx,
    server: &Server,
    events: &EventRecorder,
    body: &client::Body,
    count: usize,
    gap: Duration,
    mark_from: Option<u64>,
) -> anyhow::Result<Vec<(Sent, i64)>> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let mark = mark_from.map(|m| m + i as u64);
        let marked = mark.map(|m| body.marked(m));
        let t_req = now_us();
        let id = client::enqueue(&ctx.http, &server.base, marked.as_ref().unwrap_or(body)).await?;
        let t_resp = now_us();
        let seen = events.wait_started(&id, Duration::from_secs(30)).await?;
        out.push((
            Sent {
                id,
                t_req,
                t_resp,
                mark,
            },
            seen,
        ));
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
    Ok(out)
}

/// Latencies (ms) from each request to its start: by the database's attempt `started_at`,
/// by the `started` event's arrival, and of the 202 answer.
pub(super) struct StartLatencies {
    pub(super) db: Vec<f64>,
    pub(super) sse: Vec<f64>,
    answer: Vec<f64>,
    db_minus_created: Vec<f64>,
    /// To the run's `finished_at`: with the zero-latency sim, the attempt's real start plus
    /// the sim's zero sleep (a timer tick).
    finished: Vec<f64>,
    /// From the claim's stamp to the attempt's end: the claim statement's round trip, the
    /// hand-over to a worker and the sim's zero sleep.
    claim_to_finish: Vec<f64>,
}

pub(super) async fn start_latencies(
    pool: &PgPool,
    sent: &[(Sent, i64)],
) -> anyhow::Result<StartLatencies> {
    let times = db::run_times(pool).await?;
    let mut l = StartLatencies {
        db: Vec::new(),
        sse: Vec::new(),
        answer: Vec::new(),
        db_minus_created: Vec::new(),
        finished: Vec::new(),
        claim_to_finish: Vec::new(),
    };
    for (s, seen) in sent {
        let t = times
            .get(&s.id)
            .with_context(|| format!("run {} has no first attempt in the database", s.id))?;
        l.db.push((t.started - s.t_req) as f64 / 1e3);
        l.sse.push((seen - s.t_req) as f64 / 1e3);
        l.answer.push((s.t_resp - s.t_req) as f64 / 1e3);
        l.db_minus_created
            .push((t.started - t.created) as f64 / 1e3);
        if let Some(fin) = t.finished {
            l.finished.push((fin - s.t_req) as f64 / 1e3);
            l.claim_to_finish.push((fin - t.started) as f64 / 1e3);
        }
    }
    Ok(l)
}

pub async fn latency(ctx: &Ctx, samples: usize, warmup: usize) -> anyhow::Result<Value> {
    // A zero-latency provider over HTTP that records when each request arrives: the
    // run's start as the provider sees it.
    let stub = Stub::start_fixed(Duration::ZERO).await?;
    let cfg = ctx.config(stub.provider("stub"));
    let (server, pool) = ctx.start("latency", &cfg).await?;
    let events = EventRecorder::connect(&server.base).await?;
    let body = BodySpec {
        provider: "stub",
        class: "live",
        run_at: None,
        queue_timeout_ms: None,
        max_attempts: None,
    }
    .build();
    one_at_a_time(
        ctx,
        &server,
        &events,
        &body,
        warmup,
        Duration::ZERO,
        Some(1_000_000),
    )
    .await?;
    db::wait_drained(&pool, Duration::from_secs(30), Duration::from_millis(50)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let warm: HashSet<String> = db::run_times(&pool).await?.into_keys().collect();
    let t = Instant::now();
    let sent = one_at_a_time(
        ctx,
        &server,
        &events,
        &body,
        samples,
        Duration::ZERO,
        Some(0),
    )
    .await?;
    let secs = t.elapsed().as_secs_f64();
    db::wait_drained(&pool, Duration::from_secs(30), Duration::from_millis(50)).await?;
    let sent: Vec<(Sent, i64)> = sent
        .into_iter()
        .filter(|(s, _)| !warm.contains(&s.id))
        .collect();
    let l = start_latencies(&pool, &sent).await?;
    let served = stub.served();
    let at_provider: Vec<f64> = sent
        .iter()
        .filter_map(|(s, _)| {
            let p = served.get(&s.mark?)?;
            Some((p.arrived_us - s.t_req) as f64 / 1e3)
        })
        .collect();
    let (rss, _) = server.rss_mib();
    events.close();
    let warnings = ctx.finish("latency", server, pool).await?;
    stub.stop();
    Ok(json!({
        "samples": sent.len(), "warmup": warmup, "secs": r3(secs),
        "request_at_provider_ms": dist(&at_provider),
        "db_ms": dist(&l.db),
        "sse_ms": dist(&l.sse),
        "enqueue_answer_ms": dist(&l.answer),
        "db_started_minus_created_ms": dist(&l.db_minus_created),
        "db_finished_ms": dist(&l.finished),
        "db_claim_stamp_to_finished_ms": dist(&l.claim_to_finish),
        "server_rss_mib_after": r1(rss),
        "server_warnings": warnings,
        "method": "one run at a time against the bench's OpenAI-compatible stub provider over HTTP answering at once, the next sent when the previous one's `started` event arrived on GET /events. request_at_provider_ms: the arrival of the run's request at the provider minus the client's wall-clock time just before the POST (the headline: the start as the provider sees it, the commit that starts the run and the provider call included); db_ms: run_attempts.started_at (server wall clock, microseconds, stamped when the commit that starts the run or the claim is made, before it) minus the same; sse_ms: arrival of the `started` event at the client minus the same; enqueue_answer_ms: the 202 round trip; db_finished_ms: runs.finished_at (the zero-latency attempt's end) minus the request time, an upper bound on the real start",
    }))
}
