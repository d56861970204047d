//! Tenants over real HTTP: bearer tokens and what each caller may see (`isolation`, which
//! walks every route of the router), hostile `Authorization` headers (`hostile`), the
//! per-tenant limits (`limits`), tokens kept out of logs, rows and answers (`secrecy`),
//! and tokens read at start and described in the OpenAPI document (`config`). Each test starts its own server with two tenants,
//! `team-a` and `team-b`, and an admin token, all given through the environment.

mod config;
mod hostile;
mod isolation;
mod limits;
mod secrecy;
mod stream_tokens;

use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use serde_json::Value;

use crate::common::TestServer;

pub const TOKEN_A: &str = "token-of-team-a-0123456789";
pub const TOKEN_B: &str = "token-of-team-b-9876543210";
pub const ADMIN_TOKEN: &str = "admin-token-abcdef";
/// The secret stream tokens are signed with.
pub const STREAM_SECRET: &str = "stream-token-secret-of-32-bytes-or-more";
/// How long one request may take.
const REQUEST_WITHIN: Duration = Duration::from_secs(30);

/// Two tenants (`team-a`, `team-b`) whose tokens come from the environment, and a fast
/// `sim` provider; `extra_a` is appended to team-a's table (its limits, say).
pub fn tenants_toml(extra_a: &str) -> String {
    format!(
        "[[providers]]\nname = \"sim\"\nkind = \"sim\"\n\
         [providers.sim]\nlatency = \"10ms\"\nlatency_jitter = \"0ms\"\n\
         [[tenants]]\nname = \"team-a\"\ntoken_env = \"TEAM_A_TOKEN\"\n{extra_a}\n\
         [[tenants]]\nname = \"team-b\"\ntoken_env = \"TEAM_B_TOKEN\"\n"
    )
}

/// The environment holding the tokens of [`tenants_toml`] and the admin token.
pub fn token_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("TEAM_A_TOKEN", TOKEN_A),
        ("TEAM_B_TOKEN", TOKEN_B),
        ("SLUICE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("SLUICE_STREAM_TOKEN_SECRET", STREAM_SECRET),
    ]
}

/// A server on a fresh SQLite file with [`tenants_toml`] and [`token_env`].
pub async fn start_tenants(extra_a: &str) -> TestServer {
    TestServer::start_on_sqlite_with(&tenants_toml(extra_a), &token_env()).await
}

/// An HTTP client that sends `token` as its bearer token on every request (none: no
/// header), so the shared run and SSE helpers call as that caller.
pub fn client_as(token: Option<&str>) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut headers = HeaderMap::new();
    if let Some(token) = token {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).expect("a header");
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    reqwest::Client::builder()
        .timeout(REQUEST_WITHIN)
        .default_headers(headers)
        .build()
        .expect("http client")
}

/// Clients of team-a, team-b and the admin.
pub fn callers() -> (reqwest::Client, reqwest::Client, reqwest::Client) {
    (
        client_as(Some(TOKEN_A)),
        client_as(Some(TOKEN_B)),
        client_as(Some(ADMIN_TOKEN)),
    )
}

/// `GET path` as `client`, read as JSON.
pub async fn get_json(client: &reqwest::Client, server: &TestServer, path: &str) -> Value {
    let resp = client.get(server.url(path)).send().await;
    let resp = resp.unwrap_or_else(|e| panic!("GET {path}: {e}"));
    resp.json()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: not JSON: {e}"))
}

/// A live chat run on `sim`, with `extra` fields merged in.
pub fn chat(extra: Value) -> Value {
    let mut body = serde_json::json!({
        "provider": "sim",
        "request": {"messages": [{"role": "user", "content": "hello"}]},
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}
