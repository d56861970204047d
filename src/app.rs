//! Wiring: opens the store, starts the worker pool (with its enqueuer), serves HTTP until the
//! shutdown future resolves, then drains in order: HTTP first (no new work), then the
//! worker pool (in-flight attempts finish or are released), then the database.
//!
//! The server reads time only from the [`Clock`] it is given: `main` passes the system
//! clock, tests a [`crate::clock::ManualClock`].

#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::api::{AppState, router};
use crate::clock::Clock;
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::providers::Providers;
use crate::store::{OpenOptions, Store};

/// Opens the configured store and applies migrations.
pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let options = OpenOptions {
        max_connections: config.database.max_connections,
        acquire_timeout: config.database.acquire_timeout,
    };
    let url = config.database.url.as_deref();
    let store = Store::open(url, &config.database.sqlite_path, &options)
        .await
        .with_context(|| match url {
            Some(_) => "cannot open the PostgreSQL database named by DATABASE_URL".to_string(),
            None => format!(
                "cannot open the SQLite database {}",
                config.database.sqlite_path.display()
            ),
        })?;
    Ok(store)
}

/// Runs the server on `clock` until `shutdown` resolves. `on_listening` learns the bound
/// address (useful with port 0).
pub async fn serve(
    config: Config,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    crate::api::auth::announce(&config);
    let providers = Providers::from_config(&config)?;
    let store = open_store(&config).await?.with_clock(clock.clone());
    tracing::info!(backend = store.backend(), "store ready");
    let saved = match store.load_provider_state().await {
        Ok(saved) => saved,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read saved provider state; starting at configured rates");
            Vec::new()
        }
    };
    let dispatcher = Dispatcher::start(
        store.clone(),
        providers.clone(),
        &config,
        &saved,
        clock.clone(),
    );
    let tasks = TaskTracker::new();
    let stopping = tokio_util::sync::CancellationToken::new();
    let pump_stop = stopping.clone();
    let pump_store = store.clone();
    tasks.spawn(async move { pump_store.pump_events(pump_stop).await });
    let state = AppState {
        config: config.clone(),
        store: store.clone(),
        dispatcher: dispatcher.clone(),
        providers,
        clock,
        stopping: stopping.clone(),
        metrics: crate::metrics::install(),
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "listening");
    on_listening(local);
    // On the signal: stop claiming at once and end event streams, then let in-flight
    // HTTP requests finish, for at most one request timeout.
    let stop_claims = dispatcher.clone();
    let signalled = stopping.clone();
    let server = axum::serve(listener, router(state)).with_graceful_shutdown(async move {
        shutdown.await;
        stop_claims.stop_claiming();
        // Logged once claiming has stopped: no attempt starts later than this line.
        tracing::info!("claims stopped: no attempt starts from here on");
        signalled.cancel();
    });
    let drain_limit = config.http.request_timeout;
    let drain_deadline = async move {
        stopping.cancelled().await;
        tokio::time::sleep(drain_limit).await;
    };
    tokio::select! {
        served = server => served.context("HTTP server failed")?,
        _ = drain_deadline => tracing::warn!(
            limit = ?drain_limit,
            "HTTP requests still open after the drain limit; closing them"
        ),
    }
    tracing::info!("HTTP server stopped; draining the worker pool");
    dispatcher.shutdown().await;
    tasks.close();
    tasks.wait().await;
    store.close().await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received: shutting down"),
        _ = term => tracing::info!("SIGTERM received: shutting down"),
    }
}
