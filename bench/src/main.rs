//! `sluice-bench`: runs Sluice's benchmark scenarios against a release build of the server on
//! a PostgreSQL cluster it is given (`scripts/bench.sh` starts a throwaway one with default
//! durability), runs the peers (graphile-worker, pg-boss) on the same cluster, prints a
//! markdown table and writes the figures with the machine's description as JSON.

mod client;
mod db;
mod peers;
mod scenarios;
mod server;
mod stats;
mod stub;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use serde_json::{Value, json};

use crate::scenarios::Ctx;
use crate::server::ServerConfig;

#[derive(Parser, Debug)]
#[command(
    name = "sluice-bench",
    about = "Benchmark harness for Sluice (see BENCHMARKS.md)"
)]
struct Cli {
    /// Smaller N and shorter steps: the whole run in under two minutes.
    #[arg(long)]
    quick: bool,
    /// The `sluice` binary to run (a release build).
    #[arg(long)]
    sluice_bin: PathBuf,
    /// A superuser URL of the PostgreSQL server to use (databases are created on it).
    #[arg(long)]
    pg_url: String,
    /// Comma-separated scenarios to run (default: all): idle, drain, steady, latency,
    /// overhead, goodput, live, peers.
    #[arg(long)]
    only: Option<String>,
    /// Runs in the drain (default 100,000; 20,000 with --quick).
    #[arg(long)]
    n: Option<u64>,
    /// Requests in flight during bulk enqueues.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// `dispatch.slots` of the server (all scenarios but the drain and live-first).
    #[arg(long, default_value_t = 1000)]
    slots: usize,
    /// `dispatch.slots` of the server in the drain (a zero-latency provider needs many
    /// attempts in flight to keep the claim and completion statements busy).
    #[arg(long, default_value_t = 4000)]
    drain_slots: usize,
    #[arg(long, default_value_t = 1000)]
    claim_batch: usize,
    #[arg(long, default_value_t = 1000)]
    complete_batch: usize,
    #[arg(long, default_value_t = 1000)]
    enqueue_batch: usize,
    /// `database.max_connections` of the server.
    #[arg(long, default_value_t = 16)]
    max_connections: u32,
    /// `SLUICE_LOG` of the server.
    #[arg(long, default_value = "warn")]
    server_log: String,
    /// The shared/bench-peers scripts; the peers are skipped without it.
    #[arg(long)]
    peers_dir: Option<PathBuf>,
    /// node_modules holding graphile-worker, pg-boss and pg.
    #[arg(long)]
    peers_node_path: Option<PathBuf>,
    /// Record the peers as not run, with this reason.
    #[arg(long)]
    peers_skip: Option<String>,
    /// Jobs in the peers' drains (default: the same N as Sluice's drain).
    #[arg(long)]
    peer_n: Option<u64>,
    /// Runs per peer configuration (each figure is their median).
    #[arg(long)]
    peer_runs: Option<u32>,
    /// Where to write the JSON.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Where to write the markdown table too.
    #[arg(long)]
    md: Option<PathBuf>,
    /// Kept for the record in the JSON: how the binary was built.
    #[arg(long, default_value = "")]
    build_note: String,
}

/// The targets of the benchmark issue.
const TARGET_LAT_P50: f64 = 1.25;
const TARGET_LAT_P99: f64 = 3.5;
const TARGET_OVH_P50: f64 = 2.0;
const TARGET_OVH_P99: f64 = 10.0;
const TARGET_GOODPUT: f64 = 0.95;
const TARGET_REFUSED: f64 = 0.05;
const TARGET_RSS_MIB: f64 = 50.0;
/// The faster peer's drain from shared/bench-peers (graphile-worker, 2 × 24, local queue),
/// used when the peers are not run.
const REFERENCE_PEER_DRAIN: f64 = 25_707.0;

struct Row {
    scenario: String,
    figure: String,
    target: String,
    peers: String,
    verdict: &'static str,
}

fn verdict(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "pass",
        Some(false) => "**miss**",
        None => "—",
    }
}

fn f(v: &Value, path: &[&str]) -> Option<f64> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_f64()
}

fn fmt_int(x: f64) -> String {
    let s = format!("{:.0}", x);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

fn ms(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |v| format!("{v:.2}"))
}

