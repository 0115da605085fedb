//! `/v1/sessions`: conversations with agents, their messages and transcripts (seed 004).

use std::convert::Infallible;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use domain::provider::micros_to_usd;
use domain::session::{Session, SessionCommand, SessionStatus};
use eventlog::CommandOutcome;
use eventlog::idempotency::StoredResponse;
use projections::sessions::{self as read_model, SessionFilter, SessionRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use app::Error as AppError;

use crate::auth::{Auth, require};
use app::idempotency;

use crate::error::{ApiError, ApiJson, ErrorEnvelope, FieldError};
use crate::extract::{CommandContext, Consistency, EVENT_POSITION_HEADER};
use crate::respond::{self, Begin};
use crate::routes::support::{Page, await_consistency, page_cursor, with_lag};
use crate::state::AppState;
use app::messaging::{self, agent_stream, session_error, session_stream};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_sessions, create_session))
        .routes(routes!(get_session))
        .routes(routes!(close_session))
        .routes(routes!(send_message))
        .routes(routes!(get_transcript))
        .routes(routes!(list_provider_calls))
}

/// A conversation with an agent.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    #[schema(example = "ses_0192f0c5a1b27c4d8e9f0a1b2c3d4e5f")]
    pub id: String,
    pub agent_id: String,
    pub customer_id: Option<String>,
    /// `active` or `closed`.
    #[schema(example = "active")]
    pub status: String,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// User and assistant messages recorded.
    pub message_count: i64,
    pub created_at: DateTime<Utc>,
    pub last_activity_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
}

/// `{"session": {...}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionResponse {
    pub session: SessionView,
}

/// A page of sessions.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
    /// The `cursor` of the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// One message of a transcript; the reply fields only on assistant messages.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TranscriptMessageView {
    pub id: String,
    /// `user` or `assistant`.
    pub role: String,
    pub content: String,
    pub created_at: DateTime<Utc>,
    /// The user message this reply answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<MessageUsage>,
    /// The fallback provider answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<bool>)]
    pub fallback_used: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<bool>)]
    pub streamed: Option<Value>,
    /// The streaming client left before the end; the reply was recorded and billed anyway.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<bool>)]
    pub client_disconnected: Option<Value>,
    /// The provider's stream broke; the part received was recorded and billed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<bool>)]
    pub incomplete: Option<Value>,
}

/// What a reply used and cost.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageUsage {
    #[schema(value_type = u64)]
    pub tokens_in: Value,
    #[schema(value_type = u64)]
    pub tokens_out: Value,
    pub cost_usd: f64,
    pub cost_micros: u64,
    pub pricing: Pricing,
}

/// The price a reply was billed at.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Pricing {
    pub usd_per1k_tokens: f64,
}

/// `{"session": {...}, "messages": [...], "nextCursor": ...}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Transcript {
    pub session: SessionView,
    pub messages: Vec<TranscriptMessageView>,
    pub next_cursor: Option<String>,
}

/// One provider call, successful or not.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderCallView {
    pub message_id: String,
    pub provider: String,
    pub model: Option<String>,
    /// 1 for the first attempt at a provider.
    pub attempt: i32,
    /// `succeeded` or the failure's kind.
    pub status: String,
    pub http_status: Option<i32>,
    pub latency_ms: i64,
    pub error_code: Option<String>,
    pub retry_after_ms: Option<i64>,
    pub created_at: DateTime<Utc>,
}

/// `{"calls": [...]}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderCalls {
    pub calls: Vec<ProviderCallView>,
}

fn record_json(record: &SessionRecord) -> SessionView {
    SessionView {
        id: record.id.clone(),
        agent_id: record.agent_id.clone(),
        customer_id: record.customer_id.clone(),
        status: record.status.clone(),
        metadata: record.metadata.clone(),
        message_count: record.message_count,
        created_at: record.created_at,
        last_activity_at: record.last_activity_at,
        closed_at: record.closed_at,
    }
}

