//! Who is calling: the bearer token of every request, checked by one middleware over every
//! route, and the [`Caller`] it leaves for the handlers to scope what they show.
//!
//! With `[[tenants]]` configured every route needs `Authorization: Bearer <token>` except
//! the open ones ([`access_of`]): `GET /livez` always, and `GET /metrics` while
//! `auth.metrics_open`. Operator routes (`/health`, `/tenants/{name}`, and `/metrics` when
//! not open) take the admin token only; every other route takes a tenant's token or the
//! admin's, and shows a tenant only its own runs. A route not listed here is a tenant
//! route, so a new route is never open by mistake. Without tenants the server is in open
//! mode: every route answers everyone, as [`Caller::Open`].
//!
//! A presented token is hashed (SHA-256) and compared with every configured digest in
//! constant time. Tokens are never logged, stored or echoed: a refusal says what was wrong
//! with the header, never what it held.

use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::config::{Config, TokenDigest};

/// Longest bearer token read, in bytes; a longer one is refused before it is hashed.
pub const MAX_TOKEN_LEN: usize = 4096;
/// The liveness probe, open in every mode.
pub const LIVENESS_PATH: &str = "/livez";
const METRICS_PATH: &str = "/metrics";
/// Routes only the admin token opens (besides `/metrics` when it is not open).
const OPERATOR_PATHS: &[&str] = &[
    "/health",
    "/tenants/{name}",
    "/dlq",
    "/dlq/{id}/requeue",
    "/dlq/requeue",
];
/// The status page's own files: the page asks for a token and sends it on the API calls
/// it makes, so loading it needs none.
const PAGE_PATHS: &[&str] = &["/ui", "/ui/app.js", "/ui/style.css"];

/// Who is calling, as the bearer token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No tenants are configured: one team, which sees everything.
    Open,
    /// A configured tenant: sees, cancels and streams only its own runs.
    Tenant(Arc<str>),
    /// The admin token: every run, and the operator routes.
    Admin,
}

impl Caller {
    /// The tenant whose runs this caller may see: `None` means every run (open mode and
    /// the admin), `Some(name)` only that tenant's.
    pub fn scope(&self) -> Option<&str> {
        match self {
            Caller::Tenant(name) => Some(name),
            Caller::Open | Caller::Admin => None,
        }
    }

    /// Whether the caller may see a run (or batch) owned by `owner`.
    pub fn sees(&self, owner: Option<&str>) -> bool {
        self.scope().is_none_or(|mine| owner == Some(mine))
    }

    /// The tenant filter a listing or stream should apply, given the one the client asked
    /// for (`?tenant=`): a tenant always gets its own; asking for another's is a 404, so
    /// the answer is the same whether that tenant exists or not.
    pub fn tenant_filter(&self, asked: Option<String>) -> Result<Option<String>, ApiError> {
        match (self.scope(), asked) {
            (None, asked) => Ok(asked),
            (Some(mine), None) => Ok(Some(mine.to_string())),
            (Some(mine), Some(asked)) if asked == mine => Ok(Some(asked)),
            (Some(_), Some(asked)) => Err(ApiError::NotFound(format!(
                "no tenant {asked:?} visible to this token"
            ))),
        }
    }

    /// The tenant that owns a new run, given the body's `tenant`: a tenant's own name
    /// (a different one is refused with 400 naming `tenant`); in open mode and for the
    /// admin, the body's, which for the admin must name a configured tenant.
    pub fn owner_of_new(
        &self,
        asked: Option<String>,
        config: &Config,
    ) -> Result<Option<String>, ApiError> {
        match (self, asked) {
            (Caller::Open, asked) => Ok(asked),
            (Caller::Tenant(mine), None) => Ok(Some(mine.to_string())),
            (Caller::Tenant(mine), Some(asked)) if *asked == **mine => Ok(Some(asked)),
            (Caller::Tenant(_), Some(_)) => Err(ApiError::invalid(
                "tenant",
                "tenant must be left out or match the tenant of the bearer token",
            )),
            (Caller::Admin, Some(asked)) if config.tenant(&asked).is_none() => Err(
                ApiError::invalid("tenant", format!("no tenant named {asked:?} is configured")),
            ),
            (Caller::Admin, asked) => Ok(asked),
        }
    }
}

/// Handlers take the caller the middleware found. Without it (a route mounted outside
/// the router's middleware) the request is refused rather than served open.
impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthorized("this route is not behind authentication".into()))
    }
}

/// What a route asks of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a token.
    Open,
    /// A tenant's token (scoped to its runs) or the admin's.
    Tenant,
    /// The admin token only.
    Operator,
}

/// The access rule of a route template, with tenants configured.
pub fn access_of(path: &str, metrics_open: bool) -> Access {
    match path {
        LIVENESS_PATH => Access::Open,
        p if PAGE_PATHS.contains(&p) => Access::Open,
        METRICS_PATH if metrics_open => Access::Open,
        METRICS_PATH => Access::Operator,
        p if OPERATOR_PATHS.contains(&p) => Access::Operator,
        _ => Access::Tenant,
    }
}

