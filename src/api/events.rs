//! Server-sent event streams: `GET /runs/{id}/events` (one run, replay then live, closed
//! after the terminal event) and `GET /events` (dashboards: many runs, filtered).
//!
//! Hand-off without gap or duplicate: a stream subscribes to the live hub *before* it
//! replays the log, then skips live events it already sent. A per-run stream is a
//! `follow::RunFollower` rendered (it catches up from the log when it falls behind the
//! hub); a dashboard stream that falls behind is told (`event: lagged`) and closed, and
//! resumes with `Last-Event-ID`.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use utoipa::IntoParams;

use super::error::{Body as ErrorBody, DatabaseErrors, NoSuchRun};
use super::event_format::{
    ResumePoint, StreamOpened, last_event_id, not_an_event_id, render, render_delta, render_lagged,
};
use super::follow::{Followed, RunFollower};
use super::openapi::ClassName;
use super::runs::{RunPath, visible_run};
use super::{ApiError, AppState, Caller};
use crate::run::{Class, RunId};
use crate::store::{EventFilter, RunEvent};

/// Keep-alive comment interval (the contract asks for at least one every 15 s; common
/// proxy idle timeouts are 60 s, nginx's `proxy_read_timeout` among them).
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// How soon a browser's `EventSource` reconnects after a drop (the stream's `retry:`).
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// Most events a dashboard stream replays per log query.
const REPLAY_PAGE: usize = 500;

type BoxedEvents = Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>;
type SseStream = Sse<axum::response::sse::KeepAliveStream<BoxedEvents>>;

/// What an event stream sends, one event at a time.
trait EventSource: Send + 'static {
    /// The next event to send; `None` ends the stream.
    fn next(&mut self) -> impl Future<Output = Option<Event>> + Send;
}

/// Serves `source` with keep-alive comments, and ends it when the server shuts down so
/// draining connections does not wait on it.
fn serve(source: impl EventSource, stop: CancellationToken) -> SseStream {
    let retry = futures::stream::once(async { Ok(Event::default().retry(RECONNECT_AFTER)) });
    let events = futures::stream::unfold(source, |mut s| async move {
        let next = s.next().await?;
        Some((Ok(next), s))
    });
    let events = retry
        .chain(events)
        .take_until(async move { stop.cancelled_owned().await });
    let boxed: BoxedEvents = Box::pin(events);
    Sse::new(boxed).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

/// One run's stream: what its follower hands out, rendered.
struct RunStream {
    follower: RunFollower,
    run: RunId,
}

/// `GET /runs/{id}/events`.
#[utoipa::path(
    get,
    path = "/runs/{id}/events",
    tag = "events",
    summary = "Follow one run's lifecycle events",
    description = "A server-sent event stream of one run's lifecycle events: it replays \
        every event so far, continues live, and closes after the terminal event (a finished \
        run's stream replays and closes). Event types: `queued`; `started` (with `attempt`); \
        `delta` (`attempt`, `content`; only when the run was enqueued with `stream: true`); \
        `attempt_failed` (`attempt`, `kind`, `status`, `retry_at`, `message`); and the \
        terminal `completed`, `failed`, `timed_out`, `cancelled` or `dropped`. Each event's \
        `data:` is JSON (the `EventData` schema) with at least `run_id`, `type` and `at`. \
        A reconnect with `Last-Event-ID` replays every lifecycle event after that id, then \
        continues live, with no gap and no duplicate.",
    params(
        RunPath,
        ("Last-Event-ID" = Option<i64>, Header, minimum = 0, nullable = false,
            description = "Resume after this event id (the last `id:` received)."),
    ),
    responses(
        StreamOpened,
        (status = 400, description = "`invalid_request`: `Last-Event-ID` is not an event id.",
            body = ErrorBody),
        NoSuchRun,
        DatabaseErrors,
    )
)]
pub(super) async fn run_events(
    State(state): State<AppState>,
    caller: Caller,
    RunPath(run): RunPath,
    headers: HeaderMap,
) -> Result<SseStream, ApiError> {
    let (after, delta_seq) = last_event_id(&headers)?.map_or((0, None), |p| (p.event, p.delta));
    // Subscribe first: anything committed from here on is either in the replay or live.
    let follower = RunFollower::subscribe(&state.store, run);
    visible_run(&state, &caller, run).await?;
    let follower = follower.replay(after, delta_seq).await?;
    let stop = state.stopping.clone();
    let stream = RunStream { follower, run };
    Ok(serve(stream, stop))
}

