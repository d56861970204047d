//! Rate-limit goodput: how close the server comes to a provider's unannounced rate limit
//! without being refused, against the stub's token bucket.

use std::time::Duration;

use anyhow::bail;
use serde_json::{Value, json};

use super::{Ctx, LONG_QUEUE_TIMEOUT_MS};
use crate::client::{self, BodySpec};
use crate::db;
use crate::stats::{r1, r3};
use crate::stub::Stub;

pub async fn goodput(ctx: &Ctx, rpm: f64, window: Duration) -> anyhow::Result<Value> {
    let stub = Stub::start(rpm).await?;
    let cfg = ctx.config(stub.provider("limited"));
    let (server, pool) = ctx.start("goodput", &cfg).await?;
    let body = BodySpec {
        provider: "limited",
        class: "live",
        run_at: None,
        queue_timeout_ms: Some(LONG_QUEUE_TIMEOUT_MS),
        max_attempts: Some(50),
    }
    .build();
    // A backlog larger than the window can complete, so the provider is never idle.
    let backlog = (rpm / 60.0 * window.as_secs_f64() * 1.5).ceil() as u64 + 100;
    let t_start = stub.elapsed();
    let enq = client::bulk(&ctx.http, &server.base, &body, backlog, ctx.concurrency).await;
    if enq.errors + enq.refused > 0 {
        bail!("goodput backlog enqueue failed: {:?}", enq.first_error);
    }
    let t_rest = window.saturating_sub(Duration::from_secs_f64(stub.elapsed() - t_start));
    tokio::time::sleep(t_rest).await;
    let t_end = stub.elapsed();
    let hits = stub.hits();
    let statuses = db::status_counts(&pool).await?;
    let warnings = ctx.finish("goodput", server, pool).await?;
    stub.stop();
    let in_window = |from: f64, to: f64| {
        let h: Vec<_> = hits.iter().filter(|h| h.at >= from && h.at < to).collect();
        let ok = h.iter().filter(|h| h.ok).count();
        (ok, h.len() - ok)
    };
    let secs = t_end - t_start;
    let (ok, refused) = in_window(t_start, t_end);
    let half = t_start + secs / 2.0;
    let (ok2, refused2) = in_window(half, t_end);
    let per_min = ok as f64 / secs * 60.0;
    let per_min2 = ok2 as f64 / (t_end - half) * 60.0;
    let share = |ok: usize, refused: usize| {
        if ok + refused == 0 {
            0.0
        } else {
            refused as f64 / (ok + refused) as f64
        }
    };
    // Completions per 10 s, to show how the rate settles.
    let mut timeline = Vec::new();
    let mut t = t_start;
    while t < t_end - 0.5 {
        let (o, r) = in_window(t, (t + 10.0).min(t_end));
        timeline.push(json!({"from_s": r1(t - t_start), "ok": o, "refused": r}));
        t += 10.0;
    }
    Ok(json!({
        "rpm_limit": rpm,
        "window_secs": r3(secs),
        "backlog_runs": backlog,
        "completions_per_min": r1(per_min),
        "goodput_share_of_r": r3(per_min / rpm),
        "attempts": ok + refused, "ok": ok, "refused": refused,
        "refused_share": r3(share(ok, refused)),
        "second_half": {
            "completions_per_min": r1(per_min2),
            "goodput_share_of_r": r3(per_min2 / rpm),
            "refused_share": r3(share(ok2, refused2)),
        },
        "timeline_10s": timeline,
        "statuses_at_end": statuses,
        "server_warnings": warnings,
        "method": "stub OpenAI-compatible provider in the bench: token bucket of R per minute (1 s of burst), 429 with retry-after in whole seconds (rounded up) beyond it, no x-ratelimit headers; Sluice's provider has no configured rpm (it must find the pace). A backlog of runs (max_attempts 50) is enqueued at the start; the stub counts answered (200) and refused (429) requests over the window",
    }))
}
