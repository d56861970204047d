//! The scenarios. Each starts its own server on its own fresh database, measures, stops the
//! server and returns its figures as JSON.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use sqlx::postgres::PgPool;

use crate::client::{self, BodySpec, EventRecorder, Sent};
use crate::db;
use crate::server::{CpuSnapshot, Provider, Server, ServerConfig};
use crate::stats::{dist, now_us, r1, r3};
use crate::stub::Stub;

/// What every scenario needs.
pub struct Ctx {
    pub bin: PathBuf,
    pub workdir: PathBuf,
    pub admin_url: String,
    pub admin: PgPool,
    pub http: reqwest::Client,
    pub quick: bool,
    /// The server settings shared by the scenarios (each may change the providers).
    pub base: ServerConfig,
    /// Requests in flight for bulk enqueues.
    pub concurrency: usize,
}

/// A queue deadline far beyond any scenario, so no run is timed out for waiting in a
/// deliberately built backlog.
pub const LONG_QUEUE_TIMEOUT_MS: u64 = 3_600_000;

fn rfc3339_us(us: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_micros(us)
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Ctx {
    fn config(&self, providers: Vec<Provider>) -> ServerConfig {
        ServerConfig {
            providers,
            ..self.base.clone()
        }
    }

    async fn start(&self, name: &str, config: &ServerConfig) -> anyhow::Result<(Server, PgPool)> {
        let url = db::fresh_db(
            &self.admin,
            &self.admin_url,
            &format!("sluice_bench_{name}"),
        )
        .await?;
        let server =
            Server::start(&self.bin, &self.workdir, name, config, &url, &self.http).await?;
        let pool = db::connect(&url).await?;
        Ok((server, pool))
    }

    async fn finish(&self, name: &str, server: Server, pool: PgPool) -> anyhow::Result<usize> {
        let warnings = server.warnings();
        server.stop().await?;
        pool.close().await;
        db::drop_db(&self.admin, &format!("sluice_bench_{name}")).await;
        Ok(warnings)
    }
}

fn sim(latency_ms: u64) -> Vec<Provider> {
    vec![Provider::Sim {
        name: "sim".into(),
        latency_ms,
        extra: String::new(),
    }]
}

// ---------------------------------------------------------------------------------------
// 0. Idle RSS
// ---------------------------------------------------------------------------------------

pub async fn idle_rss(ctx: &Ctx) -> anyhow::Result<Value> {
    let cfg = ctx.config(sim(0));
    let (server, pool) = ctx.start("idle", &cfg).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss, hwm) = server.rss_mib();
    let warnings = ctx.finish("idle", server, pool).await?;
    Ok(json!({
        "method": "VmRSS of the server process from /proc/<pid>/status, 3 s after /health first answered, on an empty PostgreSQL database",
        "rss_mib": r1(rss), "peak_rss_mib": r1(hwm), "server_warnings": warnings,
    }))
}

// ---------------------------------------------------------------------------------------
// 1a. Drain
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// 1b. Steady state
// ---------------------------------------------------------------------------------------

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
    let stop = tokio_util_stop();
    let stop_rx = stop.clone();
    let sampler = tokio::spawn(async move {
        let t = Instant::now();
        let mut samples: Vec<(f64, i64)> = Vec::new();
        while !stop_rx.load(std::sync::atomic::Ordering::Relaxed) {
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
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
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

fn tokio_util_stop() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false))
}

// ---------------------------------------------------------------------------------------
// 2. Enqueue → start latency, one at a time on an idle server
// ---------------------------------------------------------------------------------------

