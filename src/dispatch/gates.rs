//! Per-provider admission, shared by every worker of this process: each provider's rate
//! limiter and circuit breaker. The producer asks the gates how many runs of each provider
//! may start now and claims only that many; each claimed attempt takes a ticket and reports
//! its outcome, which is how the limiter learns the provider's capacity and the breaker its
//! health. A run held back stays queued in the database: no slot, no attempt burned.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::Config;
use crate::limits::{
    Admission, CircuitBreaker, LimiterSnapshot, Outcome, Permit, RateLimiter, Transition, UNLIMITED,
};
use crate::providers::RateLimitInfo;
use crate::run::ErrorKind;
use crate::store::ProviderQuota;

/// Completion tokens assumed for a request that sets no `max_tokens`.
const DEFAULT_COMPLETION_ESTIMATE: u32 = 256;

struct Gate {
    limiter: RateLimiter,
    breaker: CircuitBreaker,
    live_cap: Option<u32>,
    background_cap: u32,
    timeouts: TimeoutRate,
    /// Durations of the most recent successful attempts, for the adaptive timeout.
    latencies: LatencyWindow,
}

/// Successful latencies kept per provider for the adaptive timeout.
const LATENCY_SAMPLES: usize = 200;

/// The adaptive attempt timeout settings (from `[queue]`).
#[derive(Clone, Debug)]
pub(super) struct TimeoutPolicy {
    pub default: std::time::Duration,
    pub floor: std::time::Duration,
    pub live_cap: std::time::Duration,
    pub background_cap: std::time::Duration,
    pub min_samples: u32,
    pub factor: f64,
    pub penalty: std::time::Duration,
}

impl TimeoutPolicy {
    pub(super) fn from_config(q: &crate::config::QueueConfig) -> TimeoutPolicy {
        TimeoutPolicy {
            default: q.attempt_timeout,
            floor: q.attempt_timeout_floor,
            live_cap: q.live_attempt_timeout_cap,
            background_cap: q.background_attempt_timeout_cap,
            min_samples: q.adaptive_timeout_min_samples,
            factor: q.adaptive_timeout_factor,
            penalty: q.adaptive_timeout_penalty,
        }
    }

    /// p95 of the window × factor + penalty × in flight, between the floor and the class
    /// cap; the configured default (capped) until there are enough samples.
    pub(super) fn timeout(
        &self,
        window: &mut LatencyWindow,
        in_flight: u32,
        class: crate::run::Class,
    ) -> std::time::Duration {
        let cap = match class {
            crate::run::Class::Live => self.live_cap,
            crate::run::Class::Background => self.background_cap,
        };
        if window.len() < self.min_samples.max(1) as usize {
            return self.default.min(cap);
        }
        let adaptive = window.p95().mul_f64(self.factor) + self.penalty * in_flight;
        adaptive.clamp(self.floor.min(cap), cap)
    }
}

/// How many new samples a cached p95 may miss before it is worked out again.
const P95_REFRESH: u32 = 16;

/// The most recent successful latencies of a provider, with their p95 kept between
/// calls: every attempt asks for its timeout, and ordering the whole window each time
/// was a measurable share of the dispatch path.
#[derive(Debug)]
pub(super) struct LatencyWindow {
    samples: std::collections::VecDeque<std::time::Duration>,
    /// The p95 and how many samples arrived since it was worked out.
    p95: Option<std::time::Duration>,
    since: u32,
    scratch: Vec<std::time::Duration>,
}

impl LatencyWindow {
    pub(super) fn new() -> LatencyWindow {
        LatencyWindow {
            samples: std::collections::VecDeque::with_capacity(LATENCY_SAMPLES),
            p95: None,
            since: 0,
            scratch: Vec::with_capacity(LATENCY_SAMPLES),
        }
    }

    pub(super) fn push(&mut self, took: std::time::Duration) {
        if self.samples.len() == LATENCY_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(took);
        self.since += 1;
    }

    fn len(&self) -> usize {
        self.samples.len()
    }

