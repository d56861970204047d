//! Tenant tokens at start: `sluice serve --check-config` reads `token_env` variables from
//! the environment, names a missing or empty one (exit 2), and never prints a token; and
//! the OpenAPI document describes the bearer scheme and each route's 401 and 403.

use std::process::Command;

use serde_json::Value;

use super::{TOKEN_A, TOKEN_B, tenants_toml};

/// `sluice --config <file> serve --check-config` with only `env` set: exit code, stdout
/// and stderr.
fn check_config(toml: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.toml");
    std::fs::write(&path, toml).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("--config")
        .arg(&path)
        .args(["serve", "--check-config"])
        .current_dir(dir.path())
        .env_clear()
        .envs(env.iter().copied());
    let out = cmd.output().expect("run sluice");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn check_config_resolves_token_variables_and_names_a_missing_one() {
    let toml = tenants_toml("");
    let (code, text) = check_config(
        &toml,
        &[("TEAM_A_TOKEN", TOKEN_A), ("TEAM_B_TOKEN", TOKEN_B)],
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("2 tenant(s)"), "{text}");
    for env in [
        &[("TEAM_A_TOKEN", TOKEN_A)][..],
        &[("TEAM_A_TOKEN", TOKEN_A), ("TEAM_B_TOKEN", "")][..],
    ] {
        let (code, text) = check_config(&toml, env);
        assert_eq!(code, Some(2), "{text}");
        assert!(
            text.contains("tenants[1].token_env") && text.contains("TEAM_B_TOKEN"),
            "the error names the key and the variable: {text}"
        );
        assert!(!text.contains(TOKEN_A), "no token is printed: {text}");
    }
    let (code, text) = check_config("", &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("open mode"), "{text}");
}

#[test]
fn the_openapi_document_describes_bearer_auth() {
    let doc: Value = serde_json::to_value(sluice::api::openapi()).unwrap();
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["scheme"], "bearer", "{scheme}");
    let op = |path: &str| doc["paths"][path]["get"].clone();
    for path in [
        "/runs/{id}",
        "/events",
        "/tenants/me",
        "/health",
        "/tenants/{name}",
    ] {
        assert!(
            op(path)["responses"]["401"].is_object(),
            "{path} documents its 401"
        );
        assert_eq!(
            op(path)["security"][0]["bearer"],
            serde_json::json!([]),
            "{path}"
        );
    }
    for path in ["/health", "/tenants/{name}"] {
        assert!(
            op(path)["responses"]["403"].is_object(),
            "{path} documents its 403"
        );
    }
    for path in ["/livez", "/metrics"] {
        assert!(op(path)["responses"]["401"].is_null(), "{path} is open");
        assert_eq!(op(path)["security"], serde_json::json!([]), "{path}");
    }
    assert!(op("/runs/{id}")["responses"]["403"].is_null());
}
