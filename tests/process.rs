//! The real `sluice` binary over real HTTP: a newcomer's first start, graceful shutdown on
//! SIGTERM (drain, and release after the grace period), and crash recovery after SIGKILL.
//!
//! Each test starts the binary as a child process in a fresh temporary directory, configured
//! through the environment. A [`Server`] guard SIGKILLs its child when dropped and, when the
//! test is panicking, prints the tail of the server's log, so a failure names what broke.

mod common;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// How long a started server may take to answer `GET /health`.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// How often the polls look again.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// Lines of server log printed when a test fails.
const LOG_TAIL_LINES: usize = 200;

// ---------------------------------------------------------------------------------------
// The server process
// ---------------------------------------------------------------------------------------

/// How to start one `sluice` process.
struct Launch<'a> {
    /// Working directory (the SQLite default path is relative to it).
    dir: &'a Path,
    /// A label for messages and the log file name.
    name: &'a str,
    /// Pass `--config <repo>/config/sluice.toml serve`; false starts with no arguments.
    explicit_config: bool,
    /// `DATABASE_URL`; `None` leaves it unset (embedded SQLite).
    database_url: Option<&'a str>,
    /// Further `SLUICE_…` settings.
    env: &'a [(&'a str, &'a str)],
}

/// A running (or finished) `sluice` child process. Dropping it SIGKILLs the child.
struct Server {
    name: String,
    child: Option<Child>,
    pid: u32,
    base: String,
    log: PathBuf,
    http: reqwest::Client,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build the HTTP client")
}

fn repo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sluice.toml")
}

impl Server {
    /// Starts the binary and waits until `GET /health` answers 200.
    async fn start(launch: Launch<'_>) -> Server {
        let port = free_port();
        let log = launch.dir.join(format!("{}.log", launch.name));
        let log_file = File::create(&log).expect("create the server log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        if launch.explicit_config {
            cmd.arg("--config").arg(repo_config()).arg("serve");
        }
        cmd.current_dir(launch.dir);
        // Nothing from the test's own environment may configure the child.
        for (var, _) in std::env::vars() {
            if var.starts_with("SLUICE_") || var == "DATABASE_URL" || var == "RUST_LOG" {
                cmd.env_remove(&var);
            }
        }
        cmd.env("SLUICE_LISTEN", format!("127.0.0.1:{port}"));
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
        let mut server = Server {
            name: launch.name.to_string(),
            pid: child.id(),
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            log,
            http: http_client(),
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(status) = self.child_mut().try_wait().expect("try_wait") {
                panic!(
                    "{}: the server exited before it was ready ({status})",
                    self.name
                );
            }
            if let Ok(resp) = self.http.get(self.url("/health")).send().await
                && resp.status() == reqwest::StatusCode::OK
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: GET /health did not answer 200 within {READY_WITHIN:?}",
                    self.name
                );
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    fn child_mut(&mut self) -> &mut Child {
        self.child.as_mut().expect("child process handle")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {sig} {} failed", self.pid);
    }

    /// Waits for the child to exit; panics when it is still running after `within`.
    async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child_mut().try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                panic!("{}: the server did not exit within {within:?}", self.name);
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// SIGTERM, then the exit status (bounded by `within`).
    async fn terminate(&mut self, within: Duration) -> (ExitStatus, Duration) {
        let sent = Instant::now();
        self.signal("-TERM");
        let status = self.wait_exit(within).await;
        (status, sent.elapsed())
    }

    /// SIGTERM and insist on a clean exit (code 0) within `within`.
    async fn terminate_cleanly(&mut self, within: Duration) -> Duration {
        let (status, took) = self.terminate(within).await;
        assert_eq!(
            status.code(),
            Some(0),
            "{}: SIGTERM must end the server with exit code 0, got {status}",
            self.name
        );
        took
    }

    async fn sigkill(&mut self) {
        self.signal("-KILL");
        let status = self.wait_exit(Duration::from_secs(10)).await;
        assert_eq!(status.code(), None, "{}: killed by a signal", self.name);
    }

    async fn enqueue(&self, content: &str) -> String {
        let body = json!({
            "provider": "sim",
            "request": {"messages": [{"role": "user", "content": content}]},
        });
        let resp = self
            .http
            .post(self.url("/enqueue"))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: POST /enqueue failed: {e}", self.name));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(
            status,
            reqwest::StatusCode::ACCEPTED,
            "{}: POST /enqueue answered {status}: {text}",
            self.name
        );
        let reply: Value = serde_json::from_str(&text).expect("enqueue reply is JSON");
        reply["id"]
            .as_str()
            .unwrap_or_else(|| panic!("enqueue reply without an id: {text}"))
            .to_string()
    }

