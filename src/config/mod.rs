//! Configuration: one `Config` struct read from `config/sluice.toml` (or `--config` /
//! `SLUICE_CONFIG`), overridden by `SLUICE_…` environment variables, validated once at
//! startup. Every tuning constant lives in this folder with its documented default; the
//! README's configuration reference mirrors it.
//!
//! Environment overrides name a key path with `__` between levels:
//! `SLUICE_LISTEN`, `SLUICE_DISPATCH__SLOTS=40`, `SLUICE_RETRY__BACKOFF_BASE=500ms`.
//! Providers are addressed by name: `SLUICE_PROVIDERS__SIM__SIM__LATENCY=20ms`.
//! Secrets never live in the file: a provider names the variable holding its key.
//!
//! Each section's defaults are written once, in its `Default` impl, which serde uses for
//! every key the file leaves out; provider keys, defaulted one by one, each have one
//! default fn. Each section checks its own values in `validate`, naming the offending key;
//! [`Config::validate`] calls them in file order.
//!
//! Where things live:
//! - `mod.rs`: [`Config`] itself, loading (file, then environment, then validation) and
//!   [`ConfigError`].
//! - `server.rs`: the process's own resources, `[database]` and `[http]`.
//! - `cors.rs`: `[http.cors]`, other origins allowed to call from a browser.
//! - `dispatch.rs`: the worker pool, `[dispatch]`, and what happens to a failed attempt,
//!   `[retry]`.
//! - `queue.rs`: live work first, `[queue]` deadlines, timeouts and key caps, and
//!   `[admission]` of background work.
//! - `provider.rs`: `[[providers]]` entries, their kinds and per-kind defaults.
//! - `limits.rs`: a provider's `[providers.limiter]` and `[providers.breaker]`.
//! - `sim.rs`: the built-in simulator's `[providers.sim]`.
//! - `routes.rs`: `[[routes]]`, the front door's model names.
//! - `retention.rs`: `[retention]`, how long finished runs are kept.
//! - `batches.rs`: `[batches]`, the size of one batch and its pause cooldown.
//! - `tenants.rs`: `[[tenants]]`, `[auth]` and the `[[prices]]` of spend budgets.
//! - `tokens.rs`: bearer tokens as digests, resolved from the file or the environment.
//! - `env.rs`: the `SLUICE_…` and `DATABASE_URL` overlay on the file.
//! - `duration.rs`: how durations are written (`300ms`, `30s`, `5m`).

mod batches;
mod cors;
mod dispatch;
pub mod duration;
mod env;
mod limits;
mod provider;
mod queue;
mod retention;
mod routes;
mod server;
mod sim;
mod tenants;
mod tokens;

pub use batches::BatchesConfig;
pub use cors::{ANY_ORIGIN, CorsConfig};
pub use dispatch::{DispatchConfig, RetryConfig};
pub use limits::{BreakerConfig, LimitWindow, LimiterConfig};
pub use provider::{ProviderConfig, ProviderKind, SIM_DEFAULT_MODEL};
pub use queue::{AdmissionConfig, QueueConfig};
pub use retention::RetentionConfig;
pub use routes::{DisconnectPolicy, RouteConfig};
pub use server::{DEFAULT_LISTEN, DatabaseConfig, HttpConfig};
pub use sim::SimConfig;
pub use tenants::{
    AuthConfig, DEFAULT_ADMIN_TOKEN_ENV, MAX_TENANT_WEIGHT, PriceConfig, TenantConfig,
};
pub use tenants::{DEFAULT_STREAM_SECRET_ENV, MIN_STREAM_SECRET_LEN, StreamSecret};
pub use tokens::TokenDigest;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config: {path}: {message}")]
    Invalid { path: String, message: String },
}

