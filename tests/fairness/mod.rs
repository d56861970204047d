//! Fair dispatch over real HTTP with the real dispatcher: a tenant's 20,000-run backlog
//! does not hold another tenant's runs back, weights split the starts, a small batch
//! interleaves with a big one of the same tenant, and a tenant's in-flight cap holds
//! across two processes on one PostgreSQL.
//!
//! Backlogs are written through the store before the server starts (fast, and the same
//! rows an enqueue writes); the dispatch is the server's. Order is read from the event
//! log (`started` events in id order), never from time. Tenants are named in the runs
//! (open mode) or configured in `[[tenants]]` with a token hash; no route here needs the
//! token.

mod backlog;
mod caps;
mod shares;

use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use sluice::store::{NewRun, OpenOptions, Store};

use crate::common::{Launch, TestServer, enqueue, new_run};

/// Runs written per enqueue call when filling a backlog.
const BACKLOG_CHUNK: usize = 1_000;
/// How often the event log is looked at.
const POLL_EVERY: Duration = Duration::from_millis(100);
/// How long a test waits for the starts it looks for.
const WAIT_WITHIN: Duration = Duration::from_secs(90);

/// The in-process server's config: `slots` slots, the sim provider answering after a short
/// fixed latency, and `extra` TOML (tenants).
fn config(database: &str, slots: usize, extra: &str) -> String {
    format!(
        r#"
[database]
{database}
[dispatch]
slots = {slots}
shutdown_grace = "1s"
[[providers]]
name = "sim"
kind = "sim"
[providers.sim]
latency = "20ms"
latency_jitter = "0ms"
{extra}
"#
    )
}

/// A `[[tenants]]` entry with a weight and an optional cap; the token hash is a made-up
/// one (these tests call no route that needs it).
fn tenant_toml(name: &str, weight: u32, cap: Option<u32>, hash_digit: char) -> String {
    let hash: String = std::iter::repeat_n(hash_digit, 64).collect();
    let cap = cap.map_or(String::new(), |c| format!("max_in_flight = {c}\n"));
    format!("[[tenants]]\nname = \"{name}\"\ntoken_sha256 = \"{hash}\"\nweight = {weight}\n{cap}")
}

/// Where a test's runs live: a SQLite file or a PostgreSQL database.
enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl Db {
    async fn sqlite() -> Db {
        Db::Sqlite(tempfile::tempdir().expect("a temporary folder"))
    }

    async fn postgres() -> Db {
        Db::Postgres(crate::common::fresh_pg_database().await)
    }

    /// The `[database]` lines of the server's config.
    fn toml(&self) -> String {
        match self {
            Db::Sqlite(dir) => format!("sqlite_path = {:?}", self.sqlite_path(dir)),
            Db::Postgres(url) => format!("url = {url:?}"),
        }
    }

    fn sqlite_path(&self, dir: &tempfile::TempDir) -> String {
        dir.path().join("sluice.db").display().to_string()
    }

    async fn store(&self) -> Store {
        match self {
            Db::Sqlite(dir) => Store::open(
                None,
                Path::new(&self.sqlite_path(dir)),
                &OpenOptions::default(),
            )
            .await
            .expect("open the SQLite store"),
            Db::Postgres(url) => crate::common::store::open_pg(url).await,
        }
    }

    /// Writes `n` runs of `tenant` (and `batch`), due now, oldest first.
    async fn fill(&self, tenant: &str, batch: Option<&str>, n: usize) {
        let store = self.store().await;
        let start = Utc::now() - chrono::Duration::seconds(60);
        let runs: Vec<NewRun> = (0..n)
            .map(|i| {
                let mut r = new_run(start + chrono::Duration::milliseconds(i as i64));
                r.spec.tenant = Some(tenant.to_string());
                r.batch = batch.map(str::to_string);
                r
            })
            .collect();
        for chunk in runs.chunks(BACKLOG_CHUNK) {
            store.enqueue(chunk).await.expect("write the backlog");
        }
        store.close().await;
    }

    /// The event log's `queued` and `started` events in id order: (kind, tenant, batch).
    async fn log(&self) -> Vec<(String, String, String)> {
        const SQL: &str = "SELECT kind, COALESCE(tenant, ''), COALESCE(batch, '') FROM run_events
                           WHERE kind IN ('queued', 'started') ORDER BY id";
        match self {
            Db::Sqlite(dir) => {
                let url = format!("sqlite://{}?mode=ro", self.sqlite_path(dir));
                let pool = sqlx::SqlitePool::connect(&url).await.expect("read the log");
                let rows = sqlx::query_as(SQL).fetch_all(&pool).await;
                pool.close().await;
                rows
            }
            Db::Postgres(url) => {
                let pool = sqlx::PgPool::connect(url).await.expect("read the log");
                let rows = sqlx::query_as(SQL).fetch_all(&pool).await;
                pool.close().await;
                rows
            }
        }
        .expect("the event log")
    }

    /// The (tenant, batch) of each start from the first one on, once `done` says enough
    /// have happened; panics after [`WAIT_WITHIN`].
    async fn starts_until(
        &self,
        done: impl Fn(&[(String, String)]) -> bool,
    ) -> Vec<(String, String)> {
        let deadline = tokio::time::Instant::now() + WAIT_WITHIN;
        loop {
            let starts: Vec<(String, String)> = self
                .log()
                .await
                .into_iter()
                .filter(|(kind, _, _)| kind == "started")
                .map(|(_, t, b)| (t, b))
                .collect();
            if done(&starts) {
                return starts;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the starts looked for did not happen within {WAIT_WITHIN:?}; {} starts",
                starts.len()
            );
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

/// Starts two `sluice` processes on the PostgreSQL database `url` with `config` and the
/// `SLUICE_…` settings `env`, their logs in `dir`.
async fn spawn_two(dir: &Path, url: &str, config: &Path, env: &[(&str, &str)]) -> Vec<TestServer> {
    let mut servers = Vec::new();
    for name in ["fair-one", "fair-two"] {
        let launch = Launch {
            dir,
            name,
            config: Some(config),
            database_url: Some(url),
            env,
        };
        servers.push(TestServer::spawn(launch).await);
    }
    servers
}

/// The shipped config file.
fn shipped_config() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sluice.toml")
}

/// Enqueues `n` runs of `tenant` over HTTP, all at once, spread over `servers`.
async fn enqueue_over_http(servers: &[&TestServer], tenant: &str, n: usize) {
    let calls = (0..n).map(|i| {
        let server = servers[i % servers.len()];
        let body = json!({
            "provider": "sim",
            "tenant": tenant,
            "request": {"messages": [{"role": "user", "content": format!("{tenant} #{i}")}]},
        });
        async move { enqueue(server.http(), server, body).await }
    });
    futures::future::join_all(calls).await;
}

fn count(starts: &[(String, String)], tenant: &str) -> usize {
    starts.iter().filter(|(t, _)| t == tenant).count()
}
