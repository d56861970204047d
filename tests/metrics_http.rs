//! `/metrics` over HTTP: Prometheus text where every metric family has HELP and TYPE,
//! every name carries the `sluice_` prefix, no label holds a run id, and `promtool check
//! metrics` finds nothing to say.

use std::collections::{BTreeSet, HashSet};

use crate::common::{TestServer, enqueue, http, scrape, series_value, wait_run};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_described_prefixed_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[database]
sqlite_path = {:?}
[[providers]]
name = "sim"
kind = "sim"
[providers.sim]
latency = "5ms"
latency_jitter = "0ms"
"#,
        dir.path().join("sluice.db").display().to_string()
    );
    let server = TestServer::start(&config, &[]).await;
    let client = http();
    let run_reads = r#"sluice_http_requests_total{route="/runs/{id}",method="GET",status="200"}"#;
    let run_reads_before = series_value(&scrape(&client, &server).await, run_reads);
    let chat = json!({"messages": [{"role": "user", "content": "hi"}]});
    let id = enqueue(
        &client,
        &server,
        json!({"provider": "sim", "request": chat}),
    )
    .await;
    wait_run(&client, &server, &id, "completed", |r| {
        r["status"] == "completed"
    })
    .await;
    client
        .get(server.url(&format!("/runs/{id}")))
        .send()
        .await
        .unwrap();

    let resp = client.get(server.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = resp.text().await.unwrap();

    let mut described = HashSet::new();
    let mut typed = HashSet::new();
    let mut sampled = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP has text");
            assert!(!help.trim().is_empty(), "{name} has empty HELP");
            described.insert(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split(' ').next().unwrap().to_string());
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| described.contains(*f)))
                .unwrap_or(name);
            sampled.insert(family.to_string());
            assert!(!line.contains(&id), "a run id leaked into a label: {line}");
        }
    }
    for family in &sampled {
        assert!(family.starts_with("sluice_"), "unprefixed metric {family}");
        assert!(described.contains(family), "{family} has no HELP");
        assert!(typed.contains(family), "{family} has no TYPE");
    }
    for expected in [
        "sluice_runs_enqueued_total",
        "sluice_runs_finished_total",
        "sluice_queue_depth",
        "sluice_queue_wait_seconds",
        "sluice_run_duration_seconds",
        "sluice_attempts_total",
        "sluice_worker_slots",
        "sluice_sse_subscribers",
        "sluice_http_requests_total",
        "sluice_http_request_duration_seconds",
    ] {
        assert!(
            sampled.contains(expected),
            "{expected} missing from:\n{text}"
        );
    }
    assert!(
        text.contains(
            r#"sluice_http_requests_total{route="/runs/{id}",method="GET",status="200"}"#
        ),
        "requests are counted by route template:\n{text}"
    );
    assert!(
        series_value(&text, run_reads) > run_reads_before,
        "this test's reads of its run are counted:\n{text}"
    );
    promtool_accepts(&text);
    server.stop().await;
}

/// `promtool check metrics`: the exposition parses, and names, units and suffixes follow
/// Prometheus's conventions (scripts/test.sh installs promtool).
fn promtool_accepts(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool on PATH (Debian package prometheus; scripts/test.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics found problems:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
