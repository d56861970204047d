//! Run statuses and the table of legal transitions between them.
//!
//! ```text
//! queued ──claim──▶ running ──complete──▶ completed
//!   ▲  │               │ ├──fail (attempts left)──▶ queued (next_attempt_at)
//!   │  │               │ ├──fail (last attempt)───▶ failed | timed_out
//!   │  │               │ ├──cancel───────────────▶ cancelled
//!   │  │               │ └──release / rescue──────▶ queued
//!   │  ├──cancel──▶ cancelled
//!   │  ├──queue deadline (live)───────▶ timed_out
//!   │  └──queue deadline (background)─▶ dropped
//! ```

named_enum! {
    pub enum Status {
        Queued,
        Running,
        Completed,
        Failed,
        TimedOut,
        Cancelled,
        Dropped,
    }
}

impl Status {
    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Queued | Status::Running)
    }
}

/// Everything that can happen to a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transition {
    /// A worker took the run for an attempt.
    Claim,
    /// The attempt produced output.
    Complete,
    /// The attempt failed and another one is scheduled.
    Retry,
    /// The attempt failed and the run ends (`failed` or `timed_out`).
    FailFinal,
    /// A client cancelled it.
    Cancel,
    /// A graceful shutdown gave it back unfinished, or its lease expired (crash).
    Release,
    /// Its queue deadline passed before it started (live: `timed_out`).
    QueueTimeout,
    /// A background run whose deadline passed (`dropped`, reason `stale`).
    Drop,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a {from} run cannot {transition:?}")]
pub struct TransitionError {
    pub from: Status,
    pub transition: Transition,
}

impl Status {
    /// The statuses a transition may lead to from `self`, or an error when the transition
    /// is not legal. Terminal statuses accept nothing: a finished run stays finished.
    pub fn apply(self, transition: Transition) -> Result<&'static [Status], TransitionError> {
        use Status::*;
        use Transition::*;
        let to: &'static [Status] = match (self, transition) {
            (Queued, Claim) => &[Running],
            (Queued, Cancel) => &[Cancelled],
            (Queued, QueueTimeout) => &[TimedOut],
            (Queued, Drop) => &[Dropped],
            (Running, Complete) => &[Completed],
            (Running, Retry) => &[Queued],
            (Running, FailFinal) => &[Failed, TimedOut],
            (Running, Cancel) => &[Cancelled],
            (Running, Release) => &[Queued, Failed],
            _ => {
                return Err(TransitionError {
                    from: self,
                    transition,
                });
            }
        };
        Ok(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TRANSITIONS: [Transition; 8] = [
        Transition::Claim,
        Transition::Complete,
        Transition::Retry,
        Transition::FailFinal,
        Transition::Cancel,
        Transition::Release,
        Transition::QueueTimeout,
        Transition::Drop,
    ];

    fn any_status() -> impl Strategy<Value = Status> {
        prop::sample::select(Status::ALL.to_vec())
    }

    fn any_transition() -> impl Strategy<Value = Transition> {
        prop::sample::select(TRANSITIONS.to_vec())
    }

    proptest! {
        #[test]
        fn terminal_statuses_accept_no_transition(s in any_status(), t in any_transition()) {
            if s.is_terminal() {
                prop_assert!(s.apply(t).is_err());
            }
        }

        #[test]
        fn every_legal_transition_leaves_the_source_status(s in any_status(), t in any_transition()) {
            if let Ok(targets) = s.apply(t) {
                prop_assert!(!targets.is_empty());
                prop_assert!(!targets.contains(&s));
            }
        }

        #[test]
        fn any_walk_ends_terminal_or_keeps_going(walk in prop::collection::vec(any_transition(), 0..40)) {
            // Following legal transitions never reaches a status outside the table, and a
            // terminal status, once reached, is never left.
            let mut s = Status::Queued;
            for t in walk {
                match s.apply(t) {
                    Ok(targets) => {
                        prop_assert!(!s.is_terminal());
                        s = targets[0];
                    }
                    Err(e) => prop_assert_eq!(e.from, s),
                }
            }
        }
    }

    #[test]
    fn only_queued_runs_can_be_claimed() {
        for s in Status::ALL {
            assert_eq!(
                s.apply(Transition::Claim).is_ok(),
                s == Status::Queued,
                "{s}"
            );
        }
    }

    #[test]
    fn names_round_trip() {
        for s in Status::ALL {
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
    }
}
