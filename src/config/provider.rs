//! `[[providers]]` entries: a provider's name and kind, where and how it is reached, its
//! rate and in-flight caps, and the defaults its kind implies. Each entry's nested
//! sections live in `limits.rs` and `sim.rs`.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;

use super::{BreakerConfig, ConfigError, LimiterConfig, RetryConfig, SimConfig, duration, invalid};

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
    /// Longest silence while reading a response (waiting for the answer, and between
    /// stream chunks). Never shorter than the longest attempt timeout
    /// (`queue.background_attempt_timeout_cap`): the attempt timeout is what ends a slow
    /// attempt, and a shorter read timeout would cut a non-streamed attempt short of it.
    /// Left out, it is that cap.
    #[serde(
        default = "read_timeout_from_cap",
        deserialize_with = "deserialize_read_timeout"
    )]
    pub read_timeout: Duration,
    /// Attempts a run of this provider gets when the request does not say; `[retry]`'s
    /// when left out.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// First backoff window of this provider's retries; `[retry]`'s when left out.
    #[serde(default, with = "duration::optional")]
    pub backoff_base: Option<Duration>,
    /// Longest backoff window of this provider's retries; `[retry]`'s when left out.
    #[serde(default, with = "duration::optional")]
    pub backoff_cap: Option<Duration>,
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

// Name and kind have no default, so the struct cannot use `#[serde(default)]` and a
// `Default` impl like the sections do: each defaulted key has its one fn instead, used by
// serde and by `ProviderConfig::sim` alike.

fn default_background_max_in_flight() -> u32 {
    1
}

fn default_background_queue_max() -> u32 {
    100
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

/// What `read_timeout` holds until loading sets it to the longest attempt timeout: an
/// explicit value is never zero (refused by [`deserialize_read_timeout`]).
const READ_TIMEOUT_FROM_CAP: Duration = Duration::ZERO;

fn read_timeout_from_cap() -> Duration {
    READ_TIMEOUT_FROM_CAP
}

fn deserialize_read_timeout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let read = duration::deserialize(d)?;
    if read.is_zero() {
        return Err(serde::de::Error::custom(
            "must be longer than zero (leave it out to follow queue.background_attempt_timeout_cap)",
        ));
    }
    Ok(read)
}

fn default_anthropic_version() -> String {
    "2023-06-01".to_string()
}

impl ProviderConfig {
    /// A `sim` provider called `name` with every default, as an empty entry of that kind
    /// in the file would give.
    pub fn sim(name: &str) -> Self {
        let mut sim = ProviderConfig {
            name: name.to_string(),
            kind: ProviderKind::Sim,
            base_url: None,
            api_key_env: None,
            default_model: None,
            rpm: None,
            tpm: None,
            max_concurrency: None,
            live_max_in_flight: None,
            background_max_in_flight: default_background_max_in_flight(),
            background_queue_max: default_background_queue_max(),
            connect_timeout: default_connect_timeout(),
            read_timeout: super::QueueConfig::default().background_attempt_timeout_cap,
            max_attempts: None,
            backoff_base: None,
            backoff_cap: None,
            anthropic_version: default_anthropic_version(),
            limiter: LimiterConfig::default(),
            breaker: BreakerConfig::default(),
            sim: SimConfig::default(),
        };
        sim.apply_kind_defaults();
        sim
    }

    /// Fills in what the kind implies and the entry left out: a `sim` provider answers as
    /// [`SIM_DEFAULT_MODEL`], so it works with no model named anywhere.
    pub(super) fn apply_kind_defaults(&mut self) {
        if self.default_model.is_none() && self.kind == ProviderKind::Sim {
            self.default_model = Some(SIM_DEFAULT_MODEL.to_string());
        }
    }

    /// This provider's retry settings: its own where it has them, `defaults` (`[retry]`)
    /// for the rest.
    pub fn retry(&self, defaults: &RetryConfig) -> RetryConfig {
        RetryConfig {
            max_attempts: self.max_attempts.unwrap_or(defaults.max_attempts),
            backoff_base: self.backoff_base.unwrap_or(defaults.backoff_base),
            backoff_cap: self.backoff_cap.unwrap_or(defaults.backoff_cap),
            provider_delay_cap: defaults.provider_delay_cap,
        }
    }

    /// Sets a `read_timeout` the entry left out to `longest_attempt`, the longest timeout
    /// an attempt may run under.
    pub(super) fn follow_attempt_timeouts(&mut self, longest_attempt: Duration) {
        if self.read_timeout == READ_TIMEOUT_FROM_CAP {
            self.read_timeout = longest_attempt;
        }
    }

