use std::time::{Duration, Instant};

use super::*;
use crate::config::ProviderConfig;

pub(super) fn provider(rpm: Option<u32>, tpm: Option<u32>, conc: Option<u32>) -> ProviderConfig {
    let mut p = ProviderConfig::sim("p");
    p.rpm = rpm;
    p.tpm = tpm;
    p.max_concurrency = conc;
    p
}

/// Starts `n` attempts at `at` and ends them at once.
pub(super) fn start_and_finish(l: &mut RateLimiter, at: Instant, n: usize) {
    for _ in 0..n {
        let p = l.acquire(at, 0).unwrap();
        l.release(p, at, None);
    }
}

/// An unconfigured provider that took a burst of `n` starts at t0 and refused the next.
pub(super) fn refused_after_a_burst(n: usize) -> (Instant, RateLimiter) {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(None, None, None), t0);
    start_and_finish(&mut l, t0, n);
    l.on_rate_limited(t0, Some(secs(1)), None);
    (t0, l)
}

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(super) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub(super) fn headers(limit: u64, remaining: u64, reset: Option<Duration>) -> RateLimitInfo {
    RateLimitInfo {
        limit_requests: Some(limit),
        remaining_requests: Some(remaining),
        reset_requests: reset,
        ..RateLimitInfo::default()
    }
}

#[test]
fn nothing_configured_means_unlimited() {
    let t0 = Instant::now();
    let mut p = provider(None, None, None);
    p.limiter.slow_start_window = 0;
    let mut l = RateLimiter::new(&p, t0);
    assert_eq!(l.available(t0), UNLIMITED);
    for _ in 0..1000 {
        let _ = l.acquire(t0, 500).expect("unlimited");
    }
    assert_eq!(l.in_flight(), 1000);
    assert_eq!((l.current_rpm(), l.current_tpm()), (None, None));
}

#[test]
fn the_start_bursts_one_seconds_worth_not_a_minutes() {
    let t0 = Instant::now();
    let l = RateLimiter::new(&provider(Some(6000), None, None), t0);
    assert_eq!(l.available(t0), 100);
    let l = RateLimiter::new(&provider(Some(30), None, None), t0);
    assert_eq!(l.available(t0), 1);
}

#[test]
fn acquire_waits_for_the_next_request_token() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(Some(60), None, None), t0);
    let _ = l.acquire(t0, 0).unwrap();
    let wait = l.acquire(t0, 0).unwrap_err();
    assert_eq!(wait.reason, WaitReason::Requests);
    assert_eq!(wait.until, Some(t0 + secs(1)));
    assert_eq!(wait.delay(t0), Some(secs(1)));
    assert_eq!(l.available(t0 + ms(999)), 0);
    assert!(l.acquire(t0 + secs(1), 0).is_ok());
}

#[test]
fn concurrency_caps_in_flight_until_a_release() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(None, None, Some(2)), t0);
    let a = l.acquire(t0, 0).unwrap();
    let _b = l.acquire(t0, 0).unwrap();
    assert_eq!(l.available(t0), 0);
    let wait = l.acquire(t0, 0).unwrap_err();
    assert_eq!((wait.until, wait.reason), (None, WaitReason::Concurrency));
    l.release(a, t0, None);
    assert_eq!((l.in_flight(), l.available(t0)), (1, 1));
}

#[test]
fn release_settles_the_token_estimate_with_actual_usage() {
    let t0 = Instant::now();
    // 6000 tpm: 100 tokens a second of burst.
    let mut l = RateLimiter::new(&provider(None, Some(6000), None), t0);
    let p = l.acquire(t0, 100).unwrap();
    assert_eq!(p.estimated_tokens(), 100);
    assert_eq!(l.wait(t0), None, "a zero balance still admits");
    let q = l.acquire(t0, 50).unwrap();
    assert_eq!(l.wait(t0).map(|w| w.reason), Some(WaitReason::Tokens));
    // The first used 10 of its 100: 90 come back and clear the debt of 50.
    l.release(p, t0, Some(10));
    assert_eq!(l.wait(t0), None);
    // The second used 300 of its 50: 250 more are charged.
    l.release(q, t0, Some(300));
    let wait = l.wait(t0).expect("in debt");
    assert_eq!(wait.reason, WaitReason::Tokens);
    assert!(wait.delay(t0).unwrap() > secs(2), "{wait:?}");
    assert_eq!(l.in_flight(), 0);
}

#[test]
fn available_spreads_a_token_balance_over_typical_estimates() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(None, Some(60_000), None), t0); // 1000 burst
    let p = l.acquire(t0, 200).unwrap(); // balance 800, typical 200
    assert_eq!(l.available(t0), 5);
    l.release(p, t0, None);
}

