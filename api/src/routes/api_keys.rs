//! `/v1/api-keys`: a tenant admin's keys (role `admin`).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::api_key::{ApiKey, ApiKeyCommand};
use domain::roles::Role;
use eventlog::StreamId;
use projections::api_keys::{self as read_model, ApiKeyRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use app::Error as AppError;

use app::keys;

use crate::auth::{Auth, require};
use app::idempotency;

use crate::error::{ApiError, ApiJson, ErrorEnvelope};
use crate::extract::{CommandContext, EVENT_POSITION_HEADER};
use crate::respond::{self, Begin};
use crate::routes::support::{Page, page_cursor};
use crate::routes::tenants::PageQuery;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_keys, create_key))
        .routes(routes!(get_key, revoke_key))
}

/// An API key, without its secret.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyView {
    #[schema(example = "key_0f3k2m9q8r7s6t5u4v3w")]
    pub id: String,
    pub name: String,
    #[schema(value_type = Vec<String>)]
    pub roles: Vec<Role>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Updated in the background, at most a few seconds late.
    pub last_used_at: Option<DateTime<Utc>>,
    /// For a client certificate's key: the certificate name it answers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_subject: Option<String>,
}

/// `{"apiKey": {...}}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyResponse {
    pub api_key: ApiKeyView,
}

/// A page of keys.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyList {
    pub api_keys: Vec<ApiKeyView>,
    pub next_cursor: Option<String>,
}

/// A key just issued: `key`, the secret, only in the response that issued it (`null` in a
/// replay).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedApiKey {
    #[serde(flatten)]
    pub view: ApiKeyView,
    pub key: Option<String>,
}

/// `{"apiKey": {...}}` with the secret.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedApiKeyResponse {
    pub api_key: IssuedApiKey,
}

/// A key revoked.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevokedKey {
    pub id: String,
    pub revoked: bool,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// `{"apiKey": {"id", "revoked": true, "revokedAt"}}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevokedKeyResponse {
    pub api_key: RevokedKey,
}

impl From<ApiKeyRecord> for ApiKeyView {
    fn from(record: ApiKeyRecord) -> Self {
        Self {
            id: record.id,
            name: record.name,
            roles: record.roles,
            expires_at: record.expires_at,
            created_at: record.created_at,
            revoked_at: record.revoked_at,
            last_used_at: record.last_used_at,
            certificate_subject: record.certificate_subject,
        }
    }
}

/// Body of `POST /v1/api-keys`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateKey {
    pub name: String,
    /// Any of `admin`, `writer`, `reader`, `analyst`.
    #[schema(value_type = Vec<String>)]
    pub roles: Vec<Role>,
    pub expires_at: Option<DateTime<Utc>>,
    /// For a service that authenticates with a client certificate (`TLS_CLIENT_CA`): the
    /// certificate's subject common name, or a DNS or URI name it carries. The key then has
    /// no secret: `key` is `null`.
    pub certificate_subject: Option<String>,
}

/// Issue a key. The secret (`key`) is in this response only.
#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys",
    security(("api_key" = ["admin"]), ("bearer" = ["admin"])),
    request_body = CreateKey,
    responses(
        (status = 201, description = "The key with `key`, the secret, shown once", body = IssuedApiKeyResponse),
        (status = 400, description = "VALIDATION_ERROR", body = ErrorEnvelope),
    ))]
