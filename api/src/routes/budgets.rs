//! `/v1/budgets`: monthly cost budgets for the tenant and for single agents (set by admins,
//! read by analysts). A budget is an aggregate (`BudgetSet`, `BudgetRemoved`,
//! `BudgetThresholdReached`); the month's spend comes from the inline spend projection.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use domain::budget::{Budget, BudgetCommand, Enforcement, TENANT_SCOPE, agent_scope};
use domain::provider::micros_to_usd;
use eventlog::CommandOutcome;
use eventlog::idempotency::StoredResponse;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use app::Error as AppError;

use crate::auth::{Auth, require};
use app::idempotency;

use crate::error::{ApiError, ApiJson, ErrorEnvelope, FieldError};
use crate::extract::{CommandContext, Consistency, EVENT_POSITION_HEADER};
use crate::respond::{self, Begin};
use crate::routes::support::{await_consistency, with_lag};
use crate::state::AppState;
use app::messaging::{agent_stream, budget_stream};
use app::providers::Usd;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_budgets))
        .routes(routes!(set_tenant_budget, remove_tenant_budget))
        .routes(routes!(set_agent_budget, remove_agent_budget))
}

/// Body of a budget.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BudgetBody {
    /// Dollars per UTC month, an exact decimal (`"25.00"` or `25`).
    monthly_limit_usd: Usd,
    enforcement: Enforcement,
}

/// A monthly budget with this month's spend.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetView {
    /// `tenant` or `agent`.
    #[schema(example = "tenant")]
    pub scope: String,
    /// The agent, for an agent's budget.
    pub agent_id: Option<String>,
    pub monthly_limit_usd: f64,
    pub monthly_limit_micros: u64,
    /// `hard` (messages are refused once it is spent) or `soft` (an event tells).
    #[schema(example = "hard")]
    pub enforcement: String,
    /// `YYYY-MM`, UTC.
    #[schema(example = "2026-12")]
    pub month: String,
    pub spent_usd: f64,
    pub spent_micros: i64,
}

/// `{"budget": {...}}`, or `{"budget": null}` once removed.
#[derive(Debug, Serialize, ToSchema)]
pub struct BudgetResponse {
    pub budget: Option<BudgetView>,
}

/// `{"budgets": [...]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BudgetList {
    pub budgets: Vec<BudgetView>,
}

fn budget_json(scope: &str, limit: u64, enforcement: &str, spent: i64) -> BudgetView {
    let agent_id = scope.strip_prefix("agent:");
    BudgetView {
        scope: if agent_id.is_some() { "agent" } else { scope }.to_string(),
        agent_id: agent_id.map(str::to_string),
        monthly_limit_usd: micros_to_usd(limit),
        monthly_limit_micros: limit,
        enforcement: enforcement.to_string(),
        month: projections::usage::month_of(Utc::now()),
        spent_usd: micros_to_usd(spent.max(0) as u64),
        spent_micros: spent,
    }
}

async fn run(
    state: &AppState,
    ctx: &CommandContext<require::Admin>,
    body: &Value,
    scope: String,
    command: BudgetCommand,
) -> Result<Response, ApiError> {
    let key = match respond::begin(state, ctx, body).await? {
        Begin::Run(key) => key,
        Begin::Replay(response) => return Ok(response),
    };
    let stream = budget_stream(&ctx.tenant, &scope);
    // The spend shown is read before the command; it does not change what is stored.
    let month = projections::usage::month_of(Utc::now());
    let spent = projections::usage::spend(
        state.log.db(),
        ctx.tenant.as_str(),
        std::slice::from_ref(&scope),
        &month,
    )
    .await?
    .get(&scope)
    .copied()
    .unwrap_or(0);
    let respond = move |outcome: &CommandOutcome<Budget>| -> StoredResponse {
        let budget = outcome
            .aggregate
            .limit()
            .map(|(limit, enforcement)| budget_json(&scope, limit, enforcement.as_str(), spent));
        let mut headers = Vec::new();
        if let Some(cursor) = outcome.cursor {
            headers.push((EVENT_POSITION_HEADER.to_string(), cursor.to_string()));
        }
        idempotency::json_response(StatusCode::OK.as_u16(), headers, &BudgetResponse { budget })
    };
    let name = command.name();
    Ok(
        match idempotency::run::<Budget>(
            state,
            ctx,
            key,
            &stream,
            name,
            command,
            &(),
            respond,
            app::refusals::budget,
        )
        .await
        {
            Ok((_, response)) => respond::to_response(&response, false),
            Err(refused) => respond::refused(refused),
        },
    )
}

/// The highest monthly limit: a trillion dollars.
const MAX_BUDGET_MICROS: u64 = 1_000_000_000_000_000_000;

async fn set(
    state: &AppState,
    ctx: &CommandContext<require::Admin>,
    body: Value,
    scope: String,
) -> Result<Response, ApiError> {
    let parsed: BudgetBody = serde_json::from_value(body.clone()).map_err(|e| {
        AppError::Validation(vec![FieldError {
            field: String::new(),
            message: e.to_string(),
        }])
    })?;
    // Spend is summed in signed 64-bit micro-dollars; a limit beyond it could never be met
    // and would wrap when stored.
    if parsed.monthly_limit_usd.0 > MAX_BUDGET_MICROS {
        return Err(AppError::Validation(vec![FieldError {
            field: "monthlyLimitUsd".into(),
            message: "at most 1000000000000 dollars".into(),
        }])
        .into());
    }
    let command = BudgetCommand::SetBudget {
        scope: scope.clone(),
        monthly_limit_micros: parsed.monthly_limit_usd.0,
        enforcement: parsed.enforcement,
    };
    run(state, ctx, &body, scope, command).await
}

