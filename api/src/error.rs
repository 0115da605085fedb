//! The one error type of the HTTP layer and its mapping to status codes.
//!
//! Every failure a handler can have is an [`ApiError`] variant; [`ApiError::parts`] is the
//! single `match` that gives each its status and stable code. Handlers return the error; the
//! [`envelope`] middleware writes the body `{"error": {code, message, details, requestId}}`
//! with the request's id, and logs internal causes once, inside the request's span. Responses
//! that axum produces on its own (unknown route, wrong method, body too large) are rewritten
//! into the same envelope, so a client never sees another error shape.

use axum::Json;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::request_id::RequestId;

/// Everything that can go wrong in a request: the transport's own refusals, and the use
/// cases' [`app::Error`]s.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 401 `UNAUTHORIZED`: missing, malformed, unknown, wrong, revoked or expired credentials.
    /// Which of these it was is logged, never said.
    #[error("missing or invalid credentials")]
    Unauthorized,
    /// 403 `FORBIDDEN`: the credentials lack the route's role.
    #[error("this route requires the '{required}' role")]
    Forbidden { required: domain::roles::Role },
    /// 403 `TENANT_SUSPENDED`.
    #[error("the tenant is suspended")]
    TenantSuspended,
    /// 403 `TENANT_MISMATCH`: `x-tenant-id` names another tenant than the credentials.
    #[error("x-tenant-id does not match the credentials' tenant")]
    TenantMismatch,
    /// 403 `TENANT_UNKNOWN`: a service token names a tenant that does not exist.
    #[error("the tenant named by the credentials does not exist")]
    TenantUnknown,
    /// 429 `RATE_LIMITED`, with `Retry-After`.
    #[error("too many requests; retry after {retry_after} s")]
    RateLimited { retry_after: u64 },
    /// 400 `TENANT_REQUIRED`: no `x-tenant-id` header.
    #[error("the x-tenant-id header is required")]
    TenantRequired,
    /// 400 `INVALID_JSON`: the body is not JSON, or not the JSON this route takes.
    #[error("{0}")]
    InvalidJson(String),
    /// 400 `JSON_TOO_DEEP`: the body nests objects and arrays more than [`MAX_JSON_DEPTH`]
    /// levels deep.
    #[error("the request body nests {depth} levels deep; at most {MAX_JSON_DEPTH} are allowed")]
    JsonTooDeep { depth: usize },
    /// 400 `JSON_NUL_CHARACTER`: a string or key of the body contains U+0000.
    #[error("strings and keys of the request body may not contain U+0000")]
    JsonNulCharacter,
    /// 414 `URI_TOO_LONG`: the request target is over `GATEWAY_MAX_URI_BYTES`.
    #[error("the request target is {length} bytes; at most {limit} are accepted")]
    UriTooLong { length: usize, limit: usize },
    /// 431 `REQUEST_HEADERS_TOO_LARGE`: the headers are over `GATEWAY_MAX_HEADER_BYTES`.
    #[error("the request headers are {length} bytes; at most {limit} are accepted")]
    HeadersTooLarge { length: usize, limit: usize },
    /// 413 `PAYLOAD_TOO_LARGE`: the body is over the configured limit.
    #[error("the request body is too large")]
    PayloadTooLarge,
    /// 415 `UNSUPPORTED_MEDIA_TYPE`: a JSON body without `Content-Type: application/json`.
    #[error("expected a body with Content-Type: application/json")]
    UnsupportedMediaType,
    /// 426 `UPGRADE_REQUIRED`: `/v1/ws` asked for without a WebSocket upgrade.
    #[error("this route speaks WebSocket: send an upgrade request")]
    UpgradeRequired,
    /// What a use case answered.
    #[error(transparent)]
    App(#[from] app::Error),
}

pub use app::FieldError;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

/// The error itself.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// Stable, UPPER_SNAKE_CASE; safe to match on.
    #[schema(example = "RESOURCE_NOT_FOUND")]
    pub code: String,
    /// For people; may change.
    pub message: String,
    #[serde(skip_serializing_if = "Value::is_null")]
    #[schema(value_type = Object)]
    pub details: Value,
    #[schema(example = "req_0192f0c5a1b27c4d8e9f0a1b2c3d4e5f")]
    pub request_id: String,
}

