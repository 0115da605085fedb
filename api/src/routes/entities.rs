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
use domain::entity_type::Schema;
use domain::names::{EntityId, EntityTypeName, TenantId};
use domain::roles::Role;
use eventlog::unit_of_work::Committed;
use projections::entities::{self as read_model, EntityRecord, ListPage};
use projections::entity_query::{self, QueryError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use app::Error as AppError;

use crate::auth::{Auth, require};
use app::idempotency::{self};
use eventlog::idempotency::IdempotencyKey;

use crate::error::{ApiError, ApiJson, ErrorEnvelope, FieldError};
use crate::extract::{CommandContext, Consistency, EVENT_POSITION_HEADER, IfMatch, etag};
use crate::respond::{self};
use crate::routes::support::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, await_consistency, with_lag};
use crate::state::AppState;
use app::entity_writes::{self, MAX_OPERATIONS, OpKind, OpResult, Operation};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(transact))
        .routes(routes!(list_entities, create_entity))
        .routes(routes!(get_entity, put_entity, patch_entity, delete_entity))
        .routes(routes!(entity_history))
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
    #[serde(serialize_with = "app::timestamps::serialize")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "app::timestamps::serialize")]
    pub updated_at: DateTime<Utc>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "app::timestamps::serialize_option"
    )]
    pub deleted_at: Option<DateTime<Utc>>,
    /// With `expand`: the referenced records by field (`null` when the record is gone).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub expanded: Option<Map<String, Value>>,
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
            expanded: None,
        }
    }
}

/// One edge of a relation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeResponse {
    /// The type the edge starts from (the relation's type).
    #[schema(example = "projects")]
    pub entity: String,
    #[schema(example = "proj-001")]
    pub id: String,
    #[schema(example = "members")]
    pub relation: String,
    #[schema(example = "users")]
    pub target_entity: String,
    #[schema(example = "user-001")]
    pub target_id: String,
}

/// The body of an edge as a link or unlink left it.
pub(crate) fn edge_body(result: &OpResult) -> EdgeResponse {
    let (edge, _) = result.edge.as_ref().expect("a link operation's result");
    EdgeResponse {
        entity: edge.source_type.to_string(),
        id: edge.source_id.to_string(),
        relation: edge.relation.clone(),
        target_entity: edge.target_type.to_string(),
        target_id: edge.target_id.to_string(),
    }
}

/// A page of records.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EntityList {
    pub items: Vec<EntityResponse>,
    /// Pass as `cursor` (with the same `orderBy`) to get the next page; absent on the last
    /// page.
    pub next_cursor: Option<String>,
    /// With `count=exact`: how many records match the filter in all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
}

/// Query of `GET /v1/{entity}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
    /// Include deleted records (they carry `deletedAt`); admins only.
    pub include_deleted: Option<bool>,
    /// A JSON filter, e.g. `{"userId":"user-001"}` or `{"age":{"gte":18}}`.
    pub r#where: Option<String>,
    /// Sort keys, e.g. `age:desc,name:asc` (declared fields; the id breaks ties).
    pub order_by: Option<String>,
    /// `exact`: also count the matching records (`total`).
    pub count: Option<String>,
    /// Comma-separated reference fields whose records to embed.
    pub expand: Option<String>,
}

pub(crate) fn entity_type(raw: String) -> Result<EntityTypeName, AppError> {
    EntityTypeName::parse(raw).map_err(|e| AppError::InvalidEntityType(e.to_string()))
}

pub(crate) fn entity_id(raw: String) -> Result<EntityId, AppError> {
    EntityId::parse(raw).map_err(|e| AppError::InvalidId(e.to_string()))
}

fn object(body: Value) -> Result<Map<String, Value>, AppError> {
    match body {
        Value::Object(map) => Ok(map),
        _ => Err(AppError::Validation(vec![FieldError {
            field: "".into(),
            message: "the body must be a JSON object".into(),
        }])),
    }
}

/// The body's `id`, when it has one, taken out of the document.
fn take_id(data: &mut Map<String, Value>) -> Result<Option<EntityId>, AppError> {
    match data.remove("id") {
        None => Ok(None),
        Some(Value::String(id)) => EntityId::parse(id).map(Some).map_err(|e| {
            AppError::Validation(vec![FieldError {
                field: "id".into(),
                message: e.to_string(),
            }])
        }),
        Some(_) => Err(AppError::Validation(vec![FieldError {
            field: "id".into(),
            message: "must be a string".into(),
        }])),
    }
}

