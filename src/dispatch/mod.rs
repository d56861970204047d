//! The worker pool: everything between a queued row and a finished one.
//!
//! - `admission`: refuses background enqueues while live work waits, the background queue
//!   is full, the provider is unhealthy or the session's quota is spent.
//! - `enqueuer`: groups concurrent enqueues into one transaction (group commit).
//! - `producer`: claims due runs, only as many as there are free slots, and sleeps until
//!   woken (an enqueue here or, on PostgreSQL, in another process) or the next due time.
//! - `gates`: each provider's rate limiter and circuit breaker; the producer claims only
//!   what they allow.
//! - `worker`: runs one attempt under its timeout and abort signal.
//! - `completer`: writes finished attempts in batches and lets go of their leases.
//! - `leases`: the heartbeater (extends every held lease in one statement) and the rescuer
//!   (requeues the runs of a process that died).
//! - `sweeper`: ends runs whose queue deadline passed before they started.
//! - `wake`: turns the store's cross-process notices into wake-ups and aborts.
//!
//! A run waiting for its next attempt sits in the database, not in a slot.

mod admission;
mod completer;
mod enqueuer;
mod gates;
mod leases;
mod producer;
mod sweeper;
mod wake;
mod worker;

pub use admission::Refusal;
pub use enqueuer::{EnqueueError, Enqueuer};
pub use gates::GateStatus;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::Config;
use crate::providers::Providers;
use crate::run::{Backoff, Class, RunId, WorkerId};
use crate::store::{ClaimedRun, KeyCaps, NewRun, Store};
use chrono::{DateTime, Utc};

/// The dispatch settings, taken from [`Config`] once.
#[derive(Clone, Debug)]
pub struct Settings {
    pub slots: usize,
    pub claim_batch: usize,
    pub lease: Duration,
    pub heartbeat_interval: Duration,
    pub rescue_interval: Duration,
    pub idle_poll: Duration,
    pub shutdown_grace: Duration,
    pub complete_batch: usize,
    pub enqueue_batch: usize,
    pub backoff: Backoff,
    timeouts: gates::TimeoutPolicy,
    pub key_caps: KeyCaps,
    pub sweep_interval: Duration,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        let d = &config.dispatch;
        Settings {
            slots: d.slots,
            claim_batch: d.claim_batch,
            lease: d.lease,
            heartbeat_interval: d.heartbeat_interval,
            rescue_interval: d.rescue_interval,
            idle_poll: d.idle_poll,
            shutdown_grace: d.shutdown_grace,
            complete_batch: d.complete_batch,
            enqueue_batch: d.enqueue_batch,
            backoff: Backoff {
                base: config.retry.backoff_base,
                cap: config.retry.backoff_cap,
                provider_cap: config.retry.provider_delay_cap,
            },
            timeouts: gates::TimeoutPolicy::from_config(&config.queue),
            key_caps: KeyCaps {
                live: config.queue.live_key_cap,
                background: config.queue.background_key_cap,
            },
            sweep_interval: config.queue.sweep_interval,
        }
    }
}

/// `Shared::sleeping_until` while the producer is not asleep on its timer.
const AWAKE: i64 = i64::MIN;

/// Why an in-flight attempt is being stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AbortReason {
    /// A client cancelled the run; the store already says `cancelled`.
    Cancelled,
    /// The process is shutting down and the grace period is over: give the run back.
    Shutdown,
}

/// A lease this process holds: from claim until the completer has written the result.
struct Held {
    /// The attempt number: a run can be held again (after a rescue) while a stale attempt
    /// of it is still finishing, and only the current attempt's result lets go of it.
    attempt: u32,
    abort: CancellationToken,
    reason: Arc<Mutex<Option<AbortReason>>>,
}

/// State shared by the dispatch tasks.
struct Shared {
    store: Store,
    providers: Providers,
    gates: gates::Gates,
    admission: crate::config::AdmissionConfig,
    /// Each provider's `background_queue_max`.
    background_queue_max: HashMap<String, u32>,
    clock: Arc<dyn Clock>,
    worker: WorkerId,
    settings: Settings,
    /// One permit per worker slot; a running attempt holds one.
    slots: Arc<Semaphore>,
    held: Mutex<HashMap<RunId, Held>>,
    /// Wakes the producer: something may be due.
    wake: Notify,
    /// When the producer will look again by itself (unix microseconds) while it sleeps
    /// on its timer, [`AWAKE`] otherwise: a run enqueued here that is due later than that
    /// needs no wake-up.
    sleeping_until: std::sync::atomic::AtomicI64,
    /// Wakes the producer: a slot came free.
    slot_freed: Notify,
    /// Wakes a shutdown waiting for `held` to empty.
    released: Notify,
    /// Stops claiming (shutdown has begun).
    stop_claiming: CancellationToken,
    /// Stops the background services once nothing is held any more.
    stop_services: CancellationToken,
    finished: mpsc::Sender<worker::Finished>,
}