/// Marks a response whose body is already final (a stored response being sent or replayed),
/// which the [`envelope`] middleware must leave as it is.
#[derive(Debug, Clone, Copy)]
pub struct FinalBody;

/// The error of a response, carried from the handler to the [`envelope`] middleware.
#[derive(Debug, Clone)]
struct PendingError {
    code: &'static str,
    message: String,
    details: Value,
    internal: Option<String>,
}

impl ApiError {
    /// Status, code and details of every variant: the one place an error becomes HTTP.
    fn parts(&self) -> (StatusCode, &'static str, Value) {
        use ApiError::*;
        match self {
            Unauthorized => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED", Value::Null),
            Forbidden { required } => (
                StatusCode::FORBIDDEN,
                "FORBIDDEN",
                json!({ "requiredRole": required }),
            ),
            TenantSuspended => (StatusCode::FORBIDDEN, "TENANT_SUSPENDED", Value::Null),
            TenantMismatch => (StatusCode::FORBIDDEN, "TENANT_MISMATCH", Value::Null),
            TenantUnknown => (StatusCode::FORBIDDEN, "TENANT_UNKNOWN", Value::Null),
            RateLimited { retry_after } => (
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                json!({ "retryAfterSeconds": retry_after }),
            ),
            TenantRequired => (StatusCode::BAD_REQUEST, "TENANT_REQUIRED", Value::Null),
            InvalidJson(_) => (StatusCode::BAD_REQUEST, "INVALID_JSON", Value::Null),
            JsonTooDeep { depth } => (
                StatusCode::BAD_REQUEST,
                "JSON_TOO_DEEP",
                json!({ "depth": depth, "maxDepth": MAX_JSON_DEPTH }),
            ),
            JsonNulCharacter => (StatusCode::BAD_REQUEST, "JSON_NUL_CHARACTER", Value::Null),
            UriTooLong { length, limit } => (
                StatusCode::URI_TOO_LONG,
                "URI_TOO_LONG",
                json!({ "length": length, "limit": limit }),
            ),
            HeadersTooLarge { length, limit } => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "REQUEST_HEADERS_TOO_LARGE",
                json!({ "length": length, "limit": limit }),
            ),
            PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                Value::Null,
            ),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                Value::Null,
            ),
            UpgradeRequired => (
                StatusCode::UPGRADE_REQUIRED,
                "UPGRADE_REQUIRED",
                Value::Null,
            ),
            App(error) => app_parts(error),
        }
    }

    /// Wraps any unexpected failure.
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        Self::App(app::Error::internal(error))
    }
}

