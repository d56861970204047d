//! Per-provider protection, as pure logic: the adaptive rate limiter (requests per minute,
//! tokens per minute, concurrency) and what it is told ([`RateLimitInfo`], the limits a
//! provider states on a response), the circuit breaker, the adaptive attempt timeout, the
//! decaying share of timed-out attempts, and the token estimate charged before a call.
//! Nothing here does I/O, sleeps or reads a clock: every method takes the current
//! `Instant` (and the breaker its random sample), so tests drive them by advancing fake
//! time.
//!
//! The dispatcher uses them as *advisors*, not gatekeepers: before claiming runs, the
//! producer asks each provider how many attempts may start now (`available`) and claims only
//! that many. A run held back stays queued in the database, burning no attempt and holding
//! no worker slot. Each claimed attempt then takes a [`Permit`] and reports its result, which
//! is how the limiter learns the provider's real capacity and the breaker its health.

mod attempt_timeout;
mod breaker;
mod bucket;
mod probe;
mod rate_limiter;
mod timeout_rate;
mod tokens;

pub use attempt_timeout::{LatencyWindow, ModelWindows, TimeoutPolicy};
pub use breaker::{Admission, BreakerState, CircuitBreaker, Outcome, Transition};
pub use rate_limiter::{LimiterSnapshot, Permit, RateLimitInfo, RateLimiter, Wait, WaitReason};
pub use timeout_rate::TimeoutRate;
pub use tokens::estimate_tokens;

use std::time::{Duration, Instant};

/// What `available` reports when nothing limits the count. Large enough to exceed any
/// claim batch, small enough that adding it up across providers cannot overflow a `u32`.
pub const UNLIMITED: u32 = 1 << 20;

/// The slow-start window at which a provider that never refused nor stated a limit is
/// taken as unlimited.
pub const SLOW_START_END: u32 = 1024;

/// The longest pause a provider can impose through its headers. A larger `retry-after`
/// (a daily quota, or a garbled header) is cut to this; the limiter then simply tries again
/// and is told again.
const LONGEST_PAUSE: Duration = Duration::from_secs(24 * 60 * 60);

/// `now + wait`, with `wait` cut to [`LONGEST_PAUSE`] so untrusted input cannot overflow
/// an `Instant`.
fn pause_end(now: Instant, wait: Duration) -> Instant {
    now + wait.min(LONGEST_PAUSE)
}
