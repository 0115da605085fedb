//! The idempotency protocol, in one place, and running one command on one stream with it.
//!
//! With an `Idempotency-Key` (scoped to the tenant and the operation, so the same key on two
//! operations names two requests; the request hash covers method, path, tenant and canonical
//! body):
//! - first request: the key is claimed, the command runs, and its response is stored in the
//!   same transaction as its events;
//! - same key and same request again: the stored status and body ([`Claimed::Replay`]; the
//!   transport marks it as a replay), and no command runs;
//! - same key, another request: 422 `IDEMPOTENCY_KEY_REUSED`;
//! - same key while the first request still runs: 409 `IDEMPOTENCY_IN_FLIGHT`.
//!
//! A command the aggregate refuses (4xx) stores its error response too, so that a retry gets
//! the same answer. Validation that happens before the command (a malformed body) stores
//! nothing. A failure without an answer (database down, 5xx) releases the key.

use cqrs_es::Aggregate;
use eventlog::idempotency::{Claim, IdempotencyKey, StoredResponse};
use eventlog::{CommandError, CommandOutcome, StreamId};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::context::Context;

/// Header of command answers: the cursor of the last event written.
pub const EVENT_POSITION_HEADER: &str = "x-event-position";
use crate::error::Error;
use crate::state::App;

/// JSON with object keys sorted at every level, so that equal documents hash equally.
pub fn canonical_json(value: &Value) -> String {
    let mut out = Vec::new();
    write_canonical(value, &mut out).expect("writing to memory does not fail");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// Writes [`canonical_json`] of `value` to `out`, without building it first (a request's
/// hash is fed straight to the hasher). Written out by hand: serde_json keeps insertion
/// order when `preserve_order` is enabled anywhere in the build. The bytes never change
/// between versions: stored idempotency records hold hashes of them.
fn write_canonical(value: &Value, out: &mut impl std::io::Write) -> std::io::Result<()> {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.write_all(b"{")?;
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                serde_json::to_writer(&mut *out, k)?;
                out.write_all(b":")?;
                write_canonical(v, out)?;
            }
            out.write_all(b"}")
        }
        Value::Array(items) => {
            out.write_all(b"[")?;
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.write_all(b",")?;
                }
                write_canonical(v, out)?;
            }
            out.write_all(b"]")
        }
        other => Ok(serde_json::to_writer(&mut *out, other)?),
    }
}

/// The hash that tells two requests with one idempotency key apart: method, path and query,
/// tenant, and the canonical body.
pub fn request_hash(method: &str, target: &str, tenant: &str, body: &Value) -> String {
    let mut hasher = Sha256::new();
    for part in [method, target, tenant] {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    write_canonical(body, &mut hasher).expect("hashing does not fail");
    hasher.update([0u8]);
    hex(&hasher.finalize())
}

/// Lower-case hex digits of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    out
}

/// Appends `bytes` to `out` as lower-case hex digits.
pub fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
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
pub async fn claim(state: &App, ctx: &Context, body: &Value) -> Result<Claimed, Error> {
    claim_key(state, key_of(ctx, body)).await
}

/// [`claim`] of a key made by [`key_of`] (`None`: the request has no key).
pub async fn claim_key(state: &App, key: Option<IdempotencyKey>) -> Result<Claimed, Error> {
    let Some(key) = key else {
        return Ok(Claimed::Run(None));
    };
    match state
        .log
        .claim_idempotency(&key, state.settings.idempotency_lock())
        .await?
    {
        Claim::Proceed => Ok(Claimed::Run(Some(key))),
        Claim::Replay(stored) => Ok(Claimed::Replay(stored)),
        Claim::Mismatch => Err(Error::IdempotencyKeyReused),
        Claim::InFlight => Err(Error::IdempotencyInFlight),
    }
}

/// The request's idempotency key, if it has one, not claimed yet. `body` as for [`claim`].
pub fn key_of(ctx: &Context, body: &Value) -> Option<IdempotencyKey> {
    ctx.idempotency_key.as_ref().map(|key| IdempotencyKey {
        tenant_id: ctx.tenant.as_str().into(),
        scope: ctx.operation.as_str().into(),
        key: key.as_str().into(),
        request_hash: request_hash(&ctx.method, &ctx.target, ctx.tenant.as_str(), body).into(),
    })
}

