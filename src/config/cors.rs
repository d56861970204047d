//! `[http.cors]`: which other origins' pages may call the API from a browser (a frontend
//! following its runs' event streams, say). Exact origins only; `*` only in open mode,
//! where no token guards anything anyway.

use serde::Deserialize;

use super::{ConfigError, invalid};

/// The one wildcard origin.
pub const ANY_ORIGIN: &str = "*";

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins (`scheme://host[:port]`, exactly as browsers send them) allowed to call the
    /// API; empty: no CORS headers at all.
    pub allowed_origins: Vec<String>,
}

impl CorsConfig {
    /// Whether every origin is allowed.
    pub fn any(&self) -> bool {
        self.allowed_origins.iter().any(|o| o == ANY_ORIGIN)
    }

    pub(super) fn validate(&self, tenants_configured: bool) -> Result<(), ConfigError> {
        for (i, origin) in self.allowed_origins.iter().enumerate() {
            let at = format!("http.cors.allowed_origins[{i}]");
            if origin == ANY_ORIGIN {
                if tenants_configured {
                    return Err(invalid(
                        at,
                        "`*` is allowed only in open mode; with tenants, list the origins",
                    ));
                }
                continue;
            }
            if !is_origin(origin) {
                return Err(invalid(
                    at,
                    format!(
                        "`{origin}` is not an origin: write scheme://host[:port], like https://app.example.com, with no path"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `http(s)://host[:port]` and nothing more: what a browser sends in `Origin`.
fn is_origin(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || p.chars().all(|c| c.is_ascii_digit()) => (h, Some(p)),
        _ => (rest, None),
    };
    matches!(scheme, "http" | "https")
        && !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'))
        && port.is_none_or(|p| !p.is_empty() && p.parse::<u16>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::super::load_for_test as load;

    #[test]
    fn origins_are_checked() {
        let c = load(
            "[http.cors]\nallowed_origins = [\"https://app.example.com\", \"http://127.0.0.1:8099\"]\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.http.cors.allowed_origins.len(), 2);
        assert!(
            load("[http.cors]\nallowed_origins = [\"*\"]\n", &[])
                .unwrap()
                .http
                .cors
                .any()
        );
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "ftp://x",
            "https://x:99999",
        ] {
            let msg = load(
                &format!("[http.cors]\nallowed_origins = [\"{bad}\"]\n"),
                &[],
            )
            .unwrap_err()
            .to_string();
            assert!(msg.contains("http.cors.allowed_origins[0]"), "{bad}: {msg}");
        }
    }

    #[test]
    fn any_origin_is_refused_with_tenants() {
        let text = "[http.cors]\nallowed_origins = [\"*\"]\n[[tenants]]\nname = \"a\"\n\
                    token_sha256 = \"2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae\"\n";
        let msg = load(text, &[]).unwrap_err().to_string();
        assert!(msg.contains("open mode"), "{msg}");
    }
}
