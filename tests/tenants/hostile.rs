//! Hostile `Authorization` headers: whatever a client sends, the answer is a 401 with the
//! error contract's body and a message saying what is wrong, never a 5xx, and never an
//! echo of what was sent.

use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde_json::{Value, json};

use super::{TOKEN_A, chat, client_as, start_tenants};

#[tokio::test]
async fn malformed_tokens_get_a_clear_401() {
    let server = start_tenants("").await;
    let client = client_as(None);
    let huge = format!("Bearer {}", "h".repeat(32 * 1024));
    let cases: Vec<(&str, Vec<HeaderValue>)> = vec![
        ("no header", vec![]),
        ("an empty header", vec![HeaderValue::from_static("")]),
        ("Bearer alone", vec![HeaderValue::from_static("Bearer")]),
        (
            "Bearer and spaces",
            vec![HeaderValue::from_static("Bearer    ")],
        ),
        (
            "another scheme",
            vec![HeaderValue::from_static("Basic dGVhbS1hOng=")],
        ),
        (
            "two words",
            vec![HeaderValue::from_static("Bearer one two")],
        ),
        (
            "bytes that are not UTF-8",
            vec![HeaderValue::from_bytes(b"Bearer \xff\xfe\xfd").unwrap()],
        ),
        (
            "a 32 KiB token",
            vec![HeaderValue::from_str(&huge).unwrap()],
        ),
        (
            "the token without its scheme",
            vec![HeaderValue::from_static(TOKEN_A)],
        ),
        (
            "two headers",
            vec![
                HeaderValue::from_str(&format!("Bearer {TOKEN_A}")).unwrap(),
                HeaderValue::from_str(&format!("Bearer {TOKEN_A}")).unwrap(),
            ],
        ),
    ];
    for (what, values) in cases {
        for (method, path) in [("GET", "/events"), ("POST", "/enqueue")] {
            let mut req = client.request(method.parse().unwrap(), server.url(path));
            for v in &values {
                req = req.header(AUTHORIZATION, v.clone());
            }
            if method == "POST" {
                req = req.json(&chat(json!({})));
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 401, "{what} on {method} {path}");
            let challenge = resp.headers().get("www-authenticate").cloned();
            assert_eq!(
                challenge.as_ref().map(|v| v.as_bytes()),
                Some(&b"Bearer"[..])
            );
            let text = resp.text().await.unwrap();
            let body: Value = serde_json::from_str(&text).expect("a JSON error body");
            assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(message.len() > 10, "{what}: a clear message: {body}");
            assert!(
                !text.contains(TOKEN_A) && !text.contains("hhhh"),
                "{what}: echoed: {text}"
            );
        }
    }
    // The real token still works after all that.
    let ok = client_as(Some(TOKEN_A))
        .post(server.url("/enqueue"))
        .json(&chat(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);
    server.stop().await;
}
