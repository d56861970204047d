//! The `openai` and `anthropic` providers against fake providers over real TCP: an axum
//! router on 127.0.0.1:0 per test, called through the `Provider` trait. Covers whole and
//! streamed answers, the classification of 429 / 503 / 529 / 400, read timeouts, cut
//! streams, and that the API key shows up in no error or Debug output.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sluice::config::{Config, ProviderConfig, ProviderKind};
use sluice::providers::{
    AttemptRequest, DeltaSink, FinishReason, OpenAiProvider, ProviderError, ProviderOutput,
    Providers, StreamDelta,
};
use sluice::run::{ErrorKind, RunId};

const REQUEST: &str = r#"{"model":"client-model","messages":[
    {"role":"system","content":"Be brief."},
    {"role":"user","content":"Say hello"}],"max_tokens":64,"temperature":0.3}"#;

/// Everything the fake saw: each request's headers and JSON body.
type Seen = Arc<Mutex<Vec<(HeaderMap, Value)>>>;

/// Serves `answer` on both providers' paths, recording each request.
async fn fake<F, R>(answer: F) -> (String, Seen)
where
    F: Fn() -> R + Clone + Send + Sync + 'static,
    R: IntoResponse,
{
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let handler = move |headers: HeaderMap, Json(body): Json<Value>| {
        record.lock().unwrap().push((headers, body));
        let response = answer().into_response();
        async move { response }
    };
    let router = Router::new()
        .route("/v1/chat/completions", post(handler.clone()))
        .route("/v1/messages", post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (format!("http://{addr}"), seen)
}

/// A provider config of `kind` pointed at `root`, its key in the env variable `key_env`.
fn config(kind: ProviderKind, root: &str, key_env: Option<(&str, &str)>) -> ProviderConfig {
    let mut p = ProviderConfig::sim("test");
    p.kind = kind;
    p.base_url = Some(match kind {
        ProviderKind::Openai => format!("{root}/v1"),
        _ => root.to_string(),
    });
    p.read_timeout = Duration::from_secs(5);
    if let Some((var, key)) = key_env {
        // The suite's tests share this process, so the environment is changed as little
        // as possible: each variable name belongs to one test and is set once, to one value.
        if std::env::var(var).ok().as_deref() != Some(key) {
            // SAFETY: std serializes `set_var` with its own readers (`var`, process
            // spawning, name lookups), and no code of the suite reads the environment
            // through libc directly.
            unsafe { std::env::set_var(var, key) };
        }
        p.api_key_env = Some(var.to_string());
    }
    p
}

/// Builds the provider the way the server does (`Providers::from_config`) and makes one
/// attempt through the `Provider` trait.
async fn attempt(
    p: ProviderConfig,
    deltas: Option<DeltaSink>,
) -> Result<ProviderOutput, ProviderError> {
    let config = Config {
        providers: vec![p],
        ..Config::default()
    };
    let providers = Providers::from_config(&config).expect("provider builds");
    let raw = RawValue::from_string(REQUEST.to_string()).unwrap();
    let request = AttemptRequest {
        run_id: RunId::new(),
        attempt: 1,
        model: "the-model",
        request: &raw,
        deltas,
    };
    providers.get("test").unwrap().imp.call(request).await
}

fn tokens(out: &ProviderOutput) -> (Option<u32>, Option<u32>) {
    (out.prompt_tokens, out.completion_tokens)
}

/// A `text/event-stream` response of `body`, each item written after a short delay.
fn sse_of<I: Into<Bytes> + Send + 'static>(body: Vec<Result<I, std::io::Error>>) -> Response {
    let stream = futures::stream::iter(body).then(|item| async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        item.map(Into::into)
    });
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn sse(chunks: Vec<String>) -> Response {
    sse_of(chunks.into_iter().map(Ok).collect())
}

/// Each delta a sink received, with when it arrived.
type Received = Arc<Mutex<Vec<(Instant, String)>>>;

fn recorder() -> (DeltaSink, Received) {
    let got: Received = Arc::default();
    let sink = got.clone();
    let sink: DeltaSink = Arc::new(move |d: StreamDelta<'_>| {
        if let StreamDelta::Text(text) = d {
            sink.lock().unwrap().push((Instant::now(), text.into()))
        }
    });
    (sink, got)
}

