//! Stream tokens: short-lived, narrowly scoped keys a browser uses on the event stream
//! routes, where `EventSource` cannot send an `Authorization` header and an API token must
//! never go. The application's backend, holding its tenant token, asks
//! `POST /runs/{id}/stream-token` (one run's stream) or `POST /batches/{id}/stream-token`
//! (`GET /events?batch=` of that batch); the page opens the stream with `?token=`.
//!
//! A token is `st1.<payload>.<mac>` in hex: the payload names the tenant (empty in open
//! mode), the scope (`run:<id>` or `batch:<id>`) and the expiry (unix seconds); the mac
//! is HMAC-SHA256 of the payload under the server's secret (`auth.stream_token_secret_env`),
//! checked in constant time. Rotating the secret invalidates every token. Only the stream
//! routes take one, and only there does the middleware read `token` from the query; the
//! request log records paths without their query, so a token is never logged.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use utoipa::ToSchema;

use super::batches::{BatchPath, no_such_batch};
use super::error::{Body as ErrorBody, DatabaseErrors, NoSuchRun};
use super::runs::{RunPath, visible_run};
use super::{ApiError, AppState, Caller};
use crate::config::StreamSecret;
use crate::run::RunId;
use crate::store::{BatchId, rfc3339};

const PREFIX: &str = "st1";
/// Separates the payload's fields (a tenant name cannot hold it).
const FIELD: char = '\u{1f}';

/// What a token lets its holder follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamScope {
    /// `GET /runs/{id}/events` of this run.
    Run(RunId),
    /// `GET /events?batch=` of this batch.
    Batch(BatchId),
}

/// A token that checked out.
#[derive(Debug, PartialEq, Eq)]
pub struct StreamGrant {
    /// The tenant the stream is followed as; `None` in open mode.
    pub tenant: Option<String>,
    pub scope: StreamScope,
}

/// Why a token was refused (each a 401 with its own code).
#[derive(Debug, PartialEq, Eq)]
pub enum StreamTokenError {
    Malformed,
    Tampered,
    Expired,
    OtherScope,
    Off,
}

impl StreamTokenError {
    pub fn code(&self) -> &'static str {
        match self {
            StreamTokenError::Malformed => "stream_token_malformed",
            StreamTokenError::Tampered => "stream_token_invalid",
            StreamTokenError::Expired => "stream_token_expired",
            StreamTokenError::OtherScope => "stream_token_scope",
            StreamTokenError::Off => "stream_tokens_off",
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            StreamTokenError::Malformed => "the stream token is not one this server issues",
            StreamTokenError::Tampered => {
                "the stream token's signature does not match (altered, or signed with a secret since rotated)"
            }
            StreamTokenError::Expired => "the stream token has expired; ask for a new one",
            StreamTokenError::OtherScope => "the stream token is for another stream",
            StreamTokenError::Off => "stream tokens are off: the server has no stream token secret",
        }
    }
}

fn mac(secret: &StreamSecret, payload: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret.0).expect("HMAC takes any key");
    mac.update(payload);
    mac
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Signs a token for `grant` that expires at `expires`.
pub fn sign(secret: &StreamSecret, grant: &StreamGrant, expires: DateTime<Utc>) -> String {
    let scope = match &grant.scope {
        StreamScope::Run(id) => format!("run:{id}"),
        StreamScope::Batch(id) => format!("batch:{id}"),
    };
    let payload = format!(
        "{}{FIELD}{scope}{FIELD}{}",
        grant.tenant.as_deref().unwrap_or(""),
        expires.timestamp()
    );
    let tag = mac(secret, payload.as_bytes()).finalize().into_bytes();
    format!("{PREFIX}.{}.{}", hex(payload.as_bytes()), hex(&tag))
}

/// Checks `token` at `now`: its signature (in constant time), then its expiry.
pub fn verify(
    secret: &StreamSecret,
    token: &str,
    now: DateTime<Utc>,
) -> Result<StreamGrant, StreamTokenError> {
    let mut parts = token.split('.');
    let (Some(PREFIX), Some(payload), Some(tag), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(StreamTokenError::Malformed);
    };
    let (payload, tag) = unhex(payload)
        .zip(unhex(tag))
        .ok_or(StreamTokenError::Malformed)?;
    mac(secret, &payload)
        .verify_slice(&tag)
        .map_err(|_| StreamTokenError::Tampered)?;
    let text = String::from_utf8(payload).map_err(|_| StreamTokenError::Malformed)?;
    let fields: Vec<&str> = text.split(FIELD).collect();
    let [tenant, scope, expires] = fields[..] else {
        return Err(StreamTokenError::Malformed);
    };
    let expires: i64 = expires.parse().map_err(|_| StreamTokenError::Malformed)?;
    if now.timestamp() >= expires {
        return Err(StreamTokenError::Expired);
    }
    let scope = match scope.split_once(':') {
        Some(("run", id)) => StreamScope::Run(id.parse().map_err(|_| StreamTokenError::Malformed)?),
        Some(("batch", id)) => {
            StreamScope::Batch(id.parse().map_err(|_| StreamTokenError::Malformed)?)
        }
        _ => return Err(StreamTokenError::Malformed),
    };
    Ok(StreamGrant {
        tenant: (!tenant.is_empty()).then(|| tenant.to_string()),
        scope,
    })
}

