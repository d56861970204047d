//! The OpenAI-compatible front door: `POST /v1/chat/completions` and `GET /v1/models`.
//! An OpenAI client changes its base URL to Sluice's `/v1` and each request becomes a
//! durable run (live unless `x-sluice-class` says otherwise), dispatched under the shared
//! limits and retried like any other; the answer comes back in OpenAI's own shapes, whole
//! or streamed, with the run's id in `x-sluice-run-id` (the run stays at `/runs/{id}`).
//!
//! A streamed request answers its HTTP status once the run's first piece of output (or
//! its end) is known, so a run that fails before answering fails with its status; once
//! chunks flowed, a failure arrives as an error object in the stream, which OpenAI's
//! clients raise. The deltas of an attempt are seen by the process running it: a run
//! started by another replica streams its whole answer in one chunk when it completes.
//!
//! When the client goes away before the answer, its route's `on_disconnect` decides:
//! `cancel` (the default: nobody is waiting) or `finish`. A request with an
//! `Idempotency-Key` is never cancelled by a hang-up: its client may come back for the same
//! run (an SDK retrying after its own timeout follows the one run, not a second call).
//!
//! Layout: `routing` (model names to providers), `wire` (OpenAI's shapes), `stream`
//! (the streamed answer), this file (the handlers).

mod routing;
mod stream;
mod wire;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::follow::{Followed, RunFollower};
use super::{AppState, Caller, run_body};
use crate::config::DisconnectPolicy;
use crate::dispatch::Dispatcher;
use crate::run::{ErrorKind, RunId, Status, TimeoutOrigin};
use crate::store::{NewRun, RunView};
use wire::OpenAiError;

/// Where the front door's routes live; they wait for their run, so the request deadline
/// of other routes does not apply.
pub(super) const PATH_PREFIX: &str = "/v1/";
/// The run behind an answer.
const RUN_ID: HeaderName = HeaderName::from_static("x-sluice-run-id");
/// The class of the run (`live` or `background`).
const CLASS: HeaderName = HeaderName::from_static("x-sluice-class");
/// The priority of the run (1–10).
const PRIORITY: HeaderName = HeaderName::from_static("x-sluice-priority");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// Request fields the run carries elsewhere: the provider's model and the stream flag are
/// set per attempt.
const ROUTING_FIELDS: [&str; 3] = ["model", "stream", "stream_options"];

