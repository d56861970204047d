//! The pure domain of a run: identifiers, classes, statuses, the legal transitions between
//! them and the retry/backoff arithmetic. Nothing here does I/O or reads a clock; every
//! other module builds on these types.
//!
//! Layout: this module holds the ids, classes, error kinds and what follows a failed
//! attempt; `status` the statuses and their transitions; `backoff` the retry delays;
//! `names` the declaration of the enums whose variants have stable string names.

/// Declares a UUIDv7 id newtype, so ids sort by creation time and index well: `new` (and
/// `Default`) make a fresh one, `Display` shows the UUID.
macro_rules! v7_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        pub struct $name(pub Uuid);

        impl $name {
            pub fn new() -> Self {
                $name(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

#[macro_use]
mod names;

mod backoff;
mod status;

pub use backoff::{Backoff, retry_delay};
pub use status::{Status, Transition, TransitionError};

use std::fmt;
use std::ops::RangeInclusive;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The `max_attempts` a run may be given, by its request or by the config's
/// `retry.max_attempts`: at least one attempt, and a ceiling so that a run which keeps
/// failing gives up in bounded time.
pub const MAX_ATTEMPTS_RANGE: RangeInclusive<u32> = 1..=50;

/// The priorities a run may have: 1 is the most urgent. Runs of one class are dispatched
/// in priority order, then by due time.
pub const PRIORITY_RANGE: RangeInclusive<i16> = 1..=10;

/// The priority of a run whose request names none: near the middle of [`PRIORITY_RANGE`],
/// so a client can rank work both above and below it.
pub const DEFAULT_PRIORITY: i16 = 5;

/// Longest accepted value, in bytes, of a run's short string fields: model, tenant,
/// concurrency key, session, idempotency key and batch.
pub const MAX_NAME_LEN: usize = 256;

v7_id!(
    /// A run's identity.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
    #[serde(transparent)]
    RunId
);

impl FromStr for RunId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(RunId)
    }
}

v7_id!(
    /// Identity of one worker process's claims: leases name their owner so that a stale
    /// process can never finish a run that was rescued and handed to someone else.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    WorkerId
);

named_enum! {
    /// Whether a person is waiting (`live`) or the work is opportunistic (`background`).
    /// The numeric rank is the dispatch order: lower ranks go first.
    #[derive(PartialOrd, Ord, Default)]
    pub enum Class {
        #[default]
        Live,
        Background,
    }
}

impl Class {
    /// Rank stored in the database so that `ORDER BY class` puts live work first.
    pub fn rank(self) -> i16 {
        match self {
            Class::Live => 0,
            Class::Background => 1,
        }
    }

    pub fn from_rank(rank: i16) -> Option<Class> {
        match rank {
            0 => Some(Class::Live),
            1 => Some(Class::Background),
            _ => None,
        }
    }
}

named_enum! {
    /// Why a run timed out: it never started in time, or its last attempt ran too long.
    pub enum TimeoutOrigin {
        QueueWait,
        Generation,
    }
}

named_enum! {
    /// How an attempt failed. The kind decides whether the run is retried and which
    /// protection (limiter or breaker) the failure feeds.
    pub enum ErrorKind {
        RateLimited,
        Server,
        Client,
        Timeout,
        Connection,
        BreakerOpen,
        Cancelled,
        InvalidOutput,
    }
}

impl ErrorKind {
    /// Whether another attempt may succeed. Client errors (a malformed request) and a
    /// cancellation never improve by trying again.
    pub fn is_retryable(self) -> bool {
        !matches!(self, ErrorKind::Client | ErrorKind::Cancelled)
    }
}

/// What the dispatcher does with a run after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Back to `queued`, due again after this delay.
    Retry { delay: std::time::Duration },
    /// No attempt left (or no point in another): the run ends with this status.
    Finish {
        status: Status,
        timeout_origin: Option<TimeoutOrigin>,
    },
}

/// Decides the fate of a run whose attempt number `attempt` (1-based) failed with `kind`.
/// `provider_delay` is what the provider asked for (retry-after); it wins when longer
/// than our own backoff.
pub fn after_failure(
    attempt: u32,
    max_attempts: u32,
    kind: ErrorKind,
    provider_delay: Option<std::time::Duration>,
    backoff: &Backoff,
    unit_random: f64,
) -> AfterFailure {
    if kind.is_retryable() && attempt < max_attempts {
        return AfterFailure::Retry {
            delay: retry_delay(backoff, attempt, provider_delay, unit_random),
        };
    }
    match kind {
        ErrorKind::Cancelled => AfterFailure::Finish {
            status: Status::Cancelled,
            timeout_origin: None,
        },
        ErrorKind::Timeout => AfterFailure::Finish {
            status: Status::TimedOut,
            timeout_origin: Some(TimeoutOrigin::Generation),
        },
        _ => AfterFailure::Finish {
            status: Status::Failed,
            timeout_origin: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff::example()
    }

    #[test]
    fn client_errors_finish_at_once() {
        let next = after_failure(1, 5, ErrorKind::Client, None, &backoff(), 0.5);
        assert_eq!(
            next,
            AfterFailure::Finish {
                status: Status::Failed,
                timeout_origin: None
            }
        );
    }

    #[test]
    fn last_timeout_is_a_generation_timeout() {
        let next = after_failure(5, 5, ErrorKind::Timeout, None, &backoff(), 0.5);
        assert_eq!(
            next,
            AfterFailure::Finish {
                status: Status::TimedOut,
                timeout_origin: Some(TimeoutOrigin::Generation)
            }
        );
    }

    #[test]
    fn retryable_failures_retry_until_the_last_attempt() {
        for attempt in 1..5 {
            let next = after_failure(attempt, 5, ErrorKind::Server, None, &backoff(), 0.5);
            assert!(
                matches!(next, AfterFailure::Retry { .. }),
                "attempt {attempt}: {next:?}"
            );
        }
        let last = after_failure(5, 5, ErrorKind::Server, None, &backoff(), 0.5);
        assert!(matches!(
            last,
            AfterFailure::Finish {
                status: Status::Failed,
                ..
            }
        ));
    }

    #[test]
    fn names_round_trip() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(kind.as_str()), Some(kind));
        }
        for class in Class::ALL {
            assert_eq!(Class::parse(class.as_str()), Some(class));
            assert_eq!(Class::from_rank(class.rank()), Some(class));
        }
        for origin in TimeoutOrigin::ALL {
            assert_eq!(TimeoutOrigin::parse(origin.as_str()), Some(origin));
        }
    }

    /// The names in the database and metrics are the ones the API reads and writes.
    #[test]
    fn names_are_the_serde_names() {
        fn check<T: serde::Serialize + fmt::Display>(all: &[T]) {
            for v in all {
                assert_eq!(serde_json::to_value(v).unwrap(), v.to_string());
            }
        }
        check(&Class::ALL);
        check(&TimeoutOrigin::ALL);
        check(&ErrorKind::ALL);
        check(&Status::ALL);
        assert_eq!(ErrorKind::RateLimited.as_str(), "rate_limited");
        assert_eq!(Status::TimedOut.as_str(), "timed_out");
    }
}
