//! `/v1/agents`: a tenant's AI agents (seed 004's paths and bodies: `{"agent": {…}}`,
//! `{"agents": […]}`).
//!
//! Commands go through the `Agent` aggregate and answer from its state after the command;
//! reads come from the `agents` read model (with `x-min-position` for read-your-writes).
//! `DELETE` archives: the agent keeps its history and its sessions, and takes no new ones.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use domain::agent::{Agent, AgentChange, AgentCommand, AgentConfig, AgentServices};
use eventlog::CommandOutcome;
use eventlog::idempotency::StoredResponse;
use projections::agents::{self as read_model, AgentRecord};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use app::Error as AppError;

use crate::auth::{Auth, require};
use app::idempotency;

use crate::error::{ApiError, ApiJson, ErrorEnvelope, FieldError};
use crate::extract::{CommandContext, Consistency, EVENT_POSITION_HEADER, IfMatch, etag};
use crate::respond::{self, Begin};
use crate::routes::support::{Page, await_consistency, page_cursor, with_lag};
use crate::state::AppState;
use app::messaging::agent_stream;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_agents, create_agent))
        .routes(routes!(
            get_agent,
            replace_agent,
            patch_agent,
            archive_agent
        ))
}

/// An agent as the API shows it: its configuration with id, status, version and times.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    #[schema(example = "agt_0192f0c5a1b27c4d8e9f0a1b2c3d4e5f")]
    pub id: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A configured provider, e.g. `vendorA`.
    pub primary_provider: String,
    /// Asked when every attempt at the primary failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_provider: Option<String>,
    /// The model, for every provider without an entry in `models`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The model per provider, where they differ.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
    /// 0 to 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// `active` or `archived`.
    #[schema(example = "active")]
    pub status: String,
    /// The number of the agent's events; its `ETag`.
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// `{"agent": {...}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentResponse {
    pub agent: AgentView,
}

/// A page of agents.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentList {
    pub agents: Vec<AgentView>,
    /// The `cursor` of the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

fn agent_json(
    id: &str,
    config: &AgentConfig,
    status: &str,
    version: u64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
) -> AgentView {
    let config = config.clone();
    AgentView {
        id: id.to_string(),
        name: config.name,
        description: config.description,
        primary_provider: config.primary_provider,
        fallback_provider: config.fallback_provider,
        model: config.model,
        models: config.models,
        system_prompt: config.system_prompt,
        temperature: config.temperature,
        max_tokens: config.max_tokens,
        status: status.to_string(),
        version,
        created_at,
        updated_at,
    }
}

fn record_json(record: &AgentRecord) -> AgentView {
    agent_json(
        &record.id,
        &record.config,
        &record.status,
        record.version as u64,
        record.created_at,
        record.updated_at,
    )
}

/// The configuration in a request body: `{"agent": {…}}` or the bare object.
fn unwrap_agent(body: Value) -> Result<Map<String, Value>, ApiError> {
    let body = match body {
        Value::Object(mut map) if map.len() == 1 && map.contains_key("agent") => {
            map.remove("agent").unwrap_or_default()
        }
        other => other,
    };
    match body {
        Value::Object(map) => Ok(map),
        _ => Err(AppError::Validation(vec![FieldError {
            field: String::new(),
            message: "the body must be a JSON object".into(),
        }])
        .into()),
    }
}

fn parse_config(body: Value) -> Result<AgentConfig, ApiError> {
    let mut map = unwrap_agent(body)?;
    for managed in ["id", "status", "version", "createdAt", "updatedAt"] {
        map.remove(managed);
    }
    serde_json::from_value(Value::Object(map))
        .map_err(|e| {
            AppError::Validation(vec![FieldError {
                field: String::new(),
                message: e.to_string(),
            }])
        })
        .map_err(ApiError::from)
}

fn services(state: &AppState) -> AgentServices {
    AgentServices {
        providers: state.providers.names(),
    }
}

fn respond(status: StatusCode, id: &str) -> impl Fn(&CommandOutcome<Agent>) -> StoredResponse {
    let id = id.to_string();
    move |outcome| {
        let updated_at = outcome.updated_at.unwrap_or_else(Utc::now);
        let config = outcome
            .aggregate
            .config()
            .expect("an accepted command leaves a configured agent");
        let body = AgentResponse {
            agent: agent_json(
                &id,
                config,
                outcome.aggregate.status().as_str(),
                outcome.version,
                outcome.created_at.unwrap_or(updated_at),
                updated_at,
            ),
        };
        let mut headers = vec![("etag".to_string(), etag(outcome.version))];
        if let Some(cursor) = outcome.cursor {
            headers.push((EVENT_POSITION_HEADER.to_string(), cursor.to_string()));
        }
        if status == StatusCode::CREATED {
            headers.push(("location".to_string(), format!("/v1/agents/{id}")));
        }
        idempotency::json_response(status.as_u16(), headers, &body)
    }
}

