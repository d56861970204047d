//! Where the figures come from, as the report records it: the machine the run was measured
//! on and the git checkout of the server it ran.

use serde_json::{Value, json};

use crate::stats;

/// Cores, CPU model, memory, kernel and load of this machine, read at the start of the run.
pub fn machine() -> Value {
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
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "mem_total_gib": stats::r1(mem_kb("MemTotal:") / 1024.0 / 1024.0),
        "mem_available_gib_at_start": stats::r1(mem_kb("MemAvailable:") / 1024.0 / 1024.0),
        "kernel": kernel,
        "loadavg_at_start": loadavg(),
    })
}

/// The load average line of /proc/loadavg (empty where there is none).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The commit checked out, and how many of the server's source paths differ from it.
pub fn git_checkout() -> Value {
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
