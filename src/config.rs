//! Configuration: one `Config` struct read from `config/sluice.toml` (or `--config` /
//! `SLUICE_CONFIG`), overridden by `SLUICE_…` environment variables, validated once at
//! startup. Every tuning constant lives here with its documented default; the README's
//! configuration reference mirrors this file.
//!
//! Environment overrides name a key path with `__` between levels:
//! `SLUICE_LISTEN`, `SLUICE_DISPATCH__SLOTS=40`, `SLUICE_RETRY__BACKOFF_BASE=500ms`.
//! Providers are addressed by name: `SLUICE_PROVIDERS__SIM__LATENCY=20ms`.
//! Secrets never live in the file: a provider names the variable holding its key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Variables under the `SLUICE_` prefix that are not config keys.
const RESERVED_ENV: &[&str] = &["SLUICE_CONFIG", "SLUICE_LOG_FORMAT", "SLUICE_LOG"];
/// Prefixes under `SLUICE_` that belong to the test and benchmark harnesses.
const RESERVED_ENV_PREFIXES: &[&str] = &["SLUICE_TEST_", "SLUICE_BENCH_"];

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

fn invalid(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        path: path.into(),
        message: message.into(),
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP listen address (`SLUICE_LISTEN`). Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    pub database: DatabaseConfig,
    pub dispatch: DispatchConfig,
    pub retry: RetryConfig,
    pub queue: QueueConfig,
    pub http: HttpConfig,
    pub admission: AdmissionConfig,
    pub providers: Vec<ProviderConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database: DatabaseConfig::default(),
            dispatch: DispatchConfig::default(),
            retry: RetryConfig::default(),
            queue: QueueConfig::default(),
            http: HttpConfig::default(),
            admission: AdmissionConfig::default(),
            providers: vec![ProviderConfig::sim("sim")],
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://…` selects PostgreSQL; unset selects the embedded SQLite file. The
    /// `DATABASE_URL` environment variable wins over this key.
    pub url: Option<String>,
    /// The SQLite file used when no URL is given. Its folder is created on first start.
    pub sqlite_path: PathBuf,
    /// Connection pool size (PostgreSQL). SQLite uses one writer and this many readers.
    pub max_connections: u32,
    /// How long to wait for a connection before the request fails with 503.
    #[serde(with = "duration")]
    pub acquire_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            sqlite_path: PathBuf::from("./data/sluice.db"),
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// Worker slots: attempts that may run at once in this process.
    pub slots: usize,
    /// Most runs claimed by one statement.
    pub claim_batch: usize,
    /// How long a claim is valid without a heartbeat; an expired lease is rescued.
    #[serde(with = "duration")]
    pub lease: Duration,
    /// How often in-flight leases are extended (one statement for all of them).
    #[serde(with = "duration")]
    pub heartbeat_interval: Duration,
    /// How often the rescuer looks for expired leases.
    #[serde(with = "duration")]
    pub rescue_interval: Duration,
    /// Longest the producer sleeps with nothing due, as a safety net for a lost wake-up.
    #[serde(with = "duration")]
    pub idle_poll: Duration,
    /// On SIGTERM, how long in-flight attempts may run before they are released.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
    /// Most finished attempts written by one statement.
    pub complete_batch: usize,
    /// Most rows one enqueue transaction groups from concurrent requests.
    pub enqueue_batch: usize,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            slots: 20,
            claim_batch: 100,
            lease: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            rescue_interval: Duration::from_secs(5),
            idle_poll: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(20),
            complete_batch: 256,
            enqueue_batch: 256,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts a run gets when the request does not say (1..=50).
    pub max_attempts: u32,
    /// First backoff window; doubles per attempt (full jitter).
    #[serde(with = "duration")]
    pub backoff_base: Duration,
    /// Longest backoff window.
    #[serde(with = "duration")]
    pub backoff_cap: Duration,
    /// Longest wait a provider's `retry-after` (or reset header) is honoured for.
    #[serde(with = "duration")]
    pub provider_delay_cap: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 5,
            backoff_base: Duration::from_millis(300),
            backoff_cap: Duration::from_secs(30),
            provider_delay_cap: Duration::from_secs(600),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Default deadline to first start for live runs (`queue_timeout_ms` overrides).
    #[serde(with = "duration")]
    pub live_queue_timeout: Duration,
    /// Default deadline to first start for background runs.
    #[serde(with = "duration")]
    pub background_queue_timeout: Duration,
    /// Per-attempt timeout when the request gives none, until the provider has enough
    /// successful samples for the adaptive timeout.
    #[serde(with = "duration")]
    pub attempt_timeout: Duration,
    /// The adaptive timeout never goes below this.
    #[serde(with = "duration")]
    pub attempt_timeout_floor: Duration,
    /// Successful attempts a provider needs before its timeout adapts.
    pub adaptive_timeout_min_samples: u32,
    /// Adaptive timeout = recent p95 successful latency × this factor + the depth penalty.
    pub adaptive_timeout_factor: f64,
    /// Added to the adaptive timeout per attempt in flight against the provider: a busy
    /// provider answers slower.
    #[serde(with = "duration")]
    pub adaptive_timeout_penalty: Duration,
    /// Longest per-attempt timeout a live run may ask for.
    #[serde(with = "duration")]
    pub live_attempt_timeout_cap: Duration,
    /// Longest per-attempt timeout a background run may ask for.
    #[serde(with = "duration")]
    pub background_attempt_timeout_cap: Duration,
    /// Most live runs sharing a `concurrency_key` in flight at once (none: unlimited).
    pub live_key_cap: Option<u32>,
    /// Most background runs sharing a `concurrency_key` in flight at once (none: unlimited).
    pub background_key_cap: Option<u32>,
    /// How often runs past their queue deadline are ended (timed out or dropped).
    #[serde(with = "duration")]
    pub sweep_interval: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            live_queue_timeout: Duration::from_secs(20),
            background_queue_timeout: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(60),
            attempt_timeout_floor: Duration::from_secs(5),
            adaptive_timeout_min_samples: 20,
            adaptive_timeout_factor: 2.0,
            adaptive_timeout_penalty: Duration::from_millis(50),
            live_attempt_timeout_cap: Duration::from_secs(120),
            background_attempt_timeout_cap: Duration::from_secs(300),
            live_key_cap: None,
            background_key_cap: Some(1),
            sweep_interval: Duration::from_millis(500),
        }
    }
}

