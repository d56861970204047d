//! A listing page at 1,000,000 runs: the time of `GET /runs` pages (newest first, 50 rows)
//! on a table of a million runs, unfiltered, deep in the keyset, and under each filter
//! that has an index. The table is filled with one SQL statement (a million enqueues over
//! HTTP would measure the enqueue), then analysed.

use std::time::Instant;

use anyhow::bail;
use serde_json::{Map, Value, json};

use super::{Ctx, sim};
use crate::stats::{dist, r1};

const RUNS: u64 = 1_000_000;
const QUICK_RUNS: u64 = 100_000;
/// Timed requests per page shape.
const SAMPLES: usize = 50;
/// Pages followed before the deep page is timed.
const DEEP_PAGES: usize = 20;

/// A million runs over the last day: one in 50 failed, one in 10 of tenant `t1`, the
/// first 10,000 in one batch, the rest completed.
const FILL: &str = "INSERT INTO runs (id, status, provider, model, class, priority, tenant, batch,
        request, max_attempts, attempts, due_at, created_at, finished_at)
    SELECT gen_random_uuid(),
        CASE WHEN g % 50 = 0 THEN 'failed' ELSE 'completed' END,
        'sim', 'sim-1', (g % 2)::int2, 5,
        CASE WHEN g % 10 = 0 THEN 't1' END,
        CASE WHEN g <= 10000 THEN 'b1' END,
        '{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}'::json, 5, 1,
        now() - make_interval(secs => g * 0.08), now() - make_interval(secs => g * 0.08),
        now() - make_interval(secs => g * 0.08)
    FROM generate_series(1, $1) AS g";

pub async fn listing_page(ctx: &Ctx) -> anyhow::Result<Value> {
    let n = if ctx.quick { QUICK_RUNS } else { RUNS };
    let cfg = ctx.config(sim(0));
    let (server, pool) = ctx.start("listing", &cfg).await?;
    let t = Instant::now();
    sqlx::query(FILL).bind(n as i64).execute(&pool).await?;
    sqlx::query("VACUUM ANALYZE runs").execute(&pool).await?;
    let fill_s = t.elapsed().as_secs_f64();
    println!("  filled {n} runs in {fill_s:.1} s");

    let mut deep = String::from("/runs?limit=50");
    for _ in 0..DEEP_PAGES {
        let page = get(ctx, &server.base, &deep).await?;
        let Some(cursor) = page["next_cursor"].as_str() else {
            bail!("the listing ended before {DEEP_PAGES} pages");
        };
        deep = format!("/runs?limit=50&cursor={cursor}");
    }
    let shapes = [
        ("first_page", "/runs?limit=50".to_string()),
        ("deep_page", deep),
        ("status_failed", "/runs?limit=50&status=failed".to_string()),
        ("tenant", "/runs?limit=50&tenant=t1".to_string()),
        ("batch", "/runs?limit=50&batch=b1".to_string()),
        (
            "provider_and_class",
            "/runs?limit=50&provider=sim&class=background".to_string(),
        ),
        ("max_limit", "/runs?limit=500".to_string()),
    ];
    let mut pages = Map::new();
    for (name, path) in shapes {
        let mut ms = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            let t = Instant::now();
            get(ctx, &server.base, &path).await?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        pages.insert(name.into(), json!({"path": path, "ms": dist(&ms)}));
    }
    let warnings = ctx.finish("listing", server, pool).await?;
    Ok(json!({
        "method": format!("GET /runs pages over HTTP on {n} runs filled by one INSERT … SELECT and VACUUM ANALYZE; {SAMPLES} requests per page shape, one at a time; the deep page follows the cursor {DEEP_PAGES} pages in"),
        "runs": n,
        "fill_s": r1(fill_s),
        "pages": pages,
        "server_warnings": warnings,
    }))
}

async fn get(ctx: &Ctx, base: &str, path: &str) -> anyhow::Result<Value> {
    let reply = ctx.http.get(format!("{base}{path}")).send().await?;
    let status = reply.status();
    let body: Value = reply.json().await?;
    if status.as_u16() != 200 {
        bail!("GET {path} answered {status}: {body}");
    }
    Ok(body)
}
