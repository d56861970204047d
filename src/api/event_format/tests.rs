//! The bytes every kind of event puts on the wire, and the `Last-Event-ID` forms read back.

use std::convert::Infallible;

use axum::http::HeaderValue;
use axum::response::IntoResponse;
use axum::response::sse::Sse;
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use super::*;
use crate::run::{Class, ErrorKind, TimeoutOrigin};
use crate::store::{
    EventKind, RunError, ToolCallDelta, attempt_failed_data, final_failure_data, queue_wait_data,
    stale_data,
};

const RUN: &str = "0190e3a0-0000-7000-8000-000000000001";
const AT: &str = "2026-03-04T05:06:07.089Z";

/// The bytes an event puts on the wire.
async fn sent(event: Event) -> String {
    let stream = futures::stream::iter([Ok::<_, Infallible>(event)]);
    let body = Sse::new(stream).into_response().into_body();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.expect("body");
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

fn at() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(AT).expect("time").to_utc()
}

fn event(id: i64, kind: EventKind, attempt: Option<u32>, data: Option<Box<RawValue>>) -> RunEvent {
    RunEvent {
        id,
        run_id: RunId(RUN.parse().expect("uuid")),
        kind,
        at: at(),
        attempt,
        data,
        class: Class::Live,
        tenant: None,
        batch: None,
    }
}

fn raw(json: &str) -> Option<Box<RawValue>> {
    Some(RawValue::from_string(json.to_string()).expect("json"))
}

