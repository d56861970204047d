//! How the limiter follows stated limits and learns from refusals, on fake time.

use std::time::Instant;

use super::super::tests::{headers, ms, provider, refused_after_a_burst, secs, start_and_finish};
use super::*;

/// A provider configured at `rpm` that refused once at t0, asking for 2 s.
fn refused_once(rpm: u32) -> (Instant, RateLimiter) {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(Some(rpm), None, None), t0);
    l.on_rate_limited(t0, Some(secs(2)), None);
    (t0, l)
}

#[test]
fn a_first_bare_429_halves_the_pace_and_pauses_until_retry_after() {
    let (t0, mut l) = refused_once(6000);
    assert_eq!(l.current_rpm(), Some(3000.0));
    assert_eq!(l.paused_until(), Some(t0 + secs(2)));
    for at in [t0, t0 + secs(1), t0 + ms(1999)] {
        assert_eq!(l.available(at), 0, "at {:?}", at - t0);
    }
    let wait = l.acquire(t0 + secs(1), 0).unwrap_err();
    assert!(wait.until >= Some(t0 + secs(2)), "{wait:?}");
    // Halving is no estimate of the true limit: what the provider refilled during the
    // pause is not spent in a burst after it.
    assert_eq!(l.available(t0 + secs(2)), 0);
    assert_eq!(l.available(t0 + secs(2) + ms(21)), 1, "about 50 a second");
}

#[test]
fn a_spent_budget_explains_a_429_and_keeps_the_rate() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(Some(600), Some(100_000), None), t0);
    let p = l.acquire(t0, 1000).unwrap();
    l.release(p, t0, None);
    let info = RateLimitInfo {
        remaining_tokens: Some(0),
        reset_tokens: Some(secs(7)),
        remaining_requests: Some(40),
        reset_requests: Some(secs(30)),
        ..RateLimitInfo::default()
    };
    l.on_rate_limited(t0, None, Some(&info));
    // Not the reset (the time until the bucket is full), but what one typical request's
    // tokens take to come back: 1,000 at 100,000 a minute.
    assert_eq!(l.paused_until(), Some(t0 + ms(600)));
    assert_eq!(
        l.current_tpm(),
        Some(100_000.0),
        "the bucket is empty, not slow"
    );
    assert_eq!(l.current_rpm(), Some(600.0));
    assert_eq!(l.learned_rpm(), None);

    let mut l = RateLimiter::new(&provider(Some(600), None, None), t0);
    l.on_rate_limited(t0, None, None);
    assert_eq!(
        l.paused_until(),
        Some(t0 + secs(1)),
        "limiter.default_pause"
    );
}

#[test]
fn refusals_while_paused_decrease_once() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(Some(1000), None, None), t0);
    for i in 0..10 {
        l.on_rate_limited(t0 + ms(i * 50), Some(secs(1)), None);
    }
    assert_eq!(l.current_rpm(), Some(500.0));
    assert_eq!(l.paused_until(), Some(t0 + secs(1)), "the same overload");
    l.on_rate_limited(t0 + secs(2), Some(secs(1)), None);
    assert_eq!(l.current_rpm(), Some(250.0), "a new one decreases again");
}

#[test]
fn a_refusal_of_an_attempt_started_before_the_last_one_counted_is_not_counted() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(Some(1000), None, None), t0);
    let early = l.acquire(t0, 0).unwrap();
    let counted = l.acquire(t0, 0).unwrap();
    l.on_refused(t0 + ms(100), &counted, Some(ms(200)), None);
    assert_eq!(l.current_rpm(), Some(500.0));
    // Answered after the pause, but started before the reaction: the same overload.
    l.on_refused(t0 + ms(400), &early, Some(ms(200)), None);
    assert_eq!(l.current_rpm(), Some(500.0));
    assert_eq!(l.paused_until(), Some(t0 + ms(300)));
    l.release(early, t0 + ms(400), None);
    l.release(counted, t0 + ms(400), None);
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
    assert_eq!(
        l.current_tpm(),
        Some(10_000.0),
        "a bare refusal slows the requests"
    );
}

#[test]
fn the_pace_climbs_back_with_time_not_with_successes() {
    let (t0, mut l) = refused_once(100);
    assert_eq!(l.current_rpm(), Some(50.0));
    for _ in 0..100 {
        l.on_success(t0 + secs(1), None);
    }
    assert_eq!(l.current_rpm(), Some(50.0), "successes do not move it");
    // Held for a second after the pause, then doubling every 2 s.
    l.refresh(t0 + secs(3));
    assert_eq!(l.current_rpm(), Some(50.0));
    l.refresh(t0 + secs(4));
    assert!((l.current_rpm().unwrap() - 50.0 * 2f64.sqrt()).abs() < 1e-9);
    l.refresh(t0 + secs(5));
    assert_eq!(l.current_rpm(), Some(100.0), "capped at the configured rpm");
}

#[test]
fn a_low_remaining_lowers_the_level_not_the_rate() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(Some(600), None, None), t0);
    l.on_success(t0, Some(&headers(600, 30, Some(secs(57)))));
    assert_eq!(l.current_rpm(), Some(600.0));
    assert!(!l.is_paused(t0));
    // Of the 30 the provider holds, less a second of the rate kept back (`burst.rs`).
    assert_eq!(l.available(t0), 20);
    // Spent: our bucket is empty too, and waits one unit, not the reset (the time
    // until the provider's bucket is full).
    l.on_success(t0, Some(&headers(600, 0, Some(secs(60)))));
    assert_eq!(l.current_rpm(), Some(600.0));
    assert!(!l.is_paused(t0));
    assert_eq!(l.available(t0), 0);
    assert_eq!(l.available(t0 + ms(100)), 1);
}

