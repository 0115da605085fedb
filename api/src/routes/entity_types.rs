//! `/v1/entity-types`: the tenant's entity types and their schemas.
//!
//! Defining and changing a type are commands of the `EntityType` aggregate (admin role); a
//! change is refused when records written under the current schema might not satisfy the new
//! one. `GET` of one type reads the log (exact); the list reads the `entity_types` read model.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use domain::entity_type::{EntityType, EntityTypeCommand, Schema};
use domain::names::EntityTypeName;
use eventlog::CommandOutcome;
use eventlog::idempotency::StoredResponse;
use projections::entity_types as read_model;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use app::Error as AppError;

use crate::auth::{Auth, require};
use app::idempotency;

use crate::error::{ApiError, ApiJson, ErrorEnvelope, FieldError};
use crate::extract::{CommandContext, Consistency, EVENT_POSITION_HEADER, IfMatch, etag};
use crate::respond::{self, Begin};
use crate::routes::support::{await_consistency, with_lag};
use crate::state::AppState;
use app::entity_writes::{load_type, type_stream};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_entity_types, define_entity_type))
        .routes(routes!(get_entity_type, change_entity_type))
        .routes(routes!(import_entity_types))
        .routes(routes!(export_entity_types))
}

/// An entity type.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntityTypeResponse {
    #[schema(example = "users")]
    pub name: String,
    /// `key`, `schemaless` and `fields` (each with `type`, `required`, `unique`, `indexed`,
    /// `enum`, `maxLength`, `references`, `onDelete`).
    #[schema(value_type = Object)]
    pub schema: Schema,
    pub version: u64,
    /// The index of each indexed or unique field and how far its build is (reads only; a
    /// command's answer leaves it out). Queries on a field work while its index builds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub indexes: Vec<IndexResponse>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<DateTime<Utc>>,
}

/// An indexed or unique field's index.
#[derive(Debug, Serialize, ToSchema)]
pub struct IndexResponse {
    #[schema(example = "country")]
    pub field: String,
    #[schema(example = "entities_country_t_idx")]
    pub name: String,
    /// `building` (in the background), `ready`, or `failed` (tried again a minute later, up
    /// to five times).
    #[schema(example = "ready")]
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The indexes of each of `schemas`, in one query.
async fn indexes(
    state: &AppState,
    schemas: &[&Schema],
) -> Result<Vec<Vec<IndexResponse>>, ApiError> {
    Ok(read_model::index_status(state.log.db(), schemas)
        .await?
        .into_iter()
        .map(|indexes| {
            indexes
                .into_iter()
                .map(|index| IndexResponse {
                    field: index.field,
                    name: index.name,
                    status: index.status,
                    error: index.error,
                })
                .collect()
        })
        .collect())
}

/// The tenant's entity types.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntityTypeList {
    pub items: Vec<EntityTypeResponse>,
}

/// Body of `POST /v1/entity-types`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DefineRequest {
    #[schema(example = "users")]
    pub name: String,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub schema: Value,
}

fn parse_schema(value: Value) -> Result<Schema, ApiError> {
    // serde would read a struct from an array of its fields in order too: `[]` would be an
    // empty schema.
    if !value.is_object() {
        return Err(AppError::Validation(vec![FieldError {
            field: "schema".into(),
            message: "a schema is a JSON object (key, schemaless, fields)".into(),
        }])
        .into());
    }
    serde_json::from_value(value)
        .map_err(|e| {
            AppError::Validation(vec![FieldError {
                field: "schema".into(),
                message: e.to_string(),
            }])
        })
        .map_err(ApiError::from)
}

fn respond(
    status: StatusCode,
    name: &EntityTypeName,
) -> impl Fn(&CommandOutcome<EntityType>) -> StoredResponse {
    let name = name.clone();
    move |outcome| {
        let body = EntityTypeResponse {
            name: name.to_string(),
            schema: outcome.aggregate.schema().clone(),
            version: outcome.version,
            indexes: Vec::new(),
            created_at: outcome.created_at,
            updated_at: outcome.updated_at,
        };
        let mut headers = vec![("etag".to_string(), etag(outcome.version))];
        if let Some(cursor) = outcome.cursor {
            headers.push((EVENT_POSITION_HEADER.to_string(), cursor.to_string()));
        }
        if status == StatusCode::CREATED {
            headers.push(("location".to_string(), format!("/v1/entity-types/{name}")));
        }
        idempotency::json_response(status.as_u16(), headers, &body)
    }
}