/// The type's current schema, read from the log (exact, not from a read model).
pub(crate) async fn schema_of(
    state: &AppState,
    tenant: &TenantId,
    entity_type: &EntityTypeName,
) -> Result<Schema, ApiError> {
    let loaded = entity_writes::load_type(&state.log, tenant, entity_type).await?;
    if !loaded.aggregate.exists() {
        return Err(AppError::EntityTypeNotFound(entity_type.to_string()).into());
    }
    Ok(loaded.aggregate.schema().clone())
}

/// The body of a record as a write left it.
pub(crate) fn result_body(result: &OpResult, committed: &Committed) -> EntityResponse {
    let written = WrittenRecord::of(result, committed);
    EntityResponse {
        entity: written.entity.to_string(),
        id: written.id.to_string(),
        version: written.version,
        data: Value::Object(written.data.clone()),
        created_at: written.created_at,
        updated_at: written.updated_at,
        deleted_at: written.deleted_at,
        expanded: None,
    }
}

/// [`EntityResponse`] of a record a write left, serialized from the write's result without a
/// copy of its document: the same JSON (pinned by a test).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WrittenRecord<'a> {
    entity: &'a str,
    id: &'a str,
    version: u64,
    data: &'a Map<String, Value>,
    #[serde(serialize_with = "app::timestamps::serialize")]
    created_at: DateTime<Utc>,
    #[serde(serialize_with = "app::timestamps::serialize")]
    updated_at: DateTime<Utc>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "app::timestamps::serialize_option"
    )]
    deleted_at: Option<DateTime<Utc>>,
}

impl<'a> WrittenRecord<'a> {
    fn of(result: &'a OpResult, committed: &Committed) -> Self {
        let updated_at = result.updated_at(committed);
        Self {
            entity: result.entity_type.as_str(),
            id: result.id.as_str(),
            version: result.version,
            data: &result.data,
            created_at: result.created_at(committed),
            updated_at,
            deleted_at: result.deleted.then_some(updated_at),
        }
    }
}

/// The idempotency key of a write to one record: `If-Match` is part of the request, so the same
/// key with another `If-Match` is another request.
fn record_key(
    ctx: &CommandContext<require::Writer>,
    body: Option<Value>,
    expected_version: Option<u64>,
) -> Option<IdempotencyKey> {
    let hashed = match body {
        Some(body) => serde_json::json!({ "body": body, "ifMatch": expected_version }),
        None => serde_json::json!({ "ifMatch": expected_version }),
    };
    idempotency::key_of(ctx, &hashed)
}

/// Runs one operation; answers with the record.
async fn run(
    state: &AppState,
    ctx: &CommandContext<require::Writer>,
    key: Option<IdempotencyKey>,
    status: StatusCode,
    operation: Operation,
) -> Response {
    let operations = [operation];
    let name = entity_writes::command_name(&operations);
    let render = move |results: &[OpResult], committed: &Committed| {
        let result = &results[0];
        let mut headers = vec![("etag".to_string(), etag(result.version))];
        if let Some(cursor) = committed.appended.last_cursor().or(result.cursor) {
            headers.push((EVENT_POSITION_HEADER.to_string(), cursor.to_string()));
        }
        if status == StatusCode::CREATED {
            headers.push((
                "location".to_string(),
                format!("/v1/{}/{}", result.entity_type, result.id),
            ));
        }
        idempotency::json_response(
            status.as_u16(),
            headers,
            &WrittenRecord::of(result, committed),
        )
    };
    respond::answer(entity_writes::run(state, ctx, key, name, &operations, render).await)
}

