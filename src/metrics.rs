//! Prometheus metrics: every metric's name and HELP text in one place, the recorder, and
//! the helpers that record them. Labels are bounded: classes, statuses, outcomes, routes
//! and configured provider names, never run ids or client-chosen strings.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::dispatch::GateStatus;
use crate::limits::BreakerState;

pub const RUNS_ENQUEUED: &str = "sluice_runs_enqueued_total";
pub const RUNS_FINISHED: &str = "sluice_runs_finished_total";
pub const QUEUE_DEPTH: &str = "sluice_queue_depth";
pub const QUEUE_WAIT: &str = "sluice_queue_wait_seconds";
pub const RUN_DURATION: &str = "sluice_run_duration_seconds";
pub const ATTEMPTS: &str = "sluice_attempts_total";
pub const ATTEMPT_DURATION: &str = "sluice_attempt_duration_seconds";
pub const TIMEOUTS: &str = "sluice_timeouts_total";
pub const WORKER_SLOTS: &str = "sluice_worker_slots";
pub const SSE_SUBSCRIBERS: &str = "sluice_sse_subscribers";
pub const HTTP_REQUESTS: &str = "sluice_http_requests_total";
pub const HTTP_DURATION: &str = "sluice_http_request_duration_seconds";
pub const RESCUED: &str = "sluice_runs_rescued_total";
pub const DATABASE_UP: &str = "sluice_database_up";
pub const KEYS_AT_CAP: &str = "sluice_concurrency_keys_at_cap";
pub const DROPPED: &str = "sluice_background_dropped_total";
pub const ADMISSION_REFUSED: &str = "sluice_admission_refused_total";
pub const PROVIDER_TOKENS: &str = "sluice_provider_tokens_total";
pub const PROVIDER_RATE: &str = "sluice_provider_rate_rpm";
pub const PROVIDER_IN_FLIGHT: &str = "sluice_provider_in_flight";
pub const BREAKER_STATE: &str = "sluice_provider_breaker_state";
pub const LEADER: &str = "sluice_leader";
pub const REPLICAS: &str = "sluice_cluster_replicas";
pub const RETENTION_DELETED: &str = "sluice_retention_deleted_total";
pub const BREAKER_TRANSITIONS: &str = "sluice_provider_breaker_transitions_total";
pub const TENANT_ENQUEUED: &str = "sluice_tenant_runs_enqueued_total";
pub const TENANT_FINISHED: &str = "sluice_tenant_runs_finished_total";
pub const TENANT_RUNS: &str = "sluice_tenant_runs";
pub const TENANT_TOKENS: &str = "sluice_tenant_tokens_total";
pub const TENANT_SPEND: &str = "sluice_tenant_spend_micros_total";
/// Counters count whole units, so spend is counted in millionths of the price currency.
const SPEND_UNITS_PER_CURRENCY: f64 = 1_000_000.0;
pub const TENANT_REFUSED: &str = "sluice_tenant_refused_total";

