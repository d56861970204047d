//! A token bucket whose refill rate adapts between a floor and a ceiling (the rate limiter
//! keeps one for requests and one for tokens; a ceiling may be unbounded while the rate is
//! learned from refusals), and the count of recent attempt starts a
//! limiter uses to learn a ceiling nobody configured. Arithmetic on the instants passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How much may start at once after an idle spell: one second's worth of the current rate,
/// and never less than one unit. A whole minute's budget bursting right after start (or
/// after a pause) is what trips a provider that enforces its per-minute limit over shorter
/// windows, as OpenAI documents doing; one second's worth still lets the producer claim a
/// useful batch per poll at high rates.
pub(super) const BURST_WINDOW: Duration = Duration::from_secs(1);

/// Slack for floating-point rounding when a level is compared with what is needed. At any
/// rate of one a minute or more it is worth less than a nanosecond of refill.
const EPSILON: f64 = 1e-12;

/// Longest wait ever reported. Only a rate near zero (a tiny `min_share`) gets here; the
/// caller simply asks again then.
const LONGEST_WAIT: Duration = Duration::from_secs(60 * 60);

const SECS_PER_MINUTE: f64 = 60.0;

/// One adaptive bucket. Rates are per minute; the level is in units (requests or tokens)
/// and may go negative for tokens, where a start is charged its whole estimate as a debt
/// the refill pays back before the next start. Above the level, a burst the provider
/// stated (see [`Bucket::lift`]) may be held: spent first, never refilled.
#[derive(Clone, Debug)]
pub(super) struct Bucket {
    /// The highest the rate may be: the configured or stated limit, whichever is lower.
    ceiling: f64,
    /// The lowest the rate may be.
    floor: f64,
    /// Whether no sliding minute may hold more than the rate (see `refill_per_sec`): only
    /// for a limit we configured and nobody described to us.
    strict_minute: bool,
    /// The current, adapted rate.
    rate: f64,
    /// What refills, up to the burst capacity.
    level: f64,
    /// Units the provider stated it holds beyond what our level holds: spent before the
    /// level, never refilled, gone when the provider says its bucket is empty.
    stated_extra: f64,
    /// The instant `level` was computed for.
    updated: Instant,
}

impl Bucket {
    /// A bucket at its ceiling, full: the first attempts after start need not wait.
    pub fn full(ceiling: f64, min_share: f64, now: Instant) -> Self {
        let mut bucket = Self::empty(ceiling, min_share, now);
        bucket.level = bucket.capacity();
        bucket
    }

    /// A bucket at its ceiling, empty: for a limit learned from a refusal.
    pub fn empty(ceiling: f64, min_share: f64, now: Instant) -> Self {
        // A ceiling of zero would stop the refill forever; config validation should refuse
        // it, and here it counts as one a minute so the arithmetic stays finite.
        let ceiling = ceiling.max(1.0);
        Bucket {
            ceiling,
            floor: ceiling * min_share.clamp(0.0, 1.0),
            strict_minute: true,
            rate: ceiling,
            level: 0.0,
            stated_extra: 0.0,
            updated: now,
        }
    }

