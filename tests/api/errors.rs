//! The error contract: every rejected enqueue is a 4xx with a JSON error naming the field
//! and leaves no run; unknown ids, routes and methods; a request id on every response.

use reqwest::Method;
use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_enqueues_are_client_errors_and_leave_no_run() {
    // A slow provider: a run wrongly created here stays queued or running, so `/health`
    // would count it.
    let server = start_sim(SLOW_SIM).await;
    assert_eq!(server.active_runs().await, 0);

    let ok = || json!({"provider": "sim", "request": chat("hi")});
    let with = |key: &str, value: Value| {
        let mut b = ok();
        b[key] = value;
        b
    };
    let without = |key: &str| {
        let mut b = ok();
        b.as_object_mut().unwrap().remove(key);
        b
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "unknown provider",
            with("provider", json!("nope")),
            "provider",
        ),
        ("missing provider", without("provider"), "provider"),
        ("missing request", without("request"), "request"),
        (
            "priority of the wrong type",
            with("priority", json!("high")),
            "priority",
        ),
        ("priority 0", with("priority", json!(0)), "priority"),
        ("priority 11", with("priority", json!(11)), "priority"),
        (
            "max_attempts 0",
            with("max_attempts", json!(0)),
            "max_attempts",
        ),
        (
            "max_attempts 51",
            with("max_attempts", json!(51)),
            "max_attempts",
        ),
        (
            "unknown top-level field",
            with("colour", json!("blue")),
            "colour",
        ),
        (
            "request with empty messages",
            with("request", json!({"messages": []})),
            "request.messages",
        ),
        (
            "run_at not RFC 3339",
            with("run_at", json!("tomorrow at noon")),
            "run_at",
        ),
        (
            "timeout_ms above the live cap",
            with("timeout_ms", json!(120_001)),
            "timeout_ms",
        ),
        ("unknown class", with("class", json!("urgent")), "class"),
        (
            "metadata not an object",
            with("metadata", json!([1, 2])),
            "metadata",
        ),
    ];
    for (case, body, field) in &cases {
        let reply = server.enqueue(body).await;
        assert_error(&reply, case, 400, "invalid_request", Some(field));
    }

    // A request without messages names the request (or its messages).
    let reply = server
        .enqueue(&with("request", json!({"model": "x"})))
        .await;
    assert_error(
        &reply,
        "request without messages",
        400,
        "invalid_request",
        None,
    );
    let field = reply.body["error"]["field"].as_str().unwrap_or("");
    assert!(
        field == "request" || field == "request.messages",
        "request without messages: field {field:?}; body {}",
        reply.body
    );

    // Bodies that are not one JSON object.
    let valid = ok().to_string();
    let raw_cases = [
        (
            "malformed JSON (truncated)",
            valid[..valid.len() / 2].to_string(),
        ),
        ("a JSON array", format!("[{valid}]")),
        ("trailing garbage", format!("{valid} x")),
        ("two objects", format!("{valid}{valid}")),
        ("an empty body", String::new()),
        ("JSON null", "null".to_string()),
    ];
    for (case, body) in raw_cases {
        let reply = server.post_raw(case, body).await;
        assert_error(&reply, case, 400, "invalid_request", None);
    }

    // Not JSON by content type.
    let reply = server
        .send(
            "text/plain",
            server
                .request(Method::POST, "/enqueue")
                .header(CONTENT_TYPE, "text/plain")
                .body(valid.clone()),
        )
        .await;
    assert_error(&reply, "text/plain", 415, "unsupported_media_type", None);
    let reply = server
        .send(
            "no content type",
            server.request(Method::POST, "/enqueue").body(valid.clone()),
        )
        .await;
    assert_error(
        &reply,
        "no content type",
        415,
        "unsupported_media_type",
        None,
    );

    // Over the 4 KiB body limit: 8 KiB of otherwise valid JSON.
    let big = with("request", chat(&"x".repeat(8 * 1024))).to_string();
    assert!(big.len() > 8 * 1024);
    let reply = server.post_raw("8 KiB body", big).await;
    assert_error(&reply, "8 KiB body", 413, "payload_too_large", None);

    assert_eq!(
        server.active_runs().await,
        0,
        "a rejected enqueue left a run behind"
    );

    // The check above can see a run: a valid (scheduled) enqueue is counted.
    let id = server.enqueue_ok(&with("run_at", json!(in_hours(1)))).await;
    let health = server.health().await;
    assert_eq!(health["queues"]["live"]["queued"], 1, "{health:#}");
    assert_eq!(server.cancel(&id).await.status, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_routes_and_methods() {
    let server = start_sim(FAST_SIM).await;
    let unknown = uuid::Uuid::now_v7().to_string();

    let cases = [
        (Method::GET, format!("/runs/{unknown}"), 404, "not_found"),
        (
            Method::GET,
            "/runs/not-a-uuid".to_string(),
            404,
            "not_found",
        ),
        (Method::GET, "/nope".to_string(), 404, "not_found"),
        (Method::POST, "/nope".to_string(), 404, "not_found"),
        (
            Method::POST,
            format!("/runs/{unknown}/cancel"),
            404,
            "not_found",
        ),
        (
            Method::POST,
            "/runs/not-a-uuid/cancel".to_string(),
            404,
            "not_found",
        ),
        (
            Method::GET,
            "/enqueue".to_string(),
            405,
            "method_not_allowed",
        ),
        (
            Method::DELETE,
            format!("/runs/{unknown}"),
            405,
            "method_not_allowed",
        ),
        (
            Method::GET,
            format!("/runs/{unknown}/cancel"),
            405,
            "method_not_allowed",
        ),
        (
            Method::POST,
            "/health".to_string(),
            405,
            "method_not_allowed",
        ),
    ];
    for (method, path, status, code) in cases {
        let case = format!("{method} {path}");
        let reply = server
            .send(&case, server.request(method.clone(), &path))
            .await;
        assert_error(&reply, &case, status, code, None);
        if status == 405 {
            assert!(
                reply.header("allow").is_some_and(|a| !a.is_empty()),
                "{case}: a 405 names the allowed methods in `Allow`; headers {:?}",
                reply.headers
            );
        }
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_a_request_id() {
    let server = start_sim(FAST_SIM).await;
    let valid = json!({"provider": "sim", "request": chat("id")}).to_string();
    let requests = vec![
        ("GET /health", server.request(Method::GET, "/health")),
        (
            "POST /enqueue",
            server
                .request(Method::POST, "/enqueue")
                .header(CONTENT_TYPE, "application/json")
                .body(valid.clone()),
        ),
        (
            "POST /enqueue 400",
            server
                .request(Method::POST, "/enqueue")
                .header(CONTENT_TYPE, "application/json")
                .body("{"),
        ),
        (
            "POST /enqueue 415",
            server.request(Method::POST, "/enqueue").body(valid.clone()),
        ),
        (
            "POST /enqueue 413",
            server
                .request(Method::POST, "/enqueue")
                .header(CONTENT_TYPE, "application/json")
                .body("x".repeat(8 * 1024)),
        ),
        ("GET /runs/x", server.request(Method::GET, "/runs/x")),
        ("GET /nope", server.request(Method::GET, "/nope")),
        (
            "DELETE /enqueue",
            server.request(Method::DELETE, "/enqueue"),
        ),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for (what, req) in requests {
        // `send` asserts the header is there and not empty.
        let reply = server.send(what, req).await;
        let id = reply.header("x-request-id").unwrap().to_string();
        assert!(seen.insert(id.clone()), "{what}: request id {id} reused");
    }
    // A caller's own request id is kept.
    let reply = server
        .send(
            "GET /health with an id",
            server
                .request(Method::GET, "/health")
                .header("x-request-id", "trace-abc-123"),
        )
        .await;
    assert_eq!(reply.header("x-request-id"), Some("trace-abc-123"));
    server.shutdown().await;
}
