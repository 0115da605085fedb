//! Extractors for what requests carry in headers: the command context, the read-your-writes
//! position and `If-Match`.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use domain::api_key::PLATFORM_TENANT;
use domain::names::TenantId;
use eventlog::Cursor;

use app::Error as AppError;

use crate::auth::{Auth, RequiredRole};
use crate::error::ApiError;
use crate::request_id::RequestId;

pub use crate::headers::{
    CONSISTENCY_HEADER, EVENT_POSITION_HEADER, MAX_IDEMPOTENCY_KEY_LEN, MIN_POSITION_HEADER,
    PROJECTION_LAG_HEADER, TENANT_HEADER,
};

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|value| {
            value.to_str().map_err(|_| AppError::InvalidParameter {
                name,
                reason: "not visible ASCII".into(),
            })
        })
        .transpose()
        .map_err(ApiError::from)
}

/// The operation id of every route, by route pattern and method (from the OpenAPI document),
/// installed on the router as a request extension: idempotency keys are scoped by it. Looked
/// up without an allocation.
#[derive(Debug, Clone, Default)]
pub struct Operations(std::sync::Arc<OperationsByPath>);

/// Route pattern → its methods' operation ids.
type OperationsByPath = std::collections::HashMap<Box<str>, Vec<(axum::http::Method, String)>>;

impl Operations {
    /// `(method, route pattern, operation id)` triples.
    pub fn new(operations: impl IntoIterator<Item = (axum::http::Method, String, String)>) -> Self {
        let mut by_path = OperationsByPath::new();
        for (method, path, id) in operations {
            by_path.entry(path.into()).or_default().push((method, id));
        }
        Self(std::sync::Arc::new(by_path))
    }

    /// The request's operation: the route's operation id, or `METHOD pattern` for a route the
    /// document does not name.
    fn of(parts: &Parts) -> String {
        let pattern = parts
            .extensions
            .get::<axum::extract::MatchedPath>()
            .map_or_else(|| parts.uri.path(), |path| path.as_str());
        parts
            .extensions
            .get::<Operations>()
            .and_then(|operations| operations.0.get(pattern))
            .and_then(|methods| methods.iter().find(|(method, _)| *method == parts.method))
            .map_or_else(
                || format!("{} {pattern}", parts.method),
                |(_, id)| id.clone(),
            )
    }
}

/// Who sends a command, with which role, in which request: the use cases' [`app::Context`]
/// (to which it dereferences) and the principal's role `R`, the one the route requires.
#[derive(Debug, Clone)]
pub struct CommandContext<R: RequiredRole> {
    pub auth: Auth<R>,
    pub context: app::Context,
}

impl<R: RequiredRole> std::ops::Deref for CommandContext<R> {
    type Target = app::Context;

    fn deref(&self) -> &app::Context {
        &self.context
    }
}

/// A `traceparent` of the form `00-<32 hex>-<16 hex>-<2 hex>`.
fn valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    parts.len() == 4
        && [2, 32, 16, 2]
            .iter()
            .zip(&parts)
            .all(|(len, part)| part.len() == *len && part.bytes().all(|b| b.is_ascii_hexdigit()))
}

impl<S: Send + Sync, R: RequiredRole> FromRequestParts<S> for CommandContext<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = Auth::<R>::from_request_parts(parts, state).await?;
        let tenant = auth
            .principal
            .tenant
            .clone()
            .unwrap_or_else(|| TenantId::parse(PLATFORM_TENANT).expect("a valid tenant id"));
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|id| id.0.clone())
            .unwrap_or_default();
        let idempotency_key = header(&parts.headers, "idempotency-key")?
            .map(|key| {
                if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
                    Err(AppError::InvalidParameter {
                        name: "Idempotency-Key",
                        reason: format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"),
                    })
                } else {
                    Ok(key.to_string())
                }
            })
            .transpose()?;
        Ok(Self {
            context: app::Context {
                actor: auth.principal.subject.clone(),
                tenant,
                request_id,
                idempotency_key,
                // The request's own span when spans are exported (its parent is the client's
                // `traceparent`), else the client's `traceparent` as it came.
                traceparent: workers::trace::traceparent_of(&tracing::Span::current()).or_else(
                    || {
                        parts
                            .headers
                            .get("traceparent")
                            .and_then(|v| v.to_str().ok())
                            .filter(|v| valid_traceparent(v))
                            .map(str::to_string)
                    },
                ),
                operation: Operations::of(parts),
                method: parts.method.to_string(),
                target: parts
                    .uri
                    .path_and_query()
                    .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string()),
            },
            auth,
        })
    }
}

/// A read's consistency requirement: `x-min-position` and `x-consistency: strict`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Consistency {
    pub min_position: Option<Cursor>,
    pub strict: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for Consistency {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let min_position = header(&parts.headers, MIN_POSITION_HEADER)?
            .map(|raw| {
                raw.parse::<Cursor>()
                    .map_err(|_| AppError::InvalidParameter {
                        name: MIN_POSITION_HEADER,
                        reason: "not a cursor returned by the gateway".into(),
                    })
            })
            .transpose()?;
        let strict = match header(&parts.headers, CONSISTENCY_HEADER)? {
            None => false,
            Some(value) if value.eq_ignore_ascii_case("strict") => true,
            Some(value) if value.eq_ignore_ascii_case("eventual") => false,
            Some(_) => {
                return Err(app::Error::InvalidParameter {
                    name: CONSISTENCY_HEADER,
                    reason: "must be 'strict' or 'eventual'".into(),
                }
                .into());
            }
        };
        Ok(Self {
            min_position,
            strict,
        })
    }
}

/// `If-Match`: the version a command expects the record to be at. `*` and absence both mean
/// "whatever the current version is".
#[derive(Debug, Clone, Copy, Default)]
pub struct IfMatch(pub Option<u64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let Some(raw) = header(&parts.headers, "if-match")? else {
            return Ok(IfMatch(None));
        };
        parse_if_match(raw).map(IfMatch)
    }
}

/// Parses `"3"`, `W/"3"`, `3` or `*`.
pub fn parse_if_match(raw: &str) -> Result<Option<u64>, ApiError> {
    let raw = raw.trim();
    if raw == "*" {
        return Ok(None);
    }
    let tag = raw.strip_prefix("W/").unwrap_or(raw);
    let tag = tag
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(tag);
    tag.parse::<u64>()
        .map(Some)
        .map_err(|_| AppError::InvalidParameter {
            name: "If-Match",
            reason: "must be an ETag returned by the gateway, such as \"3\"".into(),
        })
        .map_err(ApiError::from)
}

/// The `ETag` of a record at `version`.
pub fn etag(version: u64) -> String {
    format!("\"{version}\"")
}
