//! The tenant's events, read from the log: `/v1/events/stream`, live, as Server-Sent Events,
//! and `/v1/events`, the same events a page at a time (the change feed).
//!
//! Driven by the event log, not by NATS: it works without NATS and never misses what NATS
//! missed. Each SSE event has `id:` (the event's cursor), `event:` (its type) and `data:` (the
//! envelope JSON, the same shape as the NATS payload). A client that reconnects with
//! `Last-Event-ID` continues after that event, with no gap and no repeat. Without it, the
//! stream starts at the current end of the log (`after=beginning` replays everything).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive};
use axum::response::{IntoResponse, Response, Sse};
use eventlog::{Cursor, RecordedEvent};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use app::Error as AppError;

use crate::auth::{Auth, require};
use crate::error::{ApiError, ApiJson, ErrorEnvelope};
use crate::state::AppState;

/// Interval of the heartbeat comments that keep idle connections open.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
const BATCH: usize = 500;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(stream_events))
        .routes(routes!(list_events))
}

/// Filters of the stream.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Comma-separated event types, e.g. `EntityCreated,EntityDeleted`.
    pub types: Option<String>,
    /// Only events of this aggregate type, e.g. `Entity`.
    pub aggregate_type: Option<String>,
    /// Only events of records of this entity type, e.g. `users`.
    pub entity: Option<String>,
    /// Start after this cursor, or `beginning`; `Last-Event-ID` wins when both are given.
    pub after: Option<String>,
}

pub(crate) struct Filter {
    types: Option<Vec<String>>,
    aggregate_type: Option<String>,
    entity_prefix: Option<String>,
}

impl Filter {
    /// From the query parameters: comma-separated `types`, `aggregateType`, `entity`.
    pub(crate) fn new(
        types: Option<String>,
        aggregate_type: Option<String>,
        entity: Option<String>,
    ) -> Self {
        Self {
            types: types.map(|t| t.split(',').map(|s| s.trim().to_string()).collect()),
            aggregate_type,
            entity_prefix: entity.map(|e| format!("{e}/")),
        }
    }

    fn matches(&self, event: &RecordedEvent) -> bool {
        self.types
            .as_ref()
            .is_none_or(|types| types.contains(&event.event_type))
            && self
                .aggregate_type
                .as_ref()
                .is_none_or(|t| *t == event.aggregate_type)
            && self.entity_prefix.as_ref().is_none_or(|prefix| {
                event.aggregate_type == "Entity" && event.aggregate_id.starts_with(prefix.as_str())
            })
    }
}

pub(crate) fn parse_cursor(raw: &str) -> Result<Cursor, ApiError> {
    if raw == "beginning" {
        return Ok(Cursor::START);
    }
    raw.parse()
        .map_err(|_| AppError::InvalidParameter {
            name: "Last-Event-ID",
            reason: "not a cursor returned by the gateway".into(),
        })
        .map_err(ApiError::from)
}

/// Subscribe to the tenant's events.
#[utoipa::path(get, path = "/v1/events/stream", tag = "events",
    security(("api_key" = ["reader"]), ("bearer" = ["reader"])),
    params(
        StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event"),
    ),
    responses(
        (status = 200, description = "`text/event-stream`: `id` cursor, `event` type, `data` envelope JSON; a comment every 15 s", content_type = "text/event-stream"),
        (status = 400, description = "INVALID_PARAMETER", body = ErrorEnvelope),
    ))]
pub async fn stream_events(
    State(state): State<AppState>,
    auth: Auth<require::Reader>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    Query(query): Query<StreamQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(query.after.as_deref());
    let cursor = match resume {
        Some(raw) => parse_cursor(raw)?,
        None => state.log.head().await?,
    };
    let tail = Tail::new(
        state,
        &auth.principal.roles,
        auth.tenant().clone(),
        (
            credential_headers(&headers),
            extensions.get::<crate::server::PeerCertificate>().cloned(),
        ),
        Filter::new(query.types, query.aggregate_type, query.entity),
        cursor,
    );
    use futures::StreamExt;
    let events = futures::stream::unfold(Some(tail), |tail| async move {
        let mut tail = tail?;
        let batch = match tail.next().await {
            Next::Events(batch) => batch
                .iter()
                .map(|event| {
                    Ok(Event::default()
                        .id(event.cursor.to_string())
                        .event(event.event_type.clone())
                        .data(event.envelope().to_string()))
                })
                .collect::<Vec<Result<Event, Infallible>>>(),
            Next::Closed { code, message } => {
                let data = serde_json::json!({
                    "code": code,
                    "message": message,
                    "cursor": tail.cursor().to_string(),
                });
                let event = Event::default().event("close").data(data.to_string());
                return Some((futures::stream::iter(vec![Ok(event)]), None));
            }
            Next::Failed => return None,
        };
        Some((futures::stream::iter(batch), Some(tail)))
    })
    .flatten();
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat")))
}

