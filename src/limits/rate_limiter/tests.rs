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

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn headers(limit: u64, remaining: u64, reset: Option<Duration>) -> RateLimitInfo {
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
fn a_429_with_retry_after_pauses_until_then() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(Some(6000), None, None), t0);
    l.on_rate_limited(t0, Some(secs(2)), None);
    assert_eq!(l.current_rpm(), Some(3000.0));
    assert_eq!(l.paused_until(), Some(t0 + secs(2)));
    for at in [t0, t0 + secs(1), t0 + ms(1999)] {
        assert_eq!(l.available(at), 0, "at {:?}", at - t0);
    }
    let wait = l.acquire(t0 + secs(1), 0).unwrap_err();
    assert_eq!(
        (wait.until, wait.reason),
        (Some(t0 + secs(2)), WaitReason::Paused)
    );
    assert_eq!(
        l.available(t0 + secs(2)),
        50,
        "one second's worth at the halved rate"
    );
}

#[test]
fn a_429_without_retry_after_pauses_for_the_exhausted_reset_or_the_default() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(Some(600), Some(100_000), None), t0);
    let info = RateLimitInfo {
        remaining_tokens: Some(0),
        reset_tokens: Some(secs(7)),
        remaining_requests: Some(40),
        reset_requests: Some(secs(30)),
        ..RateLimitInfo::default()
    };
    l.on_rate_limited(t0, None, Some(&info));
    assert_eq!(l.paused_until(), Some(t0 + secs(7)));
    assert_eq!(l.current_tpm(), Some(50_000.0), "tokens were exhausted");
    assert_eq!(l.current_rpm(), Some(600.0), "requests were not");

    let mut l = RateLimiter::new(&provider(Some(600), None, None), t0);
    l.on_rate_limited(t0, None, None);
    assert_eq!(
        l.paused_until(),
        Some(t0 + secs(1)),
        "limiter.default_pause"
    );
}

#[test]
fn a_burst_of_429s_within_one_pause_decreases_once() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(Some(1000), None, None), t0);
    for i in 0..10 {
        l.on_rate_limited(t0 + ms(i * 50), Some(secs(1)), None);
    }
    assert_eq!(l.current_rpm(), Some(500.0));
    assert_eq!(l.paused_until(), Some(t0 + ms(450) + secs(1)), "extended");
    l.on_rate_limited(t0 + secs(2), Some(secs(1)), None);
    assert_eq!(l.current_rpm(), Some(250.0), "a new window decreases again");
}

#[test]
fn a_pause_is_never_cut_short() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(Some(1000), None, None), t0);
    l.on_rate_limited(t0, Some(secs(30)), None);
    l.on_rate_limited(t0 + secs(1), Some(secs(1)), None);
    assert_eq!(l.paused_until(), Some(t0 + secs(30)));
}

#[test]
fn the_rate_never_falls_below_the_floor() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(Some(1000), Some(10_000), None), t0);
    for i in 0..30 {
        l.on_rate_limited(t0 + secs(10 * i), Some(secs(1)), None);
    }
    assert_eq!(l.current_rpm(), Some(50.0), "limiter.min_share of 1000");
    assert_eq!(l.current_tpm(), Some(500.0));
}

#[test]
fn successes_climb_back_to_the_ceiling() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(Some(100), None, None), t0);
    l.on_rate_limited(t0, Some(secs(2)), None);
    assert_eq!(l.current_rpm(), Some(50.0));
    l.on_success(t0 + secs(1), None);
    assert_eq!(l.current_rpm(), Some(50.0), "no increase while paused");
    let after = t0 + secs(3);
    for _ in 0..24 {
        l.on_success(after, None);
    }
    assert!((l.current_rpm().unwrap() - 98.0).abs() < 1e-9);
    l.on_success(after, None);
    l.on_success(after, None);
    assert_eq!(l.current_rpm(), Some(100.0), "capped at the configured rpm");
}

#[test]
fn low_remaining_headers_tighten_before_a_429() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(Some(600), None, None), t0);
    // 30 of 600 left (5% < 10%), resetting in 30 s: spread them, 60 a minute.
    l.on_success(t0, Some(&headers(600, 30, Some(secs(30)))));
    assert_eq!(l.current_rpm(), Some(60.0));
    assert!(!l.is_paused(t0));
    // Plenty left: the usual additive increase (2% of 600).
    l.on_success(t0, Some(&headers(600, 500, Some(secs(30)))));
    assert_eq!(l.current_rpm(), Some(72.0));
    // Above the current rate the rule never raises it.
    l.on_success(t0, Some(&headers(600, 59, Some(secs(5)))));
    assert_eq!(l.current_rpm(), Some(72.0));
}

#[test]
fn nothing_remaining_pauses_until_the_reset() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(Some(600), None, None), t0);
    l.on_success(t0, Some(&headers(600, 0, Some(secs(4)))));
    assert_eq!(
        l.current_rpm(),
        Some(600.0),
        "the rate stays: the budget comes back whole at the reset"
    );
    assert_eq!(l.paused_until(), Some(t0 + secs(4)));
    assert_eq!(l.available(t0 + secs(3)), 0);
}