/// Create a record.
///
/// The id comes from the type's key fields (joined with `:`), else from the body's `id`, else
/// it is generated. The rest of the body is the record's document, checked against the schema.
#[utoipa::path(
    post,
    path = "/v1/{entity}",
    tag = "entities",
    security(("api_key" = ["writer"]), ("bearer" = ["writer"])),
    params(
        ("entity" = String, Path, description = "Entity type, e.g. `users`", min_length = 1, max_length = 63, pattern = "^[a-z][a-z0-9-]*$"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for the same key and request", min_length = 1, max_length = 255),
    ),
    request_body(content = Object, description = "The record's document, optionally with `id`"),
    responses(
        (status = 201, description = "Created; `ETag`, `Location` and `x-event-position` headers", body = EntityResponse),
        (status = 400, description = "Malformed entity type, id or JSON; VALIDATION_ERROR, one entry per field", body = ErrorEnvelope),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: entityType)", body = ErrorEnvelope),
        (status = 409, description = "ENTITY_ALREADY_EXISTS, UNIQUE_VIOLATION", body = ErrorEnvelope),
    )
)]
pub async fn create_entity(
    State(state): State<AppState>,
    ctx: CommandContext<require::Writer>,
    Path(entity): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let entity_type = entity_type(entity)?;
    let key = idempotency::key_of(&ctx, &body);
    let mut data = object(body)?;
    let id = take_id(&mut data)?;
    let operation = Operation::new(OpKind::Create, entity_type, id, data, None);
    Ok(run(&state, &ctx, key, StatusCode::CREATED, operation).await)
}

/// Query of `GET /v1/{entity}/{id}`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct GetQuery {
    /// Comma-separated reference fields whose records to embed under `expanded`.
    pub expand: Option<String>,
}

/// The reference fields named by `expand`.
fn expand_fields(
    raw: Option<&str>,
    schema: &Schema,
) -> Result<Vec<(String, EntityTypeName)>, ApiError> {
    let mut fields = Vec::new();
    for name in raw
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        let target = schema
            .fields
            .get(name)
            .and_then(|spec| spec.references.clone())
            .ok_or_else(|| AppError::InvalidParameter {
                name: "expand",
                reason: format!("'{name}' is not a reference field of this entity type"),
            })?;
        fields.push((name.to_string(), target));
    }
    Ok(fields)
}

/// Embeds the records that `fields` of each response reference (one query per field).
async fn expand(
    state: &AppState,
    tenant: &TenantId,
    fields: &[(String, EntityTypeName)],
    responses: &mut [EntityResponse],
) -> Result<(), ApiError> {
    for (field, target) in fields {
        let mut ids: Vec<String> = responses
            .iter()
            .filter_map(|r| {
                r.data
                    .get(field)
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect();
        ids.sort();
        ids.dedup();
        let found =
            read_model::get_many(state.log.db(), tenant.as_str(), target.as_str(), &ids).await?;
        let by_id: std::collections::HashMap<&str, &EntityRecord> = found
            .iter()
            .filter(|r| r.deleted_at.is_none())
            .map(|r| (r.id.as_str(), r))
            .collect();
        for response in responses.iter_mut() {
            let referenced = response
                .data
                .get(field)
                .and_then(Value::as_str)
                .and_then(|id| by_id.get(id))
                .map(|record| {
                    serde_json::to_value(EntityResponse::from((*record).clone()))
                        .unwrap_or_default()
                })
                .unwrap_or(Value::Null);
            response
                .expanded
                .get_or_insert_with(Map::new)
                .insert(field.clone(), referenced);
        }
    }
    Ok(())
}

/// Read a record.
#[utoipa::path(
    get,
    path = "/v1/{entity}/{id}",
    tag = "entities",
    security(("api_key" = ["reader"]), ("bearer" = ["reader"])),
    params(
        ("entity" = String, Path, description = "Entity type", min_length = 1, max_length = 63, pattern = "^[a-z][a-z0-9-]*$"),
        ("id" = String, Path, description = "Record id; composite keys join their parts with `:`", min_length = 1, max_length = 255),
        ("x-min-position" = Option<String>, Header, description = "Wait until the read model reflects this `x-event-position`"),
        ("x-consistency" = Option<String>, Header, description = "`strict`: answer 503 instead of stale data"),
        GetQuery,
    ),
    responses(
        (status = 200, description = "The record; `ETag` header", body = EntityResponse),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: entityType, entity)", body = ErrorEnvelope),
        (status = 503, description = "PROJECTION_STALE", body = ErrorEnvelope),
    )
)]
pub async fn get_entity(
    State(state): State<AppState>,
    auth: Auth<require::Reader>,
    consistency: Consistency,
    Path((entity, id)): Path<(String, String)>,
    Query(query): Query<GetQuery>,
) -> Result<Response, ApiError> {
    let entity_type = entity_type(entity)?;
    let id = entity_id(id)?;
    let tenant = auth.tenant();
    let schema = schema_of(&state, tenant, &entity_type).await?;
    let fields = expand_fields(query.expand.as_deref(), &schema)?;
    let lag = await_consistency(&state, consistency, read_model::NAME).await?;
    let record = read_model::get(
        state.log.db(),
        tenant.as_str(),
        entity_type.as_str(),
        id.as_str(),
    )
    .await?
    .filter(|record| record.deleted_at.is_none())
    .ok_or_else(|| AppError::EntityNotFound {
        entity_type: entity_type.to_string(),
        id: id.to_string(),
    })?;
    let tag = etag(record.version as u64);
    let mut responses = [EntityResponse::from(record)];
    expand(&state, tenant, &fields, &mut responses).await?;
    let [body] = responses;
    let mut response = ApiJson(body).into_response();
    if let Ok(value) = HeaderValue::from_str(&tag) {
        response.headers_mut().insert(header::ETAG, value);
    }
    Ok(with_lag(response, lag))
}

