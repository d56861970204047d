//! Providers end to end: the server runs real runs against fake provider servers over TCP
//! and the rate limiter, the circuit breaker, the outcome classes, timeouts, cancellation
//! and streaming are checked from the outside.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{SseReader, TestServer, enqueue, get_run, http, read_health, wait_run};
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use serde_json::{Value, json};

const HEALTHY: u8 = 0;
const UNAVAILABLE: u8 = 1;
const BAD_REQUEST: u8 = 2;
const SILENT: u8 = 3;

/// A fake OpenAI/Anthropic-compatible provider.
#[derive(Clone)]
struct Fake {
    mode: Arc<AtomicU8>,
    /// Requests per second it accepts (0: unlimited); beyond that, 429.
    rate: u32,
    bucket: Arc<Mutex<(f64, Instant)>>,
    calls: Arc<Mutex<Vec<(Instant, u16)>>>,
    /// Silent calls whose connection was closed by the client.
    abandoned: Arc<AtomicUsize>,
    in_silence: Arc<AtomicBool>,
    /// Whether answers carry x-ratelimit-* headers (a 429 always carries retry-after).
    limit_headers: bool,
}

struct DropFlag(Arc<AtomicUsize>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Fake {
    fn new(rate: u32) -> Fake {
        Fake {
            mode: Arc::new(AtomicU8::new(HEALTHY)),
            rate,
            bucket: Arc::new(Mutex::new((f64::from(rate), Instant::now()))),
            calls: Arc::default(),
            abandoned: Arc::default(),
            in_silence: Arc::default(),
            limit_headers: true,
        }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn log(&self, status: u16) {
        self.calls.lock().unwrap().push((Instant::now(), status));
    }

    /// Takes one request from the bucket; `Err(remaining)` when it is empty.
    fn take(&self) -> Result<u32, ()> {
        let mut b = self.bucket.lock().unwrap();
        let now = Instant::now();
        let rate = f64::from(self.rate);
        b.0 = (b.0 + now.duration_since(b.1).as_secs_f64() * rate).min(rate);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            Ok(b.0 as u32)
        } else {
            Err(())
        }
    }

    async fn serve(self) -> String {
        let openai = self.clone();
        let anthropic = self.clone();
        let router = Router::new()
            .route(
                "/v1/chat/completions",
                post(move |h: HeaderMap, Json(b): Json<Value>| {
                    let f = openai.clone();
                    async move { f.answer(h, b, false).await }
                }),
            )
            .route(
                "/v1/messages",
                post(move |h: HeaderMap, Json(b): Json<Value>| {
                    let f = anthropic.clone();
                    async move { f.answer(h, b, true).await }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        format!("http://{addr}")
    }

    async fn answer(&self, _headers: HeaderMap, body: Value, anthropic: bool) -> Response {
        match self.mode.load(Ordering::SeqCst) {
            UNAVAILABLE => {
                self.log(503);
                return (StatusCode::SERVICE_UNAVAILABLE, "upstream overloaded").into_response();
            }
            BAD_REQUEST => {
                self.log(400);
                let err = json!({"error": {"message": "max_tokens is too large: 999999", "type": "invalid_request_error"}});
                return (StatusCode::BAD_REQUEST, Json(err)).into_response();
            }
            SILENT => {
                self.log(0);
                self.in_silence.store(true, Ordering::SeqCst);
                let _flag = DropFlag(self.abandoned.clone());
                futures::future::pending::<()>().await;
                unreachable!();
            }
            _ => {}
        }
        let mut headers = HeaderMap::new();
        if self.rate > 0 {
            let limit = (self.rate * 60).to_string();
            if self.limit_headers {
                headers.insert("x-ratelimit-limit-requests", limit.parse().unwrap());
            }
            match self.take() {
                Ok(remaining) => {
                    if self.limit_headers {
                        // Per-minute units, as OpenAI reports them; the reset is when the
                        // bucket is full again.
                        headers.insert(
                            "x-ratelimit-remaining-requests",
                            (remaining * 60).to_string().parse().unwrap(),
                        );
                        let reset = f64::from(self.rate - remaining) / f64::from(self.rate);
                        headers.insert(
                            "x-ratelimit-reset-requests",
                            format!("{reset:.3}s").parse().unwrap(),
                        );
                    }
                }
                Err(()) => {
                    self.log(429);
                    headers.insert("retry-after", "1".parse().unwrap());
                    if self.limit_headers {
                        headers.insert("x-ratelimit-remaining-requests", "0".parse().unwrap());
                        headers.insert("x-ratelimit-reset-requests", "1s".parse().unwrap());
                    }
                    return (StatusCode::TOO_MANY_REQUESTS, headers, "rate limited")
                        .into_response();
                }
            }
        }
        self.log(200);
        let words = ["Hello", " from", " the", " fake", " provider."];
        let streaming = body["stream"].as_bool().unwrap_or(false);
        match (anthropic, streaming) {
            (false, false) => (
                headers,
                Json(json!({
                    "choices": [{"message": {"role": "assistant", "content": words.concat()},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 5}
                })),
            )
                .into_response(),
            (true, false) => (
                headers,
                Json(json!({
                    "type": "message",
                    "content": [{"type": "text", "text": words.concat()}],
                    "stop_reason": "end_turn",
                    "usage": {"input_tokens": 7, "output_tokens": 5}
                })),
            )
                .into_response(),
            (false, true) => {
                let mut events: Vec<String> = words
                    .iter()
                    .map(|w| {
                        format!(
                            "data: {}\n\n",
                            json!({"choices": [{"delta": {"content": w}}]})
                        )
                    })
                    .collect();
                events.push(format!(
                    "data: {}\n\n",
                    json!({"choices": [{"delta": {}, "finish_reason": "stop"}]})
                ));
                events.push(format!(
                    "data: {}\n\n",
                    json!({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5}})
                ));
                events.push("data: [DONE]\n\n".into());
                sse_response(headers, events)
            }
            (true, true) => {
                let mut events = vec![format!(
                    "event: message_start\ndata: {}\n\n",
                    json!({"type": "message_start", "message": {"usage": {"input_tokens": 7}}})
                )];
                for w in words {
                    events.push(format!(
                        "event: content_block_delta\ndata: {}\n\n",
                        json!({"type": "content_block_delta", "index": 0,
                               "delta": {"type": "text_delta", "text": w}})
                    ));
                }
                events.push(format!(
                    "event: message_delta\ndata: {}\n\n",
                    json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"output_tokens": 5}})
                ));
                events.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".into());
                sse_response(headers, events)
            }
        }
    }

    fn statuses_since(&self, since: Instant) -> Vec<u16> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t >= since)
            .map(|(_, s)| *s)
            .collect()
    }
}