/// Handle to the running worker pool.
#[derive(Clone)]
pub struct Dispatcher {
    shared: Arc<Shared>,
    tasks: TaskTracker,
}

/// A worker slot, a provider ticket and a held lease set aside for a run that its enqueue
/// may start (see [`Dispatcher::reserve`]).
pub(crate) struct Reserved {
    slot: tokio::sync::OwnedSemaphorePermit,
    ticket: gates::Ticket,
    abort: CancellationToken,
    reason: Arc<Mutex<Option<AbortReason>>>,
}

/// A point-in-time view of the pool for `/health`.
#[derive(Clone, Debug)]
pub struct PoolStatus {
    pub slots_total: usize,
    pub slots_busy: usize,
    pub held: usize,
    pub worker_id: WorkerId,
}

impl Dispatcher {
    /// Starts the producer, completer, heartbeater, rescuer and (on PostgreSQL) the
    /// listener. Nothing is spawned outside the returned handle's task tracker.
    /// `saved` is each provider's persisted limiter state, so a restart resumes at the
    /// adapted rate rather than the configured ceiling.
    pub fn start(
        store: Store,
        providers: Providers,
        config: &Config,
        saved: &[(String, String)],
        clock: Arc<dyn Clock>,
    ) -> Dispatcher {
        let settings = Settings::from_config(config);
        let (finished_tx, finished_rx) = mpsc::channel(settings.slots.max(16) * 2);
        let shared = Arc::new(Shared {
            store,
            providers,
            gates: gates::Gates::new(config, saved),
            admission: config.admission.clone(),
            background_queue_max: config
                .providers
                .iter()
                .map(|p| (p.name.clone(), p.background_queue_max))
                .collect(),
            clock,
            worker: WorkerId::new(),
            slots: Arc::new(Semaphore::new(settings.slots)),
            settings,
            held: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            sleeping_until: std::sync::atomic::AtomicI64::new(AWAKE),
            slot_freed: Notify::new(),
            released: Notify::new(),
            stop_claiming: CancellationToken::new(),
            stop_services: CancellationToken::new(),
            finished: finished_tx,
        });
        let tasks = TaskTracker::new();
        let dispatcher = Dispatcher {
            shared: shared.clone(),
            tasks: tasks.clone(),
        };
        tasks.spawn(producer::run(shared.clone(), tasks.clone()));
        tasks.spawn(completer::run(shared.clone(), finished_rx));
        tasks.spawn(leases::heartbeat(shared.clone()));
        tasks.spawn(leases::rescue(shared.clone()));
        tasks.spawn(sweeper::run(shared.clone()));
        tasks.spawn(wake::listen(shared.clone(), shared.store.notifications()));
        tracing::info!(worker_id = %shared.worker, slots = shared.settings.slots, "worker pool started");
        dispatcher
    }

    /// Sets a slot aside for `run`, so the commit that stores it can also start it (the
    /// fast path from enqueue to a free slot), when that overtakes nothing and breaks no
    /// limit: a live run due now, of a provider with no live cap, without a concurrency
    /// key while live keys are capped, with a slot free and its provider's limiter and
    /// breaker letting an attempt start. The store still starts it only if no live run of
    /// its provider is due ahead of it.
    pub(crate) fn reserve(&self, run: &NewRun, now: DateTime<Utc>) -> Option<Reserved> {
        let s = &self.shared;
        if s.stop_claiming.is_cancelled()
            || run.class != Class::Live
            || run.due_at > now
            || (run.concurrency_key.is_some() && s.settings.key_caps.live.is_some())
            || !s.gates.uncapped_live(&run.provider)
        {
            return None;
        }
        let slot = s.slots.clone().try_acquire_owned().ok()?;
        let ticket = s.gates.admit(&run.provider, &run.request)?;
        let (abort, reason) = worker::hold(s, run.id, 1);
        Some(Reserved {
            slot,
            ticket,
            abort,
            reason,
        })
    }

