//! A stub OpenAI-compatible provider enforcing R requests per minute: a token bucket that
//! refills at R/60 per second and holds at most one second's worth (at least one token).
//! Beyond it the stub answers 429 with `retry-after` (whole seconds, rounded up, as many
//! OpenAI-compatible servers send it) and no `x-ratelimit-*` headers, so the client has to
//! find the pace itself.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

struct Bucket {
    tokens: f64,
    capacity: f64,
    per_sec: f64,
    last: Instant,
}

#[derive(Default, Clone, Copy, Debug)]
pub struct Hit {
    /// Seconds since the stub started.
    pub at: f64,
    pub ok: bool,
}

struct Inner {
    bucket: Bucket,
    start: Instant,
    hits: Vec<Hit>,
}

#[derive(Clone)]
pub struct Stub {
    inner: Arc<Mutex<Inner>>,
    pub base_url: String,
    task: Arc<tokio::task::JoinHandle<()>>,
}

const REPLY: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","model":"x","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;

async fn chat(State(inner): State<Arc<Mutex<Inner>>>) -> Response {
    let (ok, wait) = {
        let mut g = inner.lock().unwrap();
        let now = Instant::now();
        let at = now.duration_since(g.start).as_secs_f64();
        let b = &mut g.bucket;
        b.tokens =
            (b.tokens + now.duration_since(b.last).as_secs_f64() * b.per_sec).min(b.capacity);
        b.last = now;
        let (ok, wait) = if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            (true, 0.0)
        } else {
            (false, (1.0 - b.tokens) / b.per_sec)
        };
        g.hits.push(Hit { at, ok });
        (ok, wait)
    };
    if ok {
        ([(header::CONTENT_TYPE, "application/json")], REPLY).into_response()
    } else {
        let secs = (wait.ceil() as u64).max(1);
        (
            StatusCode::TOO_MANY_REQUESTS,
            [
                (header::CONTENT_TYPE, "application/json".to_string()),
                (header::RETRY_AFTER, secs.to_string()),
            ],
            r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#,
        )
            .into_response()
    }
}

impl Stub {
    pub async fn start(rpm: f64) -> anyhow::Result<Stub> {
        let per_sec = rpm / 60.0;
        let capacity = per_sec.max(1.0);
        let now = Instant::now();
        let inner = Arc::new(Mutex::new(Inner {
            bucket: Bucket {
                tokens: capacity,
                capacity,
                per_sec,
                last: now,
            },
            start: now,
            hits: Vec::new(),
        }));
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Stub {
            inner,
            base_url: format!("http://{addr}/v1"),
            task: Arc::new(task),
        })
    }

    /// Seconds since the stub started.
    pub fn elapsed(&self) -> f64 {
        self.inner.lock().unwrap().start.elapsed().as_secs_f64()
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.inner.lock().unwrap().hits.clone()
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}
