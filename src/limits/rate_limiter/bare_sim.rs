//! The limiter against a simulated provider that refuses with bare 429s, on fake time:
//! a one-second token bucket refilled continuously at `R`, answering after a fixed
//! latency, `retry-after` in whole seconds rounded up. Deterministic, so the probe's
//! steady state is checked exactly where the HTTP cases (tests/limiter_styles) only can be
//! loosely.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::tests::provider;
use super::*;

const TICK: Duration = Duration::from_millis(1);
const LATENCY: Duration = Duration::from_millis(3);
const SLOTS: u32 = 16;
/// The benchmark's targets for a steady state.
const MIN_GOODPUT: f64 = 0.97;
const MAX_REFUSED: f64 = 0.01;

struct Bare {
    per_sec: f64,
    level: f64,
    at: Instant,
}

impl Bare {
    fn call(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.duration_since(self.at).as_secs_f64();
        self.level = (self.level + elapsed * self.per_sec).min(self.per_sec);
        self.at = now;
        if self.level >= 1.0 {
            self.level -= 1.0;
            Ok(())
        } else {
            let secs = ((1.0 - self.level) / self.per_sec).ceil().max(1.0);
            Err(Duration::from_secs_f64(secs))
        }
    }
}

/// Per 100 ms: (accepted, refused).
struct Log {
    t0: Instant,
    slots: Vec<(u32, u32)>,
}

impl Log {
    fn record(&mut self, at: Instant, ok: bool) {
        let i = (at.duration_since(self.t0).as_millis() / 100) as usize;
        if self.slots.len() <= i {
            self.slots.resize(i + 1, (0, 0));
        }
        if ok {
            self.slots[i].0 += 1;
        } else {
            self.slots[i].1 += 1;
        }
    }

    /// (goodput share of `per_sec`, refused share) over `[from, to)` seconds.
    fn figures(&self, from: f64, to: f64, per_sec: f64) -> (f64, f64) {
        let range =
            &self.slots[(from * 10.0) as usize..((to * 10.0) as usize).min(self.slots.len())];
        let ok: u32 = range.iter().map(|s| s.0).sum();
        let refused: u32 = range.iter().map(|s| s.1).sum();
        (
            f64::from(ok) / (per_sec * (to - from)),
            f64::from(refused) / f64::from((ok + refused).max(1)),
        )
    }
}

/// Runs a limiter configured with `rpm` against the provider, whose rate follows
/// `schedule` (`(from second, per second)`), for `secs`.
fn simulate(rpm: Option<u32>, schedule: &[(f64, f64)], secs: f64) -> Log {
    let t0 = Instant::now();
    let mut limiter = RateLimiter::new(&provider(rpm, None, Some(SLOTS)), t0);
    let mut bare = Bare {
        per_sec: schedule[0].1,
        level: schedule[0].1,
        at: t0,
    };
    let mut log = Log {
        t0,
        slots: Vec::new(),
    };
    let mut answers: VecDeque<(Instant, Permit, Result<(), Duration>)> = VecDeque::new();
    let mut now = t0;
    while now < t0 + Duration::from_secs_f64(secs) {
        let elapsed = now.duration_since(t0).as_secs_f64();
        let rate = schedule
            .iter()
            .rev()
            .find(|(from, _)| elapsed >= *from)
            .unwrap()
            .1;
        if rate != bare.per_sec {
            bare.call(now).ok();
            bare.level = bare.level.min(rate);
            bare.per_sec = rate;
        }
        while answers.front().is_some_and(|(at, _, _)| *at <= now) {
            let (_, permit, outcome) = answers.pop_front().unwrap();
            match outcome {
                Ok(()) => limiter.on_success(now, None),
                Err(after) => limiter.on_refused(now, &permit, Some(after), None),
            }
            limiter.release(permit, now, None);
        }
        limiter.refresh(now);
        for _ in 0..limiter.available(now) {
            let permit = limiter.acquire(now, 1).unwrap();
            let outcome = bare.call(now);
            log.record(now, outcome.is_ok());
            answers.push_back((now + LATENCY, permit, outcome));
        }
        now += TICK;
    }
    log
}

/// Asserts the steady-state targets over `[from, to)` seconds at `per_sec`.
fn meets_the_targets(case: &str, log: &Log, from: f64, to: f64, per_sec: f64) {
    let (goodput, refused) = log.figures(from, to, per_sec);
    assert!(
        goodput >= MIN_GOODPUT && refused <= MAX_REFUSED,
        "{case} over [{from} s, {to} s) at {per_sec}/s: goodput {:.1}%, refused {:.2}%",
        goodput * 100.0,
        refused * 100.0
    );
}

#[test]
fn bare_429s_settle_near_the_true_limit_with_few_refusals() {
    for per_sec in [10.0, 20.0, 50.0] {
        let log = simulate(None, &[(0.0, per_sec)], 120.0);
        meets_the_targets("no rpm", &log, 5.0, 120.0, per_sec);
        let five_times = (per_sec * 60.0 * 5.0) as u32;
        let log = simulate(Some(five_times), &[(0.0, per_sec)], 60.0);
        meets_the_targets("rpm 5x too high", &log, 5.0, 60.0, per_sec);
    }
}

#[test]
fn a_bare_limit_halved_and_restored_is_followed() {
    let per_sec = 20.0;
    let log = simulate(
        None,
        &[(0.0, per_sec), (20.0, per_sec / 2.0), (40.0, per_sec)],
        70.0,
    );
    meets_the_targets("before", &log, 5.0, 20.0, per_sec);
    meets_the_targets("halved", &log, 25.0, 40.0, per_sec / 2.0);
    meets_the_targets("restored", &log, 51.0, 70.0, per_sec);
}
