//! A PostgreSQL outage: `/health` turns 503 while the database is down and 200 again when
//! it returns, with no server restart, and no run is lost. The test runs its own private
//! PostgreSQL cluster, since it stops and starts it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{TestServer, enqueue, get_run, http};
use serde_json::json;

/// A throwaway PostgreSQL cluster owned by this test.
struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    run_as: Option<String>,
    _dir: tempfile::TempDir,
}

fn find_pg_bin() -> PathBuf {
    let candidates = std::env::var_os("SLUICE_TEST_PG_BIN")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::fs::read_dir("/usr/lib/postgresql")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("bin")),
        );
    let mut found: Vec<PathBuf> = candidates
        .filter(|dir| dir.join("pg_ctl").exists() && dir.join("initdb").exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries (pg_ctl, initdb) found in SLUICE_TEST_PG_BIN or \
             /usr/lib/postgresql/*/bin: install the postgresql package (scripts/test.sh does)"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl Cluster {
    fn run(&self, program: &Path, args: &[&str]) -> std::process::Output {
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.args(args)
            .current_dir(self._dir.path())
            .output()
            .expect("run a PostgreSQL tool")
    }

    fn start_new() -> Cluster {
        let bin = find_pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("sluice-outage-")
            .tempdir_in("/tmp")
            .unwrap();
        let run_as = is_root().then(|| "postgres".to_string());
        if run_as.is_some() {
            let status = Command::new("chown")
                .args(["postgres", dir.path().to_str().unwrap()])
                .status()
                .unwrap();
            assert!(status.success(), "chown the cluster folder to postgres");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Cluster {
            data: dir.path().join("data"),
            bin,
            port,
            run_as,
            _dir: dir,
        };
        let out = cluster.run(
            &cluster.bin.join("initdb"),
            &[
                "-D",
                cluster.data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.start();
        cluster
    }

    fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self._dir.path().display()
        );
        let log = self._dir.path().join("log");
        let out = self.run(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-w",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn stop(&self) {
        let out = self.run(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.run(
            &self.bin.join("pg_ctl"),
            &["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"],
        );
    }
}

async fn health(client: &reqwest::Client, server: &TestServer) -> (u16, serde_json::Value) {
    let resp = client.get(server.url("/health")).send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or_default())
}

async fn wait_health(client: &reqwest::Client, server: &TestServer, want: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = health(client, server).await;
        if status == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/health never answered {want}; last {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_database_and_no_run_is_lost() {
    let cluster = Cluster::start_new();
    let config = format!(
        r#"
[database]
url = {:?}
acquire_timeout = "1s"
[dispatch]
slots = 4
lease = "3s"
heartbeat_interval = "500ms"
rescue_interval = "500ms"
shutdown_grace = "1s"
[retry]
backoff_base = "50ms"
backoff_cap = "200ms"
[http]
request_timeout = "5s"
[[providers]]
name = "sim"
kind = "sim"
[providers.sim]
latency = "300ms"
latency_jitter = "100ms"
"#,
        cluster.url()
    );
    let server = TestServer::start(&config, &[]).await;
    let client = http();
    wait_health(&client, &server, 200).await;
    let chat = json!({"messages": [{"role": "user", "content": "hi"}]});
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(
            enqueue(
                &client,
                &server,
                json!({"provider": "sim", "request": chat}),
            )
            .await,
        );
    }

    cluster.stop();
    wait_health(&client, &server, 503).await;
    let (_, body) = health(&client, &server).await;
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["database"]["reachable"], false);
    // Enqueueing while the database is down is refused with 503, never another 5xx.
    let resp = client
        .post(server.url("/enqueue"))
        .json(&json!({"provider": "sim", "request": chat}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503, "enqueue during the outage");
    let err: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(err["error"]["code"], "unavailable");

    cluster.start();
    wait_health(&client, &server, 200).await;
    ids.push(
        enqueue(
            &client,
            &server,
            json!({"provider": "sim", "request": chat}),
        )
        .await,
    );

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for id in &ids {
        loop {
            let run = get_run(&client, &server, id).await;
            if run["status"] == "completed" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "run {id} did not complete after the outage: {run}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    server.stop().await;
}
