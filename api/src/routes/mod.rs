//! The HTTP surface: every route, its middleware, and the OpenAPI document generated from the
//! routes themselves (a route registered here is in `/openapi.json`, or it does not compile).

pub mod entities;
pub mod ops;

use std::sync::LazyLock;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::middleware;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::error::{self, ErrorEnvelope};
use crate::request_id;
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "gateway",
        description = "Event-sourced multi-tenant gateway: every write is a command that appends events to one log; reads come from projections of that log."
    ),
    tags(
        (name = "entities", description = "Generic records of tenant-defined entity types"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    ),
    components(schemas(ErrorEnvelope))
)]
struct ApiDoc;

/// The OpenAPI document of every route, built once.
pub fn openapi() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> =
        LazyLock::new(|| api_router().split_for_parts().1);
    &DOCUMENT
}

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(ops::router())
        .merge(entities::router())
}

/// The application's router with all middleware.
pub fn router(state: AppState) -> Router {
    let (router, _) = api_router().split_for_parts();
    let timeout = Duration::from_millis(state.settings.request_timeout_ms);
    // The first layer is the innermost: panics and timeouts become responses that the error
    // envelope then wraps, and the request-id layer sees every final response.
    router
        .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(CatchPanicLayer::new())
        .layer(middleware::from_fn(error::envelope))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_id::track,
        ))
        .with_state(state)
}
