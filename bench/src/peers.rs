//! The peers, graphile-worker and pg-boss, run by the scripts of `shared/bench-peers` on
//! the bench's own PostgreSQL cluster, in the same run. Their packages are installed into
//! a scratch folder by `scripts/bench.sh` (nothing of theirs is committed).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::options::{Cli, Sizes};
use crate::stats;

/// How long one peer script may run before it is stopped.
const SCRIPT_TIME_LIMIT: Duration = Duration::from_secs(600);
/// The port of a PostgreSQL URL that names none.
const DEFAULT_PG_PORT: u16 = 5432;

/// Runs each peer configuration on the bench's cluster and returns their figures under
/// their names, or why the peers were not run.
pub async fn run_all(
    cli: &Cli,
    sizes: &Sizes,
    workdir: &Path,
) -> anyhow::Result<Map<String, Value>> {
    let mut results = Map::new();
    let chosen = match (&cli.peers_skip, &cli.peers_dir, &cli.peers_node_path) {
        (Some(reason), _, _) => Err(reason.clone()),
        (None, None, _) => Err("no --peers-dir given".to_string()),
        (None, _, None) => Err("no --peers-node-path given".to_string()),
        (None, Some(scripts), Some(node_path)) => Ok((scripts, node_path)),
    };
    let (scripts, node_path) = match chosen {
        Ok(paths) => paths,
        Err(reason) => {
            println!("  peers not run: {reason}");
            results.insert("not_run".into(), json!(reason));
            return Ok(results);
        }
    };
    let (pg_host, pg_port) = host_port(&cli.pg_url);
    let logdir = workdir.join("peers");
    std::fs::create_dir_all(&logdir)?;
    let env = PeerEnv {
        scripts: std::fs::canonicalize(scripts)?,
        node_path: node_path.clone(),
        pg_host,
        pg_port,
        logdir,
    };
    let mut jobs = configurations(sizes);
    if sizes.pgboss_latency_samples > 0 {
        jobs.push(Configuration {
            key: "pgboss_latency",
            script: "pgboss_latency.js",
            args: strings(&[
                "--poll",
                "0.5",
                "--jitter",
                "500",
                "--samples",
                &sizes.pgboss_latency_samples.to_string(),
                "--runs",
                "1",
                "--warmup",
                "5",
            ]),
        });
    } else {
        results.insert("pgboss_latency".into(), json!({"not_run": "skipped with --quick: pg-boss picks up by polling every 0.5 s, ~0.5 s per sample; see shared/bench-peers/results/pgb_lat.txt (p50 256 ms)"}));
    }
    for Configuration { key, script, args } in jobs {
        print!("  {key} {} ... ", args.join(" "));
        let _ = std::io::stdout().flush();
        match run(&env, script, &args, SCRIPT_TIME_LIMIT).await {
            Ok((summary, runs, secs)) => {
                println!("{:.1} s", secs);
                results.insert(
                    key.into(),
                    json!({
                        "args": args.join(" "), "secs": stats::r1(secs), "summary": summary,
                        "runs": runs,
                    }),
                );
            }
            Err(e) => {
                println!("failed: {e:#}");
                results.insert(
                    key.into(),
                    json!({"args": args.join(" "), "error": format!("{e:#}")}),
                );
            }
        }
    }
    Ok(results)
}

/// One peer script with its arguments, and the name its figures are kept under.
struct Configuration {
    key: &'static str,
    script: &'static str,
    args: Vec<String>,
}

/// The peers' drains and graphile-worker's latency, in the configurations of
/// shared/bench-peers that were their fastest.
fn configurations(sizes: &Sizes) -> Vec<Configuration> {
    let (n, runs) = (
        sizes.peer_drain_jobs.to_string(),
        sizes.peer_runs.to_string(),
    );
    vec![
        Configuration {
            key: "graphile_drain",
            script: "graphile_drain.js",
            args: strings(&[
                "--procs",
                "2",
                "--concurrency",
                "24",
                "--mode",
                "lq",
                "--n",
                &n,
                "--runs",
                &runs,
            ]),
        },
        Configuration {
            key: "pgboss_drain",
            script: "pgboss_drain.js",
            args: strings(&[
                "--procs",
                "1",
                "--workers",
                "4",
                "--batch",
                "5000",
                "--n",
                &n,
                "--runs",
                &runs,
            ]),
        },
        Configuration {
            key: "graphile_latency",
            script: "graphile_latency.js",
            args: strings(&[
                "--concurrency",
                "24",
                "--mode",
                "lq",
                "--samples",
                &sizes.latency_samples.to_string(),
                "--runs",
                &runs,
            ]),
        },
    ]
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|x| x.to_string()).collect()
}

/// host and port of a `postgres://user@host:port/db` URL.
fn host_port(url: &str) -> (String, u16) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['/', '?']).next().unwrap_or("");
    let hostport = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(DEFAULT_PG_PORT)),
        None => (hostport.to_string(), DEFAULT_PG_PORT),
    }
}

struct PeerEnv {
    scripts: PathBuf,
    node_path: PathBuf,
    pg_host: String,
    pg_port: u16,
    logdir: PathBuf,
}

/// Runs one peer script and returns its `summary` JSON line, its per-run lines and how
/// long it took.
async fn run(
    env: &PeerEnv,
    script: &str,
    args: &[String],
    limit: Duration,
) -> anyhow::Result<(Value, Vec<Value>, f64)> {
    let path = env.scripts.join(script);
    if !path.exists() {
        bail!("{} not found", path.display());
    }
    let t = Instant::now();
    let mut cmd = Command::new("node");
    cmd.arg(&path)
        .args(args)
        .env("NODE_PATH", &env.node_path)
        .env("PGHOST_BENCH", &env.pg_host)
        .env("PGPORT_BENCH", env.pg_port.to_string())
        // The scripts' `require("./common")` resolves next to them; run from a scratch cwd.
        .current_dir(&env.logdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().context("cannot start node")?;
    let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(out) => out?,
        Err(_) => bail!("{script} did not finish within {limit:?}"),
    };
    let secs = t.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let log = log_name(&env.logdir, script, args);
    if let Ok(mut f) = tokio::fs::File::create(&log).await {
        let _ = f
            .write_all(
                format!(
                    "# node {script} {}\n{stdout}\n# stderr\n{stderr}",
                    args.join(" ")
                )
                .as_bytes(),
            )
            .await;
    }
    if !out.status.success() {
        bail!(
            "{script} failed ({}): {}",
            out.status,
            stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
        );
    }
    let summary = stdout
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v.get("summary").and_then(Value::as_bool) == Some(true))
        .with_context(|| format!("{script} printed no summary line"))?;
    let runs = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v.get("run").is_some())
        .collect();
    Ok((summary, runs, secs))
}

fn log_name(dir: &Path, script: &str, args: &[String]) -> PathBuf {
    let tag: String = args
        .join("_")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    dir.join(format!("{}{}.log", script.trim_end_matches(".js"), tag))
}