/// Status, code and details of each use-case error.
fn app_parts(error: &app::Error) -> (StatusCode, &'static str, Value) {
    use app::Error::*;
    match error {
        IdempotencyKeyReused => (
            StatusCode::UNPROCESSABLE_ENTITY,
            "IDEMPOTENCY_KEY_REUSED",
            Value::Null,
        ),
        IdempotencyInFlight => (StatusCode::CONFLICT, "IDEMPOTENCY_IN_FLIGHT", Value::Null),
        TenantNotFound(id) => (
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            json!({ "resource": "tenant", "tenantId": id }),
        ),
        TenantAlreadyExists(id) => (
            StatusCode::CONFLICT,
            "TENANT_ALREADY_EXISTS",
            json!({ "tenantId": id }),
        ),
        ApiKeyNotFound(id) => (
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            json!({ "resource": "apiKey", "keyId": id }),
        ),
        InvalidTenant(_) => (StatusCode::BAD_REQUEST, "INVALID_TENANT", Value::Null),
        InvalidEntityType(_) => (StatusCode::BAD_REQUEST, "INVALID_ENTITY_TYPE", Value::Null),
        InvalidId(_) => (StatusCode::BAD_REQUEST, "INVALID_ID", Value::Null),
        InvalidParameter { name, .. } => (
            StatusCode::BAD_REQUEST,
            "INVALID_PARAMETER",
            json!({ "parameter": name }),
        ),
        Validation(fields) => (
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            json!({ "fields": fields }),
        ),
        EntityNotFound { entity_type, id } => (
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            json!({ "resource": "entity", "entity": entity_type, "id": id }),
        ),
        EntityAlreadyExists { entity_type, id } => (
            StatusCode::CONFLICT,
            "ENTITY_ALREADY_EXISTS",
            json!({ "entity": entity_type, "id": id }),
        ),
        EntityTypeNotFound(name) => (
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            json!({ "resource": "entityType", "entity": name }),
        ),
        EntityTypeAlreadyExists(name) => (
            StatusCode::CONFLICT,
            "ENTITY_TYPE_ALREADY_EXISTS",
            json!({ "entity": name }),
        ),
        IncompatibleSchemaChange(fields) => (
            StatusCode::CONFLICT,
            "INCOMPATIBLE_SCHEMA_CHANGE",
            json!({ "fields": fields }),
        ),
        UniqueViolation {
            entity_type,
            field,
            value,
            existing_id,
        } => (
            StatusCode::CONFLICT,
            "UNIQUE_VIOLATION",
            json!({ "entity": entity_type, "field": field, "value": value, "existingId": existing_id }),
        ),
        ReferenceRestricted {
            entity_type,
            id,
            referrers,
        } => (
            StatusCode::CONFLICT,
            "REFERENCE_RESTRICTED",
            json!({ "entity": entity_type, "id": id, "referencedBy": referrers }),
        ),
        RelationNotFound {
            entity_type,
            relation,
        } => (
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            json!({ "resource": "relation", "entity": entity_type, "relation": relation }),
        ),
        EdgeNotFound {
            entity_type,
            id,
            relation,
            target_id,
        } => (
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            json!({ "resource": "edge", "entity": entity_type, "id": id, "relation": relation, "targetId": target_id }),
        ),
        RelationLimit {
            entity_type,
            id,
            limit,
        } => (
            StatusCode::CONFLICT,
            "RELATION_LIMIT_EXCEEDED",
            json!({ "entity": entity_type, "id": id, "limit": limit }),
        ),
        OperationFailed { index, error } => {
            let (status, code, details) = app_parts(error);
            let mut merged = json!({ "operation": index });
            if let Value::Object(inner) = details {
                merged.as_object_mut().expect("an object").extend(inner);
            }
            (status, code, merged)
        }
        VersionConflict { expected, actual } => (
            StatusCode::CONFLICT,
            "VERSION_CONFLICT",
            json!({ "expectedVersion": expected, "currentVersion": actual }),
        ),
        ConcurrentModification => (StatusCode::CONFLICT, "CONCURRENT_MODIFICATION", Value::Null),
        IdempotencyKeyRequired => (
            StatusCode::BAD_REQUEST,
            "IDEMPOTENCY_KEY_REQUIRED",
            Value::Null,
        ),
        AgentNotFound(id) => (
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            json!({ "resource": "agent", "agentId": id }),
        ),
        AgentArchived(id) => (
            StatusCode::CONFLICT,
            "AGENT_ARCHIVED",
            json!({ "agentId": id }),
        ),
        SessionNotFound(id) => (
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            json!({ "resource": "session", "sessionId": id }),
        ),
        SessionClosed(id) => (
            StatusCode::CONFLICT,
            "SESSION_CLOSED",
            json!({ "sessionId": id }),
        ),
        AllProvidersFailed { attempts } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "ALL_PROVIDERS_FAILED",
            json!({ "attempts": attempts }),
        ),
        BudgetExceeded {
            scope,
            limit_micros,
            spent_micros,
        } => (
            StatusCode::PAYMENT_REQUIRED,
            "BUDGET_EXCEEDED",
            json!({
                "scope": scope,
                "monthlyLimitUsd": domain::provider::micros_to_usd(*limit_micros),
                "spentUsd": domain::provider::micros_to_usd(*spent_micros),
                "monthlyLimitMicros": limit_micros,
                "spentMicros": spent_micros,
            }),
        ),
        BudgetNotFound => (
            StatusCode::NOT_FOUND,
            "RESOURCE_NOT_FOUND",
            json!({ "resource": "budget" }),
        ),
        BudgetContended => (
            StatusCode::SERVICE_UNAVAILABLE,
            "BUDGET_CONTENDED",
            Value::Null,
        ),
        ProjectionStale { events_behind } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "PROJECTION_STALE",
            json!({ "eventsBehind": events_behind }),
        ),
        DatabaseUnavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "DATABASE_UNAVAILABLE",
            Value::Null,
        ),
        Internal(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            Value::Null,
        ),
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        Self::App(error.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, details) = self.parts();
        let internal = match &self {
            ApiError::App(app::Error::Internal(cause)) => Some(format!("{cause:#}")),
            _ => None,
        };
        let mut response = status.into_response();
        match &self {
            ApiError::App(
                app::Error::ProjectionStale { .. }
                | app::Error::DatabaseUnavailable
                | app::Error::BudgetContended,
            ) => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::RateLimited { retry_after } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        response.extensions_mut().insert(PendingError {
            code,
            message: self.to_string(),
            details,
            internal,
        });
        response
    }
}