async fn run(
    state: &AppState,
    ctx: &CommandContext<require::Writer>,
    body: &Value,
    status: StatusCode,
    id: &str,
    command: AgentCommand,
) -> Response {
    let key = match respond::begin(state, ctx, body).await {
        Ok(Begin::Run(key)) => key,
        Ok(Begin::Replay(response)) => return response,
        Err(error) => return error.into_response(),
    };
    let name = command.name();
    match idempotency::run::<Agent>(
        state,
        ctx,
        key,
        &agent_stream(&ctx.tenant, id),
        name,
        command,
        &services(state),
        respond(status, id),
        app::refusals::agent(id),
    )
    .await
    {
        Ok((_, response)) => respond::to_response(&response, false),
        Err(refused) => respond::refused(refused),
    }
}

/// Query of `GET /v1/agents`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListAgents {
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
    /// Include archived agents.
    pub include_archived: Option<bool>,
}

/// List the tenant's agents, oldest first.
#[utoipa::path(get, path = "/v1/agents", tag = "agents",
    security(("api_key" = ["reader"]), ("bearer" = ["reader"])),
    params(ListAgents),
    responses(
        (status = 200, description = "A page of agents, oldest first", body = AgentList),
        (status = 400, description = "INVALID_PARAMETER", body = ErrorEnvelope),
    ))]
pub async fn list_agents(
    State(state): State<AppState>,
    auth: Auth<require::Reader>,
    consistency: Consistency,
    Query(query): Query<ListAgents>,
) -> Result<Response, ApiError> {
    let page = Page::parse(query.limit, query.cursor.as_deref())?;
    let lag = await_consistency(&state, consistency, read_model::NAME).await?;
    let mut records = read_model::list(
        state.log.db(),
        auth.tenant().as_str(),
        page.after.as_deref(),
        page.limit + 1,
        query.include_archived.unwrap_or(false),
    )
    .await?;
    let next_cursor = page_cursor(&mut records, page.limit, |r| &r.id);
    let body = AgentList {
        agents: records.iter().map(record_json).collect(),
        next_cursor,
    };
    Ok(with_lag(ApiJson(body).into_response(), lag))
}

/// Create an agent.
///
/// Body: the configuration, bare or as `{"agent": {...}}`: `name`, `primaryProvider`, and
/// optionally `description`, `fallbackProvider`, `model`, `models` (per provider),
/// `systemPrompt`, `temperature` (0–2), `maxTokens`.
#[utoipa::path(post, path = "/v1/agents", tag = "agents",
    security(("api_key" = ["writer"]), ("bearer" = ["writer"])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for the same key and request", min_length = 1, max_length = 255)),
    request_body(content = Object, description = "The agent's configuration"),
    responses(
        (status = 201, description = "The agent; `ETag`, `Location`, `x-event-position`", body = AgentResponse),
        (status = 400, description = "VALIDATION_ERROR, one entry per field", body = ErrorEnvelope),
    ))]
pub async fn create_agent(
    State(state): State<AppState>,
    ctx: CommandContext<require::Writer>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let config = parse_config(body.clone())?;
    let id = format!("agt_{}", uuid::Uuid::now_v7().simple());
    let command = AgentCommand::CreateAgent {
        id: id.clone(),
        config,
    };
    Ok(run(&state, &ctx, &body, StatusCode::CREATED, &id, command).await)
}

/// Read an agent.
#[utoipa::path(get, path = "/v1/agents/{agentId}", tag = "agents",
    security(("api_key" = ["reader"]), ("bearer" = ["reader"])),
    params(("agentId" = String, Path, description = "Agent id, `agt_…`"),
        ("x-min-position" = Option<String>, Header, description = "Wait until the read model reflects this `x-event-position`")),
    responses(
        (status = 200, description = "The agent; `ETag`", body = AgentResponse),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: agent)", body = ErrorEnvelope),
    ))]
