//! `/v1/me`: who the credentials are.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Authenticated;
use crate::error::ApiError;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(me))
}

/// The caller's tenant.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeTenant {
    pub id: String,
    pub name: String,
    /// `active` or `suspended`.
    pub status: String,
    pub rate_limit_per_minute: Option<i64>,
    pub created_at: DateTime<Utc>,
}

/// Who is calling.
#[derive(Debug, Serialize, ToSchema)]
pub struct MePrincipal {
    /// `apiKey`, `jwt` or `adminKey`.
    #[serde(rename = "type")]
    #[schema(example = "apiKey")]
    pub kind: &'static str,
    /// The key id, `jwt:<service>`, or `admin-key`.
    pub id: String,
}

/// `GET /v1/me`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    /// `null` for platform credentials.
    pub tenant: Option<MeTenant>,
    pub principal: MePrincipal,
    #[schema(value_type = Vec<String>)]
    pub roles: Vec<domain::roles::Role>,
    /// The request budget per minute that applies to these credentials.
    pub rate_limit_per_minute: u32,
    /// Each provider's price per 1,000 tokens in dollars, and per model where it differs.
    #[schema(value_type = Object)]
    pub pricing: Value,
}

/// The caller's tenant, principal and roles. Any valid credentials may call it.
#[utoipa::path(get, path = "/v1/me", tag = "tenants",
    security(("api_key" = []), ("bearer" = [])),
    responses((status = 200, description = "Who the credentials are", body = Me)))]
pub async fn me(
    State(state): State<AppState>,
    Authenticated(principal): Authenticated,
) -> Result<Response, ApiError> {
    let tenant = match &principal.tenant {
        Some(tenant) => projections::tenants::get(state.log.db(), tenant.as_str())
            .await?
            .map(|t| MeTenant {
                id: t.id,
                name: t.name,
                status: t.status,
                rate_limit_per_minute: t.rate_limit_per_minute,
                created_at: t.created_at,
            }),
        None => None,
    };
    Ok(axum::Json(Me {
        tenant,
        principal: MePrincipal {
            kind: principal.kind.as_str(),
            id: principal.subject,
        },
        roles: principal.roles,
        rate_limit_per_minute: principal.rate_limit_per_minute,
        pricing: state.providers.pricing(),
    })
    .into_response())
}
