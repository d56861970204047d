//! Bearer tokens as the server keeps them: only their SHA-256 digests, resolved once at
//! startup from `token_sha256` or from the environment variable `token_env` names, and
//! compared in constant time. The tokens themselves are read, hashed and forgotten here;
//! nothing else in the server ever holds one.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Config, ConfigError, invalid};

/// Bytes of a SHA-256 digest.
const DIGEST_LEN: usize = 32;

/// The SHA-256 of a bearer token. It has no `PartialEq`: tokens are only ever compared
/// through [`TokenDigest::matches`], in constant time, and its `Debug` shows nothing of it.
#[derive(Clone, Copy)]
pub struct TokenDigest([u8; DIGEST_LEN]);

impl TokenDigest {
    /// The digest of a presented token.
    pub fn of(token: &[u8]) -> TokenDigest {
        TokenDigest(Sha256::digest(token).into())
    }

    /// The digest written as 64 hex digits (either case); `None` for anything else.
    pub fn from_hex(hex: &str) -> Option<TokenDigest> {
        if hex.len() != DIGEST_LEN * 2 {
            return None;
        }
        let mut out = [0u8; DIGEST_LEN];
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let digit = |b: u8| char::from(b).to_digit(16);
            out[i] = u8::try_from(digit(pair[0])? * 16 + digit(pair[1])?).ok()?;
        }
        Some(TokenDigest(out))
    }

    /// Whether both digests are the same, in time that does not depend on where they differ.
    pub fn matches(&self, other: &TokenDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest(…)")
    }
}

/// Resolves every tenant's token and the admin token. A tenant whose `token_env` variable
/// is missing or empty is an error naming the variable; a missing admin variable leaves
/// the operator routes closed (the server warns at start). Two tenants, or a tenant and
/// the admin, may not share a token.
pub(super) fn resolve(config: &mut Config, env: &[(String, String)]) -> Result<(), ConfigError> {
    let lookup = |var: &str| {
        env.iter()
            .find(|(k, _)| k == var)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    for (i, tenant) in config.tenants.iter_mut().enumerate() {
        tenant.token = match (&tenant.token_sha256, &tenant.token_env) {
            (Some(hex), _) => TokenDigest::from_hex(hex),
            (None, Some(var)) => match lookup(var) {
                Some(token) => Some(TokenDigest::of(token.as_bytes())),
                None => {
                    return Err(invalid(
                        format!("tenants[{i}].token_env"),
                        format!(
                            "environment variable {var} (the token of tenant `{}`) is not set or is empty",
                            tenant.name
                        ),
                    ));
                }
            },
            (None, None) => None,
        };
    }
    config.auth.admin_token =
        lookup(&config.auth.admin_token_env).map(|t| TokenDigest::of(t.as_bytes()));
    config.auth.stream_secret = match lookup(&config.auth.stream_token_secret_env) {
        Some(secret) if secret.len() < super::MIN_STREAM_SECRET_LEN => {
            return Err(invalid(
                "auth.stream_token_secret_env",
                format!(
                    "the secret in {} is shorter than {} bytes",
                    config.auth.stream_token_secret_env,
                    super::MIN_STREAM_SECRET_LEN
                ),
            ));
        }
        secret => secret.map(|s| super::StreamSecret(s.as_bytes().to_vec())),
    };
    let mut seen: Vec<(String, TokenDigest)> = Vec::new();
    if let Some(admin) = config.auth.admin_token {
        seen.push(("auth.admin_token_env".into(), admin));
    }
    for (i, tenant) in config.tenants.iter().enumerate() {
        let Some(token) = tenant.token else { continue };
        if let Some((other, _)) = seen.iter().find(|(_, d)| d.matches(&token)) {
            return Err(invalid(
                format!("tenants[{i}]"),
                format!("has the same token as {other}: every token must name one caller"),
            ));
        }
        seen.push((format!("tenants[{i}]"), token));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::load_for_test as load;
    use super::TokenDigest;

    /// SHA-256 of "foo".
    const FOO_HASH: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    #[test]
    fn digests_read_from_hex_match_the_token() {
        let from_hex = TokenDigest::from_hex(FOO_HASH).unwrap();
        assert!(from_hex.matches(&TokenDigest::of(b"foo")));
        let upper = TokenDigest::from_hex(&FOO_HASH.to_uppercase()).unwrap();
        assert!(upper.matches(&from_hex));
        assert!(!from_hex.matches(&TokenDigest::of(b"bar")));
        assert!(TokenDigest::from_hex("zz").is_none());
        assert!(TokenDigest::from_hex(&FOO_HASH.replace('2', "g")).is_none());
        assert_eq!(format!("{from_hex:?}"), "TokenDigest(…)");
    }

    #[test]
    fn token_env_is_read_from_the_environment() {
        let text = "[[tenants]]\nname = \"team-a\"\ntoken_env = \"TEAM_A_TOKEN\"\n";
        let c = load(
            text,
            &[("TEAM_A_TOKEN", "secret-a"), ("SLUICE_ADMIN_TOKEN", "root")],
        )
        .unwrap();
        let token = c.tenants[0].token.expect("resolved");
        assert!(token.matches(&TokenDigest::of(b"secret-a")));
        assert!(
            c.auth
                .admin_token
                .unwrap()
                .matches(&TokenDigest::of(b"root"))
        );
    }

    #[test]
    fn a_missing_or_empty_token_variable_is_named() {
        let text = "[[tenants]]\nname = \"team-a\"\ntoken_env = \"TEAM_A_TOKEN\"\n";
        for env in [&[][..], &[("TEAM_A_TOKEN", "")][..]] {
            let msg = load(text, env).unwrap_err().to_string();
            assert!(
                msg.contains("tenants[0].token_env") && msg.contains("TEAM_A_TOKEN"),
                "{msg}"
            );
            assert!(!msg.contains("secret"), "{msg}");
        }
    }

    #[test]
    fn no_admin_variable_leaves_operator_routes_closed() {
        let text = format!("[[tenants]]\nname = \"team-a\"\ntoken_sha256 = \"{FOO_HASH}\"\n");
        let c = load(&text, &[("SLUICE_ADMIN_TOKEN", "")]).unwrap();
        assert!(c.auth.admin_token.is_none());
    }

    #[test]
    fn a_token_shared_by_two_callers_is_refused() {
        let text = format!(
            "[[tenants]]\nname = \"team-a\"\ntoken_sha256 = \"{FOO_HASH}\"\n\
             [[tenants]]\nname = \"team-b\"\ntoken_env = \"TEAM_B_TOKEN\"\n"
        );
        let msg = load(&text, &[("TEAM_B_TOKEN", "foo")])
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("tenants[1]") && msg.contains("same token"),
            "{msg}"
        );
        let msg = load(
            &text,
            &[("TEAM_B_TOKEN", "b"), ("SLUICE_ADMIN_TOKEN", "foo")],
        )
        .unwrap_err()
        .to_string();
        assert!(msg.contains("auth.admin_token_env"), "{msg}");
    }

    #[test]
    fn custom_token_variables_under_the_prefix_are_not_config_keys() {
        let text = "[auth]\nadmin_token_env = \"SLUICE_OPS_TOKEN\"\n\
                    [[tenants]]\nname = \"team-a\"\ntoken_env = \"SLUICE_TEAM_A\"\n";
        let c = load(text, &[("SLUICE_TEAM_A", "a"), ("SLUICE_OPS_TOKEN", "ops")]).unwrap();
        assert!(c.auth.admin_token.is_some());
        assert!(c.tenants[0].token.is_some());
    }
}
