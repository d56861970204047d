//! Providers: the executor interface every LLM backend implements, and the registry the
//! dispatcher looks them up in. A provider turns one attempt into an output or a classified
//! failure; it never retries by itself (retrying is the dispatcher's job, so that every
//! retry is visible, bounded and durable).

mod anthropic;
mod anthropic_messages;
mod anthropic_request;
mod headers;
mod http;
mod message;
mod openai;
mod sim;

pub use anthropic::AnthropicProvider;
pub use anthropic_request::Unconvertible;
pub use message::{FUNCTION_TYPE, FinishReason, FunctionCall, ProviderOutput, ToolCall};
pub use openai::OpenAiProvider;
pub use sim::SimProvider;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::value::RawValue;

use crate::config::{Config, ProviderConfig, ProviderKind};
use crate::limits::RateLimitInfo;
use crate::run::{ErrorKind, RunId};
use crate::store::ToolCallDelta;

/// Receives the pieces of a streaming attempt as they arrive.
pub type DeltaSink = Arc<dyn Fn(StreamDelta<'_>) + Send + Sync>;

/// One piece of a streamed answer.
#[derive(Clone, Copy, Debug)]
pub enum StreamDelta<'a> {
    /// The next piece of text.
    Text(&'a str),
    /// The next piece of a tool call (its id and name first, then argument text).
    ToolCall(&'a ToolCallDelta),
}

/// One attempt as a provider sees it.
pub struct AttemptRequest<'a> {
    pub run_id: RunId,
    pub attempt: u32,
    pub model: &'a str,
    /// The client's request body (OpenAI chat shape), exactly as it was enqueued.
    pub request: &'a RawValue,
    /// Present when the client asked for `stream`: the provider streams and reports each
    /// piece of text and of a tool call here; the assembled message is still returned in
    /// the output.
    pub deltas: Option<DeltaSink>,
}

impl std::fmt::Debug for AttemptRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttemptRequest")
            .field("run_id", &self.run_id)
            .field("attempt", &self.attempt)
            .field("model", &self.model)
            .field("stream", &self.deltas.is_some())
            .finish()
    }
}

/// A failed attempt, classified so the dispatcher knows whether and when to retry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ProviderError {
    pub kind: ErrorKind,
    pub message: String,
    /// The provider's HTTP status, when it answered.
    pub status: Option<u16>,
    /// How long the provider asked us to wait (retry-after and friends).
    pub retry_after: Option<Duration>,
    /// Rate-limit headers of the response, when the provider sent any.
    pub rate_limits: Option<RateLimitInfo>,
}

impl ProviderError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ProviderError {
            kind,
            message: message.into(),
            status: None,
            retry_after: None,
            rate_limits: None,
        }
    }
}

/// What every provider implements. The returned future is dropped to abort the call
/// (cancellation, attempt timeout, shutdown), so implementations hold no state that a
/// drop would corrupt.
pub trait Provider: Send + Sync + 'static {
    fn call<'a>(
        &'a self,
        attempt: AttemptRequest<'a>,
    ) -> BoxFuture<'a, Result<ProviderOutput, ProviderError>>;
}

/// A configured provider: the implementation and the settings the dispatcher needs.
#[derive(Clone)]
pub struct ProviderEntry {
    pub name: String,
    pub kind: ProviderKind,
    pub default_model: String,
    pub imp: Arc<dyn Provider>,
}

/// All configured providers by name.
#[derive(Clone, Default)]
pub struct Providers {
    by_name: HashMap<String, ProviderEntry>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderSetupError {
    #[error(
        "provider {name:?}: environment variable {var} (named by api_key_env) is not set or is empty; export the API key in it, or remove api_key_env to send no key"
    )]
    MissingApiKey { name: String, var: String },
    #[error(
        "provider {name:?}: the value of environment variable {var} (named by api_key_env) is not a valid API key (it must be printable ASCII)"
    )]
    InvalidApiKey { name: String, var: String },
    #[error("provider {name:?}: base_url {url:?} is not a valid URL: {reason}")]
    InvalidBaseUrl {
        name: String,
        url: String,
        reason: String,
    },
    #[error("provider {name:?}: invalid {setting}: {reason}")]
    InvalidSetting {
        name: String,
        setting: &'static str,
        reason: String,
    },
    #[error("provider {name:?}: cannot build the HTTP client: {message}")]
    HttpClient { name: String, message: String },
}

impl Providers {
    pub fn from_config(config: &Config) -> Result<Providers, ProviderSetupError> {
        let mut providers = Providers::default();
        for p in &config.providers {
            providers.insert(build(p)?, p);
        }
        Ok(providers)
    }

    /// Registers an implementation under a config entry (tests plug in their own).
    pub fn insert(&mut self, imp: Arc<dyn Provider>, config: &ProviderConfig) {
        self.by_name.insert(
            config.name.clone(),
            ProviderEntry {
                name: config.name.clone(),
                kind: config.kind,
                default_model: config
                    .default_model
                    .clone()
                    .unwrap_or_else(|| "default".to_string()),
                imp,
            },
        );
    }

    pub fn get(&self, name: &str) -> Option<&ProviderEntry> {
        self.by_name.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }
}

impl ProviderEntry {
    /// Whether this provider can send `request` without losing any of it: the Anthropic
    /// conversion refuses a field it cannot carry over; an OpenAI-compatible provider
    /// gets the request as it is, unknown fields included.
    pub fn check_request(&self, request: &RawValue) -> Result<(), Unconvertible> {
        match self.kind {
            ProviderKind::Anthropic => anthropic_request::check(request.get()),
            ProviderKind::Openai | ProviderKind::Sim => Ok(()),
        }
    }
}

fn build(config: &ProviderConfig) -> Result<Arc<dyn Provider>, ProviderSetupError> {
    Ok(match config.kind {
        ProviderKind::Sim => Arc::new(SimProvider::new(config.sim.clone())),
        ProviderKind::Openai => Arc::new(OpenAiProvider::new(config)?),
        ProviderKind::Anthropic => Arc::new(AnthropicProvider::new(config)?),
    })
}
