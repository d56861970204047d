//! Cross-process signals on PostgreSQL: every commit that makes runs due sends a
//! `NOTIFY`, which this listener turns into a producer wake-up, so an enqueue on one
//! replica starts work on another without polling; and a cancelled running run's id,
//! which aborts the attempt here if this process is the one running it.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;

use super::Shared;
use super::{AbortReason, abort};
use crate::run::RunId;
use crate::store::{CANCEL_CHANNEL, WAKE_CHANNEL};

const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);

pub(super) async fn listen(shared: Arc<Shared>, pool: PgPool) {
    loop {
        let mut listener = match connect(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN for wake-ups; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RECONNECT_BACKOFF) => continue,
                    _ = shared.stop_claiming.cancelled() => break,
                }
            }
        };
        loop {
            tokio::select! {
                msg = listener.try_recv() => match msg {
                    Ok(Some(n)) if n.channel() == CANCEL_CHANNEL => {
                        if let Ok(id) = n.payload().parse::<RunId>()
                            && abort(&shared, id, AbortReason::Cancelled)
                        {
                            tracing::info!(run_id = %id, "aborting attempt of a run cancelled elsewhere");
                        }
                    }
                    Ok(Some(_)) => shared.wake.notify_one(),
                    Ok(None) => {
                        // The connection dropped: anything sent meanwhile was lost, so look.
                        tracing::warn!("wake-up listener reconnecting");
                        shared.wake.notify_one();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "wake-up listener failed");
                        shared.wake.notify_one();
                        break;
                    }
                },
                _ = shared.stop_claiming.cancelled() => return,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_BACKOFF) => {}
            _ = shared.stop_claiming.cancelled() => break,
        }
    }
}

async fn connect(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen_all([WAKE_CHANNEL, CANCEL_CHANNEL]).await?;
    Ok(listener)
}
