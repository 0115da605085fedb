//! `/v1/tenants`: the platform admin's routes (role `superadmin`).

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::names::TenantId;
use domain::tenant::{Tenant, TenantCommand, TenantStatus};
use eventlog::StreamId;
use projections::tenants::{self as read_model, TenantRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use app::Error as AppError;

use crate::auth::{Auth, require};
use app::bootstrap::{self, CreateTenantError};
use app::idempotency;

use crate::error::{ApiError, ApiJson, ErrorEnvelope, FieldError};
use crate::extract::{CommandContext, EVENT_POSITION_HEADER};
use crate::respond::{self, Begin};
use crate::routes::support::{Page, page_cursor};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tenants, create_tenant))
        .routes(routes!(get_tenant, update_tenant))
}

/// A tenant.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantView {
    pub id: String,
    pub name: String,
    /// `active` or `suspended`.
    pub status: String,
    /// The tenant's own request budget per key per minute; `null`: the gateway's default.
    pub rate_limit_per_minute: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `{"tenant": {...}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantResponse {
    pub tenant: TenantView,
}

/// A page of tenants.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantList {
    pub tenants: Vec<TenantView>,
    pub next_cursor: Option<String>,
}

/// A new tenant and its first admin key.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedTenant {
    pub tenant: TenantView,
    pub api_key: IssuedKey,
}

/// A key as issued: the secret `key` only in the response that issued it, `null` in replays.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedKey {
    pub id: String,
    #[schema(value_type = Vec<String>)]
    pub roles: Vec<domain::roles::Role>,
    #[schema(example = "gw_key_0f3k2m9q8r7s6t5u4v3w_…")]
    pub key: Option<String>,
}

impl From<TenantRecord> for TenantView {
    fn from(record: TenantRecord) -> Self {
        Self {
            id: record.id,
            name: record.name,
            status: record.status,
            rate_limit_per_minute: record.rate_limit_per_minute,
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}

/// Body of `POST /v1/tenants`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTenant {
    /// Letters, digits, `-` and `_`; generated (`tnt_…`) when absent.
    pub id: Option<String>,
    pub name: String,
    pub rate_limit_per_minute: Option<u32>,
}

/// Body of `PATCH /v1/tenants/{id}`; absent fields stay as they are.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateTenant {
    pub name: Option<String>,
    /// `active` or `suspended`.
    #[schema(value_type = Option<String>)]
    pub status: Option<TenantStatus>,
    /// `null` returns the tenant to the gateway's default.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>)]
    pub rate_limit_per_minute: Option<Option<u32>>,
}

/// Tells a field sent as `null` (`Some(None)`) from a field left out (`None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

/// Create a tenant and its first admin API key (shown once).
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants",
    security(("api_key" = ["superadmin"]), ("bearer" = ["superadmin"])),
    request_body = CreateTenant,
    responses(
        (status = 201, description = "The tenant and its first admin key; `apiKey.key` is the secret, shown only in this response", body = CreatedTenant),
        (status = 409, description = "TENANT_ALREADY_EXISTS", body = ErrorEnvelope),
        (status = 400, description = "VALIDATION_ERROR", body = ErrorEnvelope),
    ))]
pub async fn create_tenant(
    State(state): State<AppState>,
    ctx: CommandContext<require::Superadmin>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let request: CreateTenant =
        serde_json::from_value(body.clone()).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let id = match request.id {
        Some(id) => TenantId::parse(id).map_err(|e| {
            AppError::Validation(vec![FieldError {
                field: "id".into(),
                message: e.to_string(),
            }])
        })?,
        None => TenantId::parse(format!("tnt_{}", uuid::Uuid::now_v7().simple()))
            .expect("a valid tenant id"),
    };
    let key = match respond::begin(&state, &ctx, &body).await? {
        Begin::Run(key) => key,
        Begin::Replay(response) => return Ok(response),
    };
    let metadata = ctx.metadata("CreateTenant");
    let result = bootstrap::create_tenant(
        &state.log,
        &state.clock,
        id.clone(),
        request.name,
        request.rate_limit_per_minute,
        &metadata,
        key.as_ref(),
        |appended, generated| {
            let tenant = &appended.events[0];
            let payload = &tenant.payload;
            let body = CreatedTenant {
                tenant: TenantView {
                    id: id.to_string(),
                    name: payload["name"].as_str().unwrap_or_default().to_string(),
                    status: "active".into(),
                    rate_limit_per_minute: payload["rateLimitPerMinute"].as_i64(),
                    created_at: tenant.recorded_at,
                    updated_at: tenant.recorded_at,
                },
                // The secret is not stored for replays: a replay shows the key's id only.
                api_key: IssuedKey {
                    id: generated.id.clone(),
                    roles: vec![domain::roles::Role::Admin],
                    key: None,
                },
            };
            let mut headers = vec![("location".into(), format!("/v1/tenants/{id}"))];
            if let Some(cursor) = appended.last_cursor() {
                headers.push((EVENT_POSITION_HEADER.into(), cursor.to_string()));
            }
            idempotency::json_response(StatusCode::CREATED.as_u16(), headers, &body)
        },
    )
    .await;
    let outcome = match &result {
        Ok(_) => "accepted",
        Err(
            CreateTenantError::Append(eventlog::AppendError::Database(_))
            | CreateTenantError::Undecided(_),
        ) => "error",
        Err(_) => "rejected",
    };
    state.metrics.command("CreateTenant", outcome);
    match result {
        Ok(created) => {
            state
                .metrics
                .events_appended(Tenant::TYPE, created.appended.events.len());
            respond::with_secret(&created.response, &created.key.token)
        }
        Err(error) => {
            let api_error = app::refusals::create_tenant(id.as_str())(error);
            if let Some(key) = &key {
                let _ = state.log.release_idempotency(key).await;
            }
            Err(api_error.into())
        }
    }
}

