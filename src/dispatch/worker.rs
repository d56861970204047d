//! One attempt: call the provider under the attempt timeout and the abort signal, classify
//! the result, and hand it to the completer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::gates::{Report, Ticket};
use super::reservation::Reservation;
use super::{AbortReason, Shared};
use crate::providers::{AttemptRequest, DeltaSink, ProviderError, StreamDelta};
use chrono::{DateTime, Utc};

use crate::run::{AfterFailure, Class, ErrorKind, RunId, after_failure};
use crate::store::{ClaimedRun, Completion, Failure, FailureNext, RunError};

/// How early the runtime's timer may fire as measured by the standard clock.
const TIMER_RESOLUTION: Duration = Duration::from_millis(1);

/// A finished attempt on its way to the database, with what the metrics need of its run.
#[derive(Debug)]
pub(super) struct Finished {
    pub id: RunId,
    pub attempt: u32,
    pub class: Class,
    pub created_at: DateTime<Utc>,
    /// The run's tenant when it is configured, for the per-tenant metrics.
    pub tenant: Option<String>,
    pub result: AttemptResult,
    /// The worker slot, held until the result is written: a finished attempt whose result
    /// is still on its way to the database keeps its run `running` there, so letting the
    /// slot go earlier would let claims outrun the writes without bound.
    pub slot: Option<OwnedSemaphorePermit>,
}

#[derive(Debug)]
pub(super) enum AttemptResult {
    Completed(Completion),
    Failed(Failure),
    /// Given back unfinished (shutdown).
    Released {
        attempt: u32,
    },
    /// Nothing to write (cancelled: the store already has the final word).
    Forget,
}

enum Outcome {
    Output(crate::providers::ProviderOutput),
    Error(ProviderError),
    Aborted(AbortReason),
}

/// Gives a claimed run straight back to the queue (its provider could not take it after
/// all); the attempt it opened does not count.
pub(super) async fn give_back(shared: &Shared, run: ClaimedRun) {
    let finished = Finished {
        id: run.id,
        attempt: run.attempt,
        class: run.spec.class,
        created_at: run.created_at,
        tenant: shared.tenants.label(run.spec.tenant.as_deref()),
        result: AttemptResult::Released {
            attempt: run.attempt,
        },
        slot: None,
    };
    if shared.finished.send(finished).await.is_err() {
        tracing::error!(run_id = %run.id, "completer is gone; the lease will expire and the run be rescued");
    }
}

pub(super) async fn execute(shared: Arc<Shared>, run: ClaimedRun, reservation: Reservation) {
    let Reservation {
        slot,
        ticket,
        abort,
        reason,
    } = reservation;
    let span = tracing::info_span!(
        "attempt",
        run_id = %run.id,
        class = run.spec.class.as_str(),
        provider = %run.spec.provider,
        attempt = run.attempt,
        concurrency_key = run.spec.concurrency_key.as_deref().unwrap_or(""),
        tenant = run.spec.tenant.as_deref().unwrap_or(""),
    );
    let result = attempt(&shared, &run, ticket, &abort, &reason)
        .instrument(span)
        .await;
    let finished = Finished {
        id: run.id,
        attempt: run.attempt,
        class: run.spec.class,
        created_at: run.created_at,
        tenant: shared.tenants.label(run.spec.tenant.as_deref()),
        result,
        slot: Some(slot),
    };
    if shared.finished.send(finished).await.is_err() {
        tracing::error!(run_id = %run.id, "completer is gone; the lease will expire and the run be rescued");
    }
}

