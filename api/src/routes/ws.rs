//! `GET /v1/ws`: the WebSocket channel. One connection carries the tenant's live events
//! (several subscriptions, each with the live stream's filters and a resume cursor) and
//! commands (any HTTP request of the API, answered with the response HTTP would give).
//!
//! The protocol (JSON text messages, each with a `type`; `docs/websocket.md` and
//! `docs/websocket.schema.json` describe every message):
//! - authentication: the upgrade request's `X-API-Key` or `Authorization` header, or, for
//!   browsers, an `auth` message first (within ten seconds); `ready` answers either;
//! - `subscribe` / `unsubscribe` a filter; each event arrives as `event` with its
//!   subscription and cursor; `ack` acknowledges a subscription's events up to a cursor,
//!   and a subscription with `maxUnacked` is paused while that many are unacknowledged;
//! - `request`: method, path, body and `Idempotency-Key`, answered by `response` with the
//!   same `id`, status, headers and body as over HTTP (through the same router, middleware
//!   and credentials);
//! - heartbeats: the server pings every `GATEWAY_WS_HEARTBEAT_MS` and sends `heartbeat`;
//!   a client that misses two pings in a row is closed; the client may `ping` (answered by
//!   `pong`);
//! - a client that does not read keeps at most `GATEWAY_WS_BUFFER` messages waiting; when
//!   the buffer stays full (or a write blocks) for `GATEWAY_WS_SEND_TIMEOUT_MS`, the
//!   connection closes with `SLOW_CONSUMER`; every close the server decides is preceded by a
//!   `close` message with its code and each subscription's cursor to resume from, which a
//!   slow client gets after what was already written if it reads within ten times that
//!   timeout.
//!
//! Events are read from the log by the live stream's tail, so the visibility rules and the
//! credential re-checks are the live stream's own.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use axum::response::{IntoResponse, Response};
use eventlog::Cursor;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::{Semaphore, mpsc};
use tower::ServiceExt;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{self, Principal};
use crate::error::{ApiError, ErrorEnvelope};
use crate::routes::events::{self, Filter, Next, Tail};
use crate::server::{ConnectionSlot, Dispatch, PeerCertificate};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(websocket))
        .routes(routes!(websocket_schema))
}

/// The JSON Schema of the channel's messages.
pub const SCHEMA: &str = include_str!("../../../docs/websocket.schema.json");

/// The JSON Schema of every message of the WebSocket channel (`/v1/ws`).
#[utoipa::path(get, path = "/websocket.schema.json", tag = "operations",
    responses((status = 200, description = "JSON Schema (2020-12) of the client and server messages", content_type = "application/json")))]
pub async fn websocket_schema() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        SCHEMA,
    )
        .into_response()
}

/// Largest message a client may send.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// Subscriptions one connection may hold.
pub const MAX_SUBSCRIPTIONS: usize = 16;
/// Requests one connection may have running at once.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 16;
/// How long a connection opened without credentials has to send `auth`.
pub const AUTH_DEADLINE: Duration = Duration::from_secs(10);
/// Pings a client may miss in a row before it is closed.
const MISSED_PINGS: u32 = 2;

/// Close codes of the connections the server closes.
mod close_code {
    /// The server is stopping.
    pub const GOING_AWAY: u16 = 1001;
    /// A message that is not JSON text.
    pub const UNSUPPORTED: u16 = 1003;
    /// The credentials no longer hold (revoked, expired, suspended, role removed).
    pub const POLICY: u16 = 1008;
    /// No `auth` in time, or credentials refused.
    pub const UNAUTHORIZED: u16 = 4401;
    /// Missed heartbeats.
    pub const TIMEOUT: u16 = 4408;
    /// The client does not read its messages.
    pub const SLOW_CONSUMER: u16 = 4429;
}

/// Open the WebSocket channel.
///
/// Credentials come with the upgrade (`X-API-Key`, `Authorization: Bearer`) or in a first
/// `auth` message. See `docs/websocket.md` for the messages.
#[utoipa::path(get, path = "/v1/ws", tag = "events",
    security(("api_key" = ["reader"]), ("bearer" = ["reader"]), ()),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol"),
        (status = 426, description = "UPGRADE_REQUIRED: not a WebSocket upgrade request", body = ErrorEnvelope),
    ))]