/// Background admission control at `POST /enqueue` (live runs are never refused).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// Background work is refused (`live_backlog`) while more live runs than this are due
    /// and waiting for the provider.
    pub live_backlog: u32,
    /// Background runs a session may enqueue per rolling hour and concurrency key
    /// (`quota`).
    pub session_hourly_quota: u32,
    /// Background work is refused (`provider_unhealthy`) while the provider's recent
    /// share of attempts that timed out is above this.
    pub timeout_rate_threshold: f64,
    /// Half-life of the decaying window the timeout share is measured over.
    #[serde(with = "duration")]
    pub timeout_rate_half_life: Duration,
    /// Attempts the window must hold before the timeout share is trusted.
    pub timeout_rate_min_samples: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            live_backlog: 0,
            session_hourly_quota: 100,
            timeout_rate_threshold: 0.25,
            timeout_rate_half_life: Duration::from_secs(60),
            timeout_rate_min_samples: 5,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest accepted request body in bytes.
    pub body_limit: usize,
    /// Longest a handler may take before the request fails with 503.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            body_limit: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// The model a `sim` provider reports when neither the run nor the config names one.
pub const SIM_DEFAULT_MODEL: &str = "sim-1";

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Openai,
    Anthropic,
    Sim,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The name clients put in `provider`.
    pub name: String,
    pub kind: ProviderKind,
    /// Endpoint root; defaults per kind.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The environment variable holding the API key (the key itself never is config).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Model used when a run names none.
    #[serde(default)]
    pub default_model: Option<String>,
    /// Requests per minute ceiling (none: unlimited).
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute ceiling (none: unlimited).
    #[serde(default)]
    pub tpm: Option<u32>,
    /// Most attempts in flight against this provider from one process.
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// Most live runs of this provider in flight at once, across every process (none: no
    /// cap beyond the others).
    #[serde(default)]
    pub live_max_in_flight: Option<u32>,
    /// Most background runs of this provider in flight at once, across every process.
    #[serde(default = "default_background_max_in_flight")]
    pub background_max_in_flight: u32,
    /// Background runs of this provider that may wait in the queue; beyond it, background
    /// enqueues are refused (`background_queue_full`).
    #[serde(default = "default_background_queue_max")]
    pub background_queue_max: u32,
    /// Longest wait for the TCP/TLS connection to the provider.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Longest silence while reading a response (between stream chunks, too).
    #[serde(default = "default_read_timeout", with = "duration")]
    pub read_timeout: Duration,
    /// `anthropic-version` header sent to `anthropic` providers.
    #[serde(default = "default_anthropic_version")]
    pub anthropic_version: String,
    #[serde(default)]
    pub limiter: LimiterConfig,
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Built-in simulator settings (kind `sim` only).
    #[serde(default)]
    pub sim: SimConfig,
}

