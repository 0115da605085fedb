//! `GET /console`: the analyst console, a page of static assets embedded in the binary
//! (`api/console/`). It holds no data of its own: the browser signs in with an API key or a
//! service token, kept in the tab's sessionStorage, and every page calls the public API (and
//! the WebSocket channel) with it, so the key's roles decide what it shows.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ErrorEnvelope;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(console))
        .routes(routes!(console_asset))
}

const INDEX: &str = include_str!("../../console/index.html");
/// The assets, by name, with their content types.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../console/app.css"),
    ),
];

/// What the console's responses may load and do: its own assets and API, nothing else; no
/// framing by other sites.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; connect-src 'self' ws: wss:; img-src 'self' data: blob:; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// The analyst console (HTML). Sign in with an API key; see the README.
#[utoipa::path(get, path = "/console", tag = "operations",
    responses((status = 200, description = "The console's page", content_type = "text/html")))]
pub async fn console() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

/// The console's script and style sheet.
#[utoipa::path(get, path = "/console/{asset}", tag = "operations",
    params(("asset" = String, Path, description = "`app.js` or `app.css`")),
    responses(
        (status = 200, description = "The asset"),
        (status = 404, description = "NOT_FOUND", body = ErrorEnvelope),
    ))]
pub async fn console_asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(known, _, _)| *known == name) {
        Some((_, content_type, body)) => asset(content_type, body),
        // The error envelope wraps it (`NOT_FOUND`).
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
