//! The status page in a real browser: headless Chromium (Debian's package, which
//! scripts/test.sh installs when missing) loads `/ui`, sees a run the test enqueues appear
//! and complete live, opens it with the keyboard, and fits a phone's width. Screenshots of
//! each step are kept under the target directory (`ui-screenshots/`) as test artefacts.

use crate::common::{TestServer, get_run, http, run_script, screenshot_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_a_run_complete_live() {
    let server = TestServer::start_on_sqlite(
        "[[providers]]\nname = \"sim\"\nkind = \"sim\"\n\
         [providers.sim]\nlatency = \"1500ms\"\nlatency_jitter = \"0ms\"\n",
    )
    .await;
    let shots = screenshot_dir();
    let base = server.url("");
    let saw = run_script(
        "ui/browser.py",
        vec![
            base.trim_end_matches('/').to_string(),
            shots.display().to_string(),
        ],
    )
    .await;
    eprintln!("status page screenshots in {}", shots.display());

    assert_eq!(saw["console_errors"], serde_json::json!([]), "{saw}");
    assert_eq!(
        saw["providers"][0].as_str().map(|p| p.starts_with("sim")),
        Some(true),
        "{saw}"
    );
    assert_eq!(saw["status_badge"], "ok", "{saw}");
    assert!(
        matches!(saw["first_status"].as_str(), Some("queued" | "running")),
        "the run shows up while it runs: {saw}"
    );
    assert_eq!(saw["final_status"], "completed", "{saw}");
    let run_id = saw["run"].as_str().unwrap();
    assert!(
        saw["detail_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("#/runs/{run_id}")),
        "{saw}"
    );
    let run = get_run(&http(), &server, run_id).await;
    assert_eq!(saw["detail_output"], run["output"]["content"], "{saw}");
    assert_eq!(saw["detail_attempts"], 1, "{saw}");
    assert_eq!(saw["phone_overflow"], false, "{saw}");
    for shot in [
        "1-overview",
        "2-run-appears",
        "3-run-completed",
        "4-run-detail",
        "5-phone",
    ] {
        assert!(shots.join(format!("{shot}.png")).is_file(), "{shot} kept");
    }
    server.stop().await;
}
