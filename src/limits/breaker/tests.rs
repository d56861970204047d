use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;

fn breaker() -> CircuitBreaker {
    // failure_threshold 5, open_interval 15 s, open_jitter 0.2
    CircuitBreaker::new(&BreakerConfig::default())
}

/// Records `n` failures at `at`, with jitter sample `r`.
fn fail(b: &mut CircuitBreaker, at: Instant, n: usize, r: f64) {
    for _ in 0..n {
        b.record(at, Outcome::Failure, r);
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// A breaker opened at `t0` with jitter sample `r`.
fn opened(t0: Instant, r: f64) -> CircuitBreaker {
    let mut b = breaker();
    fail(&mut b, t0, 5, r);
    assert_eq!(b.state().as_str(), "open");
    b
}

#[test]
fn opens_after_the_threshold_of_consecutive_failures() {
    let t0 = Instant::now();
    let mut b = breaker();
    for _ in 0..4 {
        assert_eq!(b.record(t0, Outcome::Failure, 0.0), None);
    }
    assert_eq!(b.state().as_str(), "closed");
    let t = b.record(t0, Outcome::Failure, 0.0).expect("opens");
    assert_eq!(t.from, BreakerState::Closed);
    assert_eq!(
        t.to,
        BreakerState::Open {
            until: t0 + secs(15.0)
        }
    );
    assert_eq!(b.state().as_str(), "open");
}

#[test]
fn a_success_resets_the_count() {
    let t0 = Instant::now();
    let mut b = breaker();
    fail(&mut b, t0, 4, 0.0);
    b.record(t0, Outcome::Success, 0.0);
    assert_eq!(b.consecutive_failures(), 0);
    fail(&mut b, t0, 4, 0.0);
    assert_eq!(b.state().as_str(), "closed");
}

#[test]
fn neutral_outcomes_neither_count_nor_reset() {
    let t0 = Instant::now();
    let mut b = breaker();
    for _ in 0..4 {
        b.record(t0, Outcome::Failure, 0.0);
        b.record(t0, Outcome::Neutral, 0.0);
    }
    assert_eq!(
        b.consecutive_failures(),
        4,
        "a 429 counts nothing and resets nothing"
    );
    assert!(b.record(t0, Outcome::Failure, 0.0).is_some());
}

#[test]
fn open_denies_until_the_jittered_interval_ends() {
    let t0 = Instant::now();
    let mut b = opened(t0, 0.5); // 15 s × (1 + 0.2 × 0.5)
    let until = t0 + secs(16.5);
    assert_eq!(b.state(), BreakerState::Open { until });
    assert_eq!(b.available(t0 + secs(16.4)), 0);
    assert_eq!(
        b.allow(t0 + secs(16.4)),
        (Admission::Denied { until: Some(until) }, None)
    );
    assert_eq!(b.available(until), 1);
}

#[test]
fn half_open_admits_exactly_one_probe() {
    let t0 = Instant::now();
    let mut b = opened(t0, 0.0);
    let at = t0 + secs(15.0);
    let (admission, transition) = b.allow(at);
    assert_eq!(admission, Admission::Probe);
    let transition = transition.expect("open → half_open");
    assert_eq!(
        (transition.from.as_str(), transition.to.as_str()),
        ("open", "half_open")
    );
    assert_eq!(
        b.state(),
        BreakerState::HalfOpen {
            probe_in_flight: true
        }
    );
    assert_eq!(b.available(at), 0);
    assert_eq!(b.allow(at), (Admission::Denied { until: None }, None));
}

#[test]
fn a_probe_success_closes() {
    let t0 = Instant::now();
    let mut b = opened(t0, 0.0);
    b.allow(t0 + secs(15.0));
    let t = b
        .record(t0 + secs(16.0), Outcome::Success, 0.0)
        .expect("closes");
    assert_eq!((t.from.as_str(), t.to), ("half_open", BreakerState::Closed));
    assert_eq!(b.consecutive_failures(), 0);
    assert_eq!(b.available(t0 + secs(16.0)), UNLIMITED);
    assert_eq!(b.allow(t0 + secs(16.0)).0, Admission::Closed);
}

#[test]
fn a_probe_failure_opens_again_with_a_new_interval() {
    let t0 = Instant::now();
    let mut b = opened(t0, 0.0);
    b.allow(t0 + secs(15.0));
    let t = b
        .record(t0 + secs(20.0), Outcome::Failure, 1.0)
        .expect("opens");
    let until = t0 + secs(20.0 + 18.0);
    assert_eq!(t.to, BreakerState::Open { until });
    assert_eq!(b.available(until - secs(0.001)), 0);
}

#[test]
fn an_abandoned_or_neutral_probe_frees_the_slot() {
    let t0 = Instant::now();
    let mut b = opened(t0, 0.0);
    let at = t0 + secs(15.0);
    assert_eq!(b.allow(at).0, Admission::Probe);
    assert_eq!(b.probe_abandoned(at), None);
    assert_eq!(
        b.state(),
        BreakerState::HalfOpen {
            probe_in_flight: false
        }
    );
    assert_eq!(b.allow(at).0, Admission::Probe);
    assert_eq!(
        b.record(at, Outcome::Neutral, 0.0),
        None,
        "a 429 is no verdict"
    );
    assert_eq!(b.allow(at).0, Admission::Probe);
}

#[test]
fn results_arriving_while_open_change_nothing() {
    let t0 = Instant::now();
    let mut b = opened(t0, 0.0);
    let before = b.state();
    for outcome in [Outcome::Success, Outcome::Failure, Outcome::Neutral] {
        assert_eq!(b.record(t0 + secs(1.0), outcome, 0.9), None);
    }
    assert_eq!(b.state(), before);
}

#[test]
fn poll_reports_half_open_without_taking_the_probe() {
    let t0 = Instant::now();
    let mut b = opened(t0, 0.0);
    assert_eq!(b.poll(t0 + secs(14.0)), None);
    assert!(b.poll(t0 + secs(15.0)).is_some());
    assert_eq!(b.state().as_str(), "half_open");
    assert_eq!(b.allow(t0 + secs(15.0)), (Admission::Probe, None));
}

#[derive(Clone, Debug)]
enum Op {
    Advance(u64),
    Allow,
    Record(Outcome, f64),
    Abandon,
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        Just(Outcome::Success),
        Just(Outcome::Failure),
        Just(Outcome::Neutral)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u64..20_000).prop_map(Op::Advance),
        3 => Just(Op::Allow),
        3 => (outcome(), 0.0f64..1.0).prop_map(|(o, r)| Op::Record(o, r)),
        1 => Just(Op::Abandon),
    ]
}

