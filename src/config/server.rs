//! The process's own resources: where it listens, `[database]` (which store and how many
//! connections) and `[http]` (request size and time limits).

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, duration, invalid};

/// The HTTP listen address when neither the file nor `SLUICE_LISTEN` names one: loopback
/// only, so a server started by hand is not reachable from the network by accident.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 8080));

/// The smallest `http.body_limit` accepted: a smaller limit would refuse even a short chat
/// request, so it can only be a mistake (a unit read as kilobytes, say).
const MIN_BODY_LIMIT: usize = 1024;

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
pub struct HttpConfig {
    /// Largest accepted request body in bytes.
    pub body_limit: usize,
    /// Longest a handler may take before the request fails with 503.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// Other origins' pages allowed to call the API from a browser.
    pub cors: super::CorsConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            body_limit: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            cors: super::CorsConfig::default(),
        }
    }
}

impl HttpConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.body_limit < MIN_BODY_LIMIT {
            return Err(invalid(
                "http.body_limit",
                format!("must be at least {MIN_BODY_LIMIT} bytes"),
            ));
        }
        Ok(())
    }
}