fn machine() -> Value {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb = |key: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let load = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "mem_total_gib": stats::r1(mem_kb("MemTotal:") / 1024.0 / 1024.0),
        "mem_available_gib_at_start": stats::r1(mem_kb("MemAvailable:") / 1024.0 / 1024.0),
        "kernel": kernel,
        "loadavg_at_start": load,
    })
}

fn git_info() -> Value {
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    json!({
        "commit": run(&["rev-parse", "HEAD"]),
        "dirty_paths": run(&["status", "--porcelain", "--", "src", "migrations", "Cargo.toml", "Cargo.lock"])
            .map(|s| s.lines().count()),
    })
}

/// host and port of a `postgres://user@host:port/db` URL.
fn host_port(url: &str) -> (String, u16) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['/', '?']).next().unwrap_or("");
    let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(5432)),
        None => (hostport.to_string(), 5432),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let started = Instant::now();
    let quick = cli.quick;
    let only: Option<Vec<String>> = cli
        .only
        .as_ref()
        .map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    let want = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|x| x == name));

    let workdir = std::env::temp_dir().join(format!("sluice-bench.{}", std::process::id()));
    std::fs::create_dir_all(&workdir)?;
    let admin = db::connect(&cli.pg_url).await?;
    let pg = db::info(&admin).await?;
    let commit_ms = stats::dist(&db::commit_latency(&admin, 300).await?);
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
        quick,
        base: base.clone(),
        concurrency: cli.concurrency,
    };
    let n = cli.n.unwrap_or(if quick { 20_000 } else { 100_000 });
    let machine = machine();
    println!(
        "sluice-bench ({}): {} cores, {} GiB, PostgreSQL {} (synchronous_commit={}, fsync={}), logs in {}",
        if quick { "quick" } else { "full" },
        machine["nproc"],
        machine["mem_total_gib"],
        pg.version.split_whitespace().nth(1).unwrap_or("?"),
        pg.settings["synchronous_commit"],
        pg.settings["fsync"],
        workdir.display()
    );
    if let Some(c) = &commit_ms {
        println!(
            "  one durable single-row commit on this cluster: p50 {:.2} ms, p99 {:.2} ms",
            c.p50, c.p99
        );
    }

    let mut results = serde_json::Map::new();
    let mut timings = serde_json::Map::new();
    macro_rules! scenario {
        ($name:expr, $title:expr, $body:expr) => {
            if want($name) {
                println!("\n== {} ==", $title);
                let t = Instant::now();
                let r: anyhow::Result<Value> = $body.await;
                let secs = t.elapsed().as_secs_f64();
                timings.insert($name.into(), json!(stats::r1(secs)));
                match r {
                    Ok(v) => {
                        println!("  done in {secs:.1} s");
                        results.insert($name.into(), v);
                    }
                    Err(e) => {
                        println!("  FAILED after {secs:.1} s: {e:#}");
                        results.insert($name.into(), json!({"error": format!("{e:#}")}));
                    }
                }
            }
        };
    }

    scenario!("idle", "Idle RSS", scenarios::idle_rss(&ctx));
    scenario!(
        "drain",
        format!("1. Drain of {n} runs (zero-latency sim)"),
        scenarios::drain(&ctx, n, cli.drain_slots)
    );
    scenario!(
        "steady",
        "1b. Steady state: highest offered rate sustained",
        scenarios::steady(&ctx, Duration::from_secs(if quick { 3 } else { 6 }), 1024)
    );
    scenario!(
        "latency",
        "2. Enqueue → start latency, one at a time, idle server",
        scenarios::latency(
            &ctx,
            if quick { 300 } else { 1000 },
            if quick { 50 } else { 100 }
        )
    );
    scenario!(
        "overhead",
        "3. Dispatch overhead against a fixed 50 ms provider",
        scenarios::overhead(
            &ctx,
            &[100.0, 500.0, 1000.0],
            Duration::from_secs(if quick { 3 } else { 10 }),
            50
        )
    );
    scenario!(
        "goodput",
        "4. Rate-limit goodput (stub at 600 requests/minute)",
        scenarios::goodput(
            &ctx,
            600.0,
            Duration::from_secs(if quick { 15 } else { 60 })
        )
    );
    scenario!(
        "live",
        "5. Live first: live queue wait idle and under a background flood",
        scenarios::live_first(
            &ctx,
            100,
            50,
            if quick { 100 } else { 200 },
            if quick { 5_000 } else { 10_000 }
        )
    );

    // 6. Peers.
    let mut peer_results = serde_json::Map::new();
    if want("peers") {
        println!("\n== 6. Peers on the same PostgreSQL: graphile-worker 0.17.3, pg-boss 10.4.2 ==");
        let t = Instant::now();
        let skip =
            cli.peers_skip
                .clone()
                .or_else(|| match (&cli.peers_dir, &cli.peers_node_path) {
                    (None, _) => Some("no --peers-dir given".into()),
                    (_, None) => Some("no --peers-node-path given".into()),
                    _ => None,
                });
        if let Some(reason) = skip {
            println!("  peers not run: {reason}");
            peer_results.insert("not_run".into(), json!(reason));
        } else {
            let (pg_host, pg_port) = host_port(&cli.pg_url);
            let logdir = workdir.join("peers");
            std::fs::create_dir_all(&logdir)?;
            let env = peers::PeerEnv {
                scripts: std::fs::canonicalize(cli.peers_dir.as_ref().unwrap())?,
                node_path: cli.peers_node_path.clone().unwrap(),
                pg_host,
                pg_port,
                logdir,
            };
            let runs = cli.peer_runs.unwrap_or(if quick { 1 } else { 3 });
            let n = cli.peer_n.unwrap_or(n);
            let lat_samples = if quick { 300 } else { 1000 };
            let pgb_samples = if quick { 0 } else { 100 };
            let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
            let limit = Duration::from_secs(600);
            let mut jobs: Vec<(&str, &str, Vec<String>)> = vec![
                (
                    "graphile_drain",
                    "graphile_drain.js",
                    s(&[
                        "--procs",
                        "2",
                        "--concurrency",
                        "24",
                        "--mode",
                        "lq",
                        "--n",
                        &n.to_string(),
                        "--runs",
                        &runs.to_string(),
                    ]),
                ),
                (
                    "pgboss_drain",
                    "pgboss_drain.js",
                    s(&[
                        "--procs",
                        "1",
                        "--workers",
                        "4",
                        "--batch",
                        "5000",
                        "--n",
                        &n.to_string(),
                        "--runs",
                        &runs.to_string(),
                    ]),
                ),
                (
                    "graphile_latency",
                    "graphile_latency.js",
                    s(&[
                        "--concurrency",
                        "24",
                        "--mode",
                        "lq",
                        "--samples",
                        &lat_samples.to_string(),
                        "--runs",
                        &runs.to_string(),
                    ]),
                ),
            ];
            if pgb_samples > 0 {
                jobs.push((
                    "pgboss_latency",
                    "pgboss_latency.js",
                    s(&[
                        "--poll",
                        "0.5",
                        "--jitter",
                        "500",
                        "--samples",
                        &pgb_samples.to_string(),
                        "--runs",
                        "1",
                        "--warmup",
                        "5",
                    ]),
                ));
            } else {
                peer_results.insert("pgboss_latency".into(), json!({"not_run": "skipped with --quick: pg-boss picks up by polling every 0.5 s, ~0.5 s per sample; see shared/bench-peers/results/pgb_lat.txt (p50 256 ms)"}));
            }
            for (key, script, args) in jobs {
                print!("  {key} {} ... ", args.join(" "));
                use std::io::Write;
                let _ = std::io::stdout().flush();
                match peers::run(&env, script, &args, limit).await {
                    Ok((summary, runs, secs)) => {
                        println!("{:.1} s", secs);
                        peer_results.insert(
                            key.into(),
                            json!({
                                "args": args.join(" "), "secs": stats::r1(secs), "summary": summary,
                                "runs": runs,
                            }),
                        );
                    }
                    Err(e) => {
                        println!("failed: {e:#}");
                        peer_results.insert(
                            key.into(),
                            json!({"args": args.join(" "), "error": format!("{e:#}")}),
                        );
                    }
                }
            }
        }
        timings.insert("peers".into(), json!(stats::r1(t.elapsed().as_secs_f64())));
    }
    let total = started.elapsed().as_secs_f64();
    let peer_runs = cli.peer_runs.unwrap_or(if quick { 1 } else { 3 });

    // ----- the table -----
    let peers_v = Value::Object(peer_results.clone());
    let gw_drain = f(&peers_v, &["graphile_drain", "summary", "medianJobsPerSec"]);
    let pgb_drain = f(&peers_v, &["pgboss_drain", "summary", "medianJobsPerSec"]);
    let faster_peer = match (gw_drain, pgb_drain) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let peer_lat = |key: &str| {
        let p = |q: &str| f(&peers_v, &[key, "summary", q, "median"]);
        match (p("p50"), p("p95"), p("p99")) {
            (Some(a), Some(b), Some(c)) => Some(format!("{a:.2} / {b:.2} / {c:.2}")),
            _ => None,
        }
    };
    let mut rows: Vec<Row> = Vec::new();
    let res = Value::Object(results.clone());
    if let Some(d) = res.get("drain") {
        let rps = f(d, &["runs_per_sec"]);
        let (target, basis) = match faster_peer {
            Some(p) => (2.0 * p, "faster peer, this run"),
            None => (2.0 * REFERENCE_PEER_DRAIN, "reference figure"),
        };
        rows.push(Row {
            scenario: "1. Drain, zero-latency provider".into(),
            figure: rps.map_or("error".into(), |r| {
                format!(
                    "{} runs/s (N = {}, {} slots; T0 to all finished: {}/s)",
                    fmt_int(r),
                    fmt_int(n as f64),
                    fmt_int(cli.drain_slots as f64),
                    fmt_int(f(d, &["runs_per_sec_t0_to_observed"]).unwrap_or(0.0))
                )
            }),
            target: format!("≥ {} runs/s (2 × {basis})", fmt_int(target)),
            peers: format!(
                "graphile-worker {} · pg-boss {} (median of {peer_runs}, from \"go\" to empty)",
                gw_drain.map_or("not run".into(), |x| format!("{}/s", fmt_int(x))),
                pgb_drain.map_or("not run".into(), |x| format!("{}/s", fmt_int(x))),
            ),
            verdict: verdict(rps.map(|r| r >= target)),
        });
        if let Some(e) = d.get("enqueue") {
            rows.push(Row {
                scenario: "1. Bulk enqueue over HTTP (not timed in the drain)".into(),
                figure: format!(
                    "{} runs/s, {} in flight",
                    fmt_int(f(e, &["runs_per_sec"]).unwrap_or(0.0)),
                    cli.concurrency
                ),
                target: "—".into(),
                peers: "peers insert in bulk by SQL".into(),
                verdict: "—",
            });
        }
    }
    if let Some(s) = res.get("steady") {
        rows.push(Row {
            scenario: "1. Steady state, zero-latency provider".into(),
            figure: match (
                f(s, &["highest_sustained_rate"]),
                f(s, &["lowest_unsustained_rate"]),
            ) {
                (Some(b), Some(w)) => {
                    format!("{} runs/s sustained ({} not)", fmt_int(b), fmt_int(w))
                }
                (Some(b), None) => format!("{} runs/s sustained", fmt_int(b)),
                (None, Some(w)) => format!("none sustained ({} not)", fmt_int(w)),
                _ => "error".into(),
            },
            target: "—".into(),
            peers: "—".into(),
            verdict: "—",
        });
    }
    if let Some(l) = res.get("latency") {
        let row = |key: &str, label: &str, judge: bool| {
            let (p50, p95, p99) = (
                f(l, &[key, "p50"]),
                f(l, &[key, "p95"]),
                f(l, &[key, "p99"]),
            );
            Row {
                scenario: format!("2. Enqueue → start p50 / p95 / p99, {label}"),
                figure: format!("{} / {} / {} ms", ms(p50), ms(p95), ms(p99)),
                target: format!("p50 ≤ {TARGET_LAT_P50} ms, p99 ≤ {TARGET_LAT_P99} ms"),
                peers: format!(
                    "graphile-worker {} · pg-boss {}",
                    peer_lat("graphile_latency").map_or("not run".into(), |x| x + " ms"),
                    peer_lat("pgboss_latency").map_or("not run".into(), |x| x + " ms")
                ),
                verdict: if judge {
                    verdict(
                        p50.zip(p99)
                            .map(|(a, b)| a <= TARGET_LAT_P50 && b <= TARGET_LAT_P99),
                    )
                } else {
                    "—"
                },
            }
        };
        rows.push(row(
            "request_at_provider_ms",
            "the request's arrival at the provider",
            true,
        ));
        rows.push(row(
            "db_ms",
            "start stamp in the database (taken before the commit that starts the run)",
            false,
        ));
        rows.push(row("sse_ms", "`started` event at the client", true));
    }
    if let Some(o) = res.get("overhead") {
        for r in o["rates"].as_array().cloned().unwrap_or_default() {
            let rate = f(&r, &["offered_rate"]).unwrap_or(0.0);
            for (key, label) in [("overhead_db_ms", "db"), ("overhead_sse_ms", "events")] {
                let (p50, p99) = (f(&r, &[key, "p50"]), f(&r, &[key, "p99"]));
                let judged = rate == 500.0;
                rows.push(Row {
                    scenario: format!(
                        "3. Dispatch overhead p50 / p99 at {} runs/s ({label})",
                        fmt_int(rate)
                    ),
                    figure: format!("{} / {} ms", ms(p50), ms(p99)),
                    target: if judged {
                        format!("p50 ≤ {TARGET_OVH_P50} ms, p99 ≤ {TARGET_OVH_P99} ms")
                    } else {
                        "—".into()
                    },
                    peers: "—".into(),
                    verdict: if judged {
                        verdict(
                            p50.zip(p99)
                                .map(|(a, b)| a <= TARGET_OVH_P50 && b <= TARGET_OVH_P99),
                        )
                    } else {
                        "—"
                    },
                });
            }
        }
    }
    if let Some(g) = res.get("goodput") {
        let (share, refused, per_min) = (
            f(g, &["goodput_share_of_r"]),
            f(g, &["refused_share"]),
            f(g, &["completions_per_min"]),
        );
        rows.push(Row {
            scenario: "4. Rate-limit goodput, R = 600/min".into(),
            figure: format!(
                "{} /min = {:.1}% of R, {:.1}% refused",
                per_min.map_or("n/a".into(), |x| format!("{x:.0}")),
                share.unwrap_or(f64::NAN) * 100.0,
                refused.unwrap_or(f64::NAN) * 100.0
            ),
            target: "≥ 95% of R, ≤ 5% refused".into(),
            peers: "—".into(),
            verdict: verdict(
                share
                    .zip(refused)
                    .map(|(s, r)| s >= TARGET_GOODPUT && r <= TARGET_REFUSED),
            ),
        });
        if let Some(h) = g.get("second_half") {
            rows.push(Row {
                scenario: "4. Rate-limit goodput, second half of the window".into(),
                figure: format!(
                    "{:.1}% of R, {:.1}% refused",
                    f(h, &["goodput_share_of_r"]).unwrap_or(f64::NAN) * 100.0,
                    f(h, &["refused_share"]).unwrap_or(f64::NAN) * 100.0
                ),
                target: "—".into(),
                peers: "—".into(),
                verdict: "—",
            });
        }
    }
    if let Some(l) = res.get("live") {
        let flood = format!(
            "under a flood of {} background runs ({} admitted)",
            fmt_int(f(l, &["flood_background_runs"]).unwrap_or(0.0)),
            fmt_int(f(l, &["flood_admitted"]).unwrap_or(0.0))
        );
        for (key, label) in [("idle", "idle".to_string()), ("under_flood", flood)] {
            rows.push(Row {
                scenario: format!("5. Live queue wait p50 / p99, {label}"),
                figure: format!(
                    "{} / {} ms",
                    ms(f(l, &[key, "queue_wait_db_ms", "p50"])),
                    ms(f(l, &[key, "queue_wait_db_ms", "p99"]))
                ),
                target: "—".into(),
                peers: "—".into(),
                verdict: "—",
            });
        }
    }
    if let Some(i) = res.get("idle") {
        let rss = f(i, &["rss_mib"]);
        rows.push(Row {
            scenario: "Idle server RSS".into(),
            figure: match (rss, res.get("drain").and_then(|d| f(d, &["server_peak_rss_mib"]))) {
                (Some(x), Some(p)) => format!("{x:.1} MiB (peak in the drain: {p:.1} MiB)"),
                (Some(x), None) => format!("{x:.1} MiB"),
                _ => "n/a".into(),
            },
            target: format!("≤ {TARGET_RSS_MIB} MB"),
            peers: {
                let rss = |k: &str| f(&peers_v, &[k, "summary", "medianPeakRssMB"]);
                match (rss("graphile_drain"), rss("pgboss_drain")) {
                    (None, None) => "not run".into(),
                    (g, b) => format!(
                        "peak RSS per worker process in their drains: graphile-worker {} · pg-boss {}",
                        g.map_or("n/a".into(), |x| format!("{x:.0} MB")),
                        b.map_or("n/a".into(), |x| format!("{x:.0} MB"))
                    ),
                }
            },
            verdict: verdict(rss.map(|x| x <= TARGET_RSS_MIB)),
        });
    }
    let budget = if quick { 120.0 } else { 600.0 };
    rows.push(Row {
        scenario: format!(
            "7. Bench run time ({})",
            if quick { "--quick" } else { "default" }
        ),
        figure: format!("{total:.0} s"),
        target: format!("< {budget:.0} s"),
        peers: "—".into(),
        verdict: verdict(Some(total < budget)),
    });

    let mut md = String::new();
    md.push_str(
        "| scenario | figure | target | peers (same run) | verdict |\n|---|---|---|---|---|\n",
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            r.scenario, r.figure, r.target, r.peers, r.verdict
        ));
    }
    for (k, v) in &results {
        if let Some(e) = v.get("error") {
            md.push_str(&format!("\nScenario `{k}` failed: {e}\n"));
        }
    }
    println!("\n{md}");
    // The headline figures with what they were measured on, printed and kept in the file.
    let summary = json!({
        "machine": {"nproc": machine["nproc"], "mem_total_gib": machine["mem_total_gib"], "kernel": machine["kernel"]},
        "n": n,
        "bulk_enqueue_concurrency": cli.concurrency,
        "postgres": {
            "version": pg.version.split_whitespace().take(2).collect::<Vec<_>>().join(" "),
            "synchronous_commit": pg.settings["synchronous_commit"],
            "fsync": pg.settings["fsync"],
            "full_page_writes": pg.settings["full_page_writes"],
            "commit_p50_ms": commit_ms.as_ref().map(|c| c.p50),
        },
        "drain_runs_per_sec": res.get("drain").and_then(|d| f(d, &["runs_per_sec"])),
        "steady_highest_sustained_rate": res.get("steady").and_then(|d| f(d, &["highest_sustained_rate"])),
        "enqueue_to_start_at_provider_ms": res.get("latency").map(|l| json!({"p50": l["request_at_provider_ms"]["p50"], "p95": l["request_at_provider_ms"]["p95"], "p99": l["request_at_provider_ms"]["p99"]})),
        "enqueue_to_start_db_ms": res.get("latency").map(|l| json!({"p50": l["db_ms"]["p50"], "p95": l["db_ms"]["p95"], "p99": l["db_ms"]["p99"]})),
        "dispatch_overhead_db_ms_at_500": res.get("overhead").and_then(|o| o["rates"].as_array().and_then(|a| a.iter().find(|r| r["offered_rate"] == 500.0)).map(|r| json!({"p50": r["overhead_db_ms"]["p50"], "p99": r["overhead_db_ms"]["p99"]}))),
        "goodput_share_of_r": res.get("goodput").and_then(|g| f(g, &["goodput_share_of_r"])),
        "goodput_refused_share": res.get("goodput").and_then(|g| f(g, &["refused_share"])),
        "idle_rss_mib": res.get("idle").and_then(|i| f(i, &["rss_mib"])),
        "peers_drain_jobs_per_sec": {"graphile-worker": gw_drain, "pg-boss": pgb_drain},
        "total_secs": stats::r1(total),
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    let report = json!({
        "summary": summary,
        "schema": "sluice-bench/1",
        "mode": if quick { "quick" } else { "full" },
        "generated_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "total_secs": stats::r1(total),
        "scenario_secs": timings,
        "machine": machine,
        "loadavg_at_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "git": git_info(),
        "postgres": pg,
        "postgres_commit_latency_ms": commit_ms,
        "sluice": {
            "binary": sluice_bin.file_name().map(|n| n.to_string_lossy().into_owned()),
            "build": cli.build_note,
            "config": {
                "dispatch.slots": base.slots, "dispatch.claim_batch": base.claim_batch,
                "dispatch.complete_batch": base.complete_batch, "dispatch.enqueue_batch": base.enqueue_batch,
                "database.max_connections": base.max_connections, "SLUICE_LOG": base.log,
                "drain.slots": cli.drain_slots,
                "live_first.slots": 100, "other keys": "defaults",
            },
        },
        "n": n,
        "bulk_enqueue_concurrency": cli.concurrency,
        "results": results,
        "peers": peer_results,
        "table_markdown": md,
    });
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
        "total {total:.1} s; server logs and peer outputs in {}",
        workdir.display()
    );
    Ok(())
}