impl EventSource for RunStream {
    async fn next(&mut self) -> Option<Event> {
        Some(match self.follower.next().await? {
            Followed::Event(e) => render(&e),
            // A delta is numbered after the lifecycle event it follows.
            Followed::Delta(d) => render_delta(self.run, self.follower.last_event(), &d),
        })
    }
}

/// Filters of `GET /events`; an event must match every one given.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct EventsQuery {
    /// Only runs of this tenant. A tenant's token always sees only its own runs (naming
    /// another tenant is a 404); the admin sees every tenant's unless it names one.
    tenant: Option<String>,
    /// Only runs of this batch.
    batch: Option<String>,
    /// Only runs of this class.
    #[param(value_type = Option<ClassName>)]
    class: Option<Class>,
    /// A stream token (`POST /batches/{id}/stream-token`), for a browser that cannot send
    /// an `Authorization` header; read by authentication, not here.
    #[allow(dead_code)]
    token: Option<String>,
}

struct FeedStream {
    rx: tokio::sync::broadcast::Receiver<Arc<RunEvent>>,
    filter: EventFilter,
    pending: VecDeque<RunEvent>,
    /// Ids sent by the replay, so the live side does not send them again.
    replayed: HashSet<i64>,
    last_sent: i64,
    closed: bool,
}

/// `GET /events`.
#[utoipa::path(
    get,
    path = "/events",
    operation_id = "events",
    tag = "events",
    summary = "Follow many runs' lifecycle events",
    description = "A server-sent event stream of lifecycle events for every run matching the \
        filters (dashboards). Without `Last-Event-ID` it starts with the next event; with it, \
        it first replays the matching events after that id. Event types and `data:` are as \
        on `GET /runs/{id}/events` (`queued`, `started`, `delta`, `attempt_failed`, \
        `completed`, `failed`, `timed_out`, `cancelled`, `dropped`), plus `lagged`: a \
        subscriber that falls behind the live buffer receives one `lagged` event (the \
        `LaggedEvent` schema, no `id:`) and the stream closes; reconnect with \
        `Last-Event-ID` set to its `last_event_id` to resume without a gap. The stream \
        stays open until the client leaves or the server shuts down.",
    params(
        EventsQuery,
        ("Last-Event-ID" = Option<i64>, Header, minimum = 0, nullable = false,
            description = "Replay the matching events after this event id, then continue live."),
    ),
    responses(
        StreamOpened,
        (status = 400, description = "`invalid_request`: an unknown or malformed query \
            parameter, or a `Last-Event-ID` that is not an event id.", body = ErrorBody),
        (status = 404, description = "`not_found`: a tenant's token named another tenant \
            in `tenant`.", body = ErrorBody),
        DatabaseErrors,
    )
)]
pub(super) async fn feed(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<SseStream, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::InvalidRequest {
        message: format!("invalid query: {}", e.body_text()),
        field: None,
    })?;
    let filter = EventFilter {
        tenant: caller.tenant_filter(q.tenant)?,
        batch: q.batch,
        class: q.class,
    };
    let rx = state.store.hub().subscribe();
    let mut pending = VecDeque::new();
    let mut replayed = HashSet::new();
    let mut last_sent = 0;
    // The dashboard stream sends no deltas, so it cannot resume inside one.
    let resume = match last_event_id(&headers)? {
        Some(ResumePoint { delta: Some(_), .. }) => return Err(not_an_event_id()),
        resume => resume.map(|p| p.event),
    };
    if let Some(mut after) = resume {
        last_sent = after;
        loop {
            let page = state
                .store
                .events_after(after, &filter, REPLAY_PAGE)
                .await?;
            let n = page.len();
            for e in page {
                after = after.max(e.id);
                replayed.insert(e.id);
                pending.push_back(e);
            }
            if n < REPLAY_PAGE {
                break;
            }
        }
    }
    let stop = state.stopping.clone();
    let stream = FeedStream {
        rx,
        filter,
        pending,
        replayed,
        last_sent,
        closed: false,
    };
    Ok(serve(stream, stop))
}

impl EventSource for FeedStream {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if self.closed {
                return None;
            }
            if let Some(e) = self.pending.pop_front() {
                self.last_sent = self.last_sent.max(e.id);
                return Some(render(&e));
            }
            match self.rx.recv().await {
                Ok(e) => {
                    if self.filter.matches(&e) && !self.replayed.remove(&e.id) {
                        self.pending.push_back((*e).clone());
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    self.closed = true;
                    return Some(render_lagged(missed, self.last_sent));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}
