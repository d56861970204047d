//! Server-sent event streams: `GET /runs/{id}/events` (one run, replay then live, closed
//! after the terminal event) and `GET /events` (dashboards: many runs, filtered).
//!
//! Hand-off without gap or duplicate: a stream subscribes to the live hub *before* it
//! replays the log, then skips live events it already sent. A per-run stream that falls
//! behind the hub's buffer quietly catches up from the log; a dashboard stream that falls
//! behind is told (`event: lagged`) and closed, and resumes with `Last-Event-ID`.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;

use super::{ApiError, AppState, time};
use crate::run::{Class, RunId};
use crate::store::{EventFilter, RunEvent};

/// Keep-alive comment interval (the contract asks for at least one every 15 s).
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Most events a dashboard stream replays per log query.
const REPLAY_PAGE: usize = 500;

/// The JSON `data:` of an event: `run_id`, `type`, `at`, `attempt` and the kind's fields.
fn render(e: &RunEvent) -> Event {
    let mut json = format!(
        r#"{{"id":{},"run_id":"{}","type":"{}","at":"{}""#,
        e.id,
        e.run_id,
        e.kind.as_str(),
        time(e.at)
    );
    if let Some(a) = e.attempt {
        json.push_str(&format!(r#","attempt":{a}"#));
    }
    json.push_str(&format!(r#","class":"{}""#, e.class.as_str()));
    if let Some(data) = &e.data {
        // `data` is a JSON object: splice its fields in.
        let inner = data.get().trim();
        let inner = inner
            .strip_prefix('{')
            .and_then(|s| s.strip_suffix('}'))
            .unwrap_or("")
            .trim();
        if !inner.is_empty() {
            json.push(',');
            json.push_str(inner);
        }
    }
    json.push('}');
    Event::default()
        .id(e.id.to_string())
        .event(e.kind.as_str())
        .data(json)
}

fn last_event_id(headers: &HeaderMap) -> Result<i64, ApiError> {
    match headers.get("last-event-id") {
        None => Ok(0),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                ApiError::invalid(
                    "Last-Event-ID",
                    "Last-Event-ID must be an event id received from this stream",
                )
            }),
    }
}

type SseStream = Sse<
    axum::response::sse::KeepAliveStream<
        std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>,
    >,
>;

fn sse(stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> SseStream {
    let boxed: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> =
        Box::pin(stream);
    Sse::new(boxed).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

struct RunStream {
    state: AppState,
    run: RunId,
    rx: tokio::sync::broadcast::Receiver<Arc<RunEvent>>,
    pending: VecDeque<RunEvent>,
    last_sent: i64,
    finished: bool,
}

pub(super) async fn run_events(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<SseStream, ApiError> {
    let run: RunId = raw
        .parse()
        .map_err(|_| ApiError::NotFound(format!("no run with id {raw:?}")))?;
    let after = last_event_id(&headers)?;
    // Subscribe first: anything committed from here on is either in the replay or live.
    let rx = state.store.hub().subscribe();
    if state.store.get_run(run).await?.is_none() {
        return Err(ApiError::NotFound(format!("no run with id {run}")));
    }
    let replay = state.store.events_for_run(run, after).await?;
    let stop = state.stopping.clone();
    let stream = RunStream {
        state,
        run,
        rx,
        pending: replay.into(),
        last_sent: after,
        finished: false,
    };
    let events = futures::stream::unfold(stream, |mut s| async move {
        let next = s.next().await?;
        Some((Ok(next), s))
    });
    Ok(sse(take_until_stopped(events, stop)))
}

impl RunStream {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if self.finished {
                return None;
            }
            if let Some(e) = self.pending.pop_front() {
                if e.id <= self.last_sent {
                    continue;
                }
                self.last_sent = e.id;
                self.finished = e.kind.is_terminal();
                return Some(render(&e));
            }
            match self.rx.recv().await {
                Ok(e) if e.run_id == self.run && e.id > self.last_sent => {
                    self.pending.push_back((*e).clone());
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    // Fell behind the live buffer: catch up from the log.
                    match self
                        .state
                        .store
                        .events_for_run(self.run, self.last_sent)
                        .await
                    {
                        Ok(events) => self.pending.extend(events),
                        Err(e) => {
                            tracing::warn!(run_id = %self.run, error = %e, "event replay failed; closing stream");
                            return None;
                        }
                    }
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    tenant: Option<String>,
    batch: Option<String>,
    class: Option<Class>,
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

pub(super) async fn feed(
    State(state): State<AppState>,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<SseStream, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::InvalidRequest {
        message: format!("invalid query: {}", e.body_text()),
        field: None,
    })?;
    let filter = EventFilter {
        tenant: q.tenant,
        batch: q.batch,
        class: q.class,
    };
    let rx = state.store.hub().subscribe();
    let mut pending = VecDeque::new();
    let mut replayed = HashSet::new();
    let mut last_sent = 0;
    if headers.contains_key("last-event-id") {
        let mut after = last_event_id(&headers)?;
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
    let events = futures::stream::unfold(stream, |mut s| async move {
        let next = s.next().await?;
        Some((Ok(next), s))
    });
    Ok(sse(take_until_stopped(events, stop)))
}

impl FeedStream {
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
                    let data = format!(
                        r#"{{"type":"lagged","missed":{missed},"last_event_id":{},"message":"this subscriber fell behind; reconnect with Last-Event-ID to resume"}}"#,
                        self.last_sent
                    );
                    return Some(Event::default().event("lagged").data(data));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

/// Ends a stream when the server shuts down, so draining connections does not wait on it.
fn take_until_stopped<S>(
    stream: S,
    stop: tokio_util::sync::CancellationToken,
) -> impl Stream<Item = S::Item> + Send + 'static
where
    S: Stream + Send + 'static,
{
    use futures::StreamExt;
    stream.take_until(async move { stop.cancelled_owned().await })
}
