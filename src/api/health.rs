//! `GET /health`: database reachability and latency, queue depths, worker slots.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AppState;
use crate::run::{Class, Status};

#[derive(Serialize)]
struct HealthBody {
    status: &'static str,
    database: DatabaseBody,
    queues: Option<QueuesBody>,
    workers: WorkersBody,
    providers: Vec<ProviderBody>,
}

#[derive(Serialize)]
struct DatabaseBody {
    backend: &'static str,
    reachable: bool,
    latency_ms: Option<f64>,
    error: Option<String>,
}

#[derive(Serialize, Default)]
struct Depth {
    queued: i64,
    running: i64,
}

#[derive(Serialize, Default)]
struct QueuesBody {
    live: Depth,
    background: Depth,
}

#[derive(Serialize)]
struct WorkersBody {
    slots_total: usize,
    slots_busy: usize,
}

#[derive(Serialize)]
struct ProviderBody {
    name: String,
    kind: &'static str,
    rpm: Option<u32>,
    tpm: Option<u32>,
    max_concurrency: Option<u32>,
}

pub(super) async fn health(State(state): State<AppState>) -> Response {
    let (database, queues) = match state.store.ping().await {
        Ok(latency) => {
            let queues = match state.store.count_active().await {
                Ok(rows) => {
                    let mut q = QueuesBody::default();
                    for (class, status, n) in rows {
                        let depth = match class {
                            Class::Live => &mut q.live,
                            Class::Background => &mut q.background,
                        };
                        match status {
                            Status::Queued => depth.queued = n,
                            Status::Running => depth.running = n,
                            _ => {}
                        }
                    }
                    Some(q)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "health: queue depth query failed");
                    None
                }
            };
            (
                DatabaseBody {
                    backend: state.store.backend(),
                    reachable: true,
                    latency_ms: Some(latency.as_secs_f64() * 1000.0),
                    error: None,
                },
                queues,
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "health: database unreachable");
            (
                DatabaseBody {
                    backend: state.store.backend(),
                    reachable: false,
                    latency_ms: None,
                    error: Some("unreachable".into()),
                },
                None,
            )
        }
    };
    let pool = state.dispatcher.status();
    let providers = state
        .config
        .providers
        .iter()
        .map(|p| ProviderBody {
            name: p.name.clone(),
            kind: match p.kind {
                crate::config::ProviderKind::Openai => "openai",
                crate::config::ProviderKind::Anthropic => "anthropic",
                crate::config::ProviderKind::Sim => "sim",
            },
            rpm: p.rpm,
            tpm: p.tpm,
            max_concurrency: p.max_concurrency,
        })
        .collect();
    let (code, status) = if database.reachable {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    let body = HealthBody {
        status,
        database,
        queues,
        workers: WorkersBody {
            slots_total: pool.slots_total,
            slots_busy: pool.slots_busy,
        },
        providers,
    };
    (code, Json(body)).into_response()
}
