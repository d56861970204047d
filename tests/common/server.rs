//! [`TestServer`]: one Sluice server for one test, listening on 127.0.0.1 port 0, either
//! in this process (`sluice::app::serve`, configured by TOML and `SLUICE_…` overrides) or
//! as the `sluice` binary in a temporary folder (configured by its environment). It knows
//! its URL, carries its own HTTP client, and its shutdown asserts a clean exit. A server
//! process is SIGKILLed when the guard drops, and when the test is panicking the tail of
//! its log is printed, so a failure names what broke.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::runs::http;

/// How long a server may take to listen (and, as a process, to answer `GET /livez`).
const READY_WITHIN: Duration = Duration::from_secs(30);
/// How long [`TestServer::stop`] waits for a clean exit.
const STOP_WITHIN: Duration = Duration::from_secs(60);
/// How long a SIGKILLed process may take to be reaped.
const KILLED_WITHIN: Duration = Duration::from_secs(10);
/// How often the start and exit polls look again.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// What a process-only call on an in-process server says.
const NOT_A_PROCESS: &str = "only a server started as a process has a pid and a log";
/// Lines of server log printed when a test fails.
const LOG_TAIL_LINES: usize = 200;

/// How to start one `sluice` process.
pub struct Launch<'a> {
    /// Working directory (the SQLite default path is relative to it).
    pub dir: &'a Path,
    /// A label for messages and the log file name.
    pub name: &'a str,
    /// `--config <path> serve`; `None` starts the binary with no arguments.
    pub config: Option<&'a Path>,
    /// `DATABASE_URL`; `None` leaves it unset (embedded SQLite).
    pub database_url: Option<&'a str>,
    /// Further `SLUICE_…` settings.
    pub env: &'a [(&'a str, &'a str)],
}

/// A running (or stopped) server.
pub struct TestServer {
    pub addr: SocketAddr,
    http: reqwest::Client,
    running: Running,
    /// A folder the server's files live in, removed once the server is gone.
    _dir: Option<tempfile::TempDir>,
}

enum Running {
    InProcess(InProcess),
    Process(ServerProcess),
}

/// `sluice::app::serve` on a task of this process; the task is aborted on drop.
struct InProcess {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A `sluice` child process; SIGKILLed on drop.
struct ServerProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl TestServer {
    /// Starts `sluice::app::serve` in this process with the given TOML and `SLUICE_…`
    /// overrides (listen is forced to 127.0.0.1:0).
    pub async fn start(toml: &str, env: &[(&str, &str)]) -> TestServer {
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push(("SLUICE_LISTEN".into(), "127.0.0.1:0".into()));
        let config = sluice::config::Config::from_toml_and_env(toml, Path::new("test.toml"), env)
            .expect("test config is valid");
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (addr_tx, addr_rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            sluice::app::serve(
                config,
                std::sync::Arc::new(sluice::clock::SystemClock),
                async move {
                    let _ = stop_rx.await;
                },
                move |addr| {
                    let _ = addr_tx.send(addr);
                },
            )
            .await
        });
        let addr = match tokio::time::timeout(READY_WITHIN, addr_rx).await {
            Ok(Ok(addr)) => addr,
            Ok(Err(_)) => {
                // The callback was dropped unused: serve failed before listening.
                let result = task.await;
                panic!("the server did not start listening: {result:?}");
            }
            Err(_) => panic!("the server did not start listening within {READY_WITHIN:?}"),
        };
        TestServer {
            addr,
            http: http(),
            running: Running::InProcess(InProcess {
                stop: Some(stop_tx),
                task: Some(task),
            }),
            _dir: None,
        }
    }

    /// [`TestServer::start`] on a fresh SQLite file in a folder kept as long as the server.
    pub async fn start_on_sqlite(toml: &str) -> TestServer {
        TestServer::start_on_sqlite_with(toml, &[]).await
    }

    /// [`TestServer::start_on_sqlite`] with further environment (tenant tokens, say).
    pub async fn start_on_sqlite_with(toml: &str, env: &[(&str, &str)]) -> TestServer {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let db = dir.path().join("sluice.db").display().to_string();
        let mut env = env.to_vec();
        env.push(("SLUICE_DATABASE__SQLITE_PATH", &db));
        TestServer::start(toml, &env).await.owning(dir)
    }

    /// Starts the `sluice` binary and waits until `GET /livez` answers 200 (it listens
    /// once its database is open; `/livez` answers without a token, tenants or not). Nothing from
    /// the test's own environment configures the child: only `launch` does.
    pub async fn spawn(launch: Launch<'_>) -> TestServer {
        let log = launch.dir.join(format!("{}.log", launch.name));
        let log_file = File::create(&log).expect("create the server log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        if let Some(config) = launch.config {
            cmd.arg("--config").arg(config).arg("serve");
        }
        cmd.current_dir(launch.dir);
        for (var, _) in std::env::vars() {
            if var.starts_with("SLUICE_") || var == "DATABASE_URL" || var == "RUST_LOG" {
                cmd.env_remove(&var);
            }
        }
        // Port 0: the address is read back from the log line announcing it.
        cmd.env("SLUICE_LISTEN", "127.0.0.1:0");
        if let Some(url) = launch.database_url {
            cmd.env("DATABASE_URL", url);
        }
        for (k, v) in launch.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone the log file handle"))
            .stderr(log_file);
        let child = cmd.spawn().expect("spawn the sluice binary");
        let mut process = ServerProcess {
            name: launch.name.to_string(),
            child,
            log,
        };
        let http = http();
        let addr = process.wait_ready(&http).await;
        TestServer {
            addr,
            http,
            running: Running::Process(process),
            _dir: None,
        }
    }