#[tokio::test]
async fn openai_answer_is_parsed_and_request_is_sent_as_configured() {
    let (root, seen) = fake(|| {
        Json(json!({"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"the-model",
            "choices":[{"index":0,"message":{"role":"assistant","content":"Hello there"},"finish_reason":"stop"}],
            "usage":{"prompt_tokens":11,"completion_tokens":2,"total_tokens":13}}))
    })
    .await;
    let key = Some(("SLUICE_T_OAI_OK", "sk-oai-1"));
    let out = attempt(config(ProviderKind::Openai, &root, key), None)
        .await
        .unwrap();
    assert_eq!(out.content.as_deref(), Some("Hello there"));
    assert_eq!(out.finish_reason, Some(FinishReason::Stop));
    assert_eq!(tokens(&out), (Some(11), Some(2)));

    let (headers, body) = &seen.lock().unwrap()[0];
    assert_eq!(headers["authorization"], "Bearer sk-oai-1");
    assert_eq!(body["model"], "the-model");
    assert_eq!(body["stream"], false);
    assert_eq!(body["messages"][1]["content"], "Say hello");
    assert_eq!(body["temperature"], 0.3);
}

#[tokio::test]
async fn anthropic_answer_is_parsed_and_request_is_converted() {
    let (root, seen) = fake(|| {
        Json(json!({"id":"msg_1","type":"message","role":"assistant","model":"the-model",
            "content":[{"type":"text","text":"Hello"},{"type":"text","text":" there"}],
            "stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":21,"output_tokens":3}}))
    })
    .await;
    let mut c = config(
        ProviderKind::Anthropic,
        &root,
        Some(("SLUICE_T_ANT_OK", "sk-ant-1")),
    );
    c.anthropic_version = "2023-06-01".into();
    let out = attempt(c, None).await.unwrap();
    assert_eq!(out.content.as_deref(), Some("Hello there"));
    assert_eq!(out.finish_reason, Some(FinishReason::Stop));
    assert_eq!(out.raw_finish_reason.as_deref(), Some("end_turn"));
    assert_eq!(tokens(&out), (Some(21), Some(3)));

    let (headers, body) = &seen.lock().unwrap()[0];
    assert_eq!(headers["x-api-key"], "sk-ant-1");
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers.get("authorization").is_none());
    let expected = json!({"model":"the-model","system":"Be brief.",
        "messages":[{"role":"user","content":"Say hello"}],"max_tokens":64,"temperature":0.3});
    assert_eq!(body, &expected);
}

fn openai_chunk(delta: Value, finish: Option<&str>) -> String {
    let chunk = json!({"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",
        "choices":[{"index":0,"delta":delta,"finish_reason":finish}]});
    format!("data: {chunk}\n\n")
}

#[tokio::test]
async fn openai_stream_reports_deltas_in_order() {
    let (root, seen) = fake(|| {
        let usage = json!({"id":"c1","object":"chat.completion.chunk","choices":[],
            "usage":{"prompt_tokens":9,"completion_tokens":3,"total_tokens":12}});
        let body = [
            openai_chunk(json!({"role":"assistant","content":""}), None),
            openai_chunk(json!({"content":"Hel"}), None),
            openai_chunk(json!({"content":"lo, "}), None),
            openai_chunk(json!({"content":"world"}), None),
            openai_chunk(json!({}), Some("stop")),
            format!("data: {usage}\n\n"),
            "data: [DONE]\n\n".to_string(),
        ]
        .concat();
        // Written in pieces cut at arbitrary points, so that events straddle writes.
        sse_of(
            body.into_bytes()
                .chunks(97)
                .map(|c| Ok(c.to_vec()))
                .collect(),
        )
    })
    .await;
    let (sink, got) = recorder();
    let out = attempt(config(ProviderKind::Openai, &root, None), Some(sink))
        .await
        .unwrap();
    let finished = Instant::now();
    let got = got.lock().unwrap();
    let deltas: Vec<&str> = got.iter().map(|(_, d)| d.as_str()).collect();
    assert_eq!(deltas, ["Hel", "lo, ", "world"]);
    assert_eq!(out.content, Some(deltas.concat()));
    assert_eq!(out.finish_reason, Some(FinishReason::Stop));
    assert_eq!(tokens(&out), (Some(9), Some(3)));
    // Deltas are reported as they arrive, not once the stream is over.
    assert!(finished - got[0].0 >= Duration::from_millis(60));
    let (headers, body) = &seen.lock().unwrap()[0];
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    // No `api_key_env`: no key is sent (local OpenAI-compatible servers need none).
    assert!(headers.get("authorization").is_none());
}

fn anthropic_events(events: Vec<Value>) -> Response {
    let event = |data: Value| {
        format!(
            "event: {}\ndata: {data}\n\n",
            data["type"].as_str().unwrap()
        )
    };
    sse(events.into_iter().map(event).collect())
}

fn text_delta(text: &str) -> Value {
    json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":text}})
}

