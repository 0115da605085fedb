//! The HTTP surface: every route, its middleware, and the OpenAPI document generated from the
//! routes themselves (a route registered here is in `/openapi.json`, or it does not compile).

pub mod agents;
pub mod api_keys;
pub mod budgets;
pub mod console;
pub mod entities;
pub mod entity_types;
pub mod events;
pub mod me;
pub mod ops;
pub mod relations;
pub mod sessions;
pub mod support;
pub mod tenants;
pub mod usage;
pub mod ws;

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

use utoipa::Modify;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::auth;
use crate::error::{self, ApiError, ErrorEnvelope};
use crate::request_id;
use crate::state::AppState;
use axum::response::Response;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "gateway",
        description = "Event-sourced multi-tenant gateway: every write is a command that appends events to one log; reads come from projections of that log."
    ),
    tags(
        (name = "entities", description = "Generic records of tenant-defined entity types"),
        (name = "relations", description = "Typed, directed edges between records"),
        (name = "tenants", description = "Tenants (platform admins) and the caller's identity"),
        (name = "api-keys", description = "A tenant's API keys"),
        (name = "events", description = "The tenant's events, live"),
        (name = "agents", description = "AI agents: providers, model and prompt"),
        (name = "usage", description = "Usage, cost and budgets, for analysts"),
        (name = "sessions", description = "Conversations with agents: messages, transcripts, provider calls"),
        (name = "operations", description = "Health, readiness, metrics and this document"),
    ),
    components(schemas(ErrorEnvelope)),
    modifiers(&SecuritySchemes)
)]
struct ApiDoc;

/// Declares the two credential kinds. Each operation lists them with the role it requires as
/// the scope, e.g. `{"api_key": ["writer"]}`.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "A tenant's API key, `gw_…`; the scope is the role the route requires",
            ))),
        );
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("HS256 service token with `roles` and `tenant` claims"))
                    .build(),
            ),
        );
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3 document of every route", content_type = "application/json")))]
pub async fn openapi_json() -> Response {
    axum::response::IntoResponse::into_response(axum::Json(openapi()))
}

/// The event catalogue: an AsyncAPI 3 document of every NATS subject, header and event type
/// the relay publishes, generated from the code (`docs/events.md` is made from it).
#[utoipa::path(get, path = "/asyncapi.json", tag = "operations",
    responses((status = 200, description = "The AsyncAPI 3 document of every event published on NATS", content_type = "application/json")))]
pub async fn asyncapi_json(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> Response {
    let document = workers::catalogue::asyncapi(
        &state.settings.nats_subject_prefix,
        &state.settings.nats_stream,
    );
    axum::response::IntoResponse::into_response(axum::Json(document))
}

/// The OpenAPI document of every route, built once.
pub fn openapi() -> &'static utoipa::openapi::OpenApi {
    static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(|| {
        let mut document = api_router().split_for_parts().1;
        declare_common_errors(&mut document);
        document
    });
    &DOCUMENT
}

/// Every route's operation id, by method and route pattern, from [`openapi`].
fn operations() -> crate::extract::Operations {
    let mut found = Vec::new();
    for (path, item) in &openapi().paths.paths {
        use axum::http::Method;
        let operations = [
            (Method::GET, &item.get),
            (Method::PUT, &item.put),
            (Method::POST, &item.post),
            (Method::DELETE, &item.delete),
            (Method::PATCH, &item.patch),
        ];
        for (method, operation) in operations {
            if let Some(id) = operation.as_ref().and_then(|o| o.operation_id.clone()) {
                found.push((method, path.clone(), id));
            }
        }
    }
    crate::extract::Operations::new(found)
}

/// Declares, on every operation, the errors the middleware and extractors can answer before
/// or around its handler, so that a client generated from the document meets no status it
/// does not know: limits on the request (414, 431), timeouts and an unreachable database
/// (503), malformed parameters and headers (400), and per kind of operation: credentials and
/// rate limits (401, 403, 429) where credentials are needed, body errors (400, 413, 415) where
/// a body is taken, idempotency conflicts (409, 422) on commands, and 404 where a path names
/// something. A status the handler declares itself keeps its own description.
fn declare_common_errors(document: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorEnvelope")))
                    .build(),
            )
            .build()
    };
    for (path, item) in document.paths.paths.iter_mut() {
        let operations = [
            ("GET", &mut item.get),
            ("PUT", &mut item.put),
            ("POST", &mut item.post),
            ("DELETE", &mut item.delete),
            ("PATCH", &mut item.patch),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
            let mut common = vec![
                ("400", "INVALID_PARAMETER and other malformed requests"),
                ("414", "URI_TOO_LONG"),
                ("431", "REQUEST_HEADERS_TOO_LARGE"),
                ("503", "TIMEOUT, DATABASE_UNAVAILABLE"),
            ];
            if secured {
                common.extend([
                    ("401", "UNAUTHORIZED"),
                    (
                        "403",
                        "FORBIDDEN, TENANT_SUSPENDED, TENANT_MISMATCH, TENANT_UNKNOWN",
                    ),
                    ("429", "RATE_LIMITED"),
                ]);
            }
            if operation.request_body.is_some() {
                common.extend([
                    ("413", "PAYLOAD_TOO_LARGE"),
                    ("415", "UNSUPPORTED_MEDIA_TYPE"),
                ]);
            }
            if secured && method != "GET" {
                common.extend([
                    ("409", "IDEMPOTENCY_IN_FLIGHT"),
                    ("422", "IDEMPOTENCY_KEY_REUSED"),
                ]);
                declare_idempotency_key(operation);
            }
            if path.contains('{') {
                common.push(("404", "not found"));
            }
            for (status, description) in common {
                operation
                    .responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| error(description).into());
            }
        }
    }
}