    /// Enqueues `n` runs, at most 8 requests at a time; returns their ids.
    async fn enqueue_many(&self, n: usize, label: &str) -> Vec<String> {
        futures::stream::iter(0..n)
            .map(|i| async move { self.enqueue(&format!("{label} #{i}")).await })
            .buffer_unordered(8)
            .collect()
            .await
    }

    async fn get_json(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(self.url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: GET {path} failed: {e}", self.name));
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(
            status,
            reqwest::StatusCode::OK,
            "{}: GET {path} answered {status}: {text}",
            self.name
        );
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"))
    }

    async fn run(&self, id: &str) -> Value {
        self.get_json(&format!("/runs/{id}")).await
    }

    /// The time stamp of the first log line containing `needle`.
    fn logged_at(&self, needle: &str) -> Option<chrono::DateTime<chrono::Utc>> {
        let text = std::fs::read_to_string(&self.log).ok()?;
        let line = text.lines().find(|l| l.contains(needle))?;
        let stamp = line.split_whitespace().next()?;
        chrono::DateTime::parse_from_rfc3339(stamp)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"));
        let lines: Vec<&str> = text.lines().collect();
        let skip = lines.len().saturating_sub(LOG_TAIL_LINES);
        lines[skip..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- log of server `{}` (pid {}, last {LOG_TAIL_LINES} lines: {}) -----\n{}\n----- end of log `{}` -----",
                self.name,
                self.pid,
                self.log.display(),
                self.log_tail(),
                self.name
            );
        }
    }
}

/// Polls `GET /runs/{id}` until the run is in a terminal status; returns the run.
async fn wait_terminal(server: &Server, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let run = server.run(id).await;
        let status = run["status"].as_str().unwrap_or_default();
        if !matches!(status, "queued" | "running") {
            return run;
        }
        if Instant::now() > deadline {
            panic!("run {id} is still {status} after {within:?}: {run:#}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

// ---------------------------------------------------------------------------------------
// The database, read directly (PostgreSQL tests)
// ---------------------------------------------------------------------------------------

async fn pg_pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("the test cannot connect to {url}: {e}"))
}

/// Number of runs per status.
async fn run_statuses(pool: &PgPool) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>("SELECT status, count(*) FROM runs GROUP BY status")
        .fetch_all(pool)
        .await
        .expect("count runs by status")
        .into_iter()
        .collect()
}

/// Number of attempt rows per outcome (`open` for an attempt with no outcome yet).
async fn attempt_outcomes(pool: &PgPool) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT COALESCE(outcome, 'open'), count(*) FROM run_attempts GROUP BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("count attempts by outcome")
    .into_iter()
    .collect()
}

/// For each run that has any, the number of attempt rows with outcome `completed`.
async fn completed_attempts_per_run(pool: &PgPool) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(
        "SELECT run_id::text, count(*) FROM run_attempts WHERE outcome = 'completed'
         GROUP BY run_id",
    )
    .fetch_all(pool)
    .await
    .expect("count completed attempts per run")
    .into_iter()
    .collect()
}

/// Ids of the runs having an attempt with the given outcome.
async fn runs_with_outcome(pool: &PgPool, outcome: &str) -> Vec<String> {
    sqlx::query_scalar::<_, String>(
        "SELECT DISTINCT run_id::text FROM run_attempts WHERE outcome = $1 ORDER BY 1",
    )
    .bind(outcome)
    .fetch_all(pool)
    .await
    .expect("runs with an attempt outcome")
}

fn count(map: &BTreeMap<String, i64>, key: &str) -> i64 {
    map.get(key).copied().unwrap_or(0)
}