/// The schemas of the types `schema`'s reference fields and relations point at, for
/// conditions that follow them (a type that no longer exists is left out).
async fn related_schemas(
    state: &AppState,
    tenant: &TenantId,
    schema: &Schema,
) -> Result<std::collections::BTreeMap<EntityTypeName, Schema>, ApiError> {
    let mut related = std::collections::BTreeMap::new();
    for target in schema.referenced_types() {
        if related.contains_key(target) {
            continue;
        }
        let loaded = entity_writes::load_type(&state.log, tenant, target).await?;
        if loaded.aggregate.exists() {
            related.insert(target.clone(), loaded.aggregate.schema().clone());
        }
    }
    Ok(related)
}

fn invalid(name: &'static str) -> impl Fn(QueryError) -> ApiError {
    move |e| {
        AppError::InvalidParameter {
            name,
            reason: e.to_string(),
        }
        .into()
    }
}

/// List records: filtered by `where`, sorted by `orderBy`, a page at a time.
///
/// `where` is a JSON object: `{"field": value}` (equality), `{"field": {"gt": 1, "lte": 9}}`
/// (operators `eq ne gt gte lt lte in nin contains startsWith isNull`), paths into json
/// fields (`"meta.plan"` or nested objects), and `and`/`or` (arrays) and `not` (an object).
#[utoipa::path(
    get,
    path = "/v1/{entity}",
    tag = "entities",
    security(("api_key" = ["reader"]), ("bearer" = ["reader"])),
    params(
        ("entity" = String, Path, description = "Entity type", min_length = 1, max_length = 63, pattern = "^[a-z][a-z0-9-]*$"),
        ("x-min-position" = Option<String>, Header, description = "Wait until the read model reflects this `x-event-position`"),
        ("x-consistency" = Option<String>, Header, description = "`strict`: answer 503 instead of stale data"),
        ListQuery,
    ),
    responses(
        (status = 200, description = "A page of records", body = EntityList),
        (status = 400, description = "INVALID_PARAMETER, naming the parameter", body = ErrorEnvelope),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: entityType)", body = ErrorEnvelope),
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
    let tenant = auth.tenant();
    let limit = query.limit.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        return Err(AppError::InvalidParameter {
            name: "limit",
            reason: format!("must be between 1 and {MAX_PAGE_SIZE}"),
        }
        .into());
    }
    let include_deleted = query.include_deleted.unwrap_or(false);
    if include_deleted && !Role::any_grants(&auth.principal.roles, Role::Admin) {
        return Err(ApiError::Forbidden {
            required: Role::Admin,
        });
    }
    let count = match query.count.as_deref() {
        None => false,
        Some("exact") => true,
        Some(_) => {
            return Err(AppError::InvalidParameter {
                name: "count",
                reason: "the only counting mode is 'exact'".into(),
            }
            .into());
        }
    };
    let schema = schema_of(&state, tenant, &entity_type).await?;
    let filter = match query.r#where.as_deref() {
        None => None,
        Some(raw) => {
            let value: Value =
                serde_json::from_str(raw).map_err(|e| AppError::InvalidParameter {
                    name: "where",
                    reason: format!("not JSON: {e}"),
                })?;
            let related = related_schemas(&state, tenant, &schema).await?;
            Some(
                entity_query::parse_where_related(&value, &schema, &related)
                    .map_err(invalid("where"))?,
            )
        }
    };
    let order = entity_query::parse_order(query.order_by.as_deref(), &schema)
        .map_err(invalid("orderBy"))?;
    let after = query
        .cursor
        .as_deref()
        .map(|raw| entity_query::decode_cursor(raw, &order).map_err(invalid("cursor")))
        .transpose()?;
    let fields = expand_fields(query.expand.as_deref(), &schema)?;
    let lag = await_consistency(&state, consistency, read_model::NAME).await?;
    let list = read_model::ListQuery {
        filter,
        order,
        after,
        limit: limit + 1,
        include_deleted,
        count,
    };
    let ListPage { mut records, total } =
        read_model::list(state.log.db(), tenant.as_str(), entity_type.as_str(), &list).await?;
    let next_cursor = if records.len() > limit as usize {
        records.truncate(limit as usize);
        records
            .last()
            .map(|last| entity_query::encode_cursor(&list.order, &last.id, &last.data))
    } else {
        None
    };
    let mut items: Vec<EntityResponse> = records.into_iter().map(EntityResponse::from).collect();
    expand(&state, tenant, &fields, &mut items).await?;
    let body = EntityList {
        items,
        next_cursor,
        total,
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
        ("entity" = String, Path, description = "Entity type", min_length = 1, max_length = 63, pattern = "^[a-z][a-z0-9-]*$"),
        ("id" = String, Path, description = "Record id", min_length = 1, max_length = 255),
        ("If-Match" = Option<String>, Header, description = "The `ETag` the record must still have"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for the same key and request", min_length = 1, max_length = 255),
    ),
    request_body(content = Object, description = "A JSON merge patch: `null` removes a field"),
    responses(
        (status = 200, description = "The record after the patch", body = EntityResponse),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: entityType, entity)", body = ErrorEnvelope),
        (status = 400, description = "VALIDATION_ERROR", body = ErrorEnvelope),
        (status = 409, description = "VERSION_CONFLICT, UNIQUE_VIOLATION", body = ErrorEnvelope),
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
    let operation = Operation::new(
        OpKind::Update,
        entity_type,
        Some(id),
        patch,
        expected_version,
    );
    let key = record_key(&ctx, Some(body), expected_version);
    Ok(run(&state, &ctx, key, StatusCode::OK, operation).await)
}