/// The attempt in named steps: call the provider, tell the gates and metrics how it went,
/// turn the outcome into what the completer writes.
async fn attempt(
    shared: &Shared,
    run: &ClaimedRun,
    ticket: Ticket,
    abort: &CancellationToken,
    reason: &Mutex<Option<AbortReason>>,
) -> AttemptResult {
    let limit = attempt_limit(shared, run);
    let started = std::time::Instant::now();
    let outcome = call(shared, run, &limit, abort, reason).await;
    let now = shared.clock.now();
    let took = started.elapsed();
    report(shared, run, ticket, &outcome, took, &limit);
    let elapsed_ms = took.as_millis() as u64;
    match outcome {
        Outcome::Output(out) => {
            tracing::info!(elapsed_ms, "attempt completed");
            AttemptResult::Completed(Completion {
                id: run.id,
                attempt: run.attempt,
                finished_at: now,
                content: out.content,
                tool_calls: (!out.tool_calls.is_empty())
                    .then(|| serde_json::to_value(&out.tool_calls).expect("tool calls serialise")),
                refusal: out.refusal,
                finish_reason: out.finish_reason.map(|r| r.as_str().to_string()),
                raw_finish_reason: out.raw_finish_reason,
                prompt_tokens: out.prompt_tokens.map(|t| t.min(i32::MAX as u32) as i32),
                completion_tokens: out.completion_tokens.map(|t| t.min(i32::MAX as u32) as i32),
            })
        }
        Outcome::Aborted(AbortReason::Cancelled) => {
            tracing::info!(elapsed_ms, "attempt aborted: run cancelled");
            AttemptResult::Forget
        }
        Outcome::Aborted(AbortReason::LeaseLost) => {
            tracing::warn!(
                elapsed_ms,
                "attempt aborted: its lease is gone (cancelled, rescued or ended elsewhere)"
            );
            AttemptResult::Forget
        }
        Outcome::Aborted(AbortReason::Shutdown) => {
            tracing::info!(elapsed_ms, "attempt aborted: shutting down, run released");
            AttemptResult::Released {
                attempt: run.attempt,
            }
        }
        Outcome::Error(e) => AttemptResult::Failed(failure(shared, run, e, now, elapsed_ms)),
    }
}

/// The timeout an attempt runs under.
struct Limit<'a> {
    duration: Duration,
    /// Whether it is the adaptive one (the run named no `timeout_ms`).
    adaptive: bool,
    /// The model whose latency window the adaptive timeout comes from and learns into.
    model: &'a str,
}

/// The run's own timeout, or the adaptive one of its provider and model.
fn attempt_limit<'a>(shared: &'a Shared, run: &'a ClaimedRun) -> Limit<'a> {
    let model = match (&run.spec.model, shared.providers.get(&run.spec.provider)) {
        (Some(m), _) => m.as_str(),
        (None, Some(entry)) => entry.default_model.as_str(),
        (None, None) => "",
    };
    match run.spec.timeout_ms {
        Some(ms) => Limit {
            duration: Duration::from_millis(ms.max(1) as u64),
            adaptive: false,
            model,
        },
        None => Limit {
            duration: shared.gates.attempt_timeout(
                &run.spec.provider,
                model,
                run.spec.class,
                &shared.settings.timeouts,
            ),
            adaptive: true,
            model,
        },
    }
}

/// Calls the provider under the attempt's `limit`, streaming deltas onto the run's events
/// when asked, until it answers or `abort` fires.
async fn call(
    shared: &Shared,
    run: &ClaimedRun,
    limit: &Limit<'_>,
    abort: &CancellationToken,
    reason: &Mutex<Option<AbortReason>>,
) -> Outcome {
    let Some(entry) = shared.providers.get(&run.spec.provider) else {
        return Outcome::Error(ProviderError::new(
            ErrorKind::Client,
            format!(
                "provider {:?} is not configured on this server",
                run.spec.provider
            ),
        ));
    };
    let deltas = run.spec.stream.then(|| {
        let hub = shared.store.hub().clone();
        let (id, attempt) = (run.id, run.attempt);
        let sink: DeltaSink = Arc::new(move |delta: StreamDelta<'_>| match delta {
            StreamDelta::Text(text) => hub.publish_delta(id, attempt, text),
            StreamDelta::ToolCall(piece) => hub.publish_tool_call_delta(id, attempt, piece.clone()),
        });
        sink
    });
    let call = entry.imp.call(AttemptRequest {
        run_id: run.id,
        attempt: run.attempt,
        model: limit.model,
        request: &run.request,
        deltas,
    });
    tokio::select! {
        biased;
        _ = abort.cancelled() => {
            let why = reason.lock().expect("reason lock").unwrap_or(AbortReason::Shutdown);
            Outcome::Aborted(why)
        }
        result = tokio::time::timeout(limit.duration, call) => match result {
            Ok(Ok(output)) => Outcome::Output(output),
            Ok(Err(e)) => Outcome::Error(e),
            Err(_) => Outcome::Error(ProviderError::new(
                ErrorKind::Timeout,
                format!("attempt exceeded its {} ms timeout", limit.duration.as_millis()),
            )),
        },
    }
}

