//! The values that cross the store boundary.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use super::StoreError;
use crate::run::{Class, ErrorKind, RunId, Status, TimeoutOrigin, WorkerId};

/// What a run asks of dispatch, fixed at enqueue: the part of a run that the run to
/// insert, the claimed run and the stored view all carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSpec {
    pub provider: String,
    pub model: Option<String>,
    pub class: Class,
    /// 1 (most urgent) … 10: the order within a class.
    pub priority: i16,
    pub tenant: Option<String>,
    /// Caps the in-flight runs that share it.
    pub concurrency_key: Option<String>,
    /// Stream the provider's token deltas onto the run's events.
    pub stream: bool,
    /// The per-attempt timeout asked for; adaptive when absent.
    pub timeout_ms: Option<i32>,
}

/// A run to insert. Payloads stay raw JSON: the server stores and forwards them without
/// re-encoding.
#[derive(Clone, Debug)]
pub struct NewRun {
    pub id: RunId,
    pub spec: RunSpec,
    pub request: Box<RawValue>,
    pub session: Option<String>,
    pub batch: Option<String>,
    pub idempotency_key: Option<String>,
    pub metadata: Option<Box<RawValue>>,
    pub max_attempts: i16,
    pub queue_deadline_at: Option<DateTime<Utc>>,
    /// Not started before this time (`run_at`, or now).
    pub due_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

impl NewRun {
    /// Idempotency keys are scoped to a tenant: two tenants may use the same key.
    pub fn idem_key(&self) -> Option<String> {
        self.idempotency_key
            .as_ref()
            .map(|k| format!("{}\u{1f}{}", self.spec.tenant.as_deref().unwrap_or(""), k))
    }
}

/// Runs an enqueue starts in its own commit (the fast path from enqueue into a free
/// worker slot): each flagged run that is created while no live run of its provider is
/// due ahead of it is written `running` with attempt 1 open under `worker`'s lease,
/// its `queued` and `started` events both in the log; the others are queued as usual.
#[derive(Clone, Copy, Debug)]
pub struct StartNow<'a> {
    pub worker: WorkerId,
    pub now: DateTime<Utc>,
    pub lease_until: DateTime<Utc>,
    /// One flag per run of the enqueue; only live runs may be flagged.
    pub runs: &'a [bool],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    Created(RunId),
    /// The idempotency key was taken: this is the run that took it.
    Existing(RunId),
}

impl Enqueued {
    pub fn id(self) -> RunId {
        match self {
            Enqueued::Created(id) | Enqueued::Existing(id) => id,
        }
    }
}

/// What may be claimed of one provider's runs now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderQuota {
    pub provider: String,
    /// Most attempts that may start now (what its rate limiter and breaker allow).
    pub max: usize,
    /// Most live runs of this provider in flight at once, across every process.
    pub live_cap: Option<u32>,
    /// Most background runs of this provider in flight at once, across every process.
    /// Background runs start only while no live run of the provider is due.
    pub background_cap: u32,
}

impl ProviderQuota {
    /// A quota that only bounds how many start now (no class caps).
    pub fn only(provider: impl Into<String>, max: usize) -> ProviderQuota {
        ProviderQuota {
            provider: provider.into(),
            max,
            live_cap: None,
            background_cap: u32::MAX,
        }
    }
}

/// Caps on runs sharing a `concurrency_key`, per class, across every process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyCaps {
    pub live: Option<u32>,
    pub background: Option<u32>,
}

/// Each tenant's share of the claim and its cap on runs in flight, from `[[tenants]]`. A
/// tenant not listed (open mode, a run with no tenant) has weight 1 and no cap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantShares {
    /// Relative shares of the claim while several tenants have runs waiting.
    pub weights: HashMap<String, u32>,
    /// Most runs of the tenant in flight at once, across every process.
    pub caps: HashMap<String, u32>,
}

impl TenantShares {
    /// The weight of `tenant` (`None`: the runs that name no tenant).
    pub fn weight(&self, tenant: Option<&str>) -> u32 {
        tenant
            .and_then(|t| self.weights.get(t))
            .copied()
            .unwrap_or(1)
            .max(1)
    }

    /// The in-flight cap of `tenant`, if it has one.
    pub fn cap(&self, tenant: Option<&str>) -> Option<u32> {
        tenant.and_then(|t| self.caps.get(t)).copied()
    }
}

