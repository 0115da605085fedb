//! `/v1/{entity}`: generic records of tenant-defined entity types.
//!
//! Commands go through the `Entity` aggregate and answer from its state after the command,
//! with the cursor of the last event in `x-event-position`. Reads come from the `entities`
//! read model; a read with `x-min-position` first waits (bounded) for the projection to pass
//! that cursor.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use cqrs_es::Aggregate;
use domain::entity::{Entity, EntityCommand, EntityError};
use domain::names::{EntityId, EntityTypeName, TenantId};
use eventlog::idempotency::StoredResponse;
use eventlog::{CommandOutcome, StreamId};
use projections::entities::{self as read_model, EntityRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Auth, require};
use crate::commands::{self, Begin};
use crate::error::{ApiError, ApiJson, ErrorEnvelope, FieldError};
use crate::extract::{CommandContext, Consistency, EVENT_POSITION_HEADER, IfMatch, etag};
use crate::routes::{Page, await_consistency, page_cursor, with_lag};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_entities, create_entity))
        .routes(routes!(get_entity, patch_entity, delete_entity))
}

/// One record.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntityResponse {
    /// The entity type.
    #[schema(example = "users")]
    pub entity: String,
    #[schema(example = "user-001")]
    pub id: String,
    /// Starts at 1 and grows by one with every change; the `ETag`.
    pub version: u64,
    /// The record's document.
    #[schema(value_type = Object)]
    pub data: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<DateTime<Utc>>,
}

impl From<EntityRecord> for EntityResponse {
    fn from(record: EntityRecord) -> Self {
        Self {
            entity: record.entity_type,
            id: record.id,
            version: record.version as u64,
            data: record.data,
            created_at: record.created_at,
            updated_at: record.updated_at,
            deleted_at: record.deleted_at,
        }
    }
}

