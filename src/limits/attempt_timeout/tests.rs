//! The adaptive attempt timeout on samples and fake time: how it follows the successes,
//! how timeouts stretch it, and the bound on timeouts after a provider slows down.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use super::window::LATENCY_SAMPLES;
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
        penalty_cap: Duration::from_secs(30),
        growth: 2.0,
    }
}

/// The shipped defaults, with a floor low enough for a 100 ms provider and no pressure
/// penalty (pressure only lengthens the timeout, so leaving it out is the worst case).
fn sim_policy() -> TimeoutPolicy {
    TimeoutPolicy {
        default: Duration::from_secs(60),
        floor: Duration::from_millis(10),
        live_cap: Duration::from_secs(120),
        background_cap: Duration::from_secs(300),
        min_samples: 20,
        factor: 2.0,
        penalty: Duration::ZERO,
        penalty_cap: Duration::from_secs(30),
        growth: 2.0,
    }
}

/// [`sim_policy`] and a full window of a provider answering in 100 ms.
fn fast_provider() -> (TimeoutPolicy, LatencyWindow) {
    (sim_policy(), samples(vec![100; LATENCY_SAMPLES]))
}

fn samples(ms: impl IntoIterator<Item = u64>) -> LatencyWindow {
    let mut w = LatencyWindow::new();
    for m in ms {
        w.push(Duration::from_millis(m));
    }
    w
}

