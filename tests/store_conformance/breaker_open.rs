//! Queue deadlines that pass while the provider's circuit breaker is open: the run ends as
//! any run past its deadline does, and its error says the breaker is why.

use sluice::run::{Class, ErrorKind, Status, TimeoutOrigin};
use sluice::store::{EventKind, Store};

use super::{data, run_of};
use crate::common::{ms, t0};

conformance!(queue_deadlines_under_an_open_breaker_blame_it);

async fn queue_deadlines_under_an_open_breaker_blame_it(store: Store) {
    let now = t0();
    let deadline = Some(now + ms(100));
    let mut live = run_of(now, Class::Live, None);
    live.queue_deadline_at = deadline;
    let mut background = run_of(now, Class::Background, None);
    background.queue_deadline_at = deadline;
    // Another provider, whose breaker is closed: a plain queue-wait timeout.
    let mut elsewhere = run_of(now, Class::Live, None);
    elsewhere.spec.provider = "q".into();
    elsewhere.queue_deadline_at = deadline;
    let (l, b, e) = (live.id, background.id, elsewhere.id);
    store.enqueue(&[live, background, elsewhere]).await.unwrap();

    let expired = store
        .expire_queued_blaming(now + ms(200), 10, &["p".to_string()])
        .await
        .unwrap();
    assert_eq!(expired.len(), 3);

    for (id, status, event, field, value) in [
        (
            l,
            Status::TimedOut,
            EventKind::TimedOut,
            "timeout_origin",
            "queue_wait",
        ),
        (b, Status::Dropped, EventKind::Dropped, "reason", "stale"),
    ] {
        let view = store.get_run(id).await.unwrap().unwrap();
        assert_eq!(view.status, status);
        assert_eq!(
            view.error.unwrap().kind,
            ErrorKind::BreakerOpen,
            "{status:?}"
        );
        let events = store.events_for_run(id, 0).await.unwrap();
        assert_eq!(events[1].kind, event);
        assert_eq!(data(&events[1])["kind"], "breaker_open");
        assert_eq!(data(&events[1])[field], value);
    }
    let view = store.get_run(l).await.unwrap().unwrap();
    assert_eq!(view.timeout_origin, Some(TimeoutOrigin::QueueWait));
    let view = store.get_run(b).await.unwrap().unwrap();
    assert_eq!(view.drop_reason.as_deref(), Some("stale"));

    let view = store.get_run(e).await.unwrap().unwrap();
    assert_eq!(view.status, Status::TimedOut);
    assert_eq!(view.error.unwrap().kind, ErrorKind::Timeout);
    let events = store.events_for_run(e, 0).await.unwrap();
    assert_eq!(data(&events[1])["kind"], "timeout");
}