/// The error for a value at key path `path` that the file or environment got wrong.
fn invalid(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP listen address (`SLUICE_LISTEN`). Default [`DEFAULT_LISTEN`].
    pub listen: SocketAddr,
    pub database: DatabaseConfig,
    pub dispatch: DispatchConfig,
    pub retry: RetryConfig,
    pub queue: QueueConfig,
    pub http: HttpConfig,
    pub admission: AdmissionConfig,
    pub providers: Vec<ProviderConfig>,
    pub retention: RetentionConfig,
    /// Public model names of the OpenAI-compatible front door.
    pub routes: Vec<RouteConfig>,
    pub auth: AuthConfig,
    /// Teams sharing the server; none is open mode.
    pub tenants: Vec<TenantConfig>,
    /// Token prices per model, for spend budgets.
    pub prices: Vec<PriceConfig>,
    pub batches: BatchesConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN,
            database: DatabaseConfig::default(),
            dispatch: DispatchConfig::default(),
            retry: RetryConfig::default(),
            queue: QueueConfig::default(),
            http: HttpConfig::default(),
            admission: AdmissionConfig::default(),
            providers: vec![ProviderConfig::sim("sim")],
            retention: RetentionConfig::default(),
            routes: Vec::new(),
            auth: AuthConfig::default(),
            tenants: Vec::new(),
            prices: Vec::new(),
            batches: BatchesConfig::default(),
        }
    }
}

impl Config {
    /// Reads the file (when it exists or was named explicitly), applies the environment,
    /// and validates. `explicit` is true when the path came from `--config`/`SLUICE_CONFIG`:
    /// a missing file is then an error rather than "use defaults".
    pub fn load(
        path: &Path,
        explicit: bool,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Self::from_toml_and_env(&text, path, env)
    }

    pub fn from_toml_and_env(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut root: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        let env: Vec<(String, String)> = env.into_iter().collect();
        env::overlay(&mut root, env.iter().cloned())?;
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(root))
            .map_err(|e| {
                let path = e.path().to_string();
                invalid(path, e.into_inner().to_string())
            })?;
        for p in &mut config.providers {
            p.apply_kind_defaults();
            p.follow_attempt_timeouts(config.queue.background_attempt_timeout_cap);
        }
        config.validate()?;
        tokens::resolve(&mut config, &env)?;
        Ok(config)
    }

    /// Checks every section, in the order of the shipped file; the first error wins.
    fn validate(&self) -> Result<(), ConfigError> {
        self.dispatch.validate()?;
        self.retry.validate()?;
        self.queue.validate()?;
        self.admission.validate()?;
        self.http.validate()?;
        self.http.cors.validate(!self.tenants.is_empty())?;
        provider::validate_all(
            &self.providers,
            self.queue.background_attempt_timeout_cap,
            &self.retry,
        )?;
        routes::validate_all(&self.routes, &self.providers)?;
        self.retention.validate()?;
        self.batches.validate()?;
        self.auth.validate()?;
        tenants::validate_all(&self.tenants, &self.prices)
    }

    pub fn provider(&self, name: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.name == name)
    }

    pub fn tenant(&self, name: &str) -> Option<&TenantConfig> {
        self.tenants.iter().find(|t| t.name == name)
    }
}

/// Loads `text` as the file `test.toml` with `env` as the whole environment.
#[cfg(test)]
fn load_for_test(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_toml_and_env(
        text,
        Path::new("test.toml"),
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::load_for_test as load;

    #[test]
    fn the_shipped_config_is_valid() {
        let text = include_str!("../../config/sluice.toml");
        let config = load(text, &[]).expect("shipped config loads");
        assert!(config.provider("sim").is_some());
    }

    #[test]
    fn defaults_apply_to_an_empty_file() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.dispatch.slots, 20);
        assert_eq!(c.retry.backoff_base, Duration::from_millis(300));
        assert_eq!(c.retry.backoff_cap, Duration::from_secs(30));
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let msg = load("[dispatch]\nslotz = 3\n", &[])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("slotz"), "{msg}");
        let msg = load("", &[("SLUICE_DISPATCH__SLOTZ", "3")])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("slotz"), "{msg}");
    }
}
