//! The API's error type: every variant has one HTTP status and one stable `code`.
//! Server-side failures are logged in full and answered without internals.

use std::collections::BTreeMap;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::openapi::RefOr;
use utoipa::{IntoResponses, ToSchema};

use super::openapi::string_enum;
use crate::dispatch::{RefusalReason, SubmitError};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        field: Option<String>,
    },
    /// No usable bearer token: missing, malformed or unknown.
    #[error("{0}")]
    Unauthorized(String),
    /// A stream token refused on a stream route; `reason` says why (`stream_token_expired`,
    /// `stream_token_invalid`, `stream_token_scope`, `stream_token_malformed`,
    /// `stream_tokens_off`).
    #[error("{message}")]
    StreamTokenRefused {
        message: &'static str,
        reason: &'static str,
    },
    /// A valid token that may not use this route (a tenant on an operator route).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than the {limit}-byte limit")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{message}")]
    AdmissionRejected {
        message: String,
        reason: &'static str,
        retry_after_secs: u64,
    },
    /// The tenant enqueues faster than its `enqueue_rate`.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    /// The tenant spent today's token or spend budget.
    #[error("{message}")]
    BudgetExhausted {
        message: String,
        reason: &'static str,
        retry_after_secs: u64,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(String),
}

/// Every `code` an error can carry (the `ErrorCode` schema of the OpenAPI document).
pub(super) const CODES: [&str; 13] = [
    "invalid_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "method_not_allowed",
    "conflict",
    "payload_too_large",
    "unsupported_media_type",
    "admission_rejected",
    "rate_limited",
    "budget_exhausted",
    "unavailable",
    "internal",
];

string_enum! {
    /// The stable machine-readable code of an API error.
    ErrorCodeName = "ErrorCode", CODES;
}

/// The body of every error response.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub(super) struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = ErrorDetail)]
struct Detail<'a> {
    #[schema(value_type = ErrorCodeName)]
    code: &'static str,
    /// A human-readable explanation.
    message: String,
    /// `invalid_request`: the offending field, as a path into the body (`request.messages`)
    /// or a header name (`Last-Event-ID`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    field: Option<&'a str>,
    /// `admission_rejected`: which admission rule refused the run; `budget_exhausted`:
    /// which budget is spent (`daily_tokens` or `daily_spend`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    reason: Option<&'static str>,
}

// The OpenAPI entries of answers several routes give alike, written once: a route lists
// the ones it can give in its `responses(...)`. They are never built; the field's type
// names the body's schema, which `openapi::ApiDoc` registers.

/// `404` for a run id in the path that names no run.
#[derive(IntoResponses)]
#[response(status = 404, description = "`not_found`: no run has this id.")]
pub(super) struct NoSuchRun(#[expect(dead_code, reason = "only its type is read")] Body<'static>);

/// `503` when the database cannot be reached.
#[derive(IntoResponses)]
#[response(status = 503, description = "`unavailable`: the database is unreachable.",
    headers(("Retry-After" = u64, description = "Seconds to wait before retrying.")))]
struct DatabaseUnreachable(#[expect(dead_code, reason = "only its type is read")] Body<'static>);

/// `500`: what a route answers when it fails in a way it cannot explain to the client.
#[derive(IntoResponses)]
#[response(status = 500, description = "`internal`: an unexpected server error.")]
pub(super) struct InternalError(
    #[expect(dead_code, reason = "only its type is read")] Body<'static>,
);

/// `503` and `500`: what every route that reads the database may answer besides its own
/// errors.
pub(super) struct DatabaseErrors;

impl IntoResponses for DatabaseErrors {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::Response>> {
        let mut responses = DatabaseUnreachable::responses();
        responses.extend(InternalError::responses());
        responses
    }
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::InvalidRequest {
            message: message.into(),
            field: Some(field.into()),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) | ApiError::StreamTokenRefused { .. } => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::AdmissionRejected { .. }
            | ApiError::RateLimited { .. }
            | ApiError::BudgetExhausted { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest { .. } => "invalid_request",
            ApiError::Unauthorized(_) | ApiError::StreamTokenRefused { .. } => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::AdmissionRejected { .. } => "admission_rejected",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::BudgetExhausted { .. } => "budget_exhausted",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::from_store(&e)
    }
}

impl ApiError {
    fn from_store(e: &StoreError) -> ApiError {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "database unavailable");
            ApiError::Unavailable("the database is unreachable; try again shortly".into())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> ApiError {
        match e {
            SubmitError::Refused(refusal) => {
                let retry_after_secs = refusal.retry_after.as_secs_f64().ceil() as u64;
                let (message, reason) = (refusal.message, refusal.reason.as_str());
                match refusal.reason {
                    RefusalReason::EnqueueRate => ApiError::RateLimited {
                        message,
                        retry_after_secs,
                    },
                    RefusalReason::DailyTokens | RefusalReason::DailySpend => {
                        ApiError::BudgetExhausted {
                            message,
                            reason,
                            retry_after_secs,
                        }
                    }
                    RefusalReason::LiveBacklog
                    | RefusalReason::BackgroundQueueFull
                    | RefusalReason::ProviderUnhealthy
                    | RefusalReason::Quota => ApiError::AdmissionRejected {
                        message,
                        reason,
                        retry_after_secs,
                    },
                }
            }
            SubmitError::Closed => ApiError::Unavailable("the server is shutting down".into()),
            SubmitError::Store(e) => ApiError::from_store(&e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(detail = %detail, "internal error");
                "internal error; the server log has the details".to_string()
            }
            other => other.to_string(),
        };
        let (field, reason, retry_after) = match &self {
            ApiError::InvalidRequest { field, .. } => (field.as_deref(), None, None),
            ApiError::AdmissionRejected {
                reason,
                retry_after_secs,
                ..
            }
            | ApiError::BudgetExhausted {
                reason,
                retry_after_secs,
                ..
            } => (None, Some(*reason), Some(*retry_after_secs)),
            ApiError::RateLimited {
                retry_after_secs, ..
            } => (None, None, Some(*retry_after_secs)),
            ApiError::StreamTokenRefused { reason, .. } => (None, Some(*reason), None),
            _ => (None, None, None),
        };
        let body = Body {
            error: Detail {
                code: self.code(),
                message,
                field,
                reason,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_listed() {
        let all = [
            ApiError::invalid("f", "m"),
            ApiError::Unauthorized(String::new()),
            ApiError::Forbidden(String::new()),
            ApiError::NotFound(String::new()),
            ApiError::MethodNotAllowed(String::new()),
            ApiError::Conflict(String::new()),
            ApiError::PayloadTooLarge { limit: 1 },
            ApiError::UnsupportedMediaType(String::new()),
            ApiError::AdmissionRejected {
                message: String::new(),
                reason: "r",
                retry_after_secs: 1,
            },
            ApiError::RateLimited {
                message: String::new(),
                retry_after_secs: 1,
            },
            ApiError::BudgetExhausted {
                message: String::new(),
                reason: "r",
                retry_after_secs: 1,
            },
            ApiError::Unavailable(String::new()),
            ApiError::Internal(String::new()),
        ];
        let codes: Vec<&str> = all.iter().map(ApiError::code).collect();
        assert_eq!(codes, CODES);
    }
}
