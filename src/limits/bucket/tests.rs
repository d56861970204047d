//! The bucket and the count of recent starts, on fake instants.

use super::*;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[test]
fn capacity_is_one_seconds_worth_but_at_least_one() {
    let t0 = Instant::now();
    assert_eq!(Bucket::full(6000.0, 0.05, t0).whole(t0, u32::MAX), 100);
    assert_eq!(Bucket::full(30.0, 0.05, t0).whole(t0, u32::MAX), 1);
    assert_eq!(Bucket::full(6000.0, 0.05, t0).whole(t0, 7), 7);
}

#[test]
fn refill_never_exceeds_the_capacity() {
    let t0 = Instant::now();
    let b = Bucket::empty(600.0, 0.05, t0);
    assert_eq!(b.whole(t0, u32::MAX), 0);
    assert_eq!(b.whole(t0 + secs(3600.0), u32::MAX), 10);
}

#[test]
fn ready_at_is_when_the_level_gets_there() {
    let t0 = Instant::now();
    let mut b = Bucket::full(60.0, 0.05, t0);
    b.take(t0, 1.0);
    let ready = b.ready_at(t0, 1.0);
    assert_eq!(ready, t0 + secs(1.0));
    assert!(b.has(ready, 1.0));
    assert!(!b.has(ready - Duration::from_millis(1), 1.0));
}

#[test]
fn a_rate_change_does_not_apply_retroactively() {
    let t0 = Instant::now();
    let mut b = Bucket::empty(60.0, 0.05, t0);
    // Half a second at 60/min fills half a unit; then the rate halves.
    b.set_rate(t0 + secs(0.5), 30.0);
    assert_eq!(b.ready_at(t0 + secs(0.5), 1.0), t0 + secs(1.5));
}

#[test]
fn rates_clamp_to_floor_and_ceiling() {
    let t0 = Instant::now();
    let mut b = Bucket::full(100.0, 0.05, t0);
    b.set_rate(t0, 1.0);
    assert_eq!(b.rate(), 5.0);
    b.set_rate(t0, 1e9);
    assert_eq!(b.rate(), 100.0);
    b.set_bounds(t0, 2.0, 40.0);
    assert_eq!((b.rate(), b.floor()), (40.0, 2.0));
    b.set_bounds(t0, 80.0, 40.0);
    assert_eq!(b.floor(), 40.0, "the floor never exceeds the ceiling");
}

#[test]
fn a_zero_ceiling_counts_as_one_a_minute() {
    let t0 = Instant::now();
    let b = Bucket::empty(0.0, 0.05, t0);
    assert_eq!(b.rate(), 1.0);
    assert_eq!(b.ready_at(t0, 1.0), t0 + secs(60.0));
}

#[test]
fn a_debt_is_paid_back_before_the_next_start() {
    let t0 = Instant::now();
    let mut b = Bucket::full(6000.0, 0.05, t0); // 100 a second
    b.take(t0, 300.0); // 100 - 300 = -200
    assert!(!b.has(t0, 0.0));
    let ready = b.ready_at(t0, 0.0);
    assert!(
        ready > t0 + secs(2.0) && ready < t0 + secs(2.1),
        "{ready:?}"
    );
    b.give(t0, 1e6);
    assert_eq!(
        b.whole(t0, u32::MAX),
        100,
        "a refund never exceeds the capacity"
    );
}

#[test]
fn a_stated_burst_is_spent_first_and_never_refilled() {
    let t0 = Instant::now();
    let mut b = Bucket::full(600.0, 0.05, t0); // 10 a second
    b.lift(t0, 100.0);
    assert_eq!(b.whole(t0, u32::MAX), 100);
    assert!(b.spends_stated_burst());
    b.take(t0, 95.0);
    assert_eq!(b.whole(t0, u32::MAX), 5);
    b.take(t0, 5.0);
    assert!(!b.spends_stated_burst(), "the burst went first");
    assert_eq!(
        b.whole(t0 + secs(60.0), u32::MAX),
        10,
        "refilled to one second"
    );
    b.lift(t0 + secs(60.0), 3.0);
    assert_eq!(b.whole(t0 + secs(60.0), u32::MAX), 10, "never lowered");
    b.lift(t0 + secs(60.0), 50.0);
    b.drain(t0 + secs(60.0));
    assert_eq!(
        b.whole(t0 + secs(60.0), u32::MAX),
        0,
        "an empty provider drains it"
    );
}

#[test]
fn recent_starts_count_the_last_minute_only() {
    let t0 = Instant::now();
    let mut starts = RecentStarts::new(t0);
    for i in 0..30 {
        starts.record(t0 + secs(f64::from(i)));
    }
    assert_eq!(starts.last_minute(t0 + secs(30.0)), 30);
    assert_eq!(starts.last_minute(t0 + secs(75.0)), 14);
    starts.record(t0 + secs(200.0));
    assert_eq!(starts.last_minute(t0 + secs(200.0)), 1);
}

#[test]
fn recent_starts_read_as_a_pace() {
    let t0 = Instant::now();
    let mut starts = RecentStarts::new(t0);
    for _ in 0..16 {
        starts.record(t0 + secs(0.2));
    }
    assert_eq!(
        starts.per_minute(t0 + secs(0.5)),
        960.0,
        "a burst in one second"
    );
    for i in 0..60 {
        starts.record(t0 + secs(f64::from(i) + 0.5));
    }
    let pace = starts.per_minute(t0 + secs(59.9));
    assert!((75.0..=77.0).contains(&pace), "{pace}");
    assert_eq!(RecentStarts::new(t0).per_minute(t0), 0.0);
}
