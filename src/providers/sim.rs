//! The built-in `sim` provider: answers chat requests after a configurable latency, with
//! configurable shares of server errors, rate limits and hangs. It makes the server do
//! real work end to end with no API key and no network.

use std::time::Duration;

use futures::future::BoxFuture;
use rand::Rng;
use serde::Deserialize;

use super::{AttemptRequest, FinishReason, Provider, ProviderError, ProviderOutput, StreamDelta};
use crate::config::SimConfig;
use crate::run::ErrorKind;

pub struct SimProvider {
    config: SimConfig,
}

impl SimProvider {
    pub fn new(config: SimConfig) -> Self {
        SimProvider { config }
    }
}

/// What the simulator reads of a chat request.
#[derive(Deserialize)]
struct ChatRequest {
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    max_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    role: String,
    #[serde(default)]
    content: serde_json::Value,
}

enum Fate {
    Answer,
    ServerError,
    RateLimited,
    Hang,
}

impl SimProvider {
    fn draw(&self) -> (Duration, Fate) {
        let c = &self.config;
        let mut rng = rand::rng();
        let jitter = c.latency_jitter.as_secs_f64();
        let offset = if jitter > 0.0 {
            rng.random_range(-jitter..=jitter)
        } else {
            0.0
        };
        let latency = Duration::from_secs_f64((c.latency.as_secs_f64() + offset).max(0.0));
        let roll: f64 = rng.random();
        let fate = if roll < c.error_rate {
            Fate::ServerError
        } else if roll < c.error_rate + c.rate_limit_rate {
            Fate::RateLimited
        } else if roll < c.error_rate + c.rate_limit_rate + c.hang_rate {
            Fate::Hang
        } else {
            Fate::Answer
        };
        (latency, fate)
    }
}

/// Rough token count: about four characters per token, as the providers' rule of thumb.
fn approx_tokens(chars: usize) -> u32 {
    chars.div_ceil(4).max(1) as u32
}

fn text_of(content: &serde_json::Value) -> String {
    match content {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

impl Provider for SimProvider {
    fn call<'a>(
        &'a self,
        attempt: AttemptRequest<'a>,
    ) -> BoxFuture<'a, Result<ProviderOutput, ProviderError>> {
        Box::pin(async move {
            let request: ChatRequest =
                serde_json::from_str(attempt.request.get()).map_err(|e| ProviderError {
                    status: Some(400),
                    ..ProviderError::new(ErrorKind::Client, format!("invalid chat request: {e}"))
                })?;
            let (latency, fate) = self.draw();
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            match fate {
                Fate::ServerError => {
                    return Err(ProviderError {
                        status: Some(500),
                        ..ProviderError::new(ErrorKind::Server, "simulated server error")
                    });
                }
                Fate::RateLimited => {
                    return Err(ProviderError {
                        status: Some(429),
                        retry_after: Some(self.config.rate_limit_retry_after),
                        ..ProviderError::new(ErrorKind::RateLimited, "simulated rate limit")
                    });
                }
                Fate::Hang => futures::future::pending::<()>().await,
                Fate::Answer => {}
            }
            let prompt_chars: usize = request
                .messages
                .iter()
                .map(|m| text_of(&m.content).len())
                .sum();
            let last_user = request
                .messages
                .iter()
                .rev()
                .find(|m| m.role == "user")
                .map(|m| text_of(&m.content))
                .unwrap_or_default();
            let mut content = format!("[{}] {}", attempt.model, last_user.trim());
            let mut finish_reason = "stop";
            if let Some(max) = request.max_tokens {
                let max_chars = (max as usize).saturating_mul(4);
                if content.len() > max_chars {
                    let mut cut = max_chars;
                    while !content.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    content.truncate(cut);
                    finish_reason = "length";
                }
            }
            if let Some(sink) = &attempt.deltas {
                // Stream word by word, as a real provider streams tokens.
                for piece in content.split_inclusive(' ') {
                    if !self.config.delta_interval.is_zero() {
                        tokio::time::sleep(self.config.delta_interval).await;
                    }
                    sink(StreamDelta::Text(piece));
                }
            }
            let mut out = ProviderOutput::new(None);
            out.completion_tokens = Some(approx_tokens(content.len()));
            out.prompt_tokens = Some(approx_tokens(prompt_chars));
            out.content = Some(content);
            out.finish(finish_reason, FinishReason::from_openai);
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::RunId;
    use serde_json::value::RawValue;

    fn sim(config: SimConfig) -> SimProvider {
        SimProvider::new(SimConfig {
            latency: Duration::ZERO,
            latency_jitter: Duration::ZERO,
            ..config
        })
    }

    async fn call(p: &SimProvider, body: &str) -> Result<ProviderOutput, ProviderError> {
        let raw = RawValue::from_string(body.to_string()).unwrap();
        p.call(AttemptRequest {
            run_id: RunId::new(),
            attempt: 1,
            model: "sim-1",
            request: &raw,
            deltas: None,
        })
        .await
    }

    #[tokio::test]
    async fn answers_the_last_user_message() {
        let p = sim(SimConfig::default());
        let out = call(
            &p,
            r#"{"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hello there"}]}"#,
        )
        .await
        .unwrap();
        assert_eq!(out.content.as_deref(), Some("[sim-1] hello there"));
        assert_eq!(out.finish_reason, Some(FinishReason::Stop));
        assert!(out.prompt_tokens.unwrap() >= 1);
    }

    #[tokio::test]
    async fn max_tokens_truncates_with_finish_reason_length() {
        let p = sim(SimConfig::default());
        let out = call(
            &p,
            r#"{"messages":[{"role":"user","content":"a long message that will not fit"}],"max_tokens":2}"#,
        )
        .await
        .unwrap();
        assert_eq!(out.content.map(|c| c.len()), Some(8));
        assert_eq!(out.finish_reason, Some(FinishReason::Length));
    }

    #[tokio::test]
    async fn configured_failures_are_classified() {
        let p = sim(SimConfig {
            error_rate: 1.0,
            ..SimConfig::default()
        });
        let err = call(&p, r#"{"messages":[]}"#).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Server);
        assert_eq!(err.status, Some(500));

        let p = sim(SimConfig {
            rate_limit_rate: 1.0,
            ..SimConfig::default()
        });
        let err = call(&p, r#"{"messages":[]}"#).await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::RateLimited);
        assert_eq!(err.retry_after, Some(Duration::from_secs(1)));
    }
}
