//! Background admission control at enqueue: background work is opportunistic, bounded and
//! droppable, so it is refused while live work waits for the provider, while the provider's
//! background queue is full, while the provider is unhealthy, or once the session's hourly
//! quota is spent. Live runs are never refused here.

use std::time::Duration;

use super::Dispatcher;
use super::gates::Unhealthy;
use crate::run::Class;
use crate::store::{NewRun, StoreError};

/// Why a background run was refused, and when to try again.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    pub reason: RefusalReason,
    pub retry_after: Duration,
    pub message: String,
}

/// Which bound refused a background run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// Live runs of the provider wait beyond the backlog bound.
    LiveBacklog,
    /// The provider's background queue is at its bound.
    BackgroundQueueFull,
    /// The provider's breaker is not closed, or too many recent attempts timed out.
    ProviderUnhealthy,
    /// The session spent its hourly background quota.
    Quota,
    /// The tenant enqueues faster than its `enqueue_rate` (any class).
    EnqueueRate,
    /// The tenant used today's `daily_tokens` (any class).
    DailyTokens,
    /// The tenant spent today's `daily_spend` (any class).
    DailySpend,
}

impl RefusalReason {
    /// Whether background admission control gave it (rather than a tenant limit).
    pub fn is_admission(self) -> bool {
        matches!(
            self,
            RefusalReason::LiveBacklog
                | RefusalReason::BackgroundQueueFull
                | RefusalReason::ProviderUnhealthy
                | RefusalReason::Quota
        )
    }

    /// The name used in error bodies, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::LiveBacklog => "live_backlog",
            RefusalReason::BackgroundQueueFull => "background_queue_full",
            RefusalReason::ProviderUnhealthy => "provider_unhealthy",
            RefusalReason::Quota => "quota",
            RefusalReason::EnqueueRate => "enqueue_rate",
            RefusalReason::DailyTokens => "daily_tokens",
            RefusalReason::DailySpend => "daily_spend",
        }
    }
}

/// Suggested wait after a refusal for live backlog or a full background queue.
const BACKLOG_RETRY: Duration = Duration::from_secs(5);
/// Suggested wait while a provider's timeouts run high, or its breaker probes.
const UNHEALTHY_RETRY: Duration = Duration::from_secs(15);
/// The rolling window of the session quota.
const QUOTA_WINDOW: Duration = Duration::from_secs(3600);

impl Dispatcher {
    /// Decides whether a run may be enqueued. Not atomic with the insert: under a burst a
    /// bound may be overshot by the runs admitted at the same moment.
    pub async fn admit(&self, run: &NewRun) -> Result<Result<(), Refusal>, StoreError> {
        if run.spec.class != Class::Background {
            return Ok(Ok(()));
        }
        let shared = &self.shared;
        let admission = &shared.admission;
        let provider = run.spec.provider.as_str();
        if let Some(unhealthy) = shared.gates.unhealthy(
            provider,
            admission.timeout_rate_threshold,
            admission.timeout_rate_min_samples,
        ) {
            let (retry_after, message) = match unhealthy {
                Unhealthy::Breaker { state, retry_in } => (
                    retry_in
                        .unwrap_or(UNHEALTHY_RETRY)
                        .max(Duration::from_secs(1)),
                    format!(
                        "provider {provider:?} is failing (circuit breaker {})",
                        state.as_str()
                    ),
                ),
                Unhealthy::Timeouts { share } => (
                    UNHEALTHY_RETRY,
                    format!(
                        "provider {provider:?} is slow: {:.0}% of recent attempts timed out",
                        share * 100.0
                    ),
                ),
            };
            return Ok(Err(Refusal {
                reason: RefusalReason::ProviderUnhealthy,
                retry_after,
                message,
            }));
        }
        let now = shared.clock.now();
        let (live_due, background_queued) = shared.store.provider_backlog(provider, now).await?;
        if live_due > i64::from(admission.live_backlog) {
            return Ok(Err(Refusal {
                reason: RefusalReason::LiveBacklog,
                retry_after: BACKLOG_RETRY,
                message: format!(
                    "{live_due} live run(s) are waiting for provider {provider:?}; background work waits until they are served"
                ),
            }));
        }
        let bound = shared
            .background_queue_max
            .get(provider)
            .copied()
            .unwrap_or(0);
        if background_queued >= i64::from(bound) {
            return Ok(Err(Refusal {
                reason: RefusalReason::BackgroundQueueFull,
                retry_after: BACKLOG_RETRY,
                message: format!(
                    "the background queue of provider {provider:?} is full ({background_queued} of {bound})"
                ),
            }));
        }
        if let Some(session) = &run.session {
            let window = chrono::Duration::from_std(QUOTA_WINDOW).expect("an hour fits");
            let (used, oldest) = shared
                .store
                .session_background_since(
                    session,
                    run.spec.concurrency_key.as_deref(),
                    now - window,
                )
                .await?;
            if used >= i64::from(admission.session_hourly_quota) {
                let frees_at = oldest.map(|t| t + window).unwrap_or(now + window);
                let retry_after = (frees_at - now)
                    .to_std()
                    .unwrap_or_default()
                    .max(Duration::from_secs(1));
                return Ok(Err(Refusal {
                    reason: RefusalReason::Quota,
                    retry_after,
                    message: format!(
                        "session {session:?} has used its {} background runs for this hour{}",
                        admission.session_hourly_quota,
                        match &run.spec.concurrency_key {
                            Some(k) => format!(" under concurrency_key {k:?}"),
                            None => String::new(),
                        }
                    ),
                }));
            }
        }
        Ok(Ok(()))
    }
}