fn default_background_max_in_flight() -> u32 {
    1
}

fn default_background_queue_max() -> u32 {
    100
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_read_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_anthropic_version() -> String {
    "2023-06-01".to_string()
}

/// How the adaptive rate limiter moves between its floor and the configured ceiling.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimiterConfig {
    /// A 429 multiplies the current rate by this factor (0 < f < 1).
    pub decrease_factor: f64,
    /// Each success adds this share of the configured rate back (additive increase).
    pub increase_step: f64,
    /// The rate never adapts below this share of the configured rate.
    pub min_share: f64,
    /// `x-ratelimit-remaining-*` below this share of the limit tightens the rate early.
    pub remaining_threshold: f64,
    /// Pause after a 429 that names no reset time.
    #[serde(with = "duration")]
    pub default_pause: Duration,
    /// With no `rpm` configured, attempts in flight start limited to this window, which
    /// grows by one per success (doubling per round trip) until the provider states its
    /// limit, refuses (a ceiling is learned) or the window reaches
    /// [`SLOW_START_END`](crate::limits::SLOW_START_END). 0 turns slow start off.
    pub slow_start_window: u32,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterConfig {
            decrease_factor: 0.5,
            increase_step: 0.02,
            min_share: 0.05,
            remaining_threshold: 0.1,
            default_pause: Duration::from_secs(1),
            slow_start_window: 8,
        }
    }
}

/// The per-provider circuit breaker.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures (5xx, timeouts, connection errors) that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before one probe is let through.
    #[serde(with = "duration")]
    pub open_interval: Duration,
    /// Random extra share of `open_interval` (0.2 = up to 20% longer), so replicas do
    /// not probe in lockstep.
    pub open_jitter: f64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            open_interval: Duration::from_secs(15),
            open_jitter: 0.2,
        }
    }
}

impl ProviderConfig {
    pub fn sim(name: &str) -> Self {
        ProviderConfig {
            name: name.to_string(),
            kind: ProviderKind::Sim,
            base_url: None,
            api_key_env: None,
            default_model: Some(SIM_DEFAULT_MODEL.to_string()),
            rpm: None,
            tpm: None,
            max_concurrency: None,
            live_max_in_flight: None,
            background_max_in_flight: default_background_max_in_flight(),
            background_queue_max: default_background_queue_max(),
            connect_timeout: default_connect_timeout(),
            read_timeout: default_read_timeout(),
            anthropic_version: default_anthropic_version(),
            limiter: LimiterConfig::default(),
            breaker: BreakerConfig::default(),
            sim: SimConfig::default(),
        }
    }
}