/// Query of the list routes.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// List tenants, ordered by id.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants",
    security(("api_key" = ["superadmin"]), ("bearer" = ["superadmin"])),
    params(PageQuery),
    responses((status = 200, description = "A page of tenants", body = TenantList)))]
pub async fn list_tenants(
    State(state): State<AppState>,
    _auth: Auth<require::Superadmin>,
    Query(query): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let page = Page::parse(query.limit, query.cursor.as_deref())?;
    let mut records =
        read_model::list(state.log.db(), page.after.as_deref(), page.limit + 1).await?;
    let next = page_cursor(&mut records, page.limit, |r| r.id.as_str());
    let tenants: Vec<TenantView> = records.into_iter().map(TenantView::from).collect();
    Ok(ApiJson(TenantList {
        tenants,
        next_cursor: next,
    })
    .into_response())
}

/// Read a tenant.
#[utoipa::path(get, path = "/v1/tenants/{id}", tag = "tenants",
    security(("api_key" = ["superadmin"]), ("bearer" = ["superadmin"])),
    params(("id" = String, Path, description = "Tenant id")),
    responses(
        (status = 200, description = "The tenant", body = TenantResponse),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: tenant)", body = ErrorEnvelope),
    ))]
pub async fn get_tenant(
    State(state): State<AppState>,
    _auth: Auth<require::Superadmin>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = read_model::get(state.log.db(), &id)
        .await?
        .ok_or_else(|| AppError::TenantNotFound(id.clone()))?;
    Ok(ApiJson(TenantResponse {
        tenant: TenantView::from(record),
    })
    .into_response())
}

/// Rename, suspend, reactivate, or change the rate limit of a tenant.
#[utoipa::path(patch, path = "/v1/tenants/{id}", tag = "tenants",
    security(("api_key" = ["superadmin"]), ("bearer" = ["superadmin"])),
    params(("id" = String, Path, description = "Tenant id")),
    request_body = UpdateTenant,
    responses(
        (status = 200, description = "The tenant after the change", body = TenantResponse),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: tenant)", body = ErrorEnvelope),
        (status = 400, description = "VALIDATION_ERROR", body = ErrorEnvelope),
    ))]
pub async fn update_tenant(
    State(state): State<AppState>,
    ctx: CommandContext<require::Superadmin>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let request: UpdateTenant =
        serde_json::from_value(body.clone()).map_err(|e| ApiError::InvalidJson(e.to_string()))?;
    let tenant = TenantId::parse(id.clone()).map_err(|_| AppError::TenantNotFound(id.clone()))?;
    let key = match respond::begin(&state, &ctx, &body).await? {
        Begin::Run(key) => key,
        Begin::Replay(response) => return Ok(response),
    };
    let command = TenantCommand::UpdateTenant {
        name: request.name,
        status: request.status,
        rate_limit_per_minute: request.rate_limit_per_minute,
    };
    let stream = StreamId::new(tenant.clone(), Tenant::TYPE, tenant.as_str());
    let respond = |outcome: &eventlog::CommandOutcome<Tenant>| {
        let aggregate = &outcome.aggregate;
        let now = Utc::now();
        let body = TenantResponse {
            tenant: TenantView {
                id: tenant.to_string(),
                name: aggregate.name().to_string(),
                status: aggregate.status().as_str().to_string(),
                rate_limit_per_minute: aggregate.rate_limit_per_minute().map(i64::from),
                created_at: outcome.created_at.unwrap_or(now),
                updated_at: outcome.updated_at.unwrap_or(now),
            },
        };
        let headers = outcome
            .cursor
            .map(|c| vec![(EVENT_POSITION_HEADER.to_string(), c.to_string())])
            .unwrap_or_default();
        idempotency::json_response(StatusCode::OK.as_u16(), headers, &body)
    };
    match idempotency::run::<Tenant>(
        &state,
        &ctx,
        key,
        &stream,
        "UpdateTenant",
        command,
        &(),
        respond,
        app::refusals::tenant(&id),
    )
    .await
    {
        Ok((_, stored)) => Ok(respond::to_response(&stored, false)),
        Err(refused) => Ok(respond::refused(refused)),
    }
}
