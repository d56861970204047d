//! Group commit for enqueues: concurrent requests share one transaction. Whatever arrived
//! while the previous transaction was committing goes into the next, up to
//! `dispatch.enqueue_batch` rows, so there is no added wait when idle and far fewer commits
//! under load. Each request is answered only after its row is committed.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::store::{Enqueued, NewRun, Store, StoreError};

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
    /// Starts the batching task. `on_created` runs after each commit that created runs
    /// (it wakes the local producer).
    pub fn start(
        store: Store,
        max_batch: usize,
        tasks: &tokio_util::task::TaskTracker,
        on_created: impl Fn() + Send + 'static,
    ) -> Enqueuer {
        let (tx, rx) = mpsc::channel(max_batch * 4);
        tasks.spawn(run(store, rx, max_batch, on_created));
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
    on_created: impl Fn(),
) {
    let mut pending: Vec<(NewRun, Reply)> = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut pending, max_batch).await > 0 {
        let (runs, replies): (Vec<NewRun>, Vec<Reply>) = pending.drain(..).unzip();
        match store.enqueue(&runs).await {
            Ok(results) => {
                if results.iter().any(|r| matches!(r, Enqueued::Created(_))) {
                    on_created();
                }
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, runs = runs.len(), "enqueue transaction failed");
                let e = EnqueueError::Store(Arc::new(e));
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