    /// Keeps `dir` (the server's database folder, say) until the server is dropped.
    pub fn owning(mut self, dir: tempfile::TempDir) -> TestServer {
        self._dir = Some(dir);
        self
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The server's own HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Shuts down gracefully and checks the server returned cleanly.
    pub async fn stop(mut self) {
        self.stop_within(STOP_WITHIN).await;
    }

    /// Shuts down gracefully (the stop signal in process, SIGTERM to a process), asserts a
    /// clean end (`serve` returned `Ok`, or exit code 0) within `within`, and returns how
    /// long it took.
    pub async fn stop_within(&mut self, within: Duration) -> Duration {
        let sent = Instant::now();
        match &mut self.running {
            Running::InProcess(server) => {
                if let Some(tx) = server.stop.take() {
                    let _ = tx.send(());
                }
                let task = server.task.take().expect("the server is stopped once");
                let joined = tokio::time::timeout(within, task)
                    .await
                    .unwrap_or_else(|_| {
                        panic!("serve returned within {within:?} of the shutdown signal")
                    });
                let result = joined.expect("the serve task did not panic");
                assert!(result.is_ok(), "serve returned an error: {result:?}");
            }
            Running::Process(process) => {
                process.signal("-TERM");
                let status = process.wait_exit(within).await;
                assert_eq!(
                    status.code(),
                    Some(0),
                    "{}: SIGTERM must end the server with exit code 0, got {status}",
                    process.name
                );
            }
        }
        sent.elapsed()
    }

    /// SIGKILLs the server process and waits until it is gone.
    pub async fn sigkill(&mut self) {
        let process = self.process_mut();
        process.signal("-KILL");
        let status = process.wait_exit(KILLED_WITHIN).await;
        assert_eq!(status.code(), None, "{}: killed by a signal", process.name);
    }

    /// Everything the server process logged so far.
    pub fn log_text(&self) -> String {
        let log = &self.process().log;
        std::fs::read_to_string(log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// The time stamp of the first log line containing `needle`.
    pub fn logged_at(&self, needle: &str) -> Option<chrono::DateTime<chrono::Utc>> {
        let text = self.log_text();
        let line = text.lines().find(|l| l.contains(needle))?;
        let stamp = line.split_whitespace().next()?;
        chrono::DateTime::parse_from_rfc3339(stamp)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    }

    /// The last lines of the server process's log.
    pub fn log_tail(&self) -> String {
        self.process().log_tail()
    }

    fn process(&self) -> &ServerProcess {
        match &self.running {
            Running::Process(process) => process,
            Running::InProcess(_) => panic!("{NOT_A_PROCESS}"),
        }
    }

    fn process_mut(&mut self) -> &mut ServerProcess {
        match &mut self.running {
            Running::Process(process) => process,
            Running::InProcess(_) => panic!("{NOT_A_PROCESS}"),
        }
    }
}

impl ServerProcess {
    /// Waits for the log line announcing the bound address, then for `GET /livez` to
    /// answer 200; returns the address.
    async fn wait_ready(&mut self, http: &reqwest::Client) -> SocketAddr {
        let deadline = Instant::now() + READY_WITHIN;
        let mut addr = None;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "{}: the server exited before it was ready ({status})",
                    self.name
                );
            }
            if addr.is_none() {
                addr = self.listening_addr();
            }
            if let Some(addr) = addr
                && let Ok(resp) = http.get(format!("http://{addr}/livez")).send().await
                && resp.status() == reqwest::StatusCode::OK
            {
                return addr;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: not listening and answering GET /livez with 200 within {READY_WITHIN:?}",
                    self.name
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// The address of the server's `listening addr=…` log line, once it is written.
    fn listening_addr(&self) -> Option<SocketAddr> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        text.lines()
            .filter(|l| l.contains("listening"))
            .find_map(|l| {
                l.split_once("addr=")?
                    .1
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {pid} failed");
    }

    /// Waits for the child to exit; panics when it is still running after `within`.
    async fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                panic!("{}: the server did not exit within {within:?}", self.name);
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"));
        let lines: Vec<&str> = text.lines().collect();
        let skip = lines.len().saturating_sub(LOG_TAIL_LINES);
        lines[skip..].join("\n")
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- log of server `{}` (pid {}, last {LOG_TAIL_LINES} lines: {}) -----\n{}\n----- end of log `{}` -----",
                self.name,
                self.child.id(),
                self.log.display(),
                self.log_tail(),
                self.name
            );
        }
    }
}
