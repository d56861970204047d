//! The values of batches and listings that cross the store boundary, the rule deciding
//! whether a pause, resume or cancel applies (written once for both backends), and the
//! batch events' form in the event log.
//!
//! Batch events live in the run event log, so they share its ids (`Last-Event-ID`), its
//! commit-time notification and the event pump that carries it to every process: their
//! `run_id` column holds the batch's id (a UUIDv7 too), `batch` names the batch, and
//! their `class` column is 0 and means nothing (filters ignore it for them).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use uuid::Uuid;

use super::model::{EventKind, NewRun, RunEvent};
use crate::run::{Class, RunId, Status};

/// A batch's identity: a UUIDv7, stored as its text in `batches.id` and `runs.batch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BatchId(pub Uuid);

impl BatchId {
    pub fn new() -> BatchId {
        BatchId(Uuid::now_v7())
    }

    /// The text stored in `batches.id` and in each of its runs' `batch`.
    pub fn text(self) -> String {
        self.0.hyphenated().to_string()
    }
}

impl Default for BatchId {
    fn default() -> Self {
        BatchId::new()
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for BatchId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(BatchId)
    }
}

/// A batch to insert with all its runs, in one transaction.
#[derive(Clone, Debug)]
pub struct NewBatch {
    pub id: BatchId,
    pub tenant: Option<String>,
    pub metadata: Option<Box<RawValue>>,
    /// A retried submission with the same key (and tenant) answers with the first batch.
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Each names this batch in `batch`.
    pub runs: Vec<NewRun>,
}

impl NewBatch {
    /// Scoped to the tenant, like a run's idempotency key.
    pub fn idem_key(&self) -> Option<String> {
        self.idempotency_key
            .as_ref()
            .map(|k| format!("{}\u{1f}{}", self.tenant.as_deref().unwrap_or(""), k))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchCreated {
    Created(BatchId),
    /// The idempotency key was taken by this batch; nothing was written.
    Existing(BatchId),
}

/// A batch's own row.
#[derive(Clone, Debug)]
pub struct BatchView {
    pub id: BatchId,
    pub tenant: Option<String>,
    pub metadata: Option<Box<RawValue>>,
    pub run_count: i64,
    pub created_at: DateTime<Utc>,
    pub paused: bool,
    pub cancelled_at: Option<DateTime<Utc>>,
    /// Set by the sweep that sent `batch_finished`.
    pub finished_at: Option<DateTime<Utc>>,
    /// The last pause, resume or cancel.
    pub toggled_at: Option<DateTime<Utc>>,
}

/// Where a batch's runs stand, read in one statement so the counts add up.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchProgress {
    /// Runs per status, every status listed (zero included), in [`Status::ALL`] order.
    pub counts: Vec<(Status, i64)>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub first_started_at: Option<DateTime<Utc>>,
    pub last_finished_at: Option<DateTime<Utc>>,
}

impl BatchProgress {
    pub fn total(&self) -> i64 {
        self.counts.iter().map(|(_, n)| n).sum()
    }

    pub fn count(&self, status: Status) -> i64 {
        self.counts
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    }

    /// Whether every run has ended.
    pub fn all_ended(&self) -> bool {
        self.count(Status::Queued) + self.count(Status::Running) == 0
    }
}

/// A pause or a resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchToggle {
    Pause,
    Resume,
}

impl BatchToggle {
    fn paused(self) -> bool {
        self == BatchToggle::Pause
    }

    pub(super) fn event(self) -> EventKind {
        match self {
            BatchToggle::Pause => EventKind::BatchPaused,
            BatchToggle::Resume => EventKind::BatchResumed,
        }
    }
}

/// Why a batch takes no more pauses, resumes or cancels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchClosed {
    Cancelled,
    /// Every run has ended.
    Finished,
}

/// What a pause, resume or cancel did.
#[derive(Clone, Debug)]
pub enum ToggleOutcome {
    NotFound,
    /// Applied; the batch as it is now.
    Applied(BatchView),
    /// The batch already was in that state; nothing was written.
    Unchanged(BatchView),
    /// Too soon after the last toggle; try again after this long.
    TooSoon(Duration),
    Closed(BatchClosed),
}

/// What a batch cancel did.
#[derive(Clone, Debug)]
pub enum BatchCancelOutcome {
    NotFound,
    Closed(BatchClosed),
    /// The batch is cancelled; these runs (and their classes) were ended, and `running`
    /// of them had an attempt in flight (aborted wherever it runs).
    Cancelled {
        ended: Vec<(RunId, Class)>,
        running: Vec<RunId>,
    },
}

/// The state a toggle is decided on, read under the batch's row lock.
#[derive(Clone, Debug)]
pub(super) struct ToggleState {
    pub paused: bool,
    pub cancelled: bool,
    /// Some run is still queued or running.
    pub open: bool,
    pub toggled_at: Option<DateTime<Utc>>,
}

/// What to do with a requested toggle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ToggleDecision {
    Apply,
    Unchanged,
    TooSoon(Duration),
    Closed(BatchClosed),
}

