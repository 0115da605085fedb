//! Relations between records: `PUT`/`DELETE /v1/{entity}/{id}/relations/{relation}/{target}`
//! link and unlink (commands through the same unit of work as record writes), and the pages
//! of a record's outgoing (`/relations/{relation}`) and incoming
//! (`/incoming/{source}/{relation}`) edges, read from the `relations` read model with the
//! records at their other ends.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use domain::names::{EntityId, EntityTypeName};
use eventlog::unit_of_work::Committed;
use projections::relations::{self as read_model, Direction, EdgeQuery, Related};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use app::Error as AppError;
use app::entity_writes::{self, OpResult, Operation};
use app::idempotency;

use crate::auth::{Auth, require};
use crate::error::{ApiError, ApiJson, ErrorEnvelope};
use crate::extract::{CommandContext, Consistency, EVENT_POSITION_HEADER};
use crate::respond;
use crate::routes::entities::{
    EdgeResponse, EntityResponse, edge_body, entity_id, entity_type, schema_of,
};
use crate::routes::support::{Page, await_consistency, page_cursor, with_lag};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(link, unlink))
        .routes(routes!(outgoing))
        .routes(routes!(incoming))
}

/// The record at the other end of an edge.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelatedResponse {
    #[schema(example = "users")]
    pub entity: String,
    #[schema(example = "user-001")]
    pub id: String,
    /// When the edge was linked.
    pub linked_at: DateTime<Utc>,
    /// The record as the read model holds it; `null` while it is not there yet.
    pub record: Option<EntityResponse>,
}

/// A page of edges.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelatedList {
    pub items: Vec<RelatedResponse>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Query of the edge lists.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct EdgePage {
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

async fn run(
    state: &AppState,
    ctx: &CommandContext<require::Writer>,
    unlink: bool,
    (entity, id, relation, target): (String, String, String, String),
) -> Result<Response, ApiError> {
    let operation = Operation::link(
        unlink,
        entity_type(entity)?,
        entity_id(id)?,
        relation,
        entity_id(target)?,
    );
    let operations = [operation];
    let name = entity_writes::command_name(&operations);
    let render = move |results: &[OpResult], committed: &Committed| {
        let result = &results[0];
        let created = !unlink && result.edge.as_ref().is_some_and(|(_, changed)| *changed);
        let mut headers = Vec::new();
        if let Some(cursor) = committed.appended.last_cursor().or(result.cursor) {
            headers.push((EVENT_POSITION_HEADER.to_string(), cursor.to_string()));
        }
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        idempotency::json_response(status.as_u16(), headers, &edge_body(result))
    };
    Ok(respond::answer(
        entity_writes::run(
            state,
            ctx,
            idempotency::key_of(ctx, &Value::Null),
            name,
            &operations,
            render,
        )
        .await,
    ))
}

/// Link a record to another by one of its type's relations.
///
/// Idempotent: linking an existing edge answers 200 with it. Both records must exist; the
/// target's type is the relation's `to`.
#[utoipa::path(
    put,
    path = "/v1/{entity}/{id}/relations/{relation}/{target}",
    tag = "relations",
    security(("api_key" = ["writer"]), ("bearer" = ["writer"])),
    params(
        ("entity" = String, Path, description = "The type the relation is declared on", min_length = 1, max_length = 63, pattern = "^[a-z][a-z0-9-]*$"),
        ("id" = String, Path, description = "The record the edge starts from", min_length = 1, max_length = 255),
        ("relation" = String, Path, description = "The relation's name", min_length = 1, max_length = 63),
        ("target" = String, Path, description = "The id of the record the edge points at", min_length = 1, max_length = 255),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for the same key and request", min_length = 1, max_length = 255),
    ),
    responses(
        (status = 201, description = "Linked; `x-event-position`", body = EdgeResponse),
        (status = 200, description = "Already linked", body = EdgeResponse),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: entityType, entity, relation)", body = ErrorEnvelope),
        (status = 409, description = "RELATION_LIMIT_EXCEEDED", body = ErrorEnvelope),
    )
)]
pub async fn link(
    State(state): State<AppState>,
    ctx: CommandContext<require::Writer>,
    Path(path): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    run(&state, &ctx, false, path).await
}

/// Unlink a record from another.
#[utoipa::path(
    delete,
    path = "/v1/{entity}/{id}/relations/{relation}/{target}",
    tag = "relations",
    security(("api_key" = ["writer"]), ("bearer" = ["writer"])),
    params(
        ("entity" = String, Path, description = "The type the relation is declared on", min_length = 1, max_length = 63, pattern = "^[a-z][a-z0-9-]*$"),
        ("id" = String, Path, description = "The record the edge starts from", min_length = 1, max_length = 255),
        ("relation" = String, Path, description = "The relation's name", min_length = 1, max_length = 63),
        ("target" = String, Path, description = "The id of the record the edge points at", min_length = 1, max_length = 255),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for the same key and request", min_length = 1, max_length = 255),
    ),
    responses(
        (status = 200, description = "Unlinked; `x-event-position`", body = EdgeResponse),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: entityType, entity, relation, edge)", body = ErrorEnvelope),
    )
)]
pub async fn unlink(
    State(state): State<AppState>,
    ctx: CommandContext<require::Writer>,
    Path(path): Path<(String, String, String, String)>,
) -> Result<Response, ApiError> {
    run(&state, &ctx, true, path).await
}

