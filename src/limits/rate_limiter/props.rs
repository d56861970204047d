//! Property tests for the limiter's arithmetic, over simulated time.

use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::tests::provider;
use super::*;

#[derive(Clone, Debug)]
enum Event {
    Advance(u64),
    Acquire(u32),
    Release(Option<u32>),
    RateLimited(Option<u64>, Option<RateLimitInfo>),
    Success(Option<RateLimitInfo>),
    Restore(f64, f64),
}

fn info() -> impl Strategy<Value = RateLimitInfo> {
    let dimension = (
        1u64..20_000,
        0.0f64..=1.0,
        proptest::option::of(0u64..120_000),
    )
        .prop_map(|(limit, share, reset)| {
            let remaining = (limit as f64 * share) as u64;
            (limit, remaining, reset.map(Duration::from_millis))
        });
    (
        proptest::option::of(dimension.clone()),
        proptest::option::of(dimension),
    )
        .prop_map(|(requests, tokens)| RateLimitInfo {
            limit_requests: requests.map(|r| r.0),
            remaining_requests: requests.map(|r| r.1),
            reset_requests: requests.and_then(|r| r.2),
            limit_tokens: tokens.map(|t| t.0),
            remaining_tokens: tokens.map(|t| t.1),
            reset_tokens: tokens.and_then(|t| t.2),
        })
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (0u64..5_000).prop_map(Event::Advance),
        4 => (0u32..4_000).prop_map(Event::Acquire),
        2 => proptest::option::of(0u32..8_000).prop_map(Event::Release),
        1 => (proptest::option::of(0u64..10_000), proptest::option::of(info()))
            .prop_map(|(after, info)| Event::RateLimited(after, info)),
        3 => proptest::option::of(info()).prop_map(Event::Success),
        1 => (-1e6f64..1e7, -1e6f64..1e7).prop_map(|(r, t)| Event::Restore(r, t)),
    ]
}

/// Plays `events` against `limiter` from `t0`, calling `check` after each.
fn play(
    limiter: &mut RateLimiter,
    t0: Instant,
    events: Vec<Event>,
    mut check: impl FnMut(&RateLimiter, Instant) -> Result<(), TestCaseError>,
) -> Result<(), TestCaseError> {
    let mut now = t0;
    let mut held = Vec::new();
    for event in events {
        match event {
            Event::Advance(ms) => now += Duration::from_millis(ms),
            Event::Acquire(estimate) => {
                if let Ok(permit) = limiter.acquire(now, estimate) {
                    held.push(permit);
                }
            }
            Event::Release(actual) => {
                if !held.is_empty() {
                    limiter.release(held.remove(0), now, actual);
                }
            }
            Event::RateLimited(after, info) => {
                limiter.on_rate_limited(now, after.map(Duration::from_millis), info.as_ref())
            }
            Event::Success(info) => limiter.on_success(now, info.as_ref()),
            Event::Restore(rpm, tpm) => limiter.restore(
                LimiterSnapshot {
                    learned_rpm: Some(rpm),
                    stated_tpm: Some(tpm),
                    ..LimiterSnapshot::default()
                },
                now,
            ),
        }
        check(limiter, now)?;
    }
    Ok(())
}

fn without_token_limits(event: Event) -> Event {
    let strip = |info: Option<RateLimitInfo>| {
        info.map(|i| RateLimitInfo {
            limit_tokens: None,
            ..i
        })
    };
    match event {
        Event::RateLimited(after, info) => Event::RateLimited(after, strip(info)),
        Event::Success(info) => Event::Success(strip(info)),
        // Not a number: no token limit is restored.
        Event::Restore(rpm, _) => Event::Restore(rpm, f64::NAN),
        other => other,
    }
}

/// Whether a rate is between its floor and its ceiling; a rate learned with no ceiling
/// only has to be positive.
fn within(rate: Option<f64>, ceiling: Option<f64>, min_share: f64) -> bool {
    match (rate, ceiling) {
        (None, None) => true,
        (Some(rate), None) => rate > 0.0,
        (Some(rate), Some(ceiling)) => {
            let slack = 1e-9 * ceiling;
            rate >= ceiling * min_share - slack && rate <= ceiling + slack
        }
        _ => false,
    }
}

/// The most starts in any half-open minute `[t, t + 60 s)`.
fn busiest_minute(starts: &[Instant]) -> usize {
    let mut most = 0;
    let mut first = 0;
    for (last, &at) in starts.iter().enumerate() {
        while at.duration_since(starts[first]) >= Duration::from_secs(60) {
            first += 1;
        }
        most = most.max(last + 1 - first);
    }
    most
}