pub async fn create_key(
    State(state): State<AppState>,
    ctx: CommandContext<require::Admin>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let request: CreateKey =
        serde_json::from_value(body.clone()).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let key = match respond::begin(&state, &ctx, &body).await? {
        Begin::Run(key) => key,
        Begin::Replay(response) => return Ok(response),
    };
    let generated = keys::generate(None);
    let stream = StreamId::new(ctx.tenant.clone(), ApiKey::TYPE, generated.id.as_str());
    let command = ApiKeyCommand::IssueApiKey {
        id: generated.id.clone(),
        tenant_id: ctx.tenant.clone(),
        name: request.name.clone(),
        roles: request.roles.clone(),
        expires_at: request.expires_at,
        secret_hash: generated.secret_hash.clone(),
        certificate_subject: request.certificate_subject.clone(),
    };
    let respond = |outcome: &eventlog::CommandOutcome<ApiKey>| {
        let mut roles = request.roles.clone();
        roles.sort();
        roles.dedup();
        let created = outcome.created_at.unwrap_or_else(Utc::now);
        // The secret is not stored for replays: a replay shows the key's id only.
        let body = IssuedApiKeyResponse {
            api_key: IssuedApiKey {
                view: ApiKeyView {
                    id: generated.id.clone(),
                    name: request.name.trim().to_string(),
                    roles: roles.clone(),
                    expires_at: request.expires_at,
                    created_at: created,
                    revoked_at: None,
                    last_used_at: None,
                    certificate_subject: request.certificate_subject.clone(),
                },
                key: None,
            },
        };
        let mut headers = vec![(
            "location".to_string(),
            format!("/v1/api-keys/{}", generated.id),
        )];
        if let Some(cursor) = outcome.cursor {
            headers.push((EVENT_POSITION_HEADER.to_string(), cursor.to_string()));
        }
        idempotency::json_response(StatusCode::CREATED.as_u16(), headers, &body)
    };
    match idempotency::run::<ApiKey>(
        &state,
        &ctx,
        key,
        &stream,
        "IssueApiKey",
        command,
        &state.clock,
        respond,
        app::refusals::api_key(&generated.id),
    )
    .await
    {
        // A certificate's key has no usable secret: the one generated is never shown.
        Ok((_, stored)) if request.certificate_subject.is_some() => {
            Ok(respond::to_response(&stored, false))
        }
        Ok((_, stored)) => respond::with_secret(&stored, &generated.token),
        Err(refused) => Ok(respond::refused(refused)),
    }
}

/// List the tenant's keys, ordered by id.
#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys",
    security(("api_key" = ["admin"]), ("bearer" = ["admin"])),
    params(PageQuery),
    responses((status = 200, description = "A page of the tenant's keys", body = ApiKeyList)))]
pub async fn list_keys(
    State(state): State<AppState>,
    auth: Auth<require::Admin>,
    Query(query): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let page = Page::parse(query.limit, query.cursor.as_deref())?;
    let mut records = read_model::list(
        state.log.db(),
        auth.tenant().as_str(),
        page.after.as_deref(),
        page.limit + 1,
    )
    .await?;
    let next = page_cursor(&mut records, page.limit, |r| r.id.as_str());
    let keys: Vec<ApiKeyView> = records.into_iter().map(ApiKeyView::from).collect();
    Ok(ApiJson(ApiKeyList {
        api_keys: keys,
        next_cursor: next,
    })
    .into_response())
}

/// Read one of the tenant's keys.
#[utoipa::path(get, path = "/v1/api-keys/{id}", tag = "api-keys",
    security(("api_key" = ["admin"]), ("bearer" = ["admin"])),
    params(("id" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "The key", body = ApiKeyResponse),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: apiKey)", body = ErrorEnvelope),
    ))]
pub async fn get_key(
    State(state): State<AppState>,
    auth: Auth<require::Admin>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = read_model::get(state.log.db(), auth.tenant().as_str(), &id)
        .await?
        .ok_or_else(|| AppError::ApiKeyNotFound(id.clone()))?;
    Ok(ApiJson(ApiKeyResponse {
        api_key: ApiKeyView::from(record),
    })
    .into_response())
}

/// Revoke a key, for good.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api-keys",
    security(("api_key" = ["admin"]), ("bearer" = ["admin"])),
    params(("id" = String, Path, description = "Key id")),
    responses(
        (status = 200, description = "The key, revoked", body = RevokedKeyResponse),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: apiKey)", body = ErrorEnvelope),
    ))]
pub async fn revoke_key(
    State(state): State<AppState>,
    ctx: CommandContext<require::Admin>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let key = match respond::begin(&state, &ctx, &Value::Null).await? {
        Begin::Run(key) => key,
        Begin::Replay(response) => return Ok(response),
    };
    let stream = StreamId::new(ctx.tenant.clone(), ApiKey::TYPE, id.as_str());
    let respond = |outcome: &eventlog::CommandOutcome<ApiKey>| {
        let body = RevokedKeyResponse {
            api_key: RevokedKey {
                id: id.clone(),
                revoked: true,
                revoked_at: outcome.updated_at,
            },
        };
        let headers = outcome
            .cursor
            .map(|c| vec![(EVENT_POSITION_HEADER.to_string(), c.to_string())])
            .unwrap_or_default();
        idempotency::json_response(StatusCode::OK.as_u16(), headers, &body)
    };
    match idempotency::run::<ApiKey>(
        &state,
        &ctx,
        key,
        &stream,
        "RevokeApiKey",
        ApiKeyCommand::RevokeApiKey,
        &state.clock,
        respond,
        app::refusals::api_key(&id),
    )
    .await
    {
        Ok((_, stored)) => Ok(respond::to_response(&stored, false)),
        Err(refused) => Ok(respond::refused(refused)),
    }
}
