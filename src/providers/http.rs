//! What the HTTP providers share: the pooled client, the API key (never printed), sending a
//! request and classifying the answer, reading a JSON or SSE body.

#![allow(
    clippy::result_large_err,
    reason = "ProviderError is the error type of the Provider trait; failures are the cold path"
)]

use std::time::SystemTime;

use eventsource_stream::{Event, EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use reqwest::header::{HeaderName, HeaderValue};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use super::{ProviderError, ProviderSetupError, headers};
use crate::config::ProviderConfig;
use crate::limits::RateLimitInfo;
use crate::run::ErrorKind;

/// Most of an error body kept for the message.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// Most of a body quoted in a message when it is not the expected JSON.
const QUOTE_LIMIT: usize = 300;

/// One pooled client per provider, with the provider's connect and read timeouts.
pub fn client(config: &ProviderConfig) -> Result<reqwest::Client, ProviderSetupError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .read_timeout(config.read_timeout)
        .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ProviderSetupError::HttpClient {
            name: config.name.clone(),
            message: chain(&e),
        })
}

/// `{base_url}{path}` with the kind's default root, checked once at construction.
pub fn endpoint(
    config: &ProviderConfig,
    default_base: &str,
    path: &str,
) -> Result<reqwest::Url, ProviderSetupError> {
    let base = config.base_url.as_deref().unwrap_or(default_base);
    let url = format!("{}{path}", base.trim_end_matches('/'));
    reqwest::Url::parse(&url).map_err(|e| ProviderSetupError::InvalidBaseUrl {
        name: config.name.clone(),
        url: base.to_string(),
        reason: e.to_string(),
    })
}

/// An API key read from the environment once. Its `Debug` never shows it, its header value
/// is marked sensitive, and [`ApiKey::redact`] scrubs it from any provider message.
pub struct ApiKey {
    key: String,
    header: HeaderValue,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl ApiKey {
    /// The key named by `api_key_env`: `None` when no variable is named; an error naming
    /// the variable when it is named but unset, empty or not header text. `scheme` is
    /// prepended in the header value (`"Bearer "` for OpenAI, `""` for Anthropic).
    pub fn from_env(
        config: &ProviderConfig,
        scheme: &str,
    ) -> Result<Option<Self>, ProviderSetupError> {
        let Some(var) = &config.api_key_env else {
            return Ok(None);
        };
        let missing = || ProviderSetupError::MissingApiKey {
            name: config.name.clone(),
            var: var.clone(),
        };
        let key = match std::env::var(var) {
            Ok(key) if !key.trim().is_empty() => key.trim().to_string(),
            Ok(_) | Err(std::env::VarError::NotPresent) => return Err(missing()),
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(ProviderSetupError::InvalidApiKey {
                    name: config.name.clone(),
                    var: var.clone(),
                });
            }
        };
        let mut header = HeaderValue::from_str(&format!("{scheme}{key}")).map_err(|_| {
            ProviderSetupError::InvalidApiKey {
                name: config.name.clone(),
                var: var.clone(),
            }
        })?;
        header.set_sensitive(true);
        Ok(Some(ApiKey { key, header }))
    }

    pub fn apply(&self, request: RequestBuilder, name: HeaderName) -> RequestBuilder {
        request.header(name, self.header.clone())
    }

    /// Replaces the key wherever a provider echoed it back.
    pub fn redact(&self, mut error: ProviderError) -> ProviderError {
        if error.message.contains(&self.key) {
            error.message = error.message.replace(&self.key, "<redacted>");
        }
        error
    }
}

/// Removes `key` (when there is one) from the error of a finished attempt.
pub fn redact_with<T>(
    key: Option<&ApiKey>,
    result: Result<T, ProviderError>,
) -> Result<T, ProviderError> {
    result.map_err(|e| match key {
        Some(key) => key.redact(e),
        None => e,
    })
}

/// Sends the request with the key (when there is one) in header `name`; the answer comes
/// with its rate-limit headers, read on arrival.
pub async fn send_keyed(
    request: RequestBuilder,
    key: Option<&ApiKey>,
    name: HeaderName,
) -> Result<(Response, Option<RateLimitInfo>), ProviderError> {
    let request = match key {
        Some(key) => key.apply(request, name),
        None => request,
    };
    let response = send(request).await?;
    let limits = rate_limits(&response);
    Ok((response, limits))
}

/// Sends the request; a non-2xx answer becomes its classified error.
pub async fn send(request: RequestBuilder) -> Result<Response, ProviderError> {
    let response = request.send().await.map_err(|e| transport(&e, None))?;
    if response.status().is_success() {
        Ok(response)
    } else {
        Err(failure(response).await)
    }
}

/// 429 → rate limited; 408, 409, 5xx (529 included) → server; other 4xx → client.
pub fn kind_for_status(status: StatusCode) -> ErrorKind {
    match status.as_u16() {
        429 => ErrorKind::RateLimited,
        408 | 409 | 500..=599 => ErrorKind::Server,
        400..=499 => ErrorKind::Client,
        // 1xx/3xx reaching us are not answers we can use; retrying may help.
        _ => ErrorKind::Server,
    }
}