    /// The dispatcher's clock.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.shared.clock.now()
    }

    /// This process's worker id and a lease from `now`, for runs an enqueue starts.
    pub(crate) fn lease_from(&self, now: DateTime<Utc>) -> (WorkerId, DateTime<Utc>) {
        let lease = chrono::Duration::from_std(self.shared.settings.lease)
            .unwrap_or(chrono::Duration::minutes(5));
        (self.shared.worker, now + lease)
    }

    /// Runs the first attempt of a run its enqueue started, in the slot set aside for it.
    pub(crate) fn launch(&self, run: NewRun, reserved: Reserved, now: DateTime<Utc>) {
        let wait = (now - run.due_at).to_std().unwrap_or_default();
        crate::metrics::queue_wait(run.class.as_str(), wait);
        let claimed = ClaimedRun {
            id: run.id,
            attempt: 1,
            max_attempts: u32::try_from(run.max_attempts).unwrap_or(1),
            provider: run.provider,
            model: run.model,
            request: run.request,
            class: run.class,
            priority: run.priority,
            tenant: run.tenant,
            concurrency_key: run.concurrency_key,
            stream: run.stream,
            timeout_ms: run.timeout_ms,
            created_at: run.created_at,
            due_at: run.due_at,
        };
        self.tasks.spawn(worker::execute(
            self.shared.clone(),
            claimed,
            reserved.slot,
            reserved.ticket,
            reserved.abort,
            reserved.reason,
        ));
    }

    /// Gives back what was set aside for a run its enqueue did not start.
    pub(crate) fn unreserve(&self, id: RunId, provider: &str, reserved: Reserved) {
        let s = &self.shared;
        {
            let mut held = s.held.lock().expect("held lock");
            if held.get(&id).is_some_and(|h| h.attempt == 1) {
                held.remove(&id);
            }
        }
        s.gates.unused(provider, reserved.ticket);
        drop(reserved.slot);
        s.slot_freed.notify_one();
        s.released.notify_waiters();
    }

    /// Tells the producer that runs may be due now (after an enqueue in this process).
    pub fn wake(&self) {
        self.shared.wake.notify_one();
    }

    /// Tells the producer about runs just queued here that become due at `due`, unless
    /// it will look by itself before then.
    pub(crate) fn wake_for(&self, due: DateTime<Utc>) {
        let until = self
            .shared
            .sleeping_until
            .load(std::sync::atomic::Ordering::SeqCst);
        if until == AWAKE || due.timestamp_micros() <= until {
            self.wake();
        }
    }

    /// How far ahead a run queued now must be due for other processes' producers to be
    /// told at once; later ones they find by their own periodic look.
    pub(crate) fn notify_horizon(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.shared.settings.idle_poll)
            .unwrap_or(chrono::Duration::seconds(5))
    }

    /// Stops an in-flight attempt of a run that was just cancelled in the store. Returns
    /// whether this process was running it.
    pub fn abort_cancelled(&self, id: RunId) -> bool {
        abort(&self.shared, id, AbortReason::Cancelled)
    }

    /// Each provider's breaker and limiter state.
    pub fn providers(&self) -> Vec<GateStatus> {
        self.shared.gates.status()
    }

    pub fn status(&self) -> PoolStatus {
        let s = &self.shared;
        PoolStatus {
            slots_total: s.settings.slots,
            slots_busy: s.settings.slots - s.slots.available_permits(),
            held: s.held.lock().expect("held lock").len(),
            worker_id: s.worker,
        }
    }

    /// Stops claiming new runs at once (the first step of a shutdown; in-flight attempts
    /// go on).
    pub fn stop_claiming(&self) {
        self.shared.stop_claiming.cancel();
    }

    /// Graceful shutdown: stop claiming; let in-flight attempts finish within the grace
    /// period; give the rest back to the queue; write every result; stop the services.
    pub async fn shutdown(self) {
        let s = &self.shared;
        s.stop_claiming.cancel();
        let in_flight = s.held.lock().expect("held lock").len();
        tracing::info!(
            in_flight,
            grace = ?s.settings.shutdown_grace,
            "draining: no new claims, waiting for in-flight attempts"
        );
        if !wait_until_released(s, s.settings.shutdown_grace).await {
            let ids: Vec<RunId> = s.held.lock().expect("held lock").keys().copied().collect();
            tracing::warn!(
                remaining = ids.len(),
                "grace period over: releasing unfinished attempts back to the queue"
            );
            for id in ids {
                abort(s, id, AbortReason::Shutdown);
            }
            // Aborted attempts end at once; this bound only matters if the database is
            // unreachable, in which case the leases expire and another process rescues them.
            if !wait_until_released(s, s.settings.lease).await {
                tracing::error!(
                    "could not record every released attempt; their leases will expire and be rescued"
                );
            }
        }
        s.stop_services.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        tracing::info!("worker pool stopped");
    }
}

fn abort(shared: &Shared, id: RunId, why: AbortReason) -> bool {
    let held = shared.held.lock().expect("held lock");
    match held.get(&id) {
        Some(h) => {
            h.reason.lock().expect("reason lock").get_or_insert(why);
            h.abort.cancel();
            true
        }
        None => false,
    }
}

/// Waits until this process holds no lease, or `limit` passes. True when empty.
async fn wait_until_released(shared: &Shared, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let notified = shared.released.notified();
        if shared.held.lock().expect("held lock").is_empty() {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return shared.held.lock().expect("held lock").is_empty();
        }
    }
}
