//! A tenant sees only its own runs: every route of the router (read from
//! `sluice::api::route_table`, so a new route is walked too) is called with no token, a bad
//! token, another tenant's token, the admin token and the owner's token, and answers
//! 401 / 401 / 403-or-404 / 2xx / 2xx as the README says, with nothing of the other
//! tenant in any body or event stream.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use super::{ADMIN_TOKEN, TOKEN_A, callers, chat, client_as, start_tenants};
use crate::common::{SseReader, TestServer, enqueue, wait_run};

/// Routes answered without a token (`/metrics` while `auth.metrics_open`, the default; the
/// status page's files, which ask for a token themselves).
const OPEN: &[&str] = &["/livez", "/metrics", "/ui", "/ui/app.js", "/ui/style.css"];
/// Routes only the admin token opens.
const OPERATOR: &[&str] = &[
    "/health",
    "/tenants/{name}",
    "/dlq",
    "/dlq/{id}/requeue",
    "/dlq/requeue",
];
/// The operator route acting on a dead letter: team-a's queued run is none (409).
const NOT_DEAD: &str = "/dlq/{id}/requeue";
/// Routes about the calling tenant itself, which the admin (no tenant) gets a 404 from.
const TENANT_ONLY: &[&str] = &["/tenants/me"];
/// What team-a's runs carry that must never reach team-b.
const MARKER: &str = "private-marker-of-team-a";
/// Longest wait for one event of a stream.
const EVENT_WITHIN: Duration = Duration::from_secs(30);

/// One route of the router, made concrete: team-a's run for any id, team-a for a name.
struct Call {
    method: Method,
    template: String,
    url: String,
}

impl Call {
    fn has_param(&self) -> bool {
        self.template.contains('{')
    }

    /// Whether the admin and the owner must get a 2xx: the run routes and the routes
    /// without a parameter. A route whose parameter is not a run id (a batch's, say) gets
    /// team-a's run id here, which names nothing; it must still pass authentication.
    fn must_succeed(&self) -> bool {
        !self.has_param() || self.template.starts_with("/runs/")
    }

    /// Sends it as the given client: the status, and the body unless it is a stream.
    async fn send(&self, client: &reqwest::Client) -> (StatusCode, Option<String>) {
        let mut req = client.request(self.method.clone(), &self.url);
        if self.method == Method::POST {
            // A new POST route whose admin call needs a body gets it here.
            let body = match self.template.as_str() {
                "/enqueue" => chat(json!({})),
                "/batches" => json!({
                    "provider": "sim",
                    "runs": [{"request": chat(json!({}))["request"].clone()}],
                }),
                "/v1/chat/completions" => json!({
                    "model": "sim",
                    "messages": chat(json!({}))["request"]["messages"].clone(),
                }),
                _ => json!({}),
            };
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{self}: {e}"));
        let status = resp.status();
        let stream = resp
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        if stream {
            return (status, None);
        }
        (status, Some(resp.text().await.unwrap_or_default()))
    }
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.template)
    }
}

/// Every route, with `{name}` as team-a and any other parameter as team-a's run id.
fn every_route(server: &TestServer, run_a: &str) -> Vec<Call> {
    sluice::api::route_table()
        .into_iter()
        .map(|(method, template)| {
            let mut path = String::new();
            let mut rest = template.as_str();
            while let Some(open) = rest.find('{') {
                let close = rest[open..].find('}').expect("a closed parameter") + open;
                path.push_str(&rest[..open]);
                path.push_str(match &rest[open + 1..close] {
                    "name" => "team-a",
                    _ => run_a,
                });
                rest = &rest[close + 1..];
            }
            path.push_str(rest);
            Call {
                method: Method::from_bytes(method.as_str().as_bytes()).expect("a method"),
                url: server.url(&path),
                template,
            }
        })
        .collect()
}

fn code_of(body: &Option<String>) -> String {
    body.as_deref()
        .and_then(|b| serde_json::from_str::<Value>(b).ok())
        .and_then(|v| v["error"]["code"].as_str().map(String::from))
        .unwrap_or_default()
}