proptest! {
    #[test]
    fn consecutive_failures_open_it_whatever_came_before(
        prefix in proptest::collection::vec(prop_oneof![Just(Outcome::Success), Just(Outcome::Neutral)], 0..20),
        neutral_between in proptest::collection::vec(any::<bool>(), 5),
        threshold in 1u32..10,
    ) {
        let t0 = Instant::now();
        let mut b = CircuitBreaker::new(&BreakerConfig { failure_threshold: threshold, ..BreakerConfig::default() });
        for outcome in prefix {
            b.record(t0, outcome, 0.0);
        }
        for i in 0..threshold {
            prop_assert_eq!(b.state().as_str(), "closed");
            b.record(t0, Outcome::Failure, 0.5);
            if neutral_between[i as usize % 5] {
                b.record(t0, Outcome::Neutral, 0.5);
            }
        }
        prop_assert_eq!(b.state().as_str(), "open");
        prop_assert_eq!(b.available(t0), 0);
    }

    #[test]
    fn a_success_while_closed_keeps_it_closed(
        failures in 0u32..4,
        ops in proptest::collection::vec(op(), 0..60),
    ) {
        let t0 = Instant::now();
        let mut b = breaker();
        let mut now = t0;
        for op in ops {
            match op {
                Op::Advance(ms) => now += Duration::from_millis(ms),
                Op::Allow => { b.allow(now); }
                Op::Record(o, r) => { b.record(now, o, r); }
                Op::Abandon => { b.probe_abandoned(now); }
            }
        }
        prop_assume!(b.state() == BreakerState::Closed);
        b.record(now, Outcome::Success, 0.0);
        for _ in 0..failures {
            b.record(now, Outcome::Failure, 0.0);
        }
        prop_assert_eq!(b.record(now, Outcome::Success, 0.0), None);
        prop_assert_eq!(b.state(), BreakerState::Closed);
        prop_assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn half_open_never_admits_a_second_probe_while_one_is_out(
        ops in proptest::collection::vec(op(), 0..300),
    ) {
        let t0 = Instant::now();
        let mut b = breaker();
        let mut now = t0;
        // The caller's view: a probe was admitted and nothing has reported since.
        let mut probe_out = false;
        for op in ops {
            match op {
                Op::Advance(ms) => now += Duration::from_millis(ms),
                Op::Allow => {
                    let (admission, _) = b.allow(now);
                    if admission == Admission::Probe {
                        prop_assert!(!probe_out, "a second probe while one is out");
                        probe_out = true;
                    }
                    prop_assert_eq!(admission == Admission::Closed, b.state() == BreakerState::Closed);
                }
                Op::Record(o, r) => {
                    b.record(now, o, r);
                    probe_out = false;
                }
                Op::Abandon => {
                    b.probe_abandoned(now);
                    probe_out = false;
                }
            }
            if b.state() == (BreakerState::HalfOpen { probe_in_flight: true }) {
                prop_assert_eq!(b.available(now), 0);
            }
            let open = matches!(b.state(), BreakerState::Open { until } if now < until);
            prop_assert_eq!(b.available(now) == 0, open || b.state() == (BreakerState::HalfOpen { probe_in_flight: true }));
        }
    }
}
