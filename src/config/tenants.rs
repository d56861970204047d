//! Who may use the server: `[[tenants]]` (a team, its bearer token and its limits),
//! `[auth]` (the admin token and which routes stay open) and `[[prices]]` (what a model's
//! tokens cost, for spend budgets).
//!
//! A token never appears in the file: a tenant gives either the SHA-256 of its token (hex)
//! or the name of the environment variable holding it. Without any `[[tenants]]` the server
//! runs in open mode, as a single team.

use serde::Deserialize;

use super::tokens::TokenDigest;
use super::{ConfigError, invalid};

/// Weights are relative shares of the claim; the bound keeps a share from rounding to zero
/// beside another's.
pub const MAX_TENANT_WEIGHT: u32 = 1000;
/// The environment variable holding the admin token, unless `[auth] admin_token_env` says.
pub const DEFAULT_ADMIN_TOKEN_ENV: &str = "SLUICE_ADMIN_TOKEN";
/// Hex digits of a SHA-256 digest.
const SHA256_HEX_LEN: usize = 64;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant's name, stored on its runs and shown in metrics.
    pub name: String,
    /// Lower-case or upper-case hex SHA-256 of the bearer token.
    #[serde(default)]
    pub token_sha256: Option<String>,
    /// The environment variable holding the bearer token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Share of the claim while several tenants have work waiting (default 1).
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Most runs of this tenant in flight at once, across every process (none: unlimited).
    #[serde(default)]
    pub max_in_flight: Option<u32>,
    /// Runs per second this tenant may enqueue, refilled continuously (none: unlimited).
    #[serde(default)]
    pub enqueue_rate: Option<f64>,
    /// Runs that may be enqueued at once above the rate (default: one second of rate).
    #[serde(default)]
    pub enqueue_burst: Option<u32>,
    /// Prompt plus completion tokens per UTC day (none: unlimited).
    #[serde(default)]
    pub daily_tokens: Option<u64>,
    /// Spend per UTC day, in the currency of `[[prices]]` (none: unlimited).
    #[serde(default)]
    pub daily_spend: Option<f64>,
    /// The token's digest, from `token_sha256` or read from `token_env` at load.
    #[serde(skip)]
    pub token: Option<TokenDigest>,
}

impl TenantConfig {
    /// Runs that may be enqueued at once: `enqueue_burst`, else one second of the rate (at
    /// least one run). `None` when the tenant has no enqueue rate.
    pub fn enqueue_capacity(&self) -> Option<f64> {
        let rate = self.enqueue_rate?;
        Some(self.enqueue_burst.map_or(rate.max(1.0), f64::from))
    }
}

fn default_weight() -> u32 {
    1
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The environment variable holding the admin token, which opens the operator routes.
    pub admin_token_env: String,
    /// Whether `GET /metrics` answers without a token when tenants are configured.
    pub metrics_open: bool,
    /// The admin token's digest, read from `admin_token_env` at load; none closes the
    /// operator routes.
    #[serde(skip)]
    pub admin_token: Option<TokenDigest>,
    /// The environment variable holding the secret stream tokens are signed with.
    pub stream_token_secret_env: String,
    /// How long a stream token is accepted after it is issued.
    #[serde(with = "super::duration")]
    pub stream_token_ttl: std::time::Duration,
    /// The stream token secret, read from `stream_token_secret_env` at load; none turns
    /// stream tokens off.
    #[serde(skip)]
    pub stream_secret: Option<StreamSecret>,
}

/// The secret stream tokens are signed with. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct StreamSecret(pub Vec<u8>);

impl std::fmt::Debug for StreamSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamSecret(…)")
    }
}

/// The environment variable holding the stream token secret, unless `[auth]` says.
pub const DEFAULT_STREAM_SECRET_ENV: &str = "SLUICE_STREAM_TOKEN_SECRET";
/// How long a stream token lives unless `[auth] stream_token_ttl` says.
const DEFAULT_STREAM_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(600);
/// The shortest stream token secret accepted, in bytes: a guessable one would let anyone
/// forge tokens.
pub const MIN_STREAM_SECRET_LEN: usize = 32;

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            admin_token_env: DEFAULT_ADMIN_TOKEN_ENV.to_string(),
            metrics_open: true,
            admin_token: None,
            stream_token_secret_env: DEFAULT_STREAM_SECRET_ENV.to_string(),
            stream_token_ttl: DEFAULT_STREAM_TOKEN_TTL,
            stream_secret: None,
        }
    }
}

