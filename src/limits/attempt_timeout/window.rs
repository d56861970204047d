//! What the adaptive attempt timeout remembers of one provider and model: the latest
//! successful latencies (with their p95 kept between calls), and the stretch that timed-out
//! attempts put on the timeout. [`ModelWindows`] keeps one window per model of a provider,
//! a bounded number of them.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Successful latencies kept per provider and model for the adaptive timeout.
pub(super) const LATENCY_SAMPLES: usize = 200;

/// How many new samples a cached p95 may miss before it is worked out again.
const P95_REFRESH: u32 = 16;

/// Models whose windows one provider keeps. Clients name models freely, so the windows are
/// bounded: the least recently used one makes room for a new model.
const MODELS_PER_PROVIDER: usize = 64;

/// The most recent successful latencies of one provider and model, with their p95 kept
/// between calls (every attempt asks for its timeout, and ordering the whole window each
/// time was a measurable share of the dispatch path), and the stretch set by timeouts.
#[derive(Debug)]
pub struct LatencyWindow {
    samples: VecDeque<Duration>,
    /// The p95 and how many samples arrived since it was worked out.
    p95: Option<Duration>,
    since: u32,
    scratch: Vec<Duration>,
    /// The least timeout the next attempts get because attempts timed out: growth × the
    /// longest timeout an attempt ran out of. Successes alone would never raise the
    /// timeout past a provider that slowed beyond it (nothing succeeds to show the new
    /// pace), so timeouts raise it themselves.
    pub(super) stretch: Option<Duration>,
    /// Successes since the stretch was last raised or stepped down.
    pub(super) calm: u32,
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
            stretch: None,
            calm: 0,
        }
    }

    pub(super) fn push(&mut self, took: Duration) {
        if self.samples.len() == LATENCY_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(took);
        self.since += 1;
    }

    pub(super) fn len(&self) -> usize {
        self.samples.len()
    }

    /// The 95th percentile (nearest rank) of the window, which must not be empty.
    pub(super) fn p95(&mut self) -> Duration {
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

/// One provider's windows, one per model: a small model's pace says nothing about a large
/// one's.
#[derive(Debug, Default)]
pub struct ModelWindows {
    /// Each model's window and when it was last used (a count of uses).
    by_model: HashMap<String, (LatencyWindow, u64)>,
    uses: u64,
}

impl ModelWindows {
    pub fn new() -> ModelWindows {
        ModelWindows::default()
    }

    /// The window of `model`, made (and the least recently used one dropped when there is
    /// no room) on first use.
    pub fn of(&mut self, model: &str) -> &mut LatencyWindow {
        self.uses += 1;
        let uses = self.uses;
        if !self.by_model.contains_key(model) {
            if self.by_model.len() >= MODELS_PER_PROVIDER
                && let Some(stalest) = self
                    .by_model
                    .iter()
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(name, _)| name.clone())
            {
                self.by_model.remove(&stalest);
            }
            self.by_model
                .insert(model.to_string(), (LatencyWindow::new(), uses));
        }
        let (window, used) = self.by_model.get_mut(model).expect("inserted above");
        *used = uses;
        window
    }

    /// How many models have a window.
    pub fn len(&self) -> usize {
        self.by_model.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_model.is_empty()
    }
}