pub async fn websocket(
    State(state): State<AppState>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // Credentials in the headers were checked by the middleware; they must reach a tenant.
    let signed_in = match extensions.get::<Principal>() {
        Some(principal) => Some(Session::new(
            principal.clone(),
            events::credential_headers(&headers),
            extensions.get::<PeerCertificate>().cloned(),
        )?),
        None => None,
    };
    let upgrade = upgrade.map_err(|_| ApiError::UpgradeRequired)?;
    let connection = Connection {
        state,
        peer: extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| *peer),
        dispatch: extensions.get::<Dispatch>().cloned(),
        session: signed_in,
    };
    let slot = extensions.get::<ConnectionSlot>().cloned();
    Ok(upgrade
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            connection.run(socket).await;
        })
        .into_response())
}

/// Who the connection acts for, once authenticated.
struct Session {
    principal: Principal,
    tenant: domain::names::TenantId,
    /// The headers that authenticate the connection's requests and re-checks.
    credentials: HeaderMap,
    /// Or the client certificate.
    certificate: Option<PeerCertificate>,
}

impl Session {
    fn new(
        principal: Principal,
        credentials: HeaderMap,
        certificate: Option<PeerCertificate>,
    ) -> Result<Self, ApiError> {
        if !domain::roles::Role::any_grants(&principal.roles, domain::roles::Role::Reader) {
            return Err(ApiError::Forbidden {
                required: domain::roles::Role::Reader,
            });
        }
        let tenant = principal.tenant.clone().ok_or(ApiError::TenantRequired)?;
        Ok(Self {
            principal,
            tenant,
            credentials,
            certificate,
        })
    }
}

/// A client message.
#[derive(Debug, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
enum ClientMessage {
    Auth {
        api_key: Option<String>,
        token: Option<String>,
        tenant: Option<String>,
    },
    Subscribe {
        id: String,
        types: Option<Vec<String>>,
        aggregate_type: Option<String>,
        entity: Option<String>,
        /// A cursor, or `beginning`; default: the end of the log.
        after: Option<String>,
        max_unacked: Option<usize>,
    },
    Unsubscribe {
        id: String,
    },
    Ack {
        subscription: String,
        cursor: String,
    },
    Ping {
        id: Option<Value>,
    },
    Request(RequestMessage),
}

/// A `request` message: an HTTP request of the API.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RequestMessage {
    id: String,
    method: String,
    path: String,
    body: Option<Value>,
    idempotency_key: Option<String>,
    headers: Option<BTreeMap<String, String>>,
}

/// Request headers a client may set on a `request`; credentials are the connection's.
const REQUEST_HEADERS: &[&str] = &[
    "idempotency-key",
    "if-match",
    "x-min-position",
    "x-consistency",
    "x-request-id",
];

/// What the tasks of a connection hand to its writer.
enum Outgoing {
    Event {
        subscription: String,
        cursor: Cursor,
        envelope: Value,
    },
    Message(Value),
}

/// One subscription of a connection.
struct Subscription {
    task: tokio::task::JoinHandle<()>,
    /// The last cursor written to the client (or where it started).
    sent: Cursor,
    /// The last cursor the client acknowledged.
    acked: Option<Cursor>,
    /// Events written and not yet acknowledged, and the permits that pause the tail.
    unacked: VecDeque<Cursor>,
    window: Option<Arc<Semaphore>>,
}

struct Connection {
    state: AppState,
    peer: Option<SocketAddr>,
    dispatch: Option<Dispatch>,
    session: Option<Session>,
}

/// Why the server closes a connection.
struct Closing {
    code: String,
    message: String,
    frame: u16,
}

impl Closing {
    fn new(code: &str, message: impl Into<String>, frame: u16) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            frame,
        }
    }
}

fn text(value: &Value) -> Message {
    Message::Text(Utf8Bytes::from(value.to_string()))
}

fn error(id: Option<&str>, code: &str, message: impl Into<String>) -> Value {
    let mut body = json!({"type": "error", "code": code, "message": message.into()});
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    body
}

