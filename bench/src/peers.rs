//! The peers, graphile-worker and pg-boss, run by the scripts of `shared/bench-peers` on
//! the bench's own PostgreSQL cluster, in the same run. Their packages are installed into
//! a scratch folder by `scripts/bench.sh` (nothing of theirs is committed).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

pub struct PeerEnv {
    pub scripts: PathBuf,
    pub node_path: PathBuf,
    pub pg_host: String,
    pub pg_port: u16,
    pub logdir: PathBuf,
}

/// Runs one peer script and returns its `summary` JSON line, its per-run lines and how
/// long it took.
pub async fn run(
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
