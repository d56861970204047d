//! The in-process event hub: committed lifecycle events fan out to live subscribers (SSE
//! streams). A subscriber that falls behind loses its place in the broadcast buffer and
//! catches up from the event log, so the hub never slows the writers down.

use std::sync::Arc;

use tokio::sync::broadcast;

use super::RunEvent;

#[derive(Clone)]
pub struct EventHub {
    tx: broadcast::Sender<Arc<RunEvent>>,
}

impl EventHub {
    pub fn new(capacity: usize) -> EventHub {
        let (tx, _) = broadcast::channel(capacity.max(16));
        EventHub { tx }
    }

    pub fn publish(&self, events: Vec<RunEvent>) {
        for e in events {
            // No receiver is fine: nobody is watching.
            let _ = self.tx.send(Arc::new(e));
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RunEvent>> {
        self.tx.subscribe()
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}