/// The latency of request `i` before the slow-down: 80–120 ms, spread evenly.
fn base_latency_ms(i: usize) -> u64 {
    80 + (i as u64 * 37) % 41
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
    // 95 of 100 samples at 4 s, 5 at 9 s → p95 4 s → 8 s + penalty.
    let mut s = samples(vec![4000; 95].into_iter().chain(vec![9000; 5]));
    assert_eq!(p.timeout(&mut s, 0, Class::Live), Duration::from_secs(8));
    assert_eq!(
        p.timeout(&mut s, 10, Class::Live),
        Duration::from_secs(9),
        "queue pressure"
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
fn queue_pressure_adds_at_most_its_cap() {
    let p = TimeoutPolicy {
        penalty_cap: Duration::from_secs(3),
        ..policy()
    };
    let mut s = samples(vec![4000; 40]);
    assert_eq!(p.timeout(&mut s, 20, Class::Live), Duration::from_secs(10));
    assert_eq!(
        p.timeout(&mut s, 1000, Class::Live),
        Duration::from_secs(11),
        "1000 in flight add the 3 s cap, not 100 s"
    );
}

#[test]
fn the_kept_p95_follows_new_samples() {
    let p = policy();
    let mut w = samples(vec![50; 40]);
    assert_eq!(p.timeout(&mut w, 0, Class::Live), Duration::from_secs(5));
    // The provider slows down: within a refresh interval the timeout follows.
    for _ in 0..LATENCY_SAMPLES {
        p.record_success(&mut w, Duration::from_secs(12));
        p.timeout(&mut w, 0, Class::Live);
    }
    assert_eq!(p.timeout(&mut w, 0, Class::Live), Duration::from_secs(24));
}

#[test]
fn a_timeout_stretches_the_next_timeouts_once_per_level() {
    let (p, mut w) = fast_provider();
    let first = p.timeout(&mut w, 0, Class::Live);
    assert_eq!(first, Duration::from_millis(200));
    // Fifty attempts that all ran out of the same timeout stretch it once.
    let raised: Vec<_> = (0..50)
        .filter_map(|_| p.record_timeout(&mut w, first))
        .collect();
    assert_eq!(raised, vec![Duration::from_millis(400)]);
    let second = p.timeout(&mut w, 0, Class::Live);
    assert_eq!(second, Duration::from_millis(400));
    p.record_timeout(&mut w, second);
    assert_eq!(
        p.timeout(&mut w, 0, Class::Live),
        Duration::from_millis(800)
    );
    // A late timeout of an attempt started under the first timeout lowers nothing.
    p.record_timeout(&mut w, first);
    assert_eq!(
        p.timeout(&mut w, 0, Class::Live),
        Duration::from_millis(800)
    );
    // Within the class cap.
    for _ in 0..20 {
        let t = p.timeout(&mut w, 0, Class::Live);
        p.record_timeout(&mut w, t);
    }
    assert_eq!(p.timeout(&mut w, 0, Class::Live), Duration::from_secs(120));
}

#[test]
fn timeouts_before_the_window_fills_stretch_the_default() {
    let p = sim_policy();
    let mut w = LatencyWindow::new();
    p.record_timeout(&mut w, Duration::from_secs(60));
    assert_eq!(p.timeout(&mut w, 0, Class::Live), Duration::from_secs(120));
}

#[test]
fn rare_hangs_do_not_ratchet_the_timeout_up() {
    let (p, mut w) = fast_provider();
    let steady = p.timeout(&mut w, 0, Class::Live);
    let mut longest = steady;
    // One attempt in 40 hangs and runs out of its timeout; the rest answer in 100 ms.
    for i in 0..4000 {
        let t = p.timeout(&mut w, 0, Class::Live);
        longest = longest.max(t);
        if i % 40 == 39 {
            p.record_timeout(&mut w, t);
        } else {
            p.record_success(&mut w, Duration::from_millis(100));
        }
    }
    assert!(
        longest <= steady * 2,
        "a 2.5% hang rate stretched the timeout to {longest:?} (steady {steady:?})"
    );
    for _ in 0..STEP_DOWN_AFTER {
        p.record_success(&mut w, Duration::from_millis(100));
    }
    assert_eq!(p.timeout(&mut w, 0, Class::Live), steady);
}

/// What a simulated run went through.
#[derive(Clone, Debug, Default)]
struct SimRun {
    timeouts: u32,
    completed: bool,
}

/// Runs `runs` requests, at most `concurrency` attempts at once, against a provider whose
/// latency is `slowdown` times what it was when the window was filled. Time is fake: a
/// queue of events in milliseconds. A timed-out run retries after `backoff`, up to
/// `max_attempts`.
fn simulate(p: &TimeoutPolicy, slowdown: u64, runs: usize, concurrency: usize) -> Vec<SimRun> {
    const MAX_ATTEMPTS: u32 = 5;
    const BACKOFF_MS: u64 = 300;
    let mut w = LatencyWindow::new();
    for i in 0..LATENCY_SAMPLES {
        p.record_success(&mut w, Duration::from_millis(base_latency_ms(i)));
    }
    let mut out = vec![SimRun::default(); runs];
    let mut attempts = vec![0u32; runs];
    // (at ms, run, Some(limit ms) for an attempt's end, None for its start)
    let mut events: BinaryHeap<Reverse<(u64, usize, Option<u64>)>> = BinaryHeap::new();
    let mut in_flight = 0u32;
    let mut waiting: Vec<usize> = (0..runs).rev().collect();
    let mut now = 0;
    loop {
        while in_flight < concurrency as u32
            && let Some(run) = waiting.pop()
        {
            events.push(Reverse((now, run, None)));
            in_flight += 1;
        }
        let Some(Reverse((at, run, end))) = events.pop() else {
            break;
        };
        now = at;
        let latency = base_latency_ms(run) * slowdown;
        match end {
            None => {
                attempts[run] += 1;
                let limit = p.timeout(&mut w, in_flight, Class::Live).as_millis() as u64;
                events.push(Reverse((now + latency.min(limit), run, Some(limit))));
            }
            Some(limit) if latency > limit => {
                p.record_timeout(&mut w, Duration::from_millis(limit));
                out[run].timeouts += 1;
                if attempts[run] < MAX_ATTEMPTS {
                    events.push(Reverse((now + BACKOFF_MS, run, None)));
                } else {
                    in_flight -= 1;
                }
            }
            Some(_) => {
                p.record_success(&mut w, Duration::from_millis(latency));
                out[run].completed = true;
                in_flight -= 1;
            }
        }
    }
    out
}

/// `ceil(log_growth(slowdown / factor))`: the generation timeouts a run may meet.
fn bound(p: &TimeoutPolicy, slowdown: f64) -> u32 {
    ((slowdown / p.factor).ln() / p.growth.ln()).ceil() as u32
}

#[test]
fn after_a_tenfold_slowdown_every_run_completes_within_the_bound() {
    let p = sim_policy();
    // The slowest request after the slow-down takes 1200 ms, about 10.2 × the old p95.
    let k = bound(&p, 1200.0 / 118.0);
    assert_eq!(k, 3, "three timeouts with the defaults");
    for concurrency in [1, 8, 64] {
        let runs = simulate(&p, 10, 200, concurrency);
        let worst = runs.iter().map(|r| r.timeouts).max().unwrap();
        assert!(
            runs.iter().all(|r| r.completed),
            "concurrency {concurrency}: a run did not complete: {runs:?}"
        );
        assert!(
            worst <= k,
            "concurrency {concurrency}: a run met {worst} timeouts, more than {k}"
        );
        assert!(worst >= 1, "the slow-down went unnoticed");
    }
}

#[test]
fn an_unchanged_provider_meets_no_timeout() {
    let runs = simulate(&sim_policy(), 1, 200, 8);
    assert!(runs.iter().all(|r| r.completed && r.timeouts == 0));
}

#[test]
fn each_model_has_its_own_window() {
    let p = sim_policy();
    let mut windows = ModelWindows::new();
    for _ in 0..LATENCY_SAMPLES {
        p.record_success(windows.of("small"), Duration::from_millis(100));
        p.record_success(windows.of("large"), Duration::from_secs(2));
    }
    assert_eq!(
        p.timeout(windows.of("small"), 0, Class::Live),
        Duration::from_millis(200)
    );
    assert_eq!(
        p.timeout(windows.of("large"), 0, Class::Live),
        Duration::from_secs(4)
    );
    // Clients name models freely: the windows stay bounded.
    for i in 0..1000 {
        windows.of(&format!("m{i}"));
    }
    assert!(windows.len() <= 64, "{}", windows.len());
}
