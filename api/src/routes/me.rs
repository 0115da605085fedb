//! `/v1/me`: who the credentials are.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(me))
}

/// The caller's tenant, principal and roles. Any valid credentials may call it.
#[utoipa::path(get, path = "/v1/me", tag = "tenants",
    security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, description = "`{tenant, principal, roles, pricing}`; `tenant` is null for platform credentials")))]
pub async fn me(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Response, ApiError> {
    let tenant = match &principal.tenant {
        Some(tenant) => projections::tenants::get(state.log.db(), tenant.as_str())
            .await?
            .map(|t| {
                json!({
                    "id": t.id,
                    "name": t.name,
                    "status": t.status,
                    "rateLimitPerMinute": t.rate_limit_per_minute,
                    "createdAt": t.created_at,
                })
            }),
        None => None,
    };
    Ok(axum::Json(json!({
        "tenant": tenant,
        "principal": { "type": principal.kind.as_str(), "id": principal.subject },
        "roles": principal.roles,
        "rateLimitPerMinute": principal.rate_limit_per_minute,
        "pricing": state.providers.pricing(),
    }))
    .into_response())
}
