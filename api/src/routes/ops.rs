//! Operational routes: liveness, readiness, metrics. None of them needs a tenant.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiJson;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics))
}

/// Liveness.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness: the process is up and serving HTTP.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, body = Health)))]
pub async fn health() -> ApiJson<Health> {
    ApiJson(Health { status: "ok" })
}

/// How far one projector is behind the log, and whether it is failing.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProjectorLag {
    /// `ok`, or `failing`: its last batch failed and it retries with a growing back-off (the
    /// other projectors and the relay go on). It resumes by itself once the cause is gone.
    pub status: &'static str,
    pub lag_events: u64,
    pub lag_seconds: f64,
    /// The event it fails on, when narrowed down to one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = "uuid")]
    pub failing_event_id: Option<uuid::Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it started failing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<chrono::DateTime<chrono::Utc>>,
    /// Failed tries in a row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_attempts: Option<u32>,
}

/// The NATS relay's state.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelayReport {
    /// `ok`, `degraded` (NATS unreachable or refusing; commands still succeed and the relay
    /// catches up later), or `disabled` (no `NATS_URL`).
    pub status: &'static str,
    pub lag_events: Option<u64>,
    pub lag_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Longest `/ready` takes to answer.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Readiness.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// What this process does: `api`, `projectors`, `relay`.
    pub roles: Vec<&'static str>,
    /// `ready`; `degraded` when a projector is failing (commands and reads still work, and
    /// what it projects stands still until it recovers); `unavailable` when the database
    /// does not answer (503).
    pub status: &'static str,
    /// `postgres` or `sqlite`.
    pub backend: &'static str,
    /// `ok` or `unreachable`.
    pub database: &'static str,
    /// Why the database counts as unreachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Lag of every projector (absent when the database does not answer).
    pub projectors: BTreeMap<String, ProjectorLag>,
    pub relay: RelayReport,
}

/// The relay's state, refreshing its gauges.
async fn relay_report(state: &AppState) -> RelayReport {
    let Some(status) = &state.relay else {
        return RelayReport {
            status: "disabled",
            lag_events: None,
            lag_seconds: None,
            error: None,
        };
    };
    // Bounded like the rest of `/ready`: without the database the lag is unknown, not late.
    let lag = tokio::time::timeout(
        READY_TIMEOUT,
        projections::progress::lag(&state.log, workers::relay::CHECKPOINT),
    )
    .await
    .ok()
    .and_then(Result::ok);
    if let Some(lag) = lag {
        state
            .metrics
            .relay(status.is_healthy(), lag.events, lag.seconds);
    }
    RelayReport {
        status: if status.is_healthy() {
            "ok"
        } else {
            "degraded"
        },
        lag_events: lag.map(|l| l.events),
        lag_seconds: lag.map(|l| l.seconds),
        error: status.last_error(),
    }
}

/// Refreshes the lag gauges and returns the lags; `None` when the database does not answer.
async fn projector_lags(state: &AppState) -> Option<BTreeMap<String, ProjectorLag>> {
    let mut lags = BTreeMap::new();
    for projector in state.projectors.iter() {
        let lag = match projections::progress::lag(&state.log, projector.name()).await {
            Ok(lag) => lag,
            Err(error) => {
                tracing::warn!(%error, projector = projector.name(), "lag not measurable");
                return None;
            }
        };
        let failure = state.progress.failure(projector.name());
        state.metrics.projector_lag(
            projector.name(),
            lag.events,
            lag.seconds,
            failure.as_ref().map(|f| f.event_id),
        );
        lags.insert(
            projector.name().to_string(),
            ProjectorLag {
                status: if failure.is_some() { "failing" } else { "ok" },
                lag_events: lag.events,
                lag_seconds: lag.seconds,
                failing_event_id: failure.as_ref().and_then(|f| f.event_id),
                error: failure.as_ref().map(|f| f.error.clone()),
                failing_since: failure.as_ref().map(|f| f.since),
                failed_attempts: failure.as_ref().map(|f| f.attempts),
            },
        );
    }
    Some(lags)
}

/// Readiness: the database answers. Reports each projector's lag and the relay's state; a
/// lagging projector or a degraded relay does not make the gateway unready, since commands
/// and reads still work.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let backend = state.log.db().backend().as_str();
    let roles = state
        .settings
        .process_roles()
        .map(|r| r.names())
        .unwrap_or_default();
    // Within a second either way: a load balancer asking must not wait on a dead database.
    let (checked, relay) = tokio::join!(
        tokio::time::timeout(READY_TIMEOUT, async {
            state.log.db().ping().await.map_err(|e| e.to_string())?;
            projector_lags(&state)
                .await
                .ok_or_else(|| "the read models' progress could not be read".to_string())
        }),
        relay_report(&state)
    );
    let checked = checked.unwrap_or_else(|_| {
        Err(format!(
            "the database did not answer within {READY_TIMEOUT:?}"
        ))
    });
    let (lags, reason) = match checked {
        Ok(lags) => (Some(lags), None),
        Err(reason) => {
            tracing::warn!(%reason, "database unreachable");
            (None, Some(reason))
        }
    };
    let (status, body) = match lags {
        Some(projectors) => (
            StatusCode::OK,
            Readiness {
                roles: roles.clone(),
                status: if projectors.values().any(|p| p.status == "failing") {
                    "degraded"
                } else {
                    "ready"
                },
                backend,
                database: "ok",
                reason: None,
                projectors,
                relay,
            },
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Readiness {
                roles,
                status: "unavailable",
                backend,
                database: "unreachable",
                reason,
                projectors: BTreeMap::new(),
                relay,
            },
        ),
    };
    let mut response = (status, ApiJson(body)).into_response();
    // A 503 here is the readiness report itself, not an error to wrap in the envelope.
    response.extensions_mut().insert(crate::error::FinalBody);
    response
}

/// Prometheus metrics in the OpenMetrics text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    projector_lags(&state).await;
    relay_report(&state).await;
    let mut response = state.metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}
