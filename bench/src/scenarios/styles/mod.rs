//! Rate-limit styles: the adaptive limiter of a release build against a stand-in provider
//! in each way real providers limit and state their rate (a minute bucket in OpenAI or
//! Anthropic headers, a per-minute limit enforced per second, bare 429s, a wrong or exact
//! configured `rpm`, a limit halved and restored, a token limit). The stand-in, the cases
//! and the measures are the test suite's own (`tests/limiter_styles/`), included here, so
//! the benchmark and the tests judge the same behaviour; the benchmark runs longer, at a
//! higher rate, on PostgreSQL, against the targets the tests only approach.

#[path = "../../../../tests/limiter_styles/measure.rs"]
mod measure;
#[path = "../../../../tests/limiter_styles/plan.rs"]
mod plan;
#[path = "../../../../tests/limiter_styles/standin.rs"]
mod standin;
mod table;

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use super::Ctx;
use crate::server::Provider;
use crate::stats::{r1, r3};
use plan::{CASES, Case, Drive, Timing};
use standin::StandIn;

pub use table::{markdown, replace_in_doc};

/// The true limit every case starts at, requests a second (1,200 a minute, a low paid tier).
pub const RATE: f64 = 20.0;
/// `dispatch.slots` of the server: as in the tests, and near the shipped default (20).
const SLOTS: usize = 16;
/// Enqueue calls in flight while topping up the backlog.
const FEED_CONCURRENCY: usize = 16;

/// A full run: about 5½ minutes for the nine cases (20 s windows).
const FULL: Timing = Timing::with_windows(
    Duration::from_secs(20),
    Duration::from_secs(20),
    Duration::from_secs(20),
);
/// A quick run: about 2½ minutes (8 s windows).
const QUICK: Timing = Timing::with_windows(
    Duration::from_secs(8),
    Duration::from_secs(12),
    Duration::from_secs(12),
);

/// Runs every case, one after the other, each on its own server and database.
pub async fn styles(ctx: &Ctx) -> anyhow::Result<Value> {
    let timing = if ctx.quick { QUICK } else { FULL };
    let mut cases = Vec::new();
    for case in CASES {
        let t = std::time::Instant::now();
        let figures = run_case(ctx, *case, timing).await?;
        println!(
            "  {:<16} {:>5.1} s  {}",
            case.name,
            t.elapsed().as_secs_f64(),
            table::one_line(&figures)
        );
        cases.push(figures);
    }
    Ok(json!({
        "requests_per_sec": RATE,
        "slots": SLOTS,
        "timing_secs": {
            "warm_up": timing.warm_up.as_secs_f64(),
            "window": timing.window.as_secs_f64(),
            "after_burst": timing.after_burst.as_secs_f64(),
            "settle": timing.settle.as_secs_f64(),
            "settle_bare": timing.settle_bare.as_secs_f64(),
            "before_halving": timing.before_halving.as_secs_f64(),
            "halved": timing.halved.as_secs_f64(),
        },
        "cases": cases,
        "method": "the test suite's stand-in provider (tests/limiter_styles/standin.rs) on 127.0.0.1: a bucket refilled continuously on its own clock, R = 20 requests/s (the token case: 82 tokens a call, 1,640 tokens/s), stating it per style; Sluice (release, PostgreSQL, 16 slots, no limiter settings) works through a backlog kept topped up. Goodput and refusals are counted at the stand-in in each phase's steady-state window (from max(warm-up, burst spent + after_burst), or from settle after a change); converged is the start of the first 2 s window after the start or the change with >= 90% of R and <= 5% refused",
    }))
}

async fn run_case(ctx: &Ctx, case: Case, timing: Timing) -> anyhow::Result<Value> {
    let rate = case.rate(RATE);
    let standin = StandIn::new(case.style, rate);
    let root = standin.clone().serve().await;
    let mut config = ctx.config(vec![Provider::Toml(case.provider_toml(&root, RATE))]);
    config.slots = SLOTS;
    let db = format!("styles_{}", case.name.replace('-', "_"));
    let (server, pool) = ctx.start(&db, &config).await?;
    let body = serde_json::to_vec(&case.enqueue_body())?;
    let url = format!("{}/enqueue", server.base);
    let enqueue = |n: usize| {
        let (http, url, body) = (&ctx.http, &url, &body);
        async move {
            futures::stream::iter(0..n)
                .map(|_| async move {
                    let reply = http
                        .post(url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .ok()?;
                    let v: Value = reply.json().await.ok()?;
                    v["id"].as_str().map(str::to_string)
                })
                .buffer_unordered(FEED_CONCURRENCY)
                .filter_map(|id| async move { id })
                .collect::<Vec<String>>()
                .await
        }
    };
    let drive = Drive::new(case, timing, rate);
    // Generous: a case ends on its own schedule; this only bounds one that does not.
    let longest = timing.warm_up
        + timing.before_halving
        + timing.halved
        + case.last_phase(&timing)
        + timing.window;
    let (ids, stopped) = drive.feed(&standin, SLOTS, longest, enqueue).await;
    let health: Value = ctx
        .http
        .get(format!("{}/health", server.base))
        .send()
        .await?
        .json()
        .await?;
    let warnings = ctx.finish(&db, server, pool).await?;
    let calls = standin.calls();
    let refused = calls.iter().filter(|c| c.status == 429).count();
    let burst_spent = standin
        .drained_at()
        .map(|at| r3(at.duration_since(drive.started).as_secs_f64()));
    let phases: Vec<Value> = drive
        .phases(&standin, stopped)
        .iter()
        .map(|p| {
            json!({
                "rate": p.rate,
                "goodput_share_of_r": r3(p.steady.goodput),
                "refused_share": r3(p.steady.refused),
                "window_secs": r1(p.steady.seconds),
                "converged_after_secs": p.converged.map(|d| r3(d.as_secs_f64())),
            })
        })
        .collect();
    Ok(json!({
        "name": case.name,
        "title": case.title,
        "configured_rpm": case.rpm_times.map(|t| (RATE * 60.0 * t).round()),
        "limiter_settings": case.limiter,
        "phases": phases,
        "runs_enqueued": ids.len(),
        "calls": calls.len(),
        "refused_total": refused,
        "stated_burst_spent_after_secs": burst_spent,
        "provider_at_end": health["providers"][0],
        "server_warnings": warnings,
    }))
}