/// The built-in `sim` provider: latency uniformly in `latency ± latency_jitter`, and the
/// given shares of attempts answered as a server error, a rate limit, or never.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    #[serde(with = "duration")]
    pub latency: Duration,
    #[serde(with = "duration")]
    pub latency_jitter: Duration,
    /// Share of attempts that fail like a 500.
    pub error_rate: f64,
    /// Share of attempts refused like a 429.
    pub rate_limit_rate: f64,
    /// `retry-after` the simulated 429 asks for.
    #[serde(with = "duration")]
    pub rate_limit_retry_after: Duration,
    /// Share of attempts that never answer (they end by the attempt timeout).
    pub hang_rate: f64,
    /// Pause between streamed deltas (`stream: true` runs), after the latency.
    #[serde(with = "duration")]
    pub delta_interval: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            latency: Duration::from_millis(200),
            latency_jitter: Duration::from_millis(100),
            error_rate: 0.0,
            rate_limit_rate: 0.0,
            rate_limit_retry_after: Duration::from_secs(1),
            hang_rate: 0.0,
            delta_interval: Duration::ZERO,
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
        let mut database_url = None;
        let mut env: Vec<(String, String)> = env.into_iter().collect();
        env.sort();
        for (var, value) in env {
            if var == "DATABASE_URL" {
                database_url = Some(value);
                continue;
            }
            let Some(rest) = var.strip_prefix("SLUICE_") else {
                continue;
            };
            if RESERVED_ENV.contains(&var.as_str())
                || RESERVED_ENV_PREFIXES.iter().any(|p| var.starts_with(p))
            {
                continue;
            }
            apply_env(&mut root, &var, rest, &value)?;
        }
        if let Some(url) = database_url.filter(|u| !u.is_empty()) {
            let db = root
                .entry("database")
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(t) = db {
                t.insert("url".into(), toml::Value::String(url));
            }
        }
        let mut config: Config = serde_path_to_error::deserialize(toml::Value::Table(root))
            .map_err(|e| {
                let path = e.path().to_string();
                invalid(path, e.into_inner().to_string())
            })?;
        for p in &mut config.providers {
            if p.default_model.is_none() && p.kind == ProviderKind::Sim {
                p.default_model = Some(SIM_DEFAULT_MODEL.to_string());
            }
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.dispatch;
        if d.slots == 0 {
            return Err(invalid("dispatch.slots", "must be at least 1"));
        }
        if d.claim_batch == 0 || d.complete_batch == 0 || d.enqueue_batch == 0 {
            return Err(invalid(
                "dispatch",
                "claim_batch, complete_batch and enqueue_batch must be at least 1",
            ));
        }
        if d.heartbeat_interval >= d.lease {
            return Err(invalid(
                "dispatch.heartbeat_interval",
                format!(
                    "must be shorter than dispatch.lease ({}), or leases expire between heartbeats",
                    humantime::format_duration(d.lease)
                ),
            ));
        }
        for (name, v) in [
            ("dispatch.rescue_interval", d.rescue_interval),
            ("dispatch.idle_poll", d.idle_poll),
            ("dispatch.lease", d.lease),
        ] {
            if v.is_zero() {
                return Err(invalid(name, "must be longer than zero"));
            }
        }
        let r = &self.retry;
        if !(1..=50).contains(&r.max_attempts) {
            return Err(invalid("retry.max_attempts", "must be between 1 and 50"));
        }
        if r.backoff_base > r.backoff_cap {
            return Err(invalid(
                "retry.backoff_base",
                "must not be longer than retry.backoff_cap",
            ));
        }
        if self.queue.adaptive_timeout_factor.is_nan() || self.queue.adaptive_timeout_factor < 1.0 {
            return Err(invalid(
                "queue.adaptive_timeout_factor",
                "must be at least 1",
            ));
        }
        if self.queue.live_attempt_timeout_cap > self.queue.background_attempt_timeout_cap {
            return Err(invalid(
                "queue.live_attempt_timeout_cap",
                "must not be longer than queue.background_attempt_timeout_cap",
            ));
        }
        if self.queue.sweep_interval.is_zero() {
            return Err(invalid("queue.sweep_interval", "must be longer than zero"));
        }
        for (name, cap) in [
            ("queue.live_key_cap", self.queue.live_key_cap),
            ("queue.background_key_cap", self.queue.background_key_cap),
        ] {
            if cap == Some(0) {
                return Err(invalid(
                    name,
                    "must be at least 1 (leave it out for no cap)",
                ));
            }
        }
        if self.queue.attempt_timeout.is_zero() {
            return Err(invalid("queue.attempt_timeout", "must be longer than zero"));
        }
        let a = &self.admission;
        if !(a.timeout_rate_threshold > 0.0 && a.timeout_rate_threshold <= 1.0) {
            return Err(invalid(
                "admission.timeout_rate_threshold",
                "must be above 0 and at most 1",
            ));
        }
        if a.timeout_rate_half_life.is_zero() {
            return Err(invalid(
                "admission.timeout_rate_half_life",
                "must be longer than zero",
            ));
        }
        if self.http.body_limit < 1024 {
            return Err(invalid("http.body_limit", "must be at least 1024 bytes"));
        }
        if self.providers.is_empty() {
            return Err(invalid(
                "providers",
                "at least one [[providers]] entry is needed",
            ));
        }
        let mut seen = BTreeMap::new();
        for (i, p) in self.providers.iter().enumerate() {
            let at = format!("providers[{i}]");
            if p.name.is_empty()
                || !p
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                return Err(invalid(
                    format!("{at}.name"),
                    format!(
                        "{:?} is not a valid provider name (letters, digits, '-', '_', '.')",
                        p.name
                    ),
                ));
            }
            if seen.insert(p.name.clone(), i).is_some() {
                return Err(invalid(
                    format!("{at}.name"),
                    format!("provider {:?} is defined twice", p.name),
                ));
            }
            let s = &p.sim;
            for (field, rate) in [
                ("error_rate", s.error_rate),
                ("rate_limit_rate", s.rate_limit_rate),
                ("hang_rate", s.hang_rate),
            ] {
                if !(0.0..=1.0).contains(&rate) {
                    return Err(invalid(
                        format!("{at}.sim.{field}"),
                        "must be between 0 and 1",
                    ));
                }
            }
            if s.error_rate + s.rate_limit_rate + s.hang_rate > 1.0 {
                return Err(invalid(
                    format!("{at}.sim"),
                    "error_rate + rate_limit_rate + hang_rate must not exceed 1",
                ));
            }
            let l = &p.limiter;
            if !(l.decrease_factor > 0.0 && l.decrease_factor < 1.0) {
                return Err(invalid(
                    format!("{at}.limiter.decrease_factor"),
                    "must be between 0 and 1 (exclusive)",
                ));
            }
            for (field, v) in [
                ("increase_step", l.increase_step),
                ("min_share", l.min_share),
                ("remaining_threshold", l.remaining_threshold),
            ] {
                if !(v > 0.0 && v <= 1.0) {
                    return Err(invalid(
                        format!("{at}.limiter.{field}"),
                        "must be above 0 and at most 1",
                    ));
                }
            }
            if p.breaker.failure_threshold == 0 {
                return Err(invalid(
                    format!("{at}.breaker.failure_threshold"),
                    "must be at least 1",
                ));
            }
            if !(0.0..=1.0).contains(&p.breaker.open_jitter) {
                return Err(invalid(
                    format!("{at}.breaker.open_jitter"),
                    "must be between 0 and 1",
                ));
            }
            if matches!(p.kind, ProviderKind::Openai | ProviderKind::Anthropic)
                && p.api_key_env.as_deref().is_some_and(str::is_empty)
            {
                return Err(invalid(
                    format!("{at}.api_key_env"),
                    "must name an environment variable",
                ));
            }
            for (field, v) in [("rpm", p.rpm), ("tpm", p.tpm)] {
                if v == Some(0) {
                    return Err(invalid(
                        format!("{at}.{field}"),
                        "must be at least 1 (leave it out for no limit)",
                    ));
                }
            }
            if p.live_max_in_flight == Some(0) {
                return Err(invalid(
                    format!("{at}.live_max_in_flight"),
                    "must be at least 1 (leave it out for no cap)",
                ));
            }
            if let Some(0) = p.max_concurrency {
                return Err(invalid(
                    format!("{at}.max_concurrency"),
                    "must be at least 1 (leave it out for no cap)",
                ));
            }
        }
        Ok(())
    }

    pub fn provider(&self, name: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.name == name)
    }
}