/// Sends runs one at a time, each after the previous one's `started` event arrived, and
/// returns what was sent with the event's arrival time.
async fn one_at_a_time(
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
struct StartLatencies {
    db: Vec<f64>,
    sse: Vec<f64>,
    answer: Vec<f64>,
    db_minus_created: Vec<f64>,
    /// To the run's `finished_at`: with the zero-latency sim, the attempt's real start plus
    /// the sim's zero sleep (a timer tick).
    finished: Vec<f64>,
    /// From the claim's stamp to the attempt's end: the claim statement's round trip, the
    /// hand-over to a worker and the sim's zero sleep.
    claim_to_finish: Vec<f64>,
}

async fn start_latencies(pool: &PgPool, sent: &[(Sent, i64)]) -> anyhow::Result<StartLatencies> {
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
    let warm: std::collections::HashSet<String> = db::run_times(&pool).await?.into_keys().collect();
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

// ---------------------------------------------------------------------------------------
// 3. Dispatch overhead against a fixed 50 ms provider
// ---------------------------------------------------------------------------------------

pub async fn overhead(
    ctx: &Ctx,
    rates: &[f64],
    step: Duration,
    latency_ms: u64,
) -> anyhow::Result<Value> {
    let stub = Stub::start_fixed(Duration::from_millis(latency_ms)).await?;
    let cfg = ctx.config(stub.provider("stub"));
    let (server, pool) = ctx.start("overhead", &cfg).await?;
    let events = EventRecorder::connect(&server.base).await?;
    let body = BodySpec {
        provider: "stub",
        class: "live",
        run_at: None,
        queue_timeout_ms: Some(LONG_QUEUE_TIMEOUT_MS),
        max_attempts: None,
    }
    .build();
    // Warm-up.
    client::offer(
        &ctx.http,
        &server.base,
        &body,
        200.0,
        Duration::from_secs(1),
        512,
        client::Keep::MarkedRuns,
    )
    .await;
    db::wait_drained(&pool, Duration::from_secs(30), Duration::from_millis(50)).await?;
    let mut out = Vec::new();
    for &rate in rates {
        let res = client::offer(
            &ctx.http,
            &server.base,
            &body,
            rate,
            step,
            2048,
            client::Keep::MarkedRuns,
        )
        .await;
        let drained =
            db::wait_drained(&pool, Duration::from_secs(120), Duration::from_millis(50)).await?;
        // Let the last `completed` events arrive.
        let deadline = Instant::now() + Duration::from_secs(10);
        while res
            .sent_runs
            .iter()
            .any(|s| events.completed_at(&s.id).is_none())
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let times = db::run_times(&pool).await?;
        let served = stub.served();
        let mut by_db = Vec::new();
        let mut by_sse = Vec::new();
        let mut start_db = Vec::new();
        let mut at_provider = Vec::new();
        let mut provider_ms = Vec::new();
        let mut not_completed = 0;
        let mut missing_events = 0;
        let mut not_served = 0;
        for s in &res.sent_runs {
            // The provider's own time for this run's request, as the stub measured it.
            let Some(p) = s.mark.and_then(|m| served.get(&m)) else {
                not_served += 1;
                continue;
            };
            let own = (p.answered_us - p.arrived_us) as f64 / 1e3;
            provider_ms.push(own);
            at_provider.push((p.arrived_us - s.t_req) as f64 / 1e3);
            match times.get(&s.id) {
                Some(t) if t.status == "completed" => {
                    by_db.push((t.finished.unwrap_or(t.started) - s.t_req) as f64 / 1e3 - own);
                    start_db.push((t.started - s.t_req) as f64 / 1e3);
                }
                _ => not_completed += 1,
            }
            match events.completed_at(&s.id) {
                Some(at) => by_sse.push((at - s.t_req) as f64 / 1e3 - own),
                None => missing_events += 1,
            }
        }
        println!(
            "  {rate:>5.0} runs/s: overhead p50 {:.2} ms / p99 {:.2} ms (db); p50 {:.2} / p99 {:.2} ms (events)",
            dist(&by_db).map_or(f64::NAN, |d| d.p50),
            dist(&by_db).map_or(f64::NAN, |d| d.p99),
            dist(&by_sse).map_or(f64::NAN, |d| d.p50),
            dist(&by_sse).map_or(f64::NAN, |d| d.p99),
        );
        out.push(json!({
            "offered_rate": rate,
            "achieved_rate": res.achieved_rate().round(),
            "runs": res.ok, "errors": res.errors, "first_error": res.first_error,
            "producer_max_lag_ms": r1(res.max_lag_ms),
            "drained": drained,
            "not_completed": not_completed,
            "missing_completed_events": missing_events,
            "not_served_by_the_stub": not_served,
            "overhead_db_ms": dist(&by_db),
            "overhead_sse_ms": dist(&by_sse),
            "start_db_ms": dist(&start_db),
            "request_at_provider_ms": dist(&at_provider),
            "provider_own_ms": dist(&provider_ms),
        }));
    }
    let lagged = events.lagged();
    let received = events.events();
    events.close();
    let warnings = ctx.finish("overhead", server, pool).await?;
    stub.stop();
    Ok(json!({
        "provider_latency_ms": latency_ms,
        "step_secs": step.as_secs_f64(),
        "rates": out,
        "event_stream_lagged": lagged,
        "events_received": received,
        "server_warnings": warnings,
        "method": "open-loop producer at each offered rate against the bench's OpenAI-compatible stub provider over HTTP, which answers every request after a fixed latency and records, per request (each body carries a marker), when it arrived and when it was answered. The provider's own time is that span (the fixed latency plus its timer's overshoot), subtracted per run. overhead_db_ms: runs.finished_at (stamped by the worker when the provider call returned, before the completion is written) minus the request time minus the provider's own time; overhead_sse_ms: arrival of the run's `completed` event on GET /events (after its commit) minus the request time minus the provider's own time; request_at_provider_ms: the request's arrival at the provider minus the enqueue request time (enqueue to start, as the provider sees it); provider_own_ms: the provider's own time",
    }))
}

// ---------------------------------------------------------------------------------------
// 4. Rate-limit goodput
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// 5. Live first
// ---------------------------------------------------------------------------------------

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