#[tokio::test]
async fn anthropic_stream_reports_deltas_in_order() {
    let (root, seen) = fake(|| {
        anthropic_events(vec![
            json!({"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant",
                "content":[],"model":"m","stop_reason":null,"usage":{"input_tokens":25,"output_tokens":1}}}),
            json!({"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}),
            json!({"type":"ping"}),
            text_delta("Hello"),
            text_delta(", "),
            text_delta("world"),
            json!({"type":"content_block_stop","index":0}),
            json!({"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},
                "usage":{"output_tokens":15}}),
            json!({"type":"message_stop"}),
        ])
    })
    .await;
    let c = config(
        ProviderKind::Anthropic,
        &root,
        Some(("SLUICE_T_ANT_S", "k")),
    );
    let (sink, got) = recorder();
    let out = attempt(c, Some(sink)).await.unwrap();
    let deltas: Vec<String> = got.lock().unwrap().iter().map(|(_, d)| d.clone()).collect();
    assert_eq!(deltas, ["Hello", ", ", "world"]);
    assert_eq!(out.content, Some(deltas.concat()));
    assert_eq!(out.raw_finish_reason.as_deref(), Some("end_turn"));
    assert_eq!(tokens(&out), (Some(25), Some(15)));
    assert_eq!(seen.lock().unwrap()[0].1["stream"], true);
}

/// Both kinds against the same fake answer: their classified errors.
async fn both_fail_with(answer: fn() -> Response) -> [ProviderError; 2] {
    let (root, _) = fake(answer).await;
    let openai = attempt(config(ProviderKind::Openai, &root, None), None).await;
    let anthropic = attempt(config(ProviderKind::Anthropic, &root, None), None).await;
    [openai.unwrap_err(), anthropic.unwrap_err()]
}

#[tokio::test]
async fn rate_limited_429_carries_retry_after_and_limits() {
    let errors = both_fail_with(|| {
        let headers = [
            ("retry-after", "2"),
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-tokens", "149000"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ];
        let body = json!({"error":{"message":"Rate limit reached","type":"requests"}});
        (StatusCode::TOO_MANY_REQUESTS, headers, Json(body)).into_response()
    })
    .await;
    for e in errors {
        assert_eq!(
            (e.kind, e.status),
            (ErrorKind::RateLimited, Some(429)),
            "{e}"
        );
        assert_eq!(e.retry_after, Some(Duration::from_secs(2)));
        assert!(e.message.contains("Rate limit reached"), "{e}");
        let limits = e.rate_limits.expect("rate limits parsed");
        assert_eq!(limits.limit_requests, Some(60));
        assert_eq!(limits.remaining_requests, Some(0));
        assert_eq!(limits.reset_requests, Some(Duration::from_secs(1)));
        assert_eq!(limits.remaining_tokens, Some(149_000));
        assert_eq!(limits.reset_tokens, Some(Duration::from_secs(360)));
    }
}

#[tokio::test]
async fn anthropic_429_without_retry_after_waits_one_unit_of_the_spent_limit() {
    let (root, _) = fake(|| {
        let reset = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc3339();
        let headers = [
            ("anthropic-ratelimit-requests-limit", "50".to_string()),
            ("anthropic-ratelimit-requests-remaining", "0".to_string()),
            ("anthropic-ratelimit-requests-reset", reset),
        ];
        let body =
            json!({"type":"error","error":{"type":"rate_limit_error","message":"slow down"}});
        (StatusCode::TOO_MANY_REQUESTS, headers, Json(body)).into_response()
    })
    .await;
    let e = attempt(config(ProviderKind::Anthropic, &root, None), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::RateLimited);
    // The bucket is full again in 30 s: one of its 50 requests comes back every 0.6 s.
    let wait = e.retry_after.expect("retry_after from the reset");
    assert!(
        wait > Duration::from_millis(500) && wait <= Duration::from_millis(600),
        "{wait:?}"
    );
    assert_eq!(e.rate_limits.unwrap().limit_requests, Some(50));
}

#[tokio::test]
async fn server_errors_are_retryable() {
    let unavailable = || (StatusCode::SERVICE_UNAVAILABLE, "upstream down").into_response();
    for e in both_fail_with(unavailable).await {
        assert_eq!((e.kind, e.status), (ErrorKind::Server, Some(503)), "{e}");
        assert!(e.message.contains("upstream down"), "{e}");
    }
    let overloaded = || {
        let body =
            json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}});
        (StatusCode::from_u16(529).unwrap(), Json(body)).into_response()
    };
    for e in both_fail_with(overloaded).await {
        assert_eq!((e.kind, e.status), (ErrorKind::Server, Some(529)), "{e}");
    }
}