    /// The 95th percentile (nearest rank) of the window, which must not be empty.
    fn p95(&mut self) -> std::time::Duration {
        if let Some(p) = self.p95.filter(|_| self.since < P95_REFRESH) {
            return p;
        }
        self.scratch.clear();
        self.scratch.extend(self.samples.iter().copied());
        let index = ((self.scratch.len() as f64) * 0.95).ceil() as usize;
        let rank = index.clamp(1, self.scratch.len()) - 1;
        let (_, p, _) = self.scratch.select_nth_unstable(rank);
        let p = *p;
        self.p95 = Some(p);
        self.since = 0;
        p
    }
}

/// The share of recent attempts that timed out, over a window that decays with a
/// half-life (old attempts fade rather than drop off a cliff).
#[derive(Debug)]
struct TimeoutRate {
    half_life: std::time::Duration,
    timed_out: f64,
    total: f64,
    at: Instant,
}

impl TimeoutRate {
    fn decay(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        let keep = 0.5f64.powf(dt / self.half_life.as_secs_f64());
        self.timed_out *= keep;
        self.total *= keep;
        self.at = now;
    }

    fn record(&mut self, now: Instant, timed_out: bool) {
        self.decay(now);
        self.total += 1.0;
        if timed_out {
            self.timed_out += 1.0;
        }
    }

    /// The share, once the window holds at least `min_samples` (decayed) attempts.
    fn share(&mut self, now: Instant, min_samples: u32) -> Option<f64> {
        self.decay(now);
        (self.total >= f64::from(min_samples)).then(|| self.timed_out / self.total)
    }
}

/// Why a provider should not take background work now.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Unhealthy {
    Breaker {
        state: &'static str,
        retry_in: Option<std::time::Duration>,
    },
    Timeouts {
        share: f64,
    },
}

pub(super) struct Gates {
    by_name: HashMap<String, Mutex<Gate>>,
}

/// What an attempt holds from its provider's gate while it runs.
#[derive(Debug)]
pub(super) struct Ticket {
    permit: Permit,
    probe: bool,
}

/// The result of an attempt, as the gates need it.
pub(super) enum Report<'a> {
    Success {
        took: std::time::Duration,
        tokens: Option<u32>,
        rate_limits: Option<&'a RateLimitInfo>,
    },
    Failure {
        kind: ErrorKind,
        retry_after: Option<std::time::Duration>,
        rate_limits: Option<&'a RateLimitInfo>,
    },
    /// No verdict on the provider (cancelled, released at shutdown).
    Abandoned,
}

/// A provider's state for `/health` and the metrics.
#[derive(Clone, Debug)]
pub struct GateStatus {
    pub provider: String,
    pub breaker: &'static str,
    pub current_rpm: Option<f64>,
    pub configured_rpm: Option<u32>,
    pub current_tpm: Option<f64>,
    pub configured_tpm: Option<u32>,
    pub in_flight: u32,
    pub paused: bool,
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn log_transition(provider: &str, t: Option<Transition>) {
    if let Some(t) = t {
        tracing::warn!(
            provider,
            from = t.from.name(),
            to = t.to.name(),
            "circuit breaker transition"
        );
        crate::metrics::breaker_transition(provider, t.to.name());
    }
}

impl Gates {
    pub(super) fn new(config: &Config, saved: &[(String, String)]) -> Gates {
        let at = now();
        let mut by_name = HashMap::new();
        for p in &config.providers {
            let mut limiter = RateLimiter::new(p, at);
            if let Some((_, json)) = saved.iter().find(|(name, _)| *name == p.name) {
                match serde_json::from_str::<LimiterSnapshot>(json) {
                    Ok(snapshot) => {
                        limiter.restore(snapshot, at);
                        tracing::info!(provider = %p.name, current_rpm = ?limiter.current_rpm(), "restored the adapted rate");
                    }
                    Err(e) => {
                        tracing::warn!(provider = %p.name, error = %e, "ignoring unreadable saved limiter state")
                    }
                }
            }
            by_name.insert(
                p.name.clone(),
                Mutex::new(Gate {
                    limiter,
                    breaker: CircuitBreaker::new(&p.breaker),
                    live_cap: p.live_max_in_flight,
                    background_cap: p.background_max_in_flight,
                    timeouts: TimeoutRate {
                        half_life: config.admission.timeout_rate_half_life,
                        timed_out: 0.0,
                        total: 0.0,
                        at,
                    },
                    latencies: LatencyWindow::new(),
                }),
            );
        }
        Gates { by_name }
    }

