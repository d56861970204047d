//! The scenarios, one module each, and what they share: the context every scenario runs in
//! and the start and stop of a server on its own fresh database. Each scenario starts its
//! own server, measures, stops the server and returns its figures as JSON.

mod batches;
mod drain;
mod fairness;
mod goodput;
mod idle;
mod latency;
mod listing;
mod live_first;
mod overhead;
mod steady;
mod styles;

use std::path::PathBuf;

use sqlx::postgres::PgPool;

use crate::db;
use crate::server::{Provider, Server, ServerConfig};

pub use batches::batch_submit;
pub use drain::drain;
pub use fairness::fairness;
pub use goodput::goodput;
pub use idle::idle_rss;
pub use latency::latency;
pub use listing::listing_page;
pub use live_first::live_first;
pub use overhead::overhead;
pub use steady::steady;
pub use styles::{RATE as STYLES_RATE, markdown as styles_markdown, replace_in_doc, styles};

/// What every scenario needs.
pub struct Ctx {
    pub bin: PathBuf,
    pub workdir: PathBuf,
    pub admin_url: String,
    pub admin: PgPool,
    pub http: reqwest::Client,
    pub quick: bool,
    /// The server settings shared by the scenarios (each may change the providers).
    pub base: ServerConfig,
    /// Requests in flight for bulk enqueues.
    pub concurrency: usize,
}

/// A queue deadline far beyond any scenario, so no run is timed out for waiting in a
/// deliberately built backlog.
pub const LONG_QUEUE_TIMEOUT_MS: u64 = 3_600_000;

fn rfc3339_us(us: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_micros(us)
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl Ctx {
    fn config(&self, providers: Vec<Provider>) -> ServerConfig {
        ServerConfig {
            providers,
            ..self.base.clone()
        }
    }

    async fn start(&self, name: &str, config: &ServerConfig) -> anyhow::Result<(Server, PgPool)> {
        let url = db::fresh_db(
            &self.admin,
            &self.admin_url,
            &format!("sluice_bench_{name}"),
        )
        .await?;
        let server =
            Server::start(&self.bin, &self.workdir, name, config, &url, &self.http).await?;
        let pool = db::connect(&url).await?;
        Ok((server, pool))
    }

    async fn finish(&self, name: &str, server: Server, pool: PgPool) -> anyhow::Result<usize> {
        let warnings = server.warnings();
        server.stop().await?;
        pool.close().await;
        db::drop_db(&self.admin, &format!("sluice_bench_{name}")).await;
        Ok(warnings)
    }
}

fn sim(latency_ms: u64) -> Vec<Provider> {
    vec![Provider::Sim {
        name: "sim".into(),
        latency_ms,
        extra: String::new(),
    }]
}