impl Connection {
    async fn run(mut self, socket: WebSocket) {
        let (mut sink, mut stream) = socket.split();
        let settings = &self.state.settings;
        let heartbeat = Duration::from_millis(settings.ws_heartbeat_ms.max(50));
        let send_timeout = Duration::from_millis(settings.ws_send_timeout_ms.max(50));
        let (out_tx, mut out_rx) = mpsc::channel::<Outgoing>(settings.ws_buffer.max(1));
        // Why a subscription ended, past a buffer that may be full.
        let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(String, String)>();
        let requests = Arc::new(Semaphore::new(MAX_REQUESTS_IN_FLIGHT));
        let mut subscriptions: HashMap<String, Subscription> = HashMap::new();
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        let auth_deadline = tokio::time::sleep(AUTH_DEADLINE);
        tokio::pin!(auth_deadline);
        let mut missed = 0u32;
        let shutdown = self.state.shutdown.clone();

        // Writes one message, bounded in time: a client that does not read is slow.
        macro_rules! send_or_close {
            ($message:expr) => {
                match tokio::time::timeout(send_timeout, sink.send($message)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break None,
                    Err(_) => {
                        break Some(Closing::new(
                            "SLOW_CONSUMER",
                            "the client does not read its messages",
                            close_code::SLOW_CONSUMER,
                        ));
                    }
                }
            };
        }

        if let Some(session) = &self.session {
            let ready = ready(session, heartbeat);
            if sink.send(text(&ready)).await.is_err() {
                return;
            }
        }
        let closing: Option<Closing> = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    break Some(Closing::new(
                        "SERVER_STOPPING",
                        "the server is stopping; reconnect and resume from the cursors",
                        close_code::GOING_AWAY,
                    ));
                }
                Some((code, message)) = ended_rx.recv() => {
                    let frame = match code.as_str() {
                        "SERVER_STOPPING" => close_code::GOING_AWAY,
                        "SLOW_CONSUMER" => close_code::SLOW_CONSUMER,
                        _ => close_code::POLICY,
                    };
                    break Some(Closing::new(&code, message, frame));
                }
                () = &mut auth_deadline, if self.session.is_none() => {
                    break Some(Closing::new(
                        "UNAUTHORIZED",
                        "send an auth message first",
                        close_code::UNAUTHORIZED,
                    ));
                }
                _ = ticker.tick() => {
                    missed += 1;
                    if missed > MISSED_PINGS {
                        break Some(Closing::new(
                            "HEARTBEAT_TIMEOUT",
                            "no answer to the last pings",
                            close_code::TIMEOUT,
                        ));
                    }
                    send_or_close!(Message::Ping(Default::default()));
                    send_or_close!(text(&json!({"type": "heartbeat"})));
                }
                frame = stream.next() => {
                    let Some(Ok(frame)) = frame else { break None };
                    missed = 0;
                    let raw = match frame {
                        Message::Text(raw) => raw,
                        Message::Close(_) => break None,
                        Message::Ping(_) | Message::Pong(_) => continue,
                        Message::Binary(_) => {
                            break Some(Closing::new(
                                "INVALID_MESSAGE",
                                "messages are JSON text",
                                close_code::UNSUPPORTED,
                            ));
                        }
                    };
                    let message = match serde_json::from_str::<ClientMessage>(raw.as_str()) {
                        Ok(message) => message,
                        Err(e) => {
                            send_or_close!(text(&error(None, "INVALID_MESSAGE", e.to_string())));
                            continue;
                        }
                    };
                    let reply = match message {
                        ClientMessage::Ping { id } => Some(json!({"type": "pong", "id": id})),
                        ClientMessage::Auth { api_key, token, tenant } => {
                            match self.sign_in(api_key, token, tenant).await {
                                Ok(session) => {
                                    let ready = ready(&session, heartbeat);
                                    self.session = Some(session);
                                    Some(ready)
                                }
                                Err(closing) => break Some(closing),
                            }
                        }
                        _ if self.session.is_none() => Some(error(
                            None,
                            "UNAUTHORIZED",
                            "send an auth message first",
                        )),
                        ClientMessage::Subscribe { id, types, aggregate_type, entity, after, max_unacked } => {
                            if subscriptions.contains_key(&id) {
                                Some(error(Some(&id), "SUBSCRIPTION_EXISTS", "this subscription id is in use"))
                            } else if subscriptions.len() >= MAX_SUBSCRIPTIONS {
                                Some(error(Some(&id), "TOO_MANY_SUBSCRIPTIONS", format!("at most {MAX_SUBSCRIPTIONS} per connection")))
                            } else if id.is_empty() || id.len() > 64 {
                                Some(error(None, "INVALID_MESSAGE", "a subscription id has 1 to 64 bytes"))
                            } else {
                                let filter = Filter::new(types.map(|t| t.join(",")), aggregate_type, entity);
                                match self.subscribe(&id, filter, after.as_deref(), max_unacked, (&out_tx, &ended_tx)).await {
                                    Ok((subscription, start)) => {
                                        subscriptions.insert(id.clone(), subscription);
                                        Some(json!({"type": "subscribed", "id": id, "cursor": start.to_string()}))
                                    }
                                    Err(reply) => Some(reply),
                                }
                            }
                        }
                        ClientMessage::Unsubscribe { id } => match subscriptions.remove(&id) {
                            Some(subscription) => {
                                subscription.task.abort();
                                Some(json!({"type": "unsubscribed", "id": id, "cursor": subscription.sent.to_string()}))
                            }
                            None => Some(error(Some(&id), "UNKNOWN_SUBSCRIPTION", "no such subscription")),
                        },
                        ClientMessage::Ack { subscription, cursor } => {
                            match (subscriptions.get_mut(&subscription), cursor.parse::<Cursor>()) {
                                (Some(entry), Ok(cursor)) => {
                                    let mut released = 0;
                                    while entry.unacked.front().is_some_and(|c| *c <= cursor) {
                                        entry.unacked.pop_front();
                                        released += 1;
                                    }
                                    entry.acked = Some(entry.acked.map_or(cursor, |a| a.max(cursor)));
                                    if let Some(window) = &entry.window {
                                        window.add_permits(released);
                                    }
                                    None
                                }
                                (None, _) => Some(error(Some(&subscription), "UNKNOWN_SUBSCRIPTION", "no such subscription")),
                                (_, Err(_)) => Some(error(Some(&subscription), "INVALID_MESSAGE", "not a cursor returned by the gateway")),
                            }
                        }
                        ClientMessage::Request(request) => {
                            match requests.clone().try_acquire_owned() {
                                Ok(permit) => {
                                    self.request(permit, request, &out_tx);
                                    None
                                }
                                Err(_) => Some(error(Some(&request.id), "TOO_MANY_REQUESTS_IN_FLIGHT", format!("at most {MAX_REQUESTS_IN_FLIGHT} at once"))),
                            }
                        }
                    };
                    if let Some(reply) = reply {
                        send_or_close!(text(&reply));
                    }
                }
                outgoing = out_rx.recv() => {
                    // The connection holds a sender: the channel never ends first.
                    let Some(outgoing) = outgoing else { break None };
                    match outgoing {
                        Outgoing::Event { subscription, cursor, envelope } => {
                            // Events queued before an unsubscribe are dropped.
                            let Some(entry) = subscriptions.get_mut(&subscription) else { continue };
                            entry.sent = cursor;
                            if entry.window.is_some() {
                                entry.unacked.push_back(cursor);
                            }
                            send_or_close!(text(&json!({
                                "type": "event",
                                "subscription": subscription,
                                "cursor": cursor.to_string(),
                                "event": envelope,
                            })));
                        }
                        Outgoing::Message(message) => send_or_close!(text(&message)),
                    }
                }
            }
        };
        for subscription in subscriptions.values() {
            subscription.task.abort();
        }
        if let Some(closing) = closing {
            let cursors: Map<String, Value> = subscriptions
                .iter()
                .map(|(id, s)| {
                    let acked = s.acked.map(|c| c.to_string());
                    (
                        id.clone(),
                        json!({"cursor": s.sent.to_string(), "acked": acked}),
                    )
                })
                .collect();
            let message = json!({
                "type": "close",
                "code": closing.code,
                "message": closing.message,
                "subscriptions": cursors,
            });
            let farewell = async {
                sink.send(text(&message)).await?;
                sink.send(Message::Close(Some(CloseFrame {
                    code: closing.frame,
                    reason: Utf8Bytes::from(closing.code.clone()),
                })))
                .await
            };
            // A slow client that still reads gets what was written, then why it ends; one
            // that does not is dropped after a grace of ten writes' time (1 to 30 s).
            let grace = (send_timeout * 10).clamp(Duration::from_secs(1), Duration::from_secs(30));
            if tokio::time::timeout(grace, farewell).await.is_ok() {
                // The closing handshake: the client answers with its own close frame
                // (reading until then lets it finish reading, rather than meet a reset).
                let _ = tokio::time::timeout(send_timeout.min(Duration::from_secs(2)), async {
                    while let Some(Ok(frame)) = stream.next().await {
                        if matches!(frame, Message::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
            }
        }
    }

    /// Authenticates the credentials of an `auth` message as the upgrade's headers would be.
    async fn sign_in(
        &self,
        api_key: Option<String>,
        token: Option<String>,
        tenant: Option<String>,
    ) -> Result<Session, Closing> {
        let refused =
            |message: String| Closing::new("UNAUTHORIZED", message, close_code::UNAUTHORIZED);
        if self.session.is_some() {
            return Err(refused("already authenticated".into()));
        }
        let mut headers = HeaderMap::new();
        let value = |raw: String| {
            HeaderValue::from_str(&raw).map_err(|_| refused("malformed credentials".into()))
        };
        match (api_key, token) {
            (Some(key), None) => {
                headers.insert("x-api-key", value(key)?);
            }
            (None, Some(token)) => {
                headers.insert("authorization", value(format!("Bearer {token}"))?);
            }
            _ => return Err(refused("give apiKey or token".into())),
        }
        if let Some(tenant) = tenant {
            headers.insert(crate::extract::TENANT_HEADER, value(tenant)?);
        }
        let principal = auth::sign_in(&self.state, &headers, self.peer.map(|p| p.ip()))
            .await
            .map_err(|e| Closing::new(e.code(), e.to_string(), close_code::UNAUTHORIZED))?;
        Session::new(principal, headers, None).map_err(|e| refused(e.to_string()))
    }

    /// Starts a subscription's tail; the reply to send when it cannot start.
    async fn subscribe(
        &self,
        id: &str,
        filter: Filter,
        after: Option<&str>,
        max_unacked: Option<usize>,
        (out, ended): (
            &mpsc::Sender<Outgoing>,
            &mpsc::UnboundedSender<(String, String)>,
        ),
    ) -> Result<(Subscription, Cursor), Value> {
        let session = self.session.as_ref().expect("subscribed after auth");
        let start = match after {
            Some(raw) => events::parse_cursor(raw).map_err(|_| {
                error(
                    Some(id),
                    "INVALID_MESSAGE",
                    "after is a cursor returned by the gateway or 'beginning'",
                )
            })?,
            None => self.state.log.head().await.map_err(|_| {
                error(
                    Some(id),
                    "DATABASE_UNAVAILABLE",
                    "the log could not be read; retry",
                )
            })?,
        };
        let window = match max_unacked {
            Some(0) => {
                return Err(error(
                    Some(id),
                    "INVALID_MESSAGE",
                    "maxUnacked is at least 1",
                ));
            }
            Some(n) => Some(Arc::new(Semaphore::new(n.min(Semaphore::MAX_PERMITS)))),
            None => None,
        };
        let mut tail = Tail::new(
            self.state.clone(),
            &session.principal.roles,
            session.tenant.clone(),
            (session.credentials.clone(), session.certificate.clone()),
            filter,
            start,
        );
        let (out, ended, name, paused) =
            (out.clone(), ended.clone(), id.to_string(), window.clone());
        let send_timeout = Duration::from_millis(self.state.settings.ws_send_timeout_ms.max(50));
        let task = tokio::spawn(async move {
            loop {
                let batch = match tail.next().await {
                    Next::Events(batch) => batch,
                    Next::Closed { code, message } => {
                        let _ = ended.send((code, message));
                        return;
                    }
                    Next::Failed => {
                        let _ = ended.send((
                            "DATABASE_UNAVAILABLE".into(),
                            "the log could not be read; reconnect and resume".into(),
                        ));
                        return;
                    }
                };
                for event in batch {
                    if let Some(window) = &paused {
                        // Waits for acknowledgements; the permit is given back by an ack.
                        match window.acquire().await {
                            Ok(permit) => permit.forget(),
                            Err(_) => return,
                        }
                    }
                    let outgoing = Outgoing::Event {
                        subscription: name.clone(),
                        cursor: event.cursor,
                        envelope: event.envelope(),
                    };
                    // A buffer that stays full belongs to a client that does not read.
                    match out.send_timeout(outgoing, send_timeout).await {
                        Ok(()) => {}
                        Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                            let _ = ended.send((
                                "SLOW_CONSUMER".into(),
                                "the client does not read its messages".into(),
                            ));
                            return;
                        }
                        Err(mpsc::error::SendTimeoutError::Closed(_)) => return,
                    }
                }
            }
        });
        Ok((
            Subscription {
                task,
                sent: start,
                acked: None,
                unacked: VecDeque::new(),
                window,
            },
            start,
        ))
    }

    /// Runs a `request` through the router, as HTTP would, and queues its `response`.
    fn request(
        &self,
        permit: tokio::sync::OwnedSemaphorePermit,
        message: RequestMessage,
        out: &mpsc::Sender<Outgoing>,
    ) {
        let session = self.session.as_ref().expect("requests after auth");
        let id = message.id.clone();
        let built = build_request(&session.credentials, self.peer, message).map(|mut request| {
            if let Some(certificate) = &session.certificate {
                request.extensions_mut().insert(certificate.clone());
            }
            request
        });
        let (dispatch, out) = (self.dispatch.clone(), out.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let reply = match (built, dispatch) {
                (Err(message), _) => error(Some(&id), "INVALID_MESSAGE", message),
                (Ok(_), None) => error(
                    Some(&id),
                    "UNAVAILABLE",
                    "requests are not served on this connection",
                ),
                (Ok(request), Some(Dispatch(router))) => match router.oneshot(request).await {
                    Ok(response) => response_message(&id, response).await,
                    Err(never) => match never {},
                },
            };
            let _ = out.send(Outgoing::Message(reply)).await;
        });
    }
}