/// A JSON response to store and send.
pub fn json_response(
    status: u16,
    headers: Vec<(String, String)>,
    body: &impl Serialize,
) -> StoredResponse {
    let mut headers = headers;
    headers.push(("content-type".into(), "application/json".into()));
    StoredResponse {
        status,
        headers,
        body: serde_json::to_vec(body).unwrap_or_default(),
    }
}

/// What a command that did not succeed answers.
#[derive(Debug)]
pub enum Refused {
    /// A refusal, rendered (and stored, when the request has an idempotency key): the answer
    /// to the request.
    Answered(StoredResponse),
    /// The stored answer of an earlier request with the same key and request.
    Replayed(StoredResponse),
    /// No stored answer: the error as it is (the key, if any, is released).
    Failed(Error),
}

impl From<Error> for Refused {
    fn from(error: Error) -> Self {
        Refused::Failed(error)
    }
}

/// Runs `command` on `stream`. `respond` renders the outcome (it is stored for replay when the
/// request has an idempotency key); `reject` maps the aggregate's refusals.
#[allow(clippy::too_many_arguments)]
pub async fn run<A>(
    state: &App,
    ctx: &Context,
    key: Option<IdempotencyKey>,
    stream: &StreamId,
    name: &'static str,
    command: A::Command,
    services: &A::Services,
    respond: impl Fn(&CommandOutcome<A>) -> StoredResponse,
    reject: impl Fn(A::Error) -> Error,
) -> Result<(CommandOutcome<A>, StoredResponse), Refused>
where
    A: Aggregate + Clone + 'static,
    A::Command: Clone,
    A::Error: Send + Sync + 'static,
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
        Err(CommandError::Conflict) => Error::ConcurrentModification,
        Err(CommandError::Database(error)) => error.into(),
        Err(other) => Error::internal(other),
    };
    Err(Refused::Failed(match &key {
        Some(key) => release(state, key, error).await,
        None => error,
    }))
}

/// The answer to a request the gateway refused: with an idempotency key, the refusal is the
/// answer to the request and is stored for replays.
pub async fn refuse(
    state: &App,
    request_id: &str,
    key: Option<&IdempotencyKey>,
    error: Error,
) -> Refused {
    let Some(key) = key else {
        return Refused::Failed(error);
    };
    let stored = (state.render_refusal)(&error, request_id);
    match state.log.complete_idempotency(key, &stored).await {
        Ok(()) => Refused::Answered(stored),
        Err(db) => Refused::Failed(release(state, key, db.into()).await),
    }
}

/// The end of a claimed request that failed: a refusal is stored as the key's answer; any
/// other failure releases the key, so that a retry runs afresh.
pub async fn settle(
    state: &App,
    request_id: &str,
    key: Option<&IdempotencyKey>,
    error: Error,
) -> Refused {
    match key {
        Some(key) if error.is_refusal() => refuse(state, request_id, Some(key), error).await,
        Some(key) => Refused::Failed(release(state, key, error).await),
        None => Refused::Failed(error),
    }
}

/// Releases a claimed key after a failure without a replayable answer.
pub async fn release(state: &App, key: &IdempotencyKey, error: Error) -> Error {
    if let Err(release_error) = state.log.release_idempotency(key).await {
        tracing::warn!(%release_error, "could not release an idempotency key; it frees itself when its lock expires");
    }
    error
}

#[cfg(test)]
mod hex_tests {
    #[test]
    fn the_request_hash_never_changes_between_versions() {
        // Stored records hold these hashes: a retry after an upgrade must hash the same.
        let body =
            serde_json::json!({"b": [1, 2.5, "x\"y"], "a": {"z": null, "y": true}, "é": "ü"});
        assert_eq!(
            super::canonical_json(&body),
            r#"{"a":{"y":true,"z":null},"b":[1,2.5,"x\"y"],"é":"ü"}"#
        );
        assert_eq!(
            super::request_hash("POST", "/v1/users?x=1", "acme", &body),
            "d69c29440f806f2a3a7a29945682596d51e2a7a5f66ea4c18b255b6d001ce376"
        );
    }

    #[test]
    fn hex_is_two_lower_case_digits_per_byte() {
        assert_eq!(super::hex(&[]), "");
        assert_eq!(super::hex(&[0x00, 0x0f, 0xa0, 0xff, 0x5c]), "000fa0ff5c");
    }
}
