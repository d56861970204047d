//! The drain: N runs stored ahead of a common start time T0, then drained by the server
//! against the zero-latency sim; the headline throughput figure.

use std::time::Duration;

use anyhow::bail;
use serde_json::{Value, json};

use super::{Ctx, LONG_QUEUE_TIMEOUT_MS, rfc3339_us, sim};
use crate::client::{self, BodySpec};
use crate::db;
use crate::server::{CpuSnapshot, ServerConfig};
use crate::stats::{now_us, r1, r3};

pub async fn drain(ctx: &Ctx, n: u64, slots: usize) -> anyhow::Result<Value> {
    // A zero-latency provider needs many attempts in flight to keep both the claim and
    // the completion statements busy: the drain runs with its own slot count.
    let cfg = ServerConfig {
        slots,
        ..ctx.config(sim(0))
    };
    // Pilot: how fast does this machine enqueue over HTTP? It sets how far ahead the
    // drain's common start time T0 must lie so that every run is stored before any starts.
    let pilot_n = (n / 10).clamp(1000, 5000);
    let (server, pool) = ctx.start("pilot", &cfg).await?;
    let later = BodySpec {
        provider: "sim",
        class: "live",
        run_at: Some(rfc3339_us(now_us() + 3_600_000_000)),
        queue_timeout_ms: Some(LONG_QUEUE_TIMEOUT_MS),
        max_attempts: None,
    }
    .build();
    let pilot = client::bulk(&ctx.http, &server.base, &later, pilot_n, ctx.concurrency).await;
    ctx.finish("pilot", server, pool).await?;
    if pilot.errors + pilot.refused > 0 {
        bail!(
            "pilot enqueue failed: {:?} {:?}",
            pilot.first_error,
            pilot.first_refusal
        );
    }
    let pilot_rate = pilot.ok as f64 / pilot.secs;

    let (server, pool) = ctx.start("drain", &cfg).await?;
    let margin_s = n as f64 / pilot_rate * 1.6 + 3.0;
    let t0 = now_us() + (margin_s * 1e6) as i64;
    let body = BodySpec {
        provider: "sim",
        class: "live",
        run_at: Some(rfc3339_us(t0)),
        queue_timeout_ms: Some(LONG_QUEUE_TIMEOUT_MS),
        max_attempts: None,
    }
    .build();
    println!(
        "  enqueueing {n} runs due at T0 = now + {margin_s:.1} s (pilot: {pilot_rate:.0} enqueues/s)"
    );
    let enq = client::bulk(&ctx.http, &server.base, &body, n, ctx.concurrency).await;
    let enq_done = now_us();
    if enq.errors + enq.refused > 0 {
        bail!("{} enqueues failed: {:?}", enq.errors, enq.first_error);
    }
    // As the peers' drains do before they start their workers.
    sqlx::query("VACUUM ANALYZE").execute(&pool).await?;
    sqlx::query("CHECKPOINT").execute(&pool).await?;
    let ready = now_us();
    let overlap = ready > t0;
    if overlap {
        println!(
            "  warning: enqueueing ended {:.1} s after T0; the drain overlapped it",
            (ready - t0) as f64 / 1e6
        );
    }
    let wait = Duration::from_micros((t0 - now_us()).max(0) as u64);
    tokio::time::sleep(wait).await;
    let cpu0 = CpuSnapshot::take(server.pid);
    let activity = db::ActivitySampler::start(
        ctx.admin.clone(),
        "sluice_bench_drain".into(),
        Duration::from_millis(50),
    );
    let drained =
        db::wait_drained(&pool, Duration::from_secs(600), Duration::from_millis(20)).await?;
    let activity = activity.finish(8).await;
    let observed_done = now_us();
    let cores = CpuSnapshot::take(server.pid).cores_since(&cpu0, (observed_done - t0) as f64 / 1e6);
    let (_, hwm) = server.rss_mib();
    let span = db::drain_span(&pool).await?;
    let statuses = db::status_counts(&pool).await?;
    let warnings = ctx.finish("drain", server, pool).await?;
    if !drained {
        bail!("runs still unfinished after 600 s: {statuses:?}");
    }
    if span.completed != n as i64 || span.total != n as i64 {
        bail!("expected {n} completed runs, have {statuses:?}");
    }
    let secs = (span.last_finish - span.first_start) as f64 / 1e6;
    let from_t0 = (observed_done - t0) as f64 / 1e6;
    Ok(json!({
        "n": n,
        "runs_per_sec": (n as f64 / secs).round(),
        "secs_first_start_to_last_finish": r3(secs),
        "secs_t0_to_observed_all_finished": r3(from_t0),
        "runs_per_sec_t0_to_observed": (n as f64 / from_t0).round(),
        "first_start_after_t0_ms": r3((span.first_start - t0) as f64 / 1e3),
        "enqueue": {
            "concurrency": ctx.concurrency,
            "secs": r3(enq.secs),
            "runs_per_sec": (n as f64 / enq.secs).round(),
            "pilot_runs_per_sec": pilot_rate.round(),
            "vacuum_checkpoint_ms": r3((ready - enq_done) as f64 / 1e3),
            "overlapped_drain": overlap,
        },
        "statuses": statuses,
        "cores_used_during_drain": cores,
        "pg_activity_during_drain": activity,
        "server_peak_rss_mib": r1(hwm),
        "server_warnings": warnings,
        "method": "all N runs enqueued over HTTP with run_at = T0 (after enqueueing ends), then VACUUM ANALYZE and CHECKPOINT; runs/s = N / (max(runs.finished_at) - min(runs.started_at)) from the database, all N verified completed",
    }))
}