async fn ensure_agent(
    state: &AppState,
    ctx: &CommandContext<require::Admin>,
    agent_id: &str,
) -> Result<(), ApiError> {
    let loaded = state
        .log
        .load_aggregate::<domain::agent::Agent>(&agent_stream(&ctx.tenant, agent_id))
        .await
        .map_err(ApiError::internal)?;
    if loaded.aggregate.exists() {
        Ok(())
    } else {
        Err(AppError::AgentNotFound(agent_id.to_string()).into())
    }
}

/// The tenant's budgets with this month's spend.
#[utoipa::path(get, path = "/v1/budgets", tag = "usage",
    security(("api_key" = ["analyst"]), ("bearer" = ["analyst"])),
    responses((status = 200, description = "The tenant's budgets", body = BudgetList)))]
pub async fn list_budgets(
    State(state): State<AppState>,
    auth: Auth<require::Analyst>,
    consistency: Consistency,
) -> Result<Response, ApiError> {
    let lag = await_consistency(&state, consistency, projections::usage::BUDGETS).await?;
    let tenant = auth.tenant().as_str();
    let records = projections::usage::budgets(state.log.db(), tenant).await?;
    let scopes: Vec<String> = records.iter().map(|r| r.scope.clone()).collect();
    let month = projections::usage::month_of(Utc::now());
    let spent = projections::usage::spend(state.log.db(), tenant, &scopes, &month).await?;
    let budgets: Vec<BudgetView> = records
        .iter()
        .map(|r| {
            budget_json(
                &r.scope,
                r.monthly_limit_micros as u64,
                &r.enforcement,
                spent.get(&r.scope).copied().unwrap_or(0),
            )
        })
        .collect();
    Ok(with_lag(
        ApiJson(BudgetList { budgets }).into_response(),
        lag,
    ))
}

/// Set the tenant's monthly budget: `{"monthlyLimitUsd": "25.00", "enforcement": "hard"}`.
#[utoipa::path(put, path = "/v1/budgets/tenant", tag = "usage",
    security(("api_key" = ["admin"]), ("bearer" = ["admin"])),
    request_body(content = Object, description = "`{monthlyLimitUsd, enforcement: hard|soft}`"),
    responses(
        (status = 200, description = "The budget", body = BudgetResponse),
        (status = 400, description = "VALIDATION_ERROR", body = ErrorEnvelope),
    ))]
pub async fn set_tenant_budget(
    State(state): State<AppState>,
    ctx: CommandContext<require::Admin>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    set(&state, &ctx, body, TENANT_SCOPE.to_string()).await
}

/// Remove the tenant's budget.
#[utoipa::path(delete, path = "/v1/budgets/tenant", tag = "usage",
    security(("api_key" = ["admin"]), ("bearer" = ["admin"])),
    responses(
        (status = 200, description = "`{\"budget\": null}`", body = BudgetResponse),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: budget)", body = ErrorEnvelope),
    ))]
pub async fn remove_tenant_budget(
    State(state): State<AppState>,
    ctx: CommandContext<require::Admin>,
) -> Result<Response, ApiError> {
    let scope = TENANT_SCOPE.to_string();
    run(
        &state,
        &ctx,
        &Value::Null,
        scope,
        BudgetCommand::RemoveBudget,
    )
    .await
}

/// Set an agent's monthly budget.
#[utoipa::path(put, path = "/v1/budgets/agents/{agentId}", tag = "usage",
    security(("api_key" = ["admin"]), ("bearer" = ["admin"])),
    params(("agentId" = String, Path, description = "Agent id")),
    request_body(content = Object, description = "`{monthlyLimitUsd, enforcement: hard|soft}`"),
    responses(
        (status = 200, description = "The budget", body = BudgetResponse),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: agent)", body = ErrorEnvelope),
        (status = 400, description = "VALIDATION_ERROR", body = ErrorEnvelope),
    ))]
pub async fn set_agent_budget(
    State(state): State<AppState>,
    ctx: CommandContext<require::Admin>,
    Path(agent_id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    ensure_agent(&state, &ctx, &agent_id).await?;
    set(&state, &ctx, body, agent_scope(&agent_id)).await
}

/// Remove an agent's budget.
#[utoipa::path(delete, path = "/v1/budgets/agents/{agentId}", tag = "usage",
    security(("api_key" = ["admin"]), ("bearer" = ["admin"])),
    params(("agentId" = String, Path, description = "Agent id")),
    responses(
        (status = 200, description = "`{\"budget\": null}`", body = BudgetResponse),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: budget)", body = ErrorEnvelope),
    ))]
pub async fn remove_agent_budget(
    State(state): State<AppState>,
    ctx: CommandContext<require::Admin>,
    Path(agent_id): Path<String>,
) -> Result<Response, ApiError> {
    let scope = agent_scope(&agent_id);
    run(
        &state,
        &ctx,
        &Value::Null,
        scope,
        BudgetCommand::RemoveBudget,
    )
    .await
}