    /// How many runs of each provider may be claimed now, each at most `limit`.
    pub(super) fn quotas(&self, limit: usize) -> Vec<ProviderQuota> {
        let at = now();
        let mut quotas = Vec::with_capacity(self.by_name.len());
        for (name, gate) in &self.by_name {
            let mut g = gate.lock().expect("gate lock");
            log_transition(name, g.breaker.poll(at));
            let n = g
                .limiter
                .available(at)
                .min(g.breaker.available(at))
                .min(UNLIMITED) as usize;
            quotas.push(ProviderQuota {
                provider: name.clone(),
                max: n.min(limit),
                live_cap: g.live_cap,
                background_cap: g.background_cap,
            });
        }
        quotas
    }

    /// Takes a start for one claimed attempt. `None` when the provider cannot take it after
    /// all (its token budget ran out between the quota and the claim, or another attempt
    /// took the breaker's probe): the caller gives the run back to the queue.
    pub(super) fn admit(&self, provider: &str, request: &RawValue) -> Option<Ticket> {
        let gate = self.by_name.get(provider)?;
        let at = now();
        let mut g = gate.lock().expect("gate lock");
        let (admission, t) = g.breaker.allow(at);
        log_transition(provider, t);
        let probe = match admission {
            Admission::Closed => false,
            Admission::Probe => true,
            Admission::Denied { .. } => return None,
        };
        match g.limiter.acquire(at, estimate_tokens(request)) {
            Ok(permit) => Some(Ticket { permit, probe }),
            Err(_) => {
                if probe {
                    log_transition(provider, g.breaker.probe_abandoned(at));
                }
                None
            }
        }
    }

    /// Whether a run of `provider` may be started without counting its class's runs in
    /// flight (the provider has no live cap).
    pub(super) fn uncapped_live(&self, provider: &str) -> bool {
        self.by_name
            .get(provider)
            .is_some_and(|g| g.lock().expect("gate lock").live_cap.is_none())
    }

    /// Hands back a ticket whose attempt never started: the provider saw nothing.
    pub(super) fn unused(&self, provider: &str, ticket: Ticket) {
        let Some(gate) = self.by_name.get(provider) else {
            return;
        };
        let at = now();
        let mut g = gate.lock().expect("gate lock");
        g.limiter.cancel(ticket.permit, at);
        if ticket.probe {
            log_transition(provider, g.breaker.probe_abandoned(at));
        }
    }

    /// Reports how the attempt went and hands its ticket back.
    pub(super) fn report(&self, provider: &str, ticket: Ticket, report: Report<'_>) {
        let Some(gate) = self.by_name.get(provider) else {
            return;
        };
        let at = now();
        let mut g = gate.lock().expect("gate lock");
        let before = g.limiter.current_rpm();
        match &report {
            Report::Success { took, .. } => {
                g.timeouts.record(at, false);
                g.latencies.push(*took);
            }
            Report::Failure { kind, .. } => g.timeouts.record(at, *kind == ErrorKind::Timeout),
            Report::Abandoned => {}
        }
        let (tokens, verdict) = match report {
            Report::Success {
                tokens,
                rate_limits,
                ..
            } => {
                g.limiter.on_success(at, rate_limits);
                (tokens, Some(Outcome::Success))
            }
            Report::Failure {
                kind,
                retry_after,
                rate_limits,
            } => {
                if kind == ErrorKind::RateLimited {
                    g.limiter.on_rate_limited(at, retry_after, rate_limits);
                } else if let Some(info) = rate_limits {
                    g.limiter.on_success(at, Some(info));
                }
                let verdict = match kind {
                    // The provider is in trouble: these count towards opening.
                    ErrorKind::Server | ErrorKind::Timeout | ErrorKind::Connection => {
                        Outcome::Failure
                    }
                    // Alive (busy, or our request was at fault): no verdict on its health.
                    ErrorKind::RateLimited
                    | ErrorKind::Client
                    | ErrorKind::InvalidOutput
                    | ErrorKind::BreakerOpen
                    | ErrorKind::Cancelled => Outcome::Neutral,
                };
                (None, Some(verdict))
            }
            Report::Abandoned => (None, None),
        };
        g.limiter.release(ticket.permit, at, tokens);
        let t = match verdict {
            Some(outcome) => g.breaker.record(at, outcome, rand::random::<f64>()),
            None if ticket.probe => g.breaker.probe_abandoned(at),
            None => None,
        };
        log_transition(provider, t);
        let after = g.limiter.current_rpm();
        if before != after
            && let (Some(b), Some(a)) = (before, after)
            && (a - b).abs() >= 1.0
        {
            tracing::info!(provider, from_rpm = b, to_rpm = a, "provider rate adapted");
        }
    }