/// The rate-limit headers of a response, read now.
pub fn rate_limits(response: &Response) -> Option<RateLimitInfo> {
    headers::rate_limits(response.headers(), SystemTime::now())
}

/// Classifies a non-2xx response, keeping the provider's own error message.
async fn failure(mut response: Response) -> ProviderError {
    let status = response.status();
    let now = SystemTime::now();
    let kind = kind_for_status(status);
    let rate_limits = headers::rate_limits(response.headers(), now);
    let retry_after = headers::retry_after(
        response.headers(),
        kind == ErrorKind::RateLimited,
        rate_limits.as_ref(),
        now,
    );
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    let detail = error_message(&body).unwrap_or_else(|| {
        let text = quote(&String::from_utf8_lossy(&body));
        if text.is_empty() {
            status.canonical_reason().unwrap_or("no body").to_string()
        } else {
            text
        }
    });
    ProviderError {
        status: Some(status.as_u16()),
        retry_after,
        rate_limits,
        ..ProviderError::new(kind, format!("HTTP {}: {detail}", status.as_u16()))
    }
}

/// The message of an error body: OpenAI `{"error":{"message":…}}`, Anthropic
/// `{"type":"error","error":{"type":…,"message":…}}`, and the looser shapes some
/// OpenAI-compatible servers use (`{"error":"…"}`, `{"message":…}`, `{"detail":…}`).
pub fn error_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error");
    let message = error
        .and_then(|e| e.get("message"))
        .or_else(|| error.filter(|e| e.is_string()))
        .or_else(|| value.get("message"))
        .or_else(|| value.get("detail"))?;
    let message = match message {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let message = quote(&message);
    match error.and_then(|e| e.get("type")).and_then(|t| t.as_str()) {
        Some(kind) if !kind.is_empty() => Some(format!("{kind}: {message}")),
        _ => Some(message),
    }
}

/// Reads a 2xx body as `T`; a body that is not `T` is invalid output.
pub async fn json<T: DeserializeOwned>(response: Response) -> Result<T, ProviderError> {
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| transport(&e, Some(status)))?;
    serde_json::from_slice(&body).map_err(|e| {
        invalid_output(
            status,
            format!(
                "unexpected response body ({e}): {}",
                quote(&String::from_utf8_lossy(&body))
            ),
        )
    })
}

/// The SSE events of a 2xx streaming body; transport failures are classified.
pub fn events(response: Response) -> impl Stream<Item = Result<Event, ProviderError>> {
    let status = response.status();
    response.bytes_stream().eventsource().map(move |event| {
        event.map_err(|e| match e {
            EventStreamError::Transport(e) => transport(&e, Some(status)),
            EventStreamError::Utf8(e) => {
                invalid_output(status, format!("stream is not UTF-8: {e}"))
            }
            EventStreamError::Parser(e) => {
                invalid_output(status, format!("stream is not valid SSE: {e}"))
            }
        })
    })
}

pub fn invalid_output(status: StatusCode, message: impl Into<String>) -> ProviderError {
    ProviderError {
        status: Some(status.as_u16()),
        ..ProviderError::new(ErrorKind::InvalidOutput, message)
    }
}

/// A reqwest failure: a timeout (connect or read) or any other connection trouble.
fn transport(error: &reqwest::Error, status: Option<StatusCode>) -> ProviderError {
    let kind = if error.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Connection
    };
    ProviderError {
        status: status.map(|s| s.as_u16()),
        ..ProviderError::new(kind, chain(error))
    }
}

/// An error and its causes on one line, without the URL (which may carry secrets in a
/// query string). Request headers are never part of a reqwest error.
fn chain(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    if let Some(url) = error.url() {
        message = message.replace(&format!(" for url ({url})"), "");
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// At most [`QUOTE_LIMIT`] bytes of `text`, cut on a character boundary.
fn quote(text: &str) -> String {
    let text = text.trim();
    if text.len() <= QUOTE_LIMIT {
        return text.to_string();
    }
    let mut cut = QUOTE_LIMIT;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        let kind = |code| kind_for_status(StatusCode::from_u16(code).unwrap());
        assert_eq!(kind(429), ErrorKind::RateLimited);
        for code in [408, 409, 500, 502, 503, 504, 529] {
            assert_eq!(kind(code), ErrorKind::Server, "{code}");
        }
        for code in [400, 401, 403, 404, 413, 422] {
            assert_eq!(kind(code), ErrorKind::Client, "{code}");
        }
    }

    #[test]
    fn provider_error_messages_are_kept() {
        let openai = br#"{"error":{"message":"Invalid model","type":"invalid_request_error","param":null,"code":null}}"#;
        assert_eq!(
            error_message(openai).as_deref(),
            Some("invalid_request_error: Invalid model")
        );
        let anthropic =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(
            error_message(anthropic).as_deref(),
            Some("overloaded_error: Overloaded")
        );
        assert_eq!(
            error_message(br#"{"error":"bad key"}"#).as_deref(),
            Some("bad key")
        );
        assert_eq!(
            error_message(br#"{"detail":"Not Found"}"#).as_deref(),
            Some("Not Found")
        );
        assert_eq!(error_message(b"<html>oops</html>"), None);
        assert_eq!(quote(&"é".repeat(400)).chars().count(), 151);
    }
}