/// The headers that authenticate a request, kept by a live stream to check them again.
pub(crate) fn credential_headers(headers: &HeaderMap) -> HeaderMap {
    let mut kept = HeaderMap::new();
    for name in ["x-api-key", "authorization", crate::extract::TENANT_HEADER] {
        if let Some(value) = headers.get(name) {
            kept.insert(name, value.clone());
        }
    }
    kept
}

/// What a live stream does next.
pub(crate) enum Next {
    /// Events the principal may read and the filter lets through, in log order.
    Events(Vec<RecordedEvent>),
    /// The server ends the stream: why (a stable code), and the cursor to resume from is
    /// [`Tail::cursor`].
    Closed { code: String, message: String },
    /// The log could not be read (logged); the stream ends without a word.
    Failed,
}

/// A live stream's position and what it checks as it goes: the tail of the tenant's events
/// shared by the Server-Sent Events stream and the WebSocket channel.
pub(crate) struct Tail {
    state: AppState,
    appended: tokio::sync::watch::Receiver<Cursor>,
    cursor: Cursor,
    tenant: domain::names::TenantId,
    filter: Filter,
    /// The roles of the stream's principal: events they may not read are skipped.
    roles: Vec<domain::roles::Role>,
    credentials: HeaderMap,
    /// The client certificate the principal authenticated with, if any.
    certificate: Option<crate::server::PeerCertificate>,
    recheck: Duration,
    next_check: tokio::time::Instant,
}

impl Tail {
    /// A tail after `cursor` for the principal whose `credentials` (the request's headers
    /// that authenticate it) are checked again every `GATEWAY_STREAM_RECHECK_MS`.
    pub(crate) fn new(
        state: AppState,
        roles: &[domain::roles::Role],
        tenant: domain::names::TenantId,
        (credentials, certificate): (HeaderMap, Option<crate::server::PeerCertificate>),
        filter: Filter,
        cursor: Cursor,
    ) -> Self {
        let recheck = Duration::from_millis(state.settings.stream_recheck_ms.max(100));
        Self {
            appended: state.log.subscribe(),
            cursor,
            tenant,
            filter,
            roles: roles.to_vec(),
            credentials,
            certificate,
            next_check: tokio::time::Instant::now() + recheck,
            recheck,
            state,
        }
    }

    /// Where the stream is: the cursor to resume from after what it has handed out.
    pub(crate) fn cursor(&self) -> Cursor {
        self.cursor
    }