/// The `ready` message: who the connection acts for.
fn ready(session: &Session, heartbeat: Duration) -> Value {
    json!({
        "type": "ready",
        "tenant": session.tenant.as_str(),
        "subject": session.principal.subject,
        "roles": session.principal.roles.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
        "heartbeatMs": heartbeat.as_millis() as u64,
        "maxSubscriptions": MAX_SUBSCRIPTIONS,
        "maxRequestsInFlight": MAX_REQUESTS_IN_FLIGHT,
    })
}

/// The HTTP request a `request` message stands for, with the connection's credentials.
fn build_request(
    credentials: &HeaderMap,
    peer: Option<SocketAddr>,
    message: RequestMessage,
) -> Result<Request<Body>, String> {
    let RequestMessage {
        method,
        path,
        body,
        idempotency_key,
        headers,
        ..
    } = message;
    let path = path.as_str();
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| "not an HTTP method".to_string())?;
    if !path.starts_with("/v1/") && !path.starts_with("/health") && !path.starts_with("/ready") {
        return Err("path is an API path such as /v1/users".into());
    }
    let route = path.split('?').next().unwrap_or_default();
    if route == auth::WEBSOCKET_ROUTE || route == "/v1/events/stream" {
        return Err("streams are subscriptions on this connection, not requests".into());
    }
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in credentials {
        request = request.header(name, value);
    }
    let mut extra = headers.unwrap_or_default();
    if let Some(key) = idempotency_key {
        extra.insert("idempotency-key".into(), key);
    }
    for (name, value) in extra {
        let name = name.to_ascii_lowercase();
        if !REQUEST_HEADERS.contains(&name.as_str()) {
            return Err(format!(
                "header '{name}' cannot be set on a request (allowed: {})",
                REQUEST_HEADERS.join(", ")
            ));
        }
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| "a malformed header name".to_string())?;
        let value = HeaderValue::from_str(&value)
            .map_err(|_| format!("header '{name}' has a malformed value"))?;
        request = request.header(name, value);
    }
    let body = match body {
        Some(body) => {
            request = request.header("content-type", "application/json");
            Body::from(body.to_string())
        }
        None => Body::empty(),
    };
    let mut request = request
        .body(body)
        .map_err(|e| format!("not a valid request: {e}"))?;
    if let Some(peer) = peer {
        request.extensions_mut().insert(ConnectInfo(peer));
    }
    Ok(request)
}

/// The `response` message of a request: status, headers and body as HTTP answered them
/// (a JSON body as JSON, any other as text).
async fn response_message(id: &str, response: Response) -> Value {
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let headers: Map<String, Value> = parts
        .headers
        .iter()
        .filter_map(|(name, value)| Some((name.to_string(), json!(value.to_str().ok()?))))
        .collect();
    let body = serde_json::from_slice::<Value>(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    json!({
        "type": "response",
        "id": id,
        "status": parts.status.as_u16(),
        "headers": headers,
        "body": if bytes.is_empty() { Value::Null } else { body },
    })
}