#[tokio::test]
async fn every_route_checks_the_token_and_hides_other_tenants_runs() {
    let server = start_tenants("").await;
    let (a, b, admin) = callers();
    // A run of team-a that stays queued (due in 2100), so every route has something to act on.
    let run_a = enqueue(
        &a,
        &server,
        chat(json!({"run_at": "2100-01-01T00:00:00Z", "metadata": {"marker": MARKER}})),
    )
    .await;
    let calls = every_route(&server, &run_a);
    assert!(calls.len() >= 8, "the route table lists every route");

    for (who, client) in [
        ("no token", client_as(None)),
        ("a bad token", client_as(Some("not-a-token"))),
    ] {
        for call in &calls {
            let (status, body) = call.send(&client).await;
            if OPEN.contains(&call.template.as_str()) {
                assert_eq!(status, 200, "{call} with {who} is open");
            } else {
                assert_eq!(status, 401, "{call} with {who}: {body:?}");
                assert_eq!(code_of(&body), "unauthorized", "{call} with {who}");
            }
        }
    }

    for call in &calls {
        let (status, body) = call.send(&b).await;
        let template = call.template.as_str();
        if OPEN.contains(&template) {
            continue;
        }
        if OPERATOR.contains(&template) {
            assert_eq!(status, 403, "{call} as team-b: {body:?}");
            assert_eq!(code_of(&body), "forbidden", "{call}");
            continue;
        }
        if call.has_param() && !TENANT_ONLY.contains(&template) {
            assert_eq!(status, 404, "{call} on team-a's run as team-b: {body:?}");
            assert_eq!(code_of(&body), "not_found", "{call}");
        } else {
            assert!(
                status.is_success() || status.is_client_error(),
                "{call} as team-b: {status} {body:?}"
            );
            assert!(!matches!(status.as_u16(), 401 | 403), "{call}: {status}");
        }
        let text = body.unwrap_or_default();
        // A 404 may repeat the id it was asked for; nothing else of team-a's may show.
        let id = if call.has_param() {
            MARKER
        } else {
            run_a.as_str()
        };
        for secret in [id, MARKER, "team-a"] {
            assert!(
                !text.contains(secret),
                "{call} as team-b shows {secret}: {text}"
            );
        }
    }

    // The admin reaches every route and acts on team-a's run (its cancel goes first, so
    // team-a's own cancel below finds it already cancelled).
    for call in &calls {
        let (status, body) = call.send(&admin).await;
        if TENANT_ONLY.contains(&call.template.as_str()) {
            assert_eq!(status, 404, "{call} as admin: {body:?}");
        } else if call.template == NOT_DEAD {
            assert_eq!(status, 409, "{call}: team-a's run is queued: {body:?}");
        } else if call.must_succeed() || OPERATOR.contains(&call.template.as_str()) {
            assert!(status.is_success(), "{call} as admin: {status} {body:?}");
        } else {
            assert!(
                status.is_client_error(),
                "{call} as admin: {status} {body:?}"
            );
            assert!(!matches!(status.as_u16(), 401 | 403), "{call}: {status}");
        }
    }
    // The owner reaches its run on every tenant route.
    for call in &calls {
        let (status, body) = call.send(&a).await;
        let template = call.template.as_str();
        if OPERATOR.contains(&template) {
            assert_eq!(status, 403, "{call} as team-a");
        } else if template == "/runs/{id}/cancel" {
            assert_eq!(
                status, 409,
                "{call}: the admin cancelled it already: {body:?}"
            );
        } else if call.must_succeed() {
            assert!(status.is_success(), "{call} as team-a: {status} {body:?}");
        } else {
            assert!(
                status.is_client_error(),
                "{call} as team-a: {status} {body:?}"
            );
            assert!(!matches!(status.as_u16(), 401 | 403), "{call}: {status}");
        }
    }
    server.stop().await;
}