    /// Whether `provider` is unhealthy for background work: its breaker is not closed, or
    /// its recent timeout share is above `threshold`.
    pub(super) fn unhealthy(
        &self,
        provider: &str,
        threshold: f64,
        min_samples: u32,
    ) -> Option<Unhealthy> {
        let gate = self.by_name.get(provider)?;
        let at = now();
        let mut g = gate.lock().expect("gate lock");
        log_transition(provider, g.breaker.poll(at));
        match g.breaker.state() {
            crate::limits::BreakerState::Closed => {}
            crate::limits::BreakerState::Open { until } => {
                return Some(Unhealthy::Breaker {
                    state: "open",
                    retry_in: Some(until.saturating_duration_since(at)),
                });
            }
            crate::limits::BreakerState::HalfOpen { .. } => {
                return Some(Unhealthy::Breaker {
                    state: "half_open",
                    retry_in: None,
                });
            }
        }
        match g.timeouts.share(at, min_samples) {
            Some(share) if share > threshold => Some(Unhealthy::Timeouts { share }),
            _ => None,
        }
    }

    /// The attempt timeout for a run of `provider` that names none.
    pub(super) fn attempt_timeout(
        &self,
        provider: &str,
        class: crate::run::Class,
        policy: &TimeoutPolicy,
    ) -> std::time::Duration {
        match self.by_name.get(provider) {
            Some(gate) => {
                let mut g = gate.lock().expect("gate lock");
                let in_flight = g.limiter.in_flight();
                policy.timeout(&mut g.latencies, in_flight, class)
            }
            None => policy.default,
        }
    }

    /// Each provider's adapted limiter state, to persist.
    pub(super) fn snapshots(&self) -> Vec<(String, String)> {
        self.by_name
            .iter()
            .filter_map(|(name, gate)| {
                let snapshot = gate.lock().expect("gate lock").limiter.snapshot();
                serde_json::to_string(&snapshot)
                    .ok()
                    .map(|json| (name.clone(), json))
            })
            .collect()
    }