    /// Waits for the next events to hand out, or for a reason to end.
    pub(crate) async fn next(&mut self) -> Next {
        loop {
            if self.state.shutdown.is_cancelled() {
                return Next::Closed {
                    code: "SERVER_STOPPING".into(),
                    message: "the server is stopping; reconnect and resume from the cursor".into(),
                };
            }
            if tokio::time::Instant::now() >= self.next_check {
                match crate::auth::recheck(
                    &self.state,
                    &self.credentials,
                    self.certificate.as_ref(),
                    domain::roles::Role::Reader,
                    &self.tenant,
                )
                .await
                {
                    Ok(()) => self.next_check = tokio::time::Instant::now() + self.recheck,
                    Err(ApiError::App(AppError::DatabaseUnavailable)) => {
                        // Not the client's fault: try again at the next check.
                        self.next_check = tokio::time::Instant::now() + self.recheck;
                    }
                    Err(error) => {
                        return Next::Closed {
                            code: error.code().to_string(),
                            message: error.to_string(),
                        };
                    }
                }
            }
            self.appended.mark_unchanged();
            // Read before the tail: when the tenant has nothing new, every event up to it is
            // another tenant's, and the cursor moves past them instead of scanning them again.
            let head = match self.state.log.head().await {
                Ok(head) => head,
                Err(error) => {
                    tracing::warn!(%error, "event stream read failed; closing the stream");
                    return Next::Failed;
                }
            };
            let batch = match self
                .state
                .log
                .read_tenant_after(self.tenant.as_str(), self.cursor, BATCH)
                .await
            {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::warn!(%error, "event stream read failed; closing the stream");
                    return Next::Failed;
                }
            };
            if let Some(last) = batch.last() {
                self.cursor = last.cursor;
                let events: Vec<RecordedEvent> = batch
                    .into_iter()
                    .filter(|event| {
                        self.filter.matches(event) && event.visibility().readable_by(&self.roles)
                    })
                    .collect();
                if !events.is_empty() {
                    return Next::Events(events);
                }
                continue;
            }
            self.cursor = self.cursor.max(head);
            let until_check = self
                .next_check
                .saturating_duration_since(tokio::time::Instant::now());
            tokio::select! {
                _ = self.appended.changed() => {}
                _ = tokio::time::sleep(until_check.min(Duration::from_secs(1))) => {}
                _ = self.state.shutdown.cancelled() => {}
            }
        }
    }
}

/// Largest page of the change feed.
pub const MAX_FEED_PAGE: usize = 1000;
/// Events read from the log for one page at most, matching or not: a selective filter over a
/// long stretch of other events answers with fewer items and a cursor to continue from.
const MAX_FEED_SCAN: usize = 10_000;

/// Query of `GET /v1/events`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct FeedQuery {
    /// Continue after this cursor (`nextCursor` of the previous page); default: the beginning.
    pub after: Option<String>,
    /// Comma-separated event types, e.g. `EntityCreated,EntityDeleted`.
    pub types: Option<String>,
    /// Only events of records of this entity type, e.g. `users`.
    pub entity: Option<String>,
    /// Only events of this aggregate type, e.g. `Agent`.
    pub aggregate_type: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// A page of the change feed.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeedPage {
    /// Event envelopes (the NATS payload shape), in log order.
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<Value>,
    /// Where the next page starts. Always present: at the end of the log, poll again with it.
    pub next_cursor: String,
    /// Whether more events were already there when this page was read.
    pub has_more: bool,
}

/// The tenant's change feed: its events from the log, in order, a page at a time.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    security(("api_key" = ["reader"]), ("bearer" = ["reader"])),
    params(FeedQuery),
    responses(
        (status = 200, description = "A page of events and the cursor to continue from", body = FeedPage),
        (status = 400, description = "INVALID_PARAMETER", body = ErrorEnvelope),
    ))]
pub async fn list_events(
    State(state): State<AppState>,
    auth: Auth<require::Reader>,
    Query(query): Query<FeedQuery>,
) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=MAX_FEED_PAGE).contains(&limit) {
        return Err(AppError::InvalidParameter {
            name: "limit",
            reason: format!("must be between 1 and {MAX_FEED_PAGE}"),
        }
        .into());
    }
    let mut cursor = match query.after.as_deref() {
        Some(raw) => raw.parse().map_err(|_| AppError::InvalidParameter {
            name: "after",
            reason: "not a cursor returned by the gateway".into(),
        })?,
        None => Cursor::START,
    };
    let filter = Filter::new(query.types, query.aggregate_type, query.entity);
    let tenant = auth.tenant().as_str();
    let mut items = Vec::new();
    let mut scanned = 0;
    let mut has_more = false;
    'pages: loop {
        let want = BATCH.min(MAX_FEED_SCAN - scanned);
        if want == 0 {
            has_more = true;
            break;
        }
        let batch = state.log.read_tenant_after(tenant, cursor, want).await?;
        for event in &batch {
            if filter.matches(event) && event.visibility().readable_by(&auth.principal.roles) {
                if items.len() == limit {
                    has_more = true;
                    break 'pages;
                }
                items.push(event.envelope());
            }
            cursor = event.cursor;
            scanned += 1;
        }
        if batch.len() < want {
            break;
        }
    }
    let body = FeedPage {
        items,
        next_cursor: cursor.to_string(),
        has_more,
    };
    Ok(ApiJson(body).into_response())
}
