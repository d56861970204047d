//! The in-process event hub: committed lifecycle events fan out to live subscribers (SSE
//! streams). A subscriber that falls behind loses its place in the broadcast buffer and
//! catches up from the event log, so the hub never slows the writers down.
//!
//! Deltas of streaming attempts (text, and pieces of tool calls) live here too, in memory
//! only (one database write per token would be absurd): a bounded buffer per run holds the
//! current attempt's deltas, so a subscriber that reconnects during the attempt replays
//! what it missed. Deltas are seen by subscribers of the process running the attempt.
//! Deltas are timed by the server's [`Clock`].

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use super::RunEvent;
use crate::clock::{Clock, SystemClock};
use crate::run::RunId;

/// Most deltas kept per attempt for replay; older ones fall off the front.
const DELTA_BUFFER: usize = 4096;
/// How long an ended attempt's deltas stay replayable.
const DELTA_LINGER: Duration = Duration::from_secs(60);

/// One piece of streamed content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    pub attempt: u32,
    /// 1, 2, 3… within the attempt.
    pub seq: u64,
    /// The next piece of text; empty on a piece of a tool call.
    pub content: String,
    /// A piece of a tool call the model is writing, when this delta is one.
    pub tool_call: Option<ToolCallDelta>,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// A piece of a streamed tool call: the call's `id` and function `name` when it starts,
/// then its `arguments` text bit by bit. Calls are told apart by `index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCallDelta {
    pub index: u32,
    pub id: Option<String>,
    pub name: Option<String>,
    pub arguments: String,
}

struct DeltaLog {
    attempt: u32,
    next_seq: u64,
    items: VecDeque<Delta>,
    ended: Option<chrono::DateTime<chrono::Utc>>,
}

#[derive(Clone)]
pub struct EventHub {
    tx: broadcast::Sender<Arc<RunEvent>>,
    /// Announces "run X has new deltas"; subscribers read them from `deltas`.
    delta_tx: broadcast::Sender<RunId>,
    deltas: Arc<Mutex<HashMap<RunId, DeltaLog>>>,
    /// Wakes whoever feeds the hub when a subscriber arrives.
    subscribed: Arc<tokio::sync::Notify>,
    clock: Arc<dyn Clock>,
}

impl EventHub {
    /// A hub timed by the system clock (see [`EventHub::with_clock`]).
    pub fn new(capacity: usize) -> EventHub {
        let (tx, _) = broadcast::channel(capacity.max(16));
        let (delta_tx, _) = broadcast::channel(capacity.max(16));
        EventHub {
            tx,
            delta_tx,
            deltas: Arc::new(Mutex::new(HashMap::new())),
            subscribed: Arc::new(tokio::sync::Notify::new()),
            clock: Arc::new(SystemClock),
        }
    }

    /// The same hub, timed by `clock`.
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> EventHub {
        EventHub { clock, ..self }
    }

    pub fn publish(&self, events: Vec<RunEvent>) {
        for e in events {
            // No receiver is fine: nobody is watching.
            let _ = self.tx.send(Arc::new(e));
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RunEvent>> {
        let rx = self.tx.subscribe();
        self.subscribed.notify_one();
        rx
    }

    /// Resolves once a subscriber has arrived (at once if one arrived since the last call).
    pub async fn subscribed(&self) {
        self.subscribed.notified().await
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Records a content delta of a running attempt and wakes its subscribers.
    pub fn publish_delta(&self, run: RunId, attempt: u32, content: &str) {
        if content.is_empty() {
            return;
        }
        self.push_delta(run, attempt, content.to_string(), None);
    }

    /// Records a piece of a tool call of a running attempt and wakes its subscribers.
    pub fn publish_tool_call_delta(&self, run: RunId, attempt: u32, piece: ToolCallDelta) {
        self.push_delta(run, attempt, String::new(), Some(piece));
    }

    fn push_delta(
        &self,
        run: RunId,
        attempt: u32,
        content: String,
        tool_call: Option<ToolCallDelta>,
    ) {
        {
            let mut logs = self.deltas.lock().expect("delta lock");
            let log = logs.entry(run).or_insert_with(|| DeltaLog {
                attempt,
                next_seq: 1,
                items: VecDeque::new(),
                ended: None,
            });
            if log.attempt != attempt {
                *log = DeltaLog {
                    attempt,
                    next_seq: 1,
                    items: VecDeque::new(),
                    ended: None,
                };
            }
            let seq = log.next_seq;
            log.next_seq += 1;
            if log.items.len() == DELTA_BUFFER {
                log.items.pop_front();
            }
            log.items.push_back(Delta {
                attempt,
                seq,
                content,
                tool_call,
                at: self.clock.now(),
            });
        }
        let _ = self.delta_tx.send(run);
    }

    /// Marks an attempt's deltas complete; they stay replayable for a short while.
    pub fn end_deltas(&self, run: RunId, attempt: u32) {
        let now = self.clock.now();
        let mut logs = self.deltas.lock().expect("delta lock");
        if let Some(log) = logs.get_mut(&run)
            && log.attempt == attempt
        {
            log.ended = Some(now);
        }
        // An end in the future (the clock was set back) counts as just now.
        logs.retain(|_, log| {
            log.ended
                .is_none_or(|t| (now - t).to_std().unwrap_or_default() < DELTA_LINGER)
        });
    }

    /// The deltas of `attempt` after `seq`, in order.
    pub fn deltas_after(&self, run: RunId, attempt: u32, seq: u64) -> Vec<Delta> {
        let logs = self.deltas.lock().expect("delta lock");
        match logs.get(&run) {
            Some(log) if log.attempt == attempt => {
                log.items.iter().filter(|d| d.seq > seq).cloned().collect()
            }
            _ => Vec::new(),
        }
    }

    pub fn subscribe_deltas(&self) -> broadcast::Receiver<RunId> {
        self.delta_tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_replay_per_attempt_and_reset_on_the_next() {
        let hub = EventHub::new(16);
        let run = RunId::new();
        hub.publish_delta(run, 1, "Hel");
        hub.publish_delta(run, 1, "lo");
        hub.publish_delta(run, 1, "");
        let all: Vec<_> = hub
            .deltas_after(run, 1, 0)
            .into_iter()
            .map(|d| (d.seq, d.content))
            .collect();
        assert_eq!(all, vec![(1, "Hel".to_string()), (2, "lo".to_string())]);
        assert_eq!(hub.deltas_after(run, 1, 1).len(), 1);
        let piece = ToolCallDelta {
            index: 0,
            id: Some("call_1".into()),
            name: Some("weather".into()),
            arguments: String::new(),
        };
        hub.publish_tool_call_delta(run, 1, piece.clone());
        let third = &hub.deltas_after(run, 1, 2)[0];
        assert_eq!(third.seq, 3, "a tool-call piece takes the next seq");
        assert_eq!(
            (third.content.as_str(), third.tool_call.as_ref()),
            ("", Some(&piece))
        );
        hub.publish_delta(run, 2, "again");
        assert!(
            hub.deltas_after(run, 1, 0).is_empty(),
            "a new attempt starts afresh"
        );
        assert_eq!(hub.deltas_after(run, 2, 0)[0].seq, 1);
        hub.end_deltas(run, 2);
        assert_eq!(
            hub.deltas_after(run, 2, 0).len(),
            1,
            "still replayable just after the end"
        );
    }
}
