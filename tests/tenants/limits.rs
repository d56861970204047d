//! Per-tenant limits over real HTTP: a tenant that spent its daily tokens is refused
//! `budget_exhausted` until midnight UTC while its runs already taken in finish and another
//! tenant goes on (on both backends); a tenant past its enqueue rate is refused
//! `rate_limited`, with one bucket shared by two processes on PostgreSQL; `/tenants/…`
//! and `/metrics` show the day.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{
    ADMIN_TOKEN, TOKEN_A, TOKEN_B, callers, chat, client_as, get_json, tenants_toml, token_env,
};
use crate::common::{TestServer, enqueue, fresh_pg_database, scrape, series_value, wait_run};

/// A second `sim` provider slow enough that its run is still in flight when the fast
/// one's usage spends the budget.
const SLOW_SIM: &str = "[[providers]]\nname = \"slow\"\nkind = \"sim\"\n\
                        [providers.sim]\nlatency = \"1500ms\"\nlatency_jitter = \"0ms\"\n";
/// Seconds in a day: no `Retry-After` to midnight is longer.
const DAY_SECS: u64 = 86_400;

async fn start(toml: &str, database_url: Option<&str>) -> TestServer {
    match database_url {
        Some(url) => {
            let mut env = token_env();
            env.push(("DATABASE_URL", url));
            TestServer::start(toml, &env).await
        }
        None => TestServer::start_on_sqlite_with(toml, &token_env()).await,
    }
}

/// The status, `Retry-After` and body of an enqueue.
async fn try_enqueue(
    client: &reqwest::Client,
    server: &TestServer,
    body: Value,
) -> (StatusCode, Option<u64>, Value) {
    let resp = client
        .post(server.url("/enqueue"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    (resp.status(), retry, resp.json().await.unwrap())
}

async fn a_spent_budget_refuses_new_runs_only(database_url: Option<&str>) {
    let toml = format!("{}{SLOW_SIM}", tenants_toml("daily_tokens = 1"));
    let server = start(&toml, database_url).await;
    let (a, b, admin) = callers();
    let before = scrape(&admin, &server).await;
    let done = |r: &Value| r["status"] == "completed";
    let slow = enqueue(&a, &server, chat(json!({"provider": "slow"}))).await;
    let fast = enqueue(&a, &server, chat(json!({}))).await;
    wait_run(&a, &server, &fast, "completed", done).await;

    let (status, retry, body) = try_enqueue(&a, &server, chat(json!({}))).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "budget_exhausted", "{body}");
    assert_eq!(body["error"]["reason"], "daily_tokens", "{body}");
    let retry = retry.expect("a Retry-After to midnight UTC");
    assert!((1..=DAY_SECS).contains(&retry), "{retry}");
    // Another tenant is not touched, and team-a's run taken in before still finishes.
    let other = enqueue(&b, &server, chat(json!({}))).await;
    wait_run(&b, &server, &other, "completed", done).await;
    let slow_run = wait_run(&a, &server, &slow, "completed", done).await;
    assert!(slow_run["usage"]["completion_tokens"].as_i64() > Some(0));

    let me: Value = get_json(&a, &server, "/tenants/me").await;
    assert_eq!(me["tenant"], "team-a", "{me}");
    assert_eq!(me["limits"]["daily_tokens"], 1, "{me}");
    let fast_run = wait_run(&a, &server, &fast, "completed", done).await;
    let tokens = |r: &Value| {
        r["usage"]["prompt_tokens"].as_i64().unwrap()
            + r["usage"]["completion_tokens"].as_i64().unwrap()
    };
    assert_eq!(
        me["usage"]["total_tokens"].as_i64(),
        Some(tokens(&fast_run) + tokens(&slow_run)),
        "today's usage is both runs' reported tokens: {me}"
    );
    let by_admin: Value = get_json(&admin, &server, "/tenants/team-a").await;
    assert_eq!(by_admin["usage"], me["usage"]);
    let b_day: Value = get_json(&b, &server, "/tenants/me").await;
    assert_eq!(b_day["limits"]["daily_tokens"], Value::Null, "{b_day}");
    // The metrics count per tenant (the recorder is shared by the suite: increases only).
    let after = scrape(&admin, &server).await;
    let grew = |series: &str, by: f64| {
        let (was, is) = (series_value(&before, series), series_value(&after, series));
        assert!(is >= was + by, "{series}: {was} -> {is}");
    };
    grew(
        "sluice_tenant_runs_finished_total{tenant=\"team-a\",status=\"completed\"}",
        2.0,
    );
    grew(
        "sluice_tenant_refused_total{tenant=\"team-a\",reason=\"daily_tokens\"}",
        1.0,
    );
    grew("sluice_tenant_runs_enqueued_total{tenant=\"team-b\"}", 1.0);
    let tokens_a = "sluice_tenant_tokens_total{tenant=\"team-a\",kind=\"completion\"}";
    grew(tokens_a, 1.0);
    assert!(after.contains("sluice_tenant_runs{tenant=\"team-a\",status=\"running\"}"));
    server.stop().await;
}

#[tokio::test]
async fn a_spent_budget_refuses_new_runs_only_on_sqlite() {
    a_spent_budget_refuses_new_runs_only(None).await;
}

#[tokio::test]
async fn a_spent_budget_refuses_new_runs_only_on_postgres() {
    let url = fresh_pg_database().await;
    a_spent_budget_refuses_new_runs_only(Some(&url)).await;
}

#[tokio::test]
async fn a_spend_budget_counts_at_the_configured_prices() {
    // Any reported token costs more than the whole budget.
    let toml = format!(
        "{}[[prices]]\nmodel = \"sim-1\"\ninput_per_million = 1000000.0\n\
         output_per_million = 1000000.0\n",
        tenants_toml("daily_spend = 0.5")
    );
    let server = start(&toml, None).await;
    let a = client_as(Some(TOKEN_A));
    let first = enqueue(&a, &server, chat(json!({}))).await;
    wait_run(&a, &server, &first, "completed", |r| {
        r["status"] == "completed"
    })
    .await;
    let (status, _, body) = try_enqueue(&a, &server, chat(json!({}))).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "budget_exhausted");
    assert_eq!(body["error"]["reason"], "daily_spend");
    let me: Value = get_json(&a, &server, "/tenants/me").await;
    assert!(me["usage"]["spend"].as_f64() > Some(0.5), "{me}");
    server.stop().await;
}