proptest! {
    #[test]
    fn the_rate_stays_between_floor_and_ceiling(
        rpm in proptest::option::of(1u32..5_000),
        tpm in proptest::option::of(1u32..500_000),
        events in proptest::collection::vec(event(), 1..200),
    ) {
        let t0 = Instant::now();
        let config = provider(rpm, tpm, None);
        let min_share = config.limiter.min_share;
        let mut limiter = RateLimiter::new(&config, t0);
        play(&mut limiter, t0, events, |l, _| {
            prop_assert!(within(l.current_rpm(), l.rpm_ceiling(), min_share),
                "rpm {:?} ceiling {:?}", l.current_rpm(), l.rpm_ceiling());
            prop_assert!(within(l.current_tpm(), l.tpm_ceiling(), min_share),
                "tpm {:?} ceiling {:?}", l.current_tpm(), l.tpm_ceiling());
            // A stated limit may lower a configured one, never raise it.
            if let Some(rpm) = rpm {
                prop_assert!(l.rpm_ceiling().is_some_and(|c| c <= f64::from(rpm)));
            }
            Ok(())
        })?;
    }

    #[test]
    fn available_is_exactly_what_acquire_grants(
        rpm in proptest::option::of(1u32..3_000),
        conc in proptest::option::of(1u32..50),
        events in proptest::collection::vec(event(), 0..100),
    ) {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(&provider(rpm, None, conc), t0);
        let mut now = t0;
        // Requests and concurrency are exact; a token balance is counted in typical
        // estimates (see `available_spreads_a_token_balance_over_typical_estimates`).
        let events = events.into_iter().map(without_token_limits).collect();
        play(&mut limiter, t0, events, |_, at| { now = at; Ok(()) })?;
        // As the producer does: a learned pace moves with time.
        limiter.refresh(now);
        let n = limiter.available(now);
        prop_assume!(n < UNLIMITED);
        for i in 0..n {
            prop_assert!(limiter.acquire(now, 0).is_ok(), "start {i} of {n} refused");
        }
        prop_assert!(limiter.acquire(now, 0).is_err());
    }

    #[test]
    fn polled_starts_never_exceed_the_configured_rpm_in_any_minute(
        rpm in 1u32..1_500,
        steps in proptest::collection::vec((0u64..3_000, 0u8..8), 1..300),
    ) {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(&provider(Some(rpm), None, None), t0);
        let mut now = t0;
        let mut starts = Vec::new();
        for (step_ms, signal) in steps {
            now += Duration::from_millis(step_ms);
            match signal {
                0 => limiter.on_rate_limited(now, None, None),
                1..=4 => limiter.on_success(now, None),
                _ => {}
            }
            while let Ok(permit) = limiter.acquire(now, 0) {
                starts.push(now);
                limiter.release(permit, now, None);
            }
        }
        prop_assert!(busiest_minute(&starts) <= rpm as usize,
            "{} starts in one minute at {rpm} rpm", busiest_minute(&starts));
    }

    #[test]
    fn starts_at_every_promised_instant_never_exceed_the_configured_rpm(
        rpm in 1u32..1_200,
        successes_every in 1usize..20,
        rate_limited_at in proptest::option::of(0usize..2_000),
    ) {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(&provider(Some(rpm), None, None), t0);
        let end = t0 + Duration::from_secs(150);
        let mut now = t0;
        let mut starts = Vec::new();
        while now < end {
            match limiter.acquire(now, 0) {
                Ok(permit) => {
                    starts.push(now);
                    limiter.release(permit, now, None);
                    if starts.len() % successes_every == 0 {
                        limiter.on_success(now, None);
                    }
                    if Some(starts.len()) == rate_limited_at {
                        limiter.on_rate_limited(now, None, None);
                    }
                }
                Err(wait) => {
                    let until = wait.until.expect("no concurrency cap");
                    prop_assert!(until > now, "a wait must move time forward");
                    now = until;
                }
            }
        }
        prop_assert!(busiest_minute(&starts) <= rpm as usize,
            "{} starts in one minute at {rpm} rpm", busiest_minute(&starts));
        // And the limiter is not needlessly slow: the last minute runs at the ceiling,
        // less the burst allowance (`BURST_WINDOW`).
        let last_minute = starts.iter().filter(|&&s| s >= end - Duration::from_secs(60)).count();
        prop_assert!(last_minute as f64 >= f64::from(rpm) * 59.0 / 60.0 - 2.0 || rate_limited_at.is_some(),
            "only {last_minute} starts in the last minute at {rpm} rpm");
    }
}