/// Streams the events with a short pause between them, as a real provider does.
fn sse_response(headers: HeaderMap, events: Vec<String>) -> Response {
    let stream = futures::stream::iter(events).then(|e| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok::<_, std::convert::Infallible>(e)
    });
    let mut response = Response::new(Body::from_stream(stream));
    *response.headers_mut() = headers;
    response
        .headers_mut()
        .insert("content-type", "text/event-stream".parse().unwrap());
    response
}

/// A server config with one provider `fake` of `kind` at `root` (model `fake-1`), quick
/// retries, and `extra` appended inside its `[[providers]]` entry.
pub(crate) fn server_config(
    dir: &tempfile::TempDir,
    kind: &str,
    root: &str,
    extra: &str,
) -> String {
    let base = if kind == "openai" {
        format!("{root}/v1")
    } else {
        root.to_string()
    };
    format!(
        r#"
[database]
sqlite_path = {db:?}
[dispatch]
slots = 16
shutdown_grace = "1s"
[retry]
backoff_base = "20ms"
backoff_cap = "100ms"
[[providers]]
name = "fake"
kind = "{kind}"
base_url = "{base}"
default_model = "fake-1"
{extra}
"#,
        db = dir.path().join("sluice.db").display().to_string()
    )
}

fn chat() -> Value {
    json!({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 16})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_the_allowed_rate_completes_with_few_refusals() {
    overload(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_the_allowed_rate_learned_from_429s_alone() {
    overload(false).await;
}

async fn overload(limit_headers: bool) {
    const R: u32 = 10; // requests per second the provider allows
    let mut fake = Fake::new(R);
    fake.limit_headers = limit_headers;
    let root = fake.clone().serve().await;
    let dir = tempfile::tempdir().unwrap();
    // No rpm configured: the limiter learns the provider's limit from its answers.
    // Ten seconds of work at the provider's pace, longer on a loaded machine: the queue
    // deadline must not be what ends a run here.
    let toml = server_config(&dir, "openai", &root, "")
        .replace("[retry]", "[queue]\nlive_queue_timeout = \"300s\"\n[retry]");
    let server = TestServer::start(&toml, &[]).await;
    let client = http();
    let started = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..(10 * R) {
        ids.push(
            enqueue(
                &client,
                &server,
                json!({"provider": "fake", "request": chat(), "max_attempts": 5}),
            )
            .await,
        );
    }
    for id in &ids {
        let run = wait_run(&client, &server, id, "finished", |r| {
            r["status"] != "queued" && r["status"] != "running"
        })
        .await;
        assert_eq!(run["status"], "completed", "every run completes: {run}");
    }
    let took = started.elapsed();
    let all = fake.statuses_since(started);
    let after_warmup = fake.statuses_since(started + Duration::from_secs(2));
    let refused = after_warmup.iter().filter(|s| **s == 429).count();
    let share = refused as f64 / after_warmup.len().max(1) as f64;
    eprintln!(
        "limit headers {limit_headers}: {} runs in {took:?} ({:.1}/s against {R}/s allowed); attempts {}, refused {} overall; after the first 2 s: {} of {} ({:.1}%)",
        ids.len(),
        ids.len() as f64 / took.as_secs_f64(),
        all.len(),
        all.iter().filter(|s| **s == 429).count(),
        refused,
        after_warmup.len(),
        share * 100.0
    );
    assert!(
        share <= 0.05,
        "{:.1}% of attempts refused after warm-up",
        share * 100.0
    );
    let health: Value = read_health(&client, &server).await;
    let provider = &health["providers"][0];
    assert_eq!(provider["name"], "fake");
    assert_eq!(provider["breaker"], "closed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_probes_once_and_closes_when_the_provider_recovers() {
    let fake = Fake::new(0);
    fake.set(UNAVAILABLE);
    let root = fake.clone().serve().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[providers.breaker]\nfailure_threshold = 5\nopen_interval = \"1500ms\"\nopen_jitter = 0.0\n";
    let toml = server_config(&dir, "openai", &root, extra).replace("slots = 16", "slots = 1");
    let server = TestServer::start(&toml, &[]).await;
    let client = http();
    let started = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(
            enqueue(
                &client,
                &server,
                json!({"provider": "fake", "request": chat(), "max_attempts": 10}),
            )
            .await,
        );
    }
    // Wait for the five failures that open it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while fake.statuses_since(started).len() < 5 {
        assert!(Instant::now() < deadline, "five failures never came");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let opened = Instant::now();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        fake.statuses_since(started).len(),
        5,
        "no call while the breaker is open"
    );
    let health: Value = read_health(&client, &server).await;
    assert_eq!(health["providers"][0]["breaker"], "open");
    assert_eq!(health["status"], "degraded");
    // After the interval: exactly one probe, which fails and opens it again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.statuses_since(started).len() < 6 {
        assert!(
            Instant::now() < deadline,
            "no probe after the open interval"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        opened.elapsed() >= Duration::from_millis(1400),
        "probe came early"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(fake.statuses_since(started).len(), 6, "exactly one probe");
    // The provider recovers: the next probe closes the breaker and everything completes.
    fake.set(HEALTHY);
    for id in &ids {
        let run = wait_run(&client, &server, id, "completed", |r| {
            r["status"] == "completed"
        })
        .await;
        assert!(
            run["attempts"].as_u64().unwrap() < 10,
            "completed with attempts to spare: {run}"
        );
    }
    let health: Value = read_health(&client, &server).await;
    assert_eq!(health["providers"][0]["breaker"], "closed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_error_fails_at_once_with_the_providers_message() {
    let fake = Fake::new(0);
    fake.set(BAD_REQUEST);
    let root = fake.clone().serve().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&server_config(&dir, "openai", &root, ""), &[]).await;
    let client = http();
    let id = enqueue(
        &client,
        &server,
        json!({"provider": "fake", "request": chat()}),
    )
    .await;
    let run = wait_run(&client, &server, &id, "failed", |r| r["status"] == "failed").await;
    assert_eq!(run["attempts"], 1);
    assert_eq!(run["error"]["kind"], "client");
    assert_eq!(run["error"]["status"], 400);
    assert!(
        run["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_tokens is too large"),
        "{run}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_provider_times_out_by_generation_and_cancel_closes_the_connection() {
    let fake = Fake::new(0);
    fake.set(SILENT);
    let root = fake.clone().serve().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&server_config(&dir, "openai", &root, ""), &[]).await;
    let client = http();
    let id = enqueue(
        &client,
        &server,
        json!({"provider": "fake", "request": chat(), "timeout_ms": 200, "max_attempts": 2}),
    )
    .await;
    let run = wait_run(&client, &server, &id, "timed_out", |r| {
        r["status"] == "timed_out"
    })
    .await;
    assert_eq!(run["timeout_origin"], "generation");
    assert_eq!(run["attempts"], 2);
    assert_eq!(run["error"]["kind"], "timeout");

    // Cancelling a run whose provider never answers ends it at once and hangs up.
    let before = fake.abandoned.load(Ordering::SeqCst);
    let id = enqueue(
        &client,
        &server,
        json!({"provider": "fake", "request": chat()}),
    )
    .await;
    wait_run(&client, &server, &id, "running", |r| {
        r["status"] == "running"
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake
        .statuses_since(Instant::now() - Duration::from_secs(60))
        .len()
        < 3
    {
        assert!(Instant::now() < deadline, "the provider never saw the call");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let resp = client
        .post(server.url(&format!("/runs/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let run = get_run(&client, &server, &id).await;
    assert_eq!(run["status"], "cancelled");
    let deadline = Instant::now() + Duration::from_secs(10);
    while fake.abandoned.load(Ordering::SeqCst) == before {
        assert!(
            Instant::now() < deadline,
            "the provider's connection was not closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.stop().await;
}

async fn streaming_reaches_the_run_stream(kind: &str) {
    let fake = Fake::new(0);
    let root = fake.clone().serve().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&server_config(&dir, kind, &root, ""), &[]).await;
    let client = http();
    let id = enqueue(
        &client,
        &server,
        json!({"provider": "fake", "request": chat(), "stream": true}),
    )
    .await;
    let mut stream =
        SseReader::open(&client, &server.url(&format!("/runs/{id}/events")), None).await;
    let mut deltas = Vec::new();
    let mut types = Vec::new();
    while let Some((_, event, data)) = stream.next().await {
        if event == "delta" {
            assert_eq!(data["attempt"], 1);
            deltas.push(data["content"].as_str().unwrap().to_string());
        }
        types.push(event);
    }
    assert_eq!(types.first().map(String::as_str), Some("queued"));
    assert_eq!(types.last().map(String::as_str), Some("completed"));
    assert_eq!(
        deltas,
        ["Hello", " from", " the", " fake", " provider."],
        "in order"
    );
    let run = get_run(&client, &server, &id).await;
    assert_eq!(run["output"]["content"], deltas.concat());
    assert_eq!(run["usage"]["prompt_tokens"], 7);
    assert_eq!(run["usage"]["completion_tokens"], 5);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_streaming_reaches_the_run_stream() {
    streaming_reaches_the_run_stream("openai").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_streaming_reaches_the_run_stream() {
    streaming_reaches_the_run_stream("anthropic").await;
}