async fn run(
    state: &AppState,
    ctx: &CommandContext<require::Admin>,
    hashed: &Value,
    status: StatusCode,
    name: &EntityTypeName,
    command: EntityTypeCommand,
) -> Response {
    let key = match respond::begin(state, ctx, hashed).await {
        Ok(Begin::Run(key)) => key,
        Ok(Begin::Replay(response)) => return response,
        Err(error) => return error.into_response(),
    };
    let stream = type_stream(&ctx.tenant, name);
    let command_name = command.name();
    match idempotency::run::<EntityType>(
        state,
        ctx,
        key,
        &stream,
        command_name,
        command,
        &(),
        respond(status, name),
        app::refusals::entity_type(name),
    )
    .await
    {
        Ok((_, response)) => respond::to_response(&response, false),
        Err(refused) => respond::refused(refused),
    }
}

/// Define an entity type.
#[utoipa::path(
    post,
    path = "/v1/entity-types",
    tag = "entity-types",
    security(("api_key" = ["admin"]), ("bearer" = ["admin"])),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for the same key and request", min_length = 1, max_length = 255),
    ),
    request_body(content = DefineRequest, description = "`name` and the schema: `key`, `schemaless`, `fields`"),
    responses(
        (status = 201, description = "Defined", body = EntityTypeResponse),
        (status = 400, description = "INVALID_ENTITY_TYPE (malformed or reserved name); VALIDATION_ERROR, one entry per problem", body = ErrorEnvelope),
        (status = 409, description = "ENTITY_TYPE_ALREADY_EXISTS", body = ErrorEnvelope),
    )
)]
pub async fn define_entity_type(
    State(state): State<AppState>,
    ctx: CommandContext<require::Admin>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let request: DefineRequest = serde_json::from_value(body.clone()).map_err(|e| {
        AppError::Validation(vec![FieldError {
            field: "name".into(),
            message: e.to_string(),
        }])
    })?;
    let name = EntityTypeName::parse(request.name)
        .map_err(|e| AppError::InvalidEntityType(e.to_string()))?;
    let schema = parse_schema(request.schema)?;
    app::entity_types::check_index_budget(&state, &ctx.tenant, &[(&name, &schema)]).await?;
    let missing_references =
        app::entity_types::missing_references(&state.log, &ctx.tenant, &name, &schema).await?;
    let command = EntityTypeCommand::DefineEntityType {
        name: name.clone(),
        schema,
        missing_references,
    };
    Ok(run(&state, &ctx, &body, StatusCode::CREATED, &name, command).await)
}

/// Change an entity type: the body is the whole new schema (`key`, `schemaless`, `fields`).
#[utoipa::path(
    patch,
    path = "/v1/entity-types/{name}",
    tag = "entity-types",
    security(("api_key" = ["admin"]), ("bearer" = ["admin"])),
    params(
        ("name" = String, Path, description = "Entity type", min_length = 1, max_length = 63, pattern = "^[a-z][a-z0-9-]*$"),
        ("If-Match" = Option<String>, Header, description = "The `ETag` the type must still have"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for the same key and request", min_length = 1, max_length = 255),
    ),
    request_body(content = Object, description = "The new schema"),
    responses(
        (status = 200, description = "The type after the change", body = EntityTypeResponse),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: entityType)", body = ErrorEnvelope),
        (status = 409, description = "INCOMPATIBLE_SCHEMA_CHANGE (one entry per field), VERSION_CONFLICT", body = ErrorEnvelope),
        (status = 400, description = "VALIDATION_ERROR", body = ErrorEnvelope),
    )
)]
pub async fn change_entity_type(
    State(state): State<AppState>,
    ctx: CommandContext<require::Admin>,
    IfMatch(expected_version): IfMatch,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let name =
        EntityTypeName::parse(name).map_err(|e| AppError::InvalidEntityType(e.to_string()))?;
    let mut raw = body.clone();
    if let Some(map) = raw.as_object_mut() {
        map.remove("name");
    }
    let schema = parse_schema(raw)?;
    app::entity_types::check_index_budget(&state, &ctx.tenant, &[(&name, &schema)]).await?;
    let missing_references =
        app::entity_types::missing_references(&state.log, &ctx.tenant, &name, &schema).await?;
    let command = EntityTypeCommand::ChangeEntityType {
        schema,
        missing_references,
        expected_version,
    };
    let hashed = serde_json::json!({ "body": body, "ifMatch": expected_version });
    Ok(run(&state, &ctx, &hashed, StatusCode::OK, &name, command).await)
}