/// A page of records.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntityList {
    pub items: Vec<EntityResponse>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Query of `GET /v1/{entity}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
    /// Include deleted records (they carry `deletedAt`).
    pub include_deleted: Option<bool>,
}

fn entity_type(raw: String) -> Result<EntityTypeName, ApiError> {
    EntityTypeName::parse(raw).map_err(|e| ApiError::InvalidEntityType(e.to_string()))
}

fn entity_id(raw: String) -> Result<EntityId, ApiError> {
    EntityId::parse(raw).map_err(|e| ApiError::InvalidId(e.to_string()))
}

fn object(body: Value) -> Result<Map<String, Value>, ApiError> {
    match body {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::Validation(vec![FieldError {
            field: "".into(),
            message: "the body must be a JSON object".into(),
        }])),
    }
}

fn stream(tenant: &TenantId, entity_type: &EntityTypeName, id: &EntityId) -> StreamId {
    StreamId::new(tenant.clone(), Entity::TYPE, format!("{entity_type}/{id}"))
}

fn reject(entity_type: &EntityTypeName, id: &EntityId) -> impl Fn(EntityError) -> ApiError {
    let (entity_type, id) = (entity_type.to_string(), id.to_string());
    move |error| match error {
        EntityError::AlreadyExists => ApiError::EntityAlreadyExists {
            entity_type: entity_type.clone(),
            id: id.clone(),
        },
        EntityError::NotFound => ApiError::EntityNotFound {
            entity_type: entity_type.clone(),
            id: id.clone(),
        },
        EntityError::VersionConflict { expected, actual } => {
            ApiError::VersionConflict { expected, actual }
        }
        EntityError::SystemField(field) => ApiError::Validation(vec![FieldError {
            message: format!("'{field}' is managed by the gateway and cannot be changed"),
            field,
        }]),
    }
}

/// The response of a command: the record as the command left it.
fn respond(
    status: StatusCode,
    entity_type: &EntityTypeName,
    id: &EntityId,
) -> impl Fn(&CommandOutcome<Entity>) -> StoredResponse {
    let (entity_type, id) = (entity_type.clone(), id.clone());
    move |outcome| {
        let updated_at = outcome.updated_at.unwrap_or_else(Utc::now);
        let deleted = !outcome.aggregate.exists();
        let body = EntityResponse {
            entity: entity_type.to_string(),
            id: id.to_string(),
            version: outcome.version,
            data: Value::Object(outcome.aggregate.data().clone()),
            created_at: outcome.created_at.unwrap_or(updated_at),
            updated_at,
            deleted_at: deleted.then_some(updated_at),
        };
        let mut headers = vec![("etag".to_string(), etag(outcome.version))];
        if let Some(cursor) = outcome.cursor {
            headers.push((EVENT_POSITION_HEADER.to_string(), cursor.to_string()));
        }
        if status == StatusCode::CREATED {
            headers.push(("location".to_string(), format!("/v1/{entity_type}/{id}")));
        }
        commands::json_response(status, headers, &body)
    }
}

/// Claims the idempotency key and runs an entity command.
async fn run(
    state: &AppState,
    ctx: &CommandContext<require::Writer>,
    body: &Value,
    status: StatusCode,
    entity_type: &EntityTypeName,
    id: &EntityId,
    command: EntityCommand,
) -> Response {
    let key = match commands::begin(state, ctx, body).await {
        Ok(Begin::Run(key)) => key,
        Ok(Begin::Replay(response)) => return response,
        Err(error) => return error.into_response(),
    };
    let stream = stream(&ctx.tenant, entity_type, id);
    let name = command.name();
    match commands::run::<Entity, _>(
        state,
        ctx,
        key,
        &stream,
        name,
        command,
        &(),
        respond(status, entity_type, id),
        reject(entity_type, id),
    )
    .await
    {
        Ok((_, response)) => commands::to_response(&response, false),
        Err(response) => response,
    }
}

/// Create a record.
///
/// The id is the body's `id` (a string) when given, otherwise generated. The rest of the body
/// is the record's document.
#[utoipa::path(
    post,
    path = "/v1/{entity}",
    tag = "entities",
    security(("api_key" = ["writer"]), ("bearer" = ["writer"])),
    params(
        ("entity" = String, Path, description = "Entity type, e.g. `users`"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for the same key and request"),
    ),
    request_body(content = Object, description = "The record's document, optionally with `id`"),
    responses(
        (status = 201, description = "Created; `ETag`, `Location` and `x-event-position` headers", body = EntityResponse),
        (status = 400, description = "Malformed entity type, id or JSON", body = ErrorEnvelope),
        (status = 409, description = "ENTITY_ALREADY_EXISTS", body = ErrorEnvelope),
        (status = 422, description = "VALIDATION_ERROR", body = ErrorEnvelope),
    )
)]
pub async fn create_entity(
    State(state): State<AppState>,
    ctx: CommandContext<require::Writer>,
    Path(entity): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let entity_type = entity_type(entity)?;
    let mut data = object(body.clone())?;
    let id = match data.remove("id") {
        None => EntityId::parse(uuid::Uuid::now_v7().to_string()).expect("a uuid is a valid id"),
        Some(Value::String(id)) => EntityId::parse(id).map_err(|e| {
            ApiError::Validation(vec![FieldError {
                field: "id".into(),
                message: e.to_string(),
            }])
        })?,
        Some(_) => {
            return Err(ApiError::Validation(vec![FieldError {
                field: "id".into(),
                message: "must be a string".into(),
            }]));
        }
    };
    let command = EntityCommand::CreateEntity {
        entity_type: entity_type.clone(),
        id: id.clone(),
        data,
    };
    Ok(run(
        &state,
        &ctx,
        &body,
        StatusCode::CREATED,
        &entity_type,
        &id,
        command,
    )
    .await)
}

/// Read a record.
#[utoipa::path(
    get,
    path = "/v1/{entity}/{id}",
    tag = "entities",
    security(("api_key" = ["reader"]), ("bearer" = ["reader"])),
    params(
        ("entity" = String, Path, description = "Entity type"),
        ("id" = String, Path, description = "Record id"),
        ("x-min-position" = Option<String>, Header, description = "Wait until the read model reflects this `x-event-position`"),
        ("x-consistency" = Option<String>, Header, description = "`strict`: answer 503 instead of stale data"),
    ),
    responses(
        (status = 200, description = "The record; `ETag` header", body = EntityResponse),
        (status = 404, description = "ENTITY_NOT_FOUND", body = ErrorEnvelope),
        (status = 503, description = "PROJECTION_STALE", body = ErrorEnvelope),
    )
)]
pub async fn get_entity(
    State(state): State<AppState>,
    auth: Auth<require::Reader>,
    consistency: Consistency,
    Path((entity, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let entity_type = entity_type(entity)?;
    let id = entity_id(id)?;
    let tenant = auth.tenant();
    let lag = await_consistency(&state, consistency, read_model::NAME).await?;
    let record = read_model::get(
        state.log.db(),
        tenant.as_str(),
        entity_type.as_str(),
        id.as_str(),
    )
    .await?
    .filter(|record| record.deleted_at.is_none())
    .ok_or_else(|| ApiError::EntityNotFound {
        entity_type: entity_type.to_string(),
        id: id.to_string(),
    })?;
    let tag = etag(record.version as u64);
    let mut response = ApiJson(EntityResponse::from(record)).into_response();
    if let Ok(value) = HeaderValue::from_str(&tag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    Ok(with_lag(response, lag))
}

/// List records, ordered by id.
#[utoipa::path(
    get,
    path = "/v1/{entity}",
    tag = "entities",
    security(("api_key" = ["reader"]), ("bearer" = ["reader"])),
    params(
        ("entity" = String, Path, description = "Entity type"),
        ("x-min-position" = Option<String>, Header, description = "Wait until the read model reflects this `x-event-position`"),
        ("x-consistency" = Option<String>, Header, description = "`strict`: answer 503 instead of stale data"),
        ListQuery,
    ),
    responses(
        (status = 200, description = "A page of records", body = EntityList),
        (status = 400, description = "INVALID_PARAMETER", body = ErrorEnvelope),
    )
)]
pub async fn list_entities(
    State(state): State<AppState>,
    auth: Auth<require::Reader>,
    consistency: Consistency,
    Path(entity): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let entity_type = entity_type(entity)?;
    let page = Page::parse(query.limit, query.cursor.as_deref())?;
    let tenant = auth.tenant();
    let lag = await_consistency(&state, consistency, read_model::NAME).await?;
    let mut records = read_model::list(
        state.log.db(),
        tenant.as_str(),
        entity_type.as_str(),
        page.after.as_deref(),
        page.limit + 1,
        query.include_deleted.unwrap_or(false),
    )
    .await?;
    let next_cursor = page_cursor(&mut records, page.limit, |r| r.id.as_str());
    let body = EntityList {
        items: records.into_iter().map(EntityResponse::from).collect(),
        next_cursor,
    };
    Ok(with_lag(ApiJson(body).into_response(), lag))
}

/// Change a record with a JSON merge patch (RFC 7396).
#[utoipa::path(
    patch,
    path = "/v1/{entity}/{id}",
    tag = "entities",
    security(("api_key" = ["writer"]), ("bearer" = ["writer"])),
    params(
        ("entity" = String, Path, description = "Entity type"),
        ("id" = String, Path, description = "Record id"),
        ("If-Match" = Option<String>, Header, description = "The `ETag` the record must still have"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for the same key and request"),
    ),
    request_body(content = Object, description = "A JSON merge patch: `null` removes a field"),
    responses(
        (status = 200, description = "The record after the patch", body = EntityResponse),
        (status = 404, description = "ENTITY_NOT_FOUND", body = ErrorEnvelope),
        (status = 409, description = "VERSION_CONFLICT", body = ErrorEnvelope),
        (status = 422, description = "VALIDATION_ERROR", body = ErrorEnvelope),
    )
)]
pub async fn patch_entity(
    State(state): State<AppState>,
    ctx: CommandContext<require::Writer>,
    IfMatch(expected_version): IfMatch,
    Path((entity, id)): Path<(String, String)>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let entity_type = entity_type(entity)?;
    let id = entity_id(id)?;
    let patch = object(body.clone())?;
    let command = EntityCommand::UpdateEntity {
        patch,
        expected_version,
    };
    // If-Match is part of the request: the same key with another If-Match is another request.
    let hashed = serde_json::json!({ "body": body, "ifMatch": expected_version });
    Ok(run(
        &state,
        &ctx,
        &hashed,
        StatusCode::OK,
        &entity_type,
        &id,
        command,
    )
    .await)
}

/// Delete a record. The log keeps its history; reads answer 404 from now on.
#[utoipa::path(
    delete,
    path = "/v1/{entity}/{id}",
    tag = "entities",
    security(("api_key" = ["writer"]), ("bearer" = ["writer"])),
    params(
        ("entity" = String, Path, description = "Entity type"),
        ("id" = String, Path, description = "Record id"),
        ("If-Match" = Option<String>, Header, description = "The `ETag` the record must still have"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for the same key and request"),
    ),
    responses(
        (status = 200, description = "The deleted record, with `deletedAt`", body = EntityResponse),
        (status = 404, description = "ENTITY_NOT_FOUND", body = ErrorEnvelope),
        (status = 409, description = "VERSION_CONFLICT", body = ErrorEnvelope),
    )
)]
pub async fn delete_entity(
    State(state): State<AppState>,
    ctx: CommandContext<require::Writer>,
    IfMatch(expected_version): IfMatch,
    Path((entity, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let entity_type = entity_type(entity)?;
    let id = entity_id(id)?;
    let command = EntityCommand::DeleteEntity { expected_version };
    let hashed = serde_json::json!({ "ifMatch": expected_version });
    Ok(run(
        &state,
        &ctx,
        &hashed,
        StatusCode::OK,
        &entity_type,
        &id,
        command,
    )
    .await)
}