/// What a model's tokens cost, per million, for spend budgets.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// The model name as runs report it.
    pub model: String,
    /// Only this provider's model of that name (none: any provider).
    #[serde(default)]
    pub provider: Option<String>,
    pub input_per_million: f64,
    pub output_per_million: f64,
}

impl AuthConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_env_name("auth.admin_token_env", &self.admin_token_env)?;
        check_env_name(
            "auth.stream_token_secret_env",
            &self.stream_token_secret_env,
        )?;
        if self.stream_token_ttl.is_zero() {
            return Err(invalid("auth.stream_token_ttl", "must be longer than zero"));
        }
        Ok(())
    }
}

/// Checks every tenant, their names and tokens against each other, and the price table.
pub(super) fn validate_all(
    tenants: &[TenantConfig],
    prices: &[PriceConfig],
) -> Result<(), ConfigError> {
    let mut names = std::collections::BTreeSet::new();
    let mut hashes = std::collections::BTreeSet::new();
    for (i, t) in tenants.iter().enumerate() {
        let at = |key: &str| format!("tenants[{i}].{key}");
        t.validate(&at)?;
        if !names.insert(t.name.as_str()) {
            return Err(invalid(
                at("name"),
                format!("duplicate tenant `{}`", t.name),
            ));
        }
        if let Some(h) = &t.token_sha256
            && !hashes.insert(h.to_ascii_lowercase())
        {
            return Err(invalid(
                at("token_sha256"),
                "two tenants have the same token hash",
            ));
        }
    }
    let mut models = std::collections::BTreeSet::new();
    for (i, p) in prices.iter().enumerate() {
        let at = |key: &str| format!("prices[{i}].{key}");
        if p.model.trim().is_empty() {
            return Err(invalid(at("model"), "must not be empty"));
        }
        for (key, v) in [
            ("input_per_million", p.input_per_million),
            ("output_per_million", p.output_per_million),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(invalid(at(key), "must be a number of at least 0"));
            }
        }
        if !models.insert((p.provider.as_deref(), p.model.as_str())) {
            return Err(invalid(
                at("model"),
                format!("duplicate price for `{}`", p.model),
            ));
        }
    }
    Ok(())
}

impl TenantConfig {
    fn validate(&self, at: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= crate::run::MAX_NAME_LEN
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(invalid(
                at("name"),
                format!(
                    "must be 1 to {} characters of letters, digits, `-`, `_` or `.`",
                    crate::run::MAX_NAME_LEN
                ),
            ));
        }
        match (&self.token_sha256, &self.token_env) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(invalid(
                    at("token_sha256"),
                    "give exactly one of token_sha256 and token_env",
                ));
            }
            (Some(h), None) => {
                if h.len() != SHA256_HEX_LEN || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(invalid(
                        at("token_sha256"),
                        "must be the 64 hex digits of the token's SHA-256",
                    ));
                }
            }
            (None, Some(var)) => check_env_name(&at("token_env"), var)?,
        }
        if self.weight == 0 || self.weight > MAX_TENANT_WEIGHT {
            return Err(invalid(
                at("weight"),
                format!("must be 1 to {MAX_TENANT_WEIGHT}"),
            ));
        }
        if self.max_in_flight == Some(0) {
            return Err(invalid(at("max_in_flight"), "must be at least 1"));
        }
        if let Some(rate) = self.enqueue_rate
            && (!rate.is_finite() || rate <= 0.0)
        {
            return Err(invalid(at("enqueue_rate"), "must be a number above 0"));
        }
        match (self.enqueue_burst, self.enqueue_rate) {
            (Some(0), _) => return Err(invalid(at("enqueue_burst"), "must be at least 1")),
            (Some(_), None) => {
                return Err(invalid(
                    at("enqueue_burst"),
                    "needs enqueue_rate: a burst is room above a rate",
                ));
            }
            _ => {}
        }
        if self.daily_tokens == Some(0) {
            return Err(invalid(at("daily_tokens"), "must be at least 1"));
        }
        if let Some(spend) = self.daily_spend
            && (!spend.is_finite() || spend <= 0.0)
        {
            return Err(invalid(at("daily_spend"), "must be a number above 0"));
        }
        Ok(())
    }
}

