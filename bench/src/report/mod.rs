//! The report of a run: the line that opens it, the markdown table and the headline figures
//! printed at the end, and the JSON and markdown files written (`bench/results/latest.*`
//! for a full run).

mod table;
mod tenancy;

use std::path::PathBuf;

use serde_json::{Map, Value, json};

use crate::db::PgInfo;
use crate::options::{Cli, LIVE_FIRST_SLOTS, OVERHEAD_JUDGED_RATE, Sizes};
use crate::provenance;
use crate::scenarios;
use crate::server::ServerConfig;
use crate::stats::{self, Dist};
use table::{TableContext, f, peer_drains};

/// The figures of a run as the scenarios and the peers return them, each under its name.
#[derive(Default)]
pub struct Figures {
    /// Each scenario's figures, or `{"error": …}` where it failed.
    pub results: Map<String, Value>,
    /// Seconds each scenario (and the peers) took.
    pub timings: Map<String, Value>,
    pub peers: Map<String, Value>,
}

/// What the run was measured on and with.
pub struct Conditions {
    pub machine: Value,
    pub pg: PgInfo,
    /// One durable single-row commit on the cluster.
    pub commit_ms: Option<Dist>,
    pub sluice_bin: PathBuf,
    /// The server settings shared by the scenarios.
    pub base: ServerConfig,
    /// Where the server logs and the peers' outputs are kept.
    pub workdir: PathBuf,
}

/// Prints the line that opens a run: the machine, the cluster and its commit latency.
pub fn print_opening(cli: &Cli, conditions: &Conditions) {
    let (machine, pg) = (&conditions.machine, &conditions.pg);
    println!(
        "sluice-bench ({}): {} cores, {} GiB, PostgreSQL {} (synchronous_commit={}, fsync={}), logs in {}",
        cli.mode(),
        machine["nproc"],
        machine["mem_total_gib"],
        pg.version.split_whitespace().nth(1).unwrap_or("?"),
        pg.settings["synchronous_commit"],
        pg.settings["fsync"],
        conditions.workdir.display()
    );
    if let Some(c) = &conditions.commit_ms {
        println!(
            "  one durable single-row commit on this cluster: p50 {:.2} ms, p99 {:.2} ms",
            c.p50, c.p99
        );
    }
}

/// Prints the table and the headline figures, and writes the JSON (`--out`) and the table
/// (`--md`).
pub fn publish(
    cli: &Cli,
    sizes: &Sizes,
    conditions: &Conditions,
    figures: &Figures,
    total_secs: f64,
) -> anyhow::Result<()> {
    let mut md = table::markdown(
        figures,
        &TableContext {
            cli,
            sizes,
            total_secs,
        },
    );
    if let Some(styles) = figures
        .results
        .get("styles")
        .filter(|s| s.get("error").is_none())
    {
        let styles_md = scenarios::styles_markdown(styles);
        md.push_str(&format!("\n### Rate-limit styles\n\n{styles_md}"));
        if let Some(doc) = &cli.doc {
            write_styles_into(doc, &styles_md)?;
        }
    }
    println!("\n{md}");
    let summary = summary(cli, sizes, conditions, figures, total_secs);
    println!("{}", serde_json::to_string_pretty(&summary)?);
    let report = full_report(cli, sizes, conditions, figures, total_secs, summary, &md);
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(out) = &cli.out {
        if let Some(dir) = out.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(out, text + "\n")?;
        println!("JSON written to {}", out.display());
    }
    if let Some(path) = &cli.md {
        std::fs::write(path, &md)?;
    }
    println!(
        "total {total_secs:.1} s; server logs and peer outputs in {}",
        conditions.workdir.display()
    );
    Ok(())
}

/// Rewrites the rate-limit styles table of `doc` (BENCHMARKS.md) between its markers.
fn write_styles_into(doc: &std::path::Path, table: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(doc)?;
    match scenarios::replace_in_doc(&text, table) {
        Some(updated) => {
            std::fs::write(doc, updated)?;
            println!("rate-limit styles table written into {}", doc.display());
        }
        None => println!(
            "note: {} has no rate-limit styles markers; its table was not rewritten",
            doc.display()
        ),
    }
    Ok(())
}

