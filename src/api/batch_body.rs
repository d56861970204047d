//! The body of `POST /batches`: the batch's own fields, defaults shared by its runs, and
//! `runs`, each validated exactly as `POST /enqueue` validates one run (`run_body`), with
//! errors naming the run by index (`runs[17].provider`). Every run is checked before
//! anything is stored, so a bad run leaves nothing behind.
//!
//! A run is its own fields over the defaults: the two JSON objects are merged key by key
//! (the run's value wins, values kept verbatim) and the result parsed as an enqueue body.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::openapi::ClassName;
use super::run_body::{build_run, check_name, parse_body};
use super::{ApiError, AppState, Caller};
use crate::store::{BatchId, NewBatch};

/// The list of runs.
const RUNS: &str = "runs";
/// The batch's own fields (`metadata` is also each run's default).
const BATCH_KEYS: [&str; 3] = ["tenant", "idempotency_key", "metadata"];
/// Run fields the top level may set for every run.
const DEFAULT_KEYS: [&str; 12] = [
    "provider",
    "model",
    "class",
    "priority",
    "concurrency_key",
    "session",
    "max_attempts",
    "timeout_ms",
    "queue_timeout_ms",
    "run_at",
    "stream",
    "metadata",
];
/// Run fields that belong to the batch as a whole.
const BATCH_OWNED: [&str; 3] = ["tenant", "batch", "idempotency_key"];

/// The body of `POST /batches` (documentation of the shape; parsed by [`parse_batch`]).
#[derive(ToSchema)]
#[schema(as = BatchRequest)]
#[allow(
    dead_code,
    reason = "describes the body parse_batch reads, in the OpenAPI document"
)]
pub(super) struct BatchBody {
    /// The runs, at most `batches.max_runs` (default 10,000): each an `EnqueueRequest`
    /// without `tenant`, `batch` or `idempotency_key` (those belong to the batch), whose
    /// fields left out are taken from this body's defaults.
    #[schema(min_items = 1, value_type = Vec<Object>)]
    runs: Vec<()>,
    /// The tenant the batch and its runs belong to.
    #[schema(min_length = 1, max_length = 256)]
    tenant: Option<String>,
    /// A retried request with the same key answers with the first batch (200) instead of
    /// creating another. Runs inside a batch carry no keys of their own.
    #[schema(min_length = 1, max_length = 256)]
    idempotency_key: Option<String>,
    /// An opaque JSON object kept with the batch, and each run's `metadata` unless the run
    /// gives its own.
    #[schema(value_type = Option<Object>)]
    metadata: Option<()>,
    /// Default for each run.
    #[schema(example = "sim")]
    provider: Option<String>,
    /// Default for each run.
    model: Option<String>,
    /// Default for each run.
    #[schema(value_type = Option<ClassName>)]
    class: Option<String>,
    /// Default for each run.
    #[schema(minimum = 1, maximum = 10)]
    priority: Option<i64>,
    /// Default for each run.
    concurrency_key: Option<String>,
    /// Default for each run.
    session: Option<String>,
    /// Default for each run.
    #[schema(minimum = 1, maximum = 50)]
    max_attempts: Option<i64>,
    /// Default for each run.
    #[schema(minimum = 1)]
    timeout_ms: Option<i64>,
    /// Default for each run.
    #[schema(minimum = 1)]
    queue_timeout_ms: Option<i64>,
    /// Default for each run.
    #[schema(format = DateTime)]
    run_at: Option<String>,
    /// Default for each run.
    stream: Option<bool>,
}

/// The batch a body describes, every run validated; `max_runs` bounds the runs.
pub(super) fn parse_batch(
    state: &AppState,
    caller: &Caller,
    body: &[u8],
    max_runs: usize,
    id: BatchId,
    now: DateTime<Utc>,
) -> Result<NewBatch, ApiError> {
    let top: BTreeMap<String, &RawValue> =
        serde_json::from_slice(body).map_err(|e| ApiError::InvalidRequest {
            message: format!("invalid JSON body: the body must be a JSON object: {e}"),
            field: None,
        })?;
    if let Some(key) = top.keys().find(|k| {
        *k != RUNS && !BATCH_KEYS.contains(&k.as_str()) && !DEFAULT_KEYS.contains(&k.as_str())
    }) {
        return Err(ApiError::invalid(
            key.as_str(),
            format!(
                "unknown field `{key}`; a batch takes `runs`, {} and run defaults ({})",
                BATCH_KEYS.map(|k| format!("`{k}`")).join(", "),
                DEFAULT_KEYS.join(", ")
            ),
        ));
    }
    let runs = runs_of(&top, max_runs)?;
    // The batch's owner, as a run's: the caller's tenant (see `Caller::owner_of_new`).
    let tenant = caller.owner_of_new(text_field(&top, "tenant")?, &state.config)?;
    let idempotency_key = text_field(&top, "idempotency_key")?;
    let metadata = top.get("metadata").copied();
    if let Some(m) = metadata
        && !m.get().trim_start().starts_with('{')
    {
        return Err(ApiError::invalid(
            "metadata",
            "metadata must be a JSON object",
        ));
    }
    let defaults: BTreeMap<&str, &RawValue> = DEFAULT_KEYS
        .into_iter()
        .filter_map(|k| top.get(k).map(|v| (k, *v)))
        .collect();
    let batch_text = id.text();
    let mut new_runs = Vec::with_capacity(runs.len());
    for (i, raw) in runs.into_iter().enumerate() {
        let mut run = build_run(
            state,
            caller,
            one_run(raw, i, &defaults, &tenant, &batch_text)?,
        )
        .map_err(|e| in_run(e, i, raw, &defaults))?;
        // Created together: the batch's runs share its creation time.
        run.created_at = now;
        new_runs.push(run);
    }
    Ok(NewBatch {
        id,
        tenant,
        metadata: metadata.map(RawValue::to_owned),
        idempotency_key,
        created_at: now,
        runs: new_runs,
    })
}

