//! The adaptive attempt timeout: a run that names no timeout gets one worked out from its
//! provider's recent successful latencies (their p95 times a factor, plus a penalty per
//! attempt already in flight), kept between a floor and its class's cap.

use std::collections::VecDeque;
use std::time::Duration;

use crate::config::QueueConfig;
use crate::run::Class;

/// Successful latencies kept per provider for the adaptive timeout.
const LATENCY_SAMPLES: usize = 200;

/// How many new samples a cached p95 may miss before it is worked out again.
const P95_REFRESH: u32 = 16;

/// The adaptive attempt timeout settings (from `[queue]`).
#[derive(Clone, Debug)]
pub struct TimeoutPolicy {
    pub default: Duration,
    pub floor: Duration,
    pub live_cap: Duration,
    pub background_cap: Duration,
    pub min_samples: u32,
    pub factor: f64,
    pub penalty: Duration,
}

impl TimeoutPolicy {
    pub fn from_config(q: &QueueConfig) -> TimeoutPolicy {
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
    pub fn timeout(&self, window: &mut LatencyWindow, in_flight: u32, class: Class) -> Duration {
        let cap = match class {
            Class::Live => self.live_cap,
            Class::Background => self.background_cap,
        };
        if window.len() < self.min_samples.max(1) as usize {
            return self.default.min(cap);
        }
        let adaptive = window.p95().mul_f64(self.factor) + self.penalty * in_flight;
        adaptive.clamp(self.floor.min(cap), cap)
    }
}

/// The most recent successful latencies of a provider, with their p95 kept between
/// calls: every attempt asks for its timeout, and ordering the whole window each time
/// was a measurable share of the dispatch path.
#[derive(Debug)]
pub struct LatencyWindow {
    samples: VecDeque<Duration>,
    /// The p95 and how many samples arrived since it was worked out.
    p95: Option<Duration>,
    since: u32,
    scratch: Vec<Duration>,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        LatencyWindow::new()
    }
}

impl LatencyWindow {
    pub fn new() -> LatencyWindow {
        LatencyWindow {
            samples: VecDeque::with_capacity(LATENCY_SAMPLES),
            p95: None,
            since: 0,
            scratch: Vec::with_capacity(LATENCY_SAMPLES),
        }
    }

    pub fn push(&mut self, took: Duration) {
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
    fn p95(&mut self) -> Duration {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
