//! A stand-in for a rate-limited LLM provider, as hard as the real ones: it speaks the
//! OpenAI chat completions shape (`/v1/chat/completions`) and the Anthropic messages shape
//! (`/v1/messages`), enforces a token bucket that refills continuously on its own clock,
//! and states (or hides) that bucket the way one provider style does. Every call is logged
//! with its arrival instant and status, so goodput and refusals are counted where the
//! provider sees them, not where Sluice thinks it sent them.
//!
//! Styles, each at a true limit of `R` requests a second:
//! - [`Style::MinuteOpenAi`]: a bucket of a minute's worth (`60·R`), stated in
//!   `x-ratelimit-*` headers; `reset` is the time until the bucket is full, in Go notation;
//! - [`Style::MinuteAnthropic`]: the same bucket stated in `anthropic-ratelimit-*` headers,
//!   `reset` an RFC 3339 instant rounded up to the whole second;
//! - [`Style::PerSecond`]: a per-minute limit (`60·R`) enforced over one second (a bucket of
//!   `R`), `remaining` scaled to the minute, `reset` the time until that small bucket is full;
//! - [`Style::Bare`]: a one-second bucket and no headers but `retry-after` on a refusal;
//! - [`Style::MinuteTokens`]: a minute bucket of *tokens* (`R` is then tokens a second),
//!   stated in `x-ratelimit-*-tokens` headers. A call costs the tokens it reports in its
//!   usage (its prompt, a character in four, plus half its `max_tokens`) and is refused when
//!   the bucket holds fewer, as OpenAI refuses a request larger than what remains.
//!
//! The rate can change at run time ([`StandIn::set_rate`]); a minute bucket's depth follows.
//! The file is shared with the benchmark (`bench/`), which runs the same styles against a
//! release build.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

/// A stated burst counts as spent once the bucket holds less than this many seconds of
/// the rate: a client that spends it keeps a little back (a second of the rate, and what it
/// has in flight), and one that never spends it stays near full.
const BURST_SPENT_SECS: f64 = 5.0;

/// How a provider states and enforces its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    MinuteOpenAi,
    MinuteAnthropic,
    PerSecond,
    Bare,
    MinuteTokens,
}

impl Style {
    /// How many seconds of the rate the provider's bucket holds.
    pub fn depth_secs(self) -> f64 {
        match self {
            Style::MinuteOpenAi | Style::MinuteAnthropic | Style::MinuteTokens => 60.0,
            Style::PerSecond | Style::Bare => 1.0,
        }
    }

    /// The provider kind Sluice must be configured with to talk to this style.
    pub fn kind(self) -> &'static str {
        match self {
            Style::MinuteAnthropic => "anthropic",
            _ => "openai",
        }
    }
}

/// One call as the stand-in saw it.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    pub at: Instant,
    pub status: u16,
    /// What an accepted call took from the bucket: one request, or its tokens.
    pub units: f64,
}

/// What a chat request asks of the provider, read from its body.
#[derive(Clone, Copy, Debug)]
struct Ask {
    prompt_tokens: u64,
    completion_tokens: u64,
}

impl Ask {
    /// The stand-in's own token count: a character in four of the messages' text, and half
    /// of `max_tokens` (at least one) generated.
    fn read(body: &[u8]) -> Ask {
        let body: Value = serde_json::from_slice(body).unwrap_or_default();
        let chars: usize = body["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["content"].as_str())
            .map(str::len)
            .sum();
        let max_tokens = body["max_tokens"].as_u64().unwrap_or(16);
        Ask {
            prompt_tokens: (chars / 4).max(1) as u64,
            completion_tokens: (max_tokens / 2).max(1),
        }
    }

    fn tokens(self) -> f64 {
        (self.prompt_tokens + self.completion_tokens) as f64
    }
}

struct Bucket {
    /// Units (requests, or tokens for [`Style::MinuteTokens`]) a second.
    rate: f64,
    level: f64,
    updated: Instant,
    /// When the level first fell below [`BURST_SPENT_SECS`] of the rate: a stated burst
    /// was spent.
    drained_at: Option<Instant>,
    calls: Vec<Call>,
}

impl Bucket {
    fn capacity(&self, style: Style) -> f64 {
        self.rate * style.depth_secs()
    }

    fn refill(&mut self, style: Style, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.rate).min(self.capacity(style));
        self.updated = now;
    }

    /// Seconds until the bucket is full again.
    fn to_full(&self, style: Style) -> f64 {
        (self.capacity(style) - self.level).max(0.0) / self.rate
    }
}

#[derive(Clone)]
pub struct StandIn {
    style: Style,
    bucket: Arc<Mutex<Bucket>>,
}

/// What the stand-in decided for one call, with the headers describing its bucket after it.
struct Verdict {
    accepted: bool,
    headers: HeaderMap,
}

impl StandIn {
    /// A stand-in allowing `rate` requests a second, its bucket full.
    pub fn new(style: Style, rate: f64) -> StandIn {
        let now = Instant::now();
        StandIn {
            style,
            bucket: Arc::new(Mutex::new(Bucket {
                rate,
                level: rate * style.depth_secs(),
                updated: now,
                drained_at: None,
                calls: Vec::new(),
            })),
        }
    }