#[test]
fn learned_and_stated_limits_survive_a_restart() {
    let t0 = Instant::now();
    let config = provider(Some(600), Some(10_000), None);
    let mut l = RateLimiter::new(&config, t0);
    l.on_rate_limited(t0, None, None);
    let snap = l.snapshot();
    assert_eq!(
        snap,
        LimiterSnapshot {
            current_rpm: Some(300.0),
            current_tpm: Some(10_000.0),
            learned_rpm: Some(300.0),
            stated_rpm: None,
            stated_tpm: None,
        }
    );
    let json = serde_json::to_string(&snap).unwrap();
    let back: LimiterSnapshot = serde_json::from_str(&json).unwrap();
    let mut fresh = RateLimiter::new(&config, t0);
    fresh.restore(back, t0);
    assert_eq!(fresh.snapshot(), snap, "a restart resumes the learned pace");

    let restore = |learned: f64| {
        let mut l = RateLimiter::new(&config, t0);
        let snapshot = LimiterSnapshot {
            learned_rpm: Some(learned),
            ..LimiterSnapshot::default()
        };
        l.restore(snapshot, t0);
        l.current_rpm()
    };
    assert_eq!(
        restore(1e9),
        Some(600.0),
        "nothing learned above the ceiling"
    );
    assert_eq!(restore(-5.0), Some(600.0));
    assert_eq!(restore(f64::NAN), Some(600.0));
    assert_eq!(restore(1.0), Some(30.0), "limiter.min_share of 600");

    // With nothing configured, the learned pace and the stated limits are all there is.
    let mut unlimited = RateLimiter::new(&provider(None, None, None), t0);
    let stated = LimiterSnapshot {
        stated_tpm: Some(90_000.0),
        ..snap
    };
    unlimited.restore(stated, t0);
    assert_eq!(unlimited.current_rpm(), Some(300.0));
    assert_eq!(unlimited.current_tpm(), Some(90_000.0));
    assert_eq!(unlimited.slow_start_window(), None);

    // A snapshot written before the learned pace was persisted still reads.
    let old: LimiterSnapshot =
        serde_json::from_str(r#"{"current_rpm":300.0,"current_tpm":5000.0}"#).unwrap();
    assert_eq!(old.learned_rpm, None);
}

#[test]
fn a_huge_retry_after_cannot_overflow() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(Some(60), None, None), t0);
    l.on_rate_limited(t0, Some(Duration::MAX), None);
    assert_eq!(l.paused_until(), Some(t0 + Duration::from_secs(24 * 3600)));
}

#[test]
fn slow_start_doubles_the_window_per_round_trip() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(None, None, None), t0);
    assert_eq!(
        l.available(t0),
        8,
        "the first backlog goes out eight at a time"
    );
    let round: Vec<Permit> = (0..8).map(|_| l.acquire(t0, 1).unwrap()).collect();
    assert_eq!(
        l.acquire(t0, 1).unwrap_err().reason,
        WaitReason::Concurrency
    );
    for permit in round {
        l.on_success(t0 + ms(100), None);
        l.release(permit, t0 + ms(100), None);
    }
    assert_eq!(l.slow_start_window(), Some(16));
    assert_eq!(l.available(t0 + ms(100)), 16);
    // Enough successes and the provider is taken as unlimited.
    for _ in 0..crate::limits::SLOW_START_END {
        l.on_success(t0 + ms(200), None);
    }
    assert_eq!(l.slow_start_window(), None);
    assert_eq!(l.available(t0 + ms(200)), UNLIMITED);
    assert_eq!(l.current_rpm(), None);
}

#[test]
fn slow_start_ends_at_the_first_refusal_or_a_stated_limit() {
    let (t0, l) = refused_after_a_burst(8);
    assert_eq!(l.slow_start_window(), None);
    assert!(l.current_rpm().is_some(), "a ceiling was learned");

    let mut l = RateLimiter::new(&provider(None, None, None), t0);
    l.on_success(t0, Some(&headers(600, 599, None)));
    assert_eq!(l.slow_start_window(), None);
    assert_eq!(
        l.current_rpm(),
        Some(600.0),
        "the stated limit is the ceiling"
    );
    assert_eq!(l.available(t0), 10, "a second's worth of it");

    // A configured rpm needs no slow start.
    let l = RateLimiter::new(&provider(Some(600), None, None), t0);
    assert_eq!(l.slow_start_window(), None);
    // A configured concurrency below the window wins.
    let l = RateLimiter::new(&provider(None, None, Some(3)), t0);
    assert_eq!(l.available(t0), 3);
}
