//! Test support shared by every test of the suite: PostgreSQL test databases ([`pg`]),
//! store fixtures ([`store`]), one [`TestServer`] started in this process or as the
//! `sluice` binary ([`server`]), run calls over HTTP ([`runs`]), `/metrics` series ([`metrics`]), an SSE reader
//! ([`sse`]) and the Python scripts' runner ([`python`]). PostgreSQL tests fail loudly when no server is configured: they never skip.

pub mod metrics;
pub mod pg;
pub mod python;
pub mod runs;
pub mod server;
pub mod sse;
pub mod store;

pub use metrics::{scrape, series_value};
pub use pg::fresh_pg_database;
pub use python::{run_script, screenshot_dir};
pub use runs::{enqueue, get_run, http, read_health, wait_run};
pub use server::{Launch, TestServer};
pub use sse::SseReader;
pub use store::{ms, new_run, pg_store, sqlite_store, t0};
