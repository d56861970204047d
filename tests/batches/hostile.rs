//! Hostile input: batches too large, malformed or naming a bad run, unknown batch ids, and
//! bad listing parameters are answered 4xx with a message naming the problem, never 5xx,
//! and leave nothing written.

use serde_json::{Value, json};

use super::{FAST_SIM, Reply, chat, get, post, runs, send, start};

fn assert_refused(reply: &Reply, case: &str, status: u16, field: Option<&str>) {
    assert_eq!(reply.status, status, "{case}: {}", reply.body);
    let error = &reply.body["error"];
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{case}: no message: {}",
        reply.body
    );
    if let Some(field) = field {
        assert_eq!(error["field"], json!(field), "{case}: {}", reply.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_batches_and_listings_are_refused_and_write_nothing() {
    let server = start(FAST_SIM, "max_runs = 5\nbody_limit = 4096", None).await;
    let ok_run = json!({"request": chat("hi")});
    let cases: Vec<(&str, Value, Option<&str>)> = vec![
        (
            "too many runs",
            json!({"provider": "sim", "runs": runs(6)}),
            Some("runs"),
        ),
        (
            "no runs",
            json!({"provider": "sim", "runs": []}),
            Some("runs"),
        ),
        ("runs missing", json!({"provider": "sim"}), Some("runs")),
        (
            "runs not a list",
            json!({"provider": "sim", "runs": {"a": 1}}),
            Some("runs"),
        ),
        (
            "a run not an object",
            json!({"provider": "sim", "runs": [ok_run, 7]}),
            Some("runs[1]"),
        ),
        (
            "no provider anywhere",
            json!({"runs": [ok_run]}),
            Some("runs[0].provider"),
        ),
        (
            "a run's unknown provider",
            json!({"provider": "sim", "runs": [ok_run, ok_run, {"provider": "nope", "request": chat("x")}]}),
            Some("runs[2].provider"),
        ),
        (
            "a run's bad message list",
            json!({"provider": "sim", "runs": [{"request": {"messages": []}}]}),
            Some("runs[0].request.messages"),
        ),
        (
            "a run's unknown field",
            json!({"provider": "sim", "runs": [{"request": chat("x"), "colour": 1}]}),
            Some("runs[0].colour"),
        ),
        (
            "a run setting the tenant",
            json!({"provider": "sim", "runs": [{"request": chat("x"), "tenant": "t"}]}),
            Some("runs[0].tenant"),
        ),
        (
            "a run with its own idempotency key",
            json!({"provider": "sim", "runs": [{"request": chat("x"), "idempotency_key": "k"}]}),
            Some("runs[0].idempotency_key"),
        ),
        (
            "a bad default",
            json!({"provider": "sim", "priority": "high", "runs": [ok_run]}),
            Some("priority"),
        ),
        (
            "an unknown top-level field",
            json!({"provider": "sim", "colour": 1, "runs": [ok_run]}),
            Some("colour"),
        ),
        (
            "metadata not an object",
            json!({"provider": "sim", "metadata": [1], "runs": [ok_run]}),
            Some("metadata"),
        ),
        ("not an object", json!([1, 2]), None),
    ];
    for (case, body, field) in cases {
        assert_refused(&post(&server, "/batches", &body).await, case, 400, field);
    }
    let raw = |body: &str, content_type: &str| {
        server
            .http()
            .post(server.url("/batches"))
            .header("content-type", content_type)
            .body(body.to_string())
    };
    assert_refused(
        &send(raw("{\"runs\": [", "application/json")).await,
        "truncated JSON",
        400,
        None,
    );
    assert_refused(
        &send(raw("runs=1", "text/plain")).await,
        "not JSON",
        415,
        None,
    );
    let huge = json!({"provider": "sim", "runs": runs(5), "metadata": {"pad": "x".repeat(5000)}});
    assert_refused(
        &post(&server, "/batches", &huge).await,
        "over the body limit",
        413,
        None,
    );

    for path in [
        "/batches/nope",
        "/batches/01890a5d-ac96-774b-bcce-b302099a8057",
    ] {
        assert_refused(&get(&server, path).await, path, 404, None);
        let results = format!("{path}/results");
        assert_refused(&get(&server, &results).await, &results, 404, None);
        let cancel = format!("{path}/cancel");
        assert_refused(
            &post(&server, &cancel, &json!({})).await,
            &cancel,
            404,
            None,
        );
    }
    let queries = [
        ("/runs?cursor=zz", "cursor"),
        ("/runs?cursor=3132333a6e6f7065", "cursor"),
        ("/runs?limit=0", "limit"),
        ("/runs?limit=501", "limit"),
        ("/runs?limit=ten", "limit"),
        ("/runs?status=lost", "status"),
        ("/runs?class=urgent", "class"),
        ("/runs?created_after=yesterday", "created_after"),
        (
            "/runs?created_before=2030-13-01T00:00:00Z",
            "created_before",
        ),
        ("/batches?cursor=%00%01", "cursor"),
        ("/batches?limit=-1", "limit"),
    ];
    for (path, field) in queries {
        assert_refused(&get(&server, path).await, path, 400, Some(field));
    }
    assert_refused(
        &get(&server, "/runs?colour=red").await,
        "unknown parameter",
        400,
        None,
    );

    // Nothing was written.
    for path in ["/batches", "/runs"] {
        let listed = get(&server, path).await;
        assert_eq!(listed.status, 200, "{path}: {}", listed.body);
        assert_eq!(listed.body["items"], json!([]), "{path}: {}", listed.body);
        assert_eq!(listed.body["next_cursor"], Value::Null);
    }
    server.stop().await;
}

/// `/enqueue` cannot slip a run into a batch made by `POST /batches`: its counts would no
/// longer add up to its `run_count`, and its pause and cancel would miss the run. A
/// free-text `batch` that names no such batch still groups runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_cannot_join_a_batch_through_enqueue() {
    let server = start(super::SLOW_SIM, "", None).await;
    let id = super::create_batch(&server, &json!({"provider": "sim", "runs": runs(2)})).await;
    let joined = post(
        &server,
        "/enqueue",
        &json!({"provider": "sim", "request": chat("x"), "batch": id}),
    )
    .await;
    assert_refused(&joined, "joining a batch", 400, Some("batch"));
    let batch = get(&server, &format!("/batches/{id}")).await;
    assert_eq!(batch.body["run_count"], 2, "{}", batch.body);
    assert_eq!(super::counted(&batch.body), 2, "{}", batch.body);
    let grouped = post(
        &server,
        "/enqueue",
        &json!({"provider": "sim", "request": chat("x"), "batch": "nightly-report"}),
    )
    .await;
    assert_eq!(grouped.status, 202, "{}", grouped.body);
    server.stop().await;
}