/// Replace a record's document.
#[utoipa::path(
    put,
    path = "/v1/{entity}/{id}",
    tag = "entities",
    security(("api_key" = ["writer"]), ("bearer" = ["writer"])),
    params(
        ("entity" = String, Path, description = "Entity type", min_length = 1, max_length = 63, pattern = "^[a-z][a-z0-9-]*$"),
        ("id" = String, Path, description = "Record id", min_length = 1, max_length = 255),
        ("If-Match" = Option<String>, Header, description = "The `ETag` the record must still have"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for the same key and request", min_length = 1, max_length = 255),
    ),
    request_body(content = Object, description = "The whole new document (an `id`, if given, must be the record's)"),
    responses(
        (status = 200, description = "The record after the replacement", body = EntityResponse),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: entityType, entity)", body = ErrorEnvelope),
        (status = 400, description = "VALIDATION_ERROR", body = ErrorEnvelope),
        (status = 409, description = "VERSION_CONFLICT, UNIQUE_VIOLATION", body = ErrorEnvelope),
    )
)]
pub async fn put_entity(
    State(state): State<AppState>,
    ctx: CommandContext<require::Writer>,
    IfMatch(expected_version): IfMatch,
    Path((entity, id)): Path<(String, String)>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let entity_type = entity_type(entity)?;
    let id = entity_id(id)?;
    let mut data = object(body.clone())?;
    if let Some(given) = take_id(&mut data)?
        && given != id
    {
        return Err(AppError::Validation(vec![FieldError {
            field: "id".into(),
            message: "must be the id in the path".into(),
        }])
        .into());
    }
    let operation = Operation::new(
        OpKind::Replace,
        entity_type,
        Some(id),
        data,
        expected_version,
    );
    let key = record_key(&ctx, Some(body), expected_version);
    Ok(run(&state, &ctx, key, StatusCode::OK, operation).await)
}