/// A stream token issued.
#[derive(Serialize, ToSchema)]
pub(super) struct IssuedToken {
    /// Pass as `?token=` on the stream.
    token: String,
    #[schema(format = DateTime)]
    expires_at: String,
    /// The stream's path with the token, ready for `new EventSource(…)`.
    events: String,
}

fn issue(state: &AppState, grant: StreamGrant, path: String) -> Result<IssuedToken, ApiError> {
    let secret = state
        .config
        .auth
        .stream_secret
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable(StreamTokenError::Off.message().to_string()))?;
    let ttl = chrono::Duration::from_std(state.config.auth.stream_token_ttl)
        .unwrap_or(chrono::Duration::MAX);
    let expires = state.clock.now() + ttl;
    let token = sign(secret, &grant, expires);
    let join = if path.contains('?') { '&' } else { '?' };
    Ok(IssuedToken {
        events: format!("{path}{join}token={token}"),
        token,
        expires_at: rfc3339(expires),
    })
}

/// `POST /runs/{id}/stream-token`.
#[utoipa::path(
    post,
    path = "/runs/{id}/stream-token",
    tag = "events",
    summary = "A stream token for one run's event stream",
    description = "A short-lived token (`auth.stream_token_ttl`) a browser passes as \
        `?token=` on `GET /runs/{id}/events`, for this run only. Ask for it from the \
        application's backend, which holds the tenant token.",
    params(RunPath),
    responses(
        (status = 200, description = "The token.", body = IssuedToken),
        NoSuchRun,
        (status = 503, description = "`unavailable`: the server has no stream token secret.",
            body = ErrorBody),
        DatabaseErrors,
    )
)]
pub(super) async fn run_stream_token(
    State(state): State<AppState>,
    caller: Caller,
    RunPath(id): RunPath,
) -> Result<Json<IssuedToken>, ApiError> {
    let run = visible_run(&state, &caller, id).await?;
    let grant = StreamGrant {
        tenant: run.spec.tenant,
        scope: StreamScope::Run(id),
    };
    Ok(Json(issue(&state, grant, format!("/runs/{id}/events"))?))
}

/// `POST /batches/{id}/stream-token`.
#[utoipa::path(
    post,
    path = "/batches/{id}/stream-token",
    tag = "events",
    summary = "A stream token for one batch's events",
    description = "A short-lived token a browser passes as `?token=` on \
        `GET /events?batch={id}`, for this batch's events only.",
    params(BatchPath),
    responses(
        (status = 200, description = "The token.", body = IssuedToken),
        (status = 404, description = "`not_found`: no batch has this id.", body = ErrorBody),
        (status = 503, description = "`unavailable`: the server has no stream token secret.",
            body = ErrorBody),
        DatabaseErrors,
    )
)]
pub(super) async fn batch_stream_token(
    State(state): State<AppState>,
    caller: Caller,
    BatchPath(id): BatchPath,
) -> Result<Json<IssuedToken>, ApiError> {
    let batch = state
        .store
        .get_batch(id, caller.scope())
        .await?
        .ok_or_else(|| no_such_batch(&id))?;
    let grant = StreamGrant {
        tenant: batch.tenant,
        scope: StreamScope::Batch(id),
    };
    Ok(Json(issue(&state, grant, format!("/events?batch={id}"))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> StreamSecret {
        StreamSecret(s.as_bytes().to_vec())
    }

    #[test]
    fn a_token_checks_out_until_it_expires() {
        let key = secret("a secret of thirty-two bytes or more!");
        let grant = StreamGrant {
            tenant: Some("team-a".into()),
            scope: StreamScope::Run(RunId::new()),
        };
        let now = Utc::now();
        let token = sign(&key, &grant, now + chrono::Duration::minutes(10));
        assert_eq!(verify(&key, &token, now), Ok(grant));
        assert_eq!(
            verify(&key, &token, now + chrono::Duration::minutes(11)),
            Err(StreamTokenError::Expired)
        );
    }

    #[test]
    fn tampered_rotated_and_malformed_tokens_are_refused() {
        let key = secret("a secret of thirty-two bytes or more!");
        let grant = StreamGrant {
            tenant: Some("team-a".into()),
            scope: StreamScope::Batch(BatchId::new()),
        };
        let now = Utc::now();
        let token = sign(&key, &grant, now + chrono::Duration::minutes(10));
        // The payload says team-b now; the mac still says team-a.
        let (head, tail) = token.split_at(10);
        let forged = format!("{head}{}", tail.replacen("61", "62", 1));
        assert_ne!(forged, token);
        assert!(matches!(
            verify(&key, &forged, now),
            Err(StreamTokenError::Tampered | StreamTokenError::Malformed)
        ));
        assert_eq!(
            verify(
                &secret("another secret, rotated in since then"),
                &token,
                now
            ),
            Err(StreamTokenError::Tampered)
        );
        for junk in ["", "st1", "st1.zz.zz", "xx.00.00", "st1.00.00.00"] {
            assert!(verify(&key, junk, now).is_err(), "{junk:?}");
        }
    }
}
