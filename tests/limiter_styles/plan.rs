//! What a rate-limit style case is and how it is driven and judged, shared by the test
//! suite and the benchmark (`bench/` includes this file, `standin.rs` and `measure.rs`):
//! the cases, the schedule of the true limit, the provider's config, the feed that keeps a
//! backlog queued, and the steady-state figures of each phase, counted on the stand-in's
//! log. The two differ only in how long they measure ([`Timing`]) and in the server they
//! drive (a debug build on SQLite, a release build on PostgreSQL).

use std::future::Future;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::measure::{Figures, converged_after, figures};
use super::standin::{StandIn, Style};

/// The provider's name in the server's config.
pub const PROVIDER: &str = "standin";
/// Runs kept queued beyond what the provider accepted: seconds of the current rate...
const BACKLOG_SECS: f64 = 3.0;
/// How often the backlog is topped up.
const FEED_EVERY: Duration = Duration::from_millis(100);
/// Prompt characters of a token-limited case's request, and its `max_tokens`: the
/// stand-in charges 200 / 4 + 64 / 2 = 82 tokens a call.
const TOKEN_PROMPT_CHARS: usize = 200;
const TOKEN_MAX_TOKENS: u64 = 64;
const TOKENS_PER_CALL: f64 = 82.0;

/// How long each part of a case lasts.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// From the start until the first steady-state window opens.
    pub warm_up: Duration,
    /// How long a steady state is measured.
    pub window: Duration,
    /// After a stated burst was spent, before steady state is measured.
    pub after_burst: Duration,
    /// After a stated limit changed or any limit fell, before the new phase is measured.
    pub settle: Duration,
    /// After a limit nobody states rose, before the new phase is measured: a rise is only
    /// found by probing, after the hold on the old limit and a ramp.
    pub settle_bare: Duration,
    /// How long the true limit stays at `R`, then at `R / 2`, in the halved cases.
    pub before_halving: Duration,
    pub halved: Duration,
}

impl Timing {
    /// Steady-state windows of `window`; the halved cases hold `R` for `before_halving`
    /// and `R / 2` for `halved`. The rest is what both the tests and the benchmark need: a
    /// 5 s warm-up, 2 s after a stated burst, 5 s to settle after a change and 11 s after a
    /// rise nobody states (the hold on the old limit, at most 8 s, and a ramp).
    pub const fn with_windows(
        window: Duration,
        before_halving: Duration,
        halved: Duration,
    ) -> Timing {
        Timing {
            warm_up: Duration::from_secs(5),
            window,
            after_burst: Duration::from_secs(2),
            settle: Duration::from_secs(5),
            settle_bare: Duration::from_secs(11),
            before_halving,
            halved,
        }
    }
}

/// How the true limit moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    Steady,
    HalvedAndRestored,
}

#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub name: &'static str,
    /// What the benchmark's table calls it.
    pub title: &'static str,
    pub style: Style,
    /// The `rpm` Sluice is configured with, as a multiple of the true limit.
    pub rpm_times: Option<f64>,
    pub schedule: Schedule,
    /// `[providers.limiter]` settings.
    pub limiter: &'static str,
}

/// Every case: each style the issue names, at a true limit of `R`.
pub const CASES: &[Case] = &[
    Case::steady(
        "minute-openai",
        "minute bucket, `x-ratelimit-*` headers (reset = time to full, Go notation)",
        Style::MinuteOpenAi,
        None,
    ),
    Case::steady(
        "minute-anthropic",
        "minute bucket, `anthropic-ratelimit-*` headers (reset RFC 3339, whole seconds)",
        Style::MinuteAnthropic,
        None,
    ),
    Case::steady(
        "per-second",
        "per-minute limit enforced per second (remaining ×60)",
        Style::PerSecond,
        None,
    ),
    Case::steady(
        "bare",
        "bare 429s (`retry-after` only), no rpm configured",
        Style::Bare,
        None,
    ),
    Case::steady(
        "rpm-5x",
        "bare 429s, rpm configured 5× too high",
        Style::Bare,
        Some(5.0),
    ),
    Case::steady(
        "rpm-exact",
        "bare 429s, rpm configured exactly",
        Style::Bare,
        Some(1.0),
    ),
    Case::halved(
        "halved-stated",
        "stated limit halved, then restored (minute bucket, headers)",
        Style::MinuteOpenAi,
    ),
    Case::halved(
        "halved-bare",
        "bare limit halved, then restored",
        Style::Bare,
    ),
    Case::steady(
        "tpm",
        "tokens per minute, minute bucket, `x-ratelimit-*-tokens` headers",
        Style::MinuteTokens,
        None,
    ),
];

impl Case {
    const fn steady(
        name: &'static str,
        title: &'static str,
        style: Style,
        rpm_times: Option<f64>,
    ) -> Case {
        Case {
            name,
            title,
            style,
            rpm_times,
            schedule: Schedule::Steady,
            limiter: "",
        }
    }

    const fn halved(name: &'static str, title: &'static str, style: Style) -> Case {
        Case {
            schedule: Schedule::HalvedAndRestored,
            ..Case::steady(name, title, style, None)
        }
    }

    /// The true limit in the stand-in's units (requests, or tokens for the token style) a
    /// second, for a case run at `requests` a second.
    pub fn rate(&self, requests: f64) -> f64 {
        match self.style {
            Style::MinuteTokens => requests * TOKENS_PER_CALL,
            _ => requests,
        }
    }