fn respond(status: StatusCode, id: &str) -> impl Fn(&CommandOutcome<Session>) -> StoredResponse {
    let id = id.to_string();
    move |outcome| {
        let session = &outcome.aggregate;
        let updated_at = outcome.updated_at.unwrap_or_else(Utc::now);
        let closed = session.status() == SessionStatus::Closed;
        let body = SessionResponse {
            session: SessionView {
                id: id.clone(),
                agent_id: session.agent_id().to_string(),
                customer_id: session.customer_id().map(str::to_string),
                status: session.status().as_str().to_string(),
                metadata: session.metadata().clone(),
                message_count: session.message_count() as i64,
                created_at: outcome.created_at.unwrap_or(updated_at),
                last_activity_at: updated_at,
                closed_at: closed.then_some(updated_at),
            },
        };
        let mut headers = Vec::new();
        if let Some(cursor) = outcome.cursor {
            headers.push((EVENT_POSITION_HEADER.to_string(), cursor.to_string()));
        }
        if status == StatusCode::CREATED {
            headers.push(("location".to_string(), format!("/v1/sessions/{id}")));
        }
        idempotency::json_response(status.as_u16(), headers, &body)
    }
}

/// Body of `POST /v1/sessions`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewSession {
    agent_id: String,
    #[serde(default)]
    customer_id: Option<String>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

fn invalid(message: impl ToString) -> ApiError {
    AppError::Validation(vec![FieldError {
        field: String::new(),
        message: message.to_string(),
    }])
    .into()
}

/// Start a session with an agent.
#[utoipa::path(post, path = "/v1/sessions", tag = "sessions",
    security(("api_key" = ["writer"]), ("bearer" = ["writer"])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for the same key and request", min_length = 1, max_length = 255)),
    request_body(content = Object, description = "`{\"agentId\": \"agt_…\", \"customerId\": \"…\", \"metadata\": {...}}`"),
    responses(
        (status = 201, description = "The session; `Location`, `x-event-position`", body = SessionResponse),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: agent)", body = ErrorEnvelope),
        (status = 409, description = "AGENT_ARCHIVED", body = ErrorEnvelope),
        (status = 400, description = "VALIDATION_ERROR", body = ErrorEnvelope),
    ))]
pub async fn create_session(
    State(state): State<AppState>,
    ctx: CommandContext<require::Writer>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    let request: NewSession = serde_json::from_value(body.clone()).map_err(invalid)?;
    let key = match respond::begin(&state, &ctx, &body).await? {
        Begin::Run(key) => key,
        Begin::Replay(response) => return Ok(response),
    };
    // The agent is read from its own stream, not from a read model: a session is never
    // created for an agent that was archived a moment ago.
    let agent = match state
        .log
        .load_aggregate::<domain::agent::Agent>(&agent_stream(&ctx.tenant, &request.agent_id))
        .await
    {
        Ok(loaded) => loaded.aggregate,
        Err(error) => {
            let error = AppError::internal(error);
            return Err(match &key {
                Some(key) => idempotency::release(&state, key, error).await,
                None => error,
            }
            .into());
        }
    };
    if !agent.exists() {
        let error = AppError::AgentNotFound(request.agent_id);
        return Ok(respond::refused(
            idempotency::refuse(&state, &ctx.request_id, key.as_ref(), error).await,
        ));
    }
    let id = format!("ses_{}", uuid::Uuid::now_v7().simple());
    let command = SessionCommand::CreateSession {
        id: id.clone(),
        agent_id: request.agent_id.clone(),
        agent_status: agent.status(),
        customer_id: request.customer_id,
        metadata: request.metadata.unwrap_or_default(),
    };
    let name = command.name();
    Ok(
        match idempotency::run::<Session>(
            &state,
            &ctx,
            key,
            &session_stream(&ctx.tenant, &id),
            name,
            command,
            &(),
            respond(StatusCode::CREATED, &id),
            session_error(&id, &request.agent_id),
        )
        .await
        {
            Ok((_, response)) => respond::to_response(&response, false),
            Err(refused) => respond::refused(refused),
        },
    )
}

/// Query of `GET /v1/sessions`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct ListSessions {
    pub agent_id: Option<String>,
    pub customer_id: Option<String>,
    /// `active` or `closed`.
    pub status: Option<String>,
    /// Page size, 1 to 500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// List the tenant's sessions, oldest first, optionally by agent, customer or status.
#[utoipa::path(get, path = "/v1/sessions", tag = "sessions",
    security(("api_key" = ["reader"]), ("bearer" = ["reader"])),
    params(ListSessions),
    responses(
        (status = 200, description = "A page of sessions", body = SessionList),
        (status = 400, description = "INVALID_PARAMETER", body = ErrorEnvelope),
    ))]
