//! A streamed answer: OpenAI's `chat.completion.chunk` events from the run's deltas.
//!
//! The HTTP status is decided by the run's first output: a run that ends before any delta
//! answers whole (its answer in one chunk) or with its error status. Once chunks flowed,
//! the stream ends with the final chunk (`finish_reason`), the usage chunk when asked,
//! and `data: [DONE]`; or, when the attempt that streamed fails and another begins, with
//! an error object, since what was sent cannot be taken back.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};

use super::wire::{self, Header, OpenAiError};
use super::{Abandon, finished_run, read_run, stopped};
use crate::api::AppState;
use crate::api::follow::{Followed, RunFollower};
use crate::store::{Delta, EventKind, RunView};

/// Keep-alive comments while the run waits or thinks (clients and proxies keep the
/// connection open).
const KEEP_ALIVE: Duration = Duration::from_secs(10);

pub(super) async fn answer(
    state: AppState,
    mut follower: RunFollower,
    mut guard: Abandon,
    include_usage: bool,
) -> Result<Response, OpenAiError> {
    let first = loop {
        tokio::select! {
            next = follower.next() => match next {
                Some(Followed::Delta(d)) => break d,
                Some(Followed::Event(e)) if e.kind.is_terminal() => {
                    guard.disarm();
                    let run = finished_run(&state, guard.id).await?;
                    return Ok(sse(whole(&run, include_usage)).into_response());
                }
                Some(Followed::Event(_)) => {}
                None => return Err(stopped(&mut guard)),
            },
            _ = state.stopping.cancelled() => return Err(stopped(&mut guard)),
        }
    };
    let run = read_run(&state, guard.id).await?;
    let header = Header::of(&run);
    let pending = VecDeque::from([
        wire::chunk(&header, json!({"role": "assistant", "content": ""}), None).to_string(),
        wire::chunk(&header, delta_of(&first), None).to_string(),
    ]);
    let live = Live {
        state: state.clone(),
        follower,
        guard,
        header,
        include_usage,
        attempt: first.attempt,
        pending,
        done: false,
    };
    let events = futures::stream::unfold(live, |mut live| async move {
        let next = live.next().await?;
        Some((next, live))
    })
    .map(|data| Ok::<_, Infallible>(Event::default().data(data)))
    .take_until(state.stopping.clone().cancelled_owned());
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// The stream of a run that ended before any delta: its whole answer as chunks.
fn whole(run: &RunView, include_usage: bool) -> Vec<String> {
    let header = Header::of(run);
    let mut chunks = vec![wire::chunk(
        &header,
        json!({"role": "assistant", "content": ""}),
        None,
    )];
    chunks.extend(
        wire::whole_answer_deltas(run)
            .into_iter()
            .map(|d| wire::chunk(&header, d, None)),
    );
    chunks.extend(ending(&header, run, include_usage));
    chunks
        .into_iter()
        .map(|c| c.to_string())
        .chain(done())
        .collect()
}

/// The final chunk and, when asked, the usage chunk.
fn ending(header: &Header, run: &RunView, include_usage: bool) -> Vec<Value> {
    let finish = run
        .output
        .as_ref()
        .and_then(|o| o.finish_reason.clone())
        .unwrap_or_else(|| "stop".into());
    let mut chunks = vec![wire::chunk(header, json!({}), Some(&finish))];
    if include_usage {
        chunks.push(wire::usage_chunk(header, run));
    }
    chunks
}

fn done() -> Option<String> {
    Some("[DONE]".into())
}

fn sse(data: Vec<String>) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    Sse::new(futures::stream::iter(
        data.into_iter()
            .map(|d| Ok::<_, Infallible>(Event::default().data(d))),
    ))
}

fn delta_of(d: &Delta) -> Value {
    match &d.tool_call {
        Some(piece) => wire::tool_call_delta(piece),
        None => wire::text_delta(&d.content),
    }
}

/// A stream under way.
struct Live {
    state: AppState,
    follower: RunFollower,
    guard: Abandon,
    header: Header,
    include_usage: bool,
    /// The attempt whose deltas were sent.
    attempt: u32,
    /// `data:` lines ready to go.
    pending: VecDeque<String>,
    done: bool,
}

impl Live {
    /// The `data:` of the next event; `None` ends the stream.
    async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(data) = self.pending.pop_front() {
                return Some(data);
            }
            if self.done {
                return None;
            }
            match self.follower.next().await {
                Some(Followed::Delta(d)) if d.attempt == self.attempt => {
                    return Some(wire::chunk(&self.header, delta_of(&d), None).to_string());
                }
                Some(Followed::Delta(_)) => return Some(self.broken()),
                Some(Followed::Event(e)) if e.kind == EventKind::Started => {
                    return Some(self.broken());
                }
                Some(Followed::Event(e)) if e.kind.is_terminal() => {
                    self.done = true;
                    self.guard.disarm();
                    match finished_run(&self.state, self.guard.id).await {
                        Ok(run) => {
                            let ending = ending(&self.header, &run, self.include_usage);
                            self.pending
                                .extend(ending.iter().map(Value::to_string).chain(done()));
                        }
                        Err(e) => return Some(e.body().to_string()),
                    }
                }
                Some(Followed::Event(_)) => {}
                None => return None,
            }
        }
    }

    /// The attempt that streamed failed and another began: what was sent cannot be taken
    /// back, so the stream ends with an error (the run goes on or is cancelled, as the
    /// route's disconnect policy says).
    fn broken(&mut self) -> String {
        self.done = true;
        self.pending.clear();
        let id = self.guard.id;
        OpenAiError::new(
            StatusCode::BAD_GATEWAY,
            "server_error",
            format!("the provider failed partway through the answer; run {id} is retried"),
        )
        .with_code("attempt_failed")
        .body()
        .to_string()
    }
}