/// The `runs` array, between one and `max_runs` long.
fn runs_of<'a>(
    top: &BTreeMap<String, &'a RawValue>,
    max_runs: usize,
) -> Result<Vec<&'a RawValue>, ApiError> {
    let raw = top
        .get(RUNS)
        .ok_or_else(|| ApiError::invalid(RUNS, "missing field `runs`: the batch's runs"))?;
    let runs: Vec<&RawValue> = serde_json::from_str(raw.get())
        .map_err(|_| ApiError::invalid(RUNS, "runs must be an array of runs"))?;
    if runs.is_empty() {
        return Err(ApiError::invalid(RUNS, "runs must hold at least one run"));
    }
    if runs.len() > max_runs {
        return Err(ApiError::invalid(
            RUNS,
            format!(
                "a batch holds at most {max_runs} runs (batches.max_runs); this one has {}",
                runs.len()
            ),
        ));
    }
    Ok(runs)
}

/// A top-level string field, checked like a run's names.
fn text_field(top: &BTreeMap<String, &RawValue>, key: &str) -> Result<Option<String>, ApiError> {
    let value = top
        .get(key)
        .map(|raw| serde_json::from_str::<String>(raw.get()))
        .transpose()
        .map_err(|_| ApiError::invalid(key, format!("{key} must be a string")))?;
    check_name(key, &value)?;
    Ok(value)
}

/// Run `i`: its fields over the defaults, parsed as an enqueue body of this batch.
fn one_run(
    raw: &RawValue,
    i: usize,
    defaults: &BTreeMap<&str, &RawValue>,
    tenant: &Option<String>,
    batch: &str,
) -> Result<super::run_body::EnqueueBody, ApiError> {
    let own: BTreeMap<String, &RawValue> = serde_json::from_str(raw.get()).map_err(|_| {
        ApiError::invalid(
            format!("runs[{i}]"),
            format!("runs[{i}] must be a JSON object"),
        )
    })?;
    if let Some(key) = own.keys().find(|k| BATCH_OWNED.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            format!("runs[{i}].{key}"),
            format!(
                "runs[{i}]: `{key}` belongs to the whole batch; set it at the top level (batch: the server names it)"
            ),
        ));
    }
    let mut merged: BTreeMap<&str, &RawValue> = defaults.clone();
    merged.extend(own.iter().map(|(k, v)| (k.as_str(), *v)));
    let text = serde_json::to_string(&Merged(&merged)).expect("a map of JSON values serialises");
    let body = parse_body(text.as_bytes()).map_err(|e| in_run(e, i, raw, defaults))?;
    Ok(body.in_batch(tenant.clone(), batch.to_string()))
}

/// Serialises the merged fields with their values verbatim.
struct Merged<'a>(&'a BTreeMap<&'a str, &'a RawValue>);

impl Serialize for Merged<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter())
    }
}

/// An error about run `i`, named by its index: `runs[i].field`, unless the field came from
/// the defaults (the run did not set it), which are named as they were given.
fn in_run(e: ApiError, i: usize, raw: &RawValue, defaults: &BTreeMap<&str, &RawValue>) -> ApiError {
    let ApiError::InvalidRequest { message, field } = e else {
        return e;
    };
    let own_key = |key: &str| {
        serde_json::from_str::<BTreeMap<String, &RawValue>>(raw.get())
            .is_ok_and(|own| own.contains_key(key))
    };
    let field = field.map(|f| {
        let key = f.split(['.', '[']).next().unwrap_or(&f);
        if defaults.contains_key(key) && !own_key(key) {
            f
        } else {
            format!("runs[{i}].{f}")
        }
    });
    ApiError::InvalidRequest {
        message: format!("runs[{i}]: {message}"),
        field: field.or_else(|| Some(format!("runs[{i}]"))),
    }
}