/// Every shape of stored event data goes out with its fields in the stored order and
/// with the stored presence (`null` kept, absent left out).
#[tokio::test]
async fn lifecycle_events_keep_their_bytes() {
    let limited = RunError {
        kind: ErrorKind::RateLimited,
        message: "slow \"down\"".into(),
        status: Some(429),
    };
    let refused = RunError {
        kind: ErrorKind::Connection,
        message: "refused".into(),
        status: None,
    };
    let head = |id: i64, kind: &str, attempt: &str| {
        format!("id: {id}\nevent: {kind}\ndata: ")
            + &format!(r#"{{"id":{id},"run_id":"{RUN}","type":"{kind}","at":"{AT}""#)
            + attempt
            + r#","class":"live""#
    };
    let cases = [
        (
            event(1, EventKind::Queued, None, None),
            head(1, "queued", "") + "}",
        ),
        (
            event(
                2,
                EventKind::Queued,
                Some(1),
                raw(r#"{"reason":"released"}"#),
            ),
            head(2, "queued", r#","attempt":1"#) + r#","reason":"released"}"#,
        ),
        (
            event(
                3,
                EventKind::AttemptFailed,
                Some(1),
                Some(attempt_failed_data(&limited, Some(at()))),
            ),
            head(3, "attempt_failed", r#","attempt":1"#)
                + &format!(
                    r#","kind":"rate_limited","status":429,"retry_at":"{AT}","message":"slow \"down\""}}"#
                ),
        ),
        (
            event(
                4,
                EventKind::AttemptFailed,
                Some(2),
                Some(attempt_failed_data(&refused, None)),
            ),
            head(4, "attempt_failed", r#","attempt":2"#)
                + r#","kind":"connection","status":null,"retry_at":null,"message":"refused"}"#,
        ),
        (
            event(
                5,
                EventKind::Failed,
                Some(2),
                Some(final_failure_data(&refused, None)),
            ),
            head(5, "failed", r#","attempt":2"#)
                + r#","kind":"connection","status":null,"message":"refused"}"#,
        ),
        (
            event(
                6,
                EventKind::TimedOut,
                Some(3),
                Some(final_failure_data(
                    &limited,
                    Some(TimeoutOrigin::Generation),
                )),
            ),
            head(6, "timed_out", r#","attempt":3"#)
                + r#","kind":"rate_limited","status":429,"message":"slow \"down\"","timeout_origin":"generation"}"#,
        ),
        (
            event(7, EventKind::TimedOut, None, Some(queue_wait_data())),
            head(7, "timed_out", "")
                + r#","kind":"timeout","message":"not started within its queue deadline","timeout_origin":"queue_wait"}"#,
        ),
        (
            event(8, EventKind::Dropped, None, Some(stale_data())),
            head(8, "dropped", "") + r#","reason":"stale"}"#,
        ),
        (
            event(
                9,
                EventKind::Cancelled,
                Some(1),
                raw(r#"{"kind":"cancelled","message":"cancelled by request"}"#),
            ),
            head(9, "cancelled", r#","attempt":1"#)
                + r#","kind":"cancelled","message":"cancelled by request"}"#,
        ),
        (
            event(10, EventKind::Completed, Some(1), raw("{}")),
            head(10, "completed", r#","attempt":1"#) + "}",
        ),
    ];
    for (e, expected) in cases {
        assert_eq!(sent(render(&e)).await, expected + "\n\n");
    }
}

#[tokio::test]
async fn deltas_and_lag_keep_their_bytes() {
    let delta = Delta {
        attempt: 2,
        seq: 7,
        content: "H\u{e9}\"llo\n".into(),
        tool_call: None,
        at: at(),
    };
    let run = RunId(RUN.parse().expect("uuid"));
    assert_eq!(
        sent(render_delta(run, 41, &delta)).await,
        format!(
            "id: 41-7\nevent: delta\ndata: {{\"at\":\"{AT}\",\"attempt\":2,\"content\":\"H\u{e9}\\\"llo\\n\",\"run_id\":\"{RUN}\",\"seq\":7,\"type\":\"delta\"}}\n\n"
        )
    );
    let first_piece = Delta {
        attempt: 1,
        seq: 2,
        content: String::new(),
        tool_call: Some(ToolCallDelta {
            index: 0,
            id: Some("call_1".into()),
            name: Some("weather".into()),
            arguments: String::new(),
        }),
        at: at(),
    };
    assert_eq!(
        sent(render_delta(run, 41, &first_piece)).await,
        format!(
            "id: 41-2\nevent: delta\ndata: {{\"at\":\"{AT}\",\"attempt\":1,\"content\":\"\",\"run_id\":\"{RUN}\",\"seq\":2,\"tool_calls\":[{{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{{\"name\":\"weather\",\"arguments\":\"\"}}}}],\"type\":\"delta\"}}\n\n"
        )
    );
    let next_piece = Delta {
        seq: 3,
        tool_call: Some(ToolCallDelta {
            index: 0,
            id: None,
            name: None,
            arguments: "{\"city\"".into(),
        }),
        ..first_piece
    };
    assert!(
        sent(render_delta(run, 41, &next_piece))
            .await
            .contains(r#""tool_calls":[{"index":0,"function":{"arguments":"{\"city\""}}]"#)
    );
    assert_eq!(
        sent(render_lagged(12, 40)).await,
        "event: lagged\ndata: {\"type\":\"lagged\",\"missed\":12,\"last_event_id\":40,\"message\":\"this subscriber fell behind; reconnect with Last-Event-ID to resume\"}\n\n"
    );
}

#[test]
fn last_event_id_reads_what_the_streams_write() {
    let read = |value: Option<&str>| {
        let mut headers = HeaderMap::new();
        if let Some(v) = value {
            headers.insert("last-event-id", HeaderValue::from_str(v).expect("header"));
        }
        last_event_id(&headers).ok()
    };
    let point = |event, delta| Some(Some(ResumePoint { event, delta }));
    assert_eq!(read(None), Some(None));
    assert_eq!(read(Some("0")), point(0, None));
    assert_eq!(read(Some(" 41 ")), point(41, None));
    assert_eq!(read(Some("41-7")), point(41, Some(7)));
    for bad in ["", "-1", "x", "41-", "41-x", "41--7", "-7"] {
        assert_eq!(read(Some(bad)), None, "{bad:?}");
    }
}
