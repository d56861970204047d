//! The environment overlay: `SLUICE_…` variables set keys of the file's TOML tree before it
//! is read into [`Config`](super::Config), so the environment wins over the file and both
//! are checked by the same rules.
//!
//! A variable names a key path in capitals with `__` between levels: `SLUICE_LISTEN`,
//! `SLUICE_DISPATCH__SLOTS=40`, `SLUICE_RETRY__BACKOFF_BASE=500ms`. Providers are an array,
//! so they are addressed by name: `SLUICE_PROVIDERS__SIM__SIM__LATENCY=20ms`; tenants too:
//! `SLUICE_TENANTS__TEAM_A__DAILY_TOKENS=100000` (`-` and `.` in a name read as `_`).
//! `DATABASE_URL`, the variable every PostgreSQL tool knows, sets `database.url`. The
//! variables holding tokens (`SLUICE_ADMIN_TOKEN`, and any the file names in `token_env` or
//! `auth.admin_token_env`) are secrets, not keys, and are skipped.

use super::ConfigError;

/// Variables under the `SLUICE_` prefix that are not config keys.
const RESERVED_ENV: &[&str] = &[
    "SLUICE_CONFIG",
    "SLUICE_LOG_FORMAT",
    "SLUICE_LOG",
    super::DEFAULT_ADMIN_TOKEN_ENV,
    super::DEFAULT_STREAM_SECRET_ENV,
];
/// Config arrays whose entries are addressed by their `name` in a variable.
const NAMED_ARRAYS: &[&str] = &["providers", "tenants"];
/// Prefixes under `SLUICE_` that belong to the test and benchmark harnesses.
const RESERVED_ENV_PREFIXES: &[&str] = &["SLUICE_TEST_", "SLUICE_BENCH_"];

/// Sets in `root` every key that `env` names. Variables are applied in sorted order, so the
/// outcome does not depend on the order the process was given them in.
pub(super) fn overlay(
    root: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let mut database_url = None;
    let secrets = token_variables(root);
    let mut env: Vec<(String, String)> = env.into_iter().collect();
    env.sort();
    for (var, value) in env {
        if secrets.contains(&var) {
            continue;
        }
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
        apply_env(root, &var, rest, &value)?;
    }
    if let Some(url) = database_url.filter(|u| !u.is_empty()) {
        let db = root
            .entry("database")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = db {
            t.insert("url".into(), toml::Value::String(url));
        }
    }
    Ok(())
}

/// The variables the file names as holding tokens.
fn token_variables(root: &toml::Table) -> Vec<String> {
    let auth = root.get("auth");
    let admin = ["admin_token_env", "stream_token_secret_env"]
        .into_iter()
        .filter_map(|key| auth.and_then(|a| a.get(key)).and_then(|v| v.as_str()));
    let tenants = root
        .get("tenants")
        .and_then(|t| t.as_array())
        .into_iter()
        .flatten()
        .filter_map(|t| t.get("token_env").and_then(|v| v.as_str()));
    admin.into_iter().chain(tenants).map(String::from).collect()
}

/// How a name is spelt in a variable: lower case, with `-` and `.` as `_`.
fn env_spelling(name: &str) -> String {
    name.to_ascii_lowercase().replace(['-', '.'], "_")
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
        if NAMED_ARRAYS.contains(&key.as_str()) {
            // An array addressed by name: <ARRAY>__<NAME>__<KEY>.
            let upper = key.to_ascii_uppercase();
            let expected = || env_err(format!("expected SLUICE_{upper}__<NAME>__<KEY>"));
            let name = segments.get(i + 1).ok_or_else(expected)?;
            if i + 2 >= segments.len() {
                return Err(expected());
            }
            let entries = table
                .entry(key.clone())
                .or_insert_with(|| toml::Value::Array(Vec::new()));
            let toml::Value::Array(list) = entries else {
                return Err(env_err(format!("`{key}` is not an array")));
            };
            let found = list.iter_mut().find_map(|entry| match entry {
                toml::Value::Table(t)
                    if t.get("name").and_then(|n| n.as_str()).map(env_spelling)
                        == Some(name.clone()) =>
                {
                    Some(t)
                }
                _ => None,
            });
            let Some(entry) = found else {
                return Err(env_err(format!(
                    "no entry of `{key}` named {name:?} in the config file"
                )));
            };
            table = entry;
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::load_for_test as load;

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
    fn tenants_are_addressed_by_name() {
        let text = "[[tenants]]\nname = \"team-a.eu\"\ntoken_env = \"A\"\n";
        let c = load(
            text,
            &[
                ("A", "token"),
                ("SLUICE_TENANTS__TEAM_A_EU__DAILY_TOKENS", "500"),
                ("SLUICE_TENANTS__TEAM_A_EU__ENQUEUE_RATE", "2.5"),
            ],
        )
        .unwrap();
        assert_eq!(c.tenants[0].daily_tokens, Some(500));
        assert_eq!(c.tenants[0].enqueue_rate, Some(2.5));
        let msg = load(text, &[("A", "t"), ("SLUICE_TENANTS__NOPE__WEIGHT", "2")])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("SLUICE_TENANTS__NOPE__WEIGHT"), "{msg}");
    }

    #[test]
    fn env_for_a_missing_provider_is_refused() {
        let msg = load("", &[("SLUICE_PROVIDERS__NOPE__RPM", "3")])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("SLUICE_PROVIDERS__NOPE__RPM"), "{msg}");
    }
}