/// Latency buckets (seconds) shared by the duration histograms: from 1 ms to 10 minutes.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once (later calls return the same handle) and
/// describes every metric.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .expect("static buckets are valid")
                .install_recorder()
                .expect("the metrics recorder is installed once");
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(RUNS_ENQUEUED, "Runs accepted by POST /enqueue, by class.");
    describe_counter!(
        RUNS_FINISHED,
        "Runs that reached a terminal status, by class and status."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        "Runs queued or running, by class and status (sampled at scrape)."
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time from a run becoming due to its attempt starting, by class."
    );
    describe_histogram!(
        RUN_DURATION,
        Unit::Seconds,
        "Time from enqueue to a terminal status, by class and status."
    );
    describe_counter!(
        ATTEMPTS,
        "Finished attempts by provider and outcome (completed or an error kind)."
    );
    describe_histogram!(
        ATTEMPT_DURATION,
        Unit::Seconds,
        "Duration of one attempt against the provider, by provider and outcome."
    );
    describe_counter!(
        TIMEOUTS,
        "Runs that ended timed_out, by origin (queue_wait or generation)."
    );
    describe_gauge!(
        WORKER_SLOTS,
        "Worker slots of this process, by state (busy or idle)."
    );
    describe_gauge!(SSE_SUBSCRIBERS, "Open server-sent event streams.");
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests by route, method and status code."
    );
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "HTTP request latency by route and method."
    );
    describe_counter!(
        RESCUED,
        "Runs whose lease expired and that were rescued, by resulting status."
    );
    describe_gauge!(
        DATABASE_UP,
        "1 when the last database round trip succeeded, else 0."
    );
    describe_gauge!(
        KEYS_AT_CAP,
        "Concurrency keys with as many runs in flight as their cap allows, by class (among the 100 busiest keys)."
    );
    describe_counter!(
        DROPPED,
        "Background runs dropped, by reason (stale: past their queue deadline)."
    );
    describe_counter!(
        ADMISSION_REFUSED,
        "Background enqueues refused by admission control, by reason."
    );
    describe_counter!(
        PROVIDER_TOKENS,
        "Tokens reported by providers, by provider and kind (prompt or completion)."
    );
    describe_gauge!(
        PROVIDER_RATE,
        "Requests per minute of a provider, by provider and which: current (the pace now), configured (rpm in the config), stated (the limit the provider states in its headers) or learned (the pace learned from refusals no header explained)."
    );
    describe_gauge!(
        PROVIDER_IN_FLIGHT,
        "Attempts in flight against a provider from this process."
    );
    describe_gauge!(
        BREAKER_STATE,
        "Circuit breaker state by provider: 0 closed, 1 half_open, 2 open."
    );
    describe_gauge!(
        LEADER,
        "1 while this process leads maintenance (rescuer, sweeper, retention), else 0."
    );
    describe_gauge!(
        REPLICAS,
        "Processes sharing this database that beat recently, this one included."
    );
    describe_counter!(
        RETENTION_DELETED,
        "Finished runs deleted by retention, by status."
    );
    describe_counter!(
        BREAKER_TRANSITIONS,
        "Circuit breaker transitions by provider and the state entered."
    );
    describe_tenants();
}

fn describe_tenants() {
    describe_counter!(
        TENANT_ENQUEUED,
        "Runs accepted for a configured tenant, by tenant."
    );
    describe_counter!(
        TENANT_FINISHED,
        "Runs of a configured tenant that reached a terminal status, by tenant and status."
    );
    describe_gauge!(
        TENANT_RUNS,
        "Runs of a configured tenant queued or running (in flight), by tenant and status (sampled at scrape)."
    );
    describe_counter!(
        TENANT_TOKENS,
        "Tokens providers reported for a configured tenant's runs, by tenant and kind (prompt or completion)."
    );
    describe_counter!(
        TENANT_SPEND,
        "What a configured tenant's reported tokens cost at the configured prices, in millionths of the price currency, by tenant."
    );
    describe_counter!(
        TENANT_REFUSED,
        "Enqueues of a configured tenant refused, by tenant and reason (a tenant limit or an admission rule)."
    );
}

pub fn run_enqueued(class: &'static str) {
    counter!(RUNS_ENQUEUED, "class" => class).increment(1);
}

pub fn run_finished(class: &'static str, status: &'static str, since_enqueue: Duration) {
    counter!(RUNS_FINISHED, "class" => class, "status" => status).increment(1);
    histogram!(RUN_DURATION, "class" => class, "status" => status).record(since_enqueue);
}

pub fn timed_out(origin: &'static str) {
    counter!(TIMEOUTS, "origin" => origin).increment(1);
}

pub fn queue_wait(class: &'static str, wait: Duration) {
    histogram!(QUEUE_WAIT, "class" => class).record(wait);
}

pub fn attempt(provider: &str, outcome: &'static str, took: Duration) {
    counter!(ATTEMPTS, "provider" => provider.to_string(), "outcome" => outcome).increment(1);
    histogram!(ATTEMPT_DURATION, "provider" => provider.to_string(), "outcome" => outcome)
        .record(took);
}

pub fn rescued(status: &'static str, n: u64) {
    counter!(RESCUED, "status" => status).increment(n);
}

pub fn queue_depth(class: &'static str, status: &'static str, n: i64) {
    gauge!(QUEUE_DEPTH, "class" => class, "status" => status).set(n as f64);
}

pub fn worker_slots(busy: usize, total: usize) {
    gauge!(WORKER_SLOTS, "state" => "busy").set(busy as f64);
    gauge!(WORKER_SLOTS, "state" => "idle").set(total.saturating_sub(busy) as f64);
}

pub fn sse_subscribers(n: usize) {
    gauge!(SSE_SUBSCRIBERS).set(n as f64);
}