/// Sets the key path named by an environment variable (`DISPATCH__SLOTS`) in the TOML tree.
fn apply_env(root: &mut toml::Table, var: &str, rest: &str, raw: &str) -> Result<(), ConfigError> {
    let env_err = |message: String| ConfigError::Env {
        var: var.to_string(),
        message,
    };
    let segments: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(env_err("empty key segment".into()));
    }
    let value = parse_env_value(raw);
    let mut table = root;
    let mut i = 0;
    while i < segments.len() - 1 {
        let key = &segments[i];
        if key == "providers" {
            // Providers are an array addressed by name: PROVIDERS__<NAME>__<KEY>.
            let name = segments
                .get(i + 1)
                .ok_or_else(|| env_err("expected SLUICE_PROVIDERS__<NAME>__<KEY>".into()))?;
            if i + 2 >= segments.len() {
                return Err(env_err("expected SLUICE_PROVIDERS__<NAME>__<KEY>".into()));
            }
            let providers = table
                .entry("providers")
                .or_insert_with(|| toml::Value::Array(Vec::new()));
            let toml::Value::Array(list) = providers else {
                return Err(env_err("`providers` is not an array".into()));
            };
            let found = list.iter_mut().find_map(|p| match p {
                toml::Value::Table(t)
                    if t.get("name")
                        .and_then(|n| n.as_str())
                        .map(str::to_ascii_lowercase)
                        == Some(name.clone()) =>
                {
                    Some(t)
                }
                _ => None,
            });
            let Some(provider) = found else {
                return Err(env_err(format!(
                    "no provider named {name:?} in the config file"
                )));
            };
            table = provider;
            i += 2;
            continue;
        }
        let next = table
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(t) = next else {
            return Err(env_err(format!("`{key}` is not a table")));
        };
        table = t;
        i += 1;
    }
    table.insert(segments[segments.len() - 1].clone(), value);
    Ok(())
}

