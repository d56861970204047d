//! `GET /health`: database reachability and latency, queue depths, worker slots, the
//! providers, and the cluster (every replica and the leader, in `cluster`).

mod cluster;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::openapi::{BackendName, ClassName, HealthStatusName, ProviderKindName};
use crate::limits::BreakerState;
use crate::run::{Class, Status};

/// The server's health.
#[derive(Serialize, ToSchema)]
#[schema(as = Health)]
struct HealthBody {
    #[schema(value_type = HealthStatusName)]
    status: &'static str,
    database: DatabaseBody,
    /// Queue depths by class; `null` when they could not be read.
    #[schema(required = true)]
    queues: Option<QueuesBody>,
    workers: WorkersBody,
    /// The configured providers.
    providers: Vec<ProviderBody>,
    /// The concurrency keys with the most runs queued or in flight (at most 5).
    busiest_keys: Vec<KeyBody>,
    /// Every process sharing the database and the maintenance leader; null when the
    /// database could not be read.
    #[schema(required = true)]
    cluster: Option<cluster::ClusterBody>,
}

/// One concurrency key's load.
#[derive(Serialize, ToSchema)]
#[schema(as = HealthKey)]
struct KeyBody {
    key: String,
    #[schema(value_type = ClassName)]
    class: &'static str,
    running: i64,
    queued: i64,
}

/// How many keys `/health` lists.
const BUSIEST_KEYS: usize = 5;

#[derive(Serialize, ToSchema)]
#[schema(as = HealthDatabase)]
struct DatabaseBody {
    #[schema(value_type = BackendName)]
    backend: &'static str,
    reachable: bool,
    /// Round-trip time of a trivial query, in milliseconds; `null` when unreachable.
    #[schema(required = true)]
    latency_ms: Option<f64>,
    /// Why the database is unreachable.
    #[schema(required = true)]
    error: Option<String>,
}

/// Runs of one class by status.
#[derive(Serialize, Default, ToSchema)]
#[schema(as = QueueDepth)]
struct Depth {
    queued: i64,
    running: i64,
}

#[derive(Serialize, Default, ToSchema)]
#[schema(as = QueueDepths)]
struct QueuesBody {
    live: Depth,
    background: Depth,
}

/// The worker pool's slots.
#[derive(Serialize, ToSchema)]
#[schema(as = WorkerSlots)]
struct WorkersBody {
    slots_total: usize,
    slots_busy: usize,
}

/// A configured provider.
#[derive(Serialize, ToSchema)]
#[schema(as = HealthProvider)]
struct ProviderBody {
    name: String,
    #[schema(value_type = ProviderKindName)]
    kind: &'static str,
    /// Configured requests per minute.
    #[schema(required = true)]
    rpm: Option<u32>,
    /// Configured tokens per minute.
    #[schema(required = true)]
    tpm: Option<u32>,
    /// Configured cap on in-flight calls.
    #[schema(required = true)]
    max_concurrency: Option<u32>,
    /// Circuit breaker state: `closed`, `open` or `half_open`.
    breaker: &'static str,
    /// Requests per minute currently allowed (adapted below `rpm` after 429s); null when
    /// unlimited.
    #[schema(required = true)]
    current_rpm: Option<f64>,
    /// The requests-per-minute limit the provider states in its rate-limit headers (it
    /// lowers a higher configured `rpm`); null until it states one.
    #[schema(required = true)]
    stated_rpm: Option<f64>,
    /// The pace learned from bare 429s (refusals no header explained), requests per
    /// minute; null while none was learned.
    #[schema(required = true)]
    learned_rpm: Option<f64>,
    /// Tokens per minute currently allowed; null when unlimited.
    #[schema(required = true)]
    current_tpm: Option<f64>,
    /// Attempts in flight against this provider from this process.
    in_flight: u32,
    /// Whether the provider is paused after a rate limit.
    paused: bool,
}

/// The body of `GET /livez`.
#[derive(Serialize, ToSchema)]
#[schema(as = Liveness)]
pub(super) struct LivenessBody {
    /// Always `ok`: the process answers.
    status: &'static str,
}

/// `GET /livez`: the liveness probe, open in every mode; it reads nothing (the database's
/// state is in `/health`).
#[utoipa::path(
    get,
    path = "/livez",
    tag = "operations",
    summary = "Liveness probe",
    description = "Answers 200 while the process serves HTTP. Open without a token even when \
        tenants are configured; it shows nothing else.",
    responses((status = 200, description = "The process is alive.", body = LivenessBody))
)]
pub(super) async fn livez() -> Json<LivenessBody> {
    Json(LivenessBody { status: "ok" })
}

/// `GET /health`.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    summary = "Server health",
    description = "Database reachability and latency, queue depths by class and status, \
        worker slots, the configured providers, and the cluster: every process sharing the \
        database and the maintenance leader. An operator route: with tenants configured it \
        takes the admin token only.",
    responses(
        (status = 200, description = "The server is healthy.", body = HealthBody),
        (status = 503, description = "The database is unreachable (`status` is \
            `unavailable`).", body = HealthBody),
    )
)]
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
    let gates = state.dispatcher.providers();
    let providers = state
        .config
        .providers
        .iter()
        .filter_map(|p| gates.iter().find(|g| g.provider == p.name).map(|g| (p, g)))
        .map(|(p, g)| ProviderBody {
            name: p.name.clone(),
            kind: match p.kind {
                crate::config::ProviderKind::Openai => "openai",
                crate::config::ProviderKind::Anthropic => "anthropic",
                crate::config::ProviderKind::Sim => "sim",
            },
            rpm: p.rpm,
            tpm: p.tpm,
            max_concurrency: p.max_concurrency,
            breaker: g.breaker.as_str(),
            current_rpm: g.current_rpm,
            stated_rpm: g.stated_rpm,
            learned_rpm: g.learned_rpm,
            current_tpm: g.current_tpm,
            in_flight: g.in_flight,
            paused: g.paused,
        })
        .collect();
    // Degraded: serving, but some provider is refused or paused (its runs wait).
    let degraded = gates
        .iter()
        .any(|g| g.breaker != BreakerState::Closed || g.paused);
    let (code, status) = if !database.reachable {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    } else if degraded {
        (StatusCode::OK, "degraded")
    } else {
        (StatusCode::OK, "ok")
    };
    let (busiest_keys, cluster) = if database.reachable {
        let keys = match state.store.busiest_keys(BUSIEST_KEYS).await {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(error = %e, "health: key loads unavailable");
                Vec::new()
            }
        };
        (keys, cluster::read(&state).await)
    } else {
        (Vec::new(), None)
    };
    let body = HealthBody {
        status,
        database,
        queues,
        busiest_keys: busiest_keys
            .into_iter()
            .map(|k| KeyBody {
                key: k.key,
                class: k.class.as_str(),
                running: k.running,
                queued: k.queued,
            })
            .collect(),
        workers: WorkersBody {
            slots_total: pool.slots_total,
            slots_busy: pool.slots_busy,
        },
        providers,
        cluster,
    };
    (code, Json(body)).into_response()
}
