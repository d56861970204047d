//! The steady state: the highest rate an open-loop producer can offer the zero-latency sim
//! without the backlog growing, found by doubling and then bisecting the offered rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Ctx, LONG_QUEUE_TIMEOUT_MS, sim};
use crate::client::{self, BodySpec};
use crate::db;
use crate::server::CpuSnapshot;
use crate::stats::{r1, r3};

pub async fn steady(ctx: &Ctx, step: Duration, max_in_flight: usize) -> anyhow::Result<Value> {
    let mut steps: Vec<Value> = Vec::new();
    let mut best: Option<f64> = None;
    let mut first_fail: Option<f64> = None;
    let mut rate = if ctx.quick { 2000.0 } else { 1000.0 };
    let bisections = if ctx.quick { 1 } else { 2 };
    let mut bisected = 0;
    let mut warnings = 0;
    loop {
        let (ok, v, w) = steady_step(ctx, rate, step, max_in_flight).await?;
        warnings += w;
        println!(
            "  offered {rate:>6.0}/s: achieved {:>6.0}/s, max depth in last third {:>6}, {}",
            v["achieved_rate"].as_f64().unwrap_or(0.0),
            v["max_depth_last_third"],
            if ok { "sustained" } else { "NOT sustained" }
        );
        steps.push(v);
        if ok {
            best = Some(best.map_or(rate, |b: f64| b.max(rate)));
        } else {
            first_fail = Some(first_fail.map_or(rate, |f: f64| f.min(rate)));
        }
        rate = match (best, first_fail) {
            (_, None) => rate * 2.0,
            (None, Some(f)) if f > 250.0 => f / 2.0,
            (None, Some(_)) => break,
            (Some(b), Some(f)) => {
                if bisected >= bisections || f / b < 1.15 {
                    break;
                }
                bisected += 1;
                ((b + f) / 2.0 / 100.0).round() * 100.0
            }
        };
        if rate > 200_000.0 {
            break;
        }
    }
    Ok(json!({
        "highest_sustained_rate": best,
        "lowest_unsustained_rate": first_fail,
        "step_secs": step.as_secs_f64(),
        "max_in_flight": max_in_flight,
        "steps": steps,
        "server_warnings": warnings,
        "method": "each step on a fresh server and database: 2,000 warm-up runs, then an open-loop producer at a fixed offered rate (1 ms ticks, at most max_in_flight open requests) against the zero-latency sim; queue depth (queued + running) sampled every 250 ms from the database. Sustained = achieved enqueue rate >= 95% of offered, no errors, and the depth over the last third of the step below max(1000, 0.5 s x rate). After the step, the backlog's drain is watched for up to 5 s (3 s with --quick)",
    }))
}

async fn steady_step(
    ctx: &Ctx,
    rate: f64,
    step: Duration,
    max_in_flight: usize,
) -> anyhow::Result<(bool, Value, usize)> {
    let cfg = ctx.config(sim(0));
    let (server, pool) = ctx.start("steady", &cfg).await?;
    let body = BodySpec {
        provider: "sim",
        class: "live",
        run_at: None,
        queue_timeout_ms: Some(LONG_QUEUE_TIMEOUT_MS),
        max_attempts: None,
    }
    .build();
    // Warm the connection pools and the server.
    client::bulk(&ctx.http, &server.base, &body, 2000, ctx.concurrency).await;
    db::wait_drained(&pool, Duration::from_secs(60), Duration::from_millis(50)).await?;
    let sampler_pool = pool.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_rx = stop.clone();
    let sampler = tokio::spawn(async move {
        let t = Instant::now();
        let mut samples: Vec<(f64, i64)> = Vec::new();
        while !stop_rx.load(Ordering::Relaxed) {
            if let Ok(d) = db::unfinished(&sampler_pool, None).await {
                samples.push((t.elapsed().as_secs_f64(), d));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        samples
    });
    let cpu0 = CpuSnapshot::take(server.pid);
    let activity = db::ActivitySampler::start(
        ctx.admin.clone(),
        "sluice_bench_steady".into(),
        Duration::from_millis(100),
    );
    let res = client::offer(
        &ctx.http,
        &server.base,
        &body,
        rate,
        step,
        max_in_flight,
        client::Keep::Nothing,
    )
    .await;
    let activity = activity.finish(8).await;
    let cores = CpuSnapshot::take(server.pid).cores_since(&cpu0, res.secs);
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await?;
    let health: Value = match ctx.http.get(format!("{}/health", server.base)).send().await {
        Ok(r) => r.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    // The backlog left when the producer stopped, and how fast it drains on its own.
    let backlog = db::unfinished(&pool, None).await?;
    let t_end = Instant::now();
    let cpu1 = CpuSnapshot::take(server.pid);
    let watch = Duration::from_secs(if ctx.quick { 3 } else { 5 });
    let drained = db::wait_drained(&pool, watch, Duration::from_millis(50)).await?;
    let drain_secs = t_end.elapsed().as_secs_f64();
    let drain_cores = CpuSnapshot::take(server.pid).cores_since(&cpu1, drain_secs);
    let left = db::unfinished(&pool, None).await?;
    let warnings = ctx.finish("steady", server, pool).await?;
    let cut = step.as_secs_f64() * 2.0 / 3.0;
    let last_third: Vec<i64> = samples
        .iter()
        .filter(|(t, _)| *t >= cut)
        .map(|(_, d)| *d)
        .collect();
    let max_last = last_third.iter().copied().max().unwrap_or(0);
    let max_all = samples.iter().map(|(_, d)| *d).max().unwrap_or(0);
    let bound = (rate * 0.5).max(1000.0) as i64;
    let achieved = res.achieved_rate();
    let ok = res.errors == 0 && achieved >= 0.95 * rate && max_last <= bound;
    Ok((
        ok,
        json!({
            "offered_rate": rate,
            "achieved_rate": achieved.round(),
            "sent": res.sent, "ok": res.ok, "errors": res.errors, "first_error": res.first_error,
            "producer_max_lag_ms": r1(res.max_lag_ms),
            "max_depth": max_all,
            "max_depth_last_third": max_last,
            "depth_bound": bound,
            "depth_samples": samples.iter().map(|(t, d)| json!([r1(*t), d])).collect::<Vec<_>>(),
            "cores_used": cores,
            "backlog_at_end": backlog,
            "backlog_drain": {
                "drained": drained,
                "secs": r3(drain_secs),
                "runs_per_sec": ((backlog - left) as f64 / drain_secs.max(1e-9)).round(),
                "cores_used": drain_cores,
            },
            "health_at_end_of_step": if ok { Value::Null } else { health },
            "pg_activity_during_step": activity,
            "sustained": ok,
        }),
        warnings,
    ))
}