#[test]
fn a_fixed_window_waits_for_its_reset() {
    let t0 = Instant::now();
    let mut config = provider(Some(600), None, None);
    config.limiter.window = LimitWindow::Fixed;
    let mut l = RateLimiter::new(&config, t0);
    l.on_success(t0, Some(&headers(600, 0, Some(secs(4)))));
    assert_eq!(l.current_rpm(), Some(600.0));
    assert_eq!(l.paused_until(), Some(t0 + secs(4)));
    assert_eq!(l.available(t0 + secs(3)), 0);
}

#[test]
fn a_stated_limit_lowers_a_configured_one_and_is_followed_both_ways() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(Some(3000), None, None), t0);
    l.on_success(t0, Some(&headers(600, 500, None)));
    assert_eq!(
        (l.rpm_ceiling(), l.current_rpm()),
        (Some(600.0), Some(600.0))
    );
    l.on_success(t0, Some(&headers(300, 200, None)));
    assert_eq!(l.current_rpm(), Some(300.0));
    l.on_success(t0, Some(&headers(600, 200, None)));
    assert_eq!(l.current_rpm(), Some(600.0), "restored at once");
    l.on_success(t0, Some(&headers(9000, 200, None)));
    assert_eq!(
        l.current_rpm(),
        Some(3000.0),
        "never above the configured rpm"
    );
}

#[test]
fn an_unconfigured_provider_takes_a_stated_limit_from_a_429() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(None, None, None), t0);
    let info = headers(500, 0, Some(secs(60)));
    l.on_rate_limited(t0, None, Some(&info));
    assert_eq!(l.configured_rpm(), None);
    assert_eq!(l.rpm_ceiling(), Some(500.0));
    assert_eq!(l.current_rpm(), Some(500.0), "explained: the rate stays");
    assert_eq!(
        l.paused_until(),
        Some(t0 + ms(120)),
        "one unit at 500 a minute"
    );
    l.on_success(t0 + secs(5), Some(&headers(300, 200, None)));
    assert_eq!(l.rpm_ceiling(), Some(300.0));
}

#[test]
fn an_unconfigured_provider_starts_from_the_observed_pace_at_a_bare_429() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(None, None, None), t0);
    for i in 0..40 {
        start_and_finish(&mut l, t0 + secs(i), 1);
    }
    // One start a second was refused (40 starts over the 41 seconds up to now, about 58.5
    // a minute): the pace halves from there.
    l.on_rate_limited(t0 + secs(40), None, None);
    let half = 20.0 * 60.0 / 41.0;
    assert!((l.current_rpm().unwrap() - half).abs() < 1e-9);
    assert_eq!(l.learned_rpm(), l.current_rpm());
    assert_eq!(l.rpm_ceiling(), None);
    assert_eq!(l.available(t0 + secs(40)), 0);
    assert!(l.available(t0 + secs(44)) >= 1);
}

#[test]
fn bare_429s_estimate_the_true_limit_from_the_starts_between_them() {
    // A first burst of 100 starts in one second reads as a pace of 6,000 a minute.
    let (t0, mut l) = refused_after_a_burst(100);
    assert_eq!(l.current_rpm(), Some(3000.0));
    // Then the provider takes 59 starts over 7 s (the refusal's own start was the last
    // of the burst) and refuses the 61st: about 506 a minute.
    for i in 1..60 {
        start_and_finish(&mut l, t0 + secs(1) + ms(98 * i), 1);
    }
    let stale = l.acquire(t0 + ms(6950), 0).unwrap();
    let refused = l.acquire(t0 + secs(7), 0).unwrap();
    l.on_refused(t0 + ms(7050), &refused, Some(secs(1)), None);
    let estimate = 59.0 * 60.0 / 7.0;
    let held = l.learned_rpm().unwrap();
    assert!((held - 0.97 * estimate).abs() < 1e-6, "{held}");
    // An answer to an attempt started before that reaction changes nothing.
    l.on_refused(t0 + ms(7100), &stale, Some(secs(1)), None);
    assert_eq!(l.learned_rpm(), Some(held));
    // A good estimate is held for about `probe_every` attempts after the pause (100 at
    // 8.2 a second, cut to 8 s), then probed upwards.
    l.refresh(t0 + secs(16));
    assert_eq!(l.current_rpm(), Some(held));
    l.refresh(t0 + secs(25));
    assert!(l.current_rpm().unwrap() > held);
    for permit in [stale, refused] {
        l.release(permit, t0 + secs(25), None);
    }
}

#[test]
fn a_stated_token_limit_is_followed_and_a_spent_one_keeps_the_rate() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(Some(100), None, None), t0);
    l.on_rate_limited(t0, None, None);
    assert_eq!(
        l.current_tpm(),
        None,
        "a bare refusal says nothing about tokens"
    );
    let mut l = RateLimiter::new(&provider(Some(100), None, None), t0);
    let info = RateLimitInfo {
        limit_tokens: Some(90_000),
        remaining_tokens: Some(0),
        ..RateLimitInfo::default()
    };
    l.on_rate_limited(t0, None, Some(&info));
    assert_eq!(l.current_tpm(), Some(90_000.0));
    assert_eq!(l.current_rpm(), Some(100.0), "requests were not exhausted");
}

#[test]
fn headers_on_a_server_error_are_followed_without_growing_slow_start() {
    let t0 = Instant::now();
    let mut l = RateLimiter::new(&provider(None, None, None), t0);
    l.on_headers(t0, &RateLimitInfo::default());
    assert_eq!(l.slow_start_window(), Some(8));
    l.on_headers(t0, &headers(600, 0, None));
    assert_eq!(l.rpm_ceiling(), Some(600.0));
    assert_eq!(l.available(t0), 0, "a spent budget empties our bucket");
}