    pub fn floor(&self) -> f64 {
        self.floor
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Moves the rate, clamped to `[floor, ceiling]`. The level is brought up to `now` at
    /// the old rate first, so a change never applies retroactively.
    pub fn set_rate(&mut self, now: Instant, rate: f64) {
        self.advance(now);
        self.rate = rate.clamp(self.floor(), self.ceiling);
        self.level = self.level.min(self.capacity());
    }

    /// Moves the bounds (the ceiling at least one a minute, the floor at most the ceiling),
    /// keeping the rate inside.
    pub fn set_bounds(&mut self, now: Instant, floor: f64, ceiling: f64) {
        self.advance(now);
        self.ceiling = ceiling.max(1.0);
        self.floor = floor.clamp(0.0, self.ceiling);
        self.set_rate(now, self.rate);
    }

    /// Whether the refill keeps every sliding minute within the rate (see `refill_per_sec`).
    pub fn set_strict_minute(&mut self, now: Instant, strict: bool) {
        self.advance(now);
        self.strict_minute = strict;
    }

    /// Empties the bucket (a debt stays): the provider said its own is empty.
    pub fn drain(&mut self, now: Instant) {
        self.advance(now);
        self.level = self.level.min(0.0);
        self.stated_extra = 0.0;
    }

    /// Raises what may be spent at once to `stated` units, when that is more than the
    /// bucket holds: the provider stated a burst deeper than our one second of rate. Never
    /// lowers anything (a low statement is no reason to slow down; an empty one drains).
    pub fn lift(&mut self, now: Instant, stated: f64) {
        self.advance(now);
        self.stated_extra = self.stated_extra.max(stated - self.level.max(0.0));
    }

    /// Whether the next start would spend a stated burst rather than our own level.
    pub fn spends_stated_burst(&self) -> bool {
        self.stated_extra > 0.0
    }

    /// Empties the bucket so that it is still empty at `until`: nothing refilled before then
    /// may be spent.
    pub fn empty_until(&mut self, now: Instant, until: Instant) {
        self.drain(now);
        let ahead = until.saturating_duration_since(now).as_secs_f64();
        self.level -= ahead * self.refill_per_sec();
    }

    /// Burst capacity: [`BURST_WINDOW`]'s worth of the current rate, at least one unit.
    fn capacity(&self) -> f64 {
        (self.rate * BURST_WINDOW.as_secs_f64() / SECS_PER_MINUTE).max(1.0)
    }

    /// Units per second. For a strict minute the refill is the rate less the burst beyond
    /// one unit, so that a full bucket plus any minute of refill never exceeds the rate: then
    /// no sliding minute ever holds more starts than the configured limit. At 600 rpm that
    /// costs 1.5% of throughput, which buys never tripping a provider that counts a strict
    /// sliding minute. A limit the provider states or that refusals taught us is a bucket
    /// refilling at the full rate, so it gets the full rate.
    fn refill_per_sec(&self) -> f64 {
        let burst = if self.strict_minute {
            self.capacity() - 1.0
        } else {
            0.0
        };
        (self.rate - burst) / SECS_PER_MINUTE
    }

    /// What may be spent at `now` (the level and any stated burst), without changing
    /// anything.
    pub fn level_at(&self, now: Instant) -> f64 {
        self.refilled_at(now) + self.stated_extra
    }

    /// The refilling level alone at `now`.
    fn refilled_at(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        (self.level + elapsed * self.refill_per_sec()).min(self.capacity())
    }

    fn advance(&mut self, now: Instant) {
        self.level = self.refilled_at(now);
        self.updated = self.updated.max(now);
    }

    /// Whether the level at `now` reaches `need` (up to rounding).
    pub fn has(&self, now: Instant, need: f64) -> bool {
        self.level_at(now) + EPSILON >= need
    }

    /// Whole units available at `now` (at most `cap`).
    pub fn whole(&self, now: Instant, cap: u32) -> u32 {
        let level = self.level_at(now) + EPSILON;
        if level < 1.0 {
            0
        } else {
            level.floor().min(f64::from(cap)) as u32
        }
    }

    /// The earliest instant at which the level reaches `need` (which must not exceed the
    /// capacity); `now` when it already does.
    pub fn ready_at(&self, now: Instant, need: f64) -> Instant {
        let deficit = need - self.level_at(now);
        if deficit <= EPSILON {
            return now;
        }
        let secs = deficit / self.refill_per_sec();
        // Rounded up to the nanosecond, so the level really is there at the instant given.
        let wait = if secs.is_finite() {
            Duration::from_nanos((secs * 1e9).ceil() as u64).min(LONGEST_WAIT)
        } else {
            LONGEST_WAIT
        };
        now + wait
    }

    /// Removes `amount`, from a stated burst first (the level may go negative: a debt).
    pub fn take(&mut self, now: Instant, amount: f64) {
        self.advance(now);
        let from_burst = amount.min(self.stated_extra);
        self.stated_extra -= from_burst;
        self.level -= amount - from_burst;
    }

    /// Gives back `amount`, never above the burst capacity.
    pub fn give(&mut self, now: Instant, amount: f64) {
        self.advance(now);
        self.level = (self.level + amount).min(self.capacity());
    }
}

/// Attempt starts over the last minute, counted per second: how fast we were really going
/// when a provider with no configured limit first refused us.
#[derive(Clone, Debug)]
pub(super) struct RecentStarts {
    origin: Instant,
    /// (second since `origin`, starts in it), oldest first, covering at most a minute.
    seconds: VecDeque<(u64, u32)>,
}

const WINDOW_SECS: u64 = 60;

impl RecentStarts {
    pub fn new(origin: Instant) -> Self {
        RecentStarts {
            origin,
            seconds: VecDeque::new(),
        }
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    pub fn record(&mut self, now: Instant) {
        let second = self.second(now);
        while self
            .seconds
            .front()
            .is_some_and(|&(s, _)| s + WINDOW_SECS <= second)
        {
            self.seconds.pop_front();
        }
        match self.seconds.back_mut() {
            Some((s, count)) if *s >= second => *count = count.saturating_add(1),
            _ => self.seconds.push_back((second, 1)),
        }
    }

    /// The rate of the recent starts, per minute: the starts of the last minute over the
    /// span they cover (at least one second). A burst of 16 starts in the first second reads
    /// as 960 a minute, not 16: the provider refused that pace, not that count.
    pub fn per_minute(&self, now: Instant) -> f64 {
        let second = self.second(now);
        let Some(&(first, _)) = self
            .seconds
            .iter()
            .find(|&&(s, _)| s + WINDOW_SECS > second)
        else {
            return 0.0;
        };
        let span = (second.saturating_sub(first) + 1) as f64;
        f64::from(self.last_minute(now)) * 60.0 / span
    }

    /// Starts in the minute up to `now` (to the second).
    pub fn last_minute(&self, now: Instant) -> u32 {
        let second = self.second(now);
        self.seconds
            .iter()
            .filter(|&&(s, _)| s + WINDOW_SECS > second)
            .fold(0u32, |sum, &(_, n)| sum.saturating_add(n))
    }
}

#[cfg(test)]
mod tests;
