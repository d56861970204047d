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

/// One request served in fixed-latency mode: its body's marker and when it arrived and
/// was answered (wall clock, µs).
#[derive(Clone, Copy, Debug)]
pub struct Served {
    pub mark: u64,
    pub arrived_us: i64,
    pub answered_us: i64,
}

struct Inner {
    bucket: Bucket,
    start: Instant,
    hits: Vec<Hit>,
    /// Fixed-latency mode: every request is answered after this long, never refused.
    latency: Option<std::time::Duration>,
    served: Vec<Served>,
}

/// The `m<N>` marker of a chat request's first message (see `client::Body::marked`).
fn marker(body: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["messages"][0]["content"]
        .as_str()?
        .strip_prefix('m')?
        .parse()
        .ok()
}

#[derive(Clone)]
pub struct Stub {
    inner: Arc<Mutex<Inner>>,
    pub base_url: String,
    task: Arc<tokio::task::JoinHandle<()>>,
}

const REPLY: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","model":"x","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}"#;

async fn chat(State(inner): State<Arc<Mutex<Inner>>>, body: axum::body::Bytes) -> Response {
    let fixed = inner.lock().unwrap().latency;
    if let Some(latency) = fixed {
        let arrived_us = crate::stats::now_us();
        tokio::time::sleep(latency).await;
        if let Some(mark) = marker(&body) {
            let answered_us = crate::stats::now_us();
            inner.lock().unwrap().served.push(Served {
                mark,
                arrived_us,
                answered_us,
            });
        }
        return ([(header::CONTENT_TYPE, "application/json")], REPLY).into_response();
    }
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
    /// A provider allowing `rpm` requests a minute (a token bucket with one second of
    /// burst), answering at once and refusing beyond it with 429 and `retry-after`.
    pub async fn start(rpm: f64) -> anyhow::Result<Stub> {
        Stub::launch(rpm, None).await
    }

    /// A provider that answers every request after exactly `latency` (its timer's
    /// precision) and records, per marked request, when it arrived and was answered.
    pub async fn start_fixed(latency: std::time::Duration) -> anyhow::Result<Stub> {
        Stub::launch(f64::from(u32::MAX), Some(latency)).await
    }

    async fn launch(rpm: f64, latency: Option<std::time::Duration>) -> anyhow::Result<Stub> {
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
            latency,
            served: Vec::new(),
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

    /// This stub as an OpenAI-compatible provider entry of the server's config.
    pub fn provider(&self, name: &str) -> Vec<crate::server::Provider> {
        vec![crate::server::Provider::OpenAi {
            name: name.into(),
            base_url: self.base_url.clone(),
        }]
    }

    /// The requests served in fixed-latency mode, by marker.
    pub fn served(&self) -> std::collections::HashMap<u64, Served> {
        self.inner
            .lock()
            .unwrap()
            .served
            .iter()
            .map(|s| (s.mark, *s))
            .collect()
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}
