//! Goodput, refusals and convergence, counted from the stand-in's own log of calls (its
//! arrival instants and statuses), so a stall on a busy machine shows up as lost goodput,
//! never as arithmetic done on Sluice's side of the wire.

use std::time::{Duration, Instant};

use super::standin::Call;

/// The sliding window convergence is judged on.
const CONVERGENCE_WINDOW: Duration = Duration::from_secs(2);
/// How far the convergence window slides per look.
const CONVERGENCE_STEP: Duration = Duration::from_millis(250);
/// Goodput share a window needs to count as converged.
const CONVERGED_GOODPUT: f64 = 0.9;
/// Refused share a window may have and still count as converged.
const CONVERGED_REFUSED: f64 = 0.05;

/// What the provider saw over one window.
#[derive(Clone, Copy, Debug)]
pub struct Figures {
    /// Accepted calls over what the true limit allows in the window.
    pub goodput: f64,
    /// Refused calls over all calls in the window.
    pub refused: f64,
    pub seconds: f64,
}

/// The calls in `[from, to)`, as (units accepted, calls accepted, calls refused).
fn count(calls: &[Call], from: Instant, to: Instant) -> (f64, usize, usize) {
    calls.iter().filter(|c| c.at >= from && c.at < to).fold(
        (0.0, 0, 0),
        |(units, ok, refused), c| match c.status {
            429 => (units, ok, refused + 1),
            _ => (units + c.units, ok + 1, refused),
        },
    )
}

/// Figures over `[from, to)` against a true limit of `rate` units (requests or tokens) a
/// second.
pub fn figures(calls: &[Call], from: Instant, to: Instant, rate: f64) -> Figures {
    let (units, ok, refused) = count(calls, from, to);
    let seconds = to.saturating_duration_since(from).as_secs_f64();
    Figures {
        goodput: units / (rate * seconds).max(1.0),
        refused: refused as f64 / (ok + refused).max(1) as f64,
        seconds,
    }
}

/// How long after `change` the first window of [`CONVERGENCE_WINDOW`] starts in which the
/// provider accepted at least 90% of `rate` and refused at most 5%; `None` if none did
/// before `until`.
pub fn converged_after(
    calls: &[Call],
    change: Instant,
    until: Instant,
    rate: f64,
) -> Option<Duration> {
    let mut from = change;
    while from + CONVERGENCE_WINDOW <= until {
        let f = figures(calls, from, from + CONVERGENCE_WINDOW, rate);
        if f.goodput >= CONVERGED_GOODPUT && f.refused <= CONVERGED_REFUSED {
            return Some(from - change);
        }
        from += CONVERGENCE_STEP;
    }
    None
}