/// An environment value is read as a TOML scalar when it is one (`40`, `true`, `0.5`),
/// otherwise as a string (`127.0.0.1:9000`, `300ms`).
fn parse_env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => match t.remove("v") {
            Some(
                v @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)),
            ) => v,
            _ => toml::Value::String(raw.to_string()),
        },
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Durations are written as `300ms`, `30s`, `5m`, `1h 30m`.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "expected a duration string with a unit, like \"300ms\", \"30s\" or \"5m\"",
            )
        })?;
        humantime::parse_duration(text.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({e}); write a number and a unit, like \"300ms\", \"30s\" or \"5m\""
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_and_env(
            text,
            Path::new("test.toml"),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn the_shipped_config_is_valid() {
        let text = include_str!("../config/sluice.toml");
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
    fn environment_overrides_nested_keys_and_providers() {
        let text = "[[providers]]\nname = \"sim\"\nkind = \"sim\"\n";
        let c = load(
            text,
            &[
                ("SLUICE_LISTEN", "0.0.0.0:9000"),
                ("SLUICE_DISPATCH__SLOTS", "7"),
                ("SLUICE_RETRY__BACKOFF_BASE", "1s"),
                ("SLUICE_PROVIDERS__SIM__SIM__ERROR_RATE", "0.25"),
                ("SLUICE_LOG_FORMAT", "json"),
                ("DATABASE_URL", "postgres://x@localhost/db"),
            ],
        )
        .unwrap();
        assert_eq!(c.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(c.dispatch.slots, 7);
        assert_eq!(c.retry.backoff_base, Duration::from_secs(1));
        assert_eq!(c.providers[0].sim.error_rate, 0.25);
        assert_eq!(c.database.url.as_deref(), Some("postgres://x@localhost/db"));
    }

    #[test]
    fn unknown_provider_kind_is_named() {
        let err = load("[[providers]]\nname = \"x\"\nkind = \"llama\"\n", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("providers[0].kind"), "{msg}");
        assert!(msg.contains("llama"), "{msg}");
    }

    #[test]
    fn bad_duration_is_named() {
        let err = load("[dispatch]\nlease = \"soon\"\n", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("dispatch.lease"), "{msg}");
        assert!(msg.contains("invalid duration"), "{msg}");
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

    #[test]
    fn env_for_a_missing_provider_is_refused() {
        let msg = load("", &[("SLUICE_PROVIDERS__NOPE__RPM", "3")])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("SLUICE_PROVIDERS__NOPE__RPM"), "{msg}");
    }

    #[test]
    fn inconsistent_values_are_refused() {
        let msg = load(
            "[retry]\nbackoff_base = \"1m\"\nbackoff_cap = \"1s\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("retry.backoff_base"), "{msg}");
        let msg = load("[dispatch]\nslots = 0\n", &[])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("dispatch.slots"), "{msg}");
        let dup = "[[providers]]\nname = \"a\"\nkind = \"sim\"\n[[providers]]\nname = \"a\"\nkind = \"sim\"\n";
        let msg = load(dup, &[]).unwrap_err().to_string();
        assert!(msg.contains("defined twice"), "{msg}");
    }
}
