//! `POST /batches` of 10,000 runs: how many runs per second one batch request stores (the
//! whole request: body upload, validation of every run, the one transaction). The runs are
//! due far ahead, so dispatch does not compete with the insert being measured.

use std::time::Instant;

use anyhow::bail;
use serde_json::{Value, json};

use super::{Ctx, LONG_QUEUE_TIMEOUT_MS, rfc3339_us, sim};
use crate::stats::{now_us, r1, r3};

/// Runs per batch request: the default `batches.max_runs`.
const BATCH_RUNS: usize = 10_000;
/// Batch requests timed (each a new batch).
const REQUESTS: usize = 5;
const QUICK_REQUESTS: usize = 2;
/// How far ahead the runs are due.
const DUE_IN_US: i64 = 3_600_000_000;

pub async fn batch_submit(ctx: &Ctx) -> anyhow::Result<Value> {
    let cfg = ctx.config(sim(0));
    let (server, pool) = ctx.start("batches", &cfg).await?;
    let runs: Vec<Value> = (0..BATCH_RUNS)
        .map(|i| json!({"request": {"messages": [{"role": "user", "content": format!("item {i}")}]}}))
        .collect();
    let body = serde_json::to_vec(&json!({
        "provider": "sim",
        "class": "background",
        "run_at": rfc3339_us(now_us() + DUE_IN_US),
        "queue_timeout_ms": LONG_QUEUE_TIMEOUT_MS,
        "runs": runs,
    }))?;
    let requests = if ctx.quick { QUICK_REQUESTS } else { REQUESTS };
    let mut rates = Vec::with_capacity(requests);
    for _ in 0..requests {
        let t = Instant::now();
        let reply = ctx
            .http
            .post(format!("{}/batches", server.base))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
        let status = reply.status();
        let text = reply.text().await?;
        if status.as_u16() != 202 {
            bail!("POST /batches answered {status}: {text}");
        }
        rates.push(BATCH_RUNS as f64 / t.elapsed().as_secs_f64());
    }
    let warnings = ctx.finish("batches", server, pool).await?;
    rates.sort_by(f64::total_cmp);
    Ok(json!({
        "method": format!("POST /batches of {BATCH_RUNS} runs ({} KiB body), {requests} requests one after another, each timed from send to the 202; runs due in an hour", body.len() / 1024),
        "runs_per_batch": BATCH_RUNS,
        "body_kib": body.len() / 1024,
        "runs_per_s_median": r1(rates[rates.len() / 2]),
        "runs_per_s_best": r1(rates[rates.len() - 1]),
        "seconds_per_batch_median": r3(BATCH_RUNS as f64 / rates[rates.len() / 2]),
        "server_warnings": warnings,
    }))
}
