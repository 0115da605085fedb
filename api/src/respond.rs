//! The HTTP side of the idempotency protocol ([`app::idempotency`]): stored answers become
//! responses, replays are marked, and a command's refusal becomes its response.

use app::idempotency::{self, Claimed, Refused};
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use eventlog::idempotency::{IdempotencyKey, StoredResponse};
use serde_json::Value;

use crate::error::{ApiError, FinalBody};
use crate::state::AppState;

/// Header set on replayed responses.
pub const REPLAY_HEADER: &str = "x-idempotent-replay";

/// What to do with a command request.
pub enum Begin {
    /// Run the command; complete this key (if any) with its response.
    Run(Option<IdempotencyKey>),
    /// Answer with this replayed response.
    Replay(Response),
}

/// Claims the request's idempotency key ([`idempotency::claim`]), with a replay turned into
/// its response.
pub async fn begin(state: &AppState, ctx: &app::Context, body: &Value) -> Result<Begin, ApiError> {
    Ok(match idempotency::claim(state, ctx, body).await? {
        Claimed::Run(key) => Begin::Run(key),
        Claimed::Replay(stored) => Begin::Replay(to_response(&stored, true)),
    })
}

/// Turns a stored response into an HTTP response.
pub fn to_response(stored: &StoredResponse, replay: bool) -> Response {
    with_body(stored, stored.body.clone(), replay)
}

/// [`to_response`] of a response used once: its body moves into the response.
pub fn into_response(mut stored: StoredResponse, replay: bool) -> Response {
    let body = std::mem::take(&mut stored.body);
    with_body(&stored, body, replay)
}

fn with_body(stored: &StoredResponse, body: Vec<u8>, replay: bool) -> Response {
    let mut response = Response::new(Body::from(body));
    response.extensions_mut().insert(FinalBody);
    *response.status_mut() =
        StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    for (name, value) in &stored.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    if replay {
        headers.insert(
            HeaderName::from_static(REPLAY_HEADER),
            HeaderValue::from_static("true"),
        );
    }
    response
}

/// The response to a command that did not succeed.
pub fn refused(refused: Refused) -> Response {
    match refused {
        Refused::Answered(stored) => into_response(stored, false),
        Refused::Replayed(stored) => into_response(stored, true),
        Refused::Failed(error) => ApiError::App(error).into_response(),
    }
}

/// The response to a command's answer.
pub fn answer(result: Result<StoredResponse, Refused>) -> Response {
    match result {
        Ok(stored) => into_response(stored, false),
        Err(refused) => self::refused(refused),
    }
}

/// The live response of a command that issued a key: the stored response (which never holds
/// the secret) with the secret put back into `apiKey.key`, for this one response only.
pub fn with_secret(stored: &StoredResponse, token: &str) -> Result<Response, ApiError> {
    let mut body: Value = serde_json::from_slice(&stored.body).map_err(ApiError::internal)?;
    body["apiKey"]["key"] = Value::String(token.to_string());
    let mut response = to_response(stored, false);
    *response.body_mut() = Body::from(body.to_string());
    Ok(response)
}