/// Polls the database until `done` holds for the run counts by status.
async fn wait_for_statuses(
    pool: &PgPool,
    what: &str,
    within: Duration,
    done: impl Fn(&BTreeMap<String, i64>) -> bool,
) -> BTreeMap<String, i64> {
    let deadline = Instant::now() + within;
    loop {
        let statuses = run_statuses(pool).await;
        if done(&statuses) {
            return statuses;
        }
        if Instant::now() > deadline {
            panic!("timed out after {within:?} waiting for {what}; runs by status: {statuses:?}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// A newcomer unpacks the repository's config, runs `sluice` with no arguments and no
/// database, and gets a completed run back from the built-in simulator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newcomer_default_start_completes_a_sim_run() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("config")).expect("create config/");
    std::fs::copy(repo_config(), dir.path().join("config/sluice.toml")).expect("copy the config");

    let mut server = Server::start(Launch {
        dir: dir.path(),
        name: "newcomer",
        explicit_config: false,
        database_url: None,
        env: &[],
    })
    .await;

    let health = server.get_json("/health").await;
    assert_eq!(health["database"]["backend"], "sqlite", "{health:#}");

    let id = server.enqueue("Say hello to a newcomer").await;
    let run = wait_terminal(&server, &id, Duration::from_secs(20)).await;
    assert_eq!(run["status"], "completed", "{run:#}");
    let content = run["output"]["content"].as_str().unwrap_or_default();
    assert!(!content.is_empty(), "a completed run has output: {run:#}");
    assert_eq!(run["attempts"], 1, "{run:#}");
    assert_eq!(run["attempt_log"][0]["outcome"], "completed", "{run:#}");

    let db = dir.path().join("data/sluice.db");
    assert!(
        db.is_file(),
        "the embedded SQLite database {} was created on first start",
        db.display()
    );

    server.terminate_cleanly(Duration::from_secs(15)).await;
}

/// SIGTERM with attempts in flight: no new claims, the in-flight attempts finish within the
/// grace period, the rest stays queued, and the process exits 0 leaving nothing `running`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_runs_and_exits_zero() {
    const RUNS: usize = 30;
    const SLOTS: i64 = 10;
    let url = common::fresh_pg_database().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [
        ("SLUICE_DISPATCH__SLOTS", "10"),
        ("SLUICE_DISPATCH__SHUTDOWN_GRACE", "20s"),
        ("SLUICE_PROVIDERS__SIM__SIM__LATENCY", "1s"),
        ("SLUICE_PROVIDERS__SIM__SIM__LATENCY_JITTER", "200ms"),
    ];
    let mut server = Server::start(Launch {
        dir: dir.path(),
        name: "drain",
        explicit_config: true,
        database_url: Some(&url),
        env: &env,
    })
    .await;
    let pool = pg_pool(&url).await;

    let ids = server.enqueue_many(RUNS, "drain").await;
    assert_eq!(ids.len(), RUNS);
    let before = wait_for_statuses(&pool, "every slot busy", Duration::from_secs(10), |s| {
        count(s, "running") == SLOTS
    })
    .await;
    let in_flight = count(&before, "running");
    eprintln!("drain: before SIGTERM {before:?}");

    let sigterm_at = chrono::Utc::now();
    let took = server.terminate_cleanly(Duration::from_secs(15)).await;
    // In-flight attempts take about a second; draining them must not take much longer.
    assert!(
        took < Duration::from_secs(10),
        "draining {in_flight} in-flight attempts took {took:?}"
    );

    let after = run_statuses(&pool).await;
    eprintln!("drain: SIGTERM to exit took {took:?}; after {after:?}");
    let completed = count(&after, "completed");
    let queued = count(&after, "queued");
    assert_eq!(
        count(&after, "running"),
        0,
        "nothing is left running: {after:?}"
    );
    assert_eq!(
        completed + queued,
        RUNS as i64,
        "every run is completed or back in the queue: {after:?}"
    );
    assert!(
        completed >= in_flight,
        "the {in_flight} runs seen in flight before SIGTERM finished during the drain: {after:?}"
    );
    assert!(queued > 0, "some runs were never started: {after:?}");
    let outcomes = attempt_outcomes(&pool).await;
    assert_eq!(
        outcomes,
        BTreeMap::from([("completed".to_string(), completed)]),
        "with a long grace every started attempt completed (none released or left open)"
    );
    // The server notices the signal a moment after it is sent; from the line it logs once
    // claiming has stopped, nothing may start.
    let stopped_at = server.logged_at("claims stopped").unwrap_or_else(|| {
        panic!(
            "the server logged no `claims stopped` line:\n{}",
            server.log_tail()
        )
    });
    assert!(
        stopped_at >= sigterm_at,
        "claims stopped before SIGTERM was sent"
    );
    let started_after_stop: i64 =
        sqlx::query_scalar("SELECT count(*) FROM run_attempts WHERE started_at > $1")
            .bind(stopped_at)
            .fetch_one(&pool)
            .await
            .expect("count attempts started after claims stopped");
    assert_eq!(
        started_after_stop, 0,
        "no attempt may start once claiming stopped on SIGTERM: {after:?}"
    );
    let queued_with_attempts: i64 =
        sqlx::query_scalar("SELECT count(*) FROM runs WHERE status = 'queued' AND attempts <> 0")
            .fetch_one(&pool)
            .await
            .expect("count queued runs with attempts");
    assert_eq!(queued_with_attempts, 0, "queued runs were never attempted");
    pool.close().await;
}

/// SIGTERM when the attempts cannot finish within the grace period: they are released back
/// to the queue (not counted as attempts), the process still exits 0 promptly, and a new
/// process on the same database completes every run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_after_the_grace_period_releases_runs_and_a_restart_completes_them() {
    const RUNS: usize = 20;
    const SLOTS: i64 = 8;
    let url = common::fresh_pg_database().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut first = Server::start(Launch {
        dir: dir.path(),
        name: "release-first",
        explicit_config: true,
        database_url: Some(&url),
        env: &[
            ("SLUICE_DISPATCH__SLOTS", "8"),
            ("SLUICE_DISPATCH__SHUTDOWN_GRACE", "200ms"),
            ("SLUICE_PROVIDERS__SIM__SIM__LATENCY", "5s"),
            ("SLUICE_PROVIDERS__SIM__SIM__LATENCY_JITTER", "0ms"),
        ],
    })
    .await;
    let pool = pg_pool(&url).await;

    let ids = first.enqueue_many(RUNS, "release").await;
    wait_for_statuses(&pool, "every slot busy", Duration::from_secs(10), |s| {
        count(s, "running") == SLOTS
    })
    .await;

    let took = first.terminate_cleanly(Duration::from_secs(10)).await;
    eprintln!("release: SIGTERM to exit took {took:?}");
    assert!(
        took < Duration::from_secs(3),
        "with a 200ms grace the process exits promptly, took {took:?}"
    );

    let after = run_statuses(&pool).await;
    assert_eq!(
        after,
        BTreeMap::from([("queued".to_string(), RUNS as i64)]),
        "every run is back in the queue, nothing running or finished"
    );
    let outcomes = attempt_outcomes(&pool).await;
    assert_eq!(
        outcomes,
        BTreeMap::from([("released".to_string(), SLOTS)]),
        "each interrupted attempt is recorded as released"
    );
    let released = runs_with_outcome(&pool, "released").await;
    assert_eq!(released.len(), SLOTS as usize);
    let charged: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE attempts <> 0")
        .fetch_one(&pool)
        .await
        .expect("count runs with attempts");
    assert_eq!(
        charged, 0,
        "a released attempt does not count against max_attempts"
    );

    let mut second = Server::start(Launch {
        dir: dir.path(),
        name: "release-second",
        explicit_config: true,
        database_url: Some(&url),
        env: &[
            ("SLUICE_DISPATCH__SLOTS", "8"),
            ("SLUICE_PROVIDERS__SIM__SIM__LATENCY", "200ms"),
            ("SLUICE_PROVIDERS__SIM__SIM__LATENCY_JITTER", "50ms"),
        ],
    })
    .await;
    wait_for_statuses(&pool, "every run completed", Duration::from_secs(30), |s| {
        count(s, "completed") == RUNS as i64
    })
    .await;

    for id in &released {
        let run = second.run(id).await;
        assert_eq!(run["status"], "completed", "{run:#}");
        assert_eq!(
            run["attempts"], 1,
            "the released attempt is not counted: {run:#}"
        );
        let log: Vec<(Value, Value)> = run["attempt_log"]
            .as_array()
            .expect("attempt_log is an array")
            .iter()
            .map(|a| (a["attempt"].clone(), a["outcome"].clone()))
            .collect();
        assert_eq!(
            log,
            vec![
                (json!(1), json!("released")),
                (json!(1), json!("completed"))
            ],
            "attempt 1 was released, then tried again and completed: {run:#}"
        );
    }
    for id in &ids {
        let run = second.run(id).await;
        assert_eq!(run["status"], "completed", "{run:#}");
    }
    second.terminate_cleanly(Duration::from_secs(15)).await;
    pool.close().await;
}

/// SIGKILL with attempts in flight, then a new process on the same database: the dead
/// process's leases expire, the rescuer requeues its runs, and every run completes exactly
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_flight_loses_nothing_and_completes_nothing_twice() {
    const RUNS: usize = 100;
    let url = common::fresh_pg_database().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let env = [
        ("SLUICE_DISPATCH__SLOTS", "20"),
        ("SLUICE_DISPATCH__LEASE", "2s"),
        ("SLUICE_DISPATCH__HEARTBEAT_INTERVAL", "300ms"),
        ("SLUICE_DISPATCH__RESCUE_INTERVAL", "300ms"),
        ("SLUICE_PROVIDERS__SIM__SIM__LATENCY", "500ms"),
        ("SLUICE_PROVIDERS__SIM__SIM__LATENCY_JITTER", "300ms"),
    ];
    let mut first = Server::start(Launch {
        dir: dir.path(),
        name: "crash-first",
        explicit_config: true,
        database_url: Some(&url),
        env: &env,
    })
    .await;
    let pool = pg_pool(&url).await;

    let ids = first.enqueue_many(RUNS, "crash").await;
    assert_eq!(ids.len(), RUNS);
    wait_for_statuses(
        &pool,
        "some runs completed and some in flight",
        Duration::from_secs(20),
        |s| count(s, "completed") >= 5 && count(s, "running") >= 5,
    )
    .await;
    first.sigkill().await;

    // The dead process can write nothing more: this is what it left behind.
    let at_kill = run_statuses(&pool).await;
    let orphaned = count(&at_kill, "running");
    eprintln!("crash: left behind by the SIGKILL {at_kill:?}");
    assert!(
        orphaned > 0,
        "the kill must land with attempts in flight, or the rescue path is not exercised: {at_kill:?}"
    );
    assert!(count(&at_kill, "completed") < RUNS as i64, "{at_kill:?}");

    let mut second = Server::start(Launch {
        dir: dir.path(),
        name: "crash-second",
        explicit_config: true,
        database_url: Some(&url),
        env: &env,
    })
    .await;
    let end = wait_for_statuses(&pool, "every run terminal", Duration::from_secs(60), |s| {
        count(s, "queued") == 0 && count(s, "running") == 0
    })
    .await;

    assert_eq!(
        end,
        BTreeMap::from([("completed".to_string(), RUNS as i64)]),
        "all {RUNS} runs exist and completed (sim has no failures configured)"
    );
    let per_run = completed_attempts_per_run(&pool).await;
    assert_eq!(per_run.len(), RUNS, "every run has a completed attempt");
    let twice: Vec<_> = per_run.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "runs completed more than once: {twice:?}");
    let mut expected_ids: Vec<String> = ids.clone();
    expected_ids.sort();
    let completed_ids: Vec<String> = per_run.keys().cloned().collect();
    assert_eq!(
        completed_ids, expected_ids,
        "the completed runs are the enqueued ones"
    );

    let outcomes = attempt_outcomes(&pool).await;
    assert_eq!(
        count(&outcomes, "abandoned"),
        orphaned,
        "each run in flight at the kill has exactly one abandoned attempt: {outcomes:?}"
    );
    assert_eq!(
        count(&outcomes, "open"),
        0,
        "no attempt is left open: {outcomes:?}"
    );
    assert_eq!(
        count(&outcomes, "completed"),
        RUNS as i64,
        "attempt outcomes: {outcomes:?}"
    );

    // How a rescued run reads over HTTP.
    let abandoned = runs_with_outcome(&pool, "abandoned").await;
    let run = second.run(&abandoned[0]).await;
    assert_eq!(run["status"], "completed", "{run:#}");
    assert_eq!(run["attempts"], 2, "the abandoned attempt counts: {run:#}");
    let outcomes_of_run: Vec<&str> = run["attempt_log"]
        .as_array()
        .expect("attempt_log is an array")
        .iter()
        .map(|a| a["outcome"].as_str().unwrap_or("null"))
        .collect();
    assert_eq!(outcomes_of_run, ["abandoned", "completed"], "{run:#}");
    assert!(
        run["error"].is_null(),
        "a run that completed after a rescue carries no error: {run:#}"
    );

    second.terminate_cleanly(Duration::from_secs(15)).await;
    drop(first);
    pool.close().await;
}
