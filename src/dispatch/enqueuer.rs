//! Group commit for enqueues: concurrent requests share one transaction. Whatever arrived
//! while the previous transaction was committing goes into the next, up to
//! `dispatch.enqueue_batch` rows, so there is no added wait when idle and far fewer commits
//! under load. Each request is answered only after its row is committed. A run that may
//! start at once is started by that same commit (see [`super::fast_path`]).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::Shared;
use super::fast_path::FastPath;
use crate::store::{Enqueued, NewRun, StoreError};

#[derive(Debug, thiserror::Error, Clone)]
pub(super) enum EnqueueError {
    #[error("{0}")]
    Store(Arc<StoreError>),
    #[error("the server is shutting down")]
    Closed,
}

type Reply = oneshot::Sender<Result<Enqueued, EnqueueError>>;

/// Handle for submitting runs to the batching task.
#[derive(Clone)]
pub(super) struct Enqueuer {
    tx: mpsc::Sender<(NewRun, Reply)>,
}

impl Enqueuer {
    /// Starts the batching task on `tasks`; it ends once every handle is gone or the
    /// dispatcher's services stop.
    pub(super) fn start(shared: Arc<Shared>, tasks: &TaskTracker) -> Enqueuer {
        let max_batch = shared.settings.enqueue_batch;
        let (tx, rx) = mpsc::channel(max_batch * 4);
        tasks.spawn(run(shared, rx, max_batch, tasks.clone()));
        Enqueuer { tx }
    }

    pub(super) async fn enqueue(&self, run: NewRun) -> Result<Enqueued, EnqueueError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((run, reply))
            .await
            .map_err(|_| EnqueueError::Closed)?;
        answer.await.map_err(|_| EnqueueError::Closed)?
    }
}

async fn run(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<(NewRun, Reply)>,
    max_batch: usize,
    tasks: TaskTracker,
) {
    let mut pending: Vec<(NewRun, Reply)> = Vec::with_capacity(max_batch);
    loop {
        tokio::select! {
            biased;
            got = rx.recv_many(&mut pending, max_batch) => if got == 0 { break },
            // HTTP has stopped before the services do: nothing more can arrive.
            _ = shared.stop_services.cancelled() => break,
        }
        let (runs, replies): (Vec<NewRun>, Vec<Reply>) = pending.drain(..).unzip();
        let fast = FastPath::reserve(&shared, &runs);
        let written = shared
            .store
            .enqueue_starting(
                &runs,
                fast.start_now(&shared),
                Some(fast.notify_horizon(&shared)),
            )
            .await;
        match written {
            Ok((results, started)) => {
                fast.settle(&shared, &tasks, runs, Some((&results, &started)));
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, runs = runs.len(), "enqueue transaction failed");
                fast.settle(&shared, &tasks, runs, None);
                let e = EnqueueError::Store(Arc::new(e));
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
    tracing::debug!("enqueuer stopped");
}