/// Reads `reader` until the terminal event of `until`, returning every event's run id.
async fn runs_seen_until(reader: &mut SseReader, until: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let next = tokio::time::timeout(EVENT_WITHIN, reader.next()).await;
        let (_, event, data) = next
            .expect("the awaited event arrives")
            .expect("the stream stays open");
        let run = data["run_id"].as_str().unwrap_or_default().to_string();
        seen.push(run.clone());
        if run == until && event == "completed" {
            return seen;
        }
    }
}

#[tokio::test]
async fn streams_keys_and_enqueues_are_scoped_to_the_token() {
    let server = start_tenants("").await;
    let (a, b, admin) = callers();
    let done = |r: &Value| r["status"] == "completed";
    let a1 = enqueue(&a, &server, chat(json!({"idempotency_key": "same-key"}))).await;
    wait_run(&a, &server, &a1, "completed", done).await;
    let b1 = enqueue(&b, &server, chat(json!({"idempotency_key": "same-key"}))).await;
    assert_ne!(a1, b1, "idempotency keys are scoped to the tenant");
    let b1_run = wait_run(&b, &server, &b1, "completed", done).await;
    assert_eq!(
        b1_run["tenant"], "team-b",
        "the tenant comes from the token"
    );
    let again = enqueue(&a, &server, chat(json!({"idempotency_key": "same-key"}))).await;
    assert_eq!(again, a1, "a repeat of team-a's key answers team-a's run");

    // Replay from the start: team-b's stream holds its own run only.
    let feed = server.url("/events");
    let mut from_start = SseReader::open(&b, &feed, Some("0")).await;
    let seen = runs_seen_until(&mut from_start, &b1).await;
    assert!(seen.iter().all(|r| *r == b1), "team-b replayed {seen:?}");
    // Live: team-a's next run passes unseen before team-b's own.
    let mut live = SseReader::open(&b, &feed, None).await;
    let a2 = enqueue(&a, &server, chat(json!({}))).await;
    wait_run(&a, &server, &a2, "completed", done).await;
    let b2 = enqueue(&b, &server, chat(json!({}))).await;
    let seen = runs_seen_until(&mut live, &b2).await;
    assert!(seen.iter().all(|r| *r == b2), "team-b saw {seen:?} live");
    // The admin's stream has everyone's.
    let mut everyone = SseReader::open(&admin, &feed, Some("0")).await;
    let seen = runs_seen_until(&mut everyone, &a1).await;
    assert!(seen.contains(&a1));

    let asked = b
        .get(server.url("/events?tenant=team-a"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        asked.status(),
        404,
        "team-b may not ask for team-a's events"
    );

    // A body tenant must match the token; the admin may name a configured tenant.
    let resp = b
        .post(server.url("/enqueue"))
        .json(&chat(json!({"tenant": "team-a"})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["field"], "tenant", "{body}");
    let on_behalf = enqueue(&admin, &server, chat(json!({"tenant": "team-a"}))).await;
    let run = wait_run(&a, &server, &on_behalf, "visible to team-a", |_| true).await;
    assert_eq!(run["tenant"], "team-a");
    let resp = admin
        .post(server.url("/enqueue"))
        .json(&chat(json!({"tenant": "team-z"})))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        400,
        "the admin names configured tenants only"
    );
    server.stop().await;
}

#[tokio::test]
async fn closed_metrics_need_the_admin_token() {
    let toml = format!("[auth]\nmetrics_open = false\n{}", super::tenants_toml(""));
    let server = TestServer::start_on_sqlite_with(&toml, &super::token_env()).await;
    let url = server.url("/metrics");
    for (token, expected) in [(None, 401), (Some(TOKEN_A), 403), (Some(ADMIN_TOKEN), 200)] {
        let status = client_as(token).get(&url).send().await.unwrap().status();
        assert_eq!(status, expected, "GET /metrics with {token:?}");
    }
    let live = client_as(None)
        .get(server.url("/livez"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200, "the liveness probe stays open");
    server.stop().await;
}
