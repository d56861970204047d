//! Sluice: a job-orchestration server for LLM workloads.
//!
//! Layout, in dependency order (each module only uses the ones above it):
//! - [`run`]: the pure domain: ids, classes, statuses and their legal transitions, the
//!   API's bounds, backoff.
//! - [`clock`]: the injected time source (the system clock, or a manual one in tests).
//! - [`config`]: the one `Config` struct, one file per section, its defaults, the
//!   `SLUICE_*` overlay and validation.
//! - [`limits`]: pure, clock-injected logic per provider: the adaptive rate limiter, the
//!   circuit breaker, the adaptive attempt timeout, the timeout share, token estimates.
//! - [`providers`]: the executor interface a provider implements, the providers, and
//!   their rate-limit headers.
//! - [`store`]: durable runs, attempts and events, one interface over PostgreSQL and
//!   SQLite, and the process's one LISTEN connection.
//! - [`metrics`]: Prometheus metric names, HELP texts and the recorder.
//! - [`dispatch`]: everything between a request and a finished run: submit (idempotency,
//!   admission, group-commit enqueue, fast path), cancel, the producer (claims), workers
//!   (attempts), completer (batched result writes), leases, sweeper, wake-ups.
//! - [`api`]: the HTTP surface (axum); handlers parse and render, never orchestrate or
//!   write SQL.
//! - [`app`]: wiring, startup and graceful shutdown.
//! - [`operator`]: commands that work on the database directly (`sluice dlq …`).
//! - [`telemetry`]: logging set-up (used by `main` only).

pub mod api;
pub mod app;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod limits;
pub mod metrics;
pub mod operator;
pub mod providers;
pub mod run;
pub mod store;
pub mod telemetry;