#[tokio::test]
async fn the_enqueue_rate_is_one_bucket_across_processes() {
    // One run per hundred seconds after a burst of two: nothing refills during the test.
    let toml = tenants_toml("enqueue_rate = 0.01\nenqueue_burst = 2");
    let url = fresh_pg_database().await;
    let one = start(&toml, Some(&url)).await;
    let two = start(&toml, Some(&url)).await;
    let (a, b) = (client_as(Some(TOKEN_A)), client_as(Some(TOKEN_B)));
    let before = scrape(&client_as(Some(ADMIN_TOKEN)), &one).await;
    let keyed = chat(json!({"idempotency_key": "k"}));
    let first = enqueue(&a, &one, keyed.clone()).await;
    enqueue(&a, &two, chat(json!({}))).await;
    for server in [&one, &two] {
        let (status, retry, body) = try_enqueue(&a, server, chat(json!({}))).await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(body["error"]["code"], "rate_limited", "{body}");
        assert!(retry.is_some_and(|s| s >= 1), "a Retry-After: {retry:?}");
    }
    // A repeat of an accepted run is answered with it, not refused.
    let (status, _, body) = try_enqueue(&a, &two, keyed).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], first.as_str());
    // team-b has no rate.
    for _ in 0..5 {
        enqueue(&b, &two, chat(json!({}))).await;
    }
    let after = scrape(&client_as(Some(ADMIN_TOKEN)), &one).await;
    let refused = "sluice_tenant_refused_total{tenant=\"team-a\",reason=\"enqueue_rate\"}";
    assert!(series_value(&after, refused) >= series_value(&before, refused) + 2.0);
    let enqueued = "sluice_tenant_runs_enqueued_total{tenant=\"team-b\"}";
    assert!(series_value(&after, enqueued) >= series_value(&before, enqueued) + 5.0);
    one.stop().await;
    two.stop().await;
}