#[tokio::test]
async fn client_errors_keep_the_provider_message() {
    let [openai, _] = both_fail_with(|| {
        let body = json!({"error":{"message":"The model `x` does not exist",
            "type":"invalid_request_error","param":null,"code":"model_not_found"}});
        (StatusCode::BAD_REQUEST, Json(body)).into_response()
    })
    .await;
    assert_eq!((openai.kind, openai.status), (ErrorKind::Client, Some(400)));
    assert!(
        openai.message.contains("The model `x` does not exist"),
        "{openai}"
    );

    let [_, anthropic] = both_fail_with(|| {
        let body = json!({"type":"error","error":{"type":"invalid_request_error",
            "message":"max_tokens: must be positive"}});
        (StatusCode::BAD_REQUEST, Json(body)).into_response()
    })
    .await;
    assert_eq!(
        (anthropic.kind, anthropic.status),
        (ErrorKind::Client, Some(400))
    );
    assert!(
        anthropic.message.contains("max_tokens: must be positive"),
        "{anthropic}"
    );
}

#[tokio::test]
async fn silent_server_hits_the_read_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let root = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket); // accepted, never read, never answered
        }
    });
    for kind in [ProviderKind::Openai, ProviderKind::Anthropic] {
        let mut c = config(kind, &root, None);
        c.read_timeout = Duration::from_millis(300);
        let started = Instant::now();
        let e = attempt(c, None).await.unwrap_err();
        assert!(
            matches!(e.kind, ErrorKind::Timeout | ErrorKind::Connection),
            "{e}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn broken_streams_fail() {
    // The connection breaks after the first event.
    let (root, _) = fake(|| {
        let first = openai_chunk(json!({"content":"partial"}), None);
        sse_of(vec![
            Ok(first),
            Err(std::io::Error::other("connection lost")),
        ])
    })
    .await;
    let (sink, got) = recorder();
    let e = attempt(config(ProviderKind::Openai, &root, None), Some(sink))
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Connection, "{e}");
    assert_eq!(got.lock().unwrap().len(), 1);

    // The body ends cleanly, but before the provider said it was done.
    let (root, _) = fake(|| {
        anthropic_events(vec![
            json!({"type":"message_start","message":{"usage":{"input_tokens":5}}}),
            text_delta("Hi"),
        ])
    })
    .await;
    let c = config(ProviderKind::Anthropic, &root, None);
    let e = attempt(c, Some(recorder().0)).await.unwrap_err();
    assert_eq!(
        (e.kind, e.status),
        (ErrorKind::Connection, Some(200)),
        "{e}"
    );

    // Anthropic reports overload mid-stream as an `error` event.
    let (root, _) = fake(|| {
        anthropic_events(vec![
            json!({"type":"message_start","message":{"usage":{"input_tokens":5}}}),
            json!({"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}),
        ])
    })
    .await;
    let c = config(ProviderKind::Anthropic, &root, None);
    let e = attempt(c, Some(recorder().0)).await.unwrap_err();
    assert_eq!((e.kind, e.status), (ErrorKind::Server, Some(529)));
    assert!(e.message.contains("Overloaded"), "{e}");
}

#[tokio::test]
async fn api_key_never_shows() {
    const KEY: &str = "sk-live-DO-NOT-PRINT-1234567890";
    // A provider that echoes the key back in its error message.
    let (root, _) = fake(|| {
        let body = json!({"error":{"message":format!("Incorrect API key provided: {KEY}")}});
        (StatusCode::UNAUTHORIZED, Json(body)).into_response()
    })
    .await;
    for (kind, var) in [
        (ProviderKind::Openai, "SLUICE_T_KEY_OAI"),
        (ProviderKind::Anthropic, "SLUICE_T_KEY_ANT"),
    ] {
        let e = attempt(config(kind, &root, Some((var, KEY))), None)
            .await
            .unwrap_err();
        assert_eq!((e.kind, e.status), (ErrorKind::Client, Some(401)));
        assert!(e.message.contains("Incorrect API key provided"), "{e}");
        assert!(!format!("{e} {e:?}").contains(KEY), "{e:?}");
        // Nobody listening: a connection error.
        let c = config(kind, "http://127.0.0.1:9", Some((var, KEY)));
        let e = attempt(c, None).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Connection, "{e}");
        assert!(!format!("{e} {e:?}").contains(KEY), "{e:?}");
    }
    let c = config(ProviderKind::Openai, &root, Some(("SLUICE_T_KEY_DBG", KEY)));
    let provider = OpenAiProvider::new(&c).unwrap();
    assert!(!format!("{provider:?}").contains(KEY));

    // A named variable that is missing is a setup error naming it and the provider.
    let mut c = config(ProviderKind::Anthropic, &root, None);
    c.api_key_env = Some("SLUICE_T_KEY_UNSET".into());
    let config = Config {
        providers: vec![c],
        ..Config::default()
    };
    let e = Providers::from_config(&config)
        .err()
        .expect("missing key fails");
    let text = format!("{e} {e:?}");
    assert!(
        text.contains("SLUICE_T_KEY_UNSET") && text.contains("\"test\""),
        "{text}"
    );
}