/// Every command takes an `Idempotency-Key` (`CommandContext` reads it): declared, with the
/// length the extractor enforces, on a command that does not declare it itself.
fn declare_idempotency_key(operation: &mut utoipa::openapi::path::Operation) {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    use utoipa::openapi::{RefOr, Required};
    let parameters = operation.parameters.get_or_insert_with(Vec::new);
    if parameters
        .iter()
        .any(|p| matches!(p, RefOr::T(p) if p.name.eq_ignore_ascii_case("Idempotency-Key")))
    {
        return;
    }
    parameters.push(
        ParameterBuilder::new()
            .name("Idempotency-Key")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "Replays the first response for the same key and request (scoped to the tenant)",
            ))
            .schema(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(crate::headers::MAX_IDEMPOTENCY_KEY_LEN)),
            ))
            .build()
            .into(),
    );
}

fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(ops::router())
        .routes(utoipa_axum::routes!(openapi_json))
        .routes(utoipa_axum::routes!(asyncapi_json))
        .merge(me::router())
        .merge(tenants::router())
        .merge(api_keys::router())
        .merge(events::router())
        .merge(agents::router())
        .merge(sessions::router())
        .merge(usage::router())
        .merge(budgets::router())
        .merge(entity_types::router())
        .merge(entities::router())
        .merge(relations::router())
        .merge(ws::router())
        .merge(console::router())
}

/// The gateway's own middleware, one layer in four steps, from the outermost in: the request
/// id, span, access log and metrics see every final response ([`request_id::track`]); the
/// error envelope wraps every error ([`error::envelope`]); the request's limits are checked
/// ([`refuse_over_limits`]); the caller is authenticated and counted against its rate limit
/// ([`auth::authenticate`]). One layer, not four, so that a request pays for one boxed
/// service and future where four paid for four, each cloned per request.
async fn gateway_middleware(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> axum::response::Response {
    let state = &state;
    request_id::track(state, request, |request| {
        error::envelope(request, |request| async move {
            match refuse_over_limits(state, &request) {
                Some(refused) => refused,
                None => auth::authenticate(state, request, next).await,
            }
        })
    })
    .await
}

/// Refuses, before any other work, request targets over `GATEWAY_MAX_URI_BYTES` (414), a
/// `%00` in the path or query (400) and headers over `GATEWAY_MAX_HEADER_BYTES` (431), in the
/// error envelope.
fn refuse_over_limits(
    state: &AppState,
    request: &axum::extract::Request,
) -> Option<axum::response::Response> {
    use axum::response::IntoResponse;
    let length = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    let limit = state.settings.max_uri_bytes;
    if length > limit {
        return Some(error::ApiError::UriTooLong { length, limit }.into_response());
    }
    // PostgreSQL's text holds no U+0000: a path segment or query value with one could only
    // fail deeper down, so it is refused here, on both backends.
    let uri = request.uri();
    for (part, raw) in [("path", Some(uri.path())), ("query", uri.query())] {
        if raw.is_some_and(|raw| raw.contains("%00")) {
            return Some(
                ApiError::from(app::Error::InvalidParameter {
                    name: part,
                    reason: "U+0000 (%00) is not allowed".into(),
                })
                .into_response(),
            );
        }
    }
    let length: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    let limit = state.settings.max_header_bytes;
    if length > limit {
        return Some(error::ApiError::HeadersTooLarge { length, limit }.into_response());
    }
    None
}

/// The application's router with all middleware.
pub fn router(state: AppState) -> Router {
    let (router, _) = api_router().split_for_parts();
    with_middleware(router, state)
}

/// The router of a process without the `api` role: `/health`, `/ready` and `/metrics`, with
/// the same middleware; every other path answers 404.
pub fn operations_router(state: AppState) -> Router {
    let (router, _) = OpenApiRouter::<AppState>::new()
        .merge(ops::router())
        .split_for_parts();
    with_middleware(router, state)
}

fn with_middleware(router: axum::Router<AppState>, state: AppState) -> Router {
    let timeout = Duration::from_millis(state.settings.request_timeout_ms);
    // From the outermost in: the gateway's middleware (request id, error envelope, limits,
    // authentication; after routing, as authentication needs the route pattern, and before
    // any handler); panics and timeouts become responses. One `ServiceBuilder` makes them
    // one service per route, boxed once, instead of a box per layer cloned for every
    // request.
    router
        .layer(
            tower::ServiceBuilder::new()
                .layer(middleware::from_fn_with_state(
                    state.clone(),
                    gateway_middleware,
                ))
                .layer(CatchPanicLayer::new())
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::SERVICE_UNAVAILABLE,
                    timeout,
                ))
                .layer(DefaultBodyLimit::max(state.settings.max_body_bytes))
                .layer(axum::Extension(operations())),
        )
        .with_state(state)
}
