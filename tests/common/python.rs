//! The suite's Python scripts (the official OpenAI SDK, Playwright driving Chromium), run
//! with the test venv's `python` that scripts/test.sh puts first on PATH; what they print
//! is one JSON object.

use std::path::PathBuf;
use std::process::Command;

/// Where browser tests keep their screenshots: `ui-screenshots/` in the target directory.
pub fn screenshot_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("ui-screenshots")
}

/// Runs `tests/<script>` with `args` off the async runtime; panics with what it printed
/// when it fails, and returns its JSON.
pub async fn run_script(script: &str, args: Vec<String>) -> serde_json::Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(script);
    let out =
        tokio::task::spawn_blocking(move || {
            Command::new("python").arg(path).args(args).output().expect(
                "python on PATH with the test venv's packages (scripts/test.sh puts it first)",
            )
        })
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed; it printed {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{script} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