    /// Checks one entry; `at` is its key path, `providers[i]`, `longest_attempt` the
    /// longest timeout an attempt may run under and `retry` the `[retry]` defaults.
    fn validate(
        &self,
        at: &str,
        longest_attempt: Duration,
        retry: &RetryConfig,
    ) -> Result<(), ConfigError> {
        self.retry(retry).validate_at(at)?;
        if self.read_timeout < longest_attempt {
            return Err(invalid(
                format!("{at}.read_timeout"),
                format!(
                    "must be at least queue.background_attempt_timeout_cap ({}), or it would cut \
                     an attempt short of its own timeout; leave it out to follow the cap",
                    humantime::format_duration(longest_attempt)
                ),
            ));
        }
        self.sim.validate(at)?;
        self.limiter.validate(at)?;
        self.breaker.validate(at)?;
        if matches!(self.kind, ProviderKind::Openai | ProviderKind::Anthropic)
            && self.api_key_env.as_deref().is_some_and(str::is_empty)
        {
            return Err(invalid(
                format!("{at}.api_key_env"),
                "must name an environment variable",
            ));
        }
        for (field, v) in [("rpm", self.rpm), ("tpm", self.tpm)] {
            if v == Some(0) {
                return Err(invalid(
                    format!("{at}.{field}"),
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
        }
        for (field, v) in [
            ("live_max_in_flight", self.live_max_in_flight),
            ("max_concurrency", self.max_concurrency),
        ] {
            if v == Some(0) {
                return Err(invalid(
                    format!("{at}.{field}"),
                    "must be at least 1 (leave it out for no cap)",
                ));
            }
        }
        Ok(())
    }
}

/// A name clients can write in a request and in an environment variable's key path.
fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

/// Checks the `[[providers]]` list: at least one, each named validly and once, each
/// entry's own values; `longest_attempt` is the longest timeout an attempt may run under
/// and `retry` the `[retry]` defaults.
pub(super) fn validate_all(
    providers: &[ProviderConfig],
    longest_attempt: Duration,
    retry: &RetryConfig,
) -> Result<(), ConfigError> {
    if providers.is_empty() {
        return Err(invalid(
            "providers",
            "at least one [[providers]] entry is needed",
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, p) in providers.iter().enumerate() {
        let at = format!("providers[{i}]");
        if !is_valid_name(&p.name) {
            return Err(invalid(
                format!("{at}.name"),
                format!(
                    "{:?} is not a valid provider name (letters, digits, '-', '_', '.')",
                    p.name
                ),
            ));
        }
        if !seen.insert(p.name.as_str()) {
            return Err(invalid(
                format!("{at}.name"),
                format!("provider {:?} is defined twice", p.name),
            ));
        }
        p.validate(&at, longest_attempt, retry)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::load_for_test as load;

    const OPENAI: &str = "[[providers]]\nname = \"o\"\nkind = \"openai\"\n";

    #[test]
    fn a_provider_takes_retry_settings_of_its_own_or_those_of_retry() {
        let text = format!(
            "[retry]\nmax_attempts = 4\n{OPENAI}max_attempts = 2\nbackoff_base = \"10ms\"\n\
             [[providers]]\nname = \"s\"\nkind = \"sim\"\n"
        );
        let c = load(&text, &[]).unwrap();
        let own = c.providers[0].retry(&c.retry);
        assert_eq!(own.max_attempts, 2);
        assert_eq!(own.backoff_base, Duration::from_millis(10));
        assert_eq!(own.backoff_cap, c.retry.backoff_cap, "left out: [retry]'s");
        assert_eq!(c.providers[1].retry(&c.retry).max_attempts, 4);
    }

    #[test]
    fn bad_provider_retry_settings_are_named() {
        for (line, key) in [
            ("max_attempts = 0", "providers[0].max_attempts"),
            ("max_attempts = 51", "providers[0].max_attempts"),
            ("backoff_base = \"1m\"", "providers[0].backoff_base"),
            ("backoff_cap = \"soon\"", "providers[0].backoff_cap"),
        ] {
            let msg = load(&format!("{OPENAI}{line}\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(msg.contains(key), "{line}: {msg}");
        }
    }

    #[test]
    fn a_read_timeout_left_out_follows_the_longest_attempt_timeout() {
        let c = load(OPENAI, &[]).unwrap();
        assert_eq!(c.providers[0].read_timeout, Duration::from_secs(300));
        let c = load(
            &format!("[queue]\nbackground_attempt_timeout_cap = \"10m\"\n{OPENAI}"),
            &[],
        )
        .unwrap();
        assert_eq!(c.providers[0].read_timeout, Duration::from_secs(600));
        let c = load(&format!("{OPENAI}read_timeout = \"6m\"\n"), &[]).unwrap();
        assert_eq!(c.providers[0].read_timeout, Duration::from_secs(360));
    }

    #[test]
    fn a_read_timeout_that_could_cut_an_attempt_short_is_refused() {
        for value in ["60s", "0s"] {
            let msg = load(&format!("{OPENAI}read_timeout = \"{value}\"\n"), &[])
                .unwrap_err()
                .to_string();
            assert!(msg.contains("providers[0].read_timeout"), "{msg}");
        }
        let msg = load(OPENAI, &[("SLUICE_PROVIDERS__O__READ_TIMEOUT", "2m")])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("read_timeout"), "{msg}");
        assert!(msg.contains("background_attempt_timeout_cap"), "{msg}");
    }

    #[test]
    fn unknown_provider_kind_is_named() {
        let err = load("[[providers]]\nname = \"x\"\nkind = \"llama\"\n", &[]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("providers[0].kind"), "{msg}");
        assert!(msg.contains("llama"), "{msg}");
    }

    #[test]
    fn a_provider_defined_twice_is_refused() {
        let dup = "[[providers]]\nname = \"a\"\nkind = \"sim\"\n[[providers]]\nname = \"a\"\nkind = \"sim\"\n";
        let msg = load(dup, &[]).unwrap_err().to_string();
        assert!(msg.contains("defined twice"), "{msg}");
    }
}