/// What bounds a claim besides its size: each provider's quota and class caps, the caps
/// on keys, and the tenants' weights and caps.
#[derive(Clone, Copy, Debug)]
pub struct ClaimBounds<'a> {
    pub quotas: &'a [ProviderQuota],
    pub key_caps: KeyCaps,
    pub shares: &'a TenantShares,
}

/// A run handed to a worker for one attempt.
#[derive(Clone, Debug)]
pub struct ClaimedRun {
    pub id: RunId,
    /// 1-based number of the attempt just opened.
    pub attempt: u32,
    pub max_attempts: u32,
    pub spec: RunSpec,
    pub request: Box<RawValue>,
    pub created_at: DateTime<Utc>,
    /// When it became due (for the queue-wait measure).
    pub due_at: DateTime<Utc>,
}

#[derive(Clone, Debug)]
pub struct Completion {
    pub id: RunId,
    pub attempt: u32,
    pub finished_at: DateTime<Utc>,
    /// `None` when the model answered with tool calls or a refusal only.
    pub content: Option<String>,
    /// The tool calls (a JSON array in the OpenAI shape), when the model made any.
    pub tool_calls: Option<serde_json::Value>,
    pub refusal: Option<String>,
    /// Normalised: `stop`, `length`, `tool_calls` or `content_filter`.
    pub finish_reason: Option<String>,
    /// The provider's own finish value.
    pub raw_finish_reason: Option<String>,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunError {
    pub kind: ErrorKind,
    pub message: String,
    /// The provider's HTTP status, when there was one.
    pub status: Option<i32>,
}

/// What follows a failed attempt (decided by `run::after_failure`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureNext {
    RetryAt(DateTime<Utc>),
    Finish {
        status: Status,
        timeout_origin: Option<TimeoutOrigin>,
    },
}

#[derive(Clone, Debug)]
pub struct Failure {
    pub id: RunId,
    pub attempt: u32,
    pub finished_at: DateTime<Utc>,
    pub error: RunError,
    pub retry_after_ms: Option<i64>,
    pub next: FailureNext,
}

#[derive(Clone, Debug)]
pub enum CancelOutcome {
    /// It was queued or running and is now `cancelled`.
    Cancelled {
        was: Status,
    },
    AlreadyTerminal(Status),
    NotFound,
}

/// Everything known about a run, as `GET /runs/{id}` shows it.
#[derive(Clone, Debug)]
pub struct RunView {
    pub id: RunId,
    pub status: Status,
    pub spec: RunSpec,
    pub session: Option<String>,
    pub batch: Option<String>,
    pub metadata: Option<Box<RawValue>>,
    pub attempts: u32,
    pub max_attempts: u32,
    pub queue_deadline_at: Option<DateTime<Utc>>,
    pub due_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub timeout_origin: Option<TimeoutOrigin>,
    pub drop_reason: Option<String>,
    pub output: Option<Output>,
    pub prompt_tokens: Option<i32>,
    pub completion_tokens: Option<i32>,
    pub error: Option<RunError>,
    pub attempt_log: Vec<AttemptView>,
}

/// The assistant message of a completed run (see [`Completion`] for the fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub content: Option<String>,
    pub tool_calls: Option<serde_json::Value>,
    pub refusal: Option<String>,
    pub finish_reason: Option<String>,
    pub raw_finish_reason: Option<String>,
}

