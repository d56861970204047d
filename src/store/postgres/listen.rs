//! The process's one LISTEN connection. It hears three channels and routes each
//! notification at once to the consumer it is for, so no consumer's pace delays another's:
//! the event log's channel nudges the event pump, and runs becoming due or a running run
//! being cancelled go out as [`Notice`]s to whoever subscribed (the dispatcher).
//!
//! After the connection is lost anything sent meanwhile is lost with it, so every
//! (re)subscription nudges the pump and announces runs as due: both look for themselves.

use std::time::Duration;

use sqlx::postgres::{PgListener, PgNotification};
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use super::{CANCEL_CHANNEL, EVENTS_CHANNEL, PgStore, WAKE_CHANNEL};
use crate::run::RunId;
use crate::store::Notice;

/// How long to wait before connecting again after the connection failed.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);

/// Where the notifications go.
pub(super) struct Routes<'a> {
    /// Something was committed to the event log.
    pub(super) events: &'a Notify,
    pub(super) notices: &'a broadcast::Sender<Notice>,
}

impl Routes<'_> {
    fn route(&self, n: &PgNotification) {
        match n.channel() {
            EVENTS_CHANNEL => self.events.notify_one(),
            CANCEL_CHANNEL => {
                if let Ok(id) = n.payload().parse::<RunId>() {
                    self.announce(Notice::Cancelled(id));
                }
            }
            _ => self.announce(Notice::RunsDue),
        }
    }

    /// Something may have been missed: every consumer looks.
    fn look_again(&self) {
        self.events.notify_one();
        self.announce(Notice::RunsDue);
    }

    fn announce(&self, notice: Notice) {
        // No subscriber is fine: nobody in this process dispatches.
        let _ = self.notices.send(notice);
    }
}

impl PgStore {
    /// Holds the LISTEN connection until `stop` fires, reconnecting after an outage.
    pub(super) async fn listen(&self, routes: Routes<'_>, stop: &CancellationToken) {
        loop {
            let mut listener = match self.subscribe().await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot LISTEN for notifications; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(RECONNECT_BACKOFF) => continue,
                        _ = stop.cancelled() => return,
                    }
                }
            };
            routes.look_again();
            let failed = loop {
                tokio::select! {
                    msg = listener.try_recv() => match msg {
                        Ok(Some(n)) => routes.route(&n),
                        Ok(None) => {
                            tracing::warn!("notification listener reconnecting");
                            break false;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "notification listener failed");
                            break true;
                        }
                    },
                    _ = stop.cancelled() => return,
                }
            };
            routes.look_again();
            if failed {
                tokio::select! {
                    _ = tokio::time::sleep(RECONNECT_BACKOFF) => {}
                    _ = stop.cancelled() => return,
                }
            }
        }
    }

    async fn subscribe(&self) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(self.pool()).await?;
        listener
            .listen_all([EVENTS_CHANNEL, WAKE_CHANNEL, CANCEL_CHANNEL])
            .await?;
        Ok(listener)
    }
}