impl ApiError {
    /// The stable code a client reads in the envelope (`UNAUTHORIZED`, …).
    pub fn code(&self) -> &'static str {
        self.parts().1
    }

    /// The status and envelope body of this error, as the client receives it; used to store a
    /// refused command's answer for idempotent replay.
    pub fn render(&self, request_id: &str) -> (StatusCode, Vec<u8>) {
        let (status, code, details) = self.parts();
        (
            status,
            envelope_body(code, self.to_string(), details, request_id.to_string()),
        )
    }
}

/// The stored form of the answer to a refused command: [`app::state::RenderRefusal`].
pub fn render_refusal(
    error: &app::Error,
    request_id: &str,
) -> eventlog::idempotency::StoredResponse {
    let (status, code, details) = app_parts(error);
    eventlog::idempotency::StoredResponse {
        status: status.as_u16(),
        headers: vec![("content-type".into(), "application/json".into())],
        body: envelope_body(code, error.to_string(), details, request_id.to_string()),
    }
}

/// The bytes of an error envelope.
fn envelope_body(code: &str, message: String, details: Value, request_id: String) -> Vec<u8> {
    let body = ErrorEnvelope {
        error: ErrorBody {
            code: code.to_string(),
            message,
            details,
            request_id,
        },
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Writes the error envelope of every error response `next` answers, with the request id,
/// and logs the internal cause of server errors (a step of `routes::gateway_middleware`).
pub async fn envelope<F, Fut>(request: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map(|id| id.0.clone())
        .unwrap_or_default();
    let mut response = next(request).await;
    if response.extensions().get::<FinalBody>().is_some() {
        return response;
    }
    let status = response.status();
    let pending = match response.extensions_mut().remove::<PendingError>() {
        Some(pending) => pending,
        None if status.is_client_error() || status.is_server_error() => {
            // Produced by axum or a tower layer, not by a handler.
            let (code, message) = match status {
                StatusCode::NOT_FOUND => ("NOT_FOUND", "no such route"),
                StatusCode::METHOD_NOT_ALLOWED => {
                    ("METHOD_NOT_ALLOWED", "method not allowed on this route")
                }
                StatusCode::PAYLOAD_TOO_LARGE => {
                    ("PAYLOAD_TOO_LARGE", "the request body is too large")
                }
                StatusCode::URI_TOO_LONG => ("URI_TOO_LONG", "the request target is too long"),
                StatusCode::REQUEST_TIMEOUT | StatusCode::SERVICE_UNAVAILABLE => {
                    ("TIMEOUT", "the request took too long")
                }
                s if s.is_server_error() => ("INTERNAL_ERROR", "internal error"),
                _ => ("BAD_REQUEST", "bad request"),
            };
            PendingError {
                code,
                message: message.into(),
                details: Value::Null,
                internal: status
                    .is_server_error()
                    .then(|| "server error without a cause".into()),
            }
        }
        None => return response,
    };
    if let Some(cause) = &pending.internal {
        tracing::error!(code = pending.code, %status, cause = %cause, "request failed");
    } else if status.is_server_error() {
        tracing::warn!(code = pending.code, %status, "request failed");
    }
    let body = envelope_body(pending.code, pending.message, pending.details, request_id);
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

/// The most levels of objects and arrays a request body may nest.
pub const MAX_JSON_DEPTH: usize = 64;

/// `Json<T>` whose rejections are [`ApiError`]s, and which refuses what the gateway could
/// store but not serve: bodies nested more than [`MAX_JSON_DEPTH`] levels (`JSON_TOO_DEEP`)
/// and strings or keys with a NUL character (`JSON_NUL_CHARACTER`; PostgreSQL cannot store it,
/// so neither backend takes it).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = request
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|mime| {
                let mime = mime.trim().to_ascii_lowercase();
                mime == "application/json"
                    || (mime.starts_with("application/") && mime.ends_with("+json"))
            })
            .unwrap_or(false);
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = axum::body::Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::InvalidJson(rejection.body_text())
                }
            })?;
        parse_body(&bytes).map(Self)
    }
}

