//! Sluice's integration tests, built as one test binary: every module below is a group of
//! tests (over real HTTP, real SQLite files, a real PostgreSQL, or the `sluice` binary as
//! a child process) and `common` is what they share. One binary means the shared code is
//! compiled, and a large binary linked, once instead of once per file.
//!
//! A file under `tests/` is only built when it is declared here (`autotests = false` in
//! Cargo.toml). Tests of different modules run side by side in this one process, so no
//! test may rely on state of the process being its own: each test gets its own server,
//! database and port, and the metrics recorder, which is process-wide, is read as
//! increases rather than absolute values.

mod common;

mod api;
mod batches;
mod breaker_open;
mod browser;
mod chaos;
mod dlq;
mod events_http;
mod fairness;
mod front_door;
mod limiter_styles;
mod listing;
mod live_first;
mod metrics_http;
mod openapi;
mod outage;
mod pg_claimers;
mod process;
mod provider_e2e;
mod provider_retry;
mod providers_http;
mod secrets;
mod slow_provider;
mod store_conformance;
mod tenants;
mod tool_calls;
mod ui;