    pub(super) fn status(&self) -> Vec<GateStatus> {
        let at = now();
        let mut out: Vec<GateStatus> = self
            .by_name
            .iter()
            .map(|(name, gate)| {
                let mut g = gate.lock().expect("gate lock");
                log_transition(name, g.breaker.poll(at));
                GateStatus {
                    provider: name.clone(),
                    breaker: g.breaker.state_name(),
                    current_rpm: g.limiter.current_rpm(),
                    configured_rpm: g.limiter.configured_rpm(),
                    current_tpm: g.limiter.current_tpm(),
                    configured_tpm: g.limiter.configured_tpm(),
                    in_flight: g.limiter.in_flight(),
                    paused: g.limiter.is_paused(at),
                }
            })
            .collect();
        out.sort_by(|a, b| a.provider.cmp(&b.provider));
        out
    }
}

/// What the tokens-per-minute budget is charged before the call: the prompt's size (about
/// four characters a token) plus the completion it may produce. Reconciled with the usage
/// the provider reports afterwards.
pub(super) fn estimate_tokens(request: &RawValue) -> u32 {
    #[derive(Deserialize)]
    struct Shape<'a> {
        #[serde(default, borrow)]
        messages: Vec<&'a RawValue>,
        #[serde(default)]
        max_tokens: Option<u32>,
        #[serde(default)]
        max_completion_tokens: Option<u32>,
    }
    match serde_json::from_str::<Shape>(request.get()) {
        Ok(shape) => {
            let prompt_chars: usize = shape.messages.iter().map(|m| m.get().len()).sum();
            let prompt = (prompt_chars / 4).max(1) as u32;
            let completion = shape
                .max_tokens
                .or(shape.max_completion_tokens)
                .unwrap_or(DEFAULT_COMPLETION_ESTIMATE);
            prompt.saturating_add(completion)
        }
        Err(_) => DEFAULT_COMPLETION_ESTIMATE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::Class;
    use std::time::Duration;

    fn policy() -> TimeoutPolicy {
        TimeoutPolicy {
            default: Duration::from_secs(60),
            floor: Duration::from_secs(5),
            live_cap: Duration::from_secs(30),
            background_cap: Duration::from_secs(120),
            min_samples: 20,
            factor: 2.0,
            penalty: Duration::from_millis(100),
        }
    }

    fn samples(ms: impl IntoIterator<Item = u64>) -> LatencyWindow {
        let mut w = LatencyWindow::new();
        for m in ms {
            w.push(Duration::from_millis(m));
        }
        w
    }

    #[test]
    fn the_timeout_adapts_to_recent_latency_within_floor_and_caps() {
        let p = policy();
        // Too few samples: the default, under the class cap.
        assert_eq!(
            p.timeout(&mut samples([1000; 5]), 0, Class::Live),
            Duration::from_secs(30)
        );
        assert_eq!(
            p.timeout(&mut samples([1000; 5]), 0, Class::Background),
            Duration::from_secs(60)
        );
        // p95 of 1..=100 s-ish: 95 of 100 samples at 4 s, 5 at 9 s → p95 4 s → 8 s + penalty.
        let mut s = samples(vec![4000; 95].into_iter().chain(vec![9000; 5]));
        assert_eq!(p.timeout(&mut s, 0, Class::Live), Duration::from_secs(8));
        assert_eq!(
            p.timeout(&mut s, 10, Class::Live),
            Duration::from_secs(9),
            "depth penalty"
        );
        // Fast providers still get the floor; slow ones hit the class cap.
        assert_eq!(
            p.timeout(&mut samples(vec![50; 40]), 0, Class::Live),
            Duration::from_secs(5)
        );
        assert_eq!(
            p.timeout(&mut samples(vec![40_000; 40]), 0, Class::Live),
            Duration::from_secs(30)
        );
        assert_eq!(
            p.timeout(&mut samples(vec![40_000; 40]), 0, Class::Background),
            Duration::from_secs(80),
            "the background cap is higher"
        );
    }

    #[test]
    fn the_kept_p95_follows_new_samples() {
        let p = policy();
        let mut w = samples(vec![50; 40]);
        assert_eq!(p.timeout(&mut w, 0, Class::Live), Duration::from_secs(5));
        // The provider slows down: within a refresh interval the timeout follows.
        for _ in 0..LATENCY_SAMPLES {
            w.push(Duration::from_secs(12));
            p.timeout(&mut w, 0, Class::Live);
        }
        assert_eq!(p.timeout(&mut w, 0, Class::Live), Duration::from_secs(24));
    }

    #[test]
    fn estimates_prompt_plus_completion() {
        let raw = RawValue::from_string(
            r#"{"messages":[{"role":"user","content":"0123456789012345678901234567890123456789"}],"max_tokens":100}"#
                .to_string(),
        )
        .unwrap();
        let n = estimate_tokens(&raw);
        assert!((110..=120).contains(&n), "{n}");
        let raw = RawValue::from_string(r#"{"messages":[]}"#.to_string()).unwrap();
        assert_eq!(estimate_tokens(&raw), 1 + DEFAULT_COMPLETION_ESTIMATE);
    }
}
