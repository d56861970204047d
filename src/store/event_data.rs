//! The JSON stored as an event's `data`, built here once for both backends: what a
//! stream replays is what was stored, byte for byte.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use super::model::{OUTCOME_RELEASED, RunError, rfc3339};
use crate::run::{Class, ErrorKind, TimeoutOrigin};

/// The JSON of an event's `data` for a failed attempt.
pub fn attempt_failed_data(error: &RunError, retry_at: Option<DateTime<Utc>>) -> Box<RawValue> {
    #[derive(serde::Serialize)]
    struct Data<'a> {
        kind: &'static str,
        status: Option<i32>,
        retry_at: Option<String>,
        message: &'a str,
    }
    json(&Data {
        kind: error.kind.as_str(),
        status: error.status,
        retry_at: retry_at.map(rfc3339),
        message: &error.message,
    })
}

/// The JSON of a terminal event's `data` for a run that ended without output.
pub fn final_failure_data(
    error: &RunError,
    timeout_origin: Option<TimeoutOrigin>,
) -> Box<RawValue> {
    #[derive(serde::Serialize)]
    struct Data<'a> {
        kind: &'static str,
        status: Option<i32>,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        timeout_origin: Option<&'static str>,
    }
    json(&Data {
        kind: error.kind.as_str(),
        status: error.status,
        message: &error.message,
        timeout_origin: timeout_origin.map(TimeoutOrigin::as_str),
    })
}

fn json(value: &impl serde::Serialize) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).expect("event data serialises")
}

/// The message of a live run that never started within its queue deadline.
pub const QUEUE_WAIT_MESSAGE: &str = "not started within its queue deadline";

/// Event data of a run that timed out waiting in the queue.
pub fn queue_wait_data() -> Box<RawValue> {
    json(&serde_json::json!({
        "kind": "timeout",
        "timeout_origin": "queue_wait",
        "message": QUEUE_WAIT_MESSAGE,
    }))
}

/// Event data of a background run dropped as stale.
pub fn stale_data() -> Box<RawValue> {
    json(&serde_json::json!({"reason": "stale"}))
}

/// The message of a run that never started within its queue deadline because its
/// provider's circuit breaker was open.
pub const BREAKER_OPEN_MESSAGE: &str =
    "not started within its queue deadline: the provider's circuit breaker was open";

/// Event data of a run of `class` whose queue deadline passed while its provider's breaker
/// was open: the usual queue-wait or stale data, with error kind `breaker_open`.
pub fn breaker_open_data(class: Class) -> Box<RawValue> {
    let mut data = serde_json::json!({"kind": "breaker_open", "message": BREAKER_OPEN_MESSAGE});
    match class {
        Class::Live => data["timeout_origin"] = "queue_wait".into(),
        Class::Background => data["reason"] = "stale".into(),
    }
    json(&data)
}

/// Event data of a run given back at shutdown, queued again.
pub fn released_data() -> Box<RawValue> {
    json(&serde_json::json!({"reason": OUTCOME_RELEASED}))
}

/// The message of a run cancelled through the API.
pub const CANCEL_MESSAGE: &str = "cancelled by request";

/// Event data of a cancelled run.
pub fn cancelled_data() -> Box<RawValue> {
    #[derive(serde::Serialize)]
    struct Data {
        kind: &'static str,
        message: &'static str,
    }
    json(&Data {
        kind: ErrorKind::Cancelled.as_str(),
        message: CANCEL_MESSAGE,
    })
}

/// The error recorded on a run whose worker stopped renewing its lease.
pub const ABANDONED_MESSAGE: &str = "the worker running this attempt stopped renewing its lease (process stopped or lost the database)";

fn abandoned_error() -> RunError {
    RunError {
        kind: ErrorKind::Timeout,
        message: ABANDONED_MESSAGE.to_string(),
        status: None,
    }
}

/// Event data for an attempt whose worker vanished (`retry_at` when it will run again).
pub fn abandoned_data(retry_at: Option<DateTime<Utc>>) -> Box<RawValue> {
    attempt_failed_data(&abandoned_error(), retry_at)
}

/// Terminal event data of a run whose worker vanished during its last attempt.
pub fn abandoned_final_data() -> Box<RawValue> {
    final_failure_data(&abandoned_error(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stored event data is served to clients as stored: the builders must keep the bytes.
    #[test]
    fn event_data_keeps_its_stored_form() {
        assert_eq!(released_data().get(), r#"{"reason":"released"}"#);
        assert_eq!(
            cancelled_data().get(),
            r#"{"kind":"cancelled","message":"cancelled by request"}"#
        );
        assert_eq!(stale_data().get(), r#"{"reason":"stale"}"#);
    }
}