/// Delete a record. The log keeps its history; reads answer 404 from now on.
#[utoipa::path(
    delete,
    path = "/v1/{entity}/{id}",
    tag = "entities",
    security(("api_key" = ["writer"]), ("bearer" = ["writer"])),
    params(
        ("entity" = String, Path, description = "Entity type", min_length = 1, max_length = 63, pattern = "^[a-z][a-z0-9-]*$"),
        ("id" = String, Path, description = "Record id", min_length = 1, max_length = 255),
        ("If-Match" = Option<String>, Header, description = "The `ETag` the record must still have"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for the same key and request", min_length = 1, max_length = 255),
    ),
    responses(
        (status = 200, description = "The deleted record, with `deletedAt`", body = EntityResponse),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: entityType, entity)", body = ErrorEnvelope),
        (status = 409, description = "VERSION_CONFLICT, REFERENCE_RESTRICTED", body = ErrorEnvelope),
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
    let operation = Operation::new(
        OpKind::Delete,
        entity_type,
        Some(id),
        Map::new(),
        expected_version,
    );
    let key = record_key(&ctx, None, expected_version);
    Ok(run(&state, &ctx, key, StatusCode::OK, operation).await)
}

/// One event of a record's history.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// The record's version after this event.
    pub version: u64,
    #[schema(example = "EntityUpdated")]
    pub event_type: String,
    pub recorded_at: DateTime<Utc>,
    /// Who: the principal that issued the command.
    #[schema(example = "key:01J…")]
    pub actor: Option<String>,
    pub request_id: Option<String>,
    pub command: Option<String>,
    /// What changed: the document (created, replaced), the merge patch (updated), or nothing
    /// (deleted).
    #[schema(value_type = Object)]
    pub changes: Value,
    /// The event's position in the log.
    pub cursor: String,
}

/// A record's history.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct History {
    pub entity: String,
    pub id: String,
    pub events: Vec<HistoryEntry>,
}

/// The events of a record, oldest first, read from the log (deleted records included).
#[utoipa::path(
    get,
    path = "/v1/{entity}/{id}/history",
    tag = "entities",
    security(("api_key" = ["reader"]), ("bearer" = ["reader"])),
    params(
        ("entity" = String, Path, description = "Entity type", min_length = 1, max_length = 63, pattern = "^[a-z][a-z0-9-]*$"),
        ("id" = String, Path, description = "Record id", min_length = 1, max_length = 255),
    ),
    responses(
        (status = 200, description = "Who changed what, when", body = History),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: entityType, entity)", body = ErrorEnvelope),
    )
)]
pub async fn entity_history(
    State(state): State<AppState>,
    auth: Auth<require::Reader>,
    Path((entity, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let entity_type = entity_type(entity)?;
    let id = entity_id(id)?;
    let tenant = auth.tenant();
    schema_of(&state, tenant, &entity_type).await?;
    let events = state
        .log
        .load(&entity_writes::entity_stream(tenant, &entity_type, &id), 0)
        .await?;
    if events.is_empty() {
        return Err(AppError::EntityNotFound {
            entity_type: entity_type.to_string(),
            id: id.to_string(),
        }
        .into());
    }
    let entries = events
        .iter()
        .map(|event| {
            let metadata = event.event_metadata();
            let changes = match event.event_type.as_str() {
                "EntityUpdated" => event.payload.get("patch").cloned(),
                "EntityCreated" | "EntityReplaced" => event.payload.get("data").cloned(),
                _ => None,
            };
            HistoryEntry {
                version: event.sequence as u64,
                event_type: event.event_type.clone(),
                recorded_at: event.recorded_at,
                actor: metadata.as_ref().map(|m| m.actor.to_string()),
                request_id: metadata.as_ref().map(|m| m.request_id.to_string()),
                command: metadata.as_ref().map(|m| m.command.to_string()),
                changes: changes.unwrap_or(Value::Null),
                cursor: event.cursor.to_string(),
            }
        })
        .collect();
    let body = History {
        entity: entity_type.to_string(),
        id: id.to_string(),
        events: entries,
    };
    Ok(ApiJson(body).into_response())
}

/// One operation of `_transact`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TransactOperation {
    /// `create`, `update` (merge patch), `replace`, `delete`, `link` or `unlink`.
    #[schema(example = "create")]
    pub op: String,
    #[schema(example = "users")]
    pub entity: String,
    /// Required except for a create (which may also give it in `data` or through key fields).
    pub id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    /// The version the record must still have (the number of its `ETag`).
    pub if_match: Option<u64>,
    /// `link` and `unlink`: the relation of the record `id`.
    pub relation: Option<String>,
    /// `link` and `unlink`: the id of the record the edge points at.
    pub target: Option<String>,
}

/// Body of `POST /v1/_transact`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransactRequest {
    pub operations: Vec<TransactOperation>,
}

