//! Idle RSS: the server's resident memory a few seconds after it starts on an empty
//! database, before any run.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Ctx, sim};
use crate::stats::r1;

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