/// Parses a request body as `T`, refusing what [`ApiJson`] refuses.
pub fn parse_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let depth = eventlog::json::nesting_depth(bytes);
    if depth > MAX_JSON_DEPTH {
        return Err(ApiError::JsonTooDeep { depth });
    }
    if eventlog::json::has_nul_escape(bytes) {
        return Err(ApiError::JsonNulCharacter);
    }
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::InvalidJson(format!(
            "Failed to deserialize the JSON body into the target type: {e}"
        ))
    })
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        Json(self.0).into_response()
    }
}

#[cfg(test)]
mod tests {
    use app::Error;

    use super::app_parts;

    /// One error of each variant.
    fn every_variant() -> Vec<Error> {
        let text = || "x".to_string();
        vec![
            Error::IdempotencyKeyReused,
            Error::IdempotencyInFlight,
            Error::TenantNotFound(text()),
            Error::TenantAlreadyExists(text()),
            Error::ApiKeyNotFound(text()),
            Error::InvalidTenant(text()),
            Error::InvalidEntityType(text()),
            Error::InvalidId(text()),
            Error::InvalidParameter {
                name: "limit",
                reason: text(),
            },
            Error::Validation(Vec::new()),
            Error::EntityNotFound {
                entity_type: text(),
                id: text(),
            },
            Error::EntityAlreadyExists {
                entity_type: text(),
                id: text(),
            },
            Error::EntityTypeNotFound(text()),
            Error::EntityTypeAlreadyExists(text()),
            Error::IncompatibleSchemaChange(Vec::new()),
            Error::UniqueViolation {
                entity_type: text(),
                field: text(),
                value: serde_json::Value::Null,
                existing_id: text(),
            },
            Error::ReferenceRestricted {
                entity_type: text(),
                id: text(),
                referrers: serde_json::Value::Null,
            },
            Error::RelationNotFound {
                entity_type: text(),
                relation: text(),
            },
            Error::EdgeNotFound {
                entity_type: text(),
                id: text(),
                relation: text(),
                target_id: text(),
            },
            Error::RelationLimit {
                entity_type: text(),
                id: text(),
                limit: 1,
            },
            Error::OperationFailed {
                index: 1,
                error: Box::new(Error::Validation(Vec::new())),
            },
            Error::OperationFailed {
                index: 1,
                error: Box::new(Error::DatabaseUnavailable),
            },
            Error::VersionConflict {
                expected: 1,
                actual: 2,
            },
            Error::ConcurrentModification,
            Error::IdempotencyKeyRequired,
            Error::AgentNotFound(text()),
            Error::AgentArchived(text()),
            Error::SessionNotFound(text()),
            Error::SessionClosed(text()),
            Error::AllProvidersFailed {
                attempts: serde_json::Value::Null,
            },
            Error::BudgetExceeded {
                scope: text(),
                limit_micros: 1,
                spent_micros: 2,
            },
            Error::BudgetContended,
            Error::BudgetNotFound,
            Error::ProjectionStale { events_behind: 1 },
            Error::DatabaseUnavailable,
            Error::internal(anyhow::anyhow!("x")),
        ]
    }

    #[test]
    fn a_refusal_is_exactly_an_error_answered_with_a_4xx() {
        for error in every_variant() {
            let (status, code, _) = app_parts(&error);
            assert_eq!(
                error.is_refusal(),
                status.is_client_error(),
                "{code} ({status}): is_refusal disagrees with its status"
            );
        }
    }
}