/// An environment variable's name: what a shell could export.
fn check_env_name(path: &str, var: &str) -> Result<(), ConfigError> {
    let ok = var
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            path,
            format!("`{var}` is not an environment variable name"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::load_for_test as load;

    const HASH: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    fn tenant(body: &str) -> String {
        format!("[[tenants]]\nname = \"team-a\"\n{body}\n")
    }

    #[test]
    fn a_tenant_with_a_hash_and_limits_loads() {
        let c = load(
            &tenant(&format!(
                "token_sha256 = \"{HASH}\"\nweight = 3\nmax_in_flight = 10\n\
                 enqueue_rate = 5.0\nenqueue_burst = 20\ndaily_tokens = 1000000\n\
                 daily_spend = 12.5"
            )),
            &[],
        )
        .unwrap();
        let t = &c.tenants[0];
        assert_eq!((t.weight, t.max_in_flight), (3, Some(10)));
        assert_eq!(t.daily_tokens, Some(1_000_000));
        assert_eq!(c.auth.admin_token_env, "SLUICE_ADMIN_TOKEN");
        assert!(c.auth.metrics_open);
    }

    #[test]
    fn no_tenants_is_open_mode() {
        assert!(load("", &[]).unwrap().tenants.is_empty());
    }

    #[test]
    fn a_tenant_needs_exactly_one_token_source() {
        for body in [
            "",
            &format!("token_sha256 = \"{HASH}\"\ntoken_env = \"TOKEN_A\""),
        ] {
            let msg = load(&tenant(body), &[]).unwrap_err().to_string();
            assert!(msg.contains("tenants[0].token_sha256"), "{msg}");
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        for (body, key) in [
            ("token_sha256 = \"abc\"", "token_sha256"),
            ("token_env = \"1BAD NAME\"", "token_env"),
            ("token_env = \"T\"\nweight = 0", "weight"),
            ("token_env = \"T\"\nweight = 1001", "weight"),
            ("token_env = \"T\"\nmax_in_flight = 0", "max_in_flight"),
            ("token_env = \"T\"\nenqueue_rate = -1.0", "enqueue_rate"),
            ("token_env = \"T\"\nenqueue_burst = 5", "enqueue_burst"),
            ("token_env = \"T\"\ndaily_tokens = 0", "daily_tokens"),
            ("token_env = \"T\"\ndaily_spend = 0.0", "daily_spend"),
        ] {
            let msg = load(&tenant(body), &[]).unwrap_err().to_string();
            assert!(msg.contains(&format!("tenants[0].{key}")), "{body}: {msg}");
        }
    }

    #[test]
    fn names_and_hashes_are_unique() {
        let two = format!(
            "{}{}",
            tenant("token_env = \"A\""),
            tenant("token_env = \"B\"")
        );
        let msg = load(&two, &[]).unwrap_err().to_string();
        assert!(msg.contains("duplicate tenant"), "{msg}");
        let same_hash = format!(
            "{}[[tenants]]\nname = \"team-b\"\ntoken_sha256 = \"{}\"\n",
            tenant(&format!("token_sha256 = \"{HASH}\"")),
            HASH.to_uppercase()
        );
        let msg = load(&same_hash, &[]).unwrap_err().to_string();
        assert!(msg.contains("same token hash"), "{msg}");
    }

    #[test]
    fn prices_are_checked() {
        let ok = "[[prices]]\nmodel = \"gpt-4o-mini\"\ninput_per_million = 0.15\n\
                  output_per_million = 0.6\n";
        assert_eq!(load(ok, &[]).unwrap().prices.len(), 1);
        let msg = load(&ok.replace("0.15", "-1.0"), &[])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("prices[0].input_per_million"), "{msg}");
        let msg = load(&format!("{ok}{ok}"), &[]).unwrap_err().to_string();
        assert!(msg.contains("duplicate price"), "{msg}");
    }
}
