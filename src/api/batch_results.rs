//! `GET /batches/{id}/results`: the batch's ended runs as newline-delimited JSON, one line
//! per run, like an OpenAI batch output file. The runs are read a page at a time in id
//! order (a keyset on the id), and each page is sent before the next is read, so memory
//! stays flat however large the batch; each run ended by the time its page is read is
//! sent exactly once.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;
use uuid::Uuid;

use super::batches::{BatchPath, no_such_batch};
use super::error::{Body as ErrorBody, DatabaseErrors};
use super::openapi::StatusName;
use super::runs::{ErrorBody as RunErrorBody, OutputBody, UsageBody};
use super::{ApiError, AppState, Caller};
use crate::run::RunId;
use crate::store::{BatchId, RunView};

/// Runs read per page.
const RESULTS_PAGE: usize = 500;
const NDJSON: &str = "application/x-ndjson";

/// One line of the results: an ended run.
#[derive(Serialize, ToSchema)]
#[schema(as = BatchResult)]
struct ResultLine {
    #[schema(value_type = String, format = "uuid")]
    id: RunId,
    #[schema(value_type = StatusName)]
    status: &'static str,
    /// The assistant message, when `completed`.
    #[schema(required = true)]
    output: Option<OutputBody>,
    #[schema(required = true)]
    usage: Option<UsageBody>,
    #[schema(required = true)]
    error: Option<RunErrorBody>,
    #[schema(value_type = Option<Object>, required = true)]
    metadata: Option<Box<RawValue>>,
}

impl From<RunView> for ResultLine {
    fn from(r: RunView) -> ResultLine {
        ResultLine {
            id: r.id,
            status: r.status.as_str(),
            output: r.output.map(OutputBody::from),
            usage: UsageBody::of(r.prompt_tokens, r.completion_tokens),
            error: r.error.map(RunErrorBody::from),
            metadata: r.metadata,
        }
    }
}

/// `GET /batches/{id}/results`.
#[utoipa::path(
    get,
    path = "/batches/{id}/results",
    tag = "batches",
    summary = "Stream a batch's results",
    description = "Newline-delimited JSON (`application/x-ndjson`): one `BatchResult` line per \
        run of the batch that has ended (`completed`, `failed`, `timed_out`, `cancelled` or \
        `dropped`), each once, in run id order. Runs still queued or running are left out; \
        read again once the batch has finished (`finished_at` set) for all of them.",
    params(BatchPath),
    responses(
        (status = 200, description = "One JSON line per ended run.",
            content_type = "application/x-ndjson", body = ResultLine),
        (status = 404, description = "`not_found`: no batch has this id.", body = ErrorBody),
        DatabaseErrors,
    )
)]
pub(super) async fn batch_results(
    State(state): State<AppState>,
    caller: Caller,
    BatchPath(id): BatchPath,
) -> Result<Response, ApiError> {
    if state.store.get_batch(id, caller.scope()).await?.is_none() {
        return Err(no_such_batch(&id));
    }
    let pages = futures::stream::unfold(Some((state, None)), move |cursor| async move {
        let (state, after) = cursor?;
        match next_page(&state, id, after).await {
            Ok(None) => None,
            Ok(Some((bytes, last, full))) => {
                let next = full.then_some((state, Some(last)));
                Some((Ok(bytes), next))
            }
            Err(e) => {
                // The status line is gone: the client sees the body end early.
                tracing::warn!(batch_id = %id, error = %e, "batch results stream failed");
                Some((Err(std::io::Error::other(e.to_string())), None))
            }
        }
    });
    Ok(([(header::CONTENT_TYPE, NDJSON)], Body::from_stream(pages)).into_response())
}

/// The lines of the page after `after`, the last run's id, and whether the page was full
/// (so another may follow); `None` when nothing is left.
async fn next_page(
    state: &AppState,
    id: BatchId,
    after: Option<Uuid>,
) -> Result<Option<(Bytes, Uuid, bool)>, crate::store::StoreError> {
    let runs = state.store.batch_results(id, after, RESULTS_PAGE).await?;
    let Some(last) = runs.last().map(|r| r.id.0) else {
        return Ok(None);
    };
    let full = runs.len() == RESULTS_PAGE;
    let mut out = Vec::new();
    for run in runs {
        serde_json::to_writer(&mut out, &ResultLine::from(run)).expect("a result line serialises");
        out.push(b'\n');
    }
    Ok(Some((Bytes::from(out), last, full)))
}