/// Feeds the outcome to the metrics, to the provider's limiter and breaker (which takes
/// the ticket back) and to its adaptive timeout, and ends the run's delta stream.
fn report(
    shared: &Shared,
    run: &ClaimedRun,
    ticket: Ticket,
    outcome: &Outcome,
    took: Duration,
    limit: &Limit<'_>,
) {
    let outcome_name = match outcome {
        Outcome::Output(_) => "completed",
        Outcome::Error(e) => e.kind.as_str(),
        Outcome::Aborted(AbortReason::Cancelled) => "cancelled",
        Outcome::Aborted(AbortReason::Shutdown) => "released",
        Outcome::Aborted(AbortReason::LeaseLost) => "lease_lost",
    };
    crate::metrics::attempt(&run.spec.provider, outcome_name, took);
    if run.spec.stream {
        shared.store.hub().end_deltas(run.id, run.attempt);
    }
    let report = match outcome {
        Outcome::Output(out) => {
            crate::metrics::tokens(&run.spec.provider, out.prompt_tokens, out.completion_tokens);
            if let Some(tenant) = shared.tenants.label(run.spec.tenant.as_deref()) {
                let model = run.spec.model.as_deref().unwrap_or("");
                let (prompt, completion) = (out.prompt_tokens, out.completion_tokens);
                let spend = shared.tenants.cost(
                    &run.spec.provider,
                    model,
                    i64::from(prompt.unwrap_or(0)),
                    i64::from(completion.unwrap_or(0)),
                );
                crate::metrics::tenant_tokens(tenant, prompt, completion, spend);
            }
            Report::Success {
                took,
                tokens: match (out.prompt_tokens, out.completion_tokens) {
                    (None, None) => None,
                    (p, c) => Some(p.unwrap_or(0).saturating_add(c.unwrap_or(0))),
                },
                rate_limits: out.rate_limits.as_ref(),
            }
        }
        Outcome::Error(e) => Report::Failure {
            kind: e.kind,
            retry_after: e.retry_after,
            rate_limits: e.rate_limits.as_ref(),
            // Only the attempt's own timeout: a connect timeout, say, ends sooner and
            // says nothing about how long an answer takes.
            adaptive_timeout: (e.kind == ErrorKind::Timeout
                && limit.adaptive
                && took + TIMER_RESOLUTION >= limit.duration)
                .then_some(limit.duration),
        },
        Outcome::Aborted(_) => Report::Abandoned,
    };
    shared.gates.report(
        &run.spec.provider,
        limit.model,
        ticket,
        report,
        &shared.settings.timeouts,
    );
}

/// A failed attempt: retried after a backoff (the provider's delay when it gave one), or
/// the run's end when the error is final or this was its last attempt.
fn failure(
    shared: &Shared,
    run: &ClaimedRun,
    e: ProviderError,
    now: DateTime<Utc>,
    elapsed_ms: u64,
) -> Failure {
    let next = after_failure(
        run.attempt,
        run.max_attempts,
        e.kind,
        e.retry_after,
        shared.settings.backoff_of(&run.spec.provider),
        rand::random::<f64>(),
    );
    let next = match next {
        AfterFailure::Retry { delay } => {
            let at = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::days(1));
            tracing::warn!(
                elapsed_ms,
                kind = e.kind.as_str(),
                status = e.status,
                retry_in_ms = delay.as_millis() as u64,
                error = %e.message,
                "attempt failed; retry scheduled"
            );
            FailureNext::RetryAt(at)
        }
        AfterFailure::Finish {
            status,
            timeout_origin,
        } => {
            tracing::warn!(
                elapsed_ms,
                kind = e.kind.as_str(),
                status = e.status,
                final_status = status.as_str(),
                error = %e.message,
                "attempt failed; run finished"
            );
            FailureNext::Finish {
                status,
                timeout_origin,
            }
        }
    };
    Failure {
        id: run.id,
        attempt: run.attempt,
        finished_at: now,
        retry_after_ms: e
            .retry_after
            .map(|d| d.as_millis().min(i64::MAX as u128) as i64),
        error: RunError {
            kind: e.kind,
            message: e.message,
            status: e.status.map(i32::from),
        },
        next,
    }
}