impl ToggleDecision {
    /// What a decision that writes nothing answers; `None` for [`ToggleDecision::Apply`].
    pub(super) fn unwritten(self, view: BatchView) -> Option<ToggleOutcome> {
        match self {
            ToggleDecision::Apply => None,
            ToggleDecision::Unchanged => Some(ToggleOutcome::Unchanged(view)),
            ToggleDecision::TooSoon(wait) => Some(ToggleOutcome::TooSoon(wait)),
            ToggleDecision::Closed(why) => Some(ToggleOutcome::Closed(why)),
        }
    }
}

/// The rule for pauses and resumes, for both backends: a cancelled or finished batch takes
/// none; asking for the state it is in changes nothing; otherwise the last toggle must be
/// at least `cooldown` ago.
pub(super) fn decide_toggle(
    state: &ToggleState,
    toggle: BatchToggle,
    now: DateTime<Utc>,
    cooldown: Duration,
) -> ToggleDecision {
    if let Some(closed) = closed(state) {
        return ToggleDecision::Closed(closed);
    }
    if state.paused == toggle.paused() {
        return ToggleDecision::Unchanged;
    }
    let cooldown = chrono::Duration::from_std(cooldown).unwrap_or(chrono::Duration::MAX);
    match state
        .toggled_at
        .and_then(|t| t.checked_add_signed(cooldown))
    {
        Some(ready) if ready > now => {
            ToggleDecision::TooSoon((ready - now).to_std().unwrap_or_default())
        }
        _ => ToggleDecision::Apply,
    }
}

/// Why a batch takes no more toggles, if it does not. A cancel is never held back by the
/// cooldown: it is final, so it cannot flap, and stopping spend should not wait.
pub(super) fn closed(state: &ToggleState) -> Option<BatchClosed> {
    if state.cancelled {
        Some(BatchClosed::Cancelled)
    } else if !state.open {
        Some(BatchClosed::Finished)
    } else {
        None
    }
}

/// A batch event about `batch`, as the log stores it (id 0 until written).
pub(super) fn batch_event(
    batch: BatchId,
    tenant: Option<String>,
    kind: EventKind,
    at: DateTime<Utc>,
    data: Option<Box<RawValue>>,
) -> RunEvent {
    RunEvent {
        id: 0,
        run_id: RunId(batch.0),
        kind,
        at,
        attempt: None,
        data,
        // Meaningless for a batch event; see the module doc.
        class: Class::Live,
        tenant,
        batch: Some(batch.text()),
    }
}

/// The `data` of `batch_finished`: the final counts by status and the tokens used.
pub(super) fn batch_finished_data(progress: &BatchProgress) -> Box<RawValue> {
    let counts: serde_json::Map<String, serde_json::Value> = progress
        .counts
        .iter()
        .map(|(s, n)| (s.as_str().to_string(), (*n).into()))
        .collect();
    serde_json::value::to_raw_value(&serde_json::json!({
        "run_count": progress.total(),
        "counts": counts,
        "prompt_tokens": progress.prompt_tokens,
        "completion_tokens": progress.completion_tokens,
    }))
    .expect("batch event data serialises")
}

/// Which runs a listing wants; every filter given must hold.
#[derive(Clone, Debug, Default)]
pub struct RunFilter {
    pub tenant: Option<String>,
    pub status: Option<Status>,
    pub class: Option<Class>,
    pub provider: Option<String>,
    pub batch: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

/// Which batches a listing wants.
#[derive(Clone, Debug, Default)]
pub struct BatchFilter {
    pub tenant: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

/// Where a newest-first page starts: strictly after (older than) this row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageAfter {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(paused: bool, toggled_ago_s: Option<i64>, now: DateTime<Utc>) -> ToggleState {
        ToggleState {
            paused,
            cancelled: false,
            open: true,
            toggled_at: toggled_ago_s.map(|s| now - chrono::Duration::seconds(s)),
        }
    }

    #[test]
    fn toggles_wait_out_the_cooldown_and_closed_batches_take_none() {
        let now = Utc::now();
        let cool = Duration::from_secs(5);
        let fresh = state(false, None, now);
        assert_eq!(
            decide_toggle(&fresh, BatchToggle::Pause, now, cool),
            ToggleDecision::Apply
        );
        assert_eq!(
            decide_toggle(&fresh, BatchToggle::Resume, now, cool),
            ToggleDecision::Unchanged
        );
        let recent = state(true, Some(2), now);
        assert_eq!(
            decide_toggle(&recent, BatchToggle::Resume, now, cool),
            ToggleDecision::TooSoon(Duration::from_secs(3))
        );
        let old = state(true, Some(5), now);
        assert_eq!(
            decide_toggle(&old, BatchToggle::Resume, now, cool),
            ToggleDecision::Apply
        );
        let cancelled = ToggleState {
            cancelled: true,
            ..old.clone()
        };
        assert_eq!(
            decide_toggle(&cancelled, BatchToggle::Resume, now, cool),
            ToggleDecision::Closed(BatchClosed::Cancelled)
        );
        let done = ToggleState { open: false, ..old };
        assert_eq!(
            decide_toggle(&done, BatchToggle::Resume, now, cool),
            ToggleDecision::Closed(BatchClosed::Finished)
        );
    }
}