/// The digests the middleware checks tokens against.
pub struct Keys {
    tenants: Vec<(TokenDigest, Arc<str>)>,
    admin: Option<TokenDigest>,
    metrics_open: bool,
    /// The stream token secret; none turns stream tokens off.
    stream_secret: Option<crate::config::StreamSecret>,
    clock: Arc<dyn crate::clock::Clock>,
}

/// The routes a stream token opens (`?token=`), each for the scope it names.
const RUN_STREAM_PATH: &str = "/runs/{id}/events";
const FEED_PATH: &str = "/events";

impl Keys {
    pub fn from_config(config: &Config, clock: Arc<dyn crate::clock::Clock>) -> Keys {
        Keys {
            stream_secret: config.auth.stream_secret.clone(),
            clock,
            tenants: config
                .tenants
                .iter()
                .filter_map(|t| Some((t.token?, Arc::from(t.name.as_str()))))
                .collect(),
            admin: config.auth.admin_token,
            metrics_open: config.auth.metrics_open,
        }
    }

    fn open_mode(&self) -> bool {
        self.tenants.is_empty()
    }

    /// The caller a token names. Every digest is compared, so the time taken does not
    /// tell which one (if any) matched.
    fn identify(&self, token: &[u8]) -> Option<Caller> {
        let presented = TokenDigest::of(token);
        let mut found = None;
        for (digest, name) in &self.tenants {
            if digest.matches(&presented) {
                found = Some(Caller::Tenant(name.clone()));
            }
        }
        if let Some(admin) = &self.admin
            && admin.matches(&presented)
        {
            found = Some(Caller::Admin);
        }
        found
    }
}

/// The middleware: finds the caller, applies the route's access rule, records the tenant
/// on the request's log span, and leaves the [`Caller`] for the handler.
pub(super) async fn authenticate(
    State(keys): State<Arc<Keys>>,
    mut request: Request,
    next: Next,
) -> Response {
    let caller = match check(&keys, &request) {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    let tenant = match &caller {
        Some(Caller::Tenant(name)) => Some(name.as_ref()),
        Some(Caller::Admin) => Some("(admin)"),
        Some(Caller::Open) | None => None,
    };
    if let Some(tenant) = tenant {
        tracing::Span::current().record("tenant", tracing::field::display(tenant));
    }
    if let Some(caller) = caller {
        request.extensions_mut().insert(caller);
    }
    next.run(request).await
}

/// The caller of a request, or why it may not use the route. An open route with tenants
/// configured has no caller: a handler there that asks for one is refused, so such a
/// route can never show runs.
fn check(keys: &Keys, request: &Request) -> Result<Option<Caller>, ApiError> {
    if keys.open_mode() {
        return Ok(Some(Caller::Open));
    }
    let path = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("", MatchedPath::as_str);
    let access = access_of(path, keys.metrics_open);
    if let Some(caller) = stream_caller(keys, path, request)? {
        return Ok(Some(caller));
    }
    let token = bearer_token(request.headers());
    let caller = match (access, token) {
        // An open route ignores a token, even a bad one: a probe must not fail on it.
        (Access::Open, _) => return Ok(None),
        (_, Err(e)) => return Err(e),
        (_, Ok(token)) => keys
            .identify(token)
            .ok_or_else(|| ApiError::Unauthorized("the bearer token is not known".into()))?,
    };
    if access == Access::Operator && caller != Caller::Admin {
        return Err(ApiError::Forbidden(
            "this operator route needs the admin token".into(),
        ));
    }
    Ok(Some(caller))
}

/// The caller a stream token names, on a stream route that carries `?token=` and no
/// `Authorization` header; `None` otherwise. The token must be for this very stream: this
/// run's events, or `/events` filtered to its batch.
fn stream_caller(keys: &Keys, path: &str, request: &Request) -> Result<Option<Caller>, ApiError> {
    use super::stream_tokens::{StreamScope, StreamTokenError, verify};
    if !matches!(path, RUN_STREAM_PATH | FEED_PATH)
        || request.headers().contains_key(header::AUTHORIZATION)
    {
        return Ok(None);
    }
    let query = request.uri().query().unwrap_or("");
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    };
    let Some(token) = param("token") else {
        return Ok(None);
    };
    let refuse = |e: StreamTokenError| ApiError::StreamTokenRefused {
        message: e.message(),
        reason: e.code(),
    };
    let secret = keys
        .stream_secret
        .as_ref()
        .ok_or_else(|| refuse(StreamTokenError::Off))?;
    let grant = verify(secret, token, keys.clock.now()).map_err(refuse)?;
    let fits = match &grant.scope {
        StreamScope::Run(id) => {
            path == RUN_STREAM_PATH
                && request
                    .uri()
                    .path()
                    .trim_start_matches("/runs/")
                    .trim_end_matches("/events")
                    == id.to_string()
        }
        StreamScope::Batch(id) => {
            path == FEED_PATH
                && param("batch") == Some(id.to_string().as_str())
                && param("tenant").is_none()
        }
    };
    if !fits {
        return Err(refuse(StreamTokenError::OtherScope));
    }
    Ok(Some(match grant.tenant {
        Some(name) => Caller::Tenant(Arc::from(name.as_str())),
        // A run with no tenant: only the admin sees it, and the token is for it alone.
        None => Caller::Admin,
    }))
}