/// `POST /v1/chat/completions`.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "openai",
    summary = "Create a chat completion (OpenAI-compatible)",
    description = "OpenAI's chat completions API over a durable run: `model` is a route \
        name, `provider/model` or a provider's name. The answer is OpenAI's \
        `chat.completion` (or, with `stream: true`, `chat.completion.chunk` server-sent \
        events ending with `data: [DONE]`, with a usage chunk when \
        `stream_options.include_usage`). Headers: `x-sluice-class`, `x-sluice-priority`, \
        `Idempotency-Key`; the answer carries `x-sluice-run-id`. Errors are OpenAI's \
        error object: 400, 404 `model_not_found`, 429 with `Retry-After`, 503, and 504 \
        when the run's deadline passes.",
    request_body(content = Object, description = "An OpenAI chat completion request."),
    responses(
        (status = 200, description = "The completion, or its chunks as an event stream.",
            body = Object),
        (status = 400, description = "An invalid request (`param` names the field).", body = Object),
        (status = 404, description = "`model_not_found`.", body = Object),
        (status = 429, description = "Refused by admission control, or the provider's rate \
            limit outlasted every attempt.", body = Object,
            headers(("Retry-After" = u64, description = "Seconds to wait before retrying."))),
        (status = 502, description = "The provider failed every attempt.", body = Object),
        (status = 503, description = "Unavailable: shutting down, database unreachable, \
            breaker open, or the run was dropped.", body = Object),
        (status = 504, description = "The run's deadline passed.", body = Object),
    )
)]
pub(super) async fn chat_completions(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match complete(state, caller, headers, body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/models`.
#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "openai",
    summary = "List the model names the front door takes (OpenAI-compatible)",
    responses((status = 200, description = "OpenAI's model list.", body = Object))
)]
pub(super) async fn models(State(state): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = routing::listed(&state.config)
        .into_iter()
        .map(|(id, provider)| json!({"id": id, "object": "model", "created": 0, "owned_by": provider}))
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// What the client asked besides the chat itself.
struct Asked {
    stream: bool,
    include_usage: bool,
    on_disconnect: DisconnectPolicy,
}

async fn complete(
    state: AppState,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OpenAiError> {
    let body = body.map_err(|rejection| {
        OpenAiError::new(
            rejection.status(),
            "invalid_request_error",
            format!("cannot read the request body: {rejection}"),
        )
    })?;
    let (run, asked) = build(&state, &caller, &headers, &body)?;
    let id = run.id;
    // Subscribed before the run exists, so nothing it does is missed.
    let follower = RunFollower::subscribe(&state.store, id);
    let submitted = state
        .dispatcher
        .submit(run)
        .await
        .map_err(|e| OpenAiError::from(super::ApiError::from(e)))?;
    let id = submitted.id;
    let follower = if submitted.created {
        follower
    } else {
        // A repeat: follow the run the idempotency key names.
        RunFollower::subscribe(&state.store, id)
    }
    .replay(0, None)
    .await
    .map_err(|e| OpenAiError::from(super::ApiError::from(e)))?;
    let guard = Abandon::new(&state.dispatcher, id, asked.on_disconnect);
    let mut response = if asked.stream {
        stream::answer(state, follower, guard, asked.include_usage).await?
    } else {
        whole(&state, follower, guard).await?
    };
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response.headers_mut().insert(RUN_ID, value);
    }
    Ok(response)
}

/// The run a request asks for, and how it wants the answer.
fn build(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(NewRun, Asked), OpenAiError> {
    let mut request: Map<String, Value> = serde_json::from_slice(body).map_err(|e| {
        OpenAiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("the body must be a JSON object: {e}"),
        )
    })?;
    let model = match request.get("model") {
        Some(Value::String(m)) => m.clone(),
        Some(_) => return Err(OpenAiError::invalid("model", "model must be a string")),
        None => return Err(OpenAiError::invalid("model", "model is required")),
    };
    let target = routing::resolve(&state.config, &model).ok_or_else(|| {
        OpenAiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("the model `{model}` does not exist; GET /v1/models lists those served"),
        )
        .with_code("model_not_found")
    })?;
    if let Some(n) = request.get("n").filter(|n| !n.is_null())
        && n.as_u64() != Some(1)
    {
        return Err(OpenAiError::invalid("n", "only n = 1 is supported"));
    }
    let stream = match request.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(OpenAiError::invalid("stream", "stream must be a boolean")),
    };
    let include_usage = request
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    for field in ROUTING_FIELDS {
        request.remove(field);
    }
    let mut run = json!({
        "provider": target.provider,
        "model": target.model,
        "request": request,
        "stream": stream,
    });
    if let Some(class) = header_text(headers, &CLASS)? {
        run["class"] = json!(class);
    }
    if let Some(priority) = header_text(headers, &PRIORITY)? {
        let priority: i64 = priority.trim().parse().map_err(|_| {
            OpenAiError::invalid(
                PRIORITY.as_str(),
                "x-sluice-priority must be a number from 1 to 10",
            )
        })?;
        run["priority"] = json!(priority);
    }
    let idempotent = header_text(headers, &IDEMPOTENCY_KEY)?;
    if let Some(key) = &idempotent {
        run["idempotency_key"] = json!(key);
    }
    let run = run_body::run_from_json(state, caller, &run).map_err(|e| rename_fields(e.into()))?;
    Ok((
        run,
        Asked {
            stream,
            include_usage,
            // A client that gave an idempotency key may come back for the same run (an
            // SDK retrying after its own timeout): its hang-up does not cancel.
            on_disconnect: if idempotent.is_some() {
                DisconnectPolicy::Finish
            } else {
                target.on_disconnect
            },
        },
    ))
}

/// A header's text; a header that is not text is a 400 naming it.
fn header_text(headers: &HeaderMap, name: &HeaderName) -> Result<Option<String>, OpenAiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map(str::to_string)
                .map_err(|_| OpenAiError::invalid(name.as_str(), format!("{name} is not text")))
        })
        .transpose()
}

/// Names a field as the client wrote it: `request.messages` is its `messages`, and the
/// run fields the front door fills from headers are those headers.
fn rename_fields(mut e: OpenAiError) -> OpenAiError {
    e.param = e.param.map(|p| match p.as_str() {
        "class" => CLASS.to_string(),
        "priority" => PRIORITY.to_string(),
        "idempotency_key" => IDEMPOTENCY_KEY.to_string(),
        other => other.strip_prefix("request.").unwrap_or(other).to_string(),
    });
    e
}

/// The whole answer: waits for the run's end.
async fn whole(
    state: &AppState,
    mut follower: RunFollower,
    mut guard: Abandon,
) -> Result<Response, OpenAiError> {
    loop {
        tokio::select! {
            next = follower.next() => match next {
                Some(Followed::Event(e)) if e.kind.is_terminal() => break,
                Some(_) => {}
                None => return Err(stopped(&mut guard)),
            },
            _ = state.stopping.cancelled() => return Err(stopped(&mut guard)),
        }
    }
    guard.disarm();
    let run = finished_run(state, guard.id).await?;
    Ok((StatusCode::OK, Json(wire::completion(&run))).into_response())
}

/// The run as it ended; a run that did not complete becomes its OpenAI error.
async fn finished_run(state: &AppState, id: RunId) -> Result<RunView, OpenAiError> {
    let run = read_run(state, id).await?;
    match run.status {
        Status::Completed => Ok(run),
        _ => Err(ended_without_answer(&run)),
    }
}

/// The run as it stands.
async fn read_run(state: &AppState, id: RunId) -> Result<RunView, OpenAiError> {
    state
        .store
        .get_run(id)
        .await
        .map_err(|e| OpenAiError::from(super::ApiError::from(e)))?
        .ok_or_else(|| {
            OpenAiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the run vanished",
            )
        })
}

/// The OpenAI error of a run that ended without an answer.
fn ended_without_answer(run: &RunView) -> OpenAiError {
    let id = run.id;
    let (status, kind, code, message) = match (run.status, &run.error) {
        (Status::TimedOut, _) => (
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            match run.timeout_origin {
                Some(TimeoutOrigin::QueueWait) => "queue_wait",
                _ => "generation",
            },
            format!("run {id} timed out before an answer"),
        ),
        (Status::Cancelled, _) => (
            StatusCode::CONFLICT,
            "invalid_request_error",
            "cancelled",
            format!("run {id} was cancelled"),
        ),
        (Status::Dropped, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "dropped",
            format!("background run {id} was dropped before it could start"),
        ),
        (_, Some(error)) => {
            let status = match error.kind {
                ErrorKind::Client => error
                    .status
                    .and_then(|s| u16::try_from(s).ok())
                    .and_then(|s| StatusCode::from_u16(s).ok())
                    .filter(StatusCode::is_client_error)
                    .unwrap_or(StatusCode::BAD_REQUEST),
                ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
                ErrorKind::BreakerOpen => StatusCode::SERVICE_UNAVAILABLE,
                ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            };
            let kind = match error.kind {
                ErrorKind::Client => "invalid_request_error",
                ErrorKind::RateLimited => "rate_limit_error",
                _ => "server_error",
            };
            (
                status,
                kind,
                error.kind.as_str(),
                format!("run {id} failed: {}", error.message),
            )
        }
        (status, None) => (
            StatusCode::BAD_GATEWAY,
            "server_error",
            status.as_str(),
            format!("run {id} ended {} without an answer", status.as_str()),
        ),
    };
    let e = OpenAiError::new(status, kind, message).with_code(code);
    if status == StatusCode::TOO_MANY_REQUESTS {
        e.retry_after(1)
    } else {
        e
    }
}

/// The answer when the wait ends before the run does (the server is shutting down): the
/// run goes on, another process may finish it.
fn stopped(guard: &mut Abandon) -> OpenAiError {
    guard.disarm();
    OpenAiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        format!(
            "the server is shutting down; run {} goes on and its result will be at /runs/{}",
            guard.id, guard.id
        ),
    )
}

/// Applies the route's disconnect policy when the answer is dropped unfinished (the client
/// went away): with `cancel`, the run is cancelled.
struct Abandon {
    dispatcher: Option<Dispatcher>,
    id: RunId,
}

impl Abandon {
    fn new(dispatcher: &Dispatcher, id: RunId, policy: DisconnectPolicy) -> Abandon {
        Abandon {
            dispatcher: (policy == DisconnectPolicy::Cancel).then(|| dispatcher.clone()),
            id,
        }
    }

    /// The answer went out (or the run goes on regardless): nothing to do on drop.
    fn disarm(&mut self) {
        self.dispatcher = None;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(dispatcher) = self.dispatcher.take() {
            let id = self.id;
            tracing::info!(run_id = %id, "client went away before the answer: cancelling the run");
            tokio::spawn(async move {
                if let Err(e) = dispatcher.cancel(id).await {
                    tracing::warn!(run_id = %id, error = %e, "could not cancel an abandoned run");
                }
            });
        }
    }
}