pub async fn list_sessions(
    State(state): State<AppState>,
    auth: Auth<require::Reader>,
    consistency: Consistency,
    Query(query): Query<ListSessions>,
) -> Result<Response, ApiError> {
    let page = Page::parse(query.limit, query.cursor.as_deref())?;
    let status = match query.status.as_deref() {
        None => None,
        Some("active") => Some(SessionStatus::Active),
        Some("closed") => Some(SessionStatus::Closed),
        Some(_) => {
            return Err(AppError::InvalidParameter {
                name: "status",
                reason: "must be 'active' or 'closed'".into(),
            }
            .into());
        }
    };
    let filter = SessionFilter {
        agent_id: query.agent_id,
        customer_id: query.customer_id,
        status,
    };
    let lag = await_consistency(&state, consistency, read_model::SESSIONS).await?;
    let mut records = read_model::list(
        state.log.db(),
        auth.tenant().as_str(),
        &filter,
        page.after.as_deref(),
        page.limit + 1,
    )
    .await?;
    let next_cursor = page_cursor(&mut records, page.limit, |r| &r.id);
    let body = SessionList {
        sessions: records.iter().map(record_json).collect(),
        next_cursor,
    };
    Ok(with_lag(ApiJson(body).into_response(), lag))
}

async fn session_record(
    state: &AppState,
    tenant: &str,
    session_id: &str,
) -> Result<SessionRecord, ApiError> {
    read_model::get(state.log.db(), tenant, session_id)
        .await?
        .ok_or_else(|| AppError::SessionNotFound(session_id.to_string()))
        .map_err(ApiError::from)
}

/// Read a session.
#[utoipa::path(get, path = "/v1/sessions/{sessionId}", tag = "sessions",
    security(("api_key" = ["reader"]), ("bearer" = ["reader"])),
    params(("sessionId" = String, Path, description = "Session id, `ses_…`"),
        ("x-min-position" = Option<String>, Header, description = "Wait until the read model reflects this `x-event-position`")),
    responses(
        (status = 200, description = "The session", body = SessionResponse),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: session)", body = ErrorEnvelope),
    ))]
pub async fn get_session(
    State(state): State<AppState>,
    auth: Auth<require::Reader>,
    consistency: Consistency,
    Path(session_id): Path<String>,
) -> Result<Response, ApiError> {
    let lag = await_consistency(&state, consistency, read_model::SESSIONS).await?;
    let record = session_record(&state, auth.tenant().as_str(), &session_id).await?;
    let body = SessionResponse {
        session: record_json(&record),
    };
    Ok(with_lag(ApiJson(body).into_response(), lag))
}

/// Close a session: it takes no new messages. Closing twice is harmless.
#[utoipa::path(post, path = "/v1/sessions/{sessionId}/close", tag = "sessions",
    security(("api_key" = ["writer"]), ("bearer" = ["writer"])),
    params(("sessionId" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "The session, with status `closed`", body = SessionResponse),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: session)", body = ErrorEnvelope),
    ))]
pub async fn close_session(
    State(state): State<AppState>,
    ctx: CommandContext<require::Writer>,
    Path(session_id): Path<String>,
) -> Result<Response, ApiError> {
    let key = match respond::begin(&state, &ctx, &Value::Null).await? {
        Begin::Run(key) => key,
        Begin::Replay(response) => return Ok(response),
    };
    Ok(
        match idempotency::run::<Session>(
            &state,
            &ctx,
            key,
            &session_stream(&ctx.tenant, &session_id),
            "CloseSession",
            SessionCommand::CloseSession,
            &(),
            respond(StatusCode::OK, &session_id),
            session_error(&session_id, ""),
        )
        .await
        {
            Ok((_, response)) => respond::to_response(&response, false),
            Err(refused) => respond::refused(refused),
        },
    )
}

/// Body of `POST /v1/sessions/{sessionId}/messages`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewMessage {
    #[serde(default)]
    role: Option<String>,
    content: String,
    #[serde(default)]
    stream: bool,
}

