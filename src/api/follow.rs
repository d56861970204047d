//! Following one run as it happens: its lifecycle events from the log, then live from
//! the hub, with the deltas of each streamed attempt between its `started` and its end,
//! without gap or duplicate, until the terminal event.
//!
//! The follower subscribes to the hub *before* it reads the log, then skips live events it
//! already has. One that falls behind the hub's buffer quietly catches up from the log.
//! Deltas are in memory on the process running the attempt (see `store::hub`): a follower
//! elsewhere sees the lifecycle only.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;

use crate::run::RunId;
use crate::store::{Delta, EventKind, RunEvent, Store, StoreError};

/// What a run did next.
#[derive(Debug)]
pub(super) enum Followed {
    Event(RunEvent),
    Delta(Delta),
}

pub(super) struct RunFollower {
    store: Store,
    run: RunId,
    rx: Receiver<Arc<RunEvent>>,
    /// Pokes when a streaming attempt produced deltas.
    delta_rx: Receiver<RunId>,
    pending: VecDeque<RunEvent>,
    /// The id of the last lifecycle event handed out.
    last_sent: i64,
    /// The attempt whose `started` event was handed out and whose end was not: its
    /// deltas flow.
    attempt: Option<u32>,
    /// The last delta handed out of that attempt.
    delta_seq: u64,
    finished: bool,
}

impl RunFollower {
    /// Subscribes to `store`'s hub for `run`. Call before anything that may make the run
    /// move (its enqueue, or reading whether it exists), then [`RunFollower::replay`].
    pub(super) fn subscribe(store: &Store, run: RunId) -> RunFollower {
        RunFollower {
            rx: store.hub().subscribe(),
            delta_rx: store.hub().subscribe_deltas(),
            store: store.clone(),
            run,
            pending: VecDeque::new(),
            last_sent: 0,
            attempt: None,
            delta_seq: 0,
            finished: false,
        }
    }

    /// Reads the log after event `after` (0 for all). With `delta_seq` (resuming inside a
    /// streamed attempt whose `started` event is `after`), that event is re-read to learn
    /// the attempt and not handed out again, and deltas resume after `delta_seq`.
    pub(super) async fn replay(
        mut self,
        after: i64,
        delta_seq: Option<u64>,
    ) -> Result<RunFollower, StoreError> {
        let from = if delta_seq.is_some() {
            after - 1
        } else {
            after
        };
        self.pending = self
            .store
            .events_for_run(self.run, from.max(0))
            .await?
            .into();
        if delta_seq.is_some()
            && let Some(first) = self.pending.front()
            && first.id == after
        {
            if first.kind == EventKind::Started {
                self.attempt = first.attempt;
            }
            self.pending.pop_front();
        }
        self.last_sent = after;
        self.delta_seq = delta_seq.unwrap_or(0);
        Ok(self)
    }

    /// The id of the last lifecycle event handed out.
    pub(super) fn last_event(&self) -> i64 {
        self.last_sent
    }

    /// What the run did next; `None` after its terminal event, or when the hub closed or
    /// the log could not be read.
    pub(super) async fn next(&mut self) -> Option<Followed> {
        loop {
            if self.finished {
                return None;
            }
            if let Some(e) = self.pending.front() {
                if e.id <= self.last_sent {
                    self.pending.pop_front();
                    continue;
                }
                // Everything the ending attempt streamed goes out before its end.
                if e.kind != EventKind::Started
                    && let Some(delta) = self.next_delta()
                {
                    return Some(Followed::Delta(delta));
                }
                let e = self.pending.pop_front().expect("peeked");
                self.last_sent = e.id;
                // A dead letter requeued since goes on past its old end.
                self.finished = e.kind.is_terminal()
                    && !self.pending.iter().any(|p| p.kind == EventKind::Requeued);
                if e.kind == EventKind::Started {
                    self.attempt = e.attempt;
                    self.delta_seq = 0;
                } else {
                    self.attempt = None;
                }
                return Some(Followed::Event(e));
            }
            if let Some(delta) = self.next_delta() {
                return Some(Followed::Delta(delta));
            }
            tokio::select! {
                received = self.rx.recv() => match received {
                    Ok(e) if e.run_id == self.run && e.id > self.last_sent => {
                        self.pending.push_back((*e).clone());
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {
                        // Fell behind the live buffer: catch up from the log.
                        match self.store.events_for_run(self.run, self.last_sent).await {
                            Ok(events) => self.pending.extend(events),
                            Err(e) => {
                                tracing::warn!(run_id = %self.run, error = %e, "event replay failed; stopping");
                                return None;
                            }
                        }
                    }
                    Err(RecvError::Closed) => return None,
                },
                // A poke: the loop reads the new deltas from the hub's buffer.
                poked = self.delta_rx.recv() => if let Err(RecvError::Closed) = poked {
                    return None;
                },
            }
        }
    }

    /// The next delta of the current attempt not yet handed out, if the hub has one.
    fn next_delta(&mut self) -> Option<Delta> {
        let attempt = self.attempt?;
        let d = self
            .store
            .hub()
            .deltas_after(self.run, attempt, self.delta_seq)
            .into_iter()
            .next()?;
        self.delta_seq = d.seq;
        Some(d)
    }
}