pub fn database_up(up: bool) {
    gauge!(DATABASE_UP).set(if up { 1.0 } else { 0.0 });
}

pub fn http_request(route: String, method: String, status: u16, took: Duration) {
    counter!(HTTP_REQUESTS, "route" => route.clone(), "method" => method.clone(), "status" => status.to_string())
        .increment(1);
    histogram!(HTTP_DURATION, "route" => route, "method" => method).record(took);
}

pub fn tokens(provider: &str, prompt: Option<u32>, completion: Option<u32>) {
    if let Some(n) = prompt {
        counter!(PROVIDER_TOKENS, "provider" => provider.to_string(), "kind" => "prompt")
            .increment(u64::from(n));
    }
    if let Some(n) = completion {
        counter!(PROVIDER_TOKENS, "provider" => provider.to_string(), "kind" => "completion")
            .increment(u64::from(n));
    }
}

pub fn breaker_transition(provider: &str, to: BreakerState) {
    counter!(BREAKER_TRANSITIONS, "provider" => provider.to_string(), "to" => to.as_str())
        .increment(1);
}

/// Samples a provider's gate at scrape time: its breaker, attempts in flight and every
/// request rate it knows (a rate nobody configured, stated or learned is left out).
pub fn provider_state(gate: &GateStatus) {
    let provider = gate.provider.as_str();
    let state = match gate.breaker {
        BreakerState::Closed => 0.0,
        BreakerState::HalfOpen { .. } => 1.0,
        BreakerState::Open { .. } => 2.0,
    };
    gauge!(BREAKER_STATE, "provider" => provider.to_string()).set(state);
    gauge!(PROVIDER_IN_FLIGHT, "provider" => provider.to_string()).set(f64::from(gate.in_flight));
    for (which, rpm) in [
        ("current", gate.current_rpm),
        ("configured", gate.configured_rpm.map(f64::from)),
        ("stated", gate.stated_rpm),
        ("learned", gate.learned_rpm),
    ] {
        if let Some(rpm) = rpm {
            gauge!(PROVIDER_RATE, "provider" => provider.to_string(), "which" => which).set(rpm);
        }
    }
}

pub fn dropped(reason: &'static str) {
    counter!(DROPPED, "reason" => reason).increment(1);
}

pub fn admission_refused(reason: &'static str) {
    counter!(ADMISSION_REFUSED, "reason" => reason).increment(1);
}

pub fn keys_at_cap(class: &'static str, n: usize) {
    gauge!(KEYS_AT_CAP, "class" => class).set(n as f64);
}

pub fn leader(leads: bool) {
    gauge!(LEADER).set(if leads { 1.0 } else { 0.0 });
}

pub fn replicas(n: usize) {
    gauge!(REPLICAS).set(n as f64);
}

pub fn retained_away(status: &'static str, n: u64) {
    counter!(RETENTION_DELETED, "status" => status).increment(n);
}

pub fn tenant_enqueued(tenant: String) {
    counter!(TENANT_ENQUEUED, "tenant" => tenant).increment(1);
}

pub fn tenant_run_finished(tenant: String, status: &'static str) {
    counter!(TENANT_FINISHED, "tenant" => tenant, "status" => status).increment(1);
}

/// Samples a configured tenant's runs in flight at scrape time.
pub fn tenant_runs(tenant: &str, queued: i64, running: i64) {
    gauge!(TENANT_RUNS, "tenant" => tenant.to_string(), "status" => "queued").set(queued as f64);
    gauge!(TENANT_RUNS, "tenant" => tenant.to_string(), "status" => "running").set(running as f64);
}

pub fn tenant_tokens(tenant: String, prompt: Option<u32>, completion: Option<u32>, spend: f64) {
    for (kind, n) in [("prompt", prompt), ("completion", completion)] {
        if let Some(n) = n {
            counter!(TENANT_TOKENS, "tenant" => tenant.clone(), "kind" => kind)
                .increment(u64::from(n));
        }
    }
    let micros = (spend * SPEND_UNITS_PER_CURRENCY).round() as u64;
    counter!(TENANT_SPEND, "tenant" => tenant).increment(micros);
}

pub fn tenant_refused(tenant: String, reason: &'static str) {
    counter!(TENANT_REFUSED, "tenant" => tenant, "reason" => reason).increment(1);
}