/// Send a message and get the agent's reply.
///
/// Requires `Idempotency-Key`. The reply comes from the agent's primary provider, retried on
/// failure with exponential backoff (honouring `retryAfterMs` on 429), then from its fallback.
/// With `"stream": true` or `Accept: text/event-stream` the reply is streamed as Server-Sent
/// Events: `chunk` events (`{"content": "…"}`), then one `done` event carrying the same body
/// as the JSON answer, or one `error` event with an error envelope.
#[utoipa::path(post, path = "/v1/sessions/{sessionId}/messages", tag = "sessions",
    security(("api_key" = ["writer"]), ("bearer" = ["writer"])),
    params(("sessionId" = String, Path, description = "Session id"),
        ("Idempotency-Key" = String, Header, description = "Required: the same key and message replay the first answer, with no new usage", min_length = 1, max_length = 255)),
    request_body(content = Object, description = "`{\"role\": \"user\", \"content\": \"…\", \"stream\": false}`"),
    responses(
        (status = 201, description = "The reply with its usage and attempts, or a `text/event-stream` when streaming (status 200)", content((app::messaging::AnswerBody<'static> = "application/json"), ("text/event-stream"))),
        (status = 200, description = "A replay: the first answer with `metadata.idempotency.replayed: true`", body = app::messaging::AnswerBody<'static>),
        (status = 400, description = "IDEMPOTENCY_KEY_REQUIRED; VALIDATION_ERROR", body = ErrorEnvelope),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: session)", body = ErrorEnvelope),
        (status = 409, description = "SESSION_CLOSED, AGENT_ARCHIVED or IDEMPOTENCY_IN_FLIGHT", body = ErrorEnvelope),
        (status = 422, description = "IDEMPOTENCY_KEY_REUSED", body = ErrorEnvelope),
        (status = 503, description = "ALL_PROVIDERS_FAILED, with the attempts", body = ErrorEnvelope),
    ))]
pub async fn send_message(
    State(state): State<AppState>,
    ctx: CommandContext<require::Writer>,
    headers: HeaderMap,
    Path(session_id): Path<String>,
    ApiJson(body): ApiJson<Value>,
) -> Result<Response, ApiError> {
    if ctx.idempotency_key.is_none() {
        return Err(AppError::IdempotencyKeyRequired.into());
    }
    let message: NewMessage = serde_json::from_value(body).map_err(invalid)?;
    if message.role.as_deref().is_some_and(|role| role != "user") {
        return Err(AppError::Validation(vec![FieldError {
            field: "role".into(),
            message: "must be 'user'".into(),
        }])
        .into());
    }
    let stream = message.stream
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|accept| accept.contains("text/event-stream"));
    let request_id = ctx.request_id.clone();
    let exchange = match messaging::prepare(&state, ctx.context, session_id, message.content).await
    {
        Ok(exchange) => exchange,
        Err(refused) => {
            let response = respond::refused(refused);
            if stream && response.status().is_success() {
                return Ok(replayed_stream(response).await);
            }
            return Ok(response);
        }
    };
    if !stream {
        let stored = exchange.answer(None, &|| false).await?;
        return Ok(respond::to_response(&stored, false));
    }
    // The exchange runs to its end in its own task, whether or not the client stays: a
    // reply the provider produced is recorded and billed even if nobody reads it.
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel::<Event>();
    tokio::spawn(async move {
        let chunks = sender.clone();
        let on_chunk = move |chunk: &str| {
            let _ = chunks.send(
                Event::default()
                    .event("chunk")
                    .data(json!({ "content": chunk }).to_string()),
            );
        };
        let gone = sender.clone();
        let disconnected = move || gone.is_closed();
        let last = match exchange.answer(Some(&on_chunk), &disconnected).await {
            Ok(stored) => Event::default()
                .event("done")
                .data(String::from_utf8_lossy(&stored.body)),
            Err(error) => {
                let answer = crate::error::render_refusal(&error, &request_id);
                Event::default()
                    .event("error")
                    .data(String::from_utf8_lossy(&answer.body))
            }
        };
        let _ = sender.send(last);
    });
    let events = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|event| (Ok::<_, Infallible>(event), receiver))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// A replayed answer to a streaming request: one `done` event with the stored body.
async fn replayed_stream(response: Response) -> Response {
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let event = Event::default()
        .event("done")
        .data(String::from_utf8_lossy(&bytes));
    let mut sse = Sse::new(futures::stream::iter([Ok::<_, Infallible>(event)])).into_response();
    if let Some(replay) = parts.headers.get(respond::REPLAY_HEADER) {
        sse.headers_mut()
            .insert(respond::REPLAY_HEADER, replay.clone());
    }
    sse
}

/// Query of the transcript.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct TranscriptQuery {
    /// Most messages, 1 to 500 (default 500).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// A session's messages in order, with provider and usage on assistant messages.
#[utoipa::path(get, path = "/v1/sessions/{sessionId}/transcript", tag = "sessions",
    security(("api_key" = ["reader"]), ("bearer" = ["reader"])),
    params(("sessionId" = String, Path, description = "Session id"), TranscriptQuery,
        ("x-min-position" = Option<String>, Header, description = "Wait until the transcript reflects this `x-event-position`")),
    responses(
        (status = 200, description = "The session and a page of its messages", body = Transcript),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: session)", body = ErrorEnvelope),
    ))]