/// Read an entity type (from the log: a type just defined is there at once).
#[utoipa::path(
    get,
    path = "/v1/entity-types/{name}",
    tag = "entity-types",
    security(("api_key" = ["reader"]), ("bearer" = ["reader"])),
    params(("name" = String, Path, description = "Entity type", min_length = 1, max_length = 63, pattern = "^[a-z][a-z0-9-]*$")),
    responses(
        (status = 200, description = "The type; `ETag` header", body = EntityTypeResponse),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: entityType)", body = ErrorEnvelope),
    )
)]
pub async fn get_entity_type(
    State(state): State<AppState>,
    auth: Auth<require::Reader>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let name =
        EntityTypeName::parse(name).map_err(|e| AppError::InvalidEntityType(e.to_string()))?;
    let loaded = load_type(&state.log, auth.tenant(), &name).await?;
    if !loaded.aggregate.exists() {
        return Err(AppError::EntityTypeNotFound(name.to_string()).into());
    }
    let body = EntityTypeResponse {
        name: name.to_string(),
        schema: loaded.aggregate.schema().clone(),
        indexes: indexes(&state, &[loaded.aggregate.schema()])
            .await?
            .pop()
            .unwrap_or_default(),
        version: loaded.version,
        created_at: loaded.created_at,
        updated_at: loaded.updated_at,
    };
    let mut response = ApiJson(body).into_response();
    if let Ok(tag) = axum::http::HeaderValue::from_str(&etag(loaded.version)) {
        response.headers_mut().insert(axum::http::header::ETAG, tag);
    }
    Ok(response)
}

/// List the tenant's entity types.
#[utoipa::path(
    get,
    path = "/v1/entity-types",
    tag = "entity-types",
    security(("api_key" = ["reader"]), ("bearer" = ["reader"])),
    params(
        ("x-min-position" = Option<String>, Header, description = "Wait until the read model reflects this `x-event-position`"),
    ),
    responses((status = 200, description = "The types, by name", body = EntityTypeList))
)]
pub async fn list_entity_types(
    State(state): State<AppState>,
    auth: Auth<require::Reader>,
    consistency: Consistency,
) -> Result<Response, ApiError> {
    let lag = await_consistency(&state, consistency, read_model::NAME).await?;
    let records = read_model::list(state.log.db(), auth.tenant().as_str()).await?;
    let schemas: Vec<&Schema> = records.iter().map(|r| &r.schema).collect();
    let all_indexes = indexes(&state, &schemas).await?;
    let body = EntityTypeList {
        items: records
            .into_iter()
            .zip(all_indexes)
            .map(|(r, indexes)| EntityTypeResponse {
                name: r.name,
                indexes,
                schema: r.schema,
                version: r.version as u64,
                created_at: Some(r.created_at),
                updated_at: Some(r.updated_at),
            })
            .collect(),
    };
    Ok(with_lag(ApiJson(body).into_response(), lag))
}

