//! Extractors for what requests carry in headers: the command context, the read-your-writes
//! position and `If-Match`.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use domain::api_key::PLATFORM_TENANT;
use domain::metadata::EventMetadata;
use domain::names::TenantId;
use eventlog::Cursor;

use crate::auth::{Auth, RequiredRole};
use crate::error::ApiError;
use crate::request_id::RequestId;

/// Header naming the tenant a request acts for.
pub const TENANT_HEADER: &str = "x-tenant-id";
/// Header of a read that must reflect at least the write at this cursor.
pub const MIN_POSITION_HEADER: &str = "x-min-position";
/// Header asking for `strict` consistency: 503 rather than stale data.
pub const CONSISTENCY_HEADER: &str = "x-consistency";
/// Header of command responses: the cursor of the last event written.
pub const EVENT_POSITION_HEADER: &str = "x-event-position";
/// Header of stale reads: how many events the read model was behind the asked position.
pub const PROJECTION_LAG_HEADER: &str = "x-projection-lag";
/// The most characters an `Idempotency-Key` may have.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|value| {
            value.to_str().map_err(|_| ApiError::InvalidParameter {
                name,
                reason: "not visible ASCII".into(),
            })
        })
        .transpose()
}

/// Who sends a command, with which role, in which request: the source of its events'
/// metadata and of its idempotency record. `R` is the role the route requires.
#[derive(Debug, Clone)]
pub struct CommandContext<R: RequiredRole> {
    pub auth: Auth<R>,
    pub tenant: TenantId,
    pub actor: String,
    pub request_id: String,
    pub idempotency_key: Option<String>,
    /// The request's W3C `traceparent`, when well formed.
    pub traceparent: Option<String>,
    pub method: Method,
    /// Path and query of the request.
    pub target: String,
}

impl<R: RequiredRole> CommandContext<R> {
    /// Metadata for the events of `command`.
    pub fn metadata(&self, command: &str) -> EventMetadata {
        let mut metadata = EventMetadata::new(
            self.tenant.clone(),
            self.actor.clone(),
            self.request_id.clone(),
            command,
        );
        metadata.idempotency_key = self.idempotency_key.clone();
        metadata.traceparent = self.traceparent.clone();
        metadata
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
                    Err(ApiError::InvalidParameter {
                        name: "Idempotency-Key",
                        reason: format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"),
                    })
                } else {
                    Ok(key.to_string())
                }
            })
            .transpose()?;
        Ok(Self {
            actor: auth.principal.subject.clone(),
            tenant,
            auth,
            request_id,
            idempotency_key,
            traceparent: parts
                .headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .filter(|v| valid_traceparent(v))
                .map(str::to_string),
            method: parts.method.clone(),
            target: parts
                .uri
                .path_and_query()
                .map_or_else(|| parts.uri.path().to_string(), |p| p.as_str().to_string()),
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
                    .map_err(|_| ApiError::InvalidParameter {
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
                return Err(ApiError::InvalidParameter {
                    name: CONSISTENCY_HEADER,
                    reason: "must be 'strict' or 'eventual'".into(),
                });
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
        .map_err(|_| ApiError::InvalidParameter {
            name: "If-Match",
            reason: "must be an ETag returned by the gateway, such as \"3\"".into(),
        })
}

/// The `ETag` of a record at `version`.
pub fn etag(version: u64) -> String {
    format!("\"{version}\"")
}
