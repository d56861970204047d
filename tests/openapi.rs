//! `GET /openapi.json`: an OpenAPI 3.1 document that lists exactly the routes the router
//! serves, with the enqueue body's schema and at least one response per operation.

use std::collections::BTreeSet;

use crate::common::{TestServer, http};
use serde_json::Value;

/// The operation keys of an OpenAPI path item.
const METHODS: [&str; 9] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace", "query",
];

/// Follows a local `$ref` (`#/components/schemas/Name`) to the schema it names.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let pointer = reference
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("non-local $ref {reference}"));
            doc.pointer(pointer)
                .unwrap_or_else(|| panic!("dangling $ref {reference}"))
        }
        None => schema,
    }
}

/// Every `$ref` anywhere in `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_router() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[database]
sqlite_path = {:?}
[[providers]]
name = "sim"
kind = "sim"
"#,
        dir.path().join("sluice.db").display().to_string()
    );
    let server = TestServer::start(&config, &[]).await;
    let client = http();

    let resp = client
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let doc: Value = resp.json().await.expect("the document is JSON");

    let version = doc["openapi"].as_str().expect("openapi version");
    assert!(version.starts_with("3."), "openapi: {version}");
    assert_eq!(doc["info"]["title"], "Sluice");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        doc["info"]["description"]
            .as_str()
            .is_some_and(|d| !d.is_empty())
    );

    // The document's operations are exactly the routes the router mounts.
    let paths = doc["paths"].as_object().expect("paths");
    let mut documented = BTreeSet::new();
    for (path, item) in paths {
        for method in METHODS {
            if let Some(operation) = item.get(method) {
                documented.insert((method.to_uppercase(), path.clone()));
                let responses = operation["responses"].as_object();
                assert!(
                    responses.is_some_and(|r| !r.is_empty()),
                    "{method} {path} documents no response"
                );
            }
        }
    }
    let served: BTreeSet<(String, String)> = sluice::api::route_table()
        .into_iter()
        .map(|(method, path)| (method.as_str().to_string(), path))
        .collect();
    assert_eq!(
        documented, served,
        "the OpenAPI document and the router disagree"
    );
    for route in [
        ("POST", "/enqueue"),
        ("GET", "/runs/{id}"),
        ("POST", "/runs/{id}/cancel"),
        ("GET", "/runs/{id}/events"),
        ("GET", "/events"),
        ("GET", "/health"),
        ("GET", "/metrics"),
        ("GET", "/openapi.json"),
    ] {
        let route = (route.0.to_string(), route.1.to_string());
        assert!(served.contains(&route), "{route:?} is not served");
    }

    // And the route table is what the server really answers: each entry reaches a handler
    // (not the router's 404 or 405), and every other method on its path gets 405.
    let run_id = uuid::Uuid::now_v7().to_string();
    let served_paths: BTreeSet<&String> = served.iter().map(|(_, p)| p).collect();
    for path in served_paths {
        let url = server.url(&path.replace("{id}", &run_id));
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let resp = client
                .request(method.parse().unwrap(), &url)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            // Event streams stay open: read the body only of what is not a stream.
            let is_stream = resp
                .headers()
                .get("content-type")
                .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
            let body: Value = if is_stream {
                Value::Null
            } else {
                resp.json().await.unwrap_or(Value::Null)
            };
            if served.contains(&(method.to_string(), path.clone())) {
                assert_ne!(status, 405, "{method} {path} is in the route table: {body}");
                assert!(
                    !(status == 404 && body["error"]["message"] == "no such route"),
                    "{method} {path} is in the route table but not routed"
                );
            } else {
                assert_eq!(
                    status, 405,
                    "{method} {path} is not in the route table: {body}"
                );
            }
        }
    }

    // The enqueue body: every field, `provider` and `request` required.
    let body_schema = resolve(
        &doc,
        &doc["paths"]["/enqueue"]["post"]["requestBody"]["content"]["application/json"]["schema"],
    );
    let properties = body_schema["properties"]
        .as_object()
        .expect("enqueue body properties");
    for field in [
        "provider",
        "model",
        "request",
        "class",
        "priority",
        "tenant",
        "concurrency_key",
        "session",
        "idempotency_key",
        "max_attempts",
        "timeout_ms",
        "queue_timeout_ms",
        "run_at",
        "stream",
        "batch",
        "metadata",
    ] {
        assert!(properties.contains_key(field), "enqueue body lacks {field}");
    }
    let required: Vec<&str> = body_schema["required"]
        .as_array()
        .expect("enqueue body required")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(required.contains(&"provider"), "{required:?}");
    assert!(required.contains(&"request"), "{required:?}");
    let class = resolve(&doc, &properties["class"]);
    let class = class["oneOf"]
        .as_array()
        .and_then(|alts| alts.iter().find(|s| s.get("$ref").is_some()))
        .map(|s| resolve(&doc, s))
        .unwrap_or(class);
    assert_eq!(class["enum"], serde_json::json!(["live", "background"]));

    // A run's output is the whole assistant message; a delta may carry a tool call.
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["RunOutput"]["required"],
        serde_json::json!([
            "content",
            "tool_calls",
            "refusal",
            "finish_reason",
            "raw_finish_reason"
        ])
    );
    let call = resolve(
        &doc,
        &schemas["RunOutput"]["properties"]["tool_calls"]["items"],
    );
    assert!(call["properties"]["function"].is_object(), "{call}");
    let piece = resolve(
        &doc,
        &schemas["DeltaEvent"]["properties"]["tool_calls"]["items"],
    );
    assert!(piece["properties"]["index"].is_object(), "{piece}");

    // Every reference resolves.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for reference in all {
        resolve(&doc, &serde_json::json!({ "$ref": reference }));
    }

    server.stop().await;
}