    /// Changes the true limit from now on; a deeper bucket than the new one is cut.
    pub fn set_rate(&self, rate: f64) {
        let mut b = self.bucket.lock().unwrap();
        b.refill(self.style, Instant::now());
        b.rate = rate;
        b.level = b.level.min(b.capacity(self.style));
    }

    /// Every call so far, oldest first.
    pub fn calls(&self) -> Vec<Call> {
        self.bucket.lock().unwrap().calls.clone()
    }

    /// When a stated burst was first spent (the level fell below [`BURST_SPENT_SECS`] of the
    /// rate).
    pub fn drained_at(&self) -> Option<Instant> {
        self.bucket.lock().unwrap().drained_at
    }

    /// Serves on 127.0.0.1 and returns the root URL (no `/v1`).
    pub async fn serve(self) -> String {
        let openai = self.clone();
        let anthropic = self.clone();
        let router = Router::new()
            .route(
                "/v1/chat/completions",
                post(move |body: axum::body::Bytes| {
                    let s = openai.clone();
                    async move { s.answer(false, &body) }
                }),
            )
            .route(
                "/v1/messages",
                post(move |body: axum::body::Bytes| {
                    let s = anthropic.clone();
                    async move { s.answer(true, &body) }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        format!("http://{addr}")
    }

    fn decide(&self, ask: Ask) -> Verdict {
        let now = Instant::now();
        let mut b = self.bucket.lock().unwrap();
        b.refill(self.style, now);
        let cost = match self.style {
            Style::MinuteTokens => ask.tokens(),
            _ => 1.0,
        };
        let accepted = b.level >= cost;
        if accepted {
            b.level -= cost;
        }
        if b.level < b.rate * BURST_SPENT_SECS
            && b.drained_at.is_none()
            && self.style.depth_secs() > BURST_SPENT_SECS
        {
            b.drained_at = Some(now);
        }
        let status = if accepted { 200 } else { 429 };
        b.calls.push(Call {
            at: now,
            status,
            units: cost,
        });
        let mut headers = HeaderMap::new();
        let to_one = ((cost - b.level) / b.rate).max(0.0);
        if !accepted {
            let secs = to_one.ceil().max(1.0) as u64;
            headers.insert("retry-after", HeaderValue::from(secs));
        }
        let limit = (b.rate * 60.0).round() as u64;
        let whole = b.level.floor().max(0.0) as u64;
        let to_full = b.to_full(self.style);
        match self.style {
            Style::Bare => {}
            Style::MinuteOpenAi => openai_headers(&mut headers, "requests", limit, whole, to_full),
            Style::PerSecond => {
                openai_headers(&mut headers, "requests", limit, whole * 60, to_full)
            }
            Style::MinuteTokens => openai_headers(&mut headers, "tokens", limit, whole, to_full),
            Style::MinuteAnthropic => {
                let reset = SystemTime::now() + Duration::from_secs_f64(to_full.ceil());
                let reset: chrono::DateTime<chrono::Utc> = reset.into();
                let reset = reset.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                for (name, value) in [
                    ("anthropic-ratelimit-requests-limit", limit.to_string()),
                    ("anthropic-ratelimit-requests-remaining", whole.to_string()),
                    ("anthropic-ratelimit-requests-reset", reset),
                ] {
                    headers.insert(name, value.parse().unwrap());
                }
            }
        }
        Verdict { accepted, headers }
    }

    fn answer(&self, anthropic: bool, body: &[u8]) -> Response {
        let ask = Ask::read(body);
        let Verdict { accepted, headers } = self.decide(ask);
        if !accepted {
            let body = if anthropic {
                json!({"type": "error", "error": {"type": "rate_limit_error", "message": "rate limited"}})
            } else {
                json!({"error": {"message": "rate limited", "type": "requests"}})
            };
            return (StatusCode::TOO_MANY_REQUESTS, headers, Json(body)).into_response();
        }
        (headers, Json(completion(anthropic, ask))).into_response()
    }
}

fn completion(anthropic: bool, ask: Ask) -> Value {
    let (prompt, completion) = (ask.prompt_tokens, ask.completion_tokens);
    if anthropic {
        json!({
            "type": "message",
            "content": [{"type": "text", "text": "ok"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": prompt, "output_tokens": completion}
        })
    } else {
        json!({
            "choices": [{"message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion}
        })
    }
}

/// OpenAI's headers for one limit, `what` being `requests` or `tokens`.
fn openai_headers(headers: &mut HeaderMap, what: &str, limit: u64, remaining: u64, to_full: f64) {
    for (name, value) in [
        ("limit", limit.to_string()),
        ("remaining", remaining.to_string()),
        ("reset", go_duration(to_full)),
    ] {
        let name = format!("x-ratelimit-{name}-{what}");
        headers.insert(
            axum::http::HeaderName::try_from(name).unwrap(),
            value.parse().unwrap(),
        );
    }
}

/// Seconds in Go's duration notation, as OpenAI writes resets: `1m0s`, `59.9s`, `12ms`.
fn go_duration(secs: f64) -> String {
    if secs < 1.0 {
        return format!("{}ms", (secs * 1000.0).round() as u64);
    }
    let minutes = (secs / 60.0).floor();
    let rest = secs - minutes * 60.0;
    if minutes >= 1.0 {
        format!("{minutes}m{rest:.1}s")
    } else {
        format!("{rest:.2}s")
    }
}
