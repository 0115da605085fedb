//! Running a command from a handler: idempotency, execution, metrics, and the response.
//!
//! With an `Idempotency-Key` (scoped to the tenant; the request hash covers method, path,
//! tenant and canonical body):
//! - first request: the key is claimed, the command runs, and its response is stored in the
//!   same transaction as its events;
//! - same key and same request again: the stored status and body, with
//!   `x-idempotent-replay: true`, and no command runs;
//! - same key, another request: 422 `IDEMPOTENCY_KEY_REUSED`;
//! - same key while the first request still runs: 409 `IDEMPOTENCY_IN_FLIGHT`.
//!
//! A command the aggregate refuses (4xx) stores its error response too, so that a retry gets
//! the same answer. Validation that happens before the command (a malformed body) stores
//! nothing. A failure without an answer (database down, 5xx) releases the key.

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use cqrs_es::Aggregate;
use eventlog::idempotency::{Claim, IdempotencyKey, StoredResponse};
use eventlog::{CommandError, CommandOutcome, StreamId};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::auth::RequiredRole;
use crate::error::ApiError;
use crate::extract::CommandContext;
use crate::state::AppState;

/// Header set on replayed responses.
pub const REPLAY_HEADER: &str = "x-idempotent-replay";

/// JSON with object keys sorted at every level, so that equal documents hash equally.
pub fn canonical_json(value: &Value) -> String {
    // Written out by hand: serde_json keeps insertion order when `preserve_order` is enabled
    // anywhere in the build.
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The hash that tells two requests with one idempotency key apart: method, path and query,
/// tenant, and the canonical body.
pub fn request_hash(method: &str, target: &str, tenant: &str, body: &Value) -> String {
    let mut hasher = Sha256::new();
    for part in [method, target, tenant, &canonical_json(body)] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hex(&hasher.finalize())
}

/// Lower-case hex digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    out
}

/// What to do with a command request.
pub enum Begin {
    /// Run the command; complete this key (if any) with its response.
    Run(Option<IdempotencyKey>),
    /// Answer with this replayed response.
    Replay(Response),
}

/// What a claimed idempotency key says about a request.
pub enum Claimed {
    /// Run the command; complete this key (if any) with its response.
    Run(Option<IdempotencyKey>),
    /// The stored response of the first request with this key.
    Replay(StoredResponse),
}

/// Claims the request's idempotency key, if it has one. `body` is what identifies the
/// request besides its method, target and tenant: the request body as JSON (`Value::Null`
/// for body-less requests).
pub async fn claim<R: RequiredRole>(
    state: &AppState,
    ctx: &CommandContext<R>,
    body: &Value,
) -> Result<Claimed, ApiError> {
    let Some(key) = key_of(ctx, body) else {
        return Ok(Claimed::Run(None));
    };
    match state
        .log
        .claim_idempotency(&key, state.settings.idempotency_lock())
        .await?
    {
        Claim::Proceed => Ok(Claimed::Run(Some(key))),
        Claim::Replay(stored) => Ok(Claimed::Replay(stored)),
        Claim::Mismatch => Err(ApiError::IdempotencyKeyReused),
        Claim::InFlight => Err(ApiError::IdempotencyInFlight),
    }
}

/// The request's idempotency key, if it has one, not claimed yet. `body` as for [`claim`].
pub fn key_of<R: RequiredRole>(ctx: &CommandContext<R>, body: &Value) -> Option<IdempotencyKey> {
    ctx.idempotency_key.as_ref().map(|key| IdempotencyKey {
        tenant_id: ctx.tenant.to_string(),
        key: key.clone(),
        request_hash: request_hash(ctx.method.as_str(), &ctx.target, ctx.tenant.as_str(), body),
    })
}

/// [`claim`], with a replay turned into its response.
pub async fn begin<R: RequiredRole>(
    state: &AppState,
    ctx: &CommandContext<R>,
    body: &Value,
) -> Result<Begin, ApiError> {
    Ok(match claim(state, ctx, body).await? {
        Claimed::Run(key) => Begin::Run(key),
        Claimed::Replay(stored) => Begin::Replay(to_response(&stored, true)),
    })
}

/// A JSON response to store and send.
pub fn json_response(
    status: StatusCode,
    headers: Vec<(String, String)>,
    body: &impl Serialize,
) -> StoredResponse {
    let mut headers = headers;
    headers.push(("content-type".into(), "application/json".into()));
    StoredResponse {
        status: status.as_u16(),
        headers,
        body: serde_json::to_vec(body).unwrap_or_default(),
    }
}

