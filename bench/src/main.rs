//! `sluice-bench`: runs Sluice's benchmark scenarios against a release build of the server on
//! a PostgreSQL cluster it is given (`scripts/bench.sh` starts a throwaway one with default
//! durability), runs the peers (graphile-worker, pg-boss) on the same cluster, prints a
//! markdown table and writes the figures with the machine's description as JSON.

mod client;
mod db;
mod options;
mod peers;
mod provenance;
mod report;
mod scenarios;
mod server;
mod stats;
mod stub;

use std::fmt::Display;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use serde_json::{Value, json};

use crate::options::{
    Cli, GOODPUT_RPM, LIVE_FIRST_PROVIDER_LATENCY_MS, LIVE_FIRST_SLOTS,
    OVERHEAD_PROVIDER_LATENCY_MS, OVERHEAD_RATES, STEADY_MAX_IN_FLIGHT, Sizes,
};
use crate::report::{Conditions, Figures};
use crate::scenarios::Ctx;
use crate::server::ServerConfig;

/// Single-row commits timed to describe the cluster's durability cost.
const COMMIT_PROBES: usize = 300;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let started = Instant::now();
    let sizes = Sizes::for_run(&cli);
    let (ctx, conditions) = prepare(&cli).await?;
    report::print_opening(&cli, &conditions);

    let mut figures = Figures::default();
    let n = sizes.drain_runs;
    run_scenario(
        &cli,
        &mut figures,
        "idle",
        "Idle RSS",
        scenarios::idle_rss(&ctx),
    )
    .await;
    run_scenario(
        &cli,
        &mut figures,
        "drain",
        format!("1. Drain of {n} runs (zero-latency sim)"),
        scenarios::drain(&ctx, n, cli.drain_slots),
    )
    .await;
    run_scenario(
        &cli,
        &mut figures,
        "steady",
        "1b. Steady state: highest offered rate sustained",
        scenarios::steady(&ctx, sizes.steady_step, STEADY_MAX_IN_FLIGHT),
    )
    .await;
    run_scenario(
        &cli,
        &mut figures,
        "latency",
        "2. Enqueue → start latency, one at a time, idle server",
        scenarios::latency(&ctx, sizes.latency_samples, sizes.latency_warmup),
    )
    .await;
    run_scenario(
        &cli,
        &mut figures,
        "overhead",
        format!("3. Dispatch overhead against a fixed {OVERHEAD_PROVIDER_LATENCY_MS} ms provider"),
        scenarios::overhead(
            &ctx,
            &OVERHEAD_RATES,
            sizes.overhead_step,
            OVERHEAD_PROVIDER_LATENCY_MS,
        ),
    )
    .await;
    run_scenario(
        &cli,
        &mut figures,
        "goodput",
        format!("4. Rate-limit goodput (stub at {GOODPUT_RPM} requests/minute)"),
        scenarios::goodput(&ctx, GOODPUT_RPM, sizes.goodput_window),
    )
    .await;
    run_scenario(
        &cli,
        &mut figures,
        "live",
        "5. Live first: live queue wait idle and under a background flood",
        scenarios::live_first(
            &ctx,
            LIVE_FIRST_SLOTS,
            LIVE_FIRST_PROVIDER_LATENCY_MS,
            sizes.live_idle_probes,
            sizes.live_flood,
        ),
    )
    .await;
    run_scenario(
        &cli,
        &mut figures,
        "fair",
        "7. Fairness: tenant B's queue wait, idle and behind tenant A's backlog",
        scenarios::fairness(&ctx),
    )
    .await;
    run_scenario(
        &cli,
        &mut figures,
        "batches",
        "8. POST /batches of 10,000 runs",
        scenarios::batch_submit(&ctx),
    )
    .await;
    run_scenario(
        &cli,
        &mut figures,
        "listing",
        "9. A listing page at 1,000,000 runs",
        scenarios::listing_page(&ctx),
    )
    .await;
    if cli.names("styles") {
        run_scenario(
            &cli,
            &mut figures,
            "styles",
            format!(
                "10. Rate-limit styles (stand-in at R = {} requests/s)",
                scenarios::STYLES_RATE
            ),
            scenarios::styles(&ctx),
        )
        .await;
    }
    if cli.wants("peers") {
        println!("\n== 6. Peers on the same PostgreSQL: graphile-worker 0.17.3, pg-boss 10.4.2 ==");
        let t = Instant::now();
        figures.peers = peers::run_all(&cli, &sizes, &conditions.workdir).await?;
        figures
            .timings
            .insert("peers".into(), json!(stats::r1(t.elapsed().as_secs_f64())));
    }

    let total_secs = started.elapsed().as_secs_f64();
    report::publish(&cli, &sizes, &conditions, &figures, total_secs)
}

/// Connects to the cluster, describes it and the machine, and sets up what every scenario
/// shares.
async fn prepare(cli: &Cli) -> anyhow::Result<(Ctx, Conditions)> {
    let workdir = std::env::temp_dir().join(format!("sluice-bench.{}", std::process::id()));
    std::fs::create_dir_all(&workdir)?;
    let admin = db::connect(&cli.pg_url).await?;
    let pg = db::info(&admin).await?;
    let commit_ms = stats::dist(&db::commit_latency(&admin, COMMIT_PROBES).await?);
    let sluice_bin = std::fs::canonicalize(&cli.sluice_bin)
        .with_context(|| format!("{} not found", cli.sluice_bin.display()))?;
    let base = ServerConfig {
        slots: cli.slots,
        claim_batch: cli.claim_batch,
        complete_batch: cli.complete_batch,
        enqueue_batch: cli.enqueue_batch,
        max_connections: cli.max_connections,
        providers: Vec::new(),
        log: cli.server_log.clone(),
    };
    let ctx = Ctx {
        bin: sluice_bin.clone(),
        workdir: workdir.clone(),
        admin_url: cli.pg_url.clone(),
        admin,
        http: client::http_client(),
        quick: cli.quick,
        base: base.clone(),
        concurrency: cli.concurrency,
    };
    let conditions = Conditions {
        machine: provenance::machine(),
        pg,
        commit_ms,
        sluice_bin,
        base,
        workdir,
    };
    Ok((ctx, conditions))
}

/// Runs one scenario if `--only` selects it, printing its title and how long it took, and
/// keeps its figures, or its error, under its name: a failed scenario does not stop the run.
async fn run_scenario(
    cli: &Cli,
    figures: &mut Figures,
    name: &str,
    title: impl Display,
    scenario: impl Future<Output = anyhow::Result<Value>>,
) {
    if !cli.wants(name) {
        return;
    }
    println!("\n== {title} ==");
    let t = Instant::now();
    let result = scenario.await;
    let secs = t.elapsed().as_secs_f64();
    figures.timings.insert(name.into(), json!(stats::r1(secs)));
    match result {
        Ok(v) => {
            println!("  done in {secs:.1} s");
            figures.results.insert(name.into(), v);
        }
        Err(e) => {
            println!("  FAILED after {secs:.1} s: {e:#}");
            figures
                .results
                .insert(name.into(), json!({"error": format!("{e:#}")}));
        }
    }
}
