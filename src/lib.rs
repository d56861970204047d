//! Sluice: a job-orchestration server for LLM workloads.
//!
//! Layout, in dependency order (each module only uses the ones above it):
//! - [`run`]: the pure domain: ids, classes, statuses and their legal transitions, backoff.
//! - [`clock`]: the injected time source.
//! - [`config`]: the one `Config` struct, its defaults, env overrides and validation.
//! - [`store`]: durable runs and attempts, one interface over PostgreSQL and SQLite.
//! - [`providers`]: the executor interface a provider implements, and the providers.
//! - [`limits`]: the per-provider adaptive rate limiter and circuit breaker (pure logic).
//! - [`dispatch`]: the worker pool: producer (claims), workers (attempts), completer
//!   (batched result writes), heartbeater (leases), rescuer (expired leases).
//! - [`api`]: the HTTP surface (axum); handlers call the store and dispatcher, never SQL.
//! - [`app`]: wiring, startup and graceful shutdown.
//! - [`metrics`]: Prometheus metric names, HELP texts and the recorder.
//! - [`telemetry`]: logging set-up.

pub mod api;
pub mod app;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod limits;
pub mod metrics;
pub mod providers;
pub mod run;
pub mod store;
pub mod telemetry;