pub async fn get_transcript(
    State(state): State<AppState>,
    auth: Auth<require::Reader>,
    consistency: Consistency,
    Path(session_id): Path<String>,
    Query(query): Query<TranscriptQuery>,
) -> Result<Response, ApiError> {
    let page = Page::parse(query.limit.or(Some(500)), query.cursor.as_deref())?;
    let after: i64 = match page.after.as_deref() {
        None => 0,
        Some(raw) => raw.parse().map_err(|_| AppError::InvalidParameter {
            name: "cursor",
            reason: "not a cursor returned by the gateway".into(),
        })?,
    };
    let lag = await_consistency(&state, consistency, read_model::TRANSCRIPTS).await?;
    let tenant = auth.tenant().as_str();
    let session = session_record(&state, tenant, &session_id).await?;
    let mut rows: Vec<_> =
        read_model::transcript(state.log.db(), tenant, &session_id, after, page.limit + 1)
            .await?
            .into_iter()
            .map(|(sequence, message)| (sequence.to_string(), message))
            .collect();
    let next_cursor = page_cursor(&mut rows, page.limit, |(sequence, _)| sequence);
    let messages: Vec<TranscriptMessageView> = rows
        .iter()
        .map(|(_, m)| {
            let mut message = TranscriptMessageView {
                id: m.id.clone(),
                role: m.role.clone(),
                content: m.content.clone(),
                created_at: m.created_at,
                reply_to: None,
                provider: None,
                model: None,
                usage: None,
                fallback_used: None,
                streamed: None,
                client_disconnected: None,
                incomplete: None,
            };
            if let Some(usage) = &m.usage {
                let micros = usage["costMicros"].as_u64().unwrap_or(0);
                let price = usage["priceMicroUsdPer1kTokens"].as_u64().unwrap_or(0);
                message.reply_to = Some(m.reply_to.clone());
                message.provider = Some(m.provider.clone());
                message.model = Some(m.model.clone());
                message.usage = Some(MessageUsage {
                    tokens_in: usage["tokensIn"].clone(),
                    tokens_out: usage["tokensOut"].clone(),
                    cost_usd: micros_to_usd(micros),
                    cost_micros: micros,
                    pricing: Pricing {
                        usd_per1k_tokens: micros_to_usd(price),
                    },
                });
                message.fallback_used = Some(usage["fallbackUsed"].clone());
                message.streamed = Some(usage["streamed"].clone());
                message.client_disconnected = Some(usage["clientDisconnected"].clone());
                message.incomplete = Some(usage["incomplete"].clone());
            }
            message
        })
        .collect();
    let body = Transcript {
        session: record_json(&session),
        messages,
        next_cursor,
    };
    Ok(with_lag(ApiJson(body).into_response(), lag))
}

/// Every provider call of a session, successful or not, in order (the provider-call log).
#[utoipa::path(get, path = "/v1/sessions/{sessionId}/provider-calls", tag = "sessions",
    security(("api_key" = ["reader"]), ("bearer" = ["reader"])),
    params(("sessionId" = String, Path, description = "Session id"),
        ("x-min-position" = Option<String>, Header, description = "Wait until the log reflects this `x-event-position`")),
    responses(
        (status = 200, description = "Every provider call of the session, in order", body = ProviderCalls),
        (status = 404, description = "RESOURCE_NOT_FOUND (`details.resource`: session)", body = ErrorEnvelope),
    ))]
pub async fn list_provider_calls(
    State(state): State<AppState>,
    auth: Auth<require::Reader>,
    consistency: Consistency,
    Path(session_id): Path<String>,
) -> Result<Response, ApiError> {
    let lag = await_consistency(&state, consistency, read_model::PROVIDER_CALLS).await?;
    let tenant = auth.tenant().as_str();
    session_record(&state, tenant, &session_id).await?;
    let calls = read_model::provider_calls(state.log.db(), tenant, &session_id).await?;
    let calls: Vec<ProviderCallView> = calls
        .iter()
        .map(|c| ProviderCallView {
            message_id: c.message_id.clone(),
            provider: c.provider.clone(),
            model: c.model.clone(),
            attempt: c.attempt,
            status: c.status.clone(),
            http_status: c.http_status,
            latency_ms: c.latency_ms,
            error_code: c.error_code.clone(),
            retry_after_ms: c.retry_after_ms,
            created_at: c.created_at,
        })
        .collect();
    Ok(with_lag(
        ApiJson(ProviderCalls { calls }).into_response(),
        lag,
    ))
}
