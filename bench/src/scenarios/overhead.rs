//! Dispatch overhead: what the server adds to a run's time against a provider that answers
//! after a fixed latency, at several offered rates.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Ctx, LONG_QUEUE_TIMEOUT_MS};
use crate::client::{self, BodySpec, EventRecorder};
use crate::db;
use crate::stats::{dist, r1};
use crate::stub::Stub;

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