fn related_body(related: Related) -> RelatedResponse {
    let record = match (
        related.data,
        related.version,
        related.created_at,
        related.updated_at,
    ) {
        (Some(data), Some(version), Some(created_at), Some(updated_at)) => Some(EntityResponse {
            entity: related.entity_type.clone(),
            id: related.id.clone(),
            version: version as u64,
            data: data.0,
            created_at,
            updated_at,
            deleted_at: None,
            expanded: None,
        }),
        _ => None,
    };
    RelatedResponse {
        entity: related.entity_type,
        id: related.id,
        linked_at: related.linked_at,
        record,
    }
}

/// Reads a page of a record's edges.
async fn page(
    state: &AppState,
    auth: &Auth<require::Reader>,
    consistency: Consistency,
    (entity_type, id): (EntityTypeName, EntityId),
    (direction, source_type, relation): (Direction, EntityTypeName, String),
    query: EdgePage,
) -> Result<Response, ApiError> {
    let tenant = auth.tenant();
    let page = Page::parse(query.limit, query.cursor.as_deref())?;
    let declared = schema_of(state, tenant, &source_type).await?;
    let spec = declared
        .relations
        .get(&relation)
        .ok_or_else(|| AppError::RelationNotFound {
            entity_type: source_type.to_string(),
            relation: relation.clone(),
        })?;
    // The record is of the relation's own type (outgoing) or of its `to` (incoming).
    let expected = match direction {
        Direction::Outgoing => &source_type,
        Direction::Incoming => &spec.to,
    };
    if *expected != entity_type {
        return Err(AppError::RelationNotFound {
            entity_type: entity_type.to_string(),
            relation: format!("{source_type}.{relation}"),
        }
        .into());
    }
    let lag = await_consistency(state, consistency, read_model::NAME).await?;
    let mut rows = read_model::edges(
        state.log.db(),
        &EdgeQuery {
            tenant_id: tenant.as_str(),
            entity_type: entity_type.as_str(),
            id: id.as_str(),
            direction,
            source_type: source_type.as_str(),
            relation: &relation,
            after: page.after.as_deref(),
            limit: page.limit + 1,
        },
    )
    .await?;
    let next_cursor = page_cursor(&mut rows, page.limit, |r| r.id.as_str());
    let body = RelatedList {
        items: rows.into_iter().map(related_body).collect(),
        next_cursor,
    };
    Ok(with_lag(ApiJson(body).into_response(), lag))
}

/// The records a record links to by one relation, in id order, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/{entity}/{id}/relations/{relation}",
    tag = "relations",
    security(("api_key" = ["reader"]), ("bearer" = ["reader"])),
    params(
        ("entity" = String, Path, description = "The type the relation is declared on", min_length = 1, max_length = 63, pattern = "^[a-z][a-z0-9-]*$"),
        ("id" = String, Path, description = "The record", min_length = 1, max_length = 255),
        ("relation" = String, Path, description = "The relation's name", min_length = 1, max_length = 63),
        ("x-min-position" = Option<String>, Header, description = "Wait until the read model reflects this `x-event-position`"),
        ("x-consistency" = Option<String>, Header, description = "`strict`: answer 503 instead of stale data"),
        EdgePage,
    ),
    responses(
        (status = 200, description = "A page of linked records", body = RelatedList),
        (status = 400, description = "INVALID_PARAMETER", body = ErrorEnvelope),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: entityType, relation)", body = ErrorEnvelope),
    )
)]
pub async fn outgoing(
    State(state): State<AppState>,
    auth: Auth<require::Reader>,
    consistency: Consistency,
    Path((entity, id, relation)): Path<(String, String, String)>,
    Query(query): Query<EdgePage>,
) -> Result<Response, ApiError> {
    let entity_type = entity_type(entity)?;
    let id = entity_id(id)?;
    let source = entity_type.clone();
    page(
        &state,
        &auth,
        consistency,
        (entity_type, id),
        (Direction::Outgoing, source, relation),
        query,
    )
    .await
}

/// The records of type `source` that link to a record by their relation `relation` ("who
/// points at me"), in id order, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/{entity}/{id}/incoming/{source}/{relation}",
    tag = "relations",
    security(("api_key" = ["reader"]), ("bearer" = ["reader"])),
    params(
        ("entity" = String, Path, description = "The record's type (the relation's `to`)", min_length = 1, max_length = 63, pattern = "^[a-z][a-z0-9-]*$"),
        ("id" = String, Path, description = "The record", min_length = 1, max_length = 255),
        ("source" = String, Path, description = "The type the relation is declared on", min_length = 1, max_length = 63, pattern = "^[a-z][a-z0-9-]*$"),
        ("relation" = String, Path, description = "The relation's name", min_length = 1, max_length = 63),
        ("x-min-position" = Option<String>, Header, description = "Wait until the read model reflects this `x-event-position`"),
        ("x-consistency" = Option<String>, Header, description = "`strict`: answer 503 instead of stale data"),
        EdgePage,
    ),
    responses(
        (status = 200, description = "A page of linking records", body = RelatedList),
        (status = 400, description = "INVALID_PARAMETER", body = ErrorEnvelope),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: entityType, relation)", body = ErrorEnvelope),
    )
)]
pub async fn incoming(
    State(state): State<AppState>,
    auth: Auth<require::Reader>,
    consistency: Consistency,
    Path((entity, id, source, relation)): Path<(String, String, String, String)>,
    Query(query): Query<EdgePage>,
) -> Result<Response, ApiError> {
    let entity_type = entity_type(entity)?;
    let id = entity_id(id)?;
    let source = crate::routes::entities::entity_type(source)?;
    page(
        &state,
        &auth,
        consistency,
        (entity_type, id),
        (Direction::Incoming, source, relation),
        query,
    )
    .await
}
