//! Group commit for enqueues: concurrent requests share one transaction. Whatever arrived
//! while the previous transaction was committing goes into the next, up to
//! `dispatch.enqueue_batch` rows, so there is no added wait when idle and far fewer commits
//! under load. Each request is answered only after its row is committed.
//!
//! The fast path: a live run due now, whose provider can take an attempt, is started by
//! the very commit that stores it when a worker slot is free (and nothing of its provider
//! is due ahead of it), so it does not wait for the producer's next claim.

use std::sync::Arc;

use std::collections::HashSet;

use tokio::sync::{mpsc, oneshot};

use super::{Dispatcher, Reserved};
use crate::run::RunId;
use crate::store::{Enqueued, NewRun, StartNow, Store, StoreError};

#[derive(Debug, thiserror::Error, Clone)]
pub enum EnqueueError {
    #[error("{0}")]
    Store(Arc<StoreError>),
    #[error("the server is shutting down")]
    Closed,
}

type Reply = oneshot::Sender<Result<Enqueued, EnqueueError>>;

/// Handle for submitting runs.
#[derive(Clone)]
pub struct Enqueuer {
    tx: mpsc::Sender<(NewRun, Reply)>,
}

impl Enqueuer {
    /// Starts the batching task. A run that can start at once is started by the commit
    /// that stores it, in a slot set aside by `dispatcher` (see
    /// [`Dispatcher::reserve`]); when a commit leaves runs queued, the local producer is
    /// woken.
    pub fn start(
        store: Store,
        max_batch: usize,
        tasks: &tokio_util::task::TaskTracker,
        dispatcher: Dispatcher,
    ) -> Enqueuer {
        let (tx, rx) = mpsc::channel(max_batch * 4);
        tasks.spawn(run(store, rx, max_batch, dispatcher));
        Enqueuer { tx }
    }

    pub async fn enqueue(&self, run: NewRun) -> Result<Enqueued, EnqueueError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((run, reply))
            .await
            .map_err(|_| EnqueueError::Closed)?;
        answer.await.map_err(|_| EnqueueError::Closed)?
    }
}

async fn run(
    store: Store,
    mut rx: mpsc::Receiver<(NewRun, Reply)>,
    max_batch: usize,
    dispatcher: Dispatcher,
) {
    let mut pending: Vec<(NewRun, Reply)> = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut pending, max_batch).await > 0 {
        let (runs, replies): (Vec<NewRun>, Vec<Reply>) = pending.drain(..).unzip();
        let now = dispatcher.now();
        let reserved: Vec<Option<Reserved>> =
            runs.iter().map(|r| dispatcher.reserve(r, now)).collect();
        let flags: Vec<bool> = reserved.iter().map(Option::is_some).collect();
        let start = flags.contains(&true).then(|| {
            let (worker, lease_until) = dispatcher.lease_from(now);
            StartNow {
                worker,
                now,
                lease_until,
                runs: &flags,
            }
        });
        let horizon = dispatcher.notify_horizon(now);
        match store.enqueue_starting(&runs, start, Some(horizon)).await {
            Ok((results, started)) => {
                let started: HashSet<RunId> = started.into_iter().collect();
                // The earliest due time of the runs left queued.
                let queued = runs
                    .iter()
                    .zip(&results)
                    .filter(|(_, r)| matches!(r, Enqueued::Created(id) if !started.contains(id)))
                    .map(|(run, _)| run.due_at)
                    .min();
                for (run, reserved) in runs.into_iter().zip(reserved) {
                    let Some(reserved) = reserved else { continue };
                    if started.contains(&run.id) {
                        dispatcher.launch(run, reserved, now);
                    } else {
                        dispatcher.unreserve(run.id, &run.provider, reserved);
                    }
                }
                if let Some(due) = queued {
                    dispatcher.wake_for(due);
                }
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(e) => {
                for (run, reserved) in runs.iter().zip(reserved) {
                    if let Some(reserved) = reserved {
                        dispatcher.unreserve(run.id, &run.provider, reserved);
                    }
                }
                tracing::warn!(error = %e, runs = runs.len(), "enqueue transaction failed");
                let e = EnqueueError::Store(Arc::new(e));
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