    /// `(from the start, rate)`: the true limit's schedule.
    pub fn changes(&self, t: &Timing, rate: f64) -> Vec<(Duration, f64)> {
        match self.schedule {
            Schedule::Steady => vec![(Duration::ZERO, rate)],
            Schedule::HalvedAndRestored => vec![
                (Duration::ZERO, rate),
                (t.before_halving, rate / 2.0),
                (t.before_halving + t.halved, rate),
            ],
        }
    }

    /// After the true limit rose, before the new phase is measured.
    fn settle_after_rise(&self, t: &Timing) -> Duration {
        match self.style {
            Style::Bare => t.settle_bare,
            _ => t.settle,
        }
    }

    /// How long the last phase lasts after its change.
    pub fn last_phase(&self, t: &Timing) -> Duration {
        self.settle_after_rise(t) + t.window
    }

    /// The provider's entry in the server's config, talking to the stand-in at `root`, for
    /// a case run at `requests` a second.
    pub fn provider_toml(&self, root: &str, requests: f64) -> String {
        let base = match self.style.kind() {
            "openai" => format!("{root}/v1"),
            _ => root.to_string(),
        };
        let rpm = self
            .rpm_times
            .map(|times| format!("rpm = {}", (requests * 60.0 * times).round()))
            .unwrap_or_default();
        format!(
            "[[providers]]\nname = \"{PROVIDER}\"\nkind = \"{kind}\"\nbase_url = \"{base}\"\n\
             default_model = \"standin-1\"\n{rpm}\n[providers.limiter]\n{limiter}\n",
            kind = self.style.kind(),
            limiter = self.limiter,
        )
    }

    /// The enqueue body of every run of the case.
    pub fn enqueue_body(&self) -> Value {
        let (content, max_tokens) = match self.style {
            Style::MinuteTokens => ("word ".repeat(TOKEN_PROMPT_CHARS / 5), TOKEN_MAX_TOKENS),
            _ => ("hello".to_string(), 16),
        };
        json!({
            "provider": PROVIDER,
            "request": {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens},
            "max_attempts": 50,
        })
    }
}

/// One measured phase.
#[derive(Clone, Copy, Debug)]
pub struct Phase {
    pub rate: f64,
    pub steady: Figures,
    /// From the change (or the start) to the first converged window.
    pub converged: Option<Duration>,
}

/// A case under way: its schedule in instants and when measuring may begin.
pub struct Drive {
    pub case: Case,
    pub timing: Timing,
    pub started: Instant,
    /// `(at, rate)` of every change, the first at the start.
    pub changes: Vec<(Instant, f64)>,
}

impl Drive {
    pub fn new(case: Case, timing: Timing, rate: f64) -> Drive {
        let started = Instant::now();
        let changes = case
            .changes(&timing, rate)
            .into_iter()
            .map(|(at, rate)| (started + at, rate))
            .collect();
        Drive {
            case,
            timing,
            started,
            changes,
        }
    }

    /// The first phase opens after the warm-up and after any stated burst was spent.
    fn first_window(&self, standin: &StandIn) -> Instant {
        let drained = standin.drained_at().map(|d| d + self.timing.after_burst);
        (self.started + self.timing.warm_up).max(drained.unwrap_or(self.started))
    }

    fn end(&self, standin: &StandIn) -> Instant {
        match self.changes.len() {
            1 => self.first_window(standin) + self.timing.window,
            _ => self.changes.last().unwrap().0 + self.case.last_phase(&self.timing),
        }
    }

    /// Moves the true limit on schedule and keeps a backlog of `slots` plus a few seconds of
    /// the rate queued through `enqueue(n)` (which enqueues `n` runs and returns their ids),
    /// until the case's end or `longest` after the start. Returns every id and when the feed
    /// stopped.
    pub async fn feed<F, Fut>(
        &self,
        standin: &StandIn,
        slots: usize,
        longest: Duration,
        mut enqueue: F,
    ) -> (Vec<String>, Instant)
    where
        F: FnMut(usize) -> Fut,
        Fut: Future<Output = Vec<String>>,
    {
        let mut ids = Vec::new();
        let mut applied = 1;
        while Instant::now() < self.end(standin) && self.started.elapsed() < longest {
            if let Some((at, rate)) = self.changes.get(applied)
                && Instant::now() >= *at
            {
                standin.set_rate(*rate);
                applied += 1;
            }
            let rate = self.changes[applied - 1].1;
            let calls_per_sec = match self.case.style {
                Style::MinuteTokens => rate / TOKENS_PER_CALL,
                _ => rate,
            };
            let accepted = standin.calls().iter().filter(|c| c.status != 429).count();
            let wanted = (calls_per_sec * BACKLOG_SECS) as usize + slots;
            let outstanding = ids.len().saturating_sub(accepted);
            ids.extend(enqueue(wanted.saturating_sub(outstanding)).await);
            tokio::time::sleep(FEED_EVERY).await;
        }
        (ids, Instant::now())
    }

    /// Each phase's steady state and convergence, counted on the stand-in's log up to
    /// `stopped`.
    pub fn phases(&self, standin: &StandIn, stopped: Instant) -> Vec<Phase> {
        let calls = standin.calls();
        let changes = &self.changes;
        let mut phases = Vec::new();
        for (i, (at, rate)) in changes.iter().enumerate() {
            let (from, change) = match i {
                0 => (self.first_window(standin), self.started),
                // A fall is found by the next refusal; a rise may take longer.
                _ if *rate < changes[i - 1].1 => (*at + self.timing.settle, *at),
                _ => (*at + self.case.settle_after_rise(&self.timing), *at),
            };
            let to = changes.get(i + 1).map_or(stopped, |(next, _)| *next);
            phases.push(Phase {
                rate: *rate,
                steady: figures(&calls, from, to, *rate),
                converged: converged_after(&calls, change, to, *rate),
            });
        }
        phases
    }
}