pub async fn get_agent(
    State(state): State<AppState>,
    auth: Auth<require::Reader>,
    consistency: Consistency,
    Path(agent_id): Path<String>,
) -> Result<Response, ApiError> {
    let lag = await_consistency(&state, consistency, read_model::NAME).await?;
    let record = read_model::get(state.log.db(), auth.tenant().as_str(), &agent_id)
        .await?
        .ok_or(AppError::AgentNotFound(agent_id))?;
    let mut response = ApiJson(AgentResponse {
        agent: record_json(&record),
    })
    .into_response();
    if let Ok(value) = etag(record.version as u64).parse() {
        response
            .headers_mut()
            .insert(axum::http::header::ETAG, value);
    }
    Ok(with_lag(response, lag))
}

/// Replace an agent's configuration.
#[utoipa::path(put, path = "/v1/agents/{agentId}", tag = "agents",
    security(("api_key" = ["writer"]), ("bearer" = ["writer"])),
    params(("agentId" = String, Path, description = "Agent id"),
        ("If-Match" = Option<String>, Header, description = "Refuse with 409 unless the agent is at this version"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for the same key and request", min_length = 1, max_length = 255)),
    request_body(content = Object, description = "The whole configuration"),
    responses(
        (status = 200, description = "The agent after the change", body = AgentResponse),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: agent)", body = ErrorEnvelope),
        (status = 409, description = "AGENT_ARCHIVED or VERSION_CONFLICT", body = ErrorEnvelope),
        (status = 400, description = "VALIDATION_ERROR", body = ErrorEnvelope),
    ))]
pub async fn replace_agent(
    State(state): State<AppState>,
    ctx: CommandContext<require::Writer>,
    IfMatch(expected_version): IfMatch,
    Path(agent_id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let config = parse_config(body.clone())?;
    let command = AgentCommand::UpdateAgent {
        change: AgentChange::Replace(config),
        expected_version,
    };
    Ok(run(&state, &ctx, &body, StatusCode::OK, &agent_id, command).await)
}

/// Change part of an agent's configuration (JSON merge patch; `null` removes an optional
/// field).
#[utoipa::path(patch, path = "/v1/agents/{agentId}", tag = "agents",
    security(("api_key" = ["writer"]), ("bearer" = ["writer"])),
    params(("agentId" = String, Path, description = "Agent id"),
        ("If-Match" = Option<String>, Header, description = "Refuse with 409 unless the agent is at this version"),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for the same key and request", min_length = 1, max_length = 255)),
    request_body(content = Object, description = "A JSON merge patch of the configuration"),
    responses(
        (status = 200, description = "The agent after the change", body = AgentResponse),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: agent)", body = ErrorEnvelope),
        (status = 409, description = "AGENT_ARCHIVED or VERSION_CONFLICT", body = ErrorEnvelope),
        (status = 400, description = "VALIDATION_ERROR", body = ErrorEnvelope),
    ))]
pub async fn patch_agent(
    State(state): State<AppState>,
    ctx: CommandContext<require::Writer>,
    IfMatch(expected_version): IfMatch,
    Path(agent_id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let mut patch = unwrap_agent(body.clone())?;
    for managed in ["id", "status", "version", "createdAt", "updatedAt"] {
        if patch.remove(managed).is_some() {
            return Err(AppError::Validation(vec![FieldError {
                field: managed.into(),
                message: "is managed by the gateway and cannot be changed".into(),
            }])
            .into());
        }
    }
    let command = AgentCommand::UpdateAgent {
        change: AgentChange::Patch(patch),
        expected_version,
    };
    Ok(run(&state, &ctx, &body, StatusCode::OK, &agent_id, command).await)
}

/// Archive an agent: it keeps its sessions and history and takes no new sessions or
/// messages. Archiving twice is harmless.
#[utoipa::path(delete, path = "/v1/agents/{agentId}", tag = "agents",
    security(("api_key" = ["writer"]), ("bearer" = ["writer"])),
    params(("agentId" = String, Path, description = "Agent id"),
        ("If-Match" = Option<String>, Header, description = "Refuse with 409 unless the agent is at this version")),
    responses(
        (status = 200, description = "The agent, with status `archived`", body = AgentResponse),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: agent)", body = ErrorEnvelope),
    ))]
pub async fn archive_agent(
    State(state): State<AppState>,
    ctx: CommandContext<require::Writer>,
    IfMatch(expected_version): IfMatch,
    Path(agent_id): Path<String>,
) -> Result<Response, ApiError> {
    let command = AgentCommand::ArchiveAgent { expected_version };
    Ok(run(
        &state,
        &ctx,
        &Value::Null,
        StatusCode::OK,
        &agent_id,
        command,
    )
    .await)
}
