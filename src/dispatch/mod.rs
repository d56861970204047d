//! The worker pool: everything between a queued row and a finished one.
//!
//! - `submit`: takes a run in: idempotent repeats, admission, the enqueue, the answer.
//! - `admission`: refuses background enqueues while live work waits, the background queue
//!   is full, the provider is unhealthy or the session's quota is spent.
//! - `tenant_limits`: a tenant's daily token and spend budgets and its enqueue rate, and
//!   what its day looks like.
//! - `enqueuer`: groups concurrent enqueues into one transaction (group commit).
//! - `fast_path`: starts a live run due now in the very commit that stores it.
//! - `reservation`: the slot, provider start and held lease an attempt needs, taken in
//!   one place for both ways a run starts.
//! - `producer`: claims due runs, only as many as there are free slots, and sleeps until
//!   woken (an enqueue here or, on PostgreSQL, in another process) or the next due time.
//! - `gates`: each provider's rate limiter, circuit breaker, timeout share and recent
//!   latencies (their logic is in `crate::limits`); the producer claims only what they
//!   allow, and a run naming no timeout gets the adaptive one.
//! - `worker`: runs one attempt under its timeout and abort signal.
//! - `completer`: writes finished attempts in batches and lets go of their leases.
//! - `leases`: the heartbeater (extends every held lease in one statement) and the rescuer
//!   (requeues the runs of a process that died).
//! - `sweeper`: ends runs whose queue deadline passed before they started.
//! - `ticker`: the beat of those periodic services, and their stop.
//! - `cancel`: cancels a run in the store and stops its attempt wherever it runs.
//! - `batches`: takes a batch in, pauses, resumes and cancels it, and marks batches whose
//!   runs all ended finished.
//! - `endings`: records a run's terminal status in the metrics, whoever ended it.
//! - `wake`: turns the store's cross-process notices into wake-ups and aborts.
//!
//! A run waiting for its next attempt sits in the database, not in a slot.

mod admission;
mod batches;
mod cancel;
mod completer;
mod endings;
mod enqueuer;
mod fast_path;
mod gates;
mod leases;
mod producer;
mod reservation;
mod retention;
mod steward;
mod submit;
mod sweeper;
mod tenant_limits;
mod ticker;
mod wake;
mod worker;

pub use admission::{Refusal, RefusalReason};
pub use cancel::Cancelled;
pub use gates::GateStatus;
pub use submit::{SubmitError, Submitted};
pub use tenant_limits::{TenantBook, TenantDay};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Clock;
use crate::config::Config;
use crate::providers::Providers;
use crate::run::{Backoff, RunId, WorkerId};
use crate::store::{KeyCaps, Store, TenantShares};

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
    /// The `[retry]` backoff, for a run of a provider no longer configured.
    pub backoff: Backoff,
    /// Each provider's backoff: its own settings, `[retry]`'s where it has none.
    pub provider_backoff: HashMap<String, Backoff>,
    timeouts: crate::limits::TimeoutPolicy,
    pub key_caps: KeyCaps,
    /// The tenants' weights and in-flight caps, from `[[tenants]]`.
    pub tenant_shares: TenantShares,
    pub sweep_interval: Duration,
    pub leader_lease: Duration,
    /// How often batches whose runs all ended are marked finished.
    pub batch_finish_interval: Duration,
}

impl Settings {
    /// The backoff of `provider`'s retries.
    pub fn backoff_of(&self, provider: &str) -> &Backoff {
        self.provider_backoff.get(provider).unwrap_or(&self.backoff)
    }

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
            backoff: config.retry.backoff(),
            provider_backoff: config
                .providers
                .iter()
                .map(|p| (p.name.clone(), p.retry(&config.retry).backoff()))
                .collect(),
            timeouts: crate::limits::TimeoutPolicy::from_config(&config.queue),
            key_caps: KeyCaps {
                live: config.queue.live_key_cap,
                background: config.queue.background_key_cap,
            },
            tenant_shares: TenantShares {
                weights: config
                    .tenants
                    .iter()
                    .map(|t| (t.name.clone(), t.weight))
                    .collect(),
                caps: config
                    .tenants
                    .iter()
                    .filter_map(|t| Some((t.name.clone(), t.max_in_flight?)))
                    .collect(),
            },
            sweep_interval: config.queue.sweep_interval,
            leader_lease: d.leader_lease,
            batch_finish_interval: config.batches.finish_interval,
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
    /// The heartbeat found the lease gone: the run was cancelled (and the notice of it
    /// missed), rescued or ended elsewhere. The result would be ignored.
    LeaseLost,
}

/// A lease this process holds: from claim until the completer has written the result.
struct Held {
    /// The attempt number: a run can be held again (after a rescue) while a stale attempt
    /// of it is still finishing, and only the current attempt's result lets go of it.
    attempt: u32,
    abort: CancellationToken,
    reason: Arc<Mutex<Option<AbortReason>>>,
    /// Whether the lease is in the database yet. The fast path holds a lease before the
    /// enqueue that writes it commits; the heartbeat must not take that for a lost one.
    committed: bool,
}

/// State shared by the dispatch tasks.
struct Shared {
    store: Store,
    providers: Providers,
    gates: gates::Gates,
    admission: crate::config::AdmissionConfig,
    /// The configured tenants' limits and the price table.
    tenants: TenantBook,
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
    /// Until when this process may believe it leads maintenance (see `steward`).
    leading_until: Mutex<Option<tokio::time::Instant>>,
    retention: crate::config::RetentionConfig,
    finished: mpsc::Sender<worker::Finished>,
}

/// Handle to the running worker pool.
#[derive(Clone)]
pub struct Dispatcher {
    shared: Arc<Shared>,
    tasks: TaskTracker,
    enqueuer: enqueuer::Enqueuer,
}

/// A point-in-time view of the pool for `/health`.
#[derive(Clone, Debug)]
pub struct PoolStatus {
    pub slots_total: usize,
    pub slots_busy: usize,
    pub held: usize,
    pub worker_id: WorkerId,
    /// Whether this process leads maintenance.
    pub leader: bool,
}

impl Dispatcher {
    /// Starts the producer, completer, enqueuer, heartbeater, rescuer, sweeper, steward,
    /// retention and (on PostgreSQL) the listener. Nothing is spawned outside the returned handle's task tracker.
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
            tenants: TenantBook::from_config(config),
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
            leading_until: Mutex::new(None),
            retention: config.retention.clone(),
            finished: finished_tx,
        });
        let tasks = TaskTracker::new();
        let dispatcher = Dispatcher {
            shared: shared.clone(),
            tasks: tasks.clone(),
            enqueuer: enqueuer::Enqueuer::start(shared.clone(), &tasks),
        };
        tasks.spawn(producer::run(shared.clone(), tasks.clone()));
        tasks.spawn(completer::run(shared.clone(), finished_rx));
        tasks.spawn(leases::heartbeat(shared.clone()));
        tasks.spawn(leases::rescue(shared.clone()));
        tasks.spawn(sweeper::run(shared.clone()));
        tasks.spawn(steward::run(shared.clone()));
        tasks.spawn(retention::run(shared.clone()));
        tasks.spawn(batches::finish(shared.clone()));
        tasks.spawn(wake::listen(shared.clone(), shared.store.notifications()));
        tracing::info!(worker_id = %shared.worker, slots = shared.settings.slots, "worker pool started");
        dispatcher
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
            leader: s.leads(),
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