/// The headline figures with what they were measured on, printed and kept in the file.
fn summary(
    cli: &Cli,
    sizes: &Sizes,
    conditions: &Conditions,
    figures: &Figures,
    total_secs: f64,
) -> Value {
    let (machine, pg) = (&conditions.machine, &conditions.pg);
    let res = &figures.results;
    let (gw_drain, pgb_drain) = peer_drains(&Value::Object(figures.peers.clone()));
    let percentiles = |v: &Value, qs: &[&str]| {
        Value::Object(qs.iter().map(|q| (q.to_string(), v[q].clone())).collect())
    };
    json!({
        "machine": {"nproc": machine["nproc"], "mem_total_gib": machine["mem_total_gib"], "kernel": machine["kernel"]},
        "n": sizes.drain_runs,
        "bulk_enqueue_concurrency": cli.concurrency,
        "postgres": {
            "version": pg.version.split_whitespace().take(2).collect::<Vec<_>>().join(" "),
            "synchronous_commit": pg.settings["synchronous_commit"],
            "fsync": pg.settings["fsync"],
            "full_page_writes": pg.settings["full_page_writes"],
            "commit_p50_ms": conditions.commit_ms.as_ref().map(|c| c.p50),
        },
        "drain_runs_per_sec": res.get("drain").and_then(|d| f(d, &["runs_per_sec"])),
        "steady_highest_sustained_rate": res.get("steady").and_then(|d| f(d, &["highest_sustained_rate"])),
        "enqueue_to_start_at_provider_ms": res.get("latency").map(|l| percentiles(&l["request_at_provider_ms"], &["p50", "p95", "p99"])),
        "enqueue_to_start_db_ms": res.get("latency").map(|l| percentiles(&l["db_ms"], &["p50", "p95", "p99"])),
        "dispatch_overhead_db_ms_at_500": res.get("overhead").and_then(|o| {
            o["rates"]
                .as_array()
                .and_then(|a| a.iter().find(|r| r["offered_rate"] == OVERHEAD_JUDGED_RATE))
                .map(|r| percentiles(&r["overhead_db_ms"], &["p50", "p99"]))
        }),
        "goodput_share_of_r": res.get("goodput").and_then(|g| f(g, &["goodput_share_of_r"])),
        "goodput_refused_share": res.get("goodput").and_then(|g| f(g, &["refused_share"])),
        "idle_rss_mib": res.get("idle").and_then(|i| f(i, &["rss_mib"])),
        "peers_drain_jobs_per_sec": {"graphile-worker": gw_drain, "pg-boss": pgb_drain},
        "total_secs": stats::r1(total_secs),
    })
}

/// Everything the JSON file keeps: the summary, each scenario's and peer's figures, the
/// machine, the cluster, the server's settings and the table.
fn full_report(
    cli: &Cli,
    sizes: &Sizes,
    conditions: &Conditions,
    figures: &Figures,
    total_secs: f64,
    summary: Value,
    md: &str,
) -> Value {
    let base = &conditions.base;
    json!({
        "summary": summary,
        "schema": "sluice-bench/1",
        "mode": cli.mode(),
        "generated_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "total_secs": stats::r1(total_secs),
        "scenario_secs": figures.timings,
        "machine": conditions.machine,
        "loadavg_at_end": provenance::loadavg(),
        "git": provenance::git_checkout(),
        "postgres": conditions.pg,
        "postgres_commit_latency_ms": conditions.commit_ms,
        "sluice": {
            "binary": conditions.sluice_bin.file_name().map(|n| n.to_string_lossy().into_owned()),
            "build": cli.build_note,
            "config": {
                "dispatch.slots": base.slots, "dispatch.claim_batch": base.claim_batch,
                "dispatch.complete_batch": base.complete_batch, "dispatch.enqueue_batch": base.enqueue_batch,
                "database.max_connections": base.max_connections, "SLUICE_LOG": base.log,
                "drain.slots": cli.drain_slots,
                "live_first.slots": LIVE_FIRST_SLOTS, "other keys": "defaults",
            },
        },
        "n": sizes.drain_runs,
        "bulk_enqueue_concurrency": cli.concurrency,
        "results": figures.results,
        "peers": figures.peers,
        "table_markdown": md,
    })
}