/// Body of `POST /v1/entity-types/_import`: a catalogue that ships with the gateway by name, or
/// types as `GET /v1/entity-types/_export` writes them (one of the two).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportRequest {
    /// A built-in catalogue: `panorama` (seed 000's `users`, `conversations`, `messages`,
    /// `agent-shared-states`).
    #[schema(example = "panorama")]
    pub catalogue: Option<String>,
    /// Types, each `name` with its schema (`key`, `schemaless`, `fields`); 1 to 100.
    #[schema(value_type = Option<Vec<Object>>)]
    pub entity_types: Option<Vec<Value>>,
}

/// What an import did to one type.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportedType {
    #[schema(example = "users")]
    pub name: String,
    pub outcome: app::catalogue::Outcome,
    /// The type's version after the import.
    pub version: u64,
}

/// An import's result: every type in the order given.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImportResponse {
    pub entity_types: Vec<ImportedType>,
}

/// The tenant's types, in the shape `_import` reads.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExportResponse {
    /// Each type's `name` with its schema (`key`, `schemaless`, `fields`).
    #[schema(value_type = Vec<Object>)]
    pub entity_types: Vec<app::catalogue::TypeDefinition>,
}

/// Apply a catalogue of entity types: in one commit, every type that does not exist is
/// defined, every type whose schema differs is changed (refused like any change when records
/// might not satisfy it), and equal types are left alone, so importing twice changes nothing.
#[utoipa::path(
    post,
    path = "/v1/entity-types/_import",
    tag = "entity-types",
    security(("api_key" = ["admin"]), ("bearer" = ["admin"])),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for the same key and request", min_length = 1, max_length = 255),
    ),
    request_body(content = ImportRequest, description = "`catalogue` or `entityTypes`"),
    responses(
        (status = 200, description = "Applied; `x-event-position` names the commit when a type changed", body = ImportResponse),
        (status = 400, description = "VALIDATION_ERROR naming the entry (`entityTypes[2].fields`), an unknown catalogue, or over the tenant's index budget; INVALID_ENTITY_TYPE", body = ErrorEnvelope),
        (status = 409, description = "INCOMPATIBLE_SCHEMA_CHANGE for a type whose records might not satisfy its new schema", body = ErrorEnvelope),
    )
)]
pub async fn import_entity_types(
    State(state): State<AppState>,
    ctx: CommandContext<require::Admin>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let types = match (body.get("catalogue"), body.get("entityTypes")) {
        (Some(Value::String(name)), None) => app::catalogue::built_in(name)?,
        (None, Some(_)) => app::catalogue::parse(body.clone())?,
        _ => {
            return Err(AppError::Validation(vec![FieldError {
                field: "catalogue".into(),
                message: "either `catalogue` (the name of a built-in catalogue: panorama) or `entityTypes`".into(),
            }])
            .into());
        }
    };
    let respond = |import: &app::catalogue::Import| {
        let body = ImportResponse {
            entity_types: import
                .types
                .iter()
                .map(|t| ImportedType {
                    name: t.name.to_string(),
                    outcome: t.outcome,
                    version: t.version,
                })
                .collect(),
        };
        let headers = import
            .cursor
            .map(|cursor| (EVENT_POSITION_HEADER.to_string(), cursor.to_string()))
            .into_iter()
            .collect();
        idempotency::json_response(200, headers, &body)
    };
    Ok(respond::answer(
        app::catalogue::apply(&state, &ctx, &body, &types, respond).await,
    ))
}

/// Export the tenant's entity types in the shape `_import` reads.
#[utoipa::path(
    get,
    path = "/v1/entity-types/_export",
    tag = "entity-types",
    security(("api_key" = ["reader"]), ("bearer" = ["reader"])),
    params(
        ("x-min-position" = Option<String>, Header, description = "Wait until the read model reflects this `x-event-position`"),
    ),
    responses((status = 200, description = "The types, by name", body = ExportResponse))
)]
pub async fn export_entity_types(
    State(state): State<AppState>,
    auth: Auth<require::Reader>,
    consistency: Consistency,
) -> Result<Response, ApiError> {
    let lag = await_consistency(&state, consistency, read_model::NAME).await?;
    let entity_types = app::catalogue::export(&state.log, auth.tenant()).await?;
    Ok(with_lag(
        ApiJson(ExportResponse { entity_types }).into_response(),
        lag,
    ))
}