#[test]
fn an_unconfigured_provider_learns_a_stated_limit_from_a_429() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(None, None, None), t0);
    let info = headers(500, 0, Some(secs(3)));
    l.on_rate_limited(t0, None, Some(&info));
    assert_eq!(l.configured_rpm(), None);
    assert_eq!(l.rpm_ceiling(), Some(500.0));
    assert_eq!(l.current_rpm(), Some(250.0));
    assert_eq!(l.paused_until(), Some(t0 + secs(3)));
    // A later header moves the learned ceiling.
    l.on_success(t0 + secs(5), Some(&headers(300, 200, None)));
    assert_eq!(l.rpm_ceiling(), Some(300.0));
}

#[test]
fn an_unconfigured_provider_learns_the_observed_rate_from_a_bare_429() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(None, None, None), t0);
    for i in 0..40 {
        let p = l.acquire(t0 + secs(i), 0).unwrap();
        l.release(p, t0 + secs(i), None);
    }
    // One start a second was refused: the ceiling is that pace (40 starts over the 41
    // seconds up to now, about 58.5 a minute) and the rate half of it.
    l.on_rate_limited(t0 + secs(40), None, None);
    let ceiling = l.rpm_ceiling().unwrap();
    assert!((ceiling - 40.0 * 60.0 / 41.0).abs() < 1e-9, "{ceiling}");
    assert!((l.current_rpm().unwrap() - ceiling / 2.0).abs() < 1e-9);
    assert_eq!(l.available(t0 + secs(40)), 0);
    assert!(l.available(t0 + secs(44)) >= 1);
}

#[test]
fn tokens_learn_only_from_a_stated_limit() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(Some(100), None, None), t0);
    l.on_rate_limited(t0, None, None);
    assert_eq!(l.current_tpm(), None);
    let info = RateLimitInfo {
        limit_tokens: Some(90_000),
        remaining_tokens: Some(0),
        ..RateLimitInfo::default()
    };
    l.on_rate_limited(t0 + secs(5), None, Some(&info));
    assert_eq!(l.current_tpm(), Some(45_000.0));
    assert_eq!(l.current_rpm(), Some(50.0), "requests were not exhausted");
}

#[test]
fn snapshot_and_restore_clamp_to_floor_and_ceiling() {
    let t0 = Instant::now();
    let config = provider(Some(600), Some(10_000), None);
    let mut l = RateLimiter::new(&config, t0);
    l.on_rate_limited(t0, None, None);
    let snap = l.snapshot();
    assert_eq!(
        snap,
        LimiterSnapshot {
            current_rpm: Some(300.0),
            current_tpm: Some(5000.0)
        }
    );
    let json = serde_json::to_string(&snap).unwrap();
    let back: LimiterSnapshot = serde_json::from_str(&json).unwrap();
    let mut fresh = RateLimiter::new(&config, t0);
    fresh.restore(back, t0);
    assert_eq!(fresh.snapshot(), snap, "a restart resumes the adapted rate");

    let restore = |rpm: f64, tpm: f64| {
        let mut l = RateLimiter::new(&config, t0);
        l.restore(
            LimiterSnapshot {
                current_rpm: Some(rpm),
                current_tpm: Some(tpm),
            },
            t0,
        );
        (l.current_rpm(), l.current_tpm())
    };
    assert_eq!(restore(1e9, -5.0), (Some(600.0), Some(500.0)));
    assert_eq!(
        restore(f64::NAN, f64::INFINITY),
        (Some(600.0), Some(10_000.0))
    );

    let mut unlimited = RateLimiter::new(&provider(None, None, None), t0);
    unlimited.restore(snap, t0);
    assert_eq!(unlimited.snapshot(), LimiterSnapshot::default());
}

#[test]
fn a_huge_retry_after_cannot_overflow() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(Some(60), None, None), t0);
    l.on_rate_limited(t0, Some(Duration::MAX), None);
    assert_eq!(l.paused_until(), Some(t0 + Duration::from_secs(24 * 3600)));
}

#[test]
fn later_bare_429s_bring_a_learned_ceiling_down_to_the_refused_rate() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(None, None, None), t0);
    // A first burst of 100 starts in one second reads as a pace of 6,000 a minute.
    for _ in 0..100 {
        let p = l.acquire(t0, 0).unwrap();
        l.release(p, t0, None);
    }
    l.on_rate_limited(t0, Some(secs(1)), None);
    assert_eq!(l.rpm_ceiling(), Some(6000.0));
    assert_eq!(l.current_rpm(), Some(3000.0));
    // Still too fast: the ceiling comes down to 5% under the refused 3,000 and the rate
    // halves again, so successes now climb by 2% of 2,850, not of 6,000, and level off
    // below the pace that was refused.
    l.on_rate_limited(t0 + secs(2), Some(secs(1)), None);
    assert_eq!(l.rpm_ceiling(), Some(2850.0));
    assert_eq!(l.current_rpm(), Some(1425.0));
    l.on_success(t0 + secs(4), None);
    assert_eq!(l.current_rpm(), Some(1482.0));
    for _ in 0..100 {
        l.on_success(t0 + secs(5), None);
    }
    assert_eq!(l.current_rpm(), Some(2850.0));
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
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(None, None, None), t0);
    for _ in 0..8 {
        let p = l.acquire(t0, 1).unwrap();
        l.release(p, t0, None);
    }
    l.on_rate_limited(t0, Some(secs(1)), None);
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