/// The token of the one `Authorization: Bearer <token>` header, or why there is none.
fn bearer_token(headers: &HeaderMap) -> Result<&[u8], ApiError> {
    let unauthorized = |why: &str| Err(ApiError::Unauthorized(why.to_string()));
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return unauthorized("this route needs an Authorization: Bearer <token> header");
    };
    if values.next().is_some() {
        return unauthorized("send one Authorization header, not several");
    }
    let bytes = value.as_bytes();
    if bytes.len() > MAX_TOKEN_LEN + "Bearer ".len() {
        return unauthorized(&format!(
            "the Authorization header is longer than {MAX_TOKEN_LEN} bytes"
        ));
    }
    if !bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        return unauthorized("the Authorization header holds characters a token cannot have");
    }
    let (scheme, rest) = match bytes.iter().position(|b| *b == b' ') {
        Some(at) => (&bytes[..at], &bytes[at + 1..]),
        None => (bytes, &[][..]),
    };
    if !scheme.eq_ignore_ascii_case(b"Bearer") {
        return unauthorized("the Authorization header must use the Bearer scheme");
    }
    let token = rest.trim_ascii();
    if token.is_empty() {
        return unauthorized("the Authorization header has no token after Bearer");
    }
    if token.contains(&b' ') {
        return unauthorized("a bearer token is one word, without spaces");
    }
    Ok(token)
}

/// Says at start which mode the server is in, and what is closed.
pub fn announce(config: &Config) {
    if config.tenants.is_empty() {
        tracing::warn!(
            "no [[tenants]] configured: open mode, every route answers anyone who can reach the server"
        );
        return;
    }
    if config.auth.admin_token.is_none() {
        tracing::warn!(
            variable = %config.auth.admin_token_env,
            "no admin token in the environment: operator routes (/health, /tenants/{{name}}{}) are closed",
            if config.auth.metrics_open { "" } else { ", /metrics" }
        );
    }
    tracing::info!(
        tenants = config.tenants.len(),
        metrics_open = config.auth.metrics_open,
        "bearer tokens required"
    );
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn header(value: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(value).unwrap(),
        );
        h
    }

    #[test]
    fn bearer_tokens_are_read_and_bad_headers_refused() {
        assert_eq!(bearer_token(&header(b"Bearer abc")).unwrap(), b"abc");
        assert_eq!(bearer_token(&header(b"bearer  abc ")).unwrap(), b"abc");
        for bad in [
            &b"Bearer"[..],
            b"Bearer ",
            b"Basic abc",
            b"Bearer a b",
            b"Bearer \xff\xfe",
            b"abc",
        ] {
            let e = bearer_token(&header(bad)).unwrap_err();
            assert!(matches!(e, ApiError::Unauthorized(_)), "{bad:?}");
        }
        let huge = format!("Bearer {}", "x".repeat(MAX_TOKEN_LEN + 1));
        assert!(bearer_token(&header(huge.as_bytes())).is_err());
        assert!(bearer_token(&HeaderMap::new()).is_err());
    }

    #[test]
    fn scopes_and_filters() {
        let a = Caller::Tenant(Arc::from("a"));
        assert_eq!(a.scope(), Some("a"));
        assert!(a.sees(Some("a")) && !a.sees(Some("b")) && !a.sees(None));
        assert!(Caller::Admin.sees(Some("b")) && Caller::Open.sees(None));
        assert_eq!(a.tenant_filter(None).unwrap().as_deref(), Some("a"));
        assert!(matches!(
            a.tenant_filter(Some("b".into())),
            Err(ApiError::NotFound(_))
        ));
        assert_eq!(Caller::Admin.tenant_filter(None).unwrap(), None);
    }

    #[test]
    fn unlisted_routes_need_a_tenant_token() {
        assert_eq!(access_of("/livez", false), Access::Open);
        assert_eq!(access_of("/ui", false), Access::Open);
        assert_eq!(access_of("/ui/app.js", false), Access::Open);
        assert_eq!(access_of("/v1/chat/completions", false), Access::Tenant);
        assert_eq!(access_of("/metrics", true), Access::Open);
        assert_eq!(access_of("/metrics", false), Access::Operator);
        assert_eq!(access_of("/health", true), Access::Operator);
        assert_eq!(access_of("/some/new/route", true), Access::Tenant);
    }
}
