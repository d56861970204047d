//! Cross-process wake-ups on PostgreSQL: every commit that makes runs due sends a
//! `NOTIFY`; this listener turns those into producer wake-ups, so an enqueue on one
//! replica starts work on another without polling.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;

use super::Shared;
use crate::store::WAKE_CHANNEL;

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
    listener.listen(WAKE_CHANNEL).await?;
    Ok(listener)
}
