//! Starting and stopping `sluice serve` as a child process, with a config file written for
//! each scenario.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::process::{Child, Command};

/// A provider entry of the generated config.
#[derive(Clone, Debug, Serialize)]
pub enum Provider {
    /// The built-in simulator with a fixed latency (no jitter, no errors), and any extra
    /// provider keys (TOML lines).
    Sim {
        name: String,
        latency_ms: u64,
        extra: String,
    },
    /// An OpenAI-compatible endpoint (the bench's own stub), with no configured rpm.
    OpenAi { name: String, base_url: String },
    /// A provider entry written out in full (TOML), as the rate-limit styles share it with
    /// the tests.
    Toml(String),
}

/// The settings the bench varies; everything else is the server's default.
#[derive(Clone, Debug, Serialize)]
pub struct ServerConfig {
    pub slots: usize,
    pub claim_batch: usize,
    pub complete_batch: usize,
    pub enqueue_batch: usize,
    pub max_connections: u32,
    pub providers: Vec<Provider>,
    /// `SLUICE_LOG` filter.
    pub log: String,
}

impl ServerConfig {
    pub fn toml(&self, listen: &str) -> String {
        let mut s = format!(
            "# Written by sluice-bench.\nlisten = \"{listen}\"\n\n[database]\nmax_connections = {}\n\n\
             [dispatch]\nslots = {}\nclaim_batch = {}\ncomplete_batch = {}\nenqueue_batch = {}\n",
            self.max_connections,
            self.slots,
            self.claim_batch,
            self.complete_batch,
            self.enqueue_batch
        );
        for p in &self.providers {
            match p {
                Provider::Sim {
                    name,
                    latency_ms,
                    extra,
                } => s.push_str(&format!(
                    "\n[[providers]]\nname = \"{name}\"\nkind = \"sim\"\ndefault_model = \"sim-1\"\n{extra}\n\
                     [providers.sim]\nlatency = \"{latency_ms}ms\"\nlatency_jitter = \"0ms\"\n"
                )),
                Provider::OpenAi { name, base_url } => s.push_str(&format!(
                    "\n[[providers]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"{base_url}\"\n\
                     default_model = \"x\"\n"
                )),
                Provider::Toml(entry) => {
                    s.push('\n');
                    s.push_str(entry);
                }
            }
        }
        s
    }
}

pub struct Server {
    child: Child,
    pub pid: u32,
    pub base: String,
    pub log_path: PathBuf,
}

/// A free TCP port on 127.0.0.1 (bound and released; the small race is acceptable here).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

impl Server {
    /// Writes the config, starts `sluice --config FILE serve` against `database_url` and
    /// waits until `/health` answers 200.
    pub async fn start(
        bin: &Path,
        workdir: &Path,
        name: &str,
        config: &ServerConfig,
        database_url: &str,
        http: &reqwest::Client,
    ) -> anyhow::Result<Server> {
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let cfg_path = workdir.join(format!("{name}.toml"));
        std::fs::write(&cfg_path, config.toml(&listen))?;
        let log_path = workdir.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)?;
        let mut cmd = Command::new(bin);
        // Only what the bench sets: no SLUICE_* or DATABASE_URL leaking in from the shell.
        for (k, _) in std::env::vars() {
            if k.starts_with("SLUICE_") || k == "DATABASE_URL" {
                cmd.env_remove(k);
            }
        }
        cmd.arg("--config")
            .arg(&cfg_path)
            .arg("serve")
            .env("DATABASE_URL", database_url)
            .env("SLUICE_LOG", &config.log)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id().context("server exited at once")?;
        let mut server = Server {
            child,
            pid,
            base: format!("http://{listen}"),
            log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!(
                    "sluice exited during start ({status}); log: {}\n{}",
                    server.log_path.display(),
                    tail(&server.log_path, 20)
                );
            }
            if let Ok(r) = http.get(format!("{}/health", server.base)).send().await
                && r.status().is_success()
            {
                break;
            }
            if Instant::now() > deadline {
                let _ = server.child.start_kill();
                bail!(
                    "sluice did not become healthy within 60 s; log: {}",
                    server.log_path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(server)
    }

    /// (VmRSS, VmHWM) in MiB.
    pub fn rss_mib(&self) -> (f64, f64) {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let get = |key: &str| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .map(|kb| kb / 1024.0)
                .unwrap_or(f64::NAN)
        };
        (get("VmRSS:"), get("VmHWM:"))
    }

    /// SIGTERM, then wait (SIGKILL after 30 s).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    eprintln!(
                        "  note: sluice exited with {status}; log: {}",
                        self.log_path.display()
                    );
                }
            }
            Err(_) => {
                eprintln!("  note: sluice did not stop within 30 s of SIGTERM; killing it");
                self.child.kill().await?;
            }
        }
        Ok(())
    }

    /// Counts log lines at WARN or ERROR level (the bench runs the server at `warn`).
    pub fn warnings(&self) -> usize {
        std::fs::read_to_string(&self.log_path)
            .map(|s| {
                s.lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .count()
            })
            .unwrap_or(0)
    }
}

pub fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// (command name, user + system CPU seconds) from a /proc/<pid>/stat file.
fn proc_cpu_secs(path: &str) -> Option<(String, f64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let (head, rest) = s.rsplit_once(')')?;
    let comm = head.split_once('(').map(|(_, c)| c.to_string())?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15: 11 and 12 counting from the state field.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((comm, (ticks(11) + ticks(12)) / hz.max(1.0)))
}

/// CPU seconds used so far by the server, by every `postgres` process, and by this bench.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSnapshot {
    pub server: f64,
    pub postgres: f64,
    pub bench: f64,
}

impl CpuSnapshot {
    pub fn take(server_pid: u32) -> CpuSnapshot {
        let mut postgres = 0.0;
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let name = e.file_name();
                let Some(name) = name.to_str() else { continue };
                if !name.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                if let Some((comm, cpu)) = proc_cpu_secs(&format!("/proc/{name}/stat"))
                    && comm == "postgres"
                {
                    postgres += cpu;
                }
            }
        }
        CpuSnapshot {
            server: proc_cpu_secs(&format!("/proc/{server_pid}/stat")).map_or(0.0, |(_, c)| c),
            postgres,
            bench: proc_cpu_secs("/proc/self/stat").map_or(0.0, |(_, c)| c),
        }
    }

    /// Cores used by each since `earlier`, over `secs` of wall time.
    pub fn cores_since(&self, earlier: &CpuSnapshot, secs: f64) -> serde_json::Value {
        let c = |a: f64, b: f64| ((a - b) / secs.max(1e-9) * 100.0).round() / 100.0;
        serde_json::json!({
            "server": c(self.server, earlier.server),
            "postgres": c(self.postgres, earlier.postgres),
            "bench_client": c(self.bench, earlier.bench),
        })
    }
}