/// Turns a stored response into an HTTP response.
pub fn to_response(stored: &StoredResponse, replay: bool) -> Response {
    let mut response = Response::new(Body::from(stored.body.clone()));
    response.extensions_mut().insert(crate::error::FinalBody);
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

/// The live response of a command that issued a key: the stored response (which never holds
/// the secret) with the secret put back into `apiKey.key`, for this one response only.
pub fn with_secret(stored: &StoredResponse, token: &str) -> Result<Response, ApiError> {
    let mut body: Value = serde_json::from_slice(&stored.body).map_err(ApiError::internal)?;
    body["apiKey"]["key"] = Value::String(token.to_string());
    let mut response = to_response(stored, false);
    *response.body_mut() = Body::from(body.to_string());
    Ok(response)
}

/// Runs `command` on `stream`. `respond` renders the outcome (it is stored for replay when the
/// request has an idempotency key); `reject` maps the aggregate's refusals.
#[allow(clippy::too_many_arguments)]
pub async fn run<A, R>(
    state: &AppState,
    ctx: &CommandContext<R>,
    key: Option<IdempotencyKey>,
    stream: &StreamId,
    name: &str,
    command: A::Command,
    services: &A::Services,
    respond: impl Fn(&CommandOutcome<A>) -> StoredResponse,
    reject: impl Fn(A::Error) -> ApiError,
) -> Result<(CommandOutcome<A>, StoredResponse), Response>
where
    A: Aggregate + Clone + 'static,
    A::Command: Clone,
    A::Error: Send + Sync + 'static,
    R: RequiredRole,
{
    let metadata = ctx.metadata(name);
    let result = state
        .log
        .execute_with::<A, _>(
            stream,
            command,
            services,
            &metadata,
            key.as_ref(),
            |outcome| Some(respond(outcome)),
        )
        .await;
    let label = match &result {
        Ok(_) => "accepted",
        Err(CommandError::Rejected(_)) => "rejected",
        Err(CommandError::Conflict) => "conflict",
        Err(_) => "error",
    };
    state.metrics.command(name, label);
    let error = match result {
        Ok((outcome, response)) => {
            state.metrics.events_appended(A::TYPE, outcome.events.len());
            let response = response.expect("respond always renders");
            return Ok((outcome, response));
        }
        Err(CommandError::Rejected(error)) => {
            return Err(refuse(state, &ctx.request_id, key.as_ref(), reject(error)).await);
        }
        Err(CommandError::Conflict) => ApiError::ConcurrentModification,
        Err(CommandError::Database(error)) => error.into(),
        Err(other) => ApiError::internal(other),
    };
    Err(into_response(match &key {
        Some(key) => release(state, key, error).await,
        None => error,
    }))
}

/// The response to a request the gateway refused (a 4xx): with an idempotency key, the
/// refusal is the answer to the request and is stored for replays.
pub async fn refuse(
    state: &AppState,
    request_id: &str,
    key: Option<&IdempotencyKey>,
    error: ApiError,
) -> Response {
    let Some(key) = key else {
        return into_response(error);
    };
    let (status, body) = error.render(request_id);
    let stored = StoredResponse {
        status: status.as_u16(),
        headers: vec![("content-type".into(), "application/json".into())],
        body,
    };
    match state.log.complete_idempotency(key, &stored).await {
        Ok(()) => to_response(&stored, false),
        Err(db) => into_response(release(state, key, db.into()).await),
    }
}

fn into_response(error: ApiError) -> Response {
    axum::response::IntoResponse::into_response(error)
}

/// Releases a claimed key after a failure without a replayable answer.
pub async fn release(state: &AppState, key: &IdempotencyKey, error: ApiError) -> ApiError {
    if let Err(release_error) = state.log.release_idempotency(key).await {
        tracing::warn!(%release_error, "could not release an idempotency key; it frees itself when its lock expires");
    }
    error
}

#[cfg(test)]
mod hex_tests {
    #[test]
    fn hex_is_two_lower_case_digits_per_byte() {
        assert_eq!(super::hex(&[]), "");
        assert_eq!(super::hex(&[0x00, 0x0f, 0xa0, 0xff, 0x5c]), "000fa0ff5c");
    }
}