/// One result of `_transact`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransactResult {
    pub op: String,
    /// 201 for a create or a new edge, 200 otherwise.
    pub status: u16,
    /// The record (operations on records).
    #[serde(flatten)]
    pub record: Option<EntityResponse>,
    /// The edge (`link`, `unlink`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edge: Option<EdgeResponse>,
}

/// Response of `POST /v1/_transact`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransactResponse {
    pub results: Vec<TransactResult>,
}

fn operation_of(index: usize, raw: TransactOperation) -> Result<Operation, AppError> {
    let at = |error: AppError| AppError::OperationFailed {
        index,
        error: Box::new(error),
    };
    let kind = match raw.op.as_str() {
        "create" => OpKind::Create,
        "update" => OpKind::Update,
        "replace" => OpKind::Replace,
        "delete" => OpKind::Delete,
        "link" => OpKind::Link,
        "unlink" => OpKind::Unlink,
        other => {
            return Err(at(AppError::Validation(vec![FieldError {
                field: "op".into(),
                message: format!(
                    "'{other}' is not one of create, update, replace, delete, link, unlink"
                ),
            }])));
        }
    };
    let entity_type = entity_type(raw.entity).map_err(at)?;
    let required = |field: &str| {
        at(AppError::Validation(vec![FieldError {
            field: field.into(),
            message: "is required for this operation".into(),
        }]))
    };
    if matches!(kind, OpKind::Link | OpKind::Unlink) {
        if raw.data.is_some() || raw.if_match.is_some() {
            return Err(at(AppError::Validation(vec![FieldError {
                field: "data".into(),
                message: "a link or unlink takes relation and target, no data or ifMatch".into(),
            }])));
        }
        let id = entity_id(raw.id.ok_or_else(|| required("id"))?).map_err(at)?;
        let relation = raw.relation.ok_or_else(|| required("relation"))?;
        let target = entity_id(raw.target.ok_or_else(|| required("target"))?).map_err(at)?;
        return Ok(Operation::link(
            kind == OpKind::Unlink,
            entity_type,
            id,
            relation,
            target,
        ));
    }
    if raw.relation.is_some() || raw.target.is_some() {
        return Err(at(AppError::Validation(vec![FieldError {
            field: "relation".into(),
            message: "only link and unlink take relation and target".into(),
        }])));
    }
    let mut data = match (kind, raw.data) {
        (OpKind::Delete, None) => Map::new(),
        (OpKind::Delete, Some(_)) => {
            return Err(at(AppError::Validation(vec![FieldError {
                field: "data".into(),
                message: "a delete takes no data".into(),
            }])));
        }
        (_, None) => {
            return Err(at(AppError::Validation(vec![FieldError {
                field: "data".into(),
                message: "is required".into(),
            }])));
        }
        (_, Some(data)) => object(data).map_err(at)?,
    };
    let in_data = if matches!(kind, OpKind::Create | OpKind::Replace) {
        take_id(&mut data).map_err(at)?
    } else {
        None
    };
    let id = match raw.id {
        Some(id) => Some(entity_id(id).map_err(at)?),
        None => None,
    };
    if let (Some(a), Some(b)) = (&id, &in_data)
        && a != b
    {
        return Err(at(AppError::Validation(vec![FieldError {
            field: "data.id".into(),
            message: "must be the operation's id".into(),
        }])));
    }
    let id = id.or(in_data);
    if kind != OpKind::Create && id.is_none() {
        return Err(at(AppError::Validation(vec![FieldError {
            field: "id".into(),
            message: "is required for this operation".into(),
        }])));
    }
    Ok(Operation::new(kind, entity_type, id, data, raw.if_match))
}