impl Output {
    /// The output of a completed run from its columns; `tool_calls` is the stored JSON
    /// text. Rows written before tool calls were kept have none of the new columns set.
    pub fn from_columns(
        content: Option<String>,
        tool_calls: Option<String>,
        refusal: Option<String>,
        finish_reason: Option<String>,
        raw_finish_reason: Option<String>,
    ) -> Result<Output, StoreError> {
        let tool_calls = tool_calls
            .map(|text| serde_json::from_str(&text))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("stored tool calls: {e}")))?;
        Ok(Output {
            content,
            tool_calls,
            refusal,
            finish_reason,
            raw_finish_reason,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptView {
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `completed`, an error kind, `released` (shutdown) or `abandoned` (lease expired);
    /// none while the attempt runs.
    pub outcome: Option<String>,
    pub status: Option<i32>,
    pub retry_after_ms: Option<i64>,
    pub error_message: Option<String>,
}

/// Attempt outcome recorded when a graceful shutdown gives the attempt back.
pub const OUTCOME_RELEASED: &str = "released";
/// Attempt outcome recorded when the worker's lease expired (the process died).
pub const OUTCOME_ABANDONED: &str = "abandoned";
pub const OUTCOME_COMPLETED: &str = "completed";

/// A lifecycle event, as written in the same transaction as the state change it reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Queued,
    Started,
    AttemptFailed,
    Completed,
    Failed,
    TimedOut,
    Cancelled,
    Dropped,
    /// A dead letter (a failed or timed-out run) was given a fresh attempt budget and
    /// queued again.
    Requeued,
    /// A batch was paused (a batch event: see `batch_model`).
    BatchPaused,
    BatchResumed,
    /// Every run of a batch has ended; its data holds the final counts.
    BatchFinished,
}

impl EventKind {
    pub const ALL: [EventKind; 12] = [
        EventKind::Queued,
        EventKind::Started,
        EventKind::AttemptFailed,
        EventKind::Completed,
        EventKind::Failed,
        EventKind::TimedOut,
        EventKind::Cancelled,
        EventKind::Dropped,
        EventKind::Requeued,
        EventKind::BatchPaused,
        EventKind::BatchResumed,
        EventKind::BatchFinished,
    ];

    /// The batch events, whose subject is a batch rather than a run.
    pub const BATCH: [EventKind; 3] = [
        EventKind::BatchPaused,
        EventKind::BatchResumed,
        EventKind::BatchFinished,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Queued => "queued",
            EventKind::Started => "started",
            EventKind::AttemptFailed => "attempt_failed",
            EventKind::Completed => "completed",
            EventKind::Failed => "failed",
            EventKind::TimedOut => "timed_out",
            EventKind::Cancelled => "cancelled",
            EventKind::Dropped => "dropped",
            EventKind::Requeued => "requeued",
            EventKind::BatchPaused => "batch_paused",
            EventKind::BatchResumed => "batch_resumed",
            EventKind::BatchFinished => "batch_finished",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn is_batch(self) -> bool {
        EventKind::BATCH.contains(&self)
    }

    /// The event that ends a run's stream.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            EventKind::Completed
                | EventKind::Failed
                | EventKind::TimedOut
                | EventKind::Cancelled
                | EventKind::Dropped
        )
    }

    /// The terminal event reporting a run that ended with `status`.
    pub fn terminal_for(status: Status) -> Option<EventKind> {
        match status {
            Status::Completed => Some(EventKind::Completed),
            Status::Failed => Some(EventKind::Failed),
            Status::TimedOut => Some(EventKind::TimedOut),
            Status::Cancelled => Some(EventKind::Cancelled),
            Status::Dropped => Some(EventKind::Dropped),
            Status::Queued | Status::Running => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunEvent {
    /// Position in the event log: increasing in commit order within one run.
    pub id: i64,
    pub run_id: RunId,
    pub kind: EventKind,
    pub at: DateTime<Utc>,
    pub attempt: Option<u32>,
    /// Kind-specific fields, a JSON object (error kind, HTTP status, retry time, …).
    pub data: Option<Box<RawValue>>,
    pub class: Class,
    pub tenant: Option<String>,
    pub batch: Option<String>,
}

/// Which events a dashboard stream wants.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub tenant: Option<String>,
    pub batch: Option<String>,
    pub class: Option<Class>,
}

impl EventFilter {
    /// A batch event has no class, so a class filter lets it through.
    pub fn matches(&self, e: &RunEvent) -> bool {
        self.class.is_none_or(|c| c == e.class || e.kind.is_batch())
            && self
                .tenant
                .as_deref()
                .is_none_or(|t| e.tenant.as_deref() == Some(t))
            && self
                .batch
                .as_deref()
                .is_none_or(|b| e.batch.as_deref() == Some(b))
    }
}

/// RFC 3339, UTC, millisecond precision: the one time format of the API, in run bodies,
/// event streams and the event data stored for them.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A run the sweeper ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    pub id: RunId,
    pub class: Class,
    /// `timed_out` (live, origin `queue_wait`) or `dropped` (background, reason `stale`).
    pub status: Status,
    pub created_at: DateTime<Utc>,
    pub tenant: Option<String>,
}

/// Runs of one concurrency key (and class) queued and in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyLoad {
    pub key: String,
    pub class: Class,
    pub running: i64,
    pub queued: i64,
}
