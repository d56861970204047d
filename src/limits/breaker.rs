//! The per-provider circuit breaker.
//!
//! ```text
//!            failure_threshold consecutive failures
//!   closed ──────────────────────────────────────────▶ open { until }
//!     ▲                                                 │  ▲
//!     │ success                     now ≥ until (allow) │  │ failure
//!     │                                                 ▼  │
//!     └───────────────────────────────────────── half_open { probe_in_flight }
//! ```
//!
//! Only outcomes that mean provider trouble count: 5xx, timeouts, connection errors are a
//! [`Outcome::Failure`]. A 429 means "alive but busy", and client errors and cancellations
//! say nothing about the provider's health: they are [`Outcome::Neutral`], which neither
//! counts towards opening nor resets the count.
//!
//! Half-open admits exactly one probe; its result decides (success closes, failure opens
//! again with a new jittered interval). A probe that ends with no verdict (a neutral outcome,
//! or [`CircuitBreaker::probe_abandoned`] when it ends with no outcome at all) frees the
//! probe slot, so the breaker can never wedge half-open.
//!
//! Results are evidence whichever attempt they come from: an attempt started while closed
//! that answers during half-open decides just like the probe. Results arriving while open
//! come from attempts admitted before it opened; they neither close it nor extend it.

use std::time::{Duration, Instant};

use super::UNLIMITED;
use crate::config::BreakerConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Refusing attempts until `until`, then letting one probe through.
    Open {
        until: Instant,
    },
    HalfOpen {
        probe_in_flight: bool,
    },
}

impl BreakerState {
    /// `"closed"`, `"open"` or `"half_open"`: the name used in `/health`, metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen { .. } => "half_open",
        }
    }
}

/// What an attempt's result says about the provider's health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Provider trouble: a 5xx (or 408/409/529), a timeout, a connection error.
    Failure,
    /// No verdict: a 429, another 4xx client error, a cancellation.
    Neutral,
}

/// May an attempt start?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Closed,
    /// The one half-open probe: go ahead, and report its result.
    Probe,
    /// Not now: until the open interval ends, or (`None`) until the probe in flight reports.
    Denied { until: Option<Instant> },
}

/// A change of state, for the caller to log and count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
}

#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: BreakerState,
    /// Failures since the last success while closed; neutral outcomes leave it alone.
    consecutive_failures: u32,
}

impl CircuitBreaker {
    pub fn new(config: &BreakerConfig) -> Self {
        CircuitBreaker {
            config: config.clone(),
            state: BreakerState::Closed,
            consecutive_failures: 0,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// How many attempts may start now, for the producer: [`UNLIMITED`] when closed, 1 when
    /// a probe may go (half-open with the slot free, or open and due), 0 otherwise.
    pub fn available(&self, now: Instant) -> u32 {
        match self.state {
            BreakerState::Closed => UNLIMITED,
            BreakerState::Open { until } if now >= until => 1,
            BreakerState::Open { .. } => 0,
            BreakerState::HalfOpen { probe_in_flight } => u32::from(!probe_in_flight),
        }
    }

    /// Moves open to half-open once the open interval is over. `allow` and
    /// `probe_abandoned` do this themselves; call it to report an up-to-date state.
    pub fn poll(&mut self, now: Instant) -> Option<Transition> {
        match self.state {
            BreakerState::Open { until } if now >= until => self.move_to(BreakerState::HalfOpen {
                probe_in_flight: false,
            }),
            _ => None,
        }
    }

    /// Asks to start one attempt. In half-open the first caller gets the probe and every
    /// other is denied until its result (or abandonment) is reported. Also returns the
    /// open → half-open transition when this call made it.
    pub fn allow(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        let transition = self.poll(now);
        let admission = match self.state {
            BreakerState::Closed => Admission::Closed,
            BreakerState::Open { until } => Admission::Denied { until: Some(until) },
            BreakerState::HalfOpen {
                probe_in_flight: true,
            } => Admission::Denied { until: None },
            BreakerState::HalfOpen {
                probe_in_flight: false,
            } => {
                self.state = BreakerState::HalfOpen {
                    probe_in_flight: true,
                };
                Admission::Probe
            }
        };
        (admission, transition)
    }

    /// Reports an attempt's outcome. `unit_random` is a sample from `[0, 1)` that sets the
    /// jitter of the open interval should this open the breaker.
    pub fn record(
        &mut self,
        now: Instant,
        outcome: Outcome,
        unit_random: f64,
    ) -> Option<Transition> {
        match (self.state, outcome) {
            (BreakerState::Open { .. }, _) | (BreakerState::Closed, Outcome::Neutral) => None,
            (BreakerState::Closed, Outcome::Success) => {
                self.consecutive_failures = 0;
                None
            }
            (BreakerState::Closed, Outcome::Failure) => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                if self.consecutive_failures >= self.config.failure_threshold {
                    self.open(now, unit_random)
                } else {
                    None
                }
            }
            (BreakerState::HalfOpen { .. }, Outcome::Success) => {
                self.consecutive_failures = 0;
                self.move_to(BreakerState::Closed)
            }
            (BreakerState::HalfOpen { .. }, Outcome::Failure) => self.open(now, unit_random),
            (BreakerState::HalfOpen { .. }, Outcome::Neutral) => self.free_probe_slot(),
        }
    }

    /// The probe ended without any outcome (cancelled, dropped at shutdown): half-open
    /// again with the probe slot free.
    pub fn probe_abandoned(&mut self, now: Instant) -> Option<Transition> {
        self.poll(now).or_else(|| self.free_probe_slot())
    }

    /// Frees the probe slot; the state stays half-open, so there is no transition to report.
    fn free_probe_slot(&mut self) -> Option<Transition> {
        if let BreakerState::HalfOpen { .. } = self.state {
            self.state = BreakerState::HalfOpen {
                probe_in_flight: false,
            };
        }
        None
    }

    /// Opens for `open_interval × (1 + open_jitter × r)`, so replicas do not probe in lockstep.
    fn open(&mut self, now: Instant, unit_random: f64) -> Option<Transition> {
        let share = |x: f64| if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) };
        let factor = 1.0 + share(self.config.open_jitter) * share(unit_random);
        let interval =
            Duration::try_from_secs_f64(self.config.open_interval.as_secs_f64() * factor)
                .unwrap_or(self.config.open_interval);
        self.move_to(BreakerState::Open {
            until: now + interval,
        })
    }

    fn move_to(&mut self, to: BreakerState) -> Option<Transition> {
        let from = std::mem::replace(&mut self.state, to);
        Some(Transition { from, to })
    }
}

#[cfg(test)]
mod tests;
