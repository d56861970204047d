//! Per-provider admission, shared by every worker of this process: each provider's rate
//! limiter, circuit breaker, timeout share and recent latencies (pure logic, in
//! `crate::limits`) behind one lock, fed the current time here. The producer asks the gates how many runs of each provider
//! may start now and claims only that many; each claimed attempt takes a ticket and reports
//! its outcome, which is how the limiter learns the provider's capacity and the breaker its
//! health. A run held back stays queued in the database: no slot, no attempt burned.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;

use crate::config::Config;
use crate::limits::{
    Admission, BreakerState, CircuitBreaker, LimiterSnapshot, ModelWindows, Outcome, Permit,
    RateLimitInfo, RateLimiter, TimeoutPolicy, TimeoutRate, Transition, UNLIMITED, estimate_tokens,
};
use crate::run::{Class, ErrorKind};
use crate::store::ProviderQuota;

struct Gate {
    limiter: RateLimiter,
    breaker: CircuitBreaker,
    live_cap: Option<u32>,
    background_cap: u32,
    timeouts: TimeoutRate,
    /// Per model, the most recent successful latencies and the stretch timeouts left, for
    /// the adaptive timeout.
    latencies: ModelWindows,
}

/// Why a provider should not take background work now.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Unhealthy {
    Breaker {
        state: BreakerState,
        retry_in: Option<Duration>,
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
        took: Duration,
        tokens: Option<u32>,
        rate_limits: Option<&'a RateLimitInfo>,
    },
    Failure {
        kind: ErrorKind,
        retry_after: Option<Duration>,
        rate_limits: Option<&'a RateLimitInfo>,
        /// The adaptive timeout the attempt ran out of (a timeout under a run's own
        /// `timeout_ms` says nothing about the provider's pace).
        adaptive_timeout: Option<Duration>,
    },
    /// No verdict on the provider (cancelled, released at shutdown).
    Abandoned,
}

/// A provider's state for `/health` and the metrics.
#[derive(Clone, Debug)]
pub struct GateStatus {
    pub provider: String,
    pub breaker: BreakerState,
    pub current_rpm: Option<f64>,
    pub configured_rpm: Option<u32>,
    /// The requests-per-minute limit the provider states in its headers, when it does.
    pub stated_rpm: Option<f64>,
    /// The pace learned from refusals no header explained, when there is one.
    pub learned_rpm: Option<f64>,
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
            from = t.from.as_str(),
            to = t.to.as_str(),
            "circuit breaker transition"
        );
        crate::metrics::breaker_transition(provider, t.to);
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
                    timeouts: TimeoutRate::new(config.admission.timeout_rate_half_life, at),
                    latencies: ModelWindows::new(),
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
            // A pace learned from refusals rises with time, not with answers.
            g.limiter.refresh(at);
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

    /// Reports how an attempt with `model` went and hands its ticket back; `policy` is how
    /// the adaptive timeout learns from it.
    pub(super) fn report(
        &self,
        provider: &str,
        model: &str,
        ticket: Ticket,
        report: Report<'_>,
        policy: &TimeoutPolicy,
    ) {
        let Some(gate) = self.by_name.get(provider) else {
            return;
        };
        let at = now();
        let mut g = gate.lock().expect("gate lock");
        let before = g.limiter.current_rpm();
        match &report {
            Report::Success { took, .. } => {
                g.timeouts.record(at, false);
                policy.record_success(g.latencies.of(model), *took);
            }
            Report::Failure {
                kind,
                adaptive_timeout,
                ..
            } => {
                g.timeouts.record(at, *kind == ErrorKind::Timeout);
                if let Some(limit) = adaptive_timeout
                    && let Some(stretch) = policy.record_timeout(g.latencies.of(model), *limit)
                {
                    tracing::info!(
                        provider,
                        model,
                        timed_out_ms = limit.as_millis() as u64,
                        stretch_ms = stretch.as_millis() as u64,
                        "adaptive attempt timeout stretched by a timeout"
                    );
                }
            }
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
                ..
            } => {
                if kind == ErrorKind::RateLimited {
                    g.limiter
                        .on_refused(at, &ticket.permit, retry_after, rate_limits);
                } else if let Some(info) = rate_limits {
                    // Headers on a failure: followed, but no success to grow slow start by.
                    g.limiter.on_headers(at, info);
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
        let state = g.breaker.state();
        if state != BreakerState::Closed {
            let retry_in = match state {
                BreakerState::Open { until } => Some(until.saturating_duration_since(at)),
                // Half-open: the probe in flight decides, at no time known in advance.
                _ => None,
            };
            return Some(Unhealthy::Breaker { state, retry_in });
        }
        match g.timeouts.share(at, min_samples) {
            Some(share) if share > threshold => Some(Unhealthy::Timeouts { share }),
            _ => None,
        }
    }

    /// The attempt timeout for a run of `provider` and `model` that names none.
    pub(super) fn attempt_timeout(
        &self,
        provider: &str,
        model: &str,
        class: Class,
        policy: &TimeoutPolicy,
    ) -> Duration {
        match self.by_name.get(provider) {
            Some(gate) => {
                let mut g = gate.lock().expect("gate lock");
                let in_flight = g.limiter.in_flight();
                policy.timeout(g.latencies.of(model), in_flight, class)
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
                    breaker: g.breaker.state(),
                    current_rpm: g.limiter.current_rpm(),
                    stated_rpm: g.limiter.stated_rpm(),
                    learned_rpm: g.limiter.learned_rpm(),
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