/// Run up to 100 operations atomically: all of them commit, or none does.
///
/// Operations run in order and see the earlier ones' effects (create a record, then reference
/// it). A failing operation fails the whole request with its own error code and
/// `details.operation` naming its index.
#[utoipa::path(
    post,
    path = "/v1/_transact",
    tag = "entities",
    security(("api_key" = ["writer"]), ("bearer" = ["writer"])),
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for the same key and request", min_length = 1, max_length = 255),
    ),
    request_body = TransactRequest,
    responses(
        (status = 200, description = "Every operation's record as it left it; `x-event-position`", body = TransactResponse),
        (status = 400, description = "Malformed request; VALIDATION_ERROR (`details.operation`)", body = ErrorEnvelope),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: entityType, entity) (`details.operation`)", body = ErrorEnvelope),
        (status = 409, description = "VERSION_CONFLICT, UNIQUE_VIOLATION, ENTITY_ALREADY_EXISTS, REFERENCE_RESTRICTED (`details.operation`)", body = ErrorEnvelope),
    )
)]
pub async fn transact(
    State(state): State<AppState>,
    ctx: CommandContext<require::Writer>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let request: TransactRequest = serde_json::from_value(body.clone())
        .map_err(|e| ApiError::InvalidJson(format!("not a _transact request: {e}")))?;
    if request.operations.is_empty() || request.operations.len() > MAX_OPERATIONS {
        return Err(AppError::Validation(vec![FieldError {
            field: "operations".into(),
            message: format!("1 to {MAX_OPERATIONS} operations"),
        }])
        .into());
    }
    let operations = request
        .operations
        .into_iter()
        .enumerate()
        .map(|(i, raw)| operation_of(i, raw))
        .collect::<Result<Vec<_>, _>>()?;
    let render = |results: &[OpResult], committed: &Committed| {
        let body = TransactResponse {
            results: results
                .iter()
                .map(|result| match &result.edge {
                    Some((_, changed)) => TransactResult {
                        op: result.kind.as_str().to_string(),
                        status: if result.kind == OpKind::Link && *changed {
                            201
                        } else {
                            200
                        },
                        record: None,
                        edge: Some(edge_body(result)),
                    },
                    None => TransactResult {
                        op: result.kind.as_str().to_string(),
                        status: if result.kind == OpKind::Create {
                            201
                        } else {
                            200
                        },
                        record: Some(result_body(result, committed)),
                        edge: None,
                    },
                })
                .collect(),
        };
        let mut headers = Vec::new();
        if let Some(cursor) = committed.appended.last_cursor() {
            headers.push((EVENT_POSITION_HEADER.to_string(), cursor.to_string()));
        }
        idempotency::json_response(StatusCode::OK.as_u16(), headers, &body)
    };
    Ok(respond::answer(
        entity_writes::run(
            &state,
            &ctx,
            idempotency::key_of(&ctx, &body),
            "Transact",
            &operations,
            render,
        )
        .await,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A written record's body is byte for byte the body of the same record read back.
    #[test]
    fn a_written_record_serializes_as_the_entity_response() {
        let data = serde_json::json!({"name": "Ada \"Lovelace\"", "n": [1, 2.5, null]});
        let data = data.as_object().unwrap();
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        for deleted_at in [None, Some(at("2026-12-06T10:00:00.123456Z"))] {
            let written = WrittenRecord {
                entity: "users",
                id: "u-1",
                version: 3,
                data,
                created_at: at("2026-12-06T09:00:00Z"),
                updated_at: at("2026-12-06T10:00:00.123456Z"),
                deleted_at,
            };
            let response = EntityResponse {
                entity: "users".into(),
                id: "u-1".into(),
                version: 3,
                data: Value::Object(data.clone()),
                created_at: written.created_at,
                updated_at: written.updated_at,
                deleted_at,
                expanded: None,
            };
            assert_eq!(
                serde_json::to_string(&written).unwrap(),
                serde_json::to_string(&response).unwrap()
            );
        }
    }
}
