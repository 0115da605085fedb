//! Request ids, the request span, the access log line and HTTP metrics, in one middleware.
//!
//! The id is taken from the client's `x-request-id` when it is a short printable token, and
//! generated (`req_<uuid>`) otherwise. It is put in the request's extensions for handlers
//! (which copy it into event metadata), in the span every log line of the request carries,
//! and in the response's `x-request-id`.

use std::future::Future;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::response::Response;
use tracing::Instrument;

use crate::state::AppState;

/// The header that carries the request id both ways.
pub const HEADER: &str = "x-request-id";

/// The id of the request being served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

fn accept_client_id(value: &HeaderValue) -> Option<String> {
    let value = value.to_str().ok()?;
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    ok.then(|| value.to_string())
}

/// The outermost step of the gateway's middleware (`routes::gateway_middleware`): runs
/// `next` with the request id in the request and the request's span around it. Route
/// patterns come from [`MatchedPath`] so that metrics and logs group `/v1/users/u-1` and
/// `/v1/users/u-2` together.
pub async fn track<F, Fut>(state: &AppState, mut request: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let id = request
        .headers()
        .get(HEADER)
        .and_then(accept_client_id)
        .unwrap_or_else(new_id);
    request.extensions_mut().insert(RequestId(id.clone()));
    // The template is shared (a `MatchedPath` clone is a reference count).
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = request.method().clone();
    let span = tracing::info_span!(
        "request",
        otel.name = tracing::field::Empty,
        otel.kind = tracing::field::Empty,
        request_id = %id,
        method = %method,
        route = %route,
        tenant = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    // The client's trace goes on through the gateway (see `workers::trace`); the span's
    // exported name and kind are only worth formatting when spans are exported.
    if workers::trace::enabled() {
        span.record("otel.name", format!("{method} {route}"));
        span.record("otel.kind", "server");
        if let Some(parent) = request
            .headers()
            .get("traceparent")
            .and_then(|value| value.to_str().ok())
        {
            workers::trace::set_parent(&span, parent);
        }
    }
    let started = Instant::now();
    let mut response = next(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status();
    span.record("status", status.as_u16());
    state
        .metrics
        .observe_request(method.as_str(), route, status.as_u16(), elapsed);
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request completed"
        );
    });
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}

/// A new request id: `req_` and a time-ordered UUID's 32 hex digits (written into the string
/// directly: `format!` costs more than the UUID).
fn new_id() -> String {
    let mut digits = [0u8; uuid::fmt::Simple::LENGTH];
    [
        "req_",
        uuid::Uuid::now_v7().simple().encode_lower(&mut digits),
    ]
    .concat()
}
